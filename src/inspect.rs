//! `ringrelay inspect PATH [--verify]`: a ring file (or every ring in a data dir) offline.
//! `ringrelay inspect PATH --export [--export-format raw|ndjson]`: every intact record of one
//! ring file to stdout, also from a ring that cannot be opened (salvage, [`crate::ring::salvage`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::clock::rfc3339;
use crate::ring::salvage::Salvage;
use crate::ring::{human_bytes, OpenError, Read, Record, RingReader};

/// How `--export` writes a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// The record's bytes and an LF.
    Raw,
    /// `{"seq":N,"ts":"RFC 3339","record":"..."}` and an LF; the record as a JSON string
    /// (bytes that are not UTF-8 become U+FFFD); `"truncated":true` for a record cut at the
    /// feed's `max_record_bytes`.
    Ndjson,
}

impl ExportFormat {
    /// `raw` or `ndjson`.
    pub fn parse(s: &str) -> Option<ExportFormat> {
        match s {
            "raw" => Some(ExportFormat::Raw),
            "ndjson" => Some(ExportFormat::Ndjson),
            _ => None,
        }
    }
}

/// `--export`: every intact record of the ring file `path` to stdout, in sequence order.
/// A ring that opens is read from its tail to its head, skipping damaged records; one that does
/// not (damaged superblock, both metadata slots damaged, truncated or extended) is salvaged:
/// its data area is scanned for intact entries. What was done goes to stderr.
/// Exit codes: 0 clean, 1 damage found (or salvaged), 2 not readable as a ring at all.
pub fn export(path: &Path, format: ExportFormat) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut line = String::new();
    let mut failed: Option<std::io::Error> = None;
    let mut write = |r: &Record<'_>| {
        if failed.is_some() {
            return;
        }
        let res = match format {
            ExportFormat::Raw => out.write_all(r.payload).and_then(|()| out.write_all(b"\n")),
            ExportFormat::Ndjson => {
                line.clear();
                line.push_str("{\"seq\":");
                line.push_str(&r.pos.seq.to_string());
                line.push_str(",\"ts\":\"");
                line.push_str(&rfc3339(r.ts));
                line.push_str("\",\"record\":");
                crate::relay::alert::json_str(&mut line, &String::from_utf8_lossy(r.payload));
                if r.truncated {
                    line.push_str(",\"truncated\":true");
                }
                line.push_str("}\n");
                out.write_all(line.as_bytes())
            }
        };
        if let Err(e) = res {
            failed = Some(e);
        }
    };
    let name = path.display();
    let code = match RingReader::open(path) {
        Ok(reader) => {
            let view = reader.view();
            let (mut pos, mut n, mut first, mut last) = (view.tail, 0u64, None, 0);
            let (mut places, mut lost) = (0u64, 0u64);
            loop {
                match view.read(pos) {
                    Read::Record(r) => {
                        write(&r);
                        n += 1;
                        first.get_or_insert(r.pos.seq);
                        last = r.pos.seq;
                        pos = r.next;
                    }
                    Read::Corrupt { at, next, .. } => {
                        places += 1;
                        lost += next.seq - at.seq;
                        pos = next;
                    }
                    Read::End | Read::Overrun { .. } => break,
                }
            }
            eprintln!(
                "ringrelay inspect: {name}: exported {n} records{}, skipped {places} damaged places ({lost} records unreadable)",
                first.map_or(String::new(), |f| format!(" (seq {f}..{last})"))
            );
            u8::from(places > 0)
        }
        Err(e @ (OpenError::Io { .. } | OpenError::Version { .. })) => {
            eprintln!("ringrelay inspect: {e}");
            2
        }
        Err(e) => {
            eprintln!("ringrelay inspect: {e}");
            eprintln!(
                "ringrelay inspect: {name}: salvaging: scanning the data area for intact entries"
            );
            match Salvage::open(path) {
                Err(io) => {
                    eprintln!("ringrelay inspect: {name}: {io}");
                    2
                }
                Ok(s) => {
                    let got = s.records(&mut write);
                    eprintln!(
                        "ringrelay inspect: {name}: exported {} records{} from {} bytes of data area (superblock {}), skipped {} damaged places ({} damaged entries, {} gaps in the sequence holding {} records)",
                        got.records,
                        got.seqs.map_or(String::new(), |(a, b)| format!(" (seq {a}..{b})")),
                        s.scanned,
                        if s.superblock.is_some() { "intact" } else { "damaged: geometry guessed from the file length" },
                        s.damaged_entries + got.gaps,
                        s.damaged_entries,
                        got.gaps,
                        got.missing
                    );
                    if got.records == 0 && matches!(e, OpenError::NotARing { .. }) {
                        2
                    } else {
                        1
                    }
                }
            }
        }
    };
    if let Err(e) = failed.map_or_else(|| out.flush(), Err) {
        eprintln!("ringrelay inspect: {name}: writing the export: {e}");
        return ExitCode::from(2);
    }
    ExitCode::from(code)
}

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
        "  since checkpoint {} records; torn tail: {}; damaged tail records dropped: {}",
        rec.scanned,
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
