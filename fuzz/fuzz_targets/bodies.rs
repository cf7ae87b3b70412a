//! The fuzz targets' bodies. Shared with `tests/fuzz_smoke.rs`, which includes this file by path
//! and runs the same bodies on generated inputs under `cargo test`, so the bodies stay compiled
//! and exercised on stable Rust without cargo-fuzz.
#![allow(dead_code)]
// `is_multiple_of` is newer than the main crate's rust-version (1.85), which compiles this file
// too; the fuzz crate, which declares none, would have it.
#![allow(clippy::manual_is_multiple_of)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use kafka_protocol::messages::{
    ApiVersionsResponse, InitProducerIdResponse, MetadataResponse, ProduceResponse, ResponseHeader,
    SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion};

use ringrelay::input::framing::{Framer, FramerConfig, FramerStats, Framing, Oversize};
use ringrelay::input::http::request::{self, Expect, Limits};
use ringrelay::output::http::protocol;
use ringrelay::output::http::response::{Response, ResponseReader, MAX_RESPONSE_BODY};
use ringrelay::output::kafka::cluster::{self, Topology, Versions};
use ringrelay::output::kafka::wire::{self, Frame, FrameReader, MAX_RESPONSE};
use ringrelay::ring::format::{
    chunk_table_len, RecordHeader, CHUNK, FLAG_CHUNKED, FLAG_LINES, KIND_DATA,
};
use ringrelay::ring::view::{scan_forward, IN_DAMAGED_ENTRY};
use ringrelay::ring::{
    record_stride, Pos, Read, Record, Ring, RingOptions, RingReader, View, WhenFull, RECORD_HEADER,
};

/// File offset of the data area (`buffer-spec.md` §2).
pub const DATA: usize = 12288;
/// Capacity of the template ring.
pub const CAP: u64 = 1 << 20;
/// Largest payload of the template ring.
pub const MAX_RECORD: u32 = 8 << 10;

/// The payload the template ring gives `seq` when it writes it as a plain entry: any bytes, LFs
/// included, up to 3000 of them.
pub fn template_payload(seq: u64) -> Vec<u8> {
    let len = (seq * 7919 % 3000) as usize;
    (0..len).map(|i| (seq as usize + i * 13) as u8).collect()
}

/// The record the template ring gives `seq` when it writes it into a lines entry: any bytes but
/// LF, up to 700 of them, and now and then none (the format allows an empty record in a lines
/// entry, though the framer never makes one).
pub fn template_line(seq: u64) -> Vec<u8> {
    let len = (seq * 7919 % 700) as usize;
    (0..len)
        .map(|i| match (seq as usize + i * 13) as u8 {
            b'\n' => b'\r',
            b => b,
        })
        .collect()
}

/// A record as the template ring wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    pub payload: Vec<u8>,
    pub truncated: bool,
    pub ts: u64,
}

/// An entry of the template ring that is still in it.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// Its data offset.
    pub off: u64,
    /// The sequence number of its first record.
    pub seq: u64,
    /// Its body's length.
    pub len: u64,
    /// Whether it is a lines entry.
    pub lines: bool,
}

impl Entry {
    /// Bytes it takes in the ring: a lines entry (chunked, as the code writes them) has its
    /// chunk table after the body.
    pub fn stride(&self) -> u64 {
        let table = if self.lines {
            chunk_table_len(self.len)
        } else {
            0
        };
        record_stride(self.len + table)
    }
}

/// A valid ring file written by the code, and what it holds.
pub struct Template {
    /// The file's bytes.
    pub bytes: Vec<u8>,
    /// Every record ever written to it, by sequence number (the oldest were evicted since).
    pub records: Vec<Written>,
    /// Its entries from the tail to the head.
    pub entries: Vec<Entry>,
}

/// A valid ring written once by the code: wrapped (more than twice), with a wrap marker before a
/// lines entry, plain entries (some truncated) and lines entries (of 1 to 40 records, some of
/// them written with room to spare) mixed, two cursors (one inside a lines entry), checkpointed,
/// entries past the checkpoint for the recovery scan, and a reservation never committed (a
/// read into the ring that a crash interrupted) at the head.
pub fn template_ring() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(build_template)
}

/// The template ring's bytes.
pub fn template() -> &'static [u8] {
    &template_ring().bytes
}

/// Record `seq` as the template ring wrote it.
pub fn template_record(seq: u64) -> Option<&'static Written> {
    template_ring().records.get(usize::try_from(seq).ok()?)
}

