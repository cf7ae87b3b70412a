//! A real Kafka-protocol broker for the Kafka output's tests: tansu 0.6.0 (a broker written in
//! Rust) with its sqlite storage, built by `tests/kafka/install.sh` into a cache in the cargo
//! home and linked as `target/kafka/tansu`; and an independent verifier, confluent-kafka
//! (librdkafka) unpacked into `target/kafka/py`, run by `tests/kafka/consume.py`. The broker
//! runs on 127.0.0.1 with its sqlite file in a directory of its own; it is killed and reaped on
//! drop, and every wait here is bounded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{free_port, wait_until, TempDir};

/// The confluent-kafka release `install.sh` unpacks (its stamp file is named after it).
const CONFLUENT_VERSION: &str = "2.16.1";

/// `target/kafka` of this repository, after running the install script once per test binary
/// if the broker or the verifier is missing there. Panics, telling how to install, when the
/// script fails: a test that needs the broker never passes without it.
pub fn kafka_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/kafka");
        let installed = || {
            dir.join("tansu").is_file()
                && dir
                    .join(format!("py/.installed-{CONFLUENT_VERSION}"))
                    .is_file()
        };
        if installed() {
            return Ok(dir);
        }
        let script = root.join("tests/kafka/install.sh");
        let how = format!(
            "the Kafka tests need tansu 0.6.0 and confluent-kafka {CONFLUENT_VERSION} in {}: \
             run `bash {}` with the cargo registry and PyPI reachable (a cold build of tansu \
             takes about 9 minutes on 2 cores, once per machine)",
            dir.display(),
            script.display()
        );
        eprintln!(
            "kafka: installing the broker and the verifier (bash {})",
            script.display()
        );
        // The script takes a lock of its own: parallel test binaries install once.
        let out = Command::new("bash")
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}\n{how}", script.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() || !installed() {
            return Err(format!(
                "{} failed ({}):\n{text}\n{how}",
                script.display(),
                out.status
            ));
        }
        eprintln!("{}", text.trim_end());
        Ok(dir)
    });
    match dir {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `cmd` with its output collected, killing it if it has not exited within `limit`;
/// `None` then.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pipes: Vec<Box<dyn Read + Send>> = vec![
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    let readers: Vec<thread::JoinHandle<Vec<u8>>> = pipes
        .into_iter()
        .map(|mut p| {
            thread::spawn(move || {
                let mut v = Vec::new();
                let _ = p.read_to_end(&mut v);
                v
            })
        })
        .collect();
    let end = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let mut outs = readers.into_iter().map(|r| r.join().unwrap_or_default());
    let (stdout, stderr) = (outs.next().unwrap(), outs.next().unwrap());
    status.map(|status| Output {
        status,
        stdout,
        stderr,
    })
}

/// A tansu broker on 127.0.0.1 with sqlite storage in a directory of its own. The port and
/// the sqlite file stay the same across [`Broker::restart`], so topics and records do too.
pub struct Broker {
    addr: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    /// How many times the broker was started.
    pub starts: u32,
    /// Start with `--authentication` (SASL required; users made with `tansu user create`).
    pub authentication: bool,
    dir: TempDir,
}

impl Broker {
    /// Starts a broker on a free port; waits until it answers.
    pub fn start() -> Broker {
        let mut last = String::new();
        // A port released by `free_port` can be taken by someone else before tansu binds it:
        // a few attempts, each on another port.
        for _ in 0..5 {
            let mut b = Broker::stopped(free_port());
            match b.try_start() {
                Ok(()) => return b,
                Err(e) => last = e,
            }
        }
        panic!("tansu did not start in 5 attempts; last:\n{last}");
    }

