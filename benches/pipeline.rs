//! End to end on loopback: a sender → ringrelay → a receiving sink, and in the same run the
//! sender → the sink directly, as the ceiling. Prints events/s, MiB/s, the ratio to the
//! ceiling, beside a plain copying proxy, and the relay's peak anonymous memory (RssAnon).
//! The ring is in `block` mode, so nothing is overwritten and the sink must get every byte.
//!
//! `cargo bench --bench pipeline` (env `PIPELINE_RECORDS` to change the record count).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::rss_anon_kib;

/// A sink that counts bytes until it has `want`; returns when it got them.
fn sink(listener: TcpListener, want: u64, got: Arc<AtomicU64>) -> thread::JoinHandle<Instant> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        while n < want {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k as u64;
                    got.store(n, Ordering::Relaxed);
                }
            }
        }
        Instant::now()
    })
}

/// Sends `records` records of `len` bytes (LF included) as fast as the socket takes them.
fn send(addr: SocketAddr, records: u64, len: usize) -> Instant {
    let mut s = TcpStream::connect(addr).expect("connect");
    let (batch, per_batch) = common::syslog_batch(len);
    let start = Instant::now();
    common::send_batches(&mut s, &batch, per_batch, len, records);
    start
}

fn direct(records: u64, len: usize) -> Duration {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let done = sink(l, records * len as u64, Arc::default());
    let start = send(addr, records, len);
    done.join().unwrap() - start
}

/// sender → a plain copying proxy (read into a 1 MiB buffer, write it out) → sink: what any
/// relay without a ring, framing or checksums would cost on this machine.
fn proxied(records: u64, len: usize) -> Duration {
    let sink_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let siem = sink_l.local_addr().unwrap();
    let proxy_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = proxy_l.local_addr().unwrap();
    let done = sink(sink_l, records * len as u64, Arc::default());
    let proxy = thread::spawn(move || {
        let (mut from, _) = proxy_l.accept().expect("accept");
        let mut to = TcpStream::connect(siem).expect("connect sink");
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => to.write_all(&buf[..k]).expect("proxy write"),
            }
        }
    });
    let start = send(addr, records, len);
    let end = done.join().unwrap();
    proxy.join().unwrap();
    end - start
}

/// One relay run over the ring in `dir` (created on the first run, reused warm on the next).
fn relayed(dir: &Path, records: u64, len: usize, ring: &str) -> (Duration, u64) {
    std::fs::create_dir_all(dir).unwrap();
    let sink_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let siem = sink_l.local_addr().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = dir.join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"off\"\n[[feed]]\nname = \"bench\"\ninput = {{ kind = \"tcp\", listen = \"{port}\" }}\nframing = \"newline\"\nbuffer = {{ size = \"{ring}\" }}\nwhen_full = \"block\"\n[[feed.output]]\nname = \"sink\"\nkind = \"tcp\"\naddress = \"{siem}\"\nreplay = \"0s\"\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::fs::File::create(dir.join("relay.log")).unwrap())
        .spawn()
        .expect("spawn ringrelay");
    let got = Arc::new(AtomicU64::new(0));
    let done = sink(sink_l, records * len as u64, got.clone());
    // Wait for the listener.
    let t0 = Instant::now();
    while TcpStream::connect(port).is_err() {
        let log = || std::fs::read_to_string(dir.join("relay.log")).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ringrelay exited ({status}) before listening:\n{}", log());
        }
        if t0.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("ringrelay did not listen within 10 s:\n{}", log());
        }
        thread::sleep(Duration::from_millis(20));
    }
    let pid = child.id();
    let sender = thread::spawn(move || send(port, records, len));
    let mut peak = 0;
    let t1 = Instant::now();
    while !done.is_finished() {
        peak = peak.max(rss_anon_kib(pid));
        if t1.elapsed() > Duration::from_secs(300) {
            // Killing the relay closes the sink's connection, which ends the sink.
            let _ = child.kill();
        }
        thread::sleep(Duration::from_millis(20));
    }
    let start = sender.join().unwrap();
    let end = done.join().unwrap();
    peak = peak.max(rss_anon_kib(pid));
    // SIGTERM: the relay checkpoints its cursor, so the warm run starts with nothing to resend.
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let t2 = Instant::now();
    while child.try_wait().ok().flatten().is_none() && t2.elapsed() < Duration::from_secs(10) {
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("relay.log")).unwrap_or_default();
    assert_eq!(
        got.load(Ordering::Relaxed),
        records * len as u64,
        "sink did not get everything; relay log:\n{log}"
    );
    (end - start, peak)
}

fn main() {
    let records: u64 = std::env::var("PIPELINE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let rate = |n: u64, len: usize, d: Duration| {
        let mib = (n * len as u64) as f64 / (1u64 << 20) as f64;
        format!(
            "{:>9.0} ev/s {:>6.0} MiB/s",
            n as f64 / d.as_secs_f64(),
            mib / d.as_secs_f64()
        )
    };
    for (len, ring) in [(1024usize, "1GiB"), (256, "1GiB"), (1024, "8GiB")] {
        let n = records * 1024 / len as u64;
        let direct = direct(n, len);
        let proxy = proxied(n, len);
        let dir = std::env::temp_dir().join(format!("ringrelay-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A new ring's first lap faults in fresh pages; a restarted relay's ring is resident
        // where the last run wrote it (all of a 1 GiB ring, a quarter of an 8 GiB one).
        let laps: &[&str] = if ring == "1GiB" {
            &["new ring", "warm ring"]
        } else {
            &["new ring"]
        };
        for lap in laps {
            let (relay, peak) = relayed(&dir, n, len, ring);
            println!(
                "pipeline {len:>4} B x {n}, {ring:>4} {lap:<9}: direct {} | plain proxy {} | ringrelay {} | vs direct {:.2}, vs proxy {:.2} | relay peak RssAnon {peak} KiB",
                rate(n, len, direct),
                rate(n, len, proxy),
                rate(n, len, relay),
                direct.as_secs_f64() / relay.as_secs_f64(),
                proxy.as_secs_f64() / relay.as_secs_f64(),
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
