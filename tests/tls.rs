//! TLS end to end: the real binary, real sockets on loopback, certificates made at run time.
//! Mutual TLS in (accepted and rejected handshakes, counted), TLS out (RFC 5425 frames, an
//! untrusted receiver retried), TLS on both sides through a SIEM outage and SIGKILL, SIGHUP
//! certificate rotation, syslog headers, configuration errors.

mod common;
#[path = "common/tls.rs"]
mod tlskit;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use tlskit::*;

const LEN: usize = 200;

/// A config: feed `f` with `input`, one output with `output` (TOML lines), admin on.
fn config(dir: &Path, input: &str, output: &str) -> std::path::PathBuf {
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"
instance = "relay-a"

[[feed]]
name = "f"
input = {{ {input} }}
buffer = {{ size = "64MiB" }}

[[feed.output]]
name = "siem"
{output}
"#,
        data = dir.join("data").display()
    );
    let p = dir.join("ringrelay.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn tls_input(pki: &Pki, client_ca: bool) -> String {
    let mut s = format!(
        r#"kind = "tls", listen = "127.0.0.1:0", cert = "{}", key = "{}""#,
        pki.path("server.pem").display(),
        pki.path("server.key").display()
    );
    if client_ca {
        s += &format!(r#", client_ca = "{}""#, pki.path("ca.pem").display());
    }
    s
}

fn tcp_output(siem: SocketAddr) -> String {
    format!("kind = \"tcp\"\naddress = \"{siem}\"")
}

fn tls_output(pki: &Pki, siem: SocketAddr) -> String {
    format!(
        "kind = \"tls\"\naddress = \"{siem}\"\nca = \"{}\"\nserver_name = \"localhost\"",
        pki.path("ca.pem").display()
    )
}

/// A sample of `metrics()` (0 when absent), as a count.
fn metric(m: &std::collections::HashMap<String, f64>, name_labels: &str) -> u64 {
    m.get(name_labels).copied().unwrap_or(0.0) as u64
}

fn assert_all(counts: &std::collections::HashMap<u64, u32>, n: u64, dups_allowed: bool) {
    let missing: Vec<u64> = (0..n)
        .filter(|i| !counts.contains_key(i))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "missing records, first: {missing:?}");
    assert_eq!(counts.len() as u64, n, "records outside 0..{n} arrived");
    if !dups_allowed {
        let dups = counts.values().filter(|&&c| c > 1).count();
        assert_eq!(dups, 0, "{dups} records arrived more than once");
    }
}

/// Tries a handshake and a record with `cfg`; the relay must refuse it (now or at the first
/// read, as TLS 1.3 clients learn of a rejected certificate after their Finished).
fn rejected(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) {
    if let Ok(mut s) = connect(addr, cfg) {
        let _ = s.write_all(b"rec 999999 should not arrive\n");
        let _ = s.flush();
        let mut buf = [0u8; 16];
        let r = s.read(&mut buf);
        assert!(
            !matches!(r, Ok(n) if n > 0),
            "the relay answered a rejected client"
        );
    }
}