fn build_template() -> Template {
    let dir = std::env::temp_dir().join(format!(
        "ringrelay-fuzz-template-{}-{}",
        std::process::id(),
        unique()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join("t.ring");
    let opts = RingOptions {
        capacity: CAP,
        max_record: MAX_RECORD,
        when_full: WhenFull::DropOldest,
        name: "fuzz".into(),
    };
    let mut ring = Ring::open(&path, &opts).expect("create template ring");
    let a = ring.cursor("a").expect("cursor");
    ring.cursor("b").expect("cursor");
    let mut records: Vec<Written> = Vec::new();
    let mut entries = Vec::new();
    let mut written = 0;
    let mut checkpointed = false;
    while written <= CAP * 12 / 5 {
        let k = entries.len() as u64;
        let seq = records.len() as u64;
        let ts = 1_000 + seq / 2;
        let count = if k % 40 == 20 { 40 } else { 1 + k * 5 % 7 };
        let lines: Vec<Vec<u8>> = (seq..seq + count).map(template_line).collect();
        let body_len = lines.iter().map(|l| l.len() + 1).sum::<usize>();
        let plain = template_payload(seq);
        let longest = body_len.max(plain.len()) as u64;
        // Every third entry is a lines entry, and so is every entry that wraps: the live wrap
        // marker is followed by one.
        let entry = if k % 3 == 1 || ring.head().off + record_stride(longest) > CAP {
            // As the relay does: room for more than the read brings; what is past the
            // committed lines (a partial record) stays behind as free bytes.
            let extra = (k % 4 * 300) as usize;
            let room = ring.reserve(body_len, body_len + extra).expect("reserve");
            assert!(room >= body_len, "reserve gave {room} of {body_len} bytes");
            let dst = ring.reserved_mut();
            let mut at = 0;
            for l in &lines {
                dst[at..at + l.len()].copy_from_slice(l);
                dst[at + l.len()] = b'\n';
                at += l.len() + 1;
            }
            for (i, b) in dst[body_len..].iter_mut().enumerate() {
                *b = b"partial record\n"[i % 15];
            }
            let pos = ring
                .commit_lines(body_len, count as u32, ts)
                .expect("commit lines");
            records.extend(lines.into_iter().map(|payload| Written {
                payload,
                truncated: false,
                ts,
            }));
            Entry {
                off: pos.off,
                seq,
                len: body_len as u64,
                lines: true,
            }
        } else {
            let truncated = seq % 9 == 0;
            let pos = ring.append(&plain, ts, truncated).expect("append");
            let len = plain.len() as u64;
            records.push(Written {
                payload: plain,
                truncated,
                ts,
            });
            Entry {
                off: pos.off,
                seq,
                len,
                lines: false,
            }
        };
        written += entry.stride();
        entries.push(entry);
        if !checkpointed && written > CAP * 11 / 5 && entry.lines && count >= 3 {
            // An output stopped in the middle of a lines entry.
            ring.commit(a, Pos::at(entry.off, seq + 2));
            ring.checkpoint(5_000, true).expect("checkpoint");
            checkpointed = true;
        }
    }
    let room = ring.reserve(64, 4096).expect("reserve");
    for (i, b) in ring.reserved_mut()[..room].iter_mut().enumerate() {
        *b = b"read, never committed\n"[i % 22];
    }
    drop(ring);
    let bytes = std::fs::read(&path).expect("read template");
    let tail = RingReader::open(&path)
        .expect("reopen template")
        .view()
        .tail;
    let _ = std::fs::remove_dir_all(&dir);
    entries.retain(|e| e.seq >= tail.seq);
    Template {
        bytes,
        records,
        entries,
    }
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn u16_le(b: &[u8], at: usize) -> u16 {
    u16::from(b.get(at).copied().unwrap_or(0)) | u16::from(b.get(at + 1).copied().unwrap_or(0)) << 8
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    for (i, x) in a.iter_mut().enumerate() {
        *x = b.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(a)
}

fn u64_le(b: &[u8], at: usize) -> u64 {
    u64::from(u32_le(b, at)) | u64::from(u32_le(b, at + 4)) << 32
}

/// CRC-32 (IEEE), bit by bit, as `buffer-spec.md` §1 defines it: what a forger computes.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = (c >> 1) ^ (0xEDB8_8320 & (c & 1).wrapping_neg());
        }
    }
    !c
}

/// Applies `patches` to a copy of `base`: each is `[offset u32 LE][len u8][len bytes]`, the
/// offset taken modulo the length.
pub fn patch(base: &[u8], mut patches: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    while patches.len() >= 5 {
        let at = u32_le(patches, 0) as usize % out.len();
        let len = usize::from(patches[4]).min(patches.len() - 5);
        let end = (at + len).min(out.len());
        out[at..end].copy_from_slice(&patches[5..5 + end - at]);
        patches = &patches[5 + len..];
    }
    out
}

/// Rewrites the header at data offset `off` of `data` with its body CRC and header CRC computed
/// again over whatever its fields and body now hold.
fn seal(data: &mut [u8], off: usize) {
    let len = u32_le(&data[off..], 0);
    let flags = data[off + 5];
    let body = off + RECORD_HEADER as usize;
    let end = (body + len as usize).min(data.len());
    let mut pcrc = crc32(&data[body..end]);
    let chunked = FLAG_LINES | FLAG_CHUNKED;
    let table_end = end + chunk_table_len(u64::from(len)) as usize;
    if flags & chunked == chunked && end == body + len as usize && table_end <= data.len() {
        // A chunked entry: its chunk table (a CRC and the LFs so far per chunk), then its CRC.
        let mut lfs = 0u32;
        let mut at = end;
        let chunks: Vec<Vec<u8>> = data[body..end]
            .chunks(CHUNK as usize)
            .map(<[u8]>::to_vec)
            .collect();
        for chunk in chunks {
            lfs += chunk.iter().filter(|&&b| b == b'\n').count() as u32;
            data[at..at + 4].copy_from_slice(&crc32(&chunk).to_le_bytes());
            data[at + 4..at + 8].copy_from_slice(&lfs.to_le_bytes());
            at += 8;
        }
        pcrc = crc32(&data[end..table_end]);
    }
    let h = &data[off..off + RECORD_HEADER as usize];
    let header = RecordHeader {
        len,
        kind: h[4],
        flags: h[5],
        seq: u64_le(h, 8),
        ts: u64_le(h, 16),
        tail: u64_le(h, 24),
        run: u32_le(h, 32),
        pcrc,
        count: u32_le(h, 40),
    };
    header.write(&mut data[off..off + RECORD_HEADER as usize]);
}

/// The template ring with `patches` applied inside its entries, and every entry they touched
/// sealed again (its CRCs computed over what it now holds), as a forger, or a writer with a bug,
/// would leave it. Each patch is `[entry u16 LE][at u16 LE][len u8][len bytes]`: `entry` picks
/// one of the template's entries, `at` an offset into it (header, body or padding); a patch of
/// at least a header's bytes at an 8-aligned offset in a body is sealed as a header too. Returns
/// the bytes and which of the template's entries are untouched.
pub fn sealed(mut patches: &[u8]) -> (Vec<u8>, Vec<bool>) {
    let t = template_ring();
    let mut bytes = t.bytes.clone();
    let data = &mut bytes[DATA..];
    let mut ranges = Vec::new();
    let mut forged = Vec::new();
    while patches.len() >= 5 {
        let e = t.entries[usize::from(u16_le(patches, 0)) % t.entries.len()];
        let at = e.off as usize + usize::from(u16_le(patches, 2)) % e.stride() as usize;
        let len = usize::from(patches[4]).min(patches.len() - 5);
        let end = (at + len).min(data.len());
        data[at..end].copy_from_slice(&patches[5..5 + end - at]);
        ranges.push(at as u64..end as u64);
        if at % 8 == 0 && at >= e.off as usize + RECORD_HEADER as usize && end - at >= 48 {
            forged.push(at);
        }
        patches = &patches[5 + len..];
    }
    let touched = |e: &Entry| {
        let span = e.off..e.off + e.stride();
        ranges
            .iter()
            .any(|r| r.start < span.end && span.start < r.end)
    };
    let untouched: Vec<bool> = t.entries.iter().map(|e| !touched(e)).collect();
    for at in forged {
        seal(data, at);
    }
    for (e, _) in t.entries.iter().zip(&untouched).filter(|(_, &u)| !u) {
        seal(data, e.off as usize);
    }
    (bytes, untouched)
}

/// A record as a reader got it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Got {
    pub pos: Pos,
    pub payload: Vec<u8>,
    pub truncated: bool,
    pub ts: u64,
}

