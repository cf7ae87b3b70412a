//! Test equipment for the relay's integration tests: the real binary as a child process, a SIEM
//! receiver that can go down and come back, senders, temp dirs. Everything on 127.0.0.1 with
//! ephemeral ports; everything started here is killed and removed on drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(
            format!(
                "ringrelay-test-{name}-{}-{:?}",
                std::process::id(),
                Instant::now()
            )
            .replace([' ', '.'], "_"),
        );
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        TempDir(d)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// A free loopback port (bound, then released for the test to use).
pub fn free_port() -> SocketAddr {
    let [addr] = free_ports();
    addr
}

/// `N` distinct free loopback ports. All are held until the last is chosen: the kernel may
/// hand a port just released to the next `bind(0)`, so `[free_port(), free_port()]` can name
/// the same port twice.
pub fn free_ports<const N: usize>() -> [SocketAddr; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("ephemeral port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("ephemeral port"))
}

/// Holds `addr` (a 127.0.0.1 address; port 0 for any) bound without listening: a connection
/// to it is refused, and nothing else can take the port. A port merely released (`free_port`)
/// can be taken by a receiver of another test running at the same time, or become the relay's
/// own source port (a TCP self-connect that swallows writes); a held one cannot.
fn hold_port(addr: SocketAddr) -> std::io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{
        bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(v4) = addr else {
        panic!("tests use 127.0.0.1 only, not {addr}");
    };
    let socket = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // As TcpListener::bind does: connections of an earlier listener may be in TIME_WAIT.
    setsockopt(&socket, sockopt::ReuseAddr, &true)?;
    bind(socket.as_raw_fd(), &SockaddrIn::from(v4))?;
    Ok(socket)
}

/// A loopback address where no SIEM will ever answer, for as long as this lives.
pub struct DeadPort {
    _socket: std::os::fd::OwnedFd,
    pub addr: SocketAddr,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let (socket, addr) = hold_any_port();
        DeadPort {
            _socket: socket,
            addr,
        }
    }
}

/// A port of 127.0.0.1 chosen by the kernel, held (`hold_port`), and its address.
fn hold_any_port() -> (std::os::fd::OwnedFd, SocketAddr) {
    use nix::sys::socket::{getsockname, SockaddrIn};
    use std::os::fd::AsRawFd;
    let socket = hold_port(SocketAddr::from(([127, 0, 0, 1], 0))).expect("hold a port");
    let bound: SockaddrIn = getsockname(socket.as_raw_fd()).expect("getsockname");
    (socket, SocketAddr::from((bound.ip(), bound.port())))
}

/// The relay binary running `run --config`, with its stderr collected.
pub struct RelayProc {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub config: PathBuf,
}

impl RelayProc {
    /// Starts the relay on `config` and waits until `feeds` listeners are bound.
    pub fn start(config: &Path, feeds: usize) -> RelayProc {
        let p = RelayProc::spawn(config, &[]);
        let ok = wait_until(Duration::from_secs(20), || p.listen_addrs().len() >= feeds);
        assert!(ok, "relay did not start listening; log:\n{}", p.log_text());
        p
    }

    /// Starts the relay on `config` with `env` added to its environment; waits for nothing.
    pub fn spawn(config: &Path, env: &[(&str, &str)]) -> RelayProc {
        RelayProc::spawn_via(&[], config, env)
    }

    /// As [`RelayProc::spawn`], through the command `prefix` (a wrapper that sets limits, say,
    /// and `exec`s the relay: its arguments follow the prefix).
    pub fn spawn_via(prefix: &[&str], config: &Path, env: &[(&str, &str)]) -> RelayProc {
        let bin = env!("CARGO_BIN_EXE_ringrelay");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringrelay");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        let tag = child.id();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("RINGRELAY_TEST_LOG").is_some() {
                    eprintln!("relay {tag}: {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        RelayProc {
            child,
            log,
            config: config.to_path_buf(),
        }
    }