#[test]
fn mutual_tls_accepts_the_good_client_and_counts_every_rejection_by_reason() {
    let dir = TempDir::new("tls-mtls");
    let pki = Pki::new(dir.path());
    let siem = Sink::new(true);
    let cfg = config(dir.path(), &tls_input(&pki, true), &tcp_output(siem.addr));
    let relay = RelayProc::start(&cfg, 1);
    let addr = relay.addr("f");
    let admin = admin_addr(&relay);

    // A good client streams the whole time the bad ones knock.
    let good = pki.client_config(Some("client"));
    let streaming = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicU64::new(0));
    let t = {
        let (good, streaming, sent) = (good.clone(), streaming.clone(), sent.clone());
        thread::spawn(move || {
            let mut s = connect(addr, good).expect("good client handshake");
            let mut n = 0;
            while streaming.load(Ordering::Relaxed) || n < 2000 {
                send_records_tls(&mut s, n..n + 100, LEN);
                n += 100;
                thread::sleep(Duration::from_millis(5));
            }
            sent.store(n, Ordering::Relaxed);
            close_tls(s);
        })
    };
    rejected(addr, pki.client_config(None));
    rejected(addr, pki.client_config(Some("client-other")));
    rejected(addr, pki.client_config(Some("client-expired")));
    // Plain TCP on the TLS port.
    {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(b"rec 999998 plain text on a TLS port\n");
        let mut buf = [0u8; 64];
        let _ = s.read(&mut buf); // an alert or EOF
    }
    // A TLS 1.0 ClientHello (TLS_RSA_WITH_AES_128_CBC_SHA, signature_algorithms only).
    {
        let mut hello = vec![0x16, 0x03, 0x01, 0x00, 55, 0x01, 0x00, 0x00, 51, 0x03, 0x01];
        hello.extend_from_slice(&[7u8; 32]);
        hello.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0x2f, 0x01, 0x00]);
        hello.extend_from_slice(&[0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&hello).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        // An alert record: level fatal (2), protocol_version (70).
        assert_eq!(
            &buf[..n.min(7)],
            &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70][..n.min(7)]
        );
    }
    streaming.store(false, Ordering::Relaxed);
    t.join().unwrap();
    let n = sent.load(Ordering::Relaxed);
    let ok = wait_until(Duration::from_secs(30), || siem.counts().len() as u64 >= n);
    assert!(
        ok,
        "only {} of {n}; log:\n{}",
        siem.count(),
        relay.log_text()
    );
    assert_all(&siem.counts(), n, false);

    let ok = wait_until(Duration::from_secs(10), || {
        let m = metrics(admin);
        ["no_client_certificate", "unknown_ca", "expired", "not_tls"]
            .iter()
            .all(|r| {
                metric(
                    &m,
                    &format!(
                        "ringrelay_feed_tls_handshake_failures_total{{feed=\"f\",reason=\"{r}\"}}"
                    ),
                ) == 1
            })
    });
    assert!(
        ok,
        "metrics:\n{:?}\nlog:\n{}",
        metrics(admin),
        relay.log_text()
    );
    let m = metrics(admin);
    assert_eq!(
        metric(&m, "ringrelay_feed_tls_handshakes_total{feed=\"f\"}"),
        1,
        "{m:?}"
    );
    let log = relay.log_text();
    for reason in [
        "no_client_certificate",
        "unknown_ca",
        "expired",
        "not_tls",
        "protocol_version",
    ] {
        assert!(
            log.lines().any(|l| l.contains("event=tls_handshake_failed")
                && l.contains(&format!("reason={reason}"))
                && l.contains("peer=127.0.0.1:")),
            "no failure line for {reason}:\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("event=tls_established") && l.contains("subject=connector-1")),
        "{log}"
    );
}

/// A sender that closes its socket without reading anything must lose nothing: the relay sends
/// no TLS 1.3 session tickets, which would sit unread at the sender and turn its close into a
/// reset that discards what the relay had not read yet.
#[test]
fn a_tls_sender_that_closes_without_reading_loses_nothing() {
    let dir = TempDir::new("tls-abrupt");
    let pki = Pki::new(dir.path());
    let siem = Sink::new(true);
    let cfg = config(dir.path(), &tls_input(&pki, true), &tcp_output(siem.addr));
    let relay = RelayProc::start(&cfg, 1);
    let n = 100_000;
    let mut s = connect(relay.addr("f"), pki.client_config(Some("client"))).unwrap();
    send_records_tls(&mut s, 0..n, LEN);
    drop(s);
    let ok = wait_until(Duration::from_secs(30), || siem.counts().len() as u64 >= n);
    assert!(
        ok,
        "only {} of {n}; log:\n{}",
        siem.count(),
        relay.log_text()
    );
    assert_all(&siem.counts(), n, false);
}