impl Got {
    fn of(r: &Record<'_>) -> Got {
        Got {
            pos: r.pos,
            payload: r.payload.to_vec(),
            truncated: r.truncated,
            ts: r.ts,
        }
    }

    /// Whether it is record `seq` as the template ring wrote it.
    pub fn as_written(&self) -> bool {
        template_record(self.pos.seq).is_some_and(|w| {
            w.payload == self.payload && w.truncated == self.truncated && w.ts == self.ts
        })
    }
}

/// What reading a ring found: the valid records (walking it, at its cursors and where seeks
/// landed), how many of the walk's were inside lines entries, and the damaged places.
#[derive(Debug, Default)]
pub struct Seen {
    pub records: Vec<Got>,
    pub in_lines: usize,
    pub damaged: usize,
}

fn lfs(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| b == b'\n').count() as u64
}

/// Whether `a` and `b` are the same bytes of the ring (not merely equal ones).
fn same(a: &[u8], b: &[u8]) -> bool {
    std::ptr::eq(a.as_ptr(), b.as_ptr()) && a.len() == b.len()
}

/// Checks a record read at `asked` against the entry it came from, which the read checked when
/// it entered it: it lies in that entry's body; a plain entry's record is all of the body; a
/// lines entry's is one of its LF-terminated records, `lines` is the rest of the entry, `next`
/// the record after it, and `lines_within` cuts the rest at a record boundary whose `next` reads
/// on from there. What costs the length of the entry is checked once per entry (counting its
/// LFs) or on every sixteenth record (`lines_within`). Returns whether the record is in a lines
/// entry.
fn check_record(view: &View<'_>, asked: Pos, r: &Record<'_>) -> bool {
    assert_eq!(r.pos.seq, asked.seq, "a record carries the seq asked for");
    assert_eq!(r.next.seq, asked.seq + 1);
    let h = view
        .header_at(r.pos.off)
        .expect("a record's entry has an intact header");
    let entry_end = h
        .seq
        .checked_add(h.records())
        .expect("a record's entry has sequence numbers that fit in a u64");
    assert!(h.kind == KIND_DATA && (h.seq..entry_end).contains(&r.pos.seq));
    let body_at = (r.pos.off + RECORD_HEADER) as usize;
    let body = &view.data[body_at..body_at + h.len as usize];
    let start = (r.payload.as_ptr() as usize)
        .checked_sub(body.as_ptr() as usize)
        .filter(|s| s + r.payload.len() <= body.len())
        .expect("the payload lies in its entry's body");
    let next_entry = Pos::at(view.norm(r.pos.off + h.stride()), entry_end);
    if !h.is_lines() {
        assert!(r.pos.sub == 0 && start == 0 && r.payload.len() == body.len());
        assert!(r.payload.len() <= view.max_record as usize);
        assert_eq!(r.next, next_entry);
        if let Some(line) = r.line {
            assert!(same(&line[..r.payload.len()], r.payload));
            assert_eq!(line.last(), Some(&b'\n'));
        }
        match (r.lines, r.line) {
            (Some(l), Some(line)) => {
                assert!(same(l.bytes, line) && l.records == 1 && l.next == next_entry)
            }
            (l, line) => assert!(l.is_none() && line.is_none()),
        }
        return false;
    }
    assert!(!r.truncated, "a lines record is never truncated");
    assert!(!r.payload.contains(&b'\n'), "a lines record holds no LF");
    let line = r.line.expect("a lines record has its LF");
    assert!(same(line, &body[start..start + r.payload.len() + 1]));
    assert_eq!(line.last(), Some(&b'\n'));
    let l = r.lines.expect("a lines record has the rest of its entry");
    if r.pos.sub == IN_DAMAGED_ENTRY {
        assert!(h.is_chunked(), "only a chunked entry is partly damaged");
        // A record of a partly damaged chunked entry: it alone, the next one checked again.
        assert!(same(l.bytes, line) && l.records == 1 && l.next == r.next);
        let again = Pos {
            off: r.pos.off,
            seq: r.pos.seq + 1,
            sub: IN_DAMAGED_ENTRY,
        };
        assert!(r.next == next_entry || r.next == again, "{:?}", r.next);
        return true;
    }
    assert_eq!(r.pos.sub as usize, start, "sub is where the record starts");
    assert!(
        same(l.bytes, &body[start..]),
        "lines is the rest of the entry"
    );
    assert_eq!(l.records, entry_end - r.pos.seq);
    assert_eq!(l.next, next_entry);
    let after = Pos {
        off: r.pos.off,
        seq: r.pos.seq + 1,
        sub: (start + line.len()) as u32,
    };
    assert_eq!(r.next, if l.records == 1 { next_entry } else { after });
    if r.pos.sub == 0 {
        assert_eq!(l.records, lfs(l.bytes));
    }
    if r.pos.seq % 16 != 0 {
        return true;
    }
    for room in [0, line.len(), l.bytes.len() / 2, l.bytes.len()] {
        let w = r.lines_within(room).expect("a lines record has lines");
        assert!(l.bytes.starts_with(w.bytes) && w.bytes.last() == Some(&b'\n'));
        assert_eq!(w.records, lfs(w.bytes));
        assert!(
            w.bytes.len() <= room || w.records == 1,
            "{} bytes within {room}",
            w.bytes.len()
        );
        if w.records == l.records {
            assert_eq!(w.next, l.next);
            continue;
        }
        let rest = &l.bytes[w.bytes.len()..];
        let next_lf = rest.iter().position(|&b| b == b'\n').expect("a record");
        assert!(
            w.bytes.len() + next_lf + 1 > room,
            "lines_within({room}) left out a record that fits"
        );
        assert_eq!(
            w.next,
            Pos {
                off: r.pos.off,
                seq: r.pos.seq + w.records,
                sub: (start + w.bytes.len()) as u32,
            }
        );
        match view.read(w.next) {
            Read::Record(n) => assert!(n.lines.is_some_and(|l| same(l.bytes, rest))),
            Read::End => {}
            other => panic!("reading on after lines_within({room}): {other:?}"),
        }
    }
    true
}

