//! Delivery at scale, end to end on loopback with the real binary:
//!
//! - **fan-out**: 8 feeds × 2 outputs, 8 senders at once; every output to its own counting sink,
//!   then the same with one output of each feed pointed at a port nobody listens on. Prints the
//!   up outputs' aggregate events/s and MiB/s in both runs and their ratio: a down SIEM must not
//!   slow the others.
//! - **backlog drain**: a 1 GiB ring filled while its SIEM is down, then the SIEM comes up;
//!   prints how fast the backlog is delivered (MiB/s, events/s), and the relay's peak RssAnon.
//!
//! `cargo bench --bench delivery` (env `DELIVERY_RECORDS` = records per feed in the fan-out).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::*;

const LEN: usize = 1024;

fn send(addr: SocketAddr, records: u64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let (batch, per_batch) = syslog_batch(LEN);
    send_batches(&mut s, &batch, per_batch, LEN, records);
}

/// One fan-out run; returns (seconds until every up output had everything, peak RssAnon KiB).
fn fanout(dir: &Path, records: u64, one_down: bool) -> (f64, u64) {
    const FEEDS: usize = 8;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut config = format!(
        "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"off\"\n",
        dir.join("data").display()
    );
    let mut counters = Vec::new();
    let mut inputs = Vec::new();
    for i in 0..FEEDS {
        let input = free_port();
        inputs.push(input);
        config.push_str(&format!(
            "[[feed]]\nname = \"f{i}\"\ninput = {{ kind = \"tcp\", listen = \"{input}\" }}\nframing = \"newline\"\nbuffer = {{ size = \"256MiB\" }}\n"
        ));
        for o in 0..2 {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = l.local_addr().unwrap();
            let address = if one_down && o == 1 {
                drop(l);
                addr // nobody listens here
            } else {
                let got = Arc::new(AtomicU64::new(0));
                counting_sink(l, got.clone(), bytes);
                counters.push(got);
                addr
            };
            config.push_str(&format!(
                "[[feed.output]]\nname = \"o{o}\"\nkind = \"tcp\"\naddress = \"{address}\"\nreplay = \"0s\"\n"
            ));
        }
    }
    let relay = Relay::start(dir, &config, &inputs);
    let pid = relay.child.id();
    let want = records * LEN as u64;
    let start = Instant::now();
    let senders: Vec<_> = inputs
        .iter()
        .map(|&a| thread::spawn(move || send(a, records)))
        .collect();
    let mut peak = 0;
    while counters.iter().any(|c| c.load(Ordering::Relaxed) < want) {
        peak = peak.max(rss_anon_kib(pid));
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "fan-out did not finish:\n{}",
            relay.log()
        );
        thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    for s in senders {
        s.join().unwrap();
    }
    (secs, peak.max(rss_anon_kib(pid)))
}

/// Fills a 1 GiB ring with its SIEM down, then measures the drain once the SIEM is up.
fn backlog(dir: &Path, records: u64) -> (f64, u64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let input = free_port();
    let admin = free_port();
    let siem = free_port();
    let config = format!(
        "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"{admin}\"\n[[feed]]\nname = \"backlog\"\ninput = {{ kind = \"tcp\", listen = \"{input}\" }}\nframing = \"newline\"\nbuffer = {{ size = \"1GiB\" }}\nwhen_full = \"block\"\n[[feed.output]]\nname = \"siem\"\nkind = \"tcp\"\naddress = \"{siem}\"\nreplay = \"0s\"\n",
        dir.join("data").display()
    );
    let relay = Relay::start(dir, &config, &[input]);
    let pid = relay.child.id();
    send(input, records);
    // Wait until the relay has every record in its ring.
    let received = || {
        let mut s = TcpStream::connect(admin).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        body.lines()
            .find(|l| l.starts_with("ringrelay_feed_records_received_total{"))?
            .rsplit(' ')
            .next()?
            .parse::<u64>()
            .ok()
    };
    let t0 = Instant::now();
    while received() != Some(records) {
        assert!(t0.elapsed() < Duration::from_secs(120), "{}", relay.log());
        thread::sleep(Duration::from_millis(50));
    }
    // The SIEM comes up; the output finds it at its next retry. Time from its connection on.
    let l = TcpListener::bind(siem).unwrap();
    let (mut s, _) = l.accept().unwrap();
    let start = Instant::now();
    let want = records * LEN as u64;
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut peak = rss_anon_kib(pid);
    let mut reads = 0u32;
    while got < want {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k as u64,
        }
        reads += 1;
        if reads.is_multiple_of(256) {
            peak = peak.max(rss_anon_kib(pid));
        }
    }
    assert_eq!(got, want, "backlog incomplete:\n{}", relay.log());
    (start.elapsed().as_secs_f64(), peak)
}

fn main() {
    let records: u64 = std::env::var("DELIVERY_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("ringrelay-bench-delivery-{}", std::process::id()));
    let mib = |n: u64| (n * LEN as u64) as f64 / f64::from(1u32 << 20);
    let (all_up, peak_up) = fanout(&dir, records, false);
    let (one_down, peak_down) = fanout(&dir, records, true);
    let total = records * 8;
    for (what, secs, peak, outputs) in [
        ("all 16 outputs up   ", all_up, peak_up, 16),
        ("one down per feed   ", one_down, peak_down, 8),
    ] {
        println!(
            "fan-out 8 feeds x {records} x {LEN} B, {what}: {:>9.0} ev/s in, {:>6.0} MiB/s in, {:>6.0} MiB/s out to {outputs} outputs | relay peak RssAnon {peak} KiB",
            total as f64 / secs,
            mib(total) / secs,
            mib(total) * f64::from(outputs / 8) / secs,
        );
    }
    println!(
        "fan-out: the up outputs' rate with one output per feed down is {:.2}x the all-up rate",
        all_up / one_down
    );
    // 900 MiB of 1 KiB records: the ring holds them all (1072-byte stride).
    let backlog_records = 900 * 1024;
    let (secs, peak) = backlog(&dir, backlog_records);
    println!(
        "backlog drain, 1 GiB ring, {backlog_records} x {LEN} B ({:.0} MiB): {:.2} s, {:>6.0} MiB/s, {:>9.0} ev/s | relay peak RssAnon {peak} KiB",
        mib(backlog_records),
        secs,
        mib(backlog_records) / secs,
        backlog_records as f64 / secs
    );
    let _ = std::fs::remove_dir_all(&dir);
}