/// A connection the relay closes (here at its idle timeout) ends with a close_notify: the
/// sender's TLS stack reads a clean end of stream, not a truncation.
#[test]
fn an_idle_tls_sender_is_closed_with_a_close_notify() {
    let dir = TempDir::new("tls-idle-close");
    let pki = Pki::new(dir.path());
    let siem = Sink::new(true);
    let input = tls_input(&pki, true) + r#", idle_timeout = "1s""#;
    let cfg = config(dir.path(), &input, &tcp_output(siem.addr));
    let relay = RelayProc::start(&cfg, 1);
    let mut s = connect(relay.addr("f"), pki.client_config(Some("client"))).unwrap();
    send_records_tls(&mut s, 0..10, LEN);
    let mut buf = [0u8; 64];
    // rustls reports a close without close_notify as UnexpectedEof.
    match s.read(&mut buf) {
        Ok(0) => {}
        other => panic!(
            "expected a clean close, got {other:?}; log:\n{}",
            relay.log_text()
        ),
    }
    let m = metrics(admin_addr(&relay));
    assert_eq!(
        metric(
            &m,
            "ringrelay_feed_connections_idle_closed_total{feed=\"f\"}"
        ),
        1
    );
    wait_until(Duration::from_secs(10), || siem.counts().len() >= 10);
    assert_all(&siem.counts(), 10, false);
}

#[test]
fn a_silent_client_is_dropped_at_the_handshake_timeout() {
    let dir = TempDir::new("tls-timeout");
    let pki = Pki::new(dir.path());
    let siem = Sink::new(true);
    let input = tls_input(&pki, true) + r#", handshake_timeout = "300ms""#;
    let cfg = config(dir.path(), &input, &tcp_output(siem.addr));
    let relay = RelayProc::start(&cfg, 1);
    let mut s = TcpStream::connect(relay.addr("f")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    let ok = wait_until(Duration::from_secs(5), || relay.log_has("reason=timeout"));
    assert!(ok, "{}", relay.log_text());
}

#[test]
fn tls_output_sends_octet_frames_and_retries_an_untrusted_receiver_until_it_is_fixed() {
    let dir = TempDir::new("tls-out");
    let pki = Pki::new(dir.path());
    let addr = free_port();
    // The receiver presents a certificate from a CA the relay does not trust.
    let bad = TlsSink::start(addr, pki.server_config("server-other"));
    let input = r#"kind = "tcp", listen = "127.0.0.1:0""#;
    let cfg = config(dir.path(), input, &tls_output(&pki, addr));
    let relay = RelayProc::start(&cfg, 1);
    let n = 20_000;
    send_records(relay.addr("f"), 0..n, LEN);
    let ok = wait_until(Duration::from_secs(20), || {
        relay
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("event=output_down") && l.contains("reason=unknown_ca"))
            .count()
            >= 2
    });
    assert!(ok, "no repeated unknown_ca failures:\n{}", relay.log_text());
    assert_eq!(bad.count(), 0, "frames went to an untrusted receiver");
    let m = metrics(admin_addr(&relay));
    assert!(
        metric(
            &m,
            "ringrelay_output_tls_handshake_failures_total{feed=\"f\",output=\"siem\"}"
        ) >= 2,
        "{m:?}"
    );
    assert_eq!(
        metric(
            &m,
            "ringrelay_output_lag_records{feed=\"f\",output=\"siem\"}"
        ),
        n,
        "the ring must keep every record while the receiver is refused"
    );
    // Fixed: the receiver comes back with a certificate from the right CA.
    drop(bad);
    let good = TlsSink::start(addr, pki.server_config("server"));
    let ok = wait_until(Duration::from_secs(60), || good.counts().len() as u64 >= n);
    assert!(
        ok,
        "only {} of {n}; log:\n{}",
        good.count(),
        relay.log_text()
    );
    assert_eq!(*good.bad.lock().unwrap(), 0, "bad octet frames");
    // A new ring has nothing to replay: each record arrives once, in order.
    let frames = good.frames.lock().unwrap();
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(record_number(f), Some(i as u64), "frame {i}");
    }
}