/// Everything a reader does with a view, checking the invariants that hold whatever the bytes:
/// reads go forward and end, every record is what its entry holds (see `check_record`), a
/// lines entry's records follow one another, a position found inside an entry reads the same
/// record when it is looked for again, seeks land inside the ring, `verify` agrees with
/// reading. With `keep`, the records are kept: the walk's, and those where seeks landed.
pub fn exercise(view: &View<'_>, keep: bool) -> Seen {
    let (tail, head) = (view.tail, view.head);
    let mut seen = Seen::default();
    let mut pos = tail;
    // The rest of the lines entry the previous record was in: the next record starts it.
    let mut rest: Option<&[u8]> = None;
    loop {
        let read = view.read(pos);
        if let Some(rest) = rest.take() {
            match read {
                Read::Record(r) => assert!(r.lines.is_some_and(|l| same(l.bytes, rest))),
                Read::End => {}
                other => panic!("inside a lines entry already checked, at {pos:?}: {other:?}"),
            }
        }
        match read {
            Read::Record(r) => {
                if check_record(view, pos, &r) {
                    seen.in_lines += 1;
                }
                // In a partly damaged chunked entry the next record is checked again.
                let in_damaged = r.next.sub == IN_DAMAGED_ENTRY;
                if r.next.sub != 0 {
                    if !in_damaged {
                        rest = r.lines.map(|l| &l.bytes[r.line.map_or(0, <[u8]>::len)..]);
                    }
                    if r.pos.seq % 8 == 0 {
                        let (found, again) = (view.read(r.next), view.read(r.next.recheck()));
                        match (found, again) {
                            (Read::Record(a), Read::Record(b)) => {
                                assert!(a.pos == b.pos && a.payload == b.payload)
                            }
                            (Read::End, Read::End) => {}
                            (Read::Corrupt { next: a, .. }, Read::Corrupt { next: b, .. })
                                if in_damaged =>
                            {
                                assert_eq!(a.seq, b.seq)
                            }
                            (a, b) => panic!("{:?} read {a:?}, looked for again {b:?}", r.next),
                        }
                    }
                }
                if keep {
                    seen.records.push(Got::of(&r));
                }
                pos = r.next;
            }
            Read::Corrupt { at, next, .. } => {
                assert!(next.seq > at.seq, "reading goes forward after damage");
                assert!(next.seq <= head.seq);
                seen.damaged += 1;
                pos = next;
            }
            Read::End => break,
            Read::Overrun { tail: t } => {
                assert!(pos.seq < tail.seq, "overrun inside the ring");
                pos = t;
            }
        }
    }
    assert_eq!(
        view.verify().len(),
        seen.damaged,
        "verify and reading disagree"
    );
    let span = head.seq - tail.seq;
    let seqs = [0, tail.seq, head.seq.saturating_sub(1), head.seq, u64::MAX];
    let inside = (1..8).map(|k| tail.seq + span / 8 * k);
    for seq in seqs.into_iter().chain(inside) {
        let p = view.seek_seq(seq);
        assert!(
            p.seq >= tail.seq && p.seq <= head.seq,
            "seek_seq({seq}) = {p:?}"
        );
        if let Read::Record(r) = view.read(p) {
            check_record(view, p, &r);
            if keep {
                seen.records.push(Got::of(&r));
            }
        }
    }
    for ts in [0, 1_000, 1_250, 1_499, 2_000, u64::MAX] {
        let p = view.seek_time(ts);
        assert!(
            p.seq >= tail.seq && p.seq <= head.seq,
            "seek_time({ts}) = {p:?}"
        );
    }
    seen
}

/// The scratch file of this thread.
fn scratch() -> PathBuf {
    thread_local! {
        static PATH: PathBuf = std::env::temp_dir().join(format!(
            "ringrelay-fuzz-{}-{}.ring",
            std::process::id(),
            unique()
        ));
    }
    PATH.with(|p| p.clone())
}

/// Opens `bytes` as a ring file read-only (as `ringrelay inspect` does) and gives the reader to
/// `f`. `None` if the file is refused.
pub fn open_with<T>(bytes: &[u8], f: impl FnOnce(&RingReader) -> T) -> Option<T> {
    /// Removes the scratch file however `f` returns, a failed assertion included.
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let file = Remove(scratch());
    std::fs::write(&file.0, bytes).expect("write scratch file");
    match RingReader::open(&file.0) {
        Ok(r) => Some(f(&r)),
        Err(e) => {
            let _ = e.to_string();
            None
        }
    }
}

/// Opens `bytes` as a ring file read-only and reads all of it (see [`exercise`]), its cursors
/// too. `None` if the file is refused.
pub fn open_bytes(bytes: &[u8], keep: bool) -> Option<Seen> {
    open_with(bytes, |r| {
        let view = r.view();
        assert!(view.tail.seq <= view.head.seq);
        assert!(view.tail.off + 48 <= view.data.len() as u64);
        assert!(view.head.off + 48 <= view.data.len() as u64);
        let stats = r.stats();
        assert_eq!(stats.records, view.head.seq - view.tail.seq);
        assert!(stats.used <= stats.capacity);
        let mut seen = exercise(&view, keep);
        for (_, p, _) in r.cursors() {
            if let Read::Record(rec) = view.read(p) {
                check_record(&view, p, &rec);
                if keep {
                    seen.records.push(Got::of(&rec));
                }
            }
        }
        seen
    })
}

/// A bare data area (the template's, patched) in a `View` whose bounds come from the input,
/// within what recovery can produce: aligned offsets inside the area, tail seq <= head seq. Also
/// reads from a position whose `sub` is made up (positions are never written to disk, but a
/// wrong one must not make the reader panic).
pub fn view_only(input: &[u8]) {
    let area_positions = (CAP - 48) / 8 + 1;
    let tail = Pos::at(
        u64::from(u32_le(input, 0)) % area_positions * 8,
        u64_le(input, 4),
    );
    let head = Pos::at(
        u64::from(u32_le(input, 12)) % area_positions * 8,
        tail.seq.saturating_add(u64::from(u32_le(input, 16)) % 4096),
    );
    let run = u32_le(input, 20) % 4;
    let max_record = u32_le(input, 24) % (64 << 20) + 1;
    let last_ts = u64_le(input, 28);
    let made_up = Pos {
        off: u64::from(u32_le(input, 36)) % area_positions * 8,
        seq: tail.seq.saturating_add(u64::from(u32_le(input, 40)) % 64),
        sub: u32_le(input, 44),
    };
    let data = patch(&template()[DATA..], input.get(48..).unwrap_or(&[]));
    let view = View {
        data: &data,
        max_record,
        run,
        // Run starts from the input too: any bound must keep every read safe.
        run_starts: &[(
            run,
            tail.seq.saturating_add(u64::from(u32_le(input, 40)) % 128),
        ); 4],
        tail,
        head,
    };
    exercise(&view, false);
    let mut pos = made_up;
    for _ in 0..64 {
        match view.read(pos) {
            Read::Record(r) => {
                assert_eq!(r.pos.seq, pos.seq);
                assert_eq!(r.next.seq, pos.seq + 1);
                for room in [0, 100, 1 << 20] {
                    if let Some(w) = r.lines_within(room) {
                        assert!(
                            w.records >= 1 && pos.seq.checked_add(w.records) == Some(w.next.seq)
                        );
                    }
                }
                pos = r.next;
            }
            Read::Corrupt { at, next, .. } => {
                assert!(next.seq > at.seq);
                pos = next;
            }
            Read::End => break,
            Read::Overrun { tail } => pos = tail,
        }
    }
    let scan = scan_forward(&data, max_record, run, head, last_ts);
    assert!(scan.head.off + 48 <= CAP);
    assert!(scan.head.seq >= head.seq);
    assert!(scan.records <= CAP / 48);
}

