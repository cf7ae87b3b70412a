//! The HTTP input beside the TCP input, end to end on loopback in one run: the same 1 KiB
//! records posted as 512 KiB batches (Cloud NSS's usual "Max Batch Size", LF-separated and as
//! JSON arrays) on keep-alive connections, and streamed over plain TCP; the relay delivers each
//! feed to a counting TCP sink. Prints events/s and MiB/s per input, the ratio to TCP, and the
//! relay's peak RssAnon.
//!
//! `cargo bench --bench http_input` (env `HTTP_RECORDS` to change the record count).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const LEN: usize = 1024;
const BATCH: usize = 512 << 10;
const CONNS: u64 = 2;

/// Appends record `i`: a 1 KiB JSON object, cheap to make so the senders are not the limit.
fn record(out: &mut Vec<u8>, i: u64) {
    const PAD: [u8; LEN] = [b'x'; LEN];
    let start = out.len();
    let _ = write!(
        out,
        "{{\"rec\":{i},\"url\":\"http://example.net/\",\"pad\":\""
    );
    let fill = LEN - 2 - (out.len() - start);
    out.extend_from_slice(&PAD[..fill]);
    out.extend_from_slice(b"\"}");
}

/// Posts `records` records as batches on one keep-alive connection; every answer must be 200.
fn post_all(addr: SocketAddr, records: u64, json: bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut r = BufReader::new(s.try_clone().unwrap());
    let per = (BATCH / (LEN + 2)) as u64;
    let mut sent = 0;
    let mut body = Vec::with_capacity(BATCH + 4096);
    let mut line = String::new();
    while sent < records {
        body.clear();
        let n = per.min(records - sent);
        if json {
            body.push(b'[');
        }
        for i in 0..n {
            if json && i > 0 {
                body.push(b',');
            }
            record(&mut body, sent + i);
            if !json {
                body.push(b'\n');
            }
        }
        if json {
            body.push(b']');
        }
        let head = format!(
            "POST /nss HTTP/1.1\r\nHost: relay\r\nx-key: k\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        let mut len = 0;
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut skip = vec![0u8; len];
        r.read_exact(&mut skip).unwrap();
        sent += n;
    }
}

fn stream_all(addr: SocketAddr, records: u64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let mut buf = Vec::with_capacity(1 << 20);
    for i in 0..records {
        record(&mut buf, i);
        buf.push(b'\n');
        if buf.len() >= 1 << 20 {
            s.write_all(&buf).unwrap();
            buf.clear();
        }
    }
    s.write_all(&buf).unwrap();
}

/// One run of `input` ("tcp", "http lines", "http json"); returns (seconds, peak RssAnon KiB).
fn run(input: &str, records: u64) -> (f64, u64) {
    let dir = std::env::temp_dir().join(format!("ringrelay-bench-http-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let listen = free_port();
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let siem = sink.local_addr().unwrap();
    let got = Arc::new(AtomicU64::new(0));
    counting_sink(sink, got.clone(), bytes);
    let input_cfg = if input == "tcp" {
        format!("{{ kind = \"tcp\", listen = \"{listen}\" }}\nframing = \"newline\"")
    } else {
        format!("{{ kind = \"http\", listen = \"{listen}\", path = \"/nss\", auth_header = \"x-key\", secret = \"k\" }}")
    };
    let config = format!(
        "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"off\"\n[[feed]]\nname = \"b\"\ninput = {input_cfg}\nbuffer = {{ size = \"1GiB\" }}\nwhen_full = \"block\"\n[[feed.output]]\nname = \"sink\"\nkind = \"tcp\"\naddress = \"{siem}\"\nreplay = \"0s\"\n",
        dir.join("data").display()
    );
    let relay = Relay::start(&dir, &config, &[listen]);
    let pid = relay.child.id();
    let want = records * (LEN as u64 + 1);
    let start = Instant::now();
    let per_conn = records / CONNS;
    let senders: Vec<_> = (0..CONNS)
        .map(|_| {
            let input = input.to_string();
            thread::spawn(move || match input.as_str() {
                "tcp" => stream_all(listen, per_conn),
                "http lines" => post_all(listen, per_conn, false),
                _ => post_all(listen, per_conn, true),
            })
        })
        .collect();
    let mut peak = 0;
    while got.load(Ordering::Relaxed) < want {
        peak = peak.max(rss_anon_kib(pid));
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{}",
            relay.log()
        );
        thread::sleep(Duration::from_millis(5));
    }
    let secs = start.elapsed().as_secs_f64();
    for s in senders {
        s.join().unwrap();
    }
    drop(relay);
    let _ = std::fs::remove_dir_all(&dir);
    (secs, peak)
}

fn main() {
    let records: u64 = std::env::var("HTTP_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
        / CONNS
        * CONNS;
    let mib = records as f64 * LEN as f64 / f64::from(1u32 << 20);
    let mut tcp = 0.0;
    for input in ["tcp", "http lines", "http json"] {
        let (secs, peak) = run(input, records);
        if input == "tcp" {
            tcp = secs;
        }
        println!(
            "input {input:<10}: {records} x {LEN} B on {CONNS} connections: {:>9.0} ev/s {:>6.0} MiB/s | {:.2}x tcp | relay peak RssAnon {peak} KiB",
            records as f64 / secs,
            mib / secs,
            tcp / secs,
        );
    }
}
