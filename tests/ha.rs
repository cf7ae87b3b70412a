//! Active-standby pairs and the operations surface, end to end: real relay processes sharing one
//! data dir and one lock file, SIGKILL / SIGSTOP / SIGTERM role switches, fencing by epoch, the
//! sd_notify datagrams, SIGHUP reload. Loopback only; every process is killed and every temp dir
//! removed when a test ends, however it ends.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const LEN: usize = 200;

/// A config for one member of a pair: feed `f` on the fixed address `listen` (both members bind
/// the same port, one at a time), a tcp output to `siem`, the shared `data` dir and its default
/// lock file.
fn pair_config(
    dir: &Path,
    file: &str,
    listen: SocketAddr,
    siem: SocketAddr,
    relay_extra: &str,
    output_extra: &str,
) -> PathBuf {
    let admin = if relay_extra.contains("admin_listen") {
        ""
    } else {
        "admin_listen = \"off\""
    };
    let text = format!(
        r#"[relay]
data_dir = "{data}"
{admin}
{relay_extra}

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "{listen}" }}
buffer = {{ size = "64MiB" }}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem}"
{output_extra}
"#,
        data = dir.join("data").display()
    );
    let p = dir.join(file);
    std::fs::write(&p, text).expect("write config");
    p
}

fn lock_path(dir: &Path) -> PathBuf {
    dir.join("data").join("ringrelay.lock")
}

/// The `epoch=` of the lock file.
fn lock_epoch(dir: &Path) -> u64 {
    std::fs::read_to_string(lock_path(dir))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("epoch="))
        .and_then(|e| e.trim().parse().ok())
        .unwrap_or(0)
}

/// Starts an instance and waits until it has settled into `role` (`active`: listening).
fn start_as(config: &Path, role: &str) -> RelayProc {
    let p = RelayProc::spawn(config, &[]);
    let needle = match role {
        "active" => "event=listening",
        _ => "event=standby",
    };
    assert!(
        p.wait_log(needle, Duration::from_secs(20)),
        "relay did not become {role}; log:\n{}",
        p.log_text()
    );
    p
}

fn assert_all_arrived(sink: &Sink, range: std::ops::Range<u64>) {
    let counts = sink.counts();
    let missing: Vec<u64> = range
        .clone()
        .filter(|i| !counts.contains_key(i))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "records missing from {range:?}, first: {missing:?} (sink holds {} lines, {} distinct)",
        sink.count(),
        counts.len()
    );
}

fn wait_all_arrived(sink: &Sink, range: std::ops::Range<u64>, limit: Duration) -> bool {
    wait_until(limit, || {
        let c = sink.counts();
        range.clone().all(|i| c.contains_key(&i))
    })
}

/// Sends `range` on one connection and confirms it: true only if the relay closed the
/// connection cleanly after our FIN, which it does once it has read (and appended) every byte.
/// A relay that goes away with unread bytes resets the connection instead.
fn send_confirmed(addr: SocketAddr, range: std::ops::Range<u64>) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let mut batch = Vec::new();
    for n in range {
        batch.extend_from_slice(&record(n, LEN));
        batch.push(b'\n');
    }
    if s.write_all(&batch).is_err() || s.shutdown(Shutdown::Write).is_err() {
        return false;
    }
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0))
}