/// Mode 3 of the `ring_open` target: the template with entries patched and sealed again (see
/// [`sealed`]). Whatever the forgeries, a record the reader returns from an entry no patch
/// touched is that record as it was written.
pub fn sealed_ring(patches: &[u8]) {
    let t = template_ring();
    let (bytes, untouched) = sealed(patches);
    let Some(seen) = open_bytes(&bytes, true) else {
        return;
    };
    let by_off: BTreeMap<u64, usize> = t
        .entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.off, i))
        .collect();
    for got in &seen.records {
        if let Some(&i) = by_off.get(&got.pos.off) {
            if untouched[i] {
                assert!(
                    got.as_written(),
                    "record {} of an untouched entry came back as {got:?}",
                    got.pos.seq
                );
            }
        }
    }
}

/// The `ring_open` target: the first byte picks the mode.
pub fn ring_open(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        // The input is the whole file.
        0 => {
            open_bytes(rest, false);
        }
        // A valid ring with the input's patches.
        1 => {
            open_bytes(&patch(template(), rest), false);
        }
        // A data area straight into the reader.
        2 => view_only(rest),
        // A valid ring with forged entries.
        _ => sealed_ring(rest),
    }
}

/// Decodes `buf` as the relay's `frame` does, presenting the rest again after a refusal (the
/// relay frames its pending bytes again once the ring has room): returns the bytes consumed.
/// With `refuse`, every other record is refused first. Checks the records against the limits.
fn decode_all(
    f: &mut Framer,
    cfg: FramerConfig,
    buf: &[u8],
    eof: bool,
    refuse: bool,
    calls: &mut u64,
    out: &mut Vec<(Vec<u8>, bool)>,
) -> usize {
    let mut at = 0;
    loop {
        let mut refused = false;
        let n = f.decode(&buf[at..], eof, &mut |r, truncated| {
            *calls += 1;
            if refuse && *calls % 2 == 1 {
                refused = true;
                return false;
            }
            assert!(r.len() <= cfg.max_record.max(1), "record over max_record");
            out.push((r.to_vec(), truncated));
            true
        });
        assert!(
            n <= buf.len() - at,
            "consumed {n} of {} bytes",
            buf.len() - at
        );
        at += n;
        if !refused {
            // A refused record stays unconsumed, however long (the caller, whose ring is
            // full, stops reading); presenting the same bytes again emits it again.
            return at;
        }
    }
}

/// Feeds `chunks` to a new framer as one connection would (the last chunk with `eof`), checking
/// the bounds the framing module promises; returns the records. With `refuse`, every other emit
/// is refused first and the same bytes presented again.
pub fn feed(cfg: FramerConfig, chunks: &[&[u8]], refuse: bool) -> Vec<(Vec<u8>, bool)> {
    let mut f = Framer::new(cfg);
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut calls = 0u64;
    for (k, chunk) in chunks.iter().enumerate() {
        pending.extend_from_slice(chunk);
        let eof = k + 1 == chunks.len();
        let n = decode_all(&mut f, cfg, &pending, eof, refuse, &mut calls, &mut out);
        pending.drain(..n);
        assert!(
            pending.len() <= cfg.max_record.max(1) + 16,
            "retained {} bytes with max_record {}",
            pending.len(),
            cfg.max_record
        );
        if eof {
            assert!(
                pending.is_empty(),
                "bytes left after eof: {}",
                pending.len()
            );
        }
    }
    assert_eq!(f.stats().records, out.len() as u64);
    out
}

/// Frames the reads of one connection as the relay does (`src/relay/input.rs`, `read_lines`):
/// each read goes behind the bytes still pending; with `in_place`, while the framer is
/// `in_lines`, the complete lines at the front are framed in place (`lines_in_place`: its
/// first `len` bytes are then `records` LF-terminated records) and the bytes from `consumed` on
/// go to `decode`; otherwise all of them go to `decode`. What `decode` leaves is pending; once
/// the sender closes, the pending bytes go to `decode` with `eof`. With `refuse`, every other
/// record `decode` emits is refused first. Returns the records and the framer's counters.
pub fn relay_reads(
    cfg: FramerConfig,
    reads: &[&[u8]],
    in_place: bool,
    refuse: bool,
) -> (Vec<(Vec<u8>, bool)>, FramerStats) {
    let mut f = Framer::new(cfg);
    let max = cfg.max_record.max(1);
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut calls = 0u64;
    for read in reads {
        let mut buf = std::mem::take(&mut pending);
        buf.extend_from_slice(read);
        let mut from = 0;
        if in_place {
            let was = buf.clone();
            let in_lines = f.in_lines();
            let framed = f.lines_in_place(&mut buf);
            assert_eq!(framed.is_some(), in_lines, "lines_in_place iff in_lines");
            if let Some(p) = framed {
                assert!(p.len <= p.consumed && p.consumed <= buf.len(), "{p:?}");
                assert!(p.consumed == 0 || was[p.consumed - 1] == b'\n', "{p:?}");
                assert_eq!(
                    buf[p.consumed..],
                    was[p.consumed..],
                    "bytes past consumed moved"
                );
                let lines = &buf[..p.len];
                assert!(lines.is_empty() || lines.last() == Some(&b'\n'));
                assert_eq!(lfs(lines), u64::from(p.records), "{p:?}");
                for r in lines.split(|&b| b == b'\n').take(p.records as usize) {
                    assert!(
                        !r.is_empty() && r.len() <= max,
                        "record of {} bytes",
                        r.len()
                    );
                    out.push((r.to_vec(), false));
                }
                from = p.consumed;
            }
        }
        let n = decode_all(
            &mut f,
            cfg,
            &buf[from..],
            false,
            refuse,
            &mut calls,
            &mut out,
        );
        pending = buf[from + n..].to_vec();
        assert!(
            pending.len() <= max + 16,
            "retained {} bytes with max_record {max}",
            pending.len()
        );
    }
    let n = decode_all(&mut f, cfg, &pending, true, refuse, &mut calls, &mut out);
    assert_eq!(n, pending.len(), "bytes left after eof");
    assert_eq!(f.stats().records, out.len() as u64);
    (out, f.stats())
}

