//! The lease keeper (`[relay] lease`, issue 19): an active that gets no heartbeat from its
//! sync helper fences itself before its lease could run out on the storage server, and a relay
//! whose loop is frozen past its deadline is killed by the helper. Exercised on a local data
//! dir with `lease = "4s"` (budget = 4 − (2 + 0.4) = 1.6 s), which is how a lease is turned on
//! without NFS. Loopback only; every process this test started (the helpers included) is killed
//! when a test ends, however it ends.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LEN: usize = 200;
/// `lease = "4s"`: margin 2.4 s, budget 1.6 s.
const BUDGET: Duration = Duration::from_millis(1600);

/// A pair member: feed `f` on the fixed address `listen`, the admin endpoint on an ephemeral
/// port, a 4 s lease, a fast standby poll.
fn lease_config(dir: &Path, file: &str, listen: SocketAddr, siem: SocketAddr) -> PathBuf {
    lease_config_with(dir, file, listen, siem, "")
}

fn lease_config_with(
    dir: &Path,
    file: &str,
    listen: SocketAddr,
    siem: SocketAddr,
    relay_extra: &str,
) -> PathBuf {
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"
lease = "4s"
standby_poll = "100ms"
{relay_extra}

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "{listen}" }}
buffer = {{ size = "64MiB" }}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem}"
"#,
        data = dir.join("data").display()
    );
    let p = dir.join(file);
    std::fs::write(&p, text).expect("write config");
    p
}

/// SIGKILLs a process this test caused to exist (a sync helper) when dropped.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

fn helper_pid(relay: &RelayProc) -> i32 {
    assert!(
        relay.wait_log("event=sync_helper_started", Duration::from_secs(10)),
        "{}",
        relay.log_text()
    );
    let log = relay.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("event=sync_helper_started"))
        .expect("line");
    field(line, "pid").parse().expect("pid")
}

/// `/ready`'s status; 0 when the relay does not answer (gone, or going while we ask).
fn ready(relay: &RelayProc) -> u16 {
    let addr = admin_addr(relay);
    let ask = || -> std::io::Result<u16> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0))
    };
    ask().unwrap_or(0)
}

/// A sender that keeps writing records to `listen` (reconnecting) until stopped.
fn sender(
    listen: SocketAddr,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
) -> thread::JoinHandle<()> {
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
}

fn start_active(cfg: &Path) -> RelayProc {
    let a = RelayProc::spawn(cfg, &[]);
    assert!(
        a.wait_log("event=listening", Duration::from_secs(20)),
        "{}",
        a.log_text()
    );
    a
}

fn start_standby(cfg: &Path) -> RelayProc {
    let b = RelayProc::spawn(cfg, &[]);
    assert!(
        b.wait_log("event=standby", Duration::from_secs(20)),
        "{}",
        b.log_text()
    );
    b
}

