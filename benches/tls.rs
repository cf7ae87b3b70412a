//! TLS beside plain TCP in the same run: sender → ringrelay → sink, once over plain TCP on both
//! sides and once over TLS on both sides (mutual TLS in, verified TLS out, TLS 1.3, both
//! newline-framed so the bytes are the same). Prints events/s, MiB/s, the TLS/TCP ratio and the
//! relay's peak anonymous memory; then the relay's memory per idle connection (handshake
//! done, nothing sent), TLS and plain.
//!
//! `cargo bench --bench tls` (env `TLS_BENCH_RECORDS`, default 500000 records of 1 KiB;
//! `TLS_BENCH_IDLE`, default 500 idle connections).

#[path = "common/mod.rs"]
mod benchkit;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/tls.rs"]
mod tlskit;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};
use tlskit::Pki;

const LEN: usize = 1024;

/// Counts bytes (plaintext, for TLS) until `want`; returns when it got them.
fn sink(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    want: u64,
    got: Arc<AtomicU64>,
) -> thread::JoinHandle<Instant> {
    thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut r: Box<dyn Read> = match tls {
            None => Box::new(s),
            Some(cfg) => Box::new(StreamOwned::new(ServerConnection::new(cfg).unwrap(), s)),
        };
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        while n < want {
            match r.read(&mut buf) {
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

fn send(w: &mut dyn Write, records: u64, len: usize) {
    let (batch, per_batch) = benchkit::syslog_batch(len);
    benchkit::send_batches(w, &batch, per_batch, len, records);
}

fn config(dir: &Path, pki: &Pki, tls: bool, siem: SocketAddr) -> std::path::PathBuf {
    let input = if tls {
        format!(
            "kind = \"tls\", listen = \"127.0.0.1:0\", max_connections = 4096, cert = \"{}\", key = \"{}\", client_ca = \"{}\"",
            pki.path("server.pem").display(),
            pki.path("server.key").display(),
            pki.path("ca.pem").display()
        )
    } else {
        "kind = \"tcp\", listen = \"127.0.0.1:0\", max_connections = 4096".to_string()
    };
    let output = if tls {
        format!(
            "kind = \"tls\"\nframing = \"newline\"\nserver_name = \"localhost\"\nca = \"{}\"",
            pki.path("ca.pem").display()
        )
    } else {
        "kind = \"tcp\"".to_string()
    };
    let cfg = dir.join(if tls { "tls.toml" } else { "tcp.toml" });
    std::fs::write(
        &cfg,
        format!(
            "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"off\"\n[[feed]]\nname = \"bench\"\ninput = {{ {input} }}\nframing = \"newline\"\nbuffer = {{ size = \"1GiB\" }}\nwhen_full = \"block\"\n[[feed.output]]\nname = \"sink\"\naddress = \"{siem}\"\nreplay = \"0s\"\n{output}\n",
            dir.join(if tls { "data-tls" } else { "data-tcp" }).display()
        ),
    )
    .unwrap();
    cfg
}

fn connect(addr: SocketAddr, pki: &Pki, tls: bool) -> Box<dyn Write + Send> {
    if tls {
        Box::new(tlskit::connect(addr, pki.client_config(Some("client"))).expect("TLS connect"))
    } else {
        Box::new(TcpStream::connect(addr).expect("connect"))
    }
}

/// One run: (elapsed from the first byte sent to the last received, peak RssAnon KiB).
fn run(dir: &Path, pki: &Pki, tls: bool, records: u64) -> (Duration, u64) {
    let sink_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let siem = sink_l.local_addr().unwrap();
    let cfg = config(dir, pki, tls, siem);
    let relay = common::RelayProc::start(&cfg, 1);
    let addr = relay.addr("bench");
    let got = Arc::new(AtomicU64::new(0));
    let want = records * LEN as u64;
    let done = sink(
        sink_l,
        tls.then(|| pki.server_config("server")),
        want,
        got.clone(),
    );
    let mut w = connect(addr, pki, tls);
    let start = Instant::now();
    let sender = thread::spawn(move || send(&mut *w, records, LEN));
    let mut peak = 0;
    while !done.is_finished() {
        peak = peak.max(relay.rss_anon_kib());
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "stuck at {} of {want} bytes",
            got.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(20));
    }
    sender.join().unwrap();
    let end = done.join().unwrap();
    peak = peak.max(relay.rss_anon_kib());
    assert_eq!(
        got.load(Ordering::Relaxed),
        want,
        "sink did not get everything"
    );
    (end - start, peak)
}

/// Relay RssAnon growth per idle connection, KiB.
fn idle(dir: &Path, pki: &Pki, tls: bool, conns: usize) -> f64 {
    let sink_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(dir, pki, tls, sink_l.local_addr().unwrap());
    let relay = common::RelayProc::start(&cfg, 1);
    let addr = relay.addr("bench");
    // One connection first, so one-time allocations are not counted.
    let first = connect(addr, pki, tls);
    thread::sleep(Duration::from_millis(300));
    let before = relay.rss_anon_kib();
    let mut held = Vec::with_capacity(conns);
    for _ in 0..conns {
        held.push(connect(addr, pki, tls));
    }
    thread::sleep(Duration::from_millis(500));
    let after = relay.rss_anon_kib();
    drop(held);
    drop(first);
    (after.saturating_sub(before)) as f64 / conns as f64
}

fn main() {
    let records: u64 = std::env::var("TLS_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let conns: usize = std::env::var("TLS_BENCH_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let dir = common::TempDir::new("bench-tls");
    let pki = Pki::new(dir.path());
    let rate = |d: Duration| {
        let mib = (records * LEN as u64) as f64 / (1u64 << 20) as f64;
        format!(
            "{:>8.0} ev/s {:>6.0} MiB/s",
            records as f64 / d.as_secs_f64(),
            mib / d.as_secs_f64()
        )
    };
    let (tcp, tcp_peak) = run(dir.path(), &pki, false, records);
    let (tls, tls_peak) = run(dir.path(), &pki, true, records);
    println!(
        "tls {LEN} B x {records}: tcp in/out {} peak RssAnon {tcp_peak} KiB | tls in/out {} peak RssAnon {tls_peak} KiB | tls/tcp throughput {:.2}",
        rate(tcp),
        rate(tls),
        tcp.as_secs_f64() / tls.as_secs_f64()
    );
    let tcp_idle = idle(dir.path(), &pki, false, conns);
    let tls_idle = idle(dir.path(), &pki, true, conns);
    println!(
        "idle connections x {conns}: RssAnon per connection tcp {tcp_idle:.1} KiB, tls {tls_idle:.1} KiB"
    );
}