/// Framing in place gives what `decode` alone gives, for the same reads: the same records, the
/// same truncated flags, the same counters; and so does it when the ring refuses records.
pub fn lines_in_place_agrees(cfg: FramerConfig, reads: &[&[u8]]) {
    let (decoded, by_decode) = relay_reads(cfg, reads, false, false);
    let (in_place, stats) = relay_reads(cfg, reads, true, false);
    assert_eq!(
        in_place, decoded,
        "{cfg:?}: in-place records differ from decode's"
    );
    assert_eq!(
        stats, by_decode,
        "{cfg:?}: in-place counters differ from decode's"
    );
    let (refused, stats) = relay_reads(cfg, reads, true, true);
    assert_eq!(
        refused, decoded,
        "{cfg:?}: refusals change the in-place records"
    );
    assert_eq!(
        stats, by_decode,
        "{cfg:?}: refusals change the in-place counters"
    );
}

/// `stream` cut at `split`, and both parts cut again into reads of 1 to 2^(seed % 8) bytes,
/// their lengths drawn from `seed`.
fn reads_of(stream: &[u8], split: usize, seed: u8) -> Vec<&[u8]> {
    let most = 1u64 << (seed % 8);
    let mut x = u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut reads = Vec::new();
    for mut part in [&stream[..split], &stream[split..]] {
        while !part.is_empty() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (1 + x % most).min(part.len() as u64) as usize;
            reads.push(&part[..n]);
            part = &part[n..];
        }
    }
    reads
}

/// `MSG-LEN SP` at the start of `b`: its length with the space, and `MSG-LEN`.
fn frame_header(b: &[u8]) -> Option<(usize, usize)> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if !(1..=10).contains(&digits) || b[0] == b'0' || b.get(digits) != Some(&b' ') {
        return None;
    }
    let len = b[..digits]
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some((digits + 1, usize::try_from(len).unwrap_or(usize::MAX)))
}

/// What `auto` must choose for the whole `stream` (its leading CR and LF skipped), written
/// apart from the framer, from the module docs: octet counting iff, within the first
/// `max_record + 16` bytes, the first frame is whole, no longer than `max_record`, and followed
/// (past CR and LF) by another frame header, or by the end of the stream.
fn auto_should_be(stream: &[u8], max_record: usize) -> Framing {
    let window = max_record.max(1) + 16;
    let (win, eof) = if stream.len() < window {
        (stream, true)
    } else {
        (&stream[..window], false)
    };
    let plausible = frame_header(win).is_some_and(|(h, len)| {
        let Some(after) = win.get(h + len..).filter(|_| len <= max_record.max(1)) else {
            return false;
        };
        let gap = after
            .iter()
            .take_while(|&&b| b == b'\n' || b == b'\r')
            .count();
        (gap == after.len() && eof) || frame_header(&after[gap..]).is_some()
    });
    if plausible {
        Framing::Octet
    } else {
        Framing::Newline
    }
}

/// `auto` gives what the framing [`auto_should_be`] gives: in particular, a stream that is
/// not a plausible octet stream gets its newline records, whatever its first bytes.
fn auto_agrees_with_its_specification(cfg: FramerConfig, stream: &[u8]) {
    let start = stream
        .iter()
        .take_while(|&&b| b == b'\n' || b == b'\r')
        .count();
    let stream = &stream[start..];
    let right = auto_should_be(stream, cfg.max_record);
    let auto = feed(cfg, &[stream], false);
    let want = feed(
        FramerConfig {
            framing: right,
            ..cfg
        },
        &[stream],
        false,
    );
    assert_eq!(auto, want, "auto differs from {right:?}");
}

/// The `framing` target: byte 0 picks the split point, byte 1 the limits, byte 2 the reads.
pub fn framing(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let (cfg, stream) = data.split_at(3);
    let split = usize::from(cfg[0]) * stream.len() / 255;
    let max_record = if cfg[1] & 0x80 != 0 {
        4096
    } else {
        1 + usize::from(cfg[1] % 64)
    };
    let oversize = if cfg[1] & 0x40 != 0 {
        Oversize::Drop
    } else {
        Oversize::Truncate
    };
    let reads = reads_of(stream, split, cfg[2]);
    for framing in [Framing::Newline, Framing::Octet, Framing::Auto] {
        let cfg = FramerConfig {
            framing,
            max_record,
            oversize,
        };
        let whole = feed(cfg, &[stream], false);
        let parts = feed(cfg, &[&stream[..split], &stream[split..]], false);
        assert_eq!(whole, parts, "{framing:?}: records depend on the split");
        let refused = feed(cfg, &[&stream[..split], &stream[split..]], true);
        assert_eq!(whole, refused, "{framing:?}: refusals change the records");
        let (by_reads, _) = relay_reads(cfg, &reads, false, false);
        assert_eq!(whole, by_reads, "{framing:?}: records depend on the reads");
        lines_in_place_agrees(cfg, &reads);
        if framing == Framing::Auto {
            auto_agrees_with_its_specification(cfg, stream);
        }
    }
}

/// Reads `chunks` as one response stream, to the end: the responses, then how it ended.
fn read_responses(chunks: &[&[u8]]) -> (Vec<Response>, String) {
    let mut r = ResponseReader::new();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut data = *chunk;
        loop {
            match r.push(data) {
                Ok(Some(resp)) => {
                    assert!(resp.body.len() <= MAX_RESPONSE_BODY);
                    assert!(resp.body_len >= resp.body.len() as u64);
                    out.push(resp);
                    data = b"";
                }
                Ok(None) => break,
                Err(e) => return (out, format!("error {:?}", std::mem::discriminant(&e))),
            }
        }
    }
    let end = match r.eof() {
        Ok(resp) => {
            assert!(resp.body.len() <= MAX_RESPONSE_BODY);
            out.push(resp);
            "eof".to_string()
        }
        Err(e) => format!("eof error {:?}", std::mem::discriminant(&e)),
    };
    (out, end)
}

