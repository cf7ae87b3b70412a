//! Issue 15, with the real binary: records relayed into a ring, the relay stopped (SIGTERM) or
//! killed (SIGKILL), one byte flipped inside a lines entry of the stopped ring, the relay
//! started again with the SIEM up. Every record arrives but those that touch the damaged 4 KiB
//! chunk of that entry (`buffer-spec.md` §5, §7), which never arrive; the relay logs the damage
//! it skipped; `inspect --verify` lists it. Killed, the damage may lie past the last checkpoint:
//! recovery keeps what follows it (§8) and counts the damaged records in `ring_opened`.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use ringrelay::ring::{Read, RingReader};

const LEN: usize = 100;
const CHUNK: u64 = 4096;
const DATA_AT: u64 = 12288;

/// The ring file of feed `f`.
fn ring_path(dir: &TempDir) -> std::path::PathBuf {
    dir.path().join("data").join("f.ring")
}

/// Flips a byte inside the body of the first lines entry of more than 200 records from record
/// `near` on, 100 bytes into the chunk after the one `near` (or its entry's record) starts in;
/// returns the record numbers that touch that chunk (by the spec: from the
/// LF before a record to its own LF) and the entry's offset.
fn damage_a_chunk(path: &Path, near: u64) -> (BTreeSet<u64>, u64) {
    let reader = RingReader::open(path).expect("open the stopped ring");
    let view = reader.view();
    // Find the entry, and every record of it with where it starts in the body.
    let mut pos = view.tail;
    let mut entry = None;
    let mut records = Vec::new();
    loop {
        match view.read(pos) {
            Read::Record(r) => {
                if r.pos.seq >= near && entry.is_none() && r.lines.is_some_and(|l| l.records > 200)
                {
                    entry = Some(r.pos.off);
                }
                if Some(r.pos.off) == entry {
                    let n = record_number(r.payload).expect("an intact record");
                    records.push((n, u64::from(r.pos.sub), r.payload.len() as u64));
                }
                pos = r.next;
            }
            Read::End => break,
            other => panic!("the ring is not clean before the flip: {other:?}"),
        }
    }
    let off = entry.expect("a lines entry of more than 200 records");
    let h = view.header_at(off).expect("its header");
    // The chunk after the one where the first record looked at starts (the records before it
    // in the entry are not looked at).
    let chunk = records[0].1 / CHUNK + 1;
    assert!(
        u64::from(h.len) > (chunk + 1) * CHUNK,
        "the entry holds chunk {chunk}: {}",
        h.len
    );
    drop(reader);
    let at = off + 48 + chunk * CHUNK + 100;
    let mut bytes = std::fs::read(path).unwrap();
    bytes[(DATA_AT + at) as usize] ^= 0x20;
    std::fs::write(path, &bytes).unwrap();
    let range = chunk * CHUNK..(chunk + 1) * CHUNK;
    let touching = records
        .iter()
        .filter(|&&(_, start, len)| {
            let from = start.saturating_sub(1);
            let to = start + len; // its LF
            from < range.end && range.start <= to
        })
        .map(|&(n, _, _)| n)
        .collect();
    (touching, off)
}

