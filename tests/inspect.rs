//! `ringrelay inspect` as an operator meets it (issue 16 item 5): damage exits 1, the advice for
//! a ring that cannot be opened works, a ring wrapping under a live relay is not reported as
//! damaged, and the HTTP outputs' dead-letter files are listed with their record counts.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{one_feed_config, send_records, RelayProc, Sink, TempDir};

const LEN: usize = 200;

fn inspect(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .arg("inspect")
        .args(args)
        .output()
        .expect("run inspect")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A stopped relay's data dir with `n` records in feed `f`'s 1 MiB ring.
fn stopped_ring(dir: &Path, n: u64) -> std::path::PathBuf {
    let siem = Sink::new(false);
    let cfg = one_feed_config(dir, siem.addr, "max_record_bytes = \"4KiB\"", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("128MiB", "1MiB");
    std::fs::write(&cfg, text).unwrap();
    let mut relay = RelayProc::start(&cfg, 1);
    send_records(relay.addr("f"), 0..n, LEN);
    relay.terminate();
    dir.join("data").join("f.ring")
}

#[test]
fn a_ring_with_both_metadata_slots_damaged_exits_1_and_points_to_the_export() {
    let dir = TempDir::new("inspect-slots");
    let ring = stopped_ring(dir.path(), 500);
    let mut bytes = std::fs::read(&ring).unwrap();
    bytes[4096..12288].fill(0);
    std::fs::write(&ring, &bytes).unwrap();
    let path = ring.display().to_string();
    for args in [vec![path.as_str()], vec![path.as_str(), "--verify"]] {
        let o = inspect(&args);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("--export"), "{}", text(&o));
        assert!(
            !text(&o).contains("inspect --verify` shows"),
            "{}",
            text(&o)
        );
    }
    // The advice works: every record comes back.
    let o = inspect(&[&path, "--export"]);
    let lines = String::from_utf8_lossy(&o.stdout).lines().count();
    assert_eq!(lines, 500, "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn damage_exits_1_and_a_missing_path_exits_2() {
    let dir = TempDir::new("inspect-codes");
    let ring = stopped_ring(dir.path(), 500);
    let path = ring.display().to_string();
    assert_eq!(inspect(&[&path, "--verify"]).status.code(), Some(0));
    let mut bytes = std::fs::read(&ring).unwrap();
    // A byte in the middle of the data area: inside some entry's body or header.
    let at = 12288 + 50_000;
    bytes[at] ^= 0x40;
    std::fs::write(&ring, &bytes).unwrap();
    let o = inspect(&[&path, "--verify"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("damaged places"), "{}", text(&o));
    let o = inspect(&["/nonexistent/f.ring"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn dead_letter_files_are_listed_with_their_record_counts() {
    let dir = TempDir::new("inspect-deadletter");
    let ring = stopped_ring(dir.path(), 10);
    let data = ring.parent().unwrap();
    std::fs::write(
        data.join("f.hec.deadletter"),
        "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n",
    )
    .unwrap();
    let o = inspect(&[&data.display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        text(&o).contains("f.hec.deadletter (3 records)"),
        "{}",
        text(&o)
    );
}

#[test]
fn verify_beside_a_live_relay_whose_ring_wraps_reports_no_damage() {
    let dir = TempDir::new("inspect-live");
    let siem = Sink::new(true);
    let cfg = one_feed_config(dir.path(), siem.addr, "max_record_bytes = \"4KiB\"", "");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("128MiB", "1MiB");
    std::fs::write(&cfg, text_cfg).unwrap();
    let relay = RelayProc::start(&cfg, 1);
    let addr = relay.addr("f");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    // The 1 MiB ring laps several times a second while inspect reads it.
    let sender = thread::spawn(move || {
        let mut n = 0;
        while !s.load(Ordering::Relaxed) {
            send_records(addr, n..n + 20_000, LEN);
            n += 20_000;
        }
    });
    let ring = dir.path().join("data").join("f.ring").display().to_string();
    let end = Instant::now() + Duration::from_secs(40);
    let mut runs = 0;
    while runs < 12 && Instant::now() < end {
        let o = inspect(&[&ring, "--verify"]);
        assert_eq!(o.status.code(), Some(0), "run {runs}: {}", text(&o));
        runs += 1;
    }
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    assert!(runs >= 5, "only {runs} inspect runs in 40 s");
}