#[test]
fn only_one_of_two_instances_binds_and_the_standby_takes_over_within_2s_of_a_sigkill() {
    let dir = TempDir::new("ha-kill");
    let siem = Sink::new(false);
    let listen = free_port();
    // The default standby_poll (500 ms).
    let cfg = pair_config(dir.path(), "pair.toml", listen, siem.addr, "", "");
    let mut a = start_as(&cfg, "active");
    let b = start_as(&cfg, "standby");
    assert!(
        !b.log_has("event=listening"),
        "the standby bound a listener:\n{}",
        b.log_text()
    );
    assert!(b.log_has("holder=\"pid"), "{}", b.log_text());
    assert_eq!(lock_epoch(dir.path()), 1);

    // Buffered in the active's ring while the SIEM is down.
    let n = 20_000;
    assert!(send_confirmed(listen, 0..n), "the active refused records");
    thread::sleep(Duration::from_millis(200));
    assert!(!b.log_has("event=listening"));

    let t0 = Instant::now();
    a.kill9();
    let took_over = b.wait_log("event=listening", Duration::from_secs(5));
    let takeover = t0.elapsed();
    assert!(took_over, "the standby never bound:\n{}", b.log_text());
    eprintln!("takeover after SIGKILL: {} ms", takeover.as_millis());
    assert!(
        takeover < Duration::from_secs(2),
        "the standby took {takeover:?} to bind"
    );
    // Logged once every ring is checkpointed with the new epoch, just after the listener.
    assert!(
        b.wait_log("role=\"standby=>active\"", Duration::from_secs(2)),
        "{}",
        b.log_text()
    );
    assert_eq!(lock_epoch(dir.path()), 2);

    // New records on the same port, now the new active's; then the SIEM comes up.
    assert!(
        send_confirmed(listen, n..n + 1000),
        "the new active refused records"
    );
    siem.set_up(true);
    assert!(
        wait_all_arrived(&siem, 0..n + 1000, Duration::from_secs(60)),
        "not everything arrived; log:\n{}",
        b.log_text()
    );
    assert_all_arrived(&siem, 0..n + 1000);
    // Nothing outside what was sent (duplicates only from the replay window).
    assert!(siem.counts().keys().all(|&k| k < n + 1000));
}

#[test]
fn a_sigstopped_active_keeps_the_lock_and_carries_on_after_sigcont() {
    let dir = TempDir::new("ha-stop");
    let siem = Sink::new(true);
    let listen = free_port();
    let cfg = pair_config(
        dir.path(),
        "pair.toml",
        listen,
        siem.addr,
        "standby_poll = \"100ms\"",
        "",
    );
    let mut a = start_as(&cfg, "active");
    let b = start_as(&cfg, "standby");
    assert!(send_confirmed(listen, 0..1000));
    assert!(wait_all_arrived(&siem, 0..1000, Duration::from_secs(20)));

    a.signal(Signal::SIGSTOP);
    // Fifteen poll periods: the lock is still held by the stopped process.
    thread::sleep(Duration::from_millis(1500));
    assert!(
        !b.log_has("event=listening") && !b.log_has("event=role_changed"),
        "the standby took over from a stopped (not dead) active:\n{}",
        b.log_text()
    );
    a.signal(Signal::SIGCONT);
    assert!(
        send_confirmed(listen, 1000..2000),
        "the active did not resume"
    );
    assert!(
        wait_all_arrived(&siem, 0..2000, Duration::from_secs(20)),
        "the active did not carry on delivering:\n{}",
        a.log_text()
    );
    assert!(a.running(), "the active exited:\n{}", a.log_text());
    assert!(!a.log_has("event=fenced"));
    assert!(!b.log_has("event=listening"));
    assert_eq!(lock_epoch(dir.path()), 1);
    // A standby stops at once on SIGTERM, with nothing to drain.
    let mut b = b;
    assert_eq!(b.terminate().0, Some(0), "{}", b.log_text());
}

#[test]
fn an_active_that_finds_a_higher_epoch_in_the_lock_file_stops_delivering_and_exits_3() {
    let dir = TempDir::new("ha-fence");
    let siem = Sink::new(true);
    let listen = free_port();
    let cfg = pair_config(dir.path(), "one.toml", listen, siem.addr, "", "");
    let mut a = start_as(&cfg, "active");
    assert_eq!(lock_epoch(dir.path()), 1);

    // A sender that keeps going until the end of the test.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, next) = (stop.clone(), next.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(listen) else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let mut r = record(n, LEN);
                    r.push(b'\n');
                    if s.write_all(&r).is_err() {
                        break;
                    }
                    thread::sleep(Duration::from_micros(200));
                }
            }
        })
    };
    assert!(wait_until(Duration::from_secs(10), || siem.count() > 500));

    // Another instance "became active" behind this one's back, e.g. after its lock was lost on
    // network storage: the lock file now holds a higher epoch.
    std::fs::write(
        lock_path(dir.path()),
        "ringrelay-lock 1\nepoch=100\npid=1\ninstance=elsewhere\n",
    )
    .unwrap();
    let t0 = Instant::now();
    let code = a.wait_exit(Duration::from_secs(5));
    let took = t0.elapsed();
    assert_eq!(code, Some(3), "log:\n{}", a.log_text());
    eprintln!(
        "fenced and exited {} ms after the epoch was raised",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // It logged why, and that was its last word: nothing delivered, read or written after.
    assert!(a.wait_log("event=fenced", Duration::from_secs(5)));
    thread::sleep(Duration::from_millis(100));
    let log = a.log.lock().unwrap().clone();
    let fenced_at = log
        .iter()
        .position(|l| l.contains("event=fenced"))
        .unwrap_or_else(|| panic!("no fenced line:\n{}", log.join("\n")));
    assert!(log[fenced_at].contains("holds epoch 100 above this instance's 1"));
    assert_eq!(
        fenced_at,
        log.len() - 1,
        "lines after fencing:\n{}",
        log.join("\n")
    );
    let delivered = siem.count();
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        siem.count(),
        delivered,
        "records arrived after the relay was fenced"
    );
    // It did not write its epoch back over the newer one.
    assert_eq!(lock_epoch(dir.path()), 100);
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();

    // The next instance to become active goes above the epoch it found.
    let c = start_as(&cfg, "active");
    assert_eq!(lock_epoch(dir.path()), 101, "log:\n{}", c.log_text());
}