#[test]
fn an_active_whose_sync_helper_is_stopped_fences_itself_within_the_budget_and_the_standby_takes_over(
) {
    let dir = TempDir::new("lease-helper-stop");
    let siem = Sink::new(true);
    let listen = free_port();
    let cfg = lease_config(dir.path(), "pair.toml", listen, siem.addr);
    let mut a = start_active(&cfg);
    assert!(a.log_has("lease_s=4.0"), "{}", a.log_text());
    let helper = KillOnDrop(helper_pid(&a));
    let mut b = start_standby(&cfg);
    assert_eq!(ready(&a), 200);
    assert_eq!(ready(&b), 503);

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let send = sender(listen, stop.clone(), next.clone());
    assert!(wait_until(Duration::from_secs(10), || siem.count() > 500));
    // Several heartbeats went by without a fence: the lease is renewed.
    thread::sleep(BUDGET * 2);
    assert!(!a.log_has("event=fenced"), "{}", a.log_text());

    let t0 = Instant::now();
    kill(Pid::from_raw(helper.0), Signal::SIGSTOP).expect("SIGSTOP the helper");
    let mut not_ready = None;
    while t0.elapsed() < Duration::from_secs(6) {
        if ready(&a) != 200 {
            not_ready = Some(t0.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let not_ready = not_ready.unwrap_or_else(|| panic!("still ready:\n{}", a.log_text()));
    let code = a.wait_exit(Duration::from_secs(5));
    let exited = t0.elapsed();
    assert_eq!(code, Some(3), "log:\n{}", a.log_text());
    eprintln!(
        "helper stopped: /ready non-200 after {} ms, exit 3 after {} ms (budget {} ms)",
        not_ready.as_millis(),
        exited.as_millis(),
        BUDGET.as_millis()
    );
    // Within the budget since the last renewal (at most the budget since the stop), plus
    // slack for the loop's wake-up and the exit.
    assert!(
        not_ready <= BUDGET + Duration::from_millis(700),
        "{not_ready:?}"
    );
    // The exit can come before the reader thread has the last lines.
    assert!(
        a.wait_log("event=fenced ", Duration::from_secs(2)),
        "{}",
        a.log_text()
    );
    let log = a.log_text();
    let fenced = log
        .lines()
        .find(|l| l.contains("event=fenced "))
        .unwrap_or_else(|| panic!("no fenced line:\n{log}"));
    assert!(
        fenced.contains("no heartbeat") && fenced.contains("lease 4 s"),
        "{fenced}"
    );
    assert!(!log.contains("fenced_by_helper"), "{log}");

    // The standby takes over and takes records.
    assert!(
        b.wait_log("event=listening", Duration::from_secs(5)),
        "{}",
        b.log_text()
    );
    eprintln!(
        "standby listening {} ms after the stop",
        t0.elapsed().as_millis()
    );
    assert!(wait_until(Duration::from_secs(5), || ready(&b) == 200));
    let before = siem.count();
    assert!(
        wait_until(Duration::from_secs(10), || siem.count() > before + 500),
        "the new active delivers nothing:\n{}",
        b.log_text()
    );
    // Its own helper renews its lease: still active well past a budget.
    let _b_helper = KillOnDrop(helper_pid(&b));
    thread::sleep(BUDGET * 2);
    assert!(b.running(), "{}", b.log_text());
    assert!(!b.log_has("event=fenced"), "{}", b.log_text());
    assert_eq!(ready(&b), 200);
    stop.store(true, Ordering::Relaxed);
    send.join().expect("sender");
}

#[test]
fn a_frozen_relay_is_killed_by_its_helper_after_the_deadline_and_one_second() {
    let dir = TempDir::new("lease-relay-stop");
    let siem = Sink::new(true);
    let listen = free_port();
    let cfg = lease_config(dir.path(), "pair.toml", listen, siem.addr);
    let mut a = start_active(&cfg);
    let helper = KillOnDrop(helper_pid(&a));
    let b = start_standby(&cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let send = sender(listen, stop.clone(), next.clone());
    assert!(wait_until(Duration::from_secs(10), || siem.count() > 500));
    thread::sleep(Duration::from_secs(1));

    // The loop freezes (as in an NFS page fault the server does not answer).
    let t0 = Instant::now();
    a.signal(Signal::SIGSTOP);
    let code = a.wait_exit(Duration::from_secs(8));
    let killed = t0.elapsed();
    assert_eq!(code, Some(-9), "not SIGKILLed:\n{}", a.log_text());
    eprintln!(
        "relay stopped: SIGKILLed by its helper after {} ms (budget {} ms + 1 s after the last heartbeat request)",
        killed.as_millis(),
        BUDGET.as_millis()
    );
    // The last request came at most one fencing check (500 ms) before the stop.
    assert!(
        killed >= BUDGET + Duration::from_millis(500),
        "killed too early: {killed:?}"
    );
    assert!(
        killed <= BUDGET + Duration::from_millis(2_000),
        "killed too late: {killed:?}"
    );
    assert!(
        wait_until(Duration::from_secs(2), || a
            .log_has("event=fenced_by_helper")),
        "{}",
        a.log_text()
    );
    let log = a.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("event=fenced_by_helper"))
        .expect("line");
    assert!(
        line.contains(&format!("relay_pid={}", a.child.id())),
        "{line}"
    );
    // The helper follows its relay.
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(format!("/proc/{}/stat", helper.0))
                .map_or(true, |s| s.contains(") Z") || s.contains(") X"))
        }),
        "helper {} outlived the relay",
        helper.0
    );
    assert!(
        b.wait_log("event=listening", Duration::from_secs(5)),
        "{}",
        b.log_text()
    );
    stop.store(true, Ordering::Relaxed);
    send.join().expect("sender");
}

