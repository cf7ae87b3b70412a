//! One bad ring never stops the others (issue 15, items 5 and 6), with the real binary: two
//! feeds take records, the relay stops, one ring is damaged on disk (truncated, superblock
//! bytes flipped, both metadata slots zeroed, replaced by the other feed's ring), and the relay
//! starts again: the intact feed accepts and delivers; the damaged one is not bound, `/health`,
//! `/metrics` and `/ready` show it, its log line names the path and the fix; and
//! `ringrelay inspect DAMAGED --export` gives back every record it had taken.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

const LEN: usize = 200;
/// Records sent to each feed before the damage.
const BEFORE: u64 = 3_000;

struct Setup {
    dir: TempDir,
    config: PathBuf,
    sinks: [Sink; 2],
    ports: [SocketAddr; 2],
}

impl Setup {
    fn new(name: &str) -> Setup {
        let dir = TempDir::new(name);
        let sinks = [Sink::new(true), Sink::new(true)];
        let ports = free_ports();
        let mut text = format!(
            "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n",
            dir.path().join("data").display()
        );
        for (i, feed) in ["a", "b"].iter().enumerate() {
            text.push_str(&format!(
                "\n[[feed]]\nname = \"{feed}\"\ninput = {{ kind = \"tcp\", listen = \"{}\" }}\n\
                 buffer = {{ size = \"8MiB\" }}\n\n[[feed.output]]\nname = \"siem\"\nkind = \"tcp\"\n\
                 address = \"{}\"\n",
                ports[i], sinks[i].addr
            ));
        }
        let config = dir.path().join("ringrelay.toml");
        std::fs::write(&config, text).unwrap();
        Setup {
            dir,
            config,
            sinks,
            ports,
        }
    }

    fn ring(&self, feed: &str) -> PathBuf {
        self.dir.path().join("data").join(format!("{feed}.ring"))
    }

    /// Runs the relay, sends `BEFORE` records to each feed, waits for their delivery, stops it.
    fn fill(&self) {
        let mut relay = RelayProc::start(&self.config, 2);
        send_records(relay.addr("a"), 0..BEFORE, LEN);
        send_records(relay.addr("b"), 100_000..100_000 + BEFORE, LEN);
        for s in &self.sinks {
            assert!(
                wait_until(Duration::from_secs(20), || s.count() >= BEFORE as usize),
                "delivery before the damage; log:\n{}",
                relay.log_text()
            );
        }
        assert_eq!(relay.terminate().0, Some(0), "{}", relay.log_text());
    }
}

/// `ringrelay inspect PATH --export [--export-format F]`: exit code, stdout, stderr.
fn export(path: &Path, format: Option<&str>) -> (i32, Vec<u8>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringrelay"));
    cmd.arg("inspect").arg(path).arg("--export");
    if let Some(f) = format {
        cmd.args(["--export-format", f]);
    }
    let out = cmd.output().expect("run inspect");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The record numbers of an export, each checked intact, in order.
fn exported_numbers(stdout: &[u8]) -> Vec<u64> {
    stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| record_number(l).unwrap_or_else(|| panic!("not an intact record: {l:?}")))
        .collect()
}

/// Restarts after damage to `b`'s ring and checks everything the issue asks; returns the log.
fn restart_with_b_failed(s: &Setup, error_says: &str) -> String {
    let relay = RelayProc::start(&s.config, 1);
    assert!(
        relay.wait_log("event=feed_failed", Duration::from_secs(10)),
        "no feed_failed line:\n{}",
        relay.log_text()
    );
    let log = relay.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("event=feed_failed"))
        .unwrap()
        .to_string();
    let path = s.ring("b").display().to_string();
    assert!(
        line.contains("level=error") && line.contains(" feed=b "),
        "{line}"
    );
    assert!(line.contains(&format!("path={path}")), "{line}");
    assert!(line.contains(error_says), "{line}");
    assert!(line.contains("fix=") && line.contains("mv "), "{line}");
    assert!(!log.contains("start_failed"), "{log}");
    let listening = relay.listen_addrs();
    assert!(
        listening.contains_key("a") && !listening.contains_key("b"),
        "{log}"
    );
    // Its port is not bound: senders fail over or retry; nothing is accepted that is not kept.
    let refused = TcpStream::connect_timeout(&s.ports[1], Duration::from_secs(2));
    assert!(refused.is_err(), "feed b's port answers");

    // The intact feed accepts and delivers.
    let before = s.sinks[0].count();
    send_records(relay.addr("a"), 10_000..11_000, LEN);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let c = s.sinks[0].counts();
            (10_000..11_000).all(|n| c.contains_key(&n))
        }),
        "feed a after the restart ({} lines before)\n{}",
        before,
        relay.log_text()
    );

    let admin = admin_addr(&relay);
    let (status, health) = get(admin, "/health");
    assert_eq!(status, 200);
    assert!(
        health.contains("{\"name\":\"a\",\"state\":\"running\""),
        "{health}"
    );
    assert!(
        health.contains("{\"name\":\"b\",\"state\":\"failed\""),
        "{health}"
    );
    assert!(health.contains(error_says), "{health}");
    let m = metrics(admin);
    assert_eq!(m["ringrelay_feed_failed{feed=\"b\"}"], 1.0);
    assert_eq!(m["ringrelay_feed_failed{feed=\"a\"}"], 0.0);
    assert_eq!(m["ringrelay_alerts_total{kind=\"feed_failed\"}"], 1.0);
    let (_, ready) = get(admin, "/ready");
    assert!(ready.contains("\"failed_feeds\":[\"b\"]"), "{ready}");
    log
}