    /// A broker that will listen on `addr` once started ([`Broker::start_again`]), not
    /// running yet: a peer that is down.
    pub fn stopped(addr: SocketAddr) -> Broker {
        assert!(addr.ip().is_loopback(), "tests use 127.0.0.1 only");
        kafka_dir();
        Broker {
            addr,
            child: None,
            log: Arc::default(),
            starts: 0,
            authentication: false,
            dir: TempDir::new("tansu"),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `tansu 0.6.0 (sqlite)`.
    pub fn version(&self) -> String {
        let out = run_bounded(
            Command::new(tansu()).arg("--version"),
            Duration::from_secs(10),
        )
        .expect("tansu --version in time");
        let v = String::from_utf8_lossy(&out.stdout);
        format!("{} (sqlite)", v.lines().next().unwrap_or("tansu ?").trim())
    }

    pub fn sqlite_file(&self) -> PathBuf {
        self.dir.path().join("tansu.db")
    }

    /// Starts the broker again on the same port and sqlite file (after [`Broker::kill`]);
    /// waits until it answers. Panics if it does not within 20 s.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "tansu is running already");
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            match self.try_start() {
                Ok(()) => return,
                Err(e) if Instant::now() > end => {
                    panic!("tansu did not start again on {}:\n{e}", self.addr)
                }
                // The port may still be held by a connection of the killed broker.
                Err(_) => thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// SIGKILL and reap (no shutdown of its own: what a crash or a power cut does to it).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the broker stops answering, while the kernel still accepts connections and
    /// takes what is written to them, for it to process at [`Broker::resume`].
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONT after [`Broker::pause`].
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let c = self.child.as_ref().expect("tansu is running");
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        nix::sys::signal::kill(pid, sig).unwrap_or_else(|e| panic!("{sig} to tansu: {e}"));
    }

    /// SIGKILL, then start again on the same port and sqlite file.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// Spawns tansu and waits (10 s at most) until it answers an ApiVersions request; on a
    /// failure it is killed and its output returned.
    fn try_start(&mut self) -> Result<(), String> {
        let url = self.url();
        let mut child = Command::new(tansu())
            .arg("broker")
            .args(["--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            // tansu 0.6.0 opens `sqlite://` paths relative to its working directory, even
            // absolute ones (`sqlite:///tmp/x.db` is `./tmp/x.db`).
            .args(["--storage-engine", "sqlite://tansu.db"])
            .args(self.authentication.then_some("--authentication"))
            .env("RUST_LOG", "warn")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn tansu: {e}"))?;
        self.starts += 1;
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for pipe in [out, err] {
            let (log, tag) = (self.log.clone(), format!("tansu {}", child.id()));
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("RINGRELAY_TEST_LOG").is_some() {
                        eprintln!("{tag}: {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut exited = None;
        let up = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st);
                return true;
            }
            api_versions(self.addr).is_ok()
        });
        if up && exited.is_none() {
            self.child = Some(child);
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        let why = match exited {
            Some(st) => format!("tansu exited ({st})"),
            None => format!(
                "tansu did not answer on {} within 10 s ({:?})",
                self.addr,
                api_versions(self.addr).err()
            ),
        };
        // The pipe readers may still be draining: give them a moment to collect the reason.
        thread::sleep(Duration::from_millis(50));
        Err(format!("{why}; its output:\n{}", self.log_text()))
    }

    /// `tansu topic create NAME --partitions N`; panics if it fails.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let out = self.tansu_cli(&[
            "topic",
            "create",
            name,
            "--partitions",
            &partitions.to_string(),
        ]);
        assert!(
            out.status.success(),
            "tansu topic create {name}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `tansu ARGS --broker tcp://ADDR` (bounded: 40 s; tansu's CLI retries a refused
    /// connection for about 22 s before it gives up).
    pub fn tansu_cli(&self, args: &[&str]) -> Output {
        run_bounded(
            Command::new(tansu())
                .args(args)
                .args(["--broker", &self.url()])
                .env("RUST_LOG", "warn"),
            Duration::from_secs(40),
        )
        .unwrap_or_else(|| panic!("tansu {args:?} did not finish within 40 s"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tansu() -> PathBuf {
    kafka_dir().join("tansu")
}

/// One ApiVersions (v0) round trip on a fresh connection: `Ok` if the broker answered with
/// the same correlation id and error code 0.
pub fn api_versions(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let client = b"ringrelay-test";
    let mut req = Vec::new();
    req.extend_from_slice(&18i16.to_be_bytes()); // ApiVersions
    req.extend_from_slice(&0i16.to_be_bytes()); // v0
    req.extend_from_slice(&0x5eed_i32.to_be_bytes()); // correlation id
    req.extend_from_slice(&(client.len() as i16).to_be_bytes());
    req.extend_from_slice(client);
    let mut frame = (req.len() as i32).to_be_bytes().to_vec();
    frame.extend_from_slice(&req);
    s.write_all(&frame).map_err(|e| format!("write: {e}"))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| format!("read: {e}"))?;
    let len = i32::from_be_bytes(len);
    if !(6..1 << 20).contains(&len) {
        return Err(format!("answer of {len} bytes"));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
    let correlation = i32::from_be_bytes(body[0..4].try_into().unwrap());
    let error = i16::from_be_bytes(body[4..6].try_into().unwrap());
    if correlation != 0x5eed || error != 0 {
        return Err(format!("correlation {correlation:#x}, error code {error}"));
    }
    Ok(())
}

/// The environment under which the verifier runs.
pub fn python() -> Command {
    let mut c = Command::new("python3");
    c.env("PYTHONPATH", kafka_dir().join("py"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
    c
}

/// `confluent-kafka 2.16.1 / librdkafka 2.16.0`.
pub fn verifier_version() -> String {
    let out = run_bounded(
        python().args([
            "-c",
            "import confluent_kafka as c; print('confluent-kafka', c.__version__, '/ librdkafka', c.libversion()[0])",
        ]),
        Duration::from_secs(30),
    )
    .expect("python in time");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every record of `topic` up to the high watermarks at the time of the call, as
/// `(partition, offset, value)` in the order read (by offset within a partition), read by
/// confluent-kafka (`tests/kafka/consume.py`). Panics after 60 s or on an error.
pub fn consume(addr: SocketAddr, topic: &str) -> Vec<(i32, i64, Vec<u8>)> {
    consume_keyed(addr, topic)
        .into_iter()
        .map(|r| (r.partition, r.offset, r.value))
        .collect()
}

/// One record as the verifier read it.
#[derive(Clone, Debug)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// [`consume`] with each record's key.
pub fn consume_keyed(addr: SocketAddr, topic: &str) -> Vec<Consumed> {
    try_consume(addr, topic, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"))
}

/// [`consume_keyed`], with the error instead of a panic; `limit` bounds the verifier's own
/// wait, and it is killed 15 s after that.
pub fn try_consume(
    addr: SocketAddr,
    topic: &str,
    limit: Duration,
) -> Result<Vec<Consumed>, String> {
    try_consume_as(addr, topic, limit, None)
}

/// [`consume`] authenticated with SASL SCRAM-SHA-512 as `(user, password)`.
pub fn consume_as(
    addr: SocketAddr,
    topic: &str,
    sasl: Option<(&str, &str)>,
) -> Vec<(i32, i64, Vec<u8>)> {
    try_consume_as(addr, topic, Duration::from_secs(60), sasl)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .map(|r| (r.partition, r.offset, r.value))
        .collect()
}

fn try_consume_as(
    addr: SocketAddr,
    topic: &str,
    limit: Duration,
    sasl: Option<(&str, &str)>,
) -> Result<Vec<Consumed>, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kafka/consume.py");
    let mut cmd = python();
    if let Some((user, password)) = sasl {
        cmd.env("VERIFIER_SASL_SCRAM512", format!("{user}:{password}"));
    }
    let out = run_bounded(
        cmd.arg(&script)
            .arg(addr.to_string())
            .arg(topic)
            .arg(limit.as_secs_f64().to_string()),
        limit + Duration::from_secs(15),
    )
    .ok_or_else(|| format!("consume.py {topic} hung (killed after {limit:?} + 15 s)"))?;
    if !out.status.success() {
        return Err(format!(
            "consume.py {addr} {topic} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| format!("consume.py output: {e}"))?;
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let parsed = (|| {
                let [p, o, v, k] = f[..] else { return None };
                Some(Consumed {
                    partition: p.parse().ok()?,
                    offset: o.parse().ok()?,
                    key: if k == "-" { None } else { Some(hex_decode(k)?) },
                    value: hex_decode(v)?,
                })
            })();
            parsed.ok_or_else(|| format!("consume.py printed {l:?}"))
        })
        .collect()
}

/// The partition librdkafka's `murmur2` partitioner (the Java client's default for keyed
/// records) picks for `key` among `topic`'s partitions: it produces one record `probe` with
/// that key and reports where it went.
pub fn librdkafka_partition(addr: SocketAddr, topic: &str, key: &[u8]) -> i32 {
    const SCRIPT: &str = r#"
import sys
from confluent_kafka import Producer
p = Producer({'bootstrap.servers': sys.argv[1], 'partitioner': 'murmur2', 'enable.idempotence': True})
got = []
p.produce(sys.argv[2], b'probe', key=bytes.fromhex(sys.argv[3]), on_delivery=lambda e, m: got.append((e, m.partition())))
p.flush(30)
if not got or got[0][0] is not None:
    sys.exit(f'probe not delivered: {got}')
print(got[0][1])
"#;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let out = run_bounded(
        python().args(["-c", SCRIPT, &addr.to_string(), topic, &hex]),
        Duration::from_secs(45),
    )
    .expect("the murmur2 probe hung (killed after 45 s)");
    assert!(
        out.status.success(),
        "murmur2 probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a partition number")
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Produces `values` to `topic` with confluent-kafka, value `i` to partition
/// `partitions[i % partitions.len()]` (bounded: 60 s), and waits for every acknowledgement.
pub fn produce(addr: SocketAddr, topic: &str, values: &[Vec<u8>], partitions: &[i32]) {
    const SCRIPT: &str = r#"
import sys
from confluent_kafka import Producer
bootstrap, topic, parts = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3].split(',')]
p = Producer({'bootstrap.servers': bootstrap, 'enable.idempotence': True, 'linger.ms': 5})
failed = []
def done(err, msg):
    if err is not None:
        failed.append(str(err))
for i, line in enumerate(sys.stdin.buffer.read().split(b'\n')[:-1]):
    p.produce(topic, bytes.fromhex(line.decode()), partition=parts[i % len(parts)], on_delivery=done)
    p.poll(0)
left = p.flush(50)
if left or failed:
    sys.exit(f'produce: {left} not acknowledged, errors {failed[:3]}')
"#;
    let parts: Vec<String> = partitions.iter().map(i32::to_string).collect();
    let input: String = values
        .iter()
        .map(|v| {
            let mut h: String = v.iter().map(|b| format!("{b:02x}")).collect();
            h.push('\n');
            h
        })
        .collect();
    let mut child = python()
        .args(["-c", SCRIPT, &addr.to_string(), topic, &parts.join(",")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python");
    let mut stdin = child.stdin.take().unwrap();
    let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let mut status = None;
    wait_until(Duration::from_secs(60), || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = writer.join();
    let err = reader.join().unwrap_or_default();
    match status {
        Some(st) if st.success() => {}
        Some(st) => panic!("produce to {topic} failed ({st}): {err}"),
        None => panic!("produce to {topic} hung (killed after 60 s): {err}"),
    }
}
