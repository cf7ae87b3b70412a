//! The HTTP output over TLS (`https://`) against a real HTTPS receiver on loopback, with
//! certificates made at run time: batches arrive whole over a verified, kept-alive TLS
//! connection; a receiver whose certificate the output does not trust is refused (counted, the
//! reason logged) while the ring keeps the records, which all arrive once it is trusted.

mod common;
#[path = "common/tls.rs"]
mod tlskit;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::*;
use tlskit::Pki;

const LEN: usize = 300;

/// An HTTPS receiver: answers every request 200 and keeps the records of its ndjson bodies.
struct Receiver {
    lines: Arc<Mutex<Vec<Vec<u8>>>>,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(addr: SocketAddr, config: Arc<rustls::ServerConfig>) -> Receiver {
        let r = Receiver {
            lines: Arc::default(),
            requests: Arc::default(),
            connections: Arc::default(),
            stop: Arc::default(),
        };
        let (lines, requests, connections, stop) = (
            r.lines.clone(),
            r.requests.clone(),
            r.connections.clone(),
            r.stop.clone(),
        );
        let listener = TcpListener::bind(addr).expect("bind the receiver");
        listener.set_nonblocking(true).unwrap();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok((tcp, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                tcp.set_nonblocking(false).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                connections.fetch_add(1, Ordering::Relaxed);
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let (lines, requests) = (lines.clone(), requests.clone());
                thread::spawn(move || {
                    let mut s = BufReader::new(rustls::StreamOwned::new(conn, tcp));
                    loop {
                        let mut len = 0usize;
                        let mut line = String::new();
                        // Request line and headers; a failed handshake ends here too.
                        loop {
                            line.clear();
                            if s.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0u8; len];
                        if s.read_exact(&mut body).is_err() {
                            return;
                        }
                        lines.lock().unwrap().extend(
                            body.split(|&b| b == b'\n')
                                .filter(|l| !l.is_empty())
                                .map(<[u8]>::to_vec),
                        );
                        requests.fetch_add(1, Ordering::Relaxed);
                        let w = s.get_mut();
                        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
                        if w.write_all(ok).and_then(|()| w.flush()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        r
    }

    fn counts(&self) -> std::collections::HashMap<u64, u32> {
        let mut m = std::collections::HashMap::new();
        for l in self.lines.lock().unwrap().iter() {
            if let Some(n) = record_number(l) {
                *m.entry(n).or_insert(0) += 1;
            }
        }
        m
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        thread::sleep(Duration::from_millis(20));
    }
}

fn config(dir: &TempDir, pki: &Pki, receiver: SocketAddr) -> std::path::PathBuf {
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "16MiB" }}

[[feed.output]]
name = "siem"
kind = "http"
url = "https://{receiver}/ingest"
ca = "{ca}"
server_name = "localhost"
max_batch_bytes = "64KiB"
max_batch_age = "100ms"
"#,
        data = dir.path().join("data").display(),
        ca = pki.path("ca.pem").display()
    );
    let p = dir.path().join("ringrelay.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn https_batches_arrive_whole_and_an_untrusted_receiver_is_retried_until_it_is_trusted() {
    let dir = TempDir::new("https-out");
    let pki = Pki::new(dir.path());
    let addr = free_port();
    // First a receiver with a certificate from another CA: refused by verification.
    let impostor = Receiver::start(addr, pki.server_config("server-other"));
    let relay = RelayProc::start(&config(&dir, &pki, addr), 1);
    let admin = admin_addr(&relay);
    send_records(relay.addr("f"), 0..5000, LEN);
    let refused = wait_until(Duration::from_secs(20), || {
        metrics(admin)["ringrelay_output_tls_handshake_failures_total{feed=\"f\",output=\"siem\"}"]
            >= 2.0
    });
    assert!(refused, "{}", relay.log_text());
    assert!(
        relay.log_has("TLS handshake failed (reason=unknown_ca)"),
        "{}",
        relay.log_text()
    );
    assert_eq!(impostor.requests.load(Ordering::Relaxed), 0);
    let m = metrics(admin);
    assert_eq!(
        m["ringrelay_output_lag_records{feed=\"f\",output=\"siem\"}"],
        5000.0
    );
    drop(impostor);
    // The real receiver comes up on the same address.
    thread::sleep(Duration::from_millis(100));
    let receiver = Receiver::start(addr, pki.server_config("server"));
    send_records(relay.addr("f"), 5000..10_000, LEN);
    let all = wait_until(Duration::from_secs(60), || {
        receiver.counts().len() >= 10_000
    });
    let counts = receiver.counts();
    assert!(all, "received {} distinct", counts.len());
    assert!(counts.values().all(|&c| c == 1), "a record arrived twice");
    // Batches of at most 64 KiB: many requests, on few (kept-alive) connections.
    let requests = receiver.requests.load(Ordering::Relaxed);
    assert!(
        requests >= 10_000 * LEN as u64 / (64 << 10),
        "{requests} requests"
    );
    assert!(receiver.connections.load(Ordering::Relaxed) <= 3);
    let m = metrics(admin);
    assert_eq!(
        m["ringrelay_output_records_delivered_total{feed=\"f\",output=\"siem\"}"],
        10_000.0
    );
    assert!(relay.log_has("event=tls_established"));
}