/// Damages `b`'s ring, restarts, checks, and exports the damaged ring.
fn damage_case(name: &str, error_says: &str, damage: impl FnOnce(&Path)) {
    let s = Setup::new(name);
    s.fill();
    damage(&s.ring("b"));
    restart_with_b_failed(&s, error_says);
    let (code, out, err) = export(&s.ring("b"), None);
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        exported_numbers(&out),
        (100_000..100_000 + BEFORE).collect::<Vec<_>>(),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "exported {BEFORE} records (seq 0..{})",
            BEFORE - 1
        )),
        "{err}"
    );
}

#[test]
fn a_truncated_ring_fails_its_feed_only_and_its_records_export() {
    damage_case("truncated", "truncated", |p| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - 4096).unwrap();
    });
}

#[test]
fn a_damaged_superblock_fails_its_feed_only_and_its_records_export() {
    damage_case("superblock", "superblock damaged", |p| {
        let mut b = std::fs::read(p).unwrap();
        for byte in &mut b[24..28] {
            *byte ^= 0x5a; // capacity
        }
        std::fs::write(p, b).unwrap();
    });
}

#[test]
fn both_metadata_slots_damaged_fail_their_feed_only_and_its_records_export() {
    damage_case("slots", "both metadata slots", |p| {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 8192], 4096).unwrap();
    });
}

#[test]
fn a_ring_renamed_from_another_feed_is_refused_naming_both() {
    let s = Setup::new("renamed");
    s.fill();
    std::fs::rename(s.ring("a"), s.ring("b")).unwrap();
    // a gets a new ring; b refuses a's.
    let log = restart_with_b_failed(&s, "belongs to feed \\\"a\\\", not \\\"b\\\"");
    assert!(log.contains("event=ring_opened feed=a"), "{log}");
    // a's records, as a's ring holds them: nothing went to b's SIEM.
    let b_lines = s.sinks[1].count();
    assert_eq!(b_lines, BEFORE as usize);
    let (code, out, err) = export(&s.ring("b"), Some("ndjson"));
    assert_eq!(code, 0, "{err}");
    let text = String::from_utf8(out).unwrap();
    let mut seqs = BTreeSet::new();
    let mut numbers = Vec::new();
    for line in text.lines() {
        assert!(
            line.starts_with("{\"seq\":") && line.contains(",\"ts\":\"20"),
            "{line}"
        );
        let seq: u64 = line[7..line.find(',').unwrap()].parse().unwrap();
        seqs.insert(seq);
        let rec = line.split("\"record\":\"").nth(1).unwrap();
        numbers.push(record_number(rec.trim_end_matches("\"}").as_bytes()).unwrap());
    }
    assert_eq!(numbers, (0..BEFORE).collect::<Vec<_>>());
    assert_eq!(seqs.len() as u64, BEFORE);
}

#[test]
fn with_every_ring_damaged_the_relay_still_runs_for_its_operator() {
    let s = Setup::new("allfailed");
    s.fill();
    for feed in ["a", "b"] {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(s.ring(feed))
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; 8192], 4096).unwrap();
    }
    let mut relay = RelayProc::spawn(&s.config, &[]);
    assert!(
        relay.wait_log("event=no_feed_running", Duration::from_secs(10)),
        "{}",
        relay.log_text()
    );
    let admin = admin_addr(&relay);
    let m = metrics(admin);
    assert_eq!(m["ringrelay_feed_failed{feed=\"a\"}"], 1.0);
    assert_eq!(m["ringrelay_feed_failed{feed=\"b\"}"], 1.0);
    assert_eq!(m["ringrelay_alerts_total{kind=\"feed_failed\"}"], 2.0);
    assert!(relay.running(), "{}", relay.log_text());
    for port in s.ports {
        assert!(TcpStream::connect_timeout(&port, Duration::from_secs(2)).is_err());
    }
    assert_eq!(relay.terminate().0, Some(0), "{}", relay.log_text());
}

#[test]
fn export_of_an_intact_ring_is_clean_and_a_bad_command_line_is_2() {
    let s = Setup::new("intact");
    s.fill();
    let (code, out, err) = export(&s.ring("a"), None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(exported_numbers(&out), (0..BEFORE).collect::<Vec<_>>());
    let bad = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .arg("inspect")
        .arg(s.ring("a"))
        .args(["--export", "--export-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
