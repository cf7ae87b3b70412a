//! Connection limits against the real binary on loopback (issue 14 item 7): thousands of idle
//! connections and slowloris HTTP clients must not lock the real senders out. Each flood comes
//! from an address of its own in 127/8 (all loopback on Linux), so it is one "source".

mod common;
#[path = "common/tls.rs"]
mod tlskit;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::socket::{self as sock, AddressFamily, SockFlag, SockType, SockaddrIn};

const LEN: usize = 100;

/// Raises this process's open-files soft limit to its hard limit (the relay inherits it).
fn raise_nofile() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    hard
}

/// A non-blocking connection from `src` (port chosen by the kernel) to `dst`, under way: the
/// call never waits, whether the listener's backlog has room or not.
fn connect_from(src: Ipv4Addr, dst: SocketAddr) -> TcpStream {
    let fd: OwnedFd = sock::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    sock::bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0))).expect("bind");
    let SocketAddr::V4(dst) = dst else {
        panic!("an IPv4 listener")
    };
    match sock::connect(fd.as_raw_fd(), &SockaddrIn::from(dst)) {
        Ok(()) | Err(nix::errno::Errno::EINPROGRESS) => {}
        Err(e) => panic!("connect from {src}: {e}"),
    }
    TcpStream::from(fd)
}

/// Record numbers below `n` that reached the sink (each once or more).
fn arrived(siem: &Sink, n: u64) -> u64 {
    siem.counts().keys().filter(|&&k| k < n).count() as u64
}

/// An NSS-like sender: connects, writes records `range`, shuts its write side and waits for
/// the relay to close; on an error it connects again and sends everything again, until
/// `deadline`. Returns the reconnects.
fn nss_sender(addr: SocketAddr, range: std::ops::Range<u64>, deadline: Instant) -> u64 {
    let mut batch = Vec::new();
    for n in range {
        batch.extend_from_slice(&record(n, LEN));
        batch.push(b'\n');
    }
    let mut reconnects = 0;
    while Instant::now() < deadline {
        let attempt = || -> std::io::Result<()> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            s.set_write_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(&batch)?;
            s.shutdown(Shutdown::Write)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut sink = [0u8; 64];
            // The relay closes once it has read everything.
            let _ = s.read(&mut sink);
            Ok(())
        };
        match attempt() {
            Ok(()) => return reconnects,
            Err(_) => {
                reconnects += 1;
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
    reconnects
}

fn metric(m: &std::collections::HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or(&0.0)
}

#[test]
fn five_thousand_idle_connections_do_not_lock_out_a_real_sender() {
    let hard = raise_nofile();
    assert!(hard >= 6_000, "RLIMIT_NOFILE hard limit {hard} is too low");
    let dir = TempDir::new("limits-flood");
    let siem = Sink::new(true);
    // The per-source limit off: the flood meets max_connections (256) itself.
    let cfg = one_feed_config_with_admin(dir.path(), siem.addr, "", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "kind = \"tcp\", listen = \"127.0.0.1:0\"",
        "kind = \"tcp\", listen = \"127.0.0.1:0\", max_connections_per_source = 0",
    );
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    let addr = relay.addr("f");

    // Before eviction and the accept pause the relay held 256 and accepted-and-closed the
    // rest: 0 of the 20,000 records arrived in 60 s.
    let idle: Vec<TcpStream> = (0..5_000)
        .map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 2), addr))
        .collect();
    let n = 20_000u64;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    let sender = thread::spawn(move || nss_sender(addr, 0..n, deadline));
    wait_until(Duration::from_secs(60), || arrived(&siem, n) == n);
    let took = t0.elapsed();
    let got = arrived(&siem, n);
    let reconnects = sender.join().unwrap();
    let m = metrics(admin);
    let evicted = metric(&m, "ringrelay_feed_connections_evicted_total{feed=\"f\"}");
    let paused = metric(&m, "ringrelay_feed_accept_paused_total{feed=\"f\"}");
    let open = metric(&m, "ringrelay_feed_connections_open{feed=\"f\"}");
    eprintln!(
        "idle flood: {got}/{n} records arrived in {took:?}, {reconnects} reconnects; \
         evicted {evicted}, accept paused {paused} times, {open} open"
    );
    assert_eq!(got, n, "log:\n{}", relay.log_text());
    assert!(evicted > 0.0 && paused > 0.0, "{m:?}");
    assert!(open <= 256.0, "{open} open");
    assert!(relay.log_has("event=connection_evicted"));
    assert!(relay.log_has("event=connections_at_limit"));
    drop(idle);
}