/// Any bytes as the HTTP output's response stream, split in two at a position taken from the
/// first byte: the reader never panics, keeps at most `MAX_RESPONSE_BODY` of a body, and reads
/// the same responses however the stream is split; the HEC acknowledgement readers never panic.
pub fn http_response(data: &[u8]) {
    let split = data.first().map_or(0, |&b| usize::from(b)) % (data.len() + 1);
    let whole = read_responses(&[data]);
    let parts = read_responses(&[&data[..split], &data[split..]]);
    assert_eq!(whole, parts, "split at {split}");
    let _ = protocol::hec_ack_id(data);
    let _ = protocol::hec_acks(data, |_, _| {});
}

/// Any bytes as an HTTP input's request stream: the head parser never panics and never claims
/// more than it was given; a refusal that keeps the connection skips exactly one framed
/// request; the body (the rest, gunzipped when it says so) splits into non-empty records that
/// are pieces of the body, and LF-split records hold no LF.
pub fn http_request(data: &[u8]) {
    let limits = Limits {
        max_head: 512,
        max_body: 4096,
        max_decoded: 8192,
    };
    let expect = Expect {
        path: "/nss",
        auth: Some(("x-key", b"k")),
    };
    let (body, gzip) = match request::parse_head(data, &expect, &limits) {
        Ok(Some(h)) => {
            assert!(h.len <= data.len() && h.body_len <= limits.max_body);
            (&data[h.len..data.len().min(h.len + h.body_len)], h.gzip)
        }
        Ok(None) => (data, false),
        Err(r) => {
            assert!((400..600).contains(&r.status));
            assert!(
                r.close || r.skip > 0,
                "a kept connection must skip the request"
            );
            (data, false)
        }
    };
    let mut decoded = Vec::new();
    let body = if gzip && request::gunzip(body, limits.max_decoded, &mut decoded).is_ok() {
        assert!(decoded.len() <= limits.max_decoded);
        &decoded[..]
    } else {
        body
    };
    let range = body.as_ptr_range();
    let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let mut total = 0;
    request::split_records(body, &mut |r| {
        assert!(!r.is_empty());
        assert!(range.contains(&r.as_ptr()) && r.len() <= body.len());
        if !array {
            assert!(!r.contains(&b'\n'));
        }
        total += r.len();
    });
    assert!(total <= body.len());
}

/// The whole frames a [`FrameReader`] collects from `stream` read `sizes` bytes at a time (the
/// last size repeated), as the Kafka output's `on_readable` reads them (space, read, filled,
/// frame, take, restore); `true` when a size prefix was refused (the connection fails there).
pub fn kafka_frames(stream: &[u8], sizes: &[usize]) -> (Vec<Vec<u8>>, bool) {
    let mut reader = FrameReader::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut k = 0;
    loop {
        match reader.frame() {
            Err(e) => {
                assert!(e.contains("at most"), "{e}");
                return (frames, true);
            }
            Ok(Frame::Whole(n)) => {
                assert!(n <= MAX_RESPONSE);
                let buf = reader.take();
                assert_eq!(buf.len(), 4 + n, "a read never takes bytes past the frame");
                frames.push(buf[4..].to_vec());
                reader.restore(buf);
                assert!(!reader.started());
                continue;
            }
            Ok(Frame::Partial) => {}
        }
        if at == stream.len() {
            return (frames, false);
        }
        let space = reader.space().expect("frame() said the prefix is fine");
        let len = space.len();
        assert!((1..=4 + MAX_RESPONSE).contains(&len));
        let want = sizes
            .get(k)
            .or(sizes.last())
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        let n = want.min(len).min(stream.len() - at);
        space[..n].copy_from_slice(&stream[at..at + n]);
        reader.filled(n, len);
        at += n;
        k += 1;
    }
}

/// Decodes `frame` as a `T` at each of `versions` with the correlation id it carries (its
/// first 4 bytes) and with a wrong one (always an error); `check` gets what decodes. Where the
/// length walk refuses a body for any reason but an array longer than the bytes left (which
/// the crate would reserve memory for), the crate's own decoder must refuse it too: the walk
/// turns away nothing a broker could mean.
fn kafka_decode<T>(frame: &[u8], versions: std::ops::RangeInclusive<i16>, check: impl Fn(&T))
where
    T: Decodable + HeaderVersion + wire::Bounded,
{
    let id = i32::from_be_bytes([
        frame.first().copied().unwrap_or(0),
        frame.get(1).copied().unwrap_or(0),
        frame.get(2).copied().unwrap_or(0),
        frame.get(3).copied().unwrap_or(0),
    ]);
    for v in versions {
        match wire::get_response::<T>(frame, v, id) {
            Ok(r) => check(&r),
            Err(e) => assert!(!e.is_empty()),
        }
        assert!(wire::get_response::<T>(frame, v, id.wrapping_add(1)).is_err());
        let mut body = frame;
        if ResponseHeader::decode(&mut body, T::header_version(v)).is_ok() {
            if let Err(e) = T::check_lengths(body, v) {
                if !e.contains("elements where") {
                    let mut raw = body;
                    assert!(
                        T::decode(&mut raw, v).is_err(),
                        "v{v}: the walk refused ({e}) what the crate decodes"
                    );
                }
            }
        }
    }
}

/// Decodes `frame` as the response `kind` names (as in [`kafka_hostile`]) at `v`, with the
/// correlation id 7.
pub fn kafka_decode_as(kind: &str, frame: &[u8], v: i16) -> Result<(), String> {
    match kind {
        "ApiVersions" => wire::get_response::<ApiVersionsResponse>(frame, v, 7).map(drop),
        "Metadata" => wire::get_response::<MetadataResponse>(frame, v, 7).map(drop),
        "InitProducerId" => wire::get_response::<InitProducerIdResponse>(frame, v, 7).map(drop),
        "Produce" => wire::get_response::<ProduceResponse>(frame, v, 7).map(drop),
        "SaslHandshake" => wire::get_response::<SaslHandshakeResponse>(frame, v, 7).map(drop),
        "SaslAuthenticate" => wire::get_response::<SaslAuthenticateResponse>(frame, v, 7).map(drop),
        _ => panic!("no response {kind}"),
    }
}