#[test]
fn tls_output_presents_its_client_certificate_and_octet_counts_syslog_frames() {
    let dir = TempDir::new("tls-out-mtls");
    let pki = Pki::new(dir.path());
    let addr = free_port();
    let siem = TlsSink::start(addr, pki.server_config_mtls("server"));
    let output = format!(
        "{}\nclient_cert = \"{}\"\nclient_key = \"{}\"\nsyslog = \"rfc3164\"\nhostname = \"relay-host\"\napp_name = \"lss\"",
        tls_output(&pki, addr),
        pki.path("client.pem").display(),
        pki.path("client.key").display()
    );
    let cfg = config(
        dir.path(),
        r#"kind = "tcp", listen = "127.0.0.1:0""#,
        &output,
    );
    let relay = RelayProc::start(&cfg, 1);
    let n = 5_000;
    send_records(relay.addr("f"), 0..n, LEN);
    let ok = wait_until(Duration::from_secs(30), || siem.count() as u64 >= n);
    assert!(
        ok,
        "only {} of {n}; log:\n{}",
        siem.count(),
        relay.log_text()
    );
    assert_eq!(*siem.bad.lock().unwrap(), 0);
    let frames = siem.frames.lock().unwrap();
    for (i, f) in frames.iter().enumerate() {
        let f = String::from_utf8_lossy(f);
        // <134> = local0 (16) * 8 + info (6); the frame's octet count covered the header.
        let (head, rec) = f.split_once(" lss: ").unwrap_or_else(|| panic!("{f}"));
        assert!(
            head.starts_with("<134>") && head.ends_with(" relay-host"),
            "{f}"
        );
        assert_eq!(record_number(rec.as_bytes()), Some(i as u64), "{f}");
    }
}

#[test]
fn insecure_skip_verify_connects_to_any_receiver_and_warns_at_every_connect() {
    let dir = TempDir::new("tls-insecure");
    let pki = Pki::new(dir.path());
    let addr = free_port();
    let siem = TlsSink::start(addr, pki.server_config("server-other"));
    let output = format!("{}\ninsecure_skip_verify = true", tls_output(&pki, addr));
    let cfg = config(
        dir.path(),
        r#"kind = "tcp", listen = "127.0.0.1:0""#,
        &output,
    );
    let relay = RelayProc::start(&cfg, 1);
    send_records(relay.addr("f"), 0..1000, LEN);
    let ok = wait_until(Duration::from_secs(30), || siem.counts().len() >= 1000);
    assert!(ok, "only {}; log:\n{}", siem.count(), relay.log_text());
    assert!(
        relay.log_has("event=tls_verification_disabled"),
        "{}",
        relay.log_text()
    );
}

#[test]
fn tls_in_and_out_survive_a_siem_outage_and_sigkill() {
    let dir = TempDir::new("tls-kill");
    let pki = Pki::new(dir.path());
    let siem_addr = free_port();
    let cfg = config(
        dir.path(),
        &tls_input(&pki, true),
        &tls_output(&pki, siem_addr),
    );
    let mut relay = RelayProc::start(&cfg, 1);
    let n = 50_000;
    let mut s = connect(relay.addr("f"), pki.client_config(Some("client"))).unwrap();
    send_records_tls(&mut s, 0..n, LEN);
    close_tls(s);
    relay.kill9();
    assert_eq!(
        ring_records(&dir.path().join("data")),
        n,
        "the ring lost records to SIGKILL"
    );
    let relay = RelayProc::start(&cfg, 1);
    let siem = TlsSink::start(siem_addr, pki.server_config("server"));
    let ok = wait_until(Duration::from_secs(60), || siem.counts().len() as u64 >= n);
    assert!(
        ok,
        "only {} of {n}; log:\n{}",
        siem.count(),
        relay.log_text()
    );
    assert_all(&siem.counts(), n, true);
    assert_eq!(*siem.bad.lock().unwrap(), 0);
}