fn inspect_verify(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .arg("inspect")
        .arg(path)
        .arg("--verify")
        .output()
        .expect("run inspect");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn flipped_byte_in_a_lines_entry_costs_only_its_chunk(kill: bool) {
    let dir = TempDir::new(if kill {
        "recovery-kill"
    } else {
        "recovery-stop"
    });
    let siem = Sink::new(false);
    let cfg = one_feed_config(dir.path(), siem.addr, "", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("size = \"128MiB\"", "size = \"16MiB\"");
    std::fs::write(&cfg, text).unwrap();
    let mut relay = RelayProc::start(&cfg, 1);
    let n = 40_000;
    send_records(relay.addr("f"), 0..n, LEN);
    if kill {
        relay.kill9();
    } else {
        let (code, _) = relay.terminate();
        assert_eq!(code, Some(0), "{}", relay.log_text());
    }
    let path = ring_path(&dir);
    assert_eq!(ring_records(&dir.path().join("data")), n);
    let (lost, off) = damage_a_chunk(&path, n - 300);
    assert!(
        !lost.is_empty() && lost.len() <= 45,
        "{} records touch a 4 KiB chunk",
        lost.len()
    );
    let (code, out) = inspect_verify(&path);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("offset {off} ")) && out.contains("1 damaged places"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{} records unreadable", lost.len())),
        "{out}"
    );

    let relay = RelayProc::start(&cfg, 1);
    siem.set_up(true);
    let want = n - lost.len() as u64;
    let ok = wait_until(Duration::from_secs(60), || {
        siem.counts().len() as u64 >= want
    });
    assert!(
        ok,
        "{} of {want} arrived\n{}",
        siem.counts().len(),
        relay.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    let counts = siem.counts();
    for i in 0..n {
        assert_eq!(
            counts.contains_key(&i),
            !lost.contains(&i),
            "record {i} (damaged: {})",
            lost.contains(&i)
        );
    }
    assert_eq!(
        siem.count() as u64,
        counts.values().map(|&c| u64::from(c)).sum::<u64>()
    );
    let log = relay.log_text();
    let skipped = log
        .lines()
        .find(|l| l.contains("event=ring_damage_skipped"))
        .unwrap_or_else(|| panic!("the relay logs the damage it skipped:\n{log}"));
    assert_eq!(field(skipped, "offset"), off.to_string(), "{skipped}");
    let opened = log
        .lines()
        .find(|l| l.contains("event=ring_opened"))
        .expect("ring_opened");
    assert_eq!(field(opened, "torn_tail"), "false", "{opened}");
    if !kill {
        assert_eq!(field(opened, "damaged_after_checkpoint"), "0", "{opened}");
    }
}

#[test]
fn stopped_relay_with_a_flipped_byte_in_a_lines_entry_delivers_all_but_that_chunk() {
    flipped_byte_in_a_lines_entry_costs_only_its_chunk(false);
}

#[test]
fn killed_relay_with_a_flipped_byte_in_a_lines_entry_delivers_all_but_that_chunk() {
    flipped_byte_in_a_lines_entry_costs_only_its_chunk(true);
}

/// SIGKILL loops: each round sends records and kills the relay at once; the last round flips a
/// byte in the first entry past the last checkpoint. Every record arrives exactly where the
/// ring kept it (at least once), and recovery never takes intact records for a torn tail.
#[test]
fn sigkill_loops_then_damage_past_the_checkpoint_lose_only_the_damaged_records() {
    let dir = TempDir::new("recovery-loop");
    let siem = Sink::new(false);
    let cfg = one_feed_config(dir.path(), siem.addr, "", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("size = \"128MiB\"", "size = \"16MiB\"");
    std::fs::write(&cfg, text).unwrap();
    let per = 5_000;
    let rounds = 5;
    for r in 0..rounds {
        let mut relay = RelayProc::start(&cfg, 1);
        send_records(relay.addr("f"), r * per..(r + 1) * per, LEN);
        relay.kill9();
        assert_eq!(
            ring_records(&dir.path().join("data")),
            (r + 1) * per,
            "round {r}"
        );
        let opened = relay.log_text();
        let opened = opened
            .lines()
            .find(|l| l.contains("event=ring_opened"))
            .expect("ring_opened");
        assert_eq!(field(opened, "torn_tail"), "false", "{opened}");
    }
    // The last entry's head is within the records of the last round; damage one of the first
    // records after the last checkpoint the relay wrote.
    let path = ring_path(&dir);
    let n = rounds * per;
    let (lost, _) = damage_a_chunk(&path, n - per + 100);
    let relay = RelayProc::start(&cfg, 1);
    siem.set_up(true);
    let want = n - lost.len() as u64;
    let ok = wait_until(Duration::from_secs(60), || {
        siem.counts().len() as u64 >= want
    });
    assert!(
        ok,
        "{} of {want} arrived\n{}",
        siem.counts().len(),
        relay.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    let counts = siem.counts();
    let missing: Vec<u64> = (0..n).filter(|i| !counts.contains_key(i)).collect();
    assert_eq!(missing, lost.iter().copied().collect::<Vec<_>>());
    // Past the last checkpoint (the kill came within a second of the last records), recovery
    // kept what follows the damage and counted it; before it, readers skipped it alone.
    let log = relay.log_text();
    let opened = log
        .lines()
        .find(|l| l.contains("event=ring_opened"))
        .expect("ring_opened");
    assert_eq!(field(opened, "torn_tail"), "false", "{opened}");
    let damaged = field(opened, "damaged_after_checkpoint");
    assert!(
        damaged == "0" || damaged == lost.len().to_string(),
        "{opened}"
    );
    eprintln!("ring_recovery: {opened}");
    assert!(
        relay.log_has("event=ring_damage_skipped"),
        "{}",
        relay.log_text()
    );
}
