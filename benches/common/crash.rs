//! The crash window (issue 15 item 1): how many records a SIGKILL of the relay loses under a
//! steady sender. Shared by `benches/crash_window.rs` (25 kills per policy) and
//! `tests/crash_window.rs` (a short run in CI).
//!
//! A sender thread writes numbered newline records of `len` bytes at `rate` records/s over TCP
//! on 127.0.0.1, one `write` per record, reconnecting when the relay is gone. The relay (the real
//! binary) delivers to a TCP sink thread that notes every intact record it gets. The loop kills
//! the relay with SIGKILL at a random moment 1 to 2 s into each run (a random point of the 1 s
//! sync period), restarts it on the same ring and port, and goes on. At the end the last relay
//! stops cleanly once it delivered everything, and a record the sender wrote successfully (its
//! `write` returned in full) that the sink never got is lost: it never reached the ring, since
//! the output delivers everything in the ring (replay 0, nothing overwritten). A lost record is
//! charged to the first kill after it was written.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What one policy's kill loop found.
pub struct Window {
    pub policy: String,
    /// Records lost at each kill, in order.
    pub lost: Vec<u64>,
    /// Records the sender wrote successfully.
    pub written: u64,
    /// Lost records written after the last kill (the clean stop should lose none).
    pub lost_at_stop: u64,
}

impl Window {
    pub fn median(&self) -> u64 {
        let mut v = self.lost.clone();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    }

    pub fn max(&self) -> u64 {
        self.lost.iter().copied().max().unwrap_or(0)
    }

    pub fn line(&self) -> String {
        format!(
            "sync = {:<10} kills {:>3}  lost per kill: median {:>5}  max {:>5}  (all: {:?}); written {}, lost at the clean stop {}",
            format!("{:?}", self.policy),
            self.lost.len(),
            self.median(),
            self.max(),
            self.lost,
            self.written,
            self.lost_at_stop
        )
    }
}

const PREFIX: &str = "<13>Nov 24 09:13:00 crash-window: rec ";

fn record(n: u64, len: usize) -> Vec<u8> {
    let mut r = format!("{PREFIX}{n:010} ").into_bytes();
    r.resize(len - 1, b'x');
    r.push(b'\n');
    r
}

/// The number of an intact record line (without its LF), as the sender wrote it.
fn number(line: &[u8], len: usize) -> Option<u64> {
    let at = line.windows(4).position(|w| w == b"rec ")?;
    let tail = &line[at + 4..];
    if tail.len() != len - 1 - PREFIX.len() || tail.get(10) != Some(&b' ') {
        return None;
    }
    if !tail[11..].iter().all(|&b| b == b'x') {
        return None;
    }
    std::str::from_utf8(&tail[..10]).ok()?.parse().ok()
}

/// A set of record numbers shared between threads.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<u64>>>);

impl Seen {
    fn insert(&self, n: u64) {
        let mut bits = self.0.lock().unwrap();
        let (w, b) = ((n / 64) as usize, n % 64);
        if bits.len() <= w {
            bits.resize(w + 1 + (w >> 2), 0);
        }
        bits[w] |= 1 << b;
    }

    fn contains(&self, n: u64) -> bool {
        let bits = self.0.lock().unwrap();
        bits.get((n / 64) as usize)
            .is_some_and(|w| w & (1 << (n % 64)) != 0)
    }
}