#[test]
fn one_source_is_held_to_its_limit_and_another_still_gets_through() {
    let dir = TempDir::new("limits-source");
    let siem = Sink::new(true);
    // Defaults: max_connections 256, max_connections_per_source 64.
    let cfg = one_feed_config_with_admin(dir.path(), siem.addr, "", "");
    let relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    let addr = relay.addr("f");

    // 80 senders from one address, each sends one record and stays open. (Before the
    // per-source limit all 80 were held, none refused.)
    let mut held = Vec::new();
    for i in 0..80u64 {
        let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 3), addr);
        s.set_nonblocking(false).unwrap();
        let mut rec = record(i, LEN);
        rec.push(b'\n');
        // A refused connection may be closed before or after this write.
        let _ = s.write_all(&rec);
        held.push(s);
        thread::sleep(Duration::from_millis(5));
    }
    // Another source: everything arrives.
    send_records(addr, 1_000..3_000, LEN);
    let ok = wait_until(Duration::from_secs(20), || {
        siem.counts().keys().filter(|&&k| k >= 1_000).count() == 2_000
    });
    let counts = siem.counts();
    let from_source = counts.keys().filter(|&&k| k < 80).count();
    let m = metrics(admin);
    let refused = metric(
        &m,
        "ringrelay_feed_connections_refused_total{feed=\"f\",reason=\"per_source\"}",
    );
    eprintln!(
        "per source: {from_source}/80 held senders' records arrived, {refused} refused; \
         other source {}/2000",
        counts.keys().filter(|&&k| k >= 1_000).count()
    );
    assert!(ok, "the other source's records did not all arrive");
    assert_eq!(from_source, 64, "log:\n{}", relay.log_text());
    assert_eq!(refused, 16.0, "{m:?}");
    assert!(relay.log_has("reason=per_source"));
    drop(held);
}

/// One feed `h` with an http input on `/nss` (`input_extra` added to it), a tcp output to `siem`.
fn http_config(dir: &TempDir, siem: SocketAddr, input_extra: &str) -> PathBuf {
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"

[[feed]]
name = "h"
input = {{ kind = "http", listen = "127.0.0.1:0", path = "/nss"{input_extra} }}
buffer = {{ size = "16MiB" }}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem}"
"#,
        data = dir.path().join("data").display()
    );
    let p = dir.path().join("ringrelay.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// POSTs records `range` as an LF batch on a new connection; `Ok` once answered 200.
fn post_batch(addr: SocketAddr, range: std::ops::Range<u64>) -> std::io::Result<()> {
    let mut body = Vec::new();
    for n in range {
        body.extend_from_slice(&record(n, LEN));
        body.push(b'\n');
    }
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!(
        "POST /nss HTTP/1.1\r\nHost: relay\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    s.write_all(&req)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    if resp.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "answered {:?}",
            String::from_utf8_lossy(&resp[..resp.len().min(40)])
        )))
    }
}

/// `n` HTTP clients from `src` that send a request head one byte per second, each connecting
/// again when the relay closes it.
struct Slowloris {
    stop: Arc<AtomicBool>,
    reconnects: Arc<AtomicU64>,
    thread: thread::JoinHandle<()>,
}

