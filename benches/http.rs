//! HTTP output throughput beside the plain TCP output, in one run, end to end on loopback with the
//! real binary: a sender pushes N records of 1 KiB into one feed whose only output is
//! (a) `tcp` to a counting sink, (b) `http` (ndjson, 512 KiB batches) to a sink that answers
//! 200 at once, (c) the same with `gzip = true` (the sink inflates to count). Prints events/s and
//! MiB/s of records delivered, requests sent, and the relay's peak RssAnon.
//!
//! `cargo bench --bench http` (env `HTTP_RECORDS` = records per run, default 200000).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::{batch_of, counting_sink, free_port, lines, rss_anon_kib, send_batches, Relay};

const LEN: usize = 1024;

fn send(addr: SocketAddr, records: u64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let (batch, per_batch) = batch_of(LEN, |i| format!("{{\"rec\":{i},\"pad\":\"").into_bytes());
    send_batches(&mut s, &batch, per_batch, LEN, records);
}

/// Answers every request 200 at once; counts the records (LF) of each body, inflated if gzipped.
fn http_sink(l: TcpListener, records: Arc<AtomicU64>, requests: Arc<AtomicU64>) {
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let (records, requests) = (records.clone(), requests.clone());
            thread::spawn(move || {
                let mut buf: Vec<u8> = Vec::with_capacity(2 << 20);
                let mut chunk = vec![0u8; 1 << 20];
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .expect("Content-Length");
                    let gzip = head.contains("content-encoding: gzip");
                    while buf.len() < head_end + len {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    let body = &buf[head_end..head_end + len];
                    let n = if gzip {
                        let mut out = Vec::new();
                        flate2::read::GzDecoder::new(body)
                            .read_to_end(&mut out)
                            .expect("gzip body");
                        out.iter().filter(|&&b| b == b'\n').count()
                    } else {
                        body.iter().filter(|&&b| b == b'\n').count()
                    };
                    buf.drain(..head_end + len);
                    if s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n{\"text\":\"Success\",\"code\":0}")
                        .is_err()
                    {
                        return;
                    }
                    records.fetch_add(n as u64, Ordering::Relaxed);
                    requests.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
}

/// One run; returns (seconds until the sink had every record, peak RssAnon KiB, requests).
fn run(dir: &Path, records: u64, output: &str) -> (f64, u64, u64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink = l.local_addr().unwrap();
    let got = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let output = if output == "tcp" {
        counting_sink(l, got.clone(), lines);
        format!("kind = \"tcp\"\naddress = \"{sink}\"")
    } else {
        http_sink(l, got.clone(), requests.clone());
        format!("kind = \"http\"\nurl = \"http://{sink}/ingest\"\n{output}")
    };
    let input = free_port();
    let config = format!(
        "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"off\"\n[[feed]]\nname = \"f\"\ninput = {{ kind = \"tcp\", listen = \"{input}\" }}\nframing = \"newline\"\nbuffer = {{ size = \"256MiB\" }}\nwhen_full = \"block\"\n[[feed.output]]\nname = \"out\"\n{output}\n",
        dir.join("data").display()
    );
    let relay = Relay::start(dir, &config, &[input]);
    let pid = relay.child.id();
    let start = Instant::now();
    let sender = thread::spawn(move || send(input, records));
    let mut peak = 0;
    while got.load(Ordering::Relaxed) < records {
        peak = peak.max(rss_anon_kib(pid));
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "run did not finish: {}",
            relay.log()
        );
        thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    sender.join().unwrap();
    (
        secs,
        peak.max(rss_anon_kib(pid)),
        requests.load(Ordering::Relaxed),
    )
}

fn main() {
    let records: u64 = std::env::var("HTTP_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let dir = std::env::temp_dir().join(format!("ringrelay-bench-http-{}", std::process::id()));
    let mib = records as f64 * LEN as f64 / f64::from(1u32 << 20);
    for (what, output) in [
        ("tcp output                 ", "tcp"),
        ("http output, ndjson 512KiB ", "max_batch_age = \"100ms\""),
        (
            "http output, ndjson + gzip ",
            "max_batch_age = \"100ms\"\ngzip = true",
        ),
    ] {
        let (secs, peak, requests) = run(&dir, records, output);
        println!(
            "{what}{records} x {LEN} B: {:>9.0} ev/s, {:>6.0} MiB/s, {requests:>5} requests | relay peak RssAnon {peak} KiB",
            records as f64 / secs,
            mib / secs,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