#[test]
fn rolling_upgrade_a_to_b_and_back_loses_no_confirmed_record() {
    let dir = TempDir::new("ha-rolling");
    let siem = Sink::new(true);
    let listen = free_port();
    let cfg = pair_config(
        dir.path(),
        "pair.toml",
        listen,
        siem.addr,
        "standby_poll = \"200ms\"",
        "",
    );
    let mut a = start_as(&cfg, "active");
    let b = start_as(&cfg, "standby");

    // The sender: batches of 500 records, each on its own connection, re-sent until one
    // connection confirms it (see `send_confirmed`); `confirmed` is the end of the last
    // confirmed batch. It keeps sending through every role switch.
    let stop = Arc::new(AtomicBool::new(false));
    let confirmed = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, confirmed, retries) = (stop.clone(), confirmed.clone(), retries.clone());
        thread::spawn(move || {
            let mut next = 0;
            while !stop.load(Ordering::Relaxed) {
                if send_confirmed(listen, next..next + 500) {
                    next += 500;
                    confirmed.store(next, Ordering::Relaxed);
                } else {
                    retries.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(20));
                }
            }
        })
    };
    let progress = |from: u64| {
        wait_until(Duration::from_secs(20), || {
            confirmed.load(Ordering::Relaxed) >= from + 2000
        })
    };
    assert!(progress(0), "no records accepted by A");

    // 1. Stop A (drains, exits 0); B becomes active.
    let a_code = a.terminate();
    assert_eq!(a_code.0, Some(0), "A: {}", a.log_text());
    assert!(
        b.wait_log("event=listening", Duration::from_secs(5)),
        "B did not take over:\n{}",
        b.log_text()
    );
    assert!(
        progress(confirmed.load(Ordering::Relaxed)),
        "no records accepted by B"
    );

    // 2. Start A again (the upgraded binary): standby.
    let a2 = start_as(&cfg, "standby");
    assert!(progress(confirmed.load(Ordering::Relaxed)));

    // 3. Stop B; A becomes active again.
    let mut b = b;
    let b_code = b.terminate();
    assert_eq!(b_code.0, Some(0), "B: {}", b.log_text());
    assert!(
        a2.wait_log("event=listening", Duration::from_secs(5)),
        "A did not take over:\n{}",
        a2.log_text()
    );
    assert!(
        progress(confirmed.load(Ordering::Relaxed)),
        "no records accepted by A again"
    );
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let end = confirmed.load(Ordering::Relaxed);
    if !wait_all_arrived(&siem, 0..end, Duration::from_secs(60)) {
        // Confirmed records lost: which ones (below), and what each instance said.
        eprintln!(
            "A:\n{}\nB:\n{}\nA again:\n{}",
            a.log_text(),
            b.log_text(),
            a2.log_text()
        );
    }
    assert_all_arrived(&siem, 0..end);
    assert_eq!(lock_epoch(dir.path()), 3);
    eprintln!(
        "rolling upgrade: {end} records confirmed, {} batch retries, {} lines delivered ({} duplicates from replay), A drained in {} ms, B in {} ms",
        retries.load(Ordering::Relaxed),
        siem.count(),
        siem.count() as u64 - siem.counts().len() as u64,
        a_code.1.as_millis(),
        b_code.1.as_millis()
    );
}