/// Response frames (after the size prefix, correlation id 7) with absurd lengths in every place
/// a length is read: each as `(response, version, frame)`. Array counts of 2^31 - 1 or 2^32 - 2
/// made `kafka-protocol` 0.18 reserve that many elements before reading one (`Vec::with_capacity`
/// in `Array`/`CompactArray::decode`): an abort for the allocation failing.
pub fn kafka_hostile() -> Vec<(&'static str, i16, Vec<u8>)> {
    const ID: [u8; 4] = [0, 0, 0, 7];
    const HUGE: [u8; 4] = [0x7f, 0xff, 0xff, 0xff];
    const CHUGE: [u8; 5] = [0xff, 0xff, 0xff, 0xff, 0x0f];
    let f = |kind: &'static str, v: i16, parts: &[&[u8]]| {
        let mut frame = ID.to_vec();
        frame.extend(parts.concat());
        (kind, v, frame)
    };
    let partition_v8: &[u8] = &[0; 4 + 2 + 8 + 8 + 8];
    // Metadata v4: no brokers, no cluster id, controller 1, one topic "t".
    let topic_v4: &[u8] = &[
        0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, b't', 0,
    ];
    vec![
        f("ApiVersions", 0, &[&[0, 0], &HUGE]),
        f("ApiVersions", 3, &[&[0, 0], &CHUGE]),
        f(
            "ApiVersions",
            3,
            &[&[0, 0], &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01]],
        ),
        // supported_features (tag 0) and finalized_features (tag 2), tagged fields.
        f("ApiVersions", 3, &[&[0, 0, 1, 0, 0, 0, 0, 1, 0, 5], &CHUGE]),
        f("ApiVersions", 3, &[&[0, 0, 1, 0, 0, 0, 0, 1, 2, 5], &CHUGE]),
        // A tag of absurd size, absurdly many tags.
        f("ApiVersions", 3, &[&[0, 0, 1, 0, 0, 0, 0, 1, 9], &CHUGE]),
        f("ApiVersions", 3, &[&[0, 0, 1, 0, 0, 0, 0], &CHUGE]),
        f("Metadata", 4, &[&[0; 4], &HUGE]),
        f(
            "Metadata",
            4,
            &[&[0; 4], &[0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 1], &HUGE],
        ),
        // One topic "t" with i32::MAX partitions; one partition with i32::MAX replicas.
        f("Metadata", 4, &[&[0; 4], topic_v4, &HUGE]),
        f(
            "Metadata",
            4,
            &[&[0; 4], topic_v4, &[0, 0, 0, 1], &[0; 10], &HUGE],
        ),
        f(
            "Metadata",
            4,
            &[&[0; 4], topic_v4, &[0, 0, 0, 1], &[0; 10], &[0; 4], &HUGE],
        ),
        f("Metadata", 12, &[&[0], &[0; 4], &CHUGE]),
        // One broker with a host of 32767 bytes, then one of 2^32 - 2.
        f(
            "Metadata",
            4,
            &[&[0; 4], &[0, 0, 0, 1, 0, 0, 0, 1, 0x7f, 0xff]],
        ),
        f("Metadata", 12, &[&[0], &[0; 4], &[2, 0, 0, 0, 1], &CHUGE]),
        f(
            "Metadata",
            12,
            &[
                &[0],
                &[0; 4],
                &[1, 1, 0, 0, 0, 0, 2, 0, 0],
                &[2, b't'],
                &[0; 16],
                &[0],
                &CHUGE,
            ],
        ),
        f("InitProducerId", 4, &[&CHUGE, &CHUGE]),
        f("Produce", 3, &[&HUGE]),
        f("Produce", 9, &[&[0], &[2, 2, b't'], &CHUGE]),
        f(
            "Produce",
            8,
            &[&[0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1], partition_v8, &HUGE],
        ),
        // node_endpoints (tag 0 of the response, v10 on).
        f("Produce", 11, &[&[0], &[1], &[0; 4], &[1, 0, 5], &CHUGE]),
        f("SaslHandshake", 1, &[&[0, 0], &HUGE]),
        f("SaslHandshake", 1, &[&[0, 0, 0, 0, 0, 2, 0x7f, 0xff]]),
        f("SaslAuthenticate", 0, &[&[0, 0, 0xff, 0xff], &HUGE]),
        f("SaslAuthenticate", 2, &[&[0], &[0, 0, 0], &CHUGE]),
    ]
}

/// One whole response frame (after its size prefix) decoded as every answer the Kafka output
/// reads, at every version it may ask for, and read as the output reads it. Nothing panics,
/// and what decodes holds no more elements than the frame has bytes for.
pub fn kafka_frame(frame: &[u8]) {
    let n = frame.len();
    kafka_decode::<ApiVersionsResponse>(frame, 0..=3, |r| {
        assert!(r.api_keys.len() * 6 <= n);
        assert!(r.supported_features.len() + r.finalized_features.len() <= n);
        if let Ok(v) = Versions::from_response(r) {
            assert!((cluster::PRODUCE.min..=cluster::PRODUCE.max).contains(&v.produce));
            assert!((cluster::METADATA.min..=cluster::METADATA.max).contains(&v.metadata));
            let ip = cluster::INIT_PRODUCER_ID;
            assert!((ip.min..=ip.max).contains(&v.init_producer_id));
        }
    });
    kafka_decode::<MetadataResponse>(frame, 4..=12, |r| {
        assert!(r.brokers.len() + r.topics.len() <= n);
        if let Ok(t) = Topology::from_metadata(r, "t") {
            assert!((1..=cluster::MAX_PARTITIONS).contains(&t.leaders.len()));
            assert!(t.nodes.len() <= cluster::MAX_NODES);
        }
    });
    kafka_decode::<InitProducerIdResponse>(frame, 0..=5, |_| {});
    kafka_decode::<ProduceResponse>(frame, 3..=12, |r| {
        assert!(r.responses.len() + r.node_endpoints.len() <= n);
    });
    kafka_decode::<SaslHandshakeResponse>(frame, 1..=1, |r| {
        assert!(r.mechanisms.len() * 2 <= n);
    });
    kafka_decode::<SaslAuthenticateResponse>(frame, 0..=2, |r| {
        assert!(r.auth_bytes.len() <= n);
    });
}

/// Any bytes as what a Kafka broker sends the output: the first byte picks the sizes of the
/// reads the rest arrives in; the frame reader finds the same frames however the stream is
/// read, never holds more than one bounded frame, and every whole frame goes through
/// [`kafka_frame`].
pub fn kafka_response(data: &[u8]) {
    let (seed, stream) = match data.split_first() {
        Some((&s, rest)) => (usize::from(s), rest),
        None => (0, data),
    };
    let sizes: Vec<usize> = (1..64).map(|k| 1 + seed * k % 61).collect();
    let whole = kafka_frames(stream, &[usize::MAX]);
    let split = kafka_frames(stream, if seed == 0 { &[1] } else { &sizes });
    assert_eq!(whole, split, "read in pieces of {sizes:?}");
    for frame in &whole.0 {
        kafka_frame(frame);
    }
}
