//! The sync helper process (`ringrelay sync-helper`, `src/relay/sync_helper.rs`) that runs the
//! rings' `sync = "interval"` syncs: the relay restarts it when it dies and goes on syncing;
//! it does not outlive a relay killed with SIGKILL.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The pids of the helpers the relay logged as started or restarted, in order.
fn helper_pids(relay: &RelayProc) -> Vec<i32> {
    relay
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| {
            l.contains("event=sync_helper_started") || l.contains("event=sync_helper_restarted")
        })
        .map(|l| field(l, "pid").parse().expect("pid"))
        .collect()
}

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_string()))
        .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Read system calls the process made (`/proc/PID/io`): the helper reads one request per sync.
fn reads(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("syscr:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// One feed `f` to `sink`, syncing every 200 ms.
fn config(dir: &std::path::Path, sink: &Sink) -> std::path::PathBuf {
    let p = one_feed_config(dir, sink.addr, "", "");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "admin_listen = \"off\"",
        "admin_listen = \"off\"\nsync_interval = \"200ms\"\ncheckpoint_interval = \"200ms\"",
    );
    std::fs::write(&p, text).unwrap();
    p
}

/// Sends records `range` and waits until the sink has them all.
fn relay_records(relay: &RelayProc, sink: &Sink, range: std::ops::Range<u64>) {
    let want = range.end as usize;
    send_records(relay.addr("f"), range, 200);
    let ok = wait_until(Duration::from_secs(20), || sink.counts().len() >= want);
    assert!(
        ok,
        "{} of {want} records delivered; log:\n{}",
        sink.counts().len(),
        relay.log_text()
    );
}

#[test]
fn the_relay_restarts_a_killed_sync_helper_logs_it_and_keeps_syncing() {
    let dir = TempDir::new("sync-helper-restart");
    let sink = Sink::new(true);
    let cfg = config(dir.path(), &sink);
    let relay = RelayProc::start(&cfg, 1);
    assert!(relay.wait_log("event=sync_helper_started", Duration::from_secs(10)));
    let first = helper_pids(&relay)[0];
    assert!(alive(first), "helper {first} runs");
    assert!(cmdline(first).contains("sync-helper"), "{}", cmdline(first));
    relay_records(&relay, &sink, 0..2_000);

    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    assert!(
        relay.wait_log("event=sync_helper_restarted", Duration::from_secs(10)),
        "log:\n{}",
        relay.log_text()
    );
    assert!(relay.log_has("event=sync_helper_exited"));
    let second = *helper_pids(&relay).last().unwrap();
    assert_ne!(second, first);
    assert!(alive(second), "the new helper {second} runs");
    // The old one was reaped, not left a zombie.
    assert!(wait_until(Duration::from_secs(5), || {
        !std::path::Path::new(&format!("/proc/{first}")).exists()
    }));

    // It keeps syncing: it takes a request every period, and the inputs, which wait for a sync
    // that is not reported, keep reading, period after period.
    let before = reads(second);
    let t = Instant::now();
    let mut n = 2_000;
    while t.elapsed() < Duration::from_secs(3) {
        relay_records(&relay, &sink, n..n + 1_000);
        n += 1_000;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        reads(second) >= before + 5,
        "the new helper read {} requests in 3 s",
        reads(second) - before
    );
    assert!(!relay.log_has("event=sync_helper_unavailable"));
    assert!(!relay.log_has("event=relay_failed"));
}

#[test]
fn the_sync_helper_exits_when_the_relay_is_killed() {
    let dir = TempDir::new("sync-helper-orphan");
    let sink = Sink::new(true);
    let cfg = config(dir.path(), &sink);
    let mut relay = RelayProc::start(&cfg, 1);
    assert!(relay.wait_log("event=sync_helper_started", Duration::from_secs(10)));
    let helper = helper_pids(&relay)[0];
    relay_records(&relay, &sink, 0..5_000);
    assert!(alive(helper));
    relay.kill9();
    assert!(
        wait_until(Duration::from_secs(5), || !alive(helper)),
        "helper {helper} outlived the relay: {}",
        cmdline(helper)
    );
}