fn sink(l: TcpListener, seen: Seen, got: Arc<AtomicU64>, len: usize) {
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let (seen, got) = (seen.clone(), got.clone());
            thread::spawn(move || {
                let mut r = BufReader::with_capacity(1 << 20, s);
                let mut line = Vec::with_capacity(2 * len);
                loop {
                    line.clear();
                    match r.read_until(b'\n', &mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    if let Some(n) = number(&line, len) {
                        seen.insert(n);
                        got.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
}

/// Writes records at `rate`/s to `addr` until `stop`; the numbers it wrote successfully go to
/// `written`, the next number to `next`.
fn sender(
    addr: SocketAddr,
    rate: u64,
    len: usize,
    written: Seen,
    next: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut conn: Option<TcpStream> = None;
        while !stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            if sent >= due {
                thread::sleep(Duration::from_micros(500));
                continue;
            }
            let s = match conn.as_mut() {
                Some(s) => s,
                None => match TcpStream::connect(addr) {
                    Ok(s) => {
                        s.set_nodelay(true).ok();
                        conn.insert(s)
                    }
                    Err(_) => {
                        // Nobody listens while the relay restarts: the records of that time
                        // are not sent (and not counted), as a real sender would buffer them.
                        thread::sleep(Duration::from_millis(2));
                        sent = (start.elapsed().as_secs_f64() * rate as f64) as u64;
                        continue;
                    }
                },
            };
            let n = next.load(Ordering::Relaxed);
            match s.write_all(&record(n, len)) {
                Ok(()) => written.insert(n),
                Err(_) => conn = None,
            }
            // A record that failed (or went out in part) is never counted as written; its number
            // is not used again, so a part that did reach the relay counts for nothing.
            next.store(n + 1, Ordering::Relaxed);
            sent += 1;
        }
    })
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

fn spawn(bin: &Path, cfg: &Path, log: &Path, input: SocketAddr) -> Child {
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .expect("spawn ringrelay");
    let t0 = Instant::now();
    // Listening: a connection the relay accepts (and reads nothing from).
    while TcpStream::connect(input).is_err() {
        if t0.elapsed() > Duration::from_secs(20) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ringrelay did not listen on {input}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(2));
    }
    child
}

/// A small random number generator (xorshift), seeded from the clock.
pub struct Rng(u64);

impl Rng {
    pub fn new() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng(t | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The relay binary: `RINGRELAY_BIN` (an A/B of two builds) or this build's.
pub fn relay_bin(default: &str) -> PathBuf {
    std::env::var_os("RINGRELAY_BIN").map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// Runs `kills` SIGKILLs of the relay at `sync = policy` under a sender of `rate` records/s of
/// `len` bytes, in a fresh directory under `dir`.
pub fn kill_loop(
    bin: &Path,
    dir: &Path,
    policy: &str,
    kills: usize,
    rate: u64,
    len: usize,
) -> Window {
    let dir = dir.join(policy);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sink_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink_l.local_addr().unwrap();
    let input = free_port();
    let cfg = dir.join("crash.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"
sync = "{policy}"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "{input}" }}
buffer = {{ size = "256MiB" }}

[[feed.output]]
name = "sink"
kind = "tcp"
address = "{sink_addr}"
replay = "0s"
"#,
            data = dir.join("data").display()
        ),
    )
    .unwrap();
    let log = dir.join("relay.log");
    let seen = Seen::default();
    let got = Arc::new(AtomicU64::new(0));
    sink(sink_l, seen.clone(), got.clone(), len);

    let written = Seen::default();
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut relay = spawn(bin, &cfg, &log, input);
    let send = sender(
        input,
        rate,
        len,
        written.clone(),
        next.clone(),
        stop.clone(),
    );
    let mut rng = Rng::new();
    // Records numbered below `bounds[k]` and at or above `bounds[k - 1]` were written before
    // kill k.
    let mut bounds = Vec::with_capacity(kills);
    for _ in 0..kills {
        thread::sleep(Duration::from_millis(1000 + rng.below(1000)));
        relay.kill().unwrap();
        relay.wait().unwrap();
        bounds.push(next.load(Ordering::Relaxed));
        relay = spawn(bin, &cfg, &log, input);
    }
    thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    send.join().unwrap();
    let total = next.load(Ordering::Relaxed);
    // Until the sink stops getting records: everything in the ring is delivered.
    let mut last = u64::MAX;
    while got.load(Ordering::Relaxed) != last {
        last = got.load(Ordering::Relaxed);
        thread::sleep(Duration::from_millis(1000));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &relay.id().to_string()])
        .status();
    relay.wait().unwrap();
    thread::sleep(Duration::from_millis(200));

    let mut lost = vec![0u64; kills];
    let mut lost_at_stop = 0;
    let mut n_written = 0;
    for n in 0..total {
        if !written.contains(n) {
            continue;
        }
        n_written += 1;
        if seen.contains(n) {
            continue;
        }
        match bounds.iter().position(|&b| n < b) {
            Some(k) => lost[k] += 1,
            None => lost_at_stop += 1,
        }
    }
    Window {
        policy: policy.to_string(),
        lost,
        written: n_written,
        lost_at_stop,
    }
}
