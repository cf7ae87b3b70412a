//! `ringrelay inspect PATH [--verify]`: a ring file (or every ring in a data dir) offline.
//! `ringrelay inspect PATH --export [--export-format raw|ndjson]`: every intact record of one
//! ring file to stdout, also from a ring that cannot be opened (salvage, [`crate::ring::salvage`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Serialize;

use crate::clock::rfc3339;
use crate::json::{self, Base64, Text, TooLarge};
use crate::ring::salvage::Salvage;
use crate::ring::{human_bytes, Damage, OpenError, Pos, Read, Record, RingReader};

/// How `--export` writes a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// The record's bytes and an LF.
    Raw,
    /// `{"seq":N,"ts":"RFC 3339","record":"..."}` and an LF; the record as a JSON string
    /// (bytes that are not UTF-8 become U+FFFD, and then `"record_base64"` holds the exact
    /// bytes); `"truncated":true` for a record cut at the feed's `max_record_bytes`.
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

/// One `--export-format ndjson` line: [`ExportFormat::Ndjson`].
#[derive(Serialize)]
struct ExportLine<'a> {
    seq: u64,
    ts: &'a str,
    record: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_base64: Option<Base64<'a>>,
    #[serde(skip_serializing_if = "is_false")]
    truncated: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Appends `r` as one ndjson line (LF-terminated) to `out`, in a bound counted from the
/// record's length (each byte at its worst-case escaping, and its base64).
fn export_line(out: &mut Vec<u8>, r: &Record<'_>) -> Result<(), TooLarge> {
    let ts = rfc3339(r.ts);
    let (record, record_base64) = json::text_and_exact(r.payload);
    let line = ExportLine {
        seq: r.pos.seq,
        ts: &ts,
        record,
        record_base64,
        truncated: r.truncated,
    };
    let bound = 2
        + json::key_bound("seq")
        + json::U64
        + json::key_bound("ts")
        + json::str_bound(ts.len())
        + json::key_bound("record")
        + json::str_bound(r.payload.len())
        + json::key_bound("record_base64")
        + json::base64_bound(r.payload.len())
        + json::key_bound("truncated")
        + json::BOOL;
    json::append(out, &line, bound)?;
    out.push(b'\n');
    Ok(())
}