impl Slowloris {
    fn start(addr: SocketAddr, n: usize, src: Ipv4Addr) -> Slowloris {
        let stop = Arc::new(AtomicBool::new(false));
        let reconnects = Arc::new(AtomicU64::new(0));
        let (stop2, reconnects2) = (stop.clone(), reconnects.clone());
        let thread = thread::spawn(move || {
            let head = b"POST /nss HTTP/1.1\r\nHost: relay\r\nContent-Length: 10\r\nX-Slow: ";
            let mut conns: Vec<(TcpStream, usize)> =
                (0..n).map(|_| (connect_from(src, addr), 0)).collect();
            while !stop2.load(Ordering::Relaxed) {
                for (s, sent) in conns.iter_mut() {
                    let mut buf = [0u8; 256];
                    let closed = match s.read(&mut buf) {
                        Ok(_) => true,
                        Err(e) => e.kind() != ErrorKind::WouldBlock,
                    };
                    let closed = closed
                        || match s.write(&head[*sent % head.len()..][..1]) {
                            Ok(_) => {
                                *sent += 1;
                                false
                            }
                            Err(e) => {
                                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::NotConnected)
                            }
                        };
                    if closed {
                        *s = connect_from(src, addr);
                        *sent = 0;
                        reconnects2.fetch_add(1, Ordering::Relaxed);
                    }
                }
                thread::sleep(Duration::from_secs(1));
            }
        });
        Slowloris {
            stop,
            reconnects,
            thread,
        }
    }

    /// Stops the clients, closes their connections; returns the reconnects.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.reconnects.load(Ordering::Relaxed)
    }
}

/// POSTs batches `i*5 .. i*5+5` from `base`, `i` in `0..count`, each on a new connection,
/// retrying each until `deadline`; returns (answered 200, retries).
fn post_batches(addr: SocketAddr, base: u64, count: u64, deadline: Instant) -> (u64, u64) {
    let (mut ok, mut retries) = (0, 0);
    for i in 0..count {
        let range = base + i * 5..base + i * 5 + 5;
        loop {
            match post_batch(addr, range.clone()) {
                Ok(()) => {
                    ok += 1;
                    break;
                }
                Err(_) if Instant::now() < deadline => {
                    retries += 1;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(_) => break,
            }
        }
    }
    (ok, retries)
}

#[test]
fn slowloris_connections_do_not_block_legitimate_posts() {
    raise_nofile();
    let dir = TempDir::new("limits-slowloris");
    let siem = Sink::new(true);
    // The per-source limit off: the slowloris clients meet max_connections (256) itself.
    let cfg = http_config(
        &dir,
        siem.addr,
        ", header_timeout = \"2s\", max_connections_per_source = 0",
    );
    let relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    let addr = relay.addr("h");

    // 300 clients send a request head one byte per second; one the relay closed connects again.
    let loris = Slowloris::start(addr, 300, Ipv4Addr::new(127, 0, 0, 4));
    thread::sleep(Duration::from_secs(3));

    // Before header_timeout and eviction the last POST got through after 28 s, 280 retries.
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(10);
    let (ok, retries) = post_batches(addr, 0, 60, deadline);
    let posts_took = t0.elapsed();
    wait_until(Duration::from_secs(10), || arrived(&siem, 300) == 300);
    let got = arrived(&siem, 300);
    let m = metrics(admin);
    let reconnects = loris.stop();
    let timeouts = metric(&m, "ringrelay_feed_http_header_timeouts_total{feed=\"h\"}");
    let evicted = metric(&m, "ringrelay_feed_connections_evicted_total{feed=\"h\"}");
    eprintln!(
        "slowloris: {ok}/60 POSTs answered 200 in {posts_took:?} ({retries} retries), \
         {got}/300 records arrived; header timeouts {timeouts}, evicted {evicted}, \
         slowloris reconnects {reconnects}"
    );
    assert_eq!(ok, 60, "log:\n{}", relay.log_text());
    assert!(posts_took < Duration::from_secs(10), "{posts_took:?}");
    assert_eq!(got, 300);
    assert!(timeouts > 0.0, "{m:?}");
}

/// Records numbered in `range` that reached the sink.
fn arrived_in(siem: &Sink, range: std::ops::Range<u64>) -> u64 {
    siem.counts().keys().filter(|k| range.contains(k)).count() as u64
}

#[test]
fn at_default_limits_real_senders_get_through_five_thousand_idle_and_300_slowloris() {
    raise_nofile();
    let dir = TempDir::new("limits-defaults");
    let siem = Sink::new(true);
    // A tcp feed and an http feed, every limit at its default.
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "64MiB" }}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem}"