#[test]
fn with_a_lease_a_normal_run_relays_everything_and_never_fences() {
    let dir = TempDir::new("lease-normal");
    let siem = Sink::new(true);
    let listen = free_port();
    let cfg = lease_config(dir.path(), "one.toml", listen, siem.addr);
    let mut a = start_active(&cfg);
    let _helper = KillOnDrop(helper_pid(&a));
    // Several leases' worth of traffic, in batches.
    let t0 = Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        send_records(listen, n..n + 2_000, LEN);
        n += 2_000;
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        wait_until(Duration::from_secs(20), || siem.counts().len() as u64 >= n),
        "{} of {n} delivered:\n{}",
        siem.counts().len(),
        a.log_text()
    );
    assert_eq!(ready(&a), 200);
    let (code, _) = a.terminate();
    assert_eq!(code, Some(0), "{}", a.log_text());
    let log = a.log_text();
    assert!(!log.contains("event=fenced"), "{log}");
    assert!(!log.contains("heartbeat_failed"), "{log}");
    // The heartbeat file counts its heartbeats: about one per fencing check (500 ms).
    let host = std::fs::read_dir(dir.path().join("data"))
        .expect("data")
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with(".heartbeat-"))
        .expect("a heartbeat file");
    let b = std::fs::read(host.path()).expect("read heartbeat");
    let beats = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
    eprintln!(
        "{n} records relayed in {} ms, {beats} heartbeats",
        t0.elapsed().as_millis()
    );
    assert!(beats >= 8, "{beats} heartbeats");
}

/// Writes a copy of the ring's current metadata slot with generation + 1 and `epoch` into the
/// other slot, as another VM's active would (`buffer-spec.md` §4).
fn write_slot_with_epoch(ring: &Path, epoch: u64) {
    const SLOTS: [usize; 2] = [4096, 8192];
    const CRC_AT: usize = 1152;
    let file = std::fs::read(ring).expect("read ring");
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    let valid = |at: usize| {
        let b = &file[at..at + CRC_AT + 4];
        let crc = u32::from_le_bytes(b[CRC_AT..].try_into().expect("4"));
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
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(ring)
        .expect("open ring");
    std::os::unix::fs::FileExt::write_all_at(&f, &b, SLOTS[1 - cur] as u64).expect("write slot");
}

#[test]
fn with_a_lease_the_helper_reads_a_rings_higher_epoch_past_the_page_cache_and_the_active_fences() {
    let dir = TempDir::new("lease-ring-epoch");
    let siem = Sink::new(true);
    let listen = free_port();
    // Checkpoints far apart, so the relay's own next slot write cannot hide the other one.
    let cfg = lease_config_with(
        dir.path(),
        "one.toml",
        listen,
        siem.addr,
        "checkpoint_interval = \"60s\"",
    );
    let mut a = start_active(&cfg);
    let _helper = KillOnDrop(helper_pid(&a));
    send_records(listen, 0..1_000, LEN);
    assert!(wait_until(Duration::from_secs(20), || siem.counts().len() >= 1_000));
    let ring = dir.path().join("data").join("f.ring");
    // With a lease the loop does not read epochs from its mapping: only the helper's O_DIRECT
    // read of the slot can see this one.
    let t0 = Instant::now();
    write_slot_with_epoch(&ring, 40);
    let after_write = std::fs::read(&ring).expect("read ring");
    assert_eq!(
        a.wait_exit(Duration::from_secs(5)),
        Some(3),
        "{}",
        a.log_text()
    );
    eprintln!(
        "fenced {} ms after the slot was written",
        t0.elapsed().as_millis()
    );
    // The exit can come before the reader thread has the last lines.
    assert!(
        a.wait_log("event=fenced ", Duration::from_secs(2)),
        "{}",
        a.log_text()
    );
    let log = a.log_text();
    let fenced = log
        .lines()
        .find(|l| l.contains("event=fenced "))
        .unwrap_or_else(|| panic!("no fenced line:\n{log}"));
    assert!(
        fenced.contains("a ring in") && fenced.contains("holds epoch 40 above this instance's 1"),
        "{fenced}"
    );
    assert!(
        std::fs::read(&ring).expect("read ring") == after_write,
        "the fenced relay wrote to its ring"
    );
}