/// `--export`: every intact record of the ring file `path` to stdout, in sequence order.
/// A ring that opens is read from its tail to its head, skipping damaged records; one that does
/// not (damaged superblock, both metadata slots damaged, truncated or extended) is salvaged:
/// its data area is scanned for intact entries. What was done goes to stderr.
/// Writes every readable record of an opened ring to `write`; skips damaged places and counts
/// them. Exit code 1 when there were any.
fn export_records(
    reader: &RingReader,
    name: &std::path::Display<'_>,
    write: &mut dyn FnMut(&Record<'_>),
) -> u8 {
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

/// A ring that cannot be opened because it is damaged: its data area is scanned for intact
/// entries (`Salvage`) and their records written to `write`. Exit code 1, or 2 when the file
/// held no record and is not a ring at all.
fn export_salvaged(path: &Path, e: &OpenError, write: &mut dyn FnMut(&Record<'_>)) -> u8 {
    let name = path.display();
    eprintln!("ringrelay inspect: {name}: salvaging: scanning the data area for intact entries");
    match Salvage::open(path) {
        Err(io) => {
            eprintln!("ringrelay inspect: {name}: {io}");
            2
        }
        Ok(s) => {
            let got = s.records(write);
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

/// Exit codes: 0 clean, 1 damage found (or salvaged), 2 not readable as a ring at all.
pub fn export(path: &Path, format: ExportFormat) -> ExitCode {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let mut line = Vec::new();
    let mut failed: Option<std::io::Error> = None;
    let mut write = |r: &Record<'_>| {
        if failed.is_some() {
            return;
        }
        let res = match format {
            ExportFormat::Raw => out.write_all(r.payload).and_then(|()| out.write_all(b"\n")),
            ExportFormat::Ndjson => {
                line.clear();
                export_line(&mut line, r)
                    .map_err(std::io::Error::other)
                    .and_then(|()| out.write_all(&line))
            }
        };
        if let Err(e) = res {
            failed = Some(e);
        }
    };
    let name = path.display();
    let code = match RingReader::open(path) {
        Ok(reader) => export_records(&reader, &name, &mut write),
        Err(e @ (OpenError::Io { .. } | OpenError::Version { .. })) => {
            eprintln!("ringrelay inspect: {e}");
            2
        }
        Err(e) => {
            eprintln!("ringrelay inspect: {e}");
            export_salvaged(path, &e, &mut write)
        }
    };
    if let Err(e) = failed.map_or_else(|| out.flush(), Err) {
        eprintln!("ringrelay inspect: {name}: writing the export: {e}");
        return ExitCode::from(2);
    }
    ExitCode::from(code)
}

/// Exit codes: 0 clean, 1 damage found (a damaged record, or a ring that cannot be opened
/// because it is damaged), 2 a path that is not there or not a ring (a bad command line).
pub fn run(path: &Path, verify: bool) -> ExitCode {
    let files = match ring_files(path) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("ringrelay inspect: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let mut worst = 0u8;
    for file in &files {
        let code = match RingReader::open(file) {
            Ok(r) => print_ring(file, &r, verify),
            // Not there, not a ring, or of a format this build does not read: not damage.
            Err(
                e @ (OpenError::Io { .. } | OpenError::NotARing { .. } | OpenError::Version { .. }),
            ) => {
                eprintln!("ringrelay inspect: {e}");
                2
            }
            Err(e) => {
                // Damaged: say what to do, and where the intact records are.
                eprintln!("ringrelay inspect: {e}");
                eprintln!(
                    "ringrelay inspect: {}: the intact records: ringrelay inspect {} --export > FILE; `ringrelay run` starts every other feed and reports this one failed (feed_failed) until the ring is moved aside (mv {} {}.damaged), when it creates a new one",
                    file.display(),
                    file.display(),
                    file.display(),
                    file.display()
                );
                1
            }
        };
        worst = worst.max(code);
    }
    print_dead_letters(&files);
    ExitCode::from(worst)
}

/// The HTTP outputs' dead-letter files beside the rings (`<feed>.<output>.deadletter`, one JSON
/// line per record a receiver refused for good), with their record counts.
fn print_dead_letters(rings: &[PathBuf]) {
    let mut seen: Vec<PathBuf> = Vec::new();
    for ring in rings {
        let (Some(dir), Some(feed)) = (ring.parent(), ring.file_stem()) else {
            continue;
        };
        let prefix = format!("{}.", feed.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        }) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "deadletter")
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .collect();
        files.sort();
        for f in files {
            if seen.contains(&f) {
                continue;
            }
            let records =
                std::fs::read(&f).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
            println!("dead letters {} ({records} records)", f.display());
            seen.push(f);
        }
    }
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

/// Damage found beside a live relay may be records the relay overwrote while they were read
/// (its ring wrapped under us): once the relay's next checkpoint (at least one a second) moved
/// the tail, each place is looked at again. A place now before the tail was overwritten, not
/// damaged; one that now reads whole was being written. What is left is damage.
fn settled_damage(path: &Path, found: Vec<(Pos, Damage, u64)>) -> Vec<(Pos, Damage, u64)> {
    if found.is_empty() {
        return found;
    }
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let Ok(again) = RingReader::open(path) else {
        return found;
    };
    let view = again.view();
    found
        .into_iter()
        .filter(|(at, ..)| {
            at.seq >= view.tail.seq && matches!(view.read(*at), Read::Corrupt { .. })
        })
        .collect()
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
    let damage = settled_damage(path, view.verify());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(payload: &[u8], truncated: bool) -> String {
        let r = Record {
            pos: Pos::at(0, 7),
            ts: 0,
            truncated,
            payload,
            line: None,
            lines: None,
            next: Pos::at(64, 8),
        };
        let mut out = b"before\n".to_vec();
        export_line(&mut out, &r).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_ndjson_line_is_the_record_as_a_json_string() {
        assert_eq!(
            line_of(b"say \"hi\"\n", false),
            "before\n{\"seq\":7,\"ts\":\"1970-01-01T00:00:00.000Z\",\"record\":\"say \\\"hi\\\"\\n\"}\n"
        );
        assert!(line_of(b"cut", true).ends_with(",\"record\":\"cut\",\"truncated\":true}\n"));
    }

    #[test]
    fn a_record_that_is_not_utf8_is_exported_exactly_in_base64_too() {
        assert!(line_of(b"\xffab", true).ends_with(
            ",\"record\":\"\u{fffd}ab\",\"record_base64\":\"/2Fi\",\"truncated\":true}\n"
        ));
    }
}
