//! What the end-to-end benchmarks share: the relay binary as a child process, loopback ports,
//! counting sinks, the relay's anonymous memory.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// Accepts connections on `l` and adds `count` of everything they bring to `got`
/// ([`bytes`] or [`lines`]).
pub fn counting_sink(l: TcpListener, got: Arc<AtomicU64>, count: fn(&[u8]) -> u64) {
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let got = got.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(k) = s.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    got.fetch_add(count(&buf[..k]), Ordering::Relaxed);
                }
            });
        }
    });
}

pub fn bytes(b: &[u8]) -> u64 {
    b.len() as u64
}

/// LF-terminated records.
pub fn lines(b: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', b).count() as u64
}

pub fn rss_anon_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

pub struct Relay {
    pub child: Child,
    pub dir: PathBuf,
}

impl Relay {
    pub fn start(dir: &Path, config: &str, listen: &[SocketAddr]) -> Relay {
        let cfg = dir.join("bench.toml");
        std::fs::write(&cfg, config).unwrap();
        // RINGRELAY_BIN runs another build (an A/B of two commits) through the same bench.
        let bin = std::env::var_os("RINGRELAY_BIN").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_ringrelay")),
            PathBuf::from,
        );
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&cfg)
            .stderr(std::fs::File::create(dir.join("relay.log")).unwrap())
            .spawn()
            .expect("spawn ringrelay");
        let mut r = Relay {
            child,
            dir: dir.to_path_buf(),
        };
        let t0 = Instant::now();
        for a in listen {
            while TcpStream::connect(a).is_err() {
                if t0.elapsed() > Duration::from_secs(20) || r.child.try_wait().unwrap().is_some() {
                    panic!("ringrelay did not listen on {a}:\n{}", r.log());
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("relay.log")).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && t.elapsed() < Duration::from_secs(10)
        {
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// About 1 MiB of NSS-like syslog lines of `len` bytes each (LF included); returns the bytes and
/// how many records they hold.
pub fn syslog_batch(len: usize) -> (Vec<u8>, usize) {
    batch_of(len, |i| {
        format!("<13>Nov 24 09:13:00 zscaler-nss: rec {i} ").into_bytes()
    })
}

/// About 1 MiB of records of `len` bytes each (LF included): `prefix(i)` padded with `x`. A
/// prefix that opens a JSON string (ends in `":"`) gets it and its object closed (`"}`).
pub fn batch_of(len: usize, prefix: impl Fn(usize) -> Vec<u8>) -> (Vec<u8>, usize) {
    let per_batch = (1 << 20) / len;
    let mut batch = Vec::with_capacity(per_batch * len);
    for i in 0..per_batch {
        let mut r = prefix(i);
        let close: &[u8] = if r.ends_with(b"\":\"") {
            b"\"}\n"
        } else {
            b"\n"
        };
        r.resize(len - close.len(), b'x');
        r.extend_from_slice(close);
        batch.extend_from_slice(&r);
    }
    (batch, per_batch)
}

/// Writes `records` records from `batch` (`per_batch` records of `len` bytes) to `w`, as fast as
/// it takes them.
pub fn send_batches(w: &mut dyn Write, batch: &[u8], per_batch: usize, len: usize, records: u64) {
    let mut left = records;
    while left > 0 {
        let k = left.min(per_batch as u64) as usize;
        w.write_all(&batch[..k * len]).expect("send");
        left -= k as u64;
    }
    w.flush().expect("flush");
}