[[feed]]
name = "h"
input = {{ kind = "http", listen = "127.0.0.1:0", path = "/nss" }}
buffer = {{ size = "16MiB" }}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem}"
"#,
        data = dir.path().join("data").display(),
        siem = siem.addr
    );
    let cfg = dir.path().join("ringrelay.toml");
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, 2);
    let admin = admin_addr(&relay);
    let (tcp, http) = (relay.addr("f"), relay.addr("h"));

    let idle: Vec<TcpStream> = (0..5_000)
        .map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 2), tcp))
        .collect();
    let loris = Slowloris::start(http, 300, Ipv4Addr::new(127, 0, 0, 4));
    thread::sleep(Duration::from_secs(3));

    // Before: no record arrived in 70 s (12 reconnects), no POST was answered in 10 s.
    let n = 20_000u64;
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    let sender = thread::spawn(move || nss_sender(tcp, 0..n, deadline));
    let (ok, retries) = post_batches(http, 100_000, 60, t0 + Duration::from_secs(10));
    let posts_took = t0.elapsed();
    wait_until(Duration::from_secs(60), || {
        arrived_in(&siem, 0..n) == n && arrived_in(&siem, 100_000..100_300) == 300
    });
    let took = t0.elapsed();
    let reconnects = sender.join().unwrap();
    let (got, got_http) = (arrived_in(&siem, 0..n), arrived_in(&siem, 100_000..100_300));
    let m = metrics(admin);
    let loris_reconnects = loris.stop();
    let refused = metric(
        &m,
        "ringrelay_feed_connections_refused_total{feed=\"f\",reason=\"per_source\"}",
    );
    eprintln!(
        "defaults: tcp {got}/{n} records in {took:?} ({reconnects} reconnects), \
         {ok}/60 POSTs answered 200 in {posts_took:?} ({retries} retries), {got_http}/300 \
         records; idle source refused {refused}, slowloris reconnects {loris_reconnects}"
    );
    assert_eq!(got, n, "log:\n{}", relay.log_text());
    assert_eq!(ok, 60);
    assert_eq!(got_http, 300);
    assert!(refused > 0.0, "{m:?}");
    drop(idle);
}

#[test]
fn a_tls_sender_takes_the_place_of_a_connection_that_never_handshook() {
    let dir = TempDir::new("limits-tls");
    let pki = tlskit::Pki::new(dir.path());
    let siem = Sink::new(true);
    let cfg = one_feed_config_with_admin(dir.path(), siem.addr, "", "");
    let input = format!(
        r#"kind = "tls", listen = "127.0.0.1:0", cert = "{}", key = "{}", max_connections = 4, max_connections_per_source = 0"#,
        pki.path("server.pem").display(),
        pki.path("server.key").display()
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("kind = \"tcp\", listen = \"127.0.0.1:0\"", &input);
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    let addr = relay.addr("f");
    // Four connections that never start a handshake fill the feed.
    let silent: Vec<TcpStream> = (0..4)
        .map(|_| connect_from(Ipv4Addr::new(127, 0, 0, 5), addr))
        .collect();
    thread::sleep(Duration::from_millis(200));
    // Before: the sender was accepted and closed mid-handshake.
    let mut s = tlskit::connect(addr, pki.client_config(None)).expect("TLS handshake");
    tlskit::send_records_tls(&mut s, 0..1_000, LEN);
    tlskit::close_tls(s);
    let ok = wait_until(Duration::from_secs(10), || arrived(&siem, 1_000) == 1_000);
    let m = metrics(admin);
    let evicted = metric(&m, "ringrelay_feed_connections_evicted_total{feed=\"f\"}");
    eprintln!(
        "tls: {}/1000 records arrived; evicted {evicted}",
        arrived(&siem, 1_000)
    );
    assert!(ok, "log:\n{}", relay.log_text());
    assert!(evicted >= 1.0, "{m:?}");
    // An eviction is not a failed handshake.
    assert!(!relay.log_has("event=tls_handshake_failed"));
    drop(silent);
}