    /// Waits until a log line contains `needle`; returns whether one did within `limit`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.log_has(needle))
    }

    /// Sends `sig` to the relay.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, sig);
    }

    /// Waits up to `limit` for the relay to exit; its exit code (`Some(-signal)` if killed).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st.code().unwrap_or_else(|| {
                    -std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)
                }));
            }
            if Instant::now() > end {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the relay is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `feed name → address` from the `event=listening` lines.
    pub fn listen_addrs(&self) -> HashMap<String, SocketAddr> {
        let mut m = HashMap::new();
        for l in self.log.lock().unwrap().iter() {
            if l.contains("event=listening") {
                let feed = field(l, "feed");
                let addr = field(l, "addr").parse().expect("addr");
                m.insert(feed, addr);
            }
        }
        m
    }

    pub fn addr(&self, feed: &str) -> SocketAddr {
        self.listen_addrs()[feed]
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn log_has(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns the exit code and how long it took.
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        let t = Instant::now();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let end = t + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return (st.code(), t.elapsed());
            }
            if Instant::now() > end {
                self.kill9();
                return (None, t.elapsed());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Anonymous resident memory of the relay, in KiB (`RssAnon` in /proc).
    pub fn rss_anon_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of `key=` in a log line (unquoted values only).
pub fn field(line: &str, key: &str) -> String {
    let pat = format!(" {key}=");
    line.split(&pat)
        .nth(1)
        .map(|rest| {
            rest.split(' ')
                .next()
                .unwrap_or("")
                .trim_matches('"')
                .to_string()
        })
        .unwrap_or_default()
}

/// A SIEM receiver on a fixed address: collects newline-framed lines; can go down and come
/// back on the same port.
pub struct Sink {
    pub addr: SocketAddr,
    pub lines: Arc<Mutex<Vec<Vec<u8>>>>,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sink {
    /// A sink on a port of its own, up or down at first. The port is held from the start, also
    /// while the sink is down (`hold_port`).
    pub fn new(up: bool) -> Sink {
        let (socket, addr) = hold_any_port();
        let mut held = Some(socket);
        let mut s = Sink {
            addr,
            lines: Arc::default(),
            up: Arc::new(AtomicBool::new(up)),
            stop: Arc::default(),
            conns: Arc::default(),
            thread: None,
        };
        let (upf, stop, conns, lines) = (
            s.up.clone(),
            s.stop.clone(),
            s.conns.clone(),
            s.lines.clone(),
        );
        s.thread = Some(thread::spawn(move || {
            let mut listener: Option<TcpListener> = None;
            while !stop.load(Ordering::Relaxed) {
                let want = upf.load(Ordering::Relaxed);
                if want && listener.is_none() {
                    let socket = held.take().expect("a down sink holds its port");
                    nix::sys::socket::listen(&socket, nix::sys::socket::Backlog::MAXCONN)
                        .expect("listen");
                    let l = TcpListener::from(socket);
                    l.set_nonblocking(true).unwrap();
                    listener = Some(l);
                } else if !want && listener.is_some() {
                    listener = None;
                    for c in conns.lock().unwrap().drain(..) {
                        let _ = c.shutdown(Shutdown::Both);
                    }
                    held = Some(hold_port(addr).unwrap_or_else(|e| panic!("hold {addr}: {e}")));
                }
                if let Some(l) = &listener {
                    if let Ok((s, _)) = l.accept() {
                        s.set_nonblocking(false).unwrap();
                        conns.lock().unwrap().push(s.try_clone().unwrap());
                        let lines = lines.clone();
                        thread::spawn(move || {
                            let mut r = BufReader::with_capacity(1 << 20, s);
                            let mut buf = Vec::new();
                            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                                if buf.last() == Some(&b'\n') {
                                    buf.pop();
                                    lines.lock().unwrap().push(std::mem::take(&mut buf));
                                } else {
                                    buf.clear();
                                }
                            }
                        });
                        continue;
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
            for c in conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }));
        s
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }

    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// How many times each record number arrived (lines `rec <n> ...`).
    pub fn counts(&self) -> HashMap<u64, u32> {
        let mut m = HashMap::new();
        for l in self.lines.lock().unwrap().iter() {
            if let Some(n) = record_number(l) {
                *m.entry(n).or_insert(0) += 1;
            }
        }
        m
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A test record: `rec <n> ` padded with a pattern derived from n to `len` bytes.
pub fn record(n: u64, len: usize) -> Vec<u8> {
    let mut r = format!("rec {n} ").into_bytes();
    let fill = b"abcdefghijklmnopqrstuvwxyz0123456789";
    while r.len() < len {
        r.push(fill[(n as usize + r.len()) % fill.len()]);
    }
    r
}

/// The number in a `rec <n> ...` line, if the line is intact.
pub fn record_number(line: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(line).ok()?;
    let n: u64 = s.strip_prefix("rec ")?.split(' ').next()?.parse().ok()?;
    (record(n, line.len()) == line).then_some(n)
}

/// Sends records `range` newline-framed on one connection.
pub fn send_records(addr: SocketAddr, range: std::ops::Range<u64>, len: usize) {
    let mut s = TcpStream::connect(addr).expect("connect to relay");
    let mut batch = Vec::with_capacity(1 << 20);
    for n in range {
        batch.extend_from_slice(&record(n, len));
        batch.push(b'\n');
        if batch.len() >= 1 << 20 {
            s.write_all(&batch).expect("send");
            batch.clear();
        }
    }
    s.write_all(&batch).expect("send");
    s.shutdown(Shutdown::Write).ok();
    // Wait for the relay to close its side: it has read everything by then.
    let mut sink = [0u8; 64];
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.read(&mut sink);
}

/// A config with one feed `f` listening on an ephemeral port, one tcp output to `siem`.
pub fn one_feed_config(
    dir: &Path,
    siem: SocketAddr,
    extra_feed: &str,
    extra_output: &str,
) -> PathBuf {
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "off"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "128MiB" }}
{extra_feed}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem}"
{extra_output}
"#,
        data = dir.join("data").display()
    );
    let p = dir.join("ringrelay.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

/// [`one_feed_config`] with the admin endpoint on an ephemeral port ([`admin_addr`]).
pub fn one_feed_config_with_admin(
    dir: &Path,
    siem: SocketAddr,
    extra_feed: &str,
    extra_output: &str,
) -> PathBuf {
    let p = one_feed_config(dir, siem, extra_feed, extra_output);
    let text = std::fs::read_to_string(&p)
        .expect("read config")
        .replace("admin_listen = \"off\"", "admin_listen = \"127.0.0.1:0\"");
    std::fs::write(&p, text).expect("write config");
    p
}

/// Records in the ring(s) under `data`, per `ringrelay inspect`.
pub fn ring_records(data: &Path) -> u64 {
    let out = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .arg("inspect")
        .arg(data)
        .output()
        .expect("run inspect");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("records"))
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The admin endpoint's address, from the relay's `admin_listening` log line.
pub fn admin_addr(relay: &RelayProc) -> SocketAddr {
    let ok = wait_until(Duration::from_secs(10), || {
        relay.log_has("event=admin_listening")
    });
    assert!(ok, "no admin_listening line:\n{}", relay.log_text());
    let log = relay.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("event=admin_listening"))
        .unwrap();
    field(line, "addr").parse().unwrap()
}

/// Sends raw bytes to the admin endpoint, returns (status, body).
pub fn http(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {out:?}"));
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

/// `/metrics` read by a Prometheus text-format parser: `name{k="v",...}` (labels sorted by
/// key) → value. Every sample must belong to a family with a `# TYPE` line.
pub fn metrics(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    let typed: std::collections::HashSet<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    let scrape =
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parse");
    assert!(!scrape.samples.is_empty(), "no samples in {body}");
    let mut m = HashMap::new();
    for s in scrape.samples {
        assert!(
            typed.contains(s.metric.as_str()),
            "{} has no # TYPE",
            s.metric
        );
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            other => panic!("{}: unexpected value {other:?}", s.metric),
        };
        let mut labels: Vec<(&String, &String)> = s.labels.iter().collect();
        labels.sort();
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        m.insert(format!("{}{{{}}}", s.metric, labels.join(",")), v);
    }
    m
}