fn peer_cn(s: &TlsStream) -> String {
    let der = s.conn.peer_certificates().unwrap()[0].clone();
    ringrelay::tls::cert_info(&der).unwrap().subject
}

#[test]
fn sighup_rotates_the_server_certificate_for_new_connections_and_keeps_old_ones() {
    let dir = TempDir::new("tls-hup");
    let pki = Pki::new(dir.path());
    let siem = Sink::new(true);
    let cfg = config(dir.path(), &tls_input(&pki, true), &tcp_output(siem.addr));
    let relay = RelayProc::start(&cfg, 1);
    let addr = relay.addr("f");
    let good = pki.client_config(Some("client"));
    let mut old = connect(addr, good.clone()).unwrap();
    assert_eq!(peer_cn(&old), "relay.test");
    send_records_tls(&mut old, 0..1000, LEN);

    let hup = || {
        let pid = nix::unistd::Pid::from_raw(relay.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    };
    for ext in ["pem", "key"] {
        std::fs::copy(
            pki.path(&format!("server2.{ext}")),
            pki.path(&format!("server.{ext}")),
        )
        .unwrap();
    }
    hup();
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .log_has("event=tls_reloaded")),
        "{}",
        relay.log_text()
    );
    let new = connect(addr, good.clone()).unwrap();
    assert_eq!(peer_cn(&new), "relay-rotated");
    close_tls(new);

    // A broken file is refused and the certificate loaded before stays in use.
    std::fs::write(pki.path("server.pem"), "not a certificate\n").unwrap();
    hup();
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .log_has("event=tls_reload_failed")),
        "{}",
        relay.log_text()
    );
    assert!(relay.log_has("server.pem"), "{}", relay.log_text());
    let newer = connect(addr, good).unwrap();
    assert_eq!(peer_cn(&newer), "relay-rotated");
    close_tls(newer);

    // The connection from before the rotation streams on.
    send_records_tls(&mut old, 1000..2000, LEN);
    close_tls(old);
    let ok = wait_until(Duration::from_secs(20), || siem.counts().len() >= 2000);
    assert!(ok, "only {}; log:\n{}", siem.count(), relay.log_text());
    assert_all(&siem.counts(), 2000, false);
}

