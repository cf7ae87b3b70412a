//! Kafka output throughput beside the plain TCP output, in one run, end to end on loopback with
//! the real binary and a real broker: a sender pushes N records of 1 KiB into one feed with two
//! outputs, `tcp` to a counting sink and `kafka` into a 3-partition topic of tansu 0.6.0
//! (sqlite storage; `tests/kafka/install.sh` builds it), once without compression and once
//! with gzip. Prints, per output, events/s and MiB/s until its last record was delivered
//! (acknowledged by the broker, for kafka), the relay's CPU time per GiB delivered and its peak
//! RssAnon, and the broker's CPU time: on one machine the broker's sqlite is the ceiling.
//!
//! `cargo bench --bench kafka` (env `KAFKA_RECORDS` = records per run, default 200000).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::{counting_sink, free_port, lines, rss_anon_kib, send_batches, syslog_batch, Relay};

const LEN: usize = 1024;

/// `target/kafka` with the broker, installed by the project's script when missing.
fn kafka_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/kafka");
    if !dir.join("tansu").is_file() {
        let ok = Command::new("bash")
            .arg(root.join("tests/kafka/install.sh"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "tests/kafka/install.sh failed: the bench needs the broker"
        );
    }
    dir
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// A tansu broker on a free port with its sqlite file in `dir`; killed on drop.
struct Broker {
    child: Child,
    addr: SocketAddr,
}

impl Broker {
    fn start(dir: &Path) -> Broker {
        let tansu = kafka_dir().join("tansu");
        let addr = free_port();
        let url = format!("tcp://{addr}");
        let child = Command::new(&tansu)
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db", "--silent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tansu");
        let t0 = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "tansu did not listen"
            );
            thread::sleep(Duration::from_millis(20));
        }
        let created = Command::new(&tansu)
            .args([
                "topic",
                "create",
                "bench",
                "--partitions",
                "3",
                "--broker",
                &url,
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(created, "tansu topic create failed");
        Broker { child, addr }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One Prometheus sample of the relay's admin endpoint.
fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect(admin).ok()?;
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l.contains("output=\"kafka\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct Run {
    tcp_s: f64,
    kafka_s: f64,
    relay_cpu_s: f64,
    broker_cpu_s: f64,
    peak_kib: u64,
}

fn run(dir: &Path, records: u64, compression: &str) -> Run {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let broker = Broker::start(dir);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink = l.local_addr().unwrap();
    let got = Arc::new(AtomicU64::new(0));
    counting_sink(l, got.clone(), lines);
    let (input, admin) = (free_port(), free_port());
    let config = format!(
        "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"{admin}\"\n[[feed]]\nname = \"f\"\ninput = {{ kind = \"tcp\", listen = \"{input}\" }}\nframing = \"newline\"\nbuffer = {{ size = \"512MiB\" }}\nwhen_full = \"block\"\n[[feed.output]]\nname = \"tcp\"\nkind = \"tcp\"\naddress = \"{sink}\"\n[[feed.output]]\nname = \"kafka\"\nkind = \"kafka\"\nbrokers = [\"{}\"]\ntopic = \"bench\"\ncompression = \"{compression}\"\nmax_batch_bytes = \"1MiB\"\nmax_batch_age = \"50ms\"\n",
        dir.join("data").display(),
        broker.addr
    );
    let relay = Relay::start(dir, &config, &[input]);
    let pid = relay.child.id();
    let (cpu0, bcpu0) = (cpu_s(pid), cpu_s(broker.child.id()));
    let start = Instant::now();
    let sender = thread::spawn(move || {
        let mut s = TcpStream::connect(input).expect("connect");
        let (batch, per_batch) = syslog_batch(LEN);
        send_batches(&mut s, &batch, per_batch, LEN, records);
    });
    let (mut tcp_s, mut kafka_s, mut peak) = (None, None, 0);
    while tcp_s.is_none() || kafka_s.is_none() {
        peak = peak.max(rss_anon_kib(pid));
        if tcp_s.is_none() && got.load(Ordering::Relaxed) >= records {
            tcp_s = Some(start.elapsed().as_secs_f64());
        }
        if kafka_s.is_none()
            && metric(admin, "ringrelay_output_records_delivered_total")
                .is_some_and(|d| d >= records as f64)
        {
            kafka_s = Some(start.elapsed().as_secs_f64());
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "run did not finish: {}",
            relay.log()
        );
        thread::sleep(Duration::from_millis(20));
    }
    sender.join().unwrap();
    Run {
        tcp_s: tcp_s.unwrap_or(0.0),
        kafka_s: kafka_s.unwrap_or(0.0),
        relay_cpu_s: cpu_s(pid) - cpu0,
        broker_cpu_s: cpu_s(broker.child.id()) - bcpu0,
        peak_kib: peak.max(rss_anon_kib(pid)),
    }
}

fn main() {
    let records: u64 = std::env::var("KAFKA_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("ringrelay-bench-kafka-{}", std::process::id()));
    let mib = records as f64 * LEN as f64 / f64::from(1u32 << 20);
    println!("broker: tansu 0.6.0 (sqlite) on loopback, topic of 3 partitions; {records} x {LEN} B records");
    for compression in ["none", "gzip"] {
        let r = run(&dir, records, compression);
        // Both outputs delivered the same bytes: the relay's CPU per GiB counts one copy.
        let gib = mib / 1024.0;
        println!(
            "compression={compression:<4} | tcp output  : {:>8.0} ev/s {:>6.0} MiB/s | kafka output: {:>8.0} ev/s {:>6.0} MiB/s | relay CPU {:.2} s/GiB (both outputs), peak RssAnon {} KiB | broker CPU {:.1} s",
            records as f64 / r.tcp_s,
            mib / r.tcp_s,
            records as f64 / r.kafka_s,
            mib / r.kafka_s,
            r.relay_cpu_s / gib,
            r.peak_kib,
            r.broker_cpu_s,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