/// Datagrams received on `sock` until `done` says so or `limit` passes.
fn collect(
    sock: &UnixDatagram,
    limit: Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> Vec<String> {
    let end = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while Instant::now() < end && !done(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

#[test]
fn sd_notify_ready_status_watchdog_in_order_then_stopping_on_sigterm() {
    let dir = TempDir::new("ha-notify");
    let siem = Sink::new(true);
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let cfg = pair_config(dir.path(), "one.toml", free_port(), siem.addr, "", "");
    let notify = sock_path.display().to_string();
    let mut relay = RelayProc::spawn(
        &cfg,
        &[
            ("NOTIFY_SOCKET", notify.as_str()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let t0 = Instant::now();
    let got = collect(&sock, Duration::from_secs(10), |g| {
        g.iter().filter(|m| m.as_str() == "WATCHDOG=1").count() >= 5
    });
    let elapsed = t0.elapsed();
    let ready = got.iter().position(|m| m.lines().any(|l| l == "READY=1"));
    let status = got.iter().position(|m| {
        m.lines()
            .any(|l| l.starts_with("STATUS=role=active") && l.contains("feeds=1"))
    });
    let watchdog = got.iter().position(|m| m == "WATCHDOG=1");
    assert!(
        matches!((ready, status, watchdog), (Some(r), Some(s), Some(w)) if r <= s && s < w),
        "READY, STATUS, WATCHDOG not received in order: {got:?}\nlog:\n{}",
        relay.log_text()
    );
    assert!(
        relay.log_has("event=listening"),
        "READY before the listener was bound"
    );
    // Five pings at half of 200 ms: about half a second, not a burst and not a stall.
    assert!(
        elapsed > Duration::from_millis(350) && elapsed < Duration::from_secs(3),
        "5 watchdog pings took {elapsed:?}"
    );
    relay.signal(Signal::SIGTERM);
    let got = collect(&sock, Duration::from_secs(5), |g| {
        g.iter().any(|m| m.contains("STOPPING=1"))
    });
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    assert_eq!(relay.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn sd_notify_to_an_abstract_socket_reports_standby_then_promotion() {
    use std::os::linux::net::SocketAddrExt;
    let dir = TempDir::new("ha-notify-abstract");
    let siem = Sink::new(true);
    let listen = free_port();
    let cfg = pair_config(
        dir.path(),
        "pair.toml",
        listen,
        siem.addr,
        "standby_poll = \"100ms\"",
        "",
    );
    let name = format!("ringrelay-test-{}-{:?}", std::process::id(), Instant::now());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let mut a = start_as(&cfg, "active");
    let at = format!("@{name}");
    let b = RelayProc::spawn(&cfg, &[("NOTIFY_SOCKET", at.as_str())]);
    let got = collect(&sock, Duration::from_secs(10), |g| !g.is_empty());
    assert_eq!(got.len(), 1, "{got:?}\n{}", b.log_text());
    assert!(
        got[0].starts_with("READY=1\nSTATUS=role=standby"),
        "{got:?}"
    );
    a.kill9();
    let got = collect(&sock, Duration::from_secs(5), |g| !g.is_empty());
    assert!(
        got.first()
            .is_some_and(|m| m.starts_with("STATUS=role=active")),
        "{got:?}\n{}",
        b.log_text()
    );
}

#[test]
fn sighup_applies_rate_limit_and_address_live_and_names_what_needs_a_restart() {
    let dir = TempDir::new("ha-hup");
    let siem1 = Sink::new(true);
    let siem2 = Sink::new(true);
    let [listen, listen2] = free_ports();
    let cfg = pair_config(dir.path(), "one.toml", listen, siem1.addr, "", "");
    let relay = start_as(&cfg, "active");
    assert!(relay.wait_log("event=output_connected", Duration::from_secs(10)));

    // Rate limit and address change (live); the listen address changes too (needs a restart).
    pair_config(
        dir.path(),
        "one.toml",
        listen2,
        siem2.addr,
        "",
        "rate_limit_eps = 500",
    );
    relay.signal(Signal::SIGHUP);
    assert!(
        relay.wait_log("event=reloaded", Duration::from_secs(5)),
        "{}",
        relay.log_text()
    );
    let log = relay.log_text();
    assert!(
        log.contains("event=reload_applied feed=f output=siem key=rate_limit_eps from=0 to=500"),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "key=address from={} to={}",
            siem1.addr, siem2.addr
        )),
        "{log}"
    );
    assert!(
        log.contains("event=reload_needs_restart key=\"feed f input\""),
        "{log}"
    );

    let n = 3000;
    assert!(
        send_confirmed(listen, 0..n),
        "the listener changed without a restart"
    );
    thread::sleep(Duration::from_secs(2));
    let got = siem2.count();
    assert_eq!(siem1.count(), 0, "records went to the old address");
    // 500/s with a tenth of a second of burst: about 1,000 in two seconds, far from 3,000.
    assert!(
        (200..=1600).contains(&got),
        "{got} records in 2 s at rate_limit_eps = 500"
    );
    assert!(wait_all_arrived(&siem2, 0..n, Duration::from_secs(20)));

    // A file that no longer validates changes nothing.
    std::fs::write(&cfg, "[relay]\nnope = 1\n").unwrap();
    relay.signal(Signal::SIGHUP);
    assert!(relay.wait_log("event=reload_failed", Duration::from_secs(5)));
}

#[test]
fn a_lock_file_that_belongs_to_something_else_or_cannot_be_created_is_refused_plainly() {
    let dir = TempDir::new("ha-lock-errors");
    let siem = Sink::new(false);
    // Someone else's file (a pid file, say) at the lock path.
    let cfg = pair_config(dir.path(), "one.toml", free_port(), siem.addr, "", "");
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(lock_path(dir.path()), "31337\n").unwrap();
    let mut r = RelayProc::spawn(&cfg, &[]);
    assert_eq!(r.wait_exit(Duration::from_secs(10)), Some(1));
    let needle = format!(
        "lock file {}: it does not hold a ringrelay lock record",
        lock_path(dir.path()).display()
    );
    // The exit can be seen before the last line is read from the pipe.
    assert!(
        r.wait_log(&needle, Duration::from_secs(5)),
        "{}",
        r.log_text()
    );
    let log = r.log_text();
    assert!(!log.contains("event=listening"), "{log}");
    assert_eq!(
        std::fs::read_to_string(lock_path(dir.path())).unwrap(),
        "31337\n",
        "overwritten"
    );

    // Our record, torn (no epoch line): rewritten, with an epoch above the rings'.
    std::fs::write(lock_path(dir.path()), "ringrelay-lock 1\nepo").unwrap();
    let r = start_as(&cfg, "active");
    assert!(r.log_has("event=lock_record_damaged"), "{}", r.log_text());
    assert_eq!(lock_epoch(dir.path()), 1);
    drop(r);

    // A lock file in a directory that does not exist.
    let missing = dir.path().join("nope").join("x.lock");
    let cfg = pair_config(
        dir.path(),
        "two.toml",
        free_port(),
        siem.addr,
        &format!("lock_file = \"{}\"", missing.display()),
        "",
    );
    let mut r = RelayProc::spawn(&cfg, &[]);
    assert_eq!(r.wait_exit(Duration::from_secs(10)), Some(1));
    let needle = format!("lock file {}: cannot open for writing", missing.display());
    assert!(
        r.wait_log(&needle, Duration::from_secs(5)),
        "{}",
        r.log_text()
    );
}

/// `GET path` on the admin endpoint: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to admin");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn a_standby_answers_health_with_its_role_and_ready_with_503_until_it_takes_over() {
    let dir = TempDir::new("ha-admin");
    let siem = Sink::new(true);
    let [listen, admin_a, admin_b] = free_ports();
    let cfg_a = pair_config(
        dir.path(),
        "a.toml",
        listen,
        siem.addr,
        &format!("admin_listen = \"{admin_a}\"\nstandby_poll = \"100ms\""),
        "",
    );
    let cfg_b = pair_config(
        dir.path(),
        "b.toml",
        listen,
        siem.addr,
        &format!("admin_listen = \"{admin_b}\"\nstandby_poll = \"100ms\""),
        "",
    );
    let mut a = start_as(&cfg_a, "active");
    let b = start_as(&cfg_b, "standby");
    assert!(b.wait_log("event=admin_listening", Duration::from_secs(5)));
    let (code, body) = http_get(admin_b, "/health");
    assert_eq!(code, 200);
    assert!(body.contains("\"role\":\"standby\""), "{body}");
    assert!(body.contains("\"feeds\":[]"), "{body}");
    let (code, body) = http_get(admin_b, "/ready");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("role is standby"), "{body}");
    assert!(wait_until(Duration::from_secs(10), || http_get(
        admin_a, "/ready"
    )
    .0 == 200));
    let (_, body) = http_get(admin_a, "/health");
    assert!(body.contains("\"role\":\"active\""), "{body}");

    a.kill9();
    assert!(b.wait_log("event=listening", Duration::from_secs(5)));
    assert!(
        wait_until(Duration::from_secs(10), || http_get(admin_b, "/ready").0
            == 200),
        "{}",
        b.log_text()
    );
    let (_, body) = http_get(admin_b, "/health");
    assert!(body.contains("\"role\":\"active\""), "{body}");
}

/// Writes a copy of the ring's current metadata slot with generation + 1 and `epoch` into the
/// other slot, as another active's checkpoint would (`buffer-spec.md` §4).
fn write_slot_with_epoch(ring: &Path, epoch: u64) {
    const SLOTS: [usize; 2] = [4096, 8192];
    const CRC_AT: usize = 1152;
    let file = std::fs::read(ring).unwrap();
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let valid = |at: usize| {
        let b = &file[at..at + CRC_AT + 4];
        let crc = u32::from_le_bytes(b[CRC_AT..].try_into().unwrap());
        crc32fast::hash(&b[..CRC_AT]) == crc
    };
    let cur = (0..2)
        .filter(|&i| valid(SLOTS[i]))
        .max_by_key(|&i| u64_at(&file[SLOTS[i]..], 0))
        .expect("a valid slot");
    let mut b = file[SLOTS[cur]..SLOTS[cur] + CRC_AT + 4].to_vec();
    let generation = u64_at(&b, 0);
    b[0..8].copy_from_slice(&(generation + 1).to_le_bytes());
    b[16..24].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32fast::hash(&b[..CRC_AT]);
    b[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    let f = std::fs::OpenOptions::new().write(true).open(ring).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &b, SLOTS[1 - cur] as u64).unwrap();
}

#[test]
fn an_active_that_finds_a_higher_epoch_in_a_ring_exits_3_without_writing_to_it_again() {
    let dir = TempDir::new("ha-fence-ring");
    let siem = Sink::new(true);
    let listen = free_port();
    // Checkpoints far apart, so the relay's own next slot write cannot hide the other one.
    let cfg = pair_config(
        dir.path(),
        "one.toml",
        listen,
        siem.addr,
        "checkpoint_interval = \"60s\"",
        "",
    );
    let mut a = start_as(&cfg, "active");
    assert!(send_confirmed(listen, 0..1000));
    assert!(wait_all_arrived(&siem, 0..1000, Duration::from_secs(20)));
    let ring = dir.path().join("data").join("f.ring");
    let before = std::fs::read(&ring).unwrap();
    write_slot_with_epoch(&ring, 40);
    let after_write = std::fs::read(&ring).unwrap();
    assert_ne!(before, after_write);
    assert_eq!(
        a.wait_exit(Duration::from_secs(5)),
        Some(3),
        "{}",
        a.log_text()
    );
    assert!(
        a.wait_log(
            "holds epoch 40 above this instance's 1",
            Duration::from_secs(5)
        ),
        "{}",
        a.log_text()
    );
    // Not a byte of the ring changed after the other writer's slot went in.
    assert!(
        std::fs::read(&ring).unwrap() == after_write,
        "the fenced relay wrote to its ring"
    );
    // The lock file still says 1: the next active goes above the ring's 40.
    assert_eq!(lock_epoch(dir.path()), 1);
    let b = start_as(&cfg, "active");
    assert!(b.wait_log("event=epoch_raised", Duration::from_secs(5)));
    assert_eq!(lock_epoch(dir.path()), 41, "{}", b.log_text());
}