#[test]
fn sighup_reloads_a_tls_output_ca_so_the_next_connect_trusts_the_receiver() {
    let dir = TempDir::new("tls-hup-out");
    let pki = Pki::new(dir.path());
    let addr = free_port();
    let siem = TlsSink::start(addr, pki.server_config("server"));
    // The output starts with the wrong CA file.
    let ca = dir.path().join("siem-ca.pem");
    std::fs::copy(pki.path("other-ca.pem"), &ca).unwrap();
    let output = format!(
        "kind = \"tls\"\naddress = \"{addr}\"\nca = \"{}\"\nserver_name = \"localhost\"",
        ca.display()
    );
    let cfg = config(
        dir.path(),
        r#"kind = "tcp", listen = "127.0.0.1:0""#,
        &output,
    );
    let relay = RelayProc::start(&cfg, 1);
    send_records(relay.addr("f"), 0..1000, LEN);
    assert!(
        wait_until(Duration::from_secs(10), || relay
            .log_has("reason=unknown_ca")),
        "{}",
        relay.log_text()
    );
    std::fs::copy(pki.path("ca.pem"), &ca).unwrap();
    let pid = nix::unistd::Pid::from_raw(relay.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    // Backoff grows while refused; the next attempt after the reload gets through.
    let ok = wait_until(Duration::from_secs(40), || siem.counts().len() >= 1000);
    assert!(ok, "only {}; log:\n{}", siem.count(), relay.log_text());
    assert_all(&siem.counts(), 1000, false);
}

#[test]
fn rfc5424_headers_carry_the_instance_and_the_ring_sequence_number() {
    let dir = TempDir::new("tls-syslog");
    let siem = Sink::new(true);
    let output = format!(
        "{}\nsyslog = \"rfc5424\"\nsyslog_sd = true\nhostname = \"relay-host\"\nfacility = \"local4\"\nseverity = \"notice\"",
        tcp_output(siem.addr)
    );
    let cfg = config(
        dir.path(),
        r#"kind = "tcp", listen = "127.0.0.1:0""#,
        &output,
    );
    let relay = RelayProc::start(&cfg, 1);
    send_records(relay.addr("f"), 0..100, LEN);
    let ok = wait_until(Duration::from_secs(20), || siem.count() >= 100);
    assert!(ok, "{}", relay.log_text());
    let lines = siem.lines.lock().unwrap();
    for (i, l) in lines.iter().enumerate() {
        let l = String::from_utf8_lossy(l);
        // <165> = local4 (20) * 8 + notice (5)
        assert!(l.starts_with("<165>1 20"), "{l}");
        let (head, rec) = l
            .split_once("] ")
            .unwrap_or_else(|| panic!("no structured data: {l}"));
        assert!(
            head.ends_with(&format!(
                " relay-host ringrelay - - [ringrelay@32473 instance=\"relay-a\" seq=\"{i}\""
            )),
            "{l}"
        );
        assert_eq!(record_number(rec.as_bytes()), Some(i as u64), "{l}");
    }
}

fn check(cfg: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .args(["check", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "check accepted a bad config");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_names_the_tls_file_that_fails_with_its_line_and_column() {
    let dir = TempDir::new("tls-check");
    let pki = Pki::new(dir.path());
    let siem = free_port();
    let good = tls_input(&pki, true);
    let cases = [
        (
            good.replace("server.pem", "missing.pem"),
            "missing.pem",
            "cannot read",
        ),
        (
            good.replace("server.pem", "server.key"),
            "server.key",
            "no PEM certificate",
        ),
        (
            good.replace("server.key", "client.key"),
            "client.key",
            "does not match the certificate",
        ),
        (
            good.replace("ca.pem", "server.key"),
            "server.key",
            "client_ca",
        ),
    ];
    for (input, file, what) in cases {
        let cfg = config(dir.path(), &input, &tcp_output(siem));
        let err = check(&cfg);
        let first = err.lines().next().unwrap_or("");
        assert!(
            first.contains("ringrelay.toml:8:") && first.contains(file) && first.contains(what),
            "{what}: {err}"
        );
    }
    let out = tls_output(&pki, siem).replace("ca.pem", "nope.pem");
    let cfg = config(dir.path(), r#"kind = "tcp", listen = "127.0.0.1:0""#, &out);
    let err = check(&cfg);
    assert!(
        err.contains("ringrelay.toml:15:6:") && err.contains("nope.pem"),
        "{err}"
    );
}

#[test]
fn an_expired_certificate_is_a_warning_naming_its_side_and_date() {
    let dir = TempDir::new("tls-expired");
    let pki = Pki::new(dir.path());
    let siem = Sink::new(true);
    let input = tls_input(&pki, true)
        .replace("server.pem", "client-expired.pem")
        .replace("server.key", "client-expired.key");
    // The output presents an expired client certificate too.
    let output = format!(
        "{}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        tls_output(&pki, siem.addr),
        pki.path("client-expired.pem").display(),
        pki.path("client-expired.key").display()
    );
    let cfg = config(dir.path(), &input, &output);
    let out = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("warning:") && stdout.contains("expired at 2020-01-01T00:00:00.000Z"),
        "{stdout}"
    );
    let relay = RelayProc::start(&cfg, 1);
    assert!(
        relay
            .log_text()
            .lines()
            .any(|l| l.contains("event=certificate_expired")
                && l.contains("side=input")
                && l.contains("not_after=2020-01-01T00:00:00.000Z")
                && l.contains("client-expired.pem")),
        "{}",
        relay.log_text()
    );
    assert!(
        relay
            .log_text()
            .lines()
            .any(|l| l.contains("event=certificate_expired")
                && l.contains("side=output output=siem")
                && l.contains("client-expired.pem")),
        "{}",
        relay.log_text()
    );
}
