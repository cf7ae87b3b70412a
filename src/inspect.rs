//! `ringrelay inspect PATH [--verify]`: a ring file (or every ring in a data dir) offline.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::clock::rfc3339;
use crate::ring::{human_bytes, RingReader};

/// Exit codes: 0 clean, 1 damage found, 2 a file could not be read as a ring.
pub fn run(path: &Path, verify: bool) -> ExitCode {
    let files = match ring_files(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringrelay inspect: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut worst = 0u8;
    for file in files {
        let code = match RingReader::open(&file) {
            Ok(r) => print_ring(&file, &r, verify),
            Err(e) => {
                eprintln!("ringrelay inspect: {e}");
                2
            }
        };
        worst = worst.max(code);
    }
    ExitCode::from(worst)
}

fn ring_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        std::fs::metadata(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ring"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(std::io::Error::other("no *.ring files in this directory"));
    }
    Ok(files)
}

fn print_ring(path: &Path, r: &RingReader, verify: bool) -> u8 {
    let s = r.stats();
    let sb = &r.superblock;
    let (epoch, run) = r.epoch_run();
    let ts = |t: Option<u64>| t.map_or("-".to_string(), rfc3339);
    println!("ring {}", path.display());
    println!("  feed            {}", sb.name);
    println!("  format          version {}", sb.version);
    println!(
        "  capacity        {} ({} bytes)",
        human_bytes(s.capacity),
        s.capacity
    );
    println!(
        "  used            {} bytes ({:.1}%)",
        s.used,
        s.used as f64 * 100.0 / s.capacity as f64
    );
    println!(
        "  records         {} (seq {} .. {})",
        s.records,
        s.first_seq,
        s.next_seq.saturating_sub(1)
    );
    println!("  oldest          {}", ts(s.oldest_ts));
    println!("  newest          {}", ts(s.newest_ts));
    println!("  span            {:.1} s", s.span_secs());
    println!("  max record      {} bytes", sb.max_record);
    println!(
        "  evicted         {} records overwritten since creation",
        s.evicted
    );
    println!("  run / epoch     {run} / {epoch}");
    let rec = &r.recovery;
    println!(
        "  last checkpoint {} (slot {}, generation {})",
        if rec.last_checkpoint_ns == 0 {
            "-".into()
        } else {
            rfc3339(rec.last_checkpoint_ns)
        },
        ["A", "B"][rec.slot],
        rec.generation
    );
    println!(
        "  since checkpoint {} records, {} damaged (kept, skipped by readers); torn tail: {}; damaged tail records dropped: {}",
        rec.scanned,
        rec.damaged,
        if rec.torn { "yes" } else { "no" },
        rec.tail_dropped
    );
    let view = r.view();
    for (name, pos, lost) in r.cursors() {
        let lag = s.next_seq.saturating_sub(pos.seq);
        let lag_secs = match view.read(pos) {
            crate::ring::Read::Record(rec) => s
                .newest_ts
                .map_or(0.0, |n| n.saturating_sub(rec.ts) as f64 / 1e9),
            _ => 0.0,
        };
        println!(
            "  cursor {name:<16} next seq {}  lag {lag} records ({lag_secs:.1} s)  lost {lost}",
            pos.seq
        );
    }
    if !verify {
        return 0;
    }
    let damage = view.verify();
    if damage.is_empty() {
        println!("  verify          clean: every record between tail and head checks");
        return 0;
    }
    let lost: u64 = damage.iter().map(|d| d.2).sum();
    println!(
        "  verify          {} damaged places, {lost} records unreadable",
        damage.len()
    );
    for (at, why, n) in damage {
        println!(
            "    offset {} (file offset {}) seq {}: {why}; {n} record(s) skipped",
            at.off,
            at.off + crate::ring::format::DATA_OFFSET,
            at.seq
        );
    }
    1
}
