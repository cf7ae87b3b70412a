//! `buffer-spec.md` (format version 4) against the code, both ways:
//! - a ring written by the code, plain entries (`Ring::append`) and lines entries
//!   (`reserve` / `reserved_mut` / `commit_lines`) mixed, is parsed by a reader written here
//!   from the spec's offsets and constants only (no `ringrelay::ring::format`): superblock, both
//!   metadata slots, every entry from tail to head with its CRCs, sequence numbers and wrap
//!   markers, the records inside lines entries, and the §8 recovery scan;
//! - rings written here from the spec (versions 4 and 3 with chunked lines entries, version 2
//!   with unchunked ones, version 1 with plain entries only) are opened, read record for record
//!   and continued by the code;
//! - entries §5 refuses, written here with valid CRCs, are reported damaged by the code and
//!   their records never returned.
//!
//! Every number below is quoted from the spec; the only things taken from the crate are the
//! writing/reading API and `crc32fast` (the spec names it as the CRC).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use ringrelay::ring::{CursorState, Damage, Pos, Read, Ring, RingOptions, RingReader, WhenFull};

// §2 file layout
const SUPERBLOCK_AT: usize = 0;
const SLOT_AT: [usize; 2] = [4096, 8192];
const DATA_AT: usize = 12288;
// §3 superblock
const MAGIC: [u8; 8] = [0x89, 0x52, 0x49, 0x4E, 0x47, 0x0D, 0x0A, 0x1A];
/// §3 `version`: `4`; version 1, 2 and 3 files are read as version 4.
const VERSION: u32 = 4;
/// §3, §12: version 3 slots hold at most four run starts; its lines entries are chunked.
const VERSION_3: u32 = 3;
const VERSION_2: u32 = 2;
const VERSION_1: u32 = 1;
const SB_CRC_AT: usize = 124;
const SB_LEN: usize = 128;
// §4 metadata slot
const SLOT_CRC_AT: usize = 1152;
const SLOT_LEN: usize = 1156;
const CURSORS_AT: usize = 128;
const CURSOR_LEN: usize = 64;
const MAX_CURSORS: usize = 16;
// §4 cursor-state table
const STATE_GENERATION_AT: usize = 1160;
const STATES_AT: usize = 1168;
const STATE_LEN: usize = 32;
const STATE_CRC_AT: usize = 1680;
const STATE_TABLE_END: usize = 1684;
// §4 run-start table (version 4)
const MORE_RUN_STARTS_AT: usize = 12;
const RUN_STARTS_GENERATION_AT: usize = 1688;
const MORE_AT: usize = 1696;
const MORE_MAX: usize = 124;
const RUN_STARTS_CRC_AT: usize = 3184;
const RUN_START_TABLE_END: usize = 3188;
// §5 entries
const HEADER: u64 = 48;
/// §5: `count`, at offset 40 (reserved, and 0, in version 1).
const COUNT_AT: usize = 40;
const HCRC_AT: usize = 44;
const KIND_DATA: u8 = 1;
const KIND_WRAP: u8 = 2;
/// §5 `flags` bit 0: the record was truncated (plain entries only).
const TRUNCATED: u8 = 1 << 0;
/// §5 `flags` bit 1: a lines entry.
const LINES: u8 = 1 << 1;
/// §5 `flags` bit 2: a chunked lines entry (a chunk table after the body).
const CHUNKED: u8 = 1 << 2;
/// §5: a chunk table entry per 4096 bytes of body, 8 bytes each (crc, lfs).
const CHUNK: u64 = 4096;
const CHUNK_ENTRY: u64 = 8;
/// §5: a lines body may have up to `max(max_record, 1048576)` bytes.
const LINES_MAX: u32 = 1_048_576;
/// §5: every record of a lines entry is followed by one LF.
const LF: u8 = 0x0A;

const CAP: u64 = 1 << 20;

/// Bounds the whole binary's time: a reader that loops forever fails the run instead of
/// hanging it.
fn watchdog() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(60));
            eprintln!("ring_spec: still running after 60 s; something is wedged");
            std::process::exit(3);
        });
    });
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        watchdog();
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d =
            std::env::temp_dir().join(format!("ringrelay-spec-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        TempDir(d)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// §5: `stride(len) = (48 + len + 7) & ~7`.
fn stride(len: u64) -> u64 {
    (48 + len + 7) & !7
}

/// §6: a position with fewer than a header's bytes before the end means offset 0.
fn normalise(o: u64, cap: u64) -> u64 {
    if o + HEADER > cap {
        0
    } else {
        o
    }
}

fn zero_padded(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    assert!(b[end..].iter().all(|&c| c == 0), "name not zero-padded");
    String::from_utf8(b[..end].to_vec()).expect("UTF-8 name")
}

// ---------------------------------------------------------------------------------------------
// The reader, from the spec.

#[derive(Debug)]
struct Superblock {
    version: u32,
    capacity: u64,
    max_record: u32,
    created_ns: u64,
    name: String,
}

/// §3, every field and every refusal rule.
fn parse_superblock(file: &[u8]) -> Superblock {
    let b = &file[SUPERBLOCK_AT..SUPERBLOCK_AT + SB_LEN];
    assert_eq!(b[0..8], MAGIC, "magic");
    assert_eq!(
        crc32fast::hash(&b[..SB_CRC_AT]),
        u32_at(b, SB_CRC_AT),
        "superblock CRC of bytes 0..124"
    );
    let version = u32_at(b, 8);
    assert!(
        version == VERSION_1 || version == VERSION_2 || version == VERSION_3 || version == VERSION,
        "version {version}"
    );
    assert_eq!(u32_at(b, 12), 0, "flags");
    assert_eq!(u64_at(b, 16), 12288, "data_offset");
    let capacity = u64_at(b, 24);
    let max_record = u32_at(b, 32);
    assert_eq!(u32_at(b, 36), 48, "record_header");
    assert_eq!(u32_at(b, 40), 8, "align");
    assert_eq!(u32_at(b, 44), 16, "max_cursors");
    assert_eq!(u32_at(b, 120), 0, "reserved");
    assert!(
        capacity >= 1 << 20 && capacity.is_multiple_of(4096),
        "capacity"
    );
    assert!((1..=64 << 20).contains(&max_record), "max_record");
    assert!(
        stride(u64::from(max_record)) <= capacity / 4,
        "stride(max_record)"
    );
    assert_eq!(file.len() as u64, 12288 + capacity, "file length");
    assert!(
        file[SB_LEN..4096].iter().all(|&c| c == 0),
        "superblock page past the structure is zero"
    );
    Superblock {
        version,
        capacity,
        max_record,
        created_ns: u64_at(b, 48),
        name: zero_padded(&b[56..120]),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Cursor {
    name: String,
    seq: u64,
    off: u64,
    lost: u64,
    /// §4 cursor state: (down_since_ns, overrun_base, overrun_after_ns, flags), as the table
    /// says when it is valid, else the defaults the spec gives.
    state: (u64, u64, u64, u32),
}

#[derive(Clone, Debug)]
struct Slot {
    generation: u64,
    run: u32,
    epoch: u64,
    tail: (u64, u64),
    head: (u64, u64),
    last_ts: u64,
    checkpoint_ns: u64,
    evicted: u64,
    /// §4 run starts, newest first: `(run, seq)`; unused pairs left out.
    run_starts: Vec<(u32, u64)>,
    cursors: Vec<Cursor>,
}

/// §4: `None` unless the slot is valid.
fn parse_slot(page: &[u8], cap: u64) -> Option<Slot> {
    let b = &page[..SLOT_LEN];
    if crc32fast::hash(&b[..SLOT_CRC_AT]) != u32_at(b, SLOT_CRC_AT) {
        return None;
    }
    let tail = (u64_at(b, 24), u64_at(b, 32));
    let head = (u64_at(b, 40), u64_at(b, 48));
    let in_area = |o: u64| o.is_multiple_of(8) && o.checked_add(48).is_some_and(|e| e <= cap);
    if !(in_area(tail.0) && in_area(head.0) && tail.1 <= head.1) {
        return None;
    }
    // §4: four run starts at 80..128, each `seq` (8 bytes) then `run` (4 bytes), then
    // `more_run_starts` (at 12) from the run-start table, valid only with its CRC and the slot's
    // generation.
    let more = u32_at(b, MORE_RUN_STARTS_AT) as usize;
    if more != 0
        && !(more <= MORE_MAX
            && u64_at(page, RUN_STARTS_GENERATION_AT) == u64_at(b, 0)
            && crc32fast::hash(&page[RUN_STARTS_GENERATION_AT..RUN_STARTS_CRC_AT])
                == u32_at(page, RUN_STARTS_CRC_AT))
    {
        return None;
    }
    let pair = |at: usize| (u32_at(page, at + 8), u64_at(page, at));
    let run_starts: Vec<(u32, u64)> = (0..4)
        .map(|i| pair(80 + 12 * i))
        .chain((0..more).map(|i| pair(MORE_AT + 12 * i)))
        .filter(|&(run, _)| run != 0)
        .collect();
    if more != 0 {
        assert!(
            page[MORE_AT + 12 * more..RUN_STARTS_CRC_AT]
                .iter()
                .all(|&c| c == 0),
            "run-start table past its starts"
        );
    }
    assert!(
        page[SLOT_LEN..STATE_GENERATION_AT].iter().all(|&c| c == 0),
        "slot page between the structures"
    );
    assert!(
        page[STATE_TABLE_END..RUN_STARTS_GENERATION_AT]
            .iter()
            .all(|&c| c == 0),
        "slot page between the structures"
    );
    assert!(
        page[RUN_START_TABLE_END..].iter().all(|&c| c == 0),
        "slot page past the structures"
    );
    // §4: the table is valid when its CRC matches and it carries the slot's generation.
    let table_valid = u64_at(page, STATE_GENERATION_AT) == u64_at(b, 0)
        && crc32fast::hash(&page[STATE_GENERATION_AT..STATE_CRC_AT]) == u32_at(page, STATE_CRC_AT);
    let mut cursors = Vec::new();
    for i in 0..MAX_CURSORS {
        let c = &b[CURSORS_AT + CURSOR_LEN * i..CURSORS_AT + CURSOR_LEN * (i + 1)];
        assert_eq!(u64_at(c, 56), 0, "cursor reserved");
        if c[..32].iter().all(|&x| x == 0) {
            assert!(c.iter().all(|&x| x == 0), "an unused cursor entry is zero");
            continue;
        }
        let lost = u64_at(c, 48);
        let st = &page[STATES_AT + STATE_LEN * i..STATES_AT + STATE_LEN * (i + 1)];
        let state = if table_valid {
            assert_eq!(u32_at(st, 28), 0, "cursor state reserved");
            (
                u64_at(st, 0),
                u64_at(st, 8).min(lost),
                u64_at(st, 16),
                u32_at(st, 24),
            )
        } else {
            (0, lost, 0, 0)
        };
        cursors.push(Cursor {
            name: zero_padded(&c[..32]),
            seq: u64_at(c, 32),
            off: u64_at(c, 40),
            lost,
            state,
        });
    }
    Some(Slot {
        generation: u64_at(b, 0),
        run: u32_at(b, 8),
        epoch: u64_at(b, 16),
        tail,
        head,
        last_ts: u64_at(b, 56),
        checkpoint_ns: u64_at(b, 64),
        evicted: u64_at(b, 72),
        run_starts,
        cursors,
    })
}

/// §4: the valid slot with the higher generation; each in the slot `generation mod 2` says.
fn current_slot(file: &[u8], cap: u64) -> (usize, Slot) {
    let slots = SLOT_AT.map(|at| parse_slot(&file[at..at + 4096], cap));
    for (i, s) in slots.iter().enumerate() {
        if let Some(s) = s {
            assert_eq!(
                (s.generation % 2) as usize,
                i,
                "generation {} is in slot {} (odd: B, even: A)",
                s.generation,
                ["A", "B"][i]
            );
        }
    }
    match slots {
        [Some(a), Some(b)] if b.generation > a.generation => (1, b),
        [Some(a), _] => (0, a),
        [None, Some(b)] => (1, b),
        [None, None] => panic!("no valid metadata slot"),
    }
}

/// §5: an entry header, field by field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    len: u32,
    kind: u8,
    flags: u8,
    reserved: u16,
    seq: u64,
    ts: u64,
    tail: u64,
    run: u32,
    pcrc: u32,
    count: u32,
}

impl Header {
    fn is_lines(&self) -> bool {
        self.kind == KIND_DATA && self.flags & LINES != 0
    }

    /// §5: 1 record in a plain entry, `count` in a lines entry, 0 in a wrap marker.
    fn records(&self) -> u64 {
        match self.kind {
            KIND_WRAP => 0,
            _ if self.is_lines() => u64::from(self.count),
            _ => 1,
        }
    }

    fn is_chunked(&self) -> bool {
        self.is_lines() && self.flags & CHUNKED != 0
    }

    /// §5: bytes after the header: the body, then a chunked entry's table.
    fn extent(&self) -> u64 {
        extent(u64::from(self.len), self.is_chunked())
    }

    fn stride(&self) -> u64 {
        stride(self.extent())
    }
}

/// §5: the body's `len` bytes, and `8 * ceil(len / 4096)` of chunk table if chunked.
fn extent(len: u64, chunked: bool) -> u64 {
    if chunked {
        len + CHUNK_ENTRY * len.div_ceil(CHUNK)
    } else {
        len
    }
}

/// §5: the header at data offset `o` if it is acceptable there.
fn header_at(data: &[u8], o: u64, max_record: u32, run: u32) -> Option<Header> {
    let cap = data.len() as u64;
    if !o.is_multiple_of(8) || o + HEADER > cap {
        return None;
    }
    let b = &data[o as usize..(o + HEADER) as usize];
    if crc32fast::hash(&b[..HCRC_AT]) != u32_at(b, HCRC_AT) {
        return None;
    }
    let h = Header {
        len: u32_at(b, 0),
        kind: b[4],
        flags: b[5],
        reserved: u16_at(b, 6),
        seq: u64_at(b, 8),
        ts: u64_at(b, 16),
        tail: u64_at(b, 24),
        run: u32_at(b, 32),
        pcrc: u32_at(b, 36),
        count: u32_at(b, COUNT_AT),
    };
    let fits = o + h.stride() <= cap;
    let ok = match h.kind {
        // A plain entry: no count, a record of at most max_record.
        KIND_DATA if h.flags & LINES == 0 => {
            h.count == 0 && h.flags & CHUNKED == 0 && h.len <= max_record && fits
        }
        // A lines entry: never truncated, 1 <= count <= len, a body up to max(max_record, 1 MiB).
        KIND_DATA => {
            h.flags & TRUNCATED == 0
                && 1 <= h.count
                && h.count <= h.len
                && h.len <= max_record.max(LINES_MAX)
                && fits
        }
        KIND_WRAP => h.len == 0 && h.count == 0 && o != 0,
        _ => false,
    };
    (ok && h.run <= run).then_some(h)
}

fn body<'a>(data: &'a [u8], o: u64, h: &Header) -> &'a [u8] {
    let start = (o + HEADER) as usize;
    &data[start..start + h.len as usize]
}

/// §5: the chunk table of the chunked entry at `o`.
fn table<'a>(data: &'a [u8], o: u64, h: &Header) -> &'a [u8] {
    let start = (o + HEADER) as usize + h.len as usize;
    &data[start..start + (h.extent() - u64::from(h.len)) as usize]
}

/// §5: the chunk table's entries (crc, lfs) if the table is intact: `pcrc` is its CRC, its
/// `lfs` never decrease, grow by at most the chunk's length, and end at `count`.
fn intact_table(data: &[u8], o: u64, h: &Header) -> Option<Vec<(u32, u32)>> {
    let t = table(data, o, h);
    if crc32fast::hash(t) != h.pcrc {
        return None;
    }
    let entries: Vec<(u32, u32)> = t
        .chunks(CHUNK_ENTRY as usize)
        .map(|e| (u32_at(e, 0), u32_at(e, 4)))
        .collect();
    let mut before = 0;
    for (i, &(_, lfs)) in entries.iter().enumerate() {
        let chunk_len = (u64::from(h.len) - i as u64 * CHUNK).min(CHUNK);
        if lfs < before || u64::from(lfs - before) > chunk_len {
            return None;
        }
        before = lfs;
    }
    (before == h.count).then_some(entries)
}

/// §5: body bytes of chunk `i`.
fn chunk(b: &[u8], i: usize) -> &[u8] {
    let s = i * CHUNK as usize;
    &b[s..(s + CHUNK as usize).min(b.len())]
}

/// §5: the body of the data entry at `o` is valid; for a chunked entry, its table is intact and
/// every chunk matches its CRC and holds its LFs, the last byte being an LF.
fn entry_valid(data: &[u8], o: u64, h: &Header) -> bool {
    let b = body(data, o, h);
    if !h.is_chunked() {
        return body_valid(b, h);
    }
    let Some(t) = intact_table(data, o, h) else {
        return false;
    };
    let mut before = 0;
    for (i, &(crc, lfs)) in t.iter().enumerate() {
        let c = chunk(b, i);
        let n = c.iter().filter(|&&x| x == LF).count() as u32;
        if crc32fast::hash(c) != crc || before + n != lfs {
            return false;
        }
        before = lfs;
    }
    b.last() == Some(&LF)
}

/// §5: for a chunked entry whose table is intact, which of its records touch no damaged chunk
/// (from the chunk holding the LF before the record to the one holding its own).
fn intact_records(data: &[u8], o: u64, h: &Header) -> Option<Vec<bool>> {
    let t = intact_table(data, o, h)?;
    let b = body(data, o, h);
    let ok: Vec<bool> = t
        .iter()
        .enumerate()
        .map(|(i, &(crc, _))| crc32fast::hash(chunk(b, i)) == crc)
        .collect();
    let chunk_of_lf = |j: u32| t.iter().position(|&(_, lfs)| lfs > j).unwrap();
    Some(
        (0..h.count)
            .map(|k| {
                let first = if k == 0 { 0 } else { chunk_of_lf(k - 1) };
                ok[first..=chunk_of_lf(k)].iter().all(|&x| x)
            })
            .collect(),
    )
}

/// §5: the body is valid when its CRC matches `pcrc` and, in a lines entry, it holds exactly
/// `count` LFs and its last byte is one.
fn body_valid(b: &[u8], h: &Header) -> bool {
    let lfs = b.iter().filter(|&&c| c == LF).count() as u64;
    crc32fast::hash(b) == h.pcrc
        && (!h.is_lines() || (lfs == u64::from(h.count) && b.last() == Some(&LF)))
}

/// §5: the records of a data entry with a valid body, each with where it starts in the body:
/// the body itself in a plain entry; in a lines entry, record `i` is the bytes after the `i`-th
/// LF (from the start for `i = 0`) up to the next LF.
fn records_in<'a>(b: &'a [u8], h: &Header) -> Vec<(usize, &'a [u8])> {
    if !h.is_lines() {
        return vec![(0, b)];
    }
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &c) in b.iter().enumerate() {
        if c == LF {
            out.push((start, &b[start..i]));
            start = i + 1;
        }
    }
    out
}

/// One record as the spec reader found it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    /// Data offset of the entry holding it.
    off: u64,
    seq: u64,
    /// Where it starts in its entry's body (0 in a plain entry).
    sub: usize,
    ts: u64,
    truncated: bool,
    lines: bool,
    tail: u64,
    run: u32,
    payload: Vec<u8>,
}

/// What a walk from tail to head found.
struct Walk {
    records: Vec<Record>,
    /// Data entries: offset and header.
    entries: Vec<(u64, Header)>,
    /// Wrap markers: offset and the sequence number they carry.
    markers: Vec<(u64, u64)>,
}

/// §7: reads every record from `tail` to `head`, all of which must be valid, entering each entry
/// once (header and body checked there) and taking its records out of the body.
fn walk(data: &[u8], sb: &Superblock, run: u32, tail: (u64, u64), head: (u64, u64)) -> Walk {
    let cap = data.len() as u64;
    let (mut o, mut n) = (normalise(tail.0, cap), tail.1);
    let mut w = Walk {
        records: Vec::new(),
        entries: Vec::new(),
        markers: Vec::new(),
    };
    let mut last_ts = 0;
    while n < head.1 {
        let mut h = header_at(data, o, sb.max_record, run)
            .unwrap_or_else(|| panic!("no acceptable header at {o} for seq {n}"));
        assert_eq!(h.seq, n, "sequence number at {o}");
        if h.kind == KIND_WRAP {
            w.markers.push((o, n));
            let h0 = header_at(data, 0, sb.max_record, run).expect("an entry at 0");
            assert_eq!(h0.kind, KIND_DATA, "two wrap markers in a row");
            assert_eq!(
                (h0.seq, h0.ts),
                (h.seq, h.ts),
                "a marker carries its entry's seq and ts"
            );
            // §6: a plain entry wraps only if it does not fit before the end. (A lines entry
            // wraps when the room for the longest body its read may bring does not fit: its
            // body may be shorter.)
            assert!(
                h0.is_lines() || o + h0.stride() > cap,
                "needless wrap at {o}"
            );
            o = 0;
            h = h0;
        }
        let b = body(data, o, &h);
        assert!(
            entry_valid(data, o, &h),
            "body of the entry at {o} (seq {n})"
        );
        assert!(h.ts >= last_ts, "receive times never decrease");
        assert!(
            h.tail.is_multiple_of(8) && h.tail + HEADER <= cap,
            "tail field of seq {n}"
        );
        assert_eq!(
            h.flags & !(TRUNCATED | LINES | CHUNKED),
            0,
            "unknown flags on seq {n}"
        );
        assert_eq!(h.reserved, 0, "header reserved 6..8 of seq {n}");
        last_ts = h.ts;
        let records = records_in(b, &h);
        assert_eq!(records.len() as u64, h.records(), "records of seq {n}");
        for (i, (sub, p)) in records.into_iter().enumerate() {
            w.records.push(Record {
                off: o,
                seq: n + i as u64,
                sub,
                ts: h.ts,
                truncated: h.flags & TRUNCATED != 0,
                lines: h.is_lines(),
                tail: h.tail,
                run: h.run,
                payload: p.to_vec(),
            });
        }
        w.entries.push((o, h));
        o = normalise(o + h.stride(), cap);
        n += h.records();
    }
    assert_eq!((o, n), head, "the walk ends at the head");
    w
}

/// What the §8 scan found past the slot's head.
struct Scan {
    head: (u64, u64),
    records: u64,
    /// Records skipped as damage between accepted entries.
    damaged: u64,
    newest: Option<Header>,
}

/// §8 step 3: from the slot's head, accept entries that chain (seq, run, ts, header and body
/// valid); a wrap marker only together with a valid entry at 0. Past an entry that is not
/// accepted, look up to `R` bytes from the slot's head for one that is, with a higher seq (at
/// most one per byte skipped), this run and a ts that does not go back: the records between are
/// damaged. At most one lap.
fn scan_forward(data: &[u8], sb: &Superblock, slot: &Slot) -> Scan {
    let cap = data.len() as u64;
    let start = normalise(slot.head.0, cap);
    let (mut o, mut n) = (start, slot.head.1);
    let l = u64::from(sb.max_record.max(LINES_MAX));
    let reach = cap.min(cap / 4 + 2 * stride(extent(l, true)));
    let mut ts = slot.last_ts;
    let mut records = 0;
    let mut damaged = 0;
    let mut newest = None;
    // Bytes from the slot's head to `o`, in ring order.
    let mut spent = 0;
    // The entry accepted at `o` for `n`: where it is, its header, the bytes from `o` to its end,
    // its records that touch a damaged chunk (a chunked entry whose table is intact).
    let accept = |o: u64, n: u64, ts: u64| -> Option<(u64, Header, u64, u64)> {
        let valid = |o: u64| {
            let h = header_at(data, o, sb.max_record, slot.run)
                .filter(|h| h.seq == n && h.run == slot.run && h.ts >= ts)?;
            if h.kind == KIND_WRAP || entry_valid(data, o, &h) {
                return Some((h, 0));
            }
            let intact = if h.is_chunked() {
                intact_records(data, o, &h)?
            } else {
                return None;
            };
            Some((h, intact.iter().filter(|&&x| !x).count() as u64))
        };
        let (h, bad) = valid(o)?;
        if h.kind == KIND_DATA {
            return Some((o, h, h.stride(), bad));
        }
        match valid(0) {
            Some((h0, bad)) if h0.kind == KIND_DATA => Some((0, h0, cap - o + h0.stride(), bad)),
            _ => None,
        }
    };
    loop {
        if let Some((at, h, used, bad)) = accept(o, n, ts) {
            if spent + used > cap {
                break;
            }
            spent += used;
            ts = h.ts;
            newest = Some(h);
            records += h.records() - bad;
            damaged += bad;
            let end = at + h.stride();
            o = normalise(end, cap);
            if o != end {
                spent += cap - end;
            }
            n += h.records();
            continue;
        }
        // Not accepted: look past it.
        let known = header_at(data, o, sb.max_record, slot.run)
            .filter(|h| h.seq == n && h.run == slot.run && h.kind == KIND_DATA);
        let mut d = spent + known.map_or(8, |h| h.stride());
        let mut found = None;
        while d < reach {
            let p = (start + d) % cap;
            if p + HEADER > cap {
                d += cap - p;
                continue;
            }
            if let Some(h) = header_at(data, p, sb.max_record, slot.run) {
                if h.seq > n
                    && h.run == slot.run
                    && h.ts >= ts
                    && h.seq - n <= d - spent
                    && accept(p, h.seq, ts).is_some_and(|(_, _, used, _)| d + used <= cap)
                {
                    found = Some((d, p, h.seq));
                    break;
                }
            }
            d += 8;
        }
        let Some((d, p, seq)) = found else { break };
        damaged += seq - n;
        (spent, o, n) = (d, p, seq);
    }
    Scan {
        head: (o, n),
        records,
        damaged,
        newest,
    }
}

/// §6: bytes used between tail and head.
fn used(tail: (u64, u64), head: (u64, u64), cap: u64) -> u64 {
    if tail.1 == head.1 {
        return 0;
    }
    match (head.0 + cap - tail.0) % cap {
        0 => cap,
        d => d,
    }
}

// ---------------------------------------------------------------------------------------------
// The writer, from the spec.

/// An entry the spec writer wrote: where its header is (after its wrap marker, if any), its
/// first sequence number, how many it took, its receive time, and the head after it.
#[derive(Clone, Copy, Debug)]
struct SpecEntry {
    off: u64,
    seq: u64,
    records: u64,
    ts: u64,
    next: (u64, u64),
}

/// A ring file written from the spec alone (§2–6): a superblock, entries appended from a start
/// position (wrapping, never evicting) and metadata slots.
struct SpecRing {
    /// §3 `version`: lines entries are chunked from version 3 on.
    version: u32,
    file: Vec<u8>,
    cap: u64,
    run: u32,
    tail: (u64, u64),
    head: (u64, u64),
    used: u64,
    /// Every record written, as a reader must find it.
    written: Vec<Record>,
    entries: Vec<SpecEntry>,
}

/// §5: writes `h` at data offset `at`, with its header CRC.
fn write_header(data: &mut [u8], at: u64, h: &Header) {
    let b = &mut data[at as usize..(at + HEADER) as usize];
    put_u32(b, 0, h.len);
    b[4] = h.kind;
    b[5] = h.flags;
    b[6..8].copy_from_slice(&h.reserved.to_le_bytes());
    put_u64(b, 8, h.seq);
    put_u64(b, 16, h.ts);
    put_u64(b, 24, h.tail);
    put_u32(b, 32, h.run);
    put_u32(b, 36, h.pcrc);
    put_u32(b, COUNT_AT, h.count);
    let crc = crc32fast::hash(&b[..HCRC_AT]);
    put_u32(b, HCRC_AT, crc);
}

/// §5: a lines body, each record followed by an LF.
fn lines_body(records: &[Vec<u8>]) -> Vec<u8> {
    records
        .iter()
        .flat_map(|r| r.iter().copied().chain([LF]))
        .collect()
}

impl SpecRing {
    /// §3: a superblock of `version`; the data area empty from `start` (tail = head).
    fn new(version: u32, cap: u64, max_record: u32, run: u32, start: (u64, u64)) -> SpecRing {
        let mut file = vec![0u8; DATA_AT + cap as usize];
        let b = &mut file[SUPERBLOCK_AT..SUPERBLOCK_AT + SB_LEN];
        b[..8].copy_from_slice(&MAGIC);
        put_u32(b, 8, version);
        put_u64(b, 16, 12288);
        put_u64(b, 24, cap);
        put_u32(b, 32, max_record);
        put_u32(b, 36, 48);
        put_u32(b, 40, 8);
        put_u32(b, 44, 16);
        put_u64(b, 48, T0);
        b[56..56 + 8].copy_from_slice(b"handmade");
        let crc = crc32fast::hash(&b[..SB_CRC_AT]);
        put_u32(b, SB_CRC_AT, crc);
        SpecRing {
            version,
            file,
            cap,
            run,
            tail: start,
            head: start,
            used: 0,
            written: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// §6: ring bytes an entry with a `len`-byte body takes at the head: its stride, plus the
    /// unused end of the lap when it wraps.
    fn need(&self, len: u64) -> u64 {
        let s = stride(len);
        if self.head.0 + s > self.cap {
            self.cap - self.head.0 + s
        } else {
            s
        }
    }

    /// Whether such an entry keeps the ring within three quarters full (this writer never
    /// evicts, and leaves room for the code to append).
    fn has_room(&self, len: usize) -> bool {
        self.used + self.need(len as u64) <= self.cap * 3 / 4
    }

    /// §6 write order: the body, the wrap marker if the entry does not fit before the end, the
    /// header last. The entry takes `records` sequence numbers, whatever its header says.
    fn entry(&mut self, flags: u8, count: u32, b: &[u8], ts: u64, records: u64) -> SpecEntry {
        let (o, n) = self.head;
        let chunked = flags & (LINES | CHUNKED) == LINES | CHUNKED;
        let ext = extent(b.len() as u64, chunked);
        let s = stride(ext);
        self.used += self.need(ext);
        assert!(self.used <= self.cap, "the spec writer does not evict");
        let at = if o + s > self.cap { 0 } else { o };
        let h = Header {
            len: b.len() as u32,
            kind: KIND_DATA,
            flags,
            reserved: 0,
            seq: n,
            ts,
            tail: self.tail.0,
            run: self.run,
            pcrc: crc32fast::hash(b),
            count,
        };
        let data = &mut self.file[DATA_AT..];
        let start = (at + HEADER) as usize;
        data[start..start + b.len()].copy_from_slice(b);
        // §5: padding bytes are unspecified (and not an LF here).
        data[start + b.len()..(at + s) as usize].fill(0xEE);
        let mut h = h;
        if chunked {
            // §5: the chunk table after the body: per 4096 bytes, their CRC and the LFs so far;
            // `pcrc` is the table's CRC.
            let mut t = Vec::new();
            let mut lfs = 0u32;
            for c in b.chunks(CHUNK as usize) {
                lfs += c.iter().filter(|&&x| x == LF).count() as u32;
                t.extend_from_slice(&crc32fast::hash(c).to_le_bytes());
                t.extend_from_slice(&lfs.to_le_bytes());
            }
            let at_t = start + b.len();
            data[at_t..at_t + t.len()].copy_from_slice(&t);
            h.pcrc = crc32fast::hash(&t);
        }
        if at != o {
            let marker = Header {
                len: 0,
                kind: KIND_WRAP,
                flags: 0,
                pcrc: 0,
                count: 0,
                ..h
            };
            write_header(data, o, &marker);
        }
        write_header(data, at, &h);
        self.head = (normalise(at + s, self.cap), n + records);
        let e = SpecEntry {
            off: at,
            seq: n,
            records,
            ts,
            next: self.head,
        };
        self.entries.push(e);
        e
    }

    /// Record `i` of entry `e`, starting at `sub` in its body, as a reader must find it.
    fn found(&self, e: &SpecEntry, i: usize, sub: usize, payload: &[u8]) -> Record {
        Record {
            off: e.off,
            seq: e.seq + i as u64,
            sub,
            ts: e.ts,
            truncated: false,
            lines: false,
            tail: self.tail.0,
            run: self.run,
            payload: payload.to_vec(),
        }
    }

    /// A plain entry (§5): one record, `count` 0, bit 1 clear.
    fn plain(&mut self, payload: &[u8], ts: u64, truncated: bool) -> SpecEntry {
        let flags = if truncated { TRUNCATED } else { 0 };
        let e = self.entry(flags, 0, payload, ts, 1);
        let r = Record {
            truncated,
            ..self.found(&e, 0, 0, payload)
        };
        self.written.push(r);
        e
    }

    /// A lines entry (§5): bit 1, `count` records each followed by an LF; chunked (bit 2) in a
    /// version 3 or 4 ring.
    fn lines(&mut self, records: &[Vec<u8>], ts: u64) -> SpecEntry {
        let b = lines_body(records);
        let flags = if self.version >= VERSION_3 {
            LINES | CHUNKED
        } else {
            LINES
        };
        let e = self.entry(flags, records.len() as u32, &b, ts, records.len() as u64);
        let mut sub = 0;
        for (i, p) in records.iter().enumerate() {
            let r = Record {
                lines: true,
                ..self.found(&e, i, sub, p)
            };
            self.written.push(r);
            sub += p.len() + 1;
        }
        e
    }

    /// §4: writes a slot of `generation` (into slot `generation mod 2`) with the ring's tail,
    /// `head`, `last_ts` and cursors (name, seq, off).
    fn put_slot(
        &mut self,
        generation: u64,
        head: (u64, u64),
        last_ts: u64,
        cursors: &[(&str, u64, u64)],
    ) {
        let mut b = vec![0u8; SLOT_LEN];
        put_u64(&mut b, 0, generation);
        put_u32(&mut b, 8, self.run);
        put_u64(&mut b, 24, self.tail.0);
        put_u64(&mut b, 32, self.tail.1);
        put_u64(&mut b, 40, head.0);
        put_u64(&mut b, 48, head.1);
        put_u64(&mut b, 56, last_ts);
        put_u64(&mut b, 64, T0);
        for (i, (name, seq, off)) in cursors.iter().enumerate() {
            let c = &mut b[CURSORS_AT + CURSOR_LEN * i..CURSORS_AT + CURSOR_LEN * (i + 1)];
            c[..name.len()].copy_from_slice(name.as_bytes());
            put_u64(c, 32, *seq);
            put_u64(c, 40, *off);
        }
        let crc = crc32fast::hash(&b[..SLOT_CRC_AT]);
        put_u32(&mut b, SLOT_CRC_AT, crc);
        let at = SLOT_AT[(generation % 2) as usize];
        self.file[at..at + SLOT_LEN].copy_from_slice(&b);
    }

    fn written_seq(&self, seq: u64) -> &Record {
        let r = &self.written[(seq - self.written[0].seq) as usize];
        assert_eq!(r.seq, seq);
        r
    }
}

// ---------------------------------------------------------------------------------------------
// The code, through its API.

fn opts(name: &str) -> RingOptions {
    RingOptions {
        capacity: CAP,
        max_record: 16 << 10,
        when_full: WhenFull::DropOldest,
        name: name.into(),
    }
}

fn payload_of(seq: u64) -> Vec<u8> {
    let len = match seq % 10 {
        0 => 0,
        1 => 16 << 10,
        _ => (seq.wrapping_mul(7919) % 3000) as usize,
    };
    (0..len)
        .map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8)
        .collect()
}

/// Record `seq` of a lines entry: printable bytes, never an LF (§5), 0 to 249 of them (an
/// empty record is a lone LF in the body).
fn line_of(seq: u64) -> Vec<u8> {
    let len = if seq.is_multiple_of(13) {
        0
    } else {
        (seq.wrapping_mul(7919) % 250) as usize
    };
    (0..len)
        .map(|i| b'!' + ((seq as usize).wrapping_mul(31).wrapping_add(i) % 90) as u8)
        .collect()
}

const T0: u64 = 1_700_000_000_000_000_000;

/// Appends `records` as lines entries through reservations, as the relay does (§6 write order:
/// room first, then the body, then the header). Each asks for room for all the records left
/// plus `extra` bytes, and for at least the first of them, or with `whole` for all of them plus
/// `extra` (so the entry wraps rather than splits, even when its body alone would have fitted
/// before the end); the records that do not fit the room go into the next entry. Returns where
/// the entries are.
fn append_lines(
    ring: &mut Ring,
    records: &[Vec<u8>],
    extra: usize,
    whole: bool,
    ts: u64,
) -> Vec<Pos> {
    let mut entries = Vec::new();
    let mut rest = records;
    while let Some(first) = rest.first() {
        let all: usize = rest.iter().map(|r| r.len() + 1).sum();
        let seq = ring.head().seq;
        let min = if whole { all + extra } else { first.len() + 1 };
        let room = ring
            .reserve(min, all + extra)
            .expect("drop_oldest makes room");
        let buf = ring.reserved_mut();
        assert_eq!(buf.len(), room);
        let (mut len, mut count) = (0, 0);
        for r in rest {
            if len + r.len() + 1 > room {
                break;
            }
            buf[len..len + r.len()].copy_from_slice(r);
            buf[len + r.len()] = LF;
            len += r.len() + 1;
            count += 1;
        }
        assert!(count > 0, "the room holds at least the first record");
        let at = ring
            .commit_lines(len, count as u32, ts)
            .expect("commit what was reserved");
        assert_eq!(at.seq, seq);
        entries.push(at);
        rest = &rest[count..];
    }
    entries
}

/// One step of reading with the code.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Record {
        off: u64,
        seq: u64,
        sub: u64,
        ts: u64,
        truncated: bool,
        payload: Vec<u8>,
    },
    Damaged {
        at: (u64, u64),
        damage: Damage,
        next: (u64, u64),
    },
}

/// What the code must return for a record the spec reader found (or the spec writer wrote).
fn expected(r: &Record) -> Got {
    Got::Record {
        off: r.off,
        seq: r.seq,
        sub: r.sub as u64,
        ts: r.ts,
        truncated: r.truncated,
        payload: r.payload.clone(),
    }
}

/// Reads with the code from `from` to the end, one record at a time.
fn read_all<'a>(read: impl Fn(Pos) -> Read<'a>, from: Pos) -> Vec<Got> {
    let mut out = Vec::new();
    let mut pos = from;
    loop {
        let next = match read(pos) {
            Read::Record(r) => {
                out.push(Got::Record {
                    off: r.pos.off,
                    seq: r.pos.seq,
                    sub: u64::from(r.pos.sub),
                    ts: r.ts,
                    truncated: r.truncated,
                    payload: r.payload.to_vec(),
                });
                r.next
            }
            Read::Corrupt { at, damage, next } => {
                out.push(Got::Damaged {
                    at: (at.off, at.seq),
                    damage,
                    next: (next.off, next.seq),
                });
                next
            }
            Read::End => return out,
            Read::Overrun { tail } => panic!("overrun at {pos:?} (tail {tail:?})"),
        };
        assert!(next.seq > pos.seq, "reading does not move on from {pos:?}");
        pos = next;
    }
}

fn assert_reads(got: &[Got], want: &[Got], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g, w, "{what}: read {i}");
    }
    assert_eq!(got.len(), want.len(), "{what}: number of reads");
}

/// §4: a cursor names the entry holding its record (the head's offset when it is the head); a
/// cursor moved onto a wrap marker names the marker, which carries its sequence number (§7).
fn assert_cursor_names_its_entry(c: &Cursor, w: &Walk, head: (u64, u64)) {
    if c.seq == head.1 {
        assert_eq!(c.off, head.0, "cursor {} at the head", c.name);
        return;
    }
    let r = w
        .records
        .iter()
        .find(|r| r.seq == c.seq)
        .unwrap_or_else(|| panic!("cursor {} names seq {} outside the ring", c.name, c.seq));
    assert!(
        c.off == r.off || w.markers.contains(&(c.off, c.seq)),
        "cursor {} names offset {}, its record {} is in the entry at {}",
        c.name,
        c.off,
        c.seq,
        r.off
    );
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_crc_is_the_ieee_crc32_the_spec_names() {
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
}

#[test]
fn a_new_ring_is_allocated_whole_and_has_one_valid_metadata_slot() {
    let dir = TempDir::new("new");
    let path = dir.file("new.ring");
    drop(Ring::open(&path, &opts("zia-web")).unwrap());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 12288 + CAP);
    assert!(
        meta.blocks() * 512 >= meta.len(),
        "posix_fallocate'd: {} blocks",
        meta.blocks()
    );
    let file = std::fs::read(&path).unwrap();
    let sb = parse_superblock(&file);
    assert_eq!(sb.version, VERSION, "a new ring is version 4");
    assert_eq!(sb.name, "zia-web");
    assert_eq!(sb.capacity, CAP);
    assert_eq!(sb.max_record, 16 << 10);
    let now = ringrelay::clock::wall_ns();
    assert!(sb.created_ns <= now && now - sb.created_ns < 60_000_000_000);
    // Creation wrote generation 0 into slot A; the first open wrote generation 1 into slot B,
    // leaving slot A intact (a torn write of B would fall back to it).
    let (slot, s) = current_slot(&file, CAP);
    assert_eq!((slot, s.generation, s.run), (1, 1, 1));
    assert_eq!(
        (s.tail, s.head, s.evicted, s.last_ts),
        ((0, 0), (0, 0), 0, 0)
    );
    let a = parse_slot(&file[SLOT_AT[0]..SLOT_AT[0] + 4096], CAP).expect("slot A still valid");
    assert_eq!((a.generation, a.run), (0, 0));
    assert!(
        file[DATA_AT..].iter().all(|&c| c == 0),
        "the data area starts zeroed"
    );
}

/// What the code-written ring must hold: payload, receive time, truncated flag, and whether it
/// went into a lines entry.
type Wanted = BTreeMap<u64, (Vec<u8>, u64, bool, bool)>;

/// Appends `records` as lines entries received at `ts` ([`append_lines`]) and notes them in
/// `wanted`, with the time the ring gives them (`newest`: it never goes back).
fn lines_wanted(
    ring: &mut Ring,
    wanted: &mut Wanted,
    records: Vec<Vec<u8>>,
    (extra, whole): (usize, bool),
    ts: u64,
    newest: u64,
) -> Vec<Pos> {
    let seq = ring.head().seq;
    let entries = append_lines(ring, &records, extra, whole, ts);
    for (j, r) in records.into_iter().enumerate() {
        wanted.insert(seq + j as u64, (r, newest, false, true));
    }
    entries
}

fn assert_wanted(records: &[Record], wanted: &Wanted) {
    for r in records {
        let (p, ts, truncated, lines) = &wanted[&r.seq];
        assert_eq!(&r.payload, p, "payload of seq {}", r.seq);
        assert_eq!(
            (r.ts, r.truncated, r.lines),
            (*ts, *truncated, *lines),
            "time, truncated flag and entry kind of seq {}",
            r.seq
        );
    }
}

/// Plain entries and lines entries (split at the end of a lap, wrapped after a marker, longer
/// than `max_record`), over two laps with eviction, cursors before, at and inside entries; read
/// by the spec reader at the checkpoint, then after more entries through the §8 scan, which the
/// code's recovery and reader match record for record.
#[test]
fn a_ring_written_by_the_code_parses_with_a_reader_written_from_the_spec() {
    let dir = TempDir::new("read");
    let path = dir.file("feed.ring");
    let mut ring = Ring::open(&path, &opts("zia-web")).unwrap();
    let siem = ring.cursor("siem-a").unwrap();
    let lagging = ring.cursor("file-b").unwrap();
    let mut wanted = Wanted::new();
    let mut siem_at = Pos::default();
    let mut newest = 0;
    let (mut wrapped_lines, mut split_lines) = (0, 0);
    // Over two laps, so entries wrap and the oldest are evicted: plain entries (`append`) and
    // lines entries (reservations) in turn, one in ten lines entries longer than max_record.
    for i in 0..900u64 {
        let seq = ring.head().seq;
        // Every third time goes back a little: the ring raises it to the newest time.
        let ts = T0 + i * 1000 - (i % 3) * 1500;
        newest = newest.max(ts);
        if i % 2 == 1 {
            let big = i % 20 == 3;
            let count = if big { 100 } else { 1 + (i * 7) % 37 };
            let records = (0..count)
                .map(|j| {
                    let mut r = line_of(seq + j);
                    if big {
                        r.resize(300, b'~');
                    }
                    r
                })
                .collect();
            let room = ((i % 5) as usize * 700, i % 3 == 0);
            let from = ring.head().off;
            let at = lines_wanted(&mut ring, &mut wanted, records, room, ts, newest);
            // The head is normalised: an entry at 0 from elsewhere follows a wrap marker.
            wrapped_lines += usize::from(at[0].off == 0 && from != 0);
            split_lines += usize::from(at.len() > 1);
        } else {
            let p = payload_of(seq);
            ring.append(&p, ts, seq.is_multiple_of(7)).unwrap();
            wanted.insert(seq, (p, newest, seq.is_multiple_of(7), false));
        }
        if i == 700 {
            siem_at = ring.head();
            ring.commit(siem, siem_at);
        }
    }
    assert!(
        wrapped_lines > 0 && split_lines > 0,
        "lines entries after a wrap marker ({wrapped_lines}) and split at the end ({split_lines})"
    );
    // A cursor inside a lines entry, on its third record: the slot names the entry.
    let seq = ring.head().seq;
    let records = (0..5).map(|j| line_of(seq + j + 1)).collect();
    newest = newest.max(T0 + 900_000);
    let at = lines_wanted(
        &mut ring,
        &mut wanted,
        records,
        (0, false),
        T0 + 900_000,
        newest,
    );
    assert_eq!(at.len(), 1, "one entry");
    let Read::Record(r) = ring.read(at[0]) else {
        panic!("first record of the entry")
    };
    let Read::Record(r) = ring.read(r.next) else {
        panic!("second record of the entry")
    };
    let inside_at = r.next;
    assert_eq!((inside_at.off, inside_at.seq), (at[0].off, seq + 2));
    let inside = ring.cursor("tcp-c").unwrap();
    ring.commit(inside, inside_at);
    ring.set_epoch(7);
    // §4 cursor state: an output down since T0 + 1 s, alerted, in an overrun episode that began
    // when it had lost 3 records, after a record received at T0 + 2 s.
    ring.set_cursor_state(
        lagging,
        CursorState {
            down_since_ns: T0 + 1_000_000_000,
            overrun_base: 3,
            overrun_after_ns: T0 + 2_000_000_000,
            down_alerted: true,
            overrun_alerted: false,
        },
    );
    ring.checkpoint(T0 + 5_000_000_000, true).unwrap();
    let stats = ring.stats();
    let (tail, head) = (ring.tail(), ring.head());
    let lost_a = ring.cursor_lost(siem);
    let lost_b = ring.cursor_lost(lagging);
    let lagging_at = ring.cursor_pos(lagging);
    // The file as of the checkpoint (the map is shared, so this is what is on disk).
    let file = std::fs::read(&path).unwrap();
    // Some more after the checkpoint, both kinds: only the recovery scan finds these.
    for i in 0..25u64 {
        let seq = ring.head().seq;
        let ts = T0 + 10_000_000_000;
        if i % 2 == 1 {
            let records = (0..1 + i % 9).map(|j| line_of(seq + j)).collect();
            lines_wanted(&mut ring, &mut wanted, records, (100, true), ts, ts);
        } else {
            let mut p = payload_of(seq);
            p.truncate(2000);
            ring.append(&p, ts, false).unwrap();
            wanted.insert(seq, (p, ts, false, false));
        }
    }
    let final_head = ring.head();
    drop(ring);

    let sb = parse_superblock(&file);
    assert_eq!(sb.version, VERSION);
    let data = &file[DATA_AT..];
    let (_, slot) = current_slot(&file, sb.capacity);
    assert_eq!(slot.run, 1);
    assert_eq!(slot.epoch, 7);
    assert_eq!(slot.checkpoint_ns, T0 + 5_000_000_000);
    assert_eq!(slot.tail, (tail.off, tail.seq));
    assert_eq!(slot.head, (head.off, head.seq));
    assert_eq!(slot.evicted, stats.evicted);
    assert!(slot.evicted > 0, "the ring did not wrap");
    // §4 `evicted` counts records, whole entries of them: every record before the tail.
    assert_eq!(
        slot.evicted, slot.tail.1,
        "records overwritten since creation"
    );
    assert_eq!(used(slot.tail, slot.head, CAP), stats.used);
    assert_eq!(
        slot.cursors,
        vec![
            Cursor {
                name: "siem-a".into(),
                seq: siem_at.seq,
                off: siem_at.off,
                lost: lost_a,
                // Never set: an episode from the cursor's creation (nothing reported yet).
                state: (0, 0, 0, 0),
            },
            Cursor {
                name: "file-b".into(),
                seq: lagging_at.seq,
                off: lagging_at.off,
                lost: lost_b,
                // bit 0: the output_down alert was raised.
                state: (T0 + 1_000_000_000, 3, T0 + 2_000_000_000, 1),
            },
            Cursor {
                name: "tcp-c".into(),
                seq: seq + 2,
                off: at[0].off,
                lost: 0,
                state: (0, 0, 0, 0),
            },
        ]
    );
    assert_eq!(
        lost_b, lagging_at.seq,
        "moved from seq 0 to the tail, all counted"
    );

    // Checkpointed entries: tail to head.
    let w = walk(data, &sb, slot.run, slot.tail, slot.head);
    // §4: the newest run start is this run's, and the writer keeps only starts a reader needs
    // (`seq` strictly decreasing from the newest, none wholly behind the tail); §5: every entry
    // with a record at or after a run start is of that run or a later one.
    assert_eq!(slot.run_starts[0].0, slot.run, "{:?}", slot.run_starts);
    assert!(
        slot.run_starts.windows(2).all(|p| p[0].1 > p[1].1)
            && slot.run_starts[..slot.run_starts.len() - 1]
                .iter()
                .all(|&(_, seq)| seq > slot.tail.1),
        "{:?}, tail {:?}",
        slot.run_starts,
        slot.tail
    );
    for (o, h) in &w.entries {
        let last = h.seq + h.records().max(1) - 1;
        assert!(
            slot.run_starts
                .iter()
                .all(|&(run, seq)| last < seq || h.run >= run),
            "entry at {o} (seq {}, run {}) under {:?}",
            h.seq,
            h.run,
            slot.run_starts
        );
    }
    assert_eq!(w.records.len() as u64, stats.records);
    assert!(
        !w.markers.is_empty(),
        "no wrap marker between tail and head"
    );
    assert_eq!(slot.last_ts, w.records.last().unwrap().ts);
    assert_wanted(&w.records, &wanted);
    assert!(w.records.iter().all(|r| r.run == 1));
    let lines = w.entries.iter().filter(|(_, h)| h.is_lines()).count();
    assert!(
        lines > 10 && w.entries.len() - lines > 10,
        "both kinds of entry"
    );
    assert!(
        w.entries
            .iter()
            .any(|(_, h)| h.is_lines() && h.len > sb.max_record),
        "a lines entry longer than max_record"
    );
    assert!(
        w.records.iter().any(|r| r.lines && r.payload.is_empty()),
        "an empty record in a lines entry"
    );
    assert_eq!(
        w.records.last().unwrap().tail,
        slot.tail.0,
        "newest entry's tail field"
    );
    for c in &slot.cursors {
        assert_cursor_names_its_entry(c, &w, slot.head);
    }

    // §8, on the file as the writer left it: scan from the slot's head; the newest entry's
    // tail field gives the tail (the checkpointed tail has been overwritten since).
    let file = std::fs::read(&path).unwrap();
    let data = &file[DATA_AT..];
    assert_eq!(current_slot(&file, CAP).1.generation, slot.generation);
    let scan = scan_forward(data, &sb, &slot);
    assert_eq!(scan.head, (final_head.off, final_head.seq));
    assert_eq!(scan.records, final_head.seq - head.seq);
    let t = scan.newest.expect("entries past the checkpoint").tail;
    let th = header_at(data, t, sb.max_record, slot.run).expect("tail header");
    let all = walk(data, &sb, slot.run, (t, th.seq), scan.head);
    assert_eq!(all.records.len() as u64, final_head.seq - th.seq);
    assert_wanted(&all.records, &wanted);
    // And the code's own recovery agrees with the spec's, record for record.
    let reader = RingReader::open(&path).unwrap();
    let view = reader.view();
    assert_eq!(view.head, Pos::at(scan.head.0, scan.head.1));
    assert_eq!(view.tail, Pos::at(t, th.seq));
    assert_eq!(reader.recovery.scanned, scan.records);
    assert_eq!((reader.recovery.damaged, scan.damaged), (0, 0));
    let want: Vec<Got> = all.records.iter().map(expected).collect();
    assert_reads(&read_all(|p| view.read(p), view.tail), &want, "RingReader");
}

/// §6: a lines entry wraps when the room it reserves (for the longest body the read may bring)
/// does not fit before the end, even if the body it commits would have. The spec reader accepts
/// the marker and the entry at 0, and so do the §8 scan (the entry is past the last slot write)
/// and the code.
#[test]
fn a_lines_entry_wrapped_for_its_room_though_its_body_fits_parses_with_the_spec_reader() {
    let dir = TempDir::new("room");
    let path = dir.file("room.ring");
    let mut ring = Ring::open(&path, &opts("room")).unwrap();
    let mut wanted = Wanted::new();
    // Plain entries up to 1000 bytes of body before the end.
    let target = CAP - HEADER - 1000;
    while ring.head().off < target {
        let left = target - ring.head().off - HEADER;
        let len = if left <= 16 << 10 { left } else { 8 << 10 };
        let seq = ring.head().seq;
        let mut p = payload_of(seq);
        p.resize(len as usize, b'.');
        ring.append(&p, T0, false).unwrap();
        wanted.insert(seq, (p, T0, false, false));
    }
    assert_eq!(ring.head().off, target);
    let seq = ring.head().seq;
    let records: Vec<Vec<u8>> = (0..5).map(|j| vec![b'a' + j as u8; 100]).collect();
    let at = lines_wanted(
        &mut ring,
        &mut wanted,
        records,
        (4000, true),
        T0 + 1,
        T0 + 1,
    );
    assert_eq!(at, [Pos::at(0, seq)], "wrapped");
    ring.append(b"after", T0 + 2, false).unwrap();
    wanted.insert(seq + 5, (b"after".to_vec(), T0 + 2, false, false));
    let end = ring.head();
    drop(ring);

    let file = std::fs::read(&path).unwrap();
    let sb = parse_superblock(&file);
    let data = &file[DATA_AT..];
    let (_, slot) = current_slot(&file, CAP);
    assert!(slot.head.1 <= seq, "the slot was written before the wrap");
    let scan = scan_forward(data, &sb, &slot);
    assert_eq!(scan.head, (end.off, end.seq));
    let t = scan.newest.expect("entries past the slot").tail;
    let th = header_at(data, t, sb.max_record, slot.run).expect("tail header");
    let w = walk(data, &sb, slot.run, (t, th.seq), scan.head);
    assert_eq!(w.markers, [(target, seq)]);
    let (_, h) = w.entries.iter().find(|(o, _)| *o == 0).unwrap();
    assert!(h.is_lines() && target + h.stride() <= CAP, "{h:?}");
    assert_wanted(&w.records, &wanted);
    let reader = RingReader::open(&path).unwrap();
    let view = reader.view();
    assert_eq!(view.head, end);
    assert_eq!(view.tail, Pos::at(t, th.seq));
    let want: Vec<Got> = w.records.iter().map(expected).collect();
    assert_reads(&read_all(|p| view.read(p), view.tail), &want, "RingReader");
}

/// §8 step 3: damage past the checkpoint followed by entries of the same run is skipped; the
/// spec's scan and the code's recovery agree on the head, the records kept and the damaged
/// ones, for a damaged body (length known), a damaged header (resynchronised) and two damaged
/// entries in a row; damage in the last entry is the torn tail.
#[test]
fn damage_past_the_checkpoint_is_skipped_by_the_spec_scan_and_the_code_alike() {
    let dir = TempDir::new("salvage");
    let path = dir.file("salvage.ring");
    let mut ring = Ring::open(&path, &opts("salvage")).unwrap();
    for i in 0..200 {
        ring.append(&payload_of(i), T0 + i, false).unwrap();
    }
    ring.checkpoint(T0 + 200, true).unwrap();
    let mut after = Vec::new();
    for i in 200..260 {
        after.push(ring.append(&payload_of(i), T0 + i, false).unwrap());
    }
    let end = ring.head();
    drop(ring);
    let pristine = std::fs::read(&path).unwrap();
    // (what, bytes flipped: data offsets, damaged records, torn)
    let cases: [(&str, Vec<u64>, u64, bool); 5] = [
        ("body", vec![after[0].off + HEADER + 1], 1, false),
        ("header", vec![after[0].off + 8], 1, false),
        (
            "two entries",
            vec![after[3].off + 2, after[4].off + HEADER],
            2,
            false,
        ),
        (
            "far apart",
            vec![after[1].off + 8, after[58].off + 8],
            2,
            false,
        ),
        ("the last", vec![after[59].off + HEADER], 0, true),
    ];
    for (what, flips, damaged, torn) in cases {
        let mut file = pristine.clone();
        for f in flips {
            file[DATA_AT + f as usize] ^= 0x40;
        }
        std::fs::write(&path, &file).unwrap();
        let sb = parse_superblock(&file);
        let (_, slot) = current_slot(&file, CAP);
        let scan = scan_forward(&file[DATA_AT..], &sb, &slot);
        let head = if torn {
            (after[59].off, 259)
        } else {
            (end.off, end.seq)
        };
        assert_eq!(scan.head, head, "{what}");
        assert_eq!(scan.damaged, damaged, "{what}");
        assert_eq!(scan.records, head.1 - 200 - damaged, "{what}");
        let reader = RingReader::open(&path).unwrap();
        let rec = &reader.recovery;
        assert_eq!(reader.view().head, Pos::at(head.0, head.1), "{what}");
        assert_eq!(
            (rec.scanned, rec.damaged, rec.torn),
            (scan.records, damaged, torn),
            "{what}"
        );
        let lost: u64 = reader.view().verify().iter().map(|d| d.2).sum();
        assert_eq!(
            lost, damaged,
            "{what}: readers skip exactly the damaged records"
        );
    }
}

/// §5, §7, §8: a 256 KiB lines entry written by the code carries a CRC per 4096 bytes; one
/// flipped bit in it costs only the records that touch that chunk, by the spec's rules and the
/// code's alike, before the checkpoint (reading) and after it (recovery keeps the entry and
/// counts those records as damaged).
#[test]
fn a_flipped_bit_in_a_chunked_lines_entry_costs_only_the_records_that_touch_its_chunk() {
    let dir = TempDir::new("chunk");
    let path = dir.file("chunk.ring");
    let mut ring = Ring::open(&path, &opts("chunk")).unwrap();
    ring.append(b"before", T0, false).unwrap();
    // Records of 1 to 300 bytes: some span a chunk boundary, some end right at one.
    let records: Vec<Vec<u8>> = (0..1700u64)
        .map(|i| vec![b'a' + (i % 26) as u8; 1 + (i * 7919 % 300) as usize])
        .collect();
    let all: usize = records.iter().map(|r| r.len() + 1).sum();
    assert!(all > 200 << 10 && all < 256 << 10, "{all}");
    for checkpointed in [true, false] {
        let at = append_lines(&mut ring, &records, 0, true, T0 + 1);
        assert_eq!(at.len(), 1, "one entry");
        ring.append(b"after", T0 + 2, false).unwrap();
        if checkpointed {
            ring.checkpoint(T0 + 3, true).unwrap();
        }
        let entry = at[0];
        let file = std::fs::read(&path).unwrap();
        for chunk_no in [0u64, 17, 40, (all as u64 - 1) / CHUNK] {
            let mut file = file.clone();
            let byte =
                entry.off + HEADER + chunk_no * CHUNK + 1000.min(all as u64 - chunk_no * CHUNK - 1);
            file[DATA_AT + byte as usize] ^= 0x08;
            let data = &file[DATA_AT..];
            let sb = parse_superblock(&file);
            let (_, slot) = current_slot(&file, CAP);
            let h = header_at(data, entry.off, sb.max_record, slot.run).expect("header intact");
            assert!(h.is_chunked() && !entry_valid(data, entry.off, &h));
            let intact = intact_records(data, entry.off, &h).expect("table intact");
            let lost = intact.iter().filter(|&&x| !x).count() as u64;
            // Only records touching one chunk: at most a chunk's worth plus the two at its ends.
            assert!((1..=40).contains(&lost), "chunk {chunk_no}: {lost} lost");
            std::fs::write(dir.file("damaged.ring"), &file).unwrap();
            let reader = RingReader::open(&dir.file("damaged.ring")).unwrap();
            let view = reader.view();
            let mut read = Vec::new();
            let mut skipped = 0;
            let mut pos = view.tail;
            loop {
                match view.read(pos) {
                    Read::Record(r) => {
                        if r.pos.off == entry.off {
                            let k = (r.pos.seq - entry.seq) as usize;
                            assert_eq!(r.payload, records[k].as_slice());
                            read.push(k);
                        }
                        pos = r.next;
                    }
                    Read::Corrupt { at, next, .. } => {
                        assert_eq!(at.off, entry.off);
                        skipped += next.seq - at.seq;
                        pos = next;
                    }
                    Read::End => break,
                    Read::Overrun { tail } => pos = tail,
                }
            }
            let want: Vec<usize> = (0..intact.len()).filter(|&k| intact[k]).collect();
            assert_eq!(
                read, want,
                "chunk {chunk_no}: the records the spec says are intact"
            );
            // From any record of the entry, as a cursor read back from a slot names it (the
            // entry and the seq), reading on never returns a record that touches the chunk.
            for k in (0..records.len()).step_by(37) {
                let mut pos = Pos::at(entry.off, entry.seq + k as u64);
                while pos.off == entry.off && pos.seq < entry.seq + records.len() as u64 {
                    match view.read(pos) {
                        Read::Record(r) => {
                            let i = (r.pos.seq - entry.seq) as usize;
                            assert!(intact[i], "chunk {chunk_no}: record {i} from {k}");
                            assert_eq!(r.payload, records[i].as_slice());
                            // Looked for again where it was found, it is the same record.
                            let Read::Record(again) = view.read(r.pos) else {
                                panic!("record {i} looked for again")
                            };
                            assert_eq!(again.payload, r.payload);
                            pos = r.next;
                        }
                        Read::Corrupt { at, next, .. } => {
                            assert!((at.seq..next.seq).all(|s| !intact[(s - entry.seq) as usize]));
                            pos = next;
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
            assert_eq!(skipped, lost, "chunk {chunk_no}");
            let rec = &reader.recovery;
            if !checkpointed {
                let scan = scan_forward(data, &sb, &slot);
                assert_eq!(
                    (scan.damaged, rec.damaged),
                    (lost, lost),
                    "chunk {chunk_no}"
                );
                assert_eq!(rec.scanned, scan.records);
                assert!(!rec.torn);
            }
            assert_eq!(view.head, ring.head(), "nothing dropped");
        }
    }
}

/// Holds what a reader must find in [`spec_ring_with_lines`]: the records the recovery scan
/// finds past slot B's head, and the record of cursor `siem`.
struct Checkpointed {
    scanned: u64,
    cursor: Record,
}

/// A version 2 ring written from the spec: from `start`, plain entries (a truncated record now
/// and then) and lines entries (one in nine longer than `max_record`) in turn, wrapping, until
/// three quarters of the ring are used. Slot B (generation 5) is current, checkpointed 10
/// entries before the end; slot A (generation 4) is older still. Cursor `siem` is on the third
/// record of the first lines entry holding three, and names that entry.
fn spec_ring_with_lines(version: u32, start: (u64, u64)) -> (SpecRing, Checkpointed) {
    let max_record: u32 = 8 << 10;
    let mut ring = SpecRing::new(version, CAP, max_record, 3, start);
    for k in 0u64.. {
        let n = ring.head.1;
        // Equal receive times in a row are allowed: they never decrease.
        let ts = T0 + k / 2;
        if k % 3 == 0 {
            let len = (n.wrapping_mul(977) % (u64::from(max_record) + 1)) as usize;
            let payload: Vec<u8> = (0..len).map(|i| (i as u64 ^ n) as u8).collect();
            if !ring.has_room(payload.len()) {
                break;
            }
            ring.plain(&payload, ts, n.is_multiple_of(4));
        } else {
            let big = k % 9 == 2;
            let count = if big { 40 } else { 1 + (k * 7) % 30 };
            let records: Vec<Vec<u8>> = (0..count)
                .map(|j| {
                    let mut r = line_of(n + j);
                    if big {
                        r.resize(300, b'~');
                    }
                    r
                })
                .collect();
            if !ring.has_room(lines_body(&records).len()) {
                break;
            }
            ring.lines(&records, ts);
        }
    }
    let e = *ring
        .entries
        .iter()
        .find(|e| e.records >= 3)
        .expect("a lines entry of three records or more");
    let cursor = ring.written_seq(e.seq + 2).clone();
    assert!(cursor.lines && cursor.sub > 0);
    let cursors = [("siem", cursor.seq, e.off)];
    let k = ring.entries.len();
    let (b, a) = (ring.entries[k - 11], ring.entries[k / 2]);
    ring.put_slot(5, b.next, b.ts, &cursors);
    ring.put_slot(4, a.next, a.ts, &cursors);
    let scanned = ring.entries[k - 10..].iter().map(|e| e.records).sum();
    (ring, Checkpointed { scanned, cursor })
}

#[test]
fn a_ring_of_lines_entries_written_from_the_spec_is_read_and_continued_by_the_code() {
    let dir = TempDir::new("write");
    // §3, §12: a version 2 ring's lines entries are unchunked; the code reads them, upgrades the
    // superblock to version 4 and appends chunked ones after them. A version 3 ring is a
    // version 4 ring whose slots hold at most four run starts.
    for (version, start) in [
        (VERSION, (CAP - 3000, 1000)),
        (VERSION_3, (CAP - 3000, 1000)),
        (VERSION, (CAP - 48, 0)),
        (VERSION, (CAP / 2, u64::MAX - 100_000)),
        (VERSION_2, (CAP - 3000, 1000)),
        (VERSION_2, (CAP / 2, u64::MAX - 100_000)),
    ] {
        let (spec, ck) = spec_ring_with_lines(version, start);
        let want: Vec<Got> = spec.written.iter().map(expected).collect();
        // The spec's reader and writer agree.
        let sb = parse_superblock(&spec.file);
        let w = walk(&spec.file[DATA_AT..], &sb, 3, spec.tail, spec.head);
        assert_eq!(w.records, spec.written, "start {start:?}");
        assert!(
            w.entries.windows(2).any(|e| e[1].0 < e[0].0),
            "start {start:?}: no wrap"
        );
        assert!(w
            .entries
            .iter()
            .any(|(_, h)| h.is_lines() && h.len > sb.max_record));
        assert_eq!(sb.version, version);
        assert!(w
            .entries
            .iter()
            .all(|(_, h)| !h.is_lines() || h.is_chunked() == (version >= VERSION_3)));

        let path = dir.file("handmade.ring");
        std::fs::write(&path, &spec.file).unwrap();
        let reader = RingReader::open(&path).expect("the code opens a spec-written ring");
        assert_eq!(reader.superblock.name, "handmade");
        assert_eq!(reader.recovery.slot, 1, "slot B has the higher generation");
        assert_eq!(
            reader.recovery.scanned, ck.scanned,
            "records past the checkpoint"
        );
        let view = reader.view();
        assert_eq!(view.tail, Pos::at(spec.tail.0, spec.tail.1));
        assert_eq!(view.head, Pos::at(spec.head.0, spec.head.1));
        assert!(view.verify().is_empty());
        assert_reads(&read_all(|p| view.read(p), view.tail), &want, "RingReader");
        let (name, at, lost) = reader.cursors().next().expect("the cursor");
        assert_eq!(
            (name, at.off, at.seq, lost),
            ("siem", ck.cursor.off, ck.cursor.seq, 0)
        );
        let Read::Record(r) = view.read(at) else {
            panic!("the cursor's record")
        };
        assert_eq!(
            (r.pos.off, r.pos.seq, r.ts, r.payload),
            (
                ck.cursor.off,
                ck.cursor.seq,
                ck.cursor.ts,
                &ck.cursor.payload[..]
            )
        );
        drop(reader);

        // The code's writer takes it over: reads it all, finds the cursor's record inside its
        // entry, appends both kinds (wrapping, evicting), and the spec reader follows.
        let mut ring = Ring::open(
            &path,
            &RingOptions {
                capacity: CAP,
                max_record: 8 << 10,
                when_full: WhenFull::DropOldest,
                name: "handmade".into(), // the writer refuses a ring of another feed (§3)
            },
        )
        .unwrap();
        assert_reads(&read_all(|p| ring.read(p), ring.tail()), &want, "Ring");
        let siem = ring.cursor("siem").unwrap();
        let at = ring.cursor_pos(siem);
        assert_eq!((at.off, at.seq), (ck.cursor.off, ck.cursor.seq));
        let Read::Record(r) = ring.read(at) else {
            panic!("the cursor's record")
        };
        assert_eq!(r.payload, ck.cursor.payload);
        let next = ring.head().seq;
        assert_eq!(next, spec.written.last().unwrap().seq + 1);
        let mut wanted = Wanted::new();
        let newest = spec.written.last().unwrap().ts + 1_000_000;
        for i in 0..300u64 {
            let seq = ring.head().seq;
            let ts = newest + i;
            if i % 2 == 0 {
                let mut p = payload_of(seq);
                p.truncate(4000);
                ring.append(&p, ts, false).unwrap();
                wanted.insert(seq, (p, ts, false, false));
            } else {
                let records = (0..1 + i % 20).map(|j| line_of(seq + j)).collect();
                lines_wanted(&mut ring, &mut wanted, records, (0, false), ts, ts);
            }
        }
        ring.checkpoint(T0 + 2_000_000, true).unwrap();
        let end = ring.head();
        drop(ring);
        let file = std::fs::read(&path).unwrap();
        let sb = parse_superblock(&file);
        assert_eq!((sb.version, sb.name.as_str()), (VERSION, "handmade"));
        let (_, slot) = current_slot(&file, CAP);
        assert_eq!(slot.run, 4, "the next run");
        let w = walk(&file[DATA_AT..], &sb, slot.run, slot.tail, slot.head);
        assert!(
            w.entries
                .iter()
                .filter(|(_, h)| h.is_lines() && h.run == 4)
                .all(|(_, h)| h.is_chunked()),
            "the code writes chunked lines entries"
        );
        assert_eq!(slot.head, (end.off, end.seq));
        assert!(slot.tail.1 > start.1, "start {start:?}: nothing evicted");
        let w = walk(&file[DATA_AT..], &sb, slot.run, slot.tail, slot.head);
        let (old, new): (Vec<&Record>, Vec<&Record>) = w.records.iter().partition(|r| r.seq < next);
        for r in old {
            assert_eq!(r, spec.written_seq(r.seq), "start {start:?}");
        }
        let new: Vec<Record> = new.into_iter().cloned().collect();
        assert_wanted(&new, &wanted);
        assert!(new.iter().all(|r| r.run == 4));
        assert_eq!(new.len(), wanted.len());
    }
}

/// §3, §12: a version 1 file (plain entries only, 0 at header offset 40) is a version 2 file
/// without lines entries. A reader reads it and writes nothing; a writer rewrites its superblock
/// with version 2 (nothing else in it changes) before it appends, then lines entries follow.
#[test]
fn a_version_1_ring_written_from_the_spec_is_read_unchanged_and_upgraded_by_the_writer() {
    let dir = TempDir::new("v1");
    let path = dir.file("v1.ring");
    let max_record: u32 = 8 << 10;
    let mut spec = SpecRing::new(VERSION_1, CAP, max_record, 2, (CAP - 3000, 500));
    for k in 0u64.. {
        let n = spec.head.1;
        let len = (n.wrapping_mul(977) % (u64::from(max_record) + 1)) as usize;
        let payload: Vec<u8> = (0..len).map(|i| (i as u64 ^ n) as u8).collect();
        if !spec.has_room(len) {
            break;
        }
        spec.plain(&payload, T0 + k, n.is_multiple_of(4));
    }
    let last = *spec.entries.last().unwrap();
    let c = spec.written[5].clone();
    spec.put_slot(1, last.next, last.ts, &[("siem", c.seq, c.off)]);
    let sb = parse_superblock(&spec.file);
    assert_eq!(sb.version, VERSION_1);
    let w = walk(&spec.file[DATA_AT..], &sb, 2, spec.tail, spec.head);
    assert_eq!(w.records, spec.written);
    assert!(!w.markers.is_empty(), "no wrap");
    assert!(w.entries.iter().all(|(_, h)| h.count == 0 && !h.is_lines()));
    std::fs::write(&path, &spec.file).unwrap();
    let want: Vec<Got> = spec.written.iter().map(expected).collect();

    let reader = RingReader::open(&path).expect("the code reads a version 1 ring");
    assert_eq!(reader.superblock.version, VERSION_1);
    let view = reader.view();
    assert_eq!(view.head, Pos::at(spec.head.0, spec.head.1));
    assert!(view.verify().is_empty());
    assert_reads(&read_all(|p| view.read(p), view.tail), &want, "RingReader");
    drop(reader);
    assert!(
        std::fs::read(&path).unwrap() == spec.file,
        "the reader changed the file"
    );

    let mut ring = Ring::open(
        &path,
        &RingOptions {
            capacity: CAP,
            max_record,
            when_full: WhenFull::DropOldest,
            name: "handmade".into(), // the writer refuses a ring of another feed (§3)
        },
    )
    .unwrap();
    let file = std::fs::read(&path).unwrap();
    let sb = parse_superblock(&file);
    assert_eq!(sb.version, VERSION, "the writer upgrades before it appends");
    let mut was = spec.file[..SB_CRC_AT].to_vec();
    put_u32(&mut was, 8, VERSION);
    assert_eq!(
        file[..SB_CRC_AT],
        was[..],
        "only the version (and so the CRC) changes"
    );
    assert_reads(&read_all(|p| ring.read(p), ring.tail()), &want, "Ring");
    let siem = ring.cursor("siem").unwrap();
    assert_eq!(ring.cursor_pos(siem), Pos::at(c.off, c.seq));
    let next = ring.head().seq;
    let mut wanted = Wanted::new();
    let ts = T0 + 1_000_000;
    let records = (0..20).map(|j| line_of(next + j)).collect();
    lines_wanted(&mut ring, &mut wanted, records, (0, false), ts, ts);
    let seq = ring.head().seq;
    ring.append(b"plain after lines", ts, false).unwrap();
    wanted.insert(seq, (b"plain after lines".to_vec(), ts, false, false));
    ring.checkpoint(ts, true).unwrap();
    drop(ring);
    let file = std::fs::read(&path).unwrap();
    let sb = parse_superblock(&file);
    assert_eq!(sb.version, VERSION);
    let (_, slot) = current_slot(&file, CAP);
    let w = walk(&file[DATA_AT..], &sb, slot.run, slot.tail, slot.head);
    let (old, new): (Vec<Record>, Vec<Record>) = w.records.into_iter().partition(|r| r.seq < next);
    assert_eq!(old, spec.written, "every version 1 record kept");
    assert_wanted(&new, &wanted);
    assert_eq!(new.len(), wanted.len());
}

/// What §5 says of an edge-case entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Its header is not acceptable: the reader resynchronises past it (`Damage::Header`).
    Refused,
    /// Its header is acceptable but its body is not valid: skipped by its stride.
    Damaged(Damage),
    /// Acceptable and valid: its records are read.
    Valid,
}

/// An entry at an edge of §5, between valid ones.
struct Edge {
    what: &'static str,
    cap: u64,
    flags: u8,
    count: u32,
    body: Vec<u8>,
    /// Sequence numbers it takes: the next entry's first is its own plus these.
    records: u64,
    verdict: Verdict,
}

/// §5 acceptability and body validity at their edges, on entries written here whose header and
/// body CRCs match: the code reports each refused one damaged where it is (a header it must
/// refuse: resynchronised past; a lines body that is not `count` LF-terminated records:
/// `Damage::Lines`, skipped by its stride) and never returns one of its records; the entry just
/// inside the limit is read whole.
#[test]
fn entries_that_section_5_refuses_are_reported_damaged_by_the_code_and_never_read() {
    let dir = TempDir::new("refused");
    let path = dir.file("refused.ring");
    let recs = |n: u64| -> Vec<Vec<u8>> { (0..n).map(|j| line_of(100 + j)).collect() };
    // 1024 records of 1023 bytes and their LFs: exactly 1 MiB; one more record is over it.
    let mib: Vec<Vec<u8>> = (0..1024u64)
        .map(|j| {
            let mut r = line_of(j + 1);
            r.resize(1023, b'~');
            r
        })
        .collect();
    let over: Vec<Vec<u8>> = mib.iter().cloned().chain([b"1234567".to_vec()]).collect();
    let edge = |what, flags, count, body, records, verdict| Edge {
        what,
        cap: CAP,
        flags,
        count,
        body,
        records,
        verdict,
    };
    let lines = |count, found| Verdict::Damaged(Damage::Lines { count, found });
    let edges = [
        edge(
            "lines, count 0",
            LINES,
            0,
            lines_body(&recs(3)),
            3,
            Verdict::Refused,
        ),
        edge(
            "lines, count > len",
            LINES,
            5,
            b"a\nb\n".to_vec(),
            2,
            Verdict::Refused,
        ),
        edge(
            "lines, bits 0 and 1 both set",
            LINES | TRUNCATED,
            3,
            lines_body(&recs(3)),
            3,
            Verdict::Refused,
        ),
        edge(
            "plain, count 1",
            0,
            1,
            b"plain".to_vec(),
            1,
            Verdict::Refused,
        ),
        edge(
            "plain truncated, count 3",
            TRUNCATED,
            3,
            b"a\nb\nc\n".to_vec(),
            1,
            Verdict::Refused,
        ),
        Edge {
            cap: 2 * CAP,
            ..edge(
                "lines, len > max(max_record, 1 MiB)",
                LINES,
                1025,
                lines_body(&over),
                1025,
                Verdict::Refused,
            )
        },
        edge(
            "lines, an LF more than count",
            LINES,
            3,
            lines_body(&recs(4)),
            3,
            lines(3, 4),
        ),
        edge(
            "lines, an LF fewer than count",
            LINES,
            5,
            lines_body(&recs(4)),
            5,
            lines(5, 4),
        ),
        edge(
            "lines, no LF at the end",
            LINES,
            2,
            b"abc\ndef\nxyz".to_vec(),
            2,
            lines(2, 2),
        ),
        Edge {
            cap: 2 * CAP,
            ..edge(
                "lines, len = max(max_record, 1 MiB)",
                LINES,
                1024,
                lines_body(&mib),
                1024,
                Verdict::Valid,
            )
        },
    ];
    for e in edges {
        let what = e.what;
        let max_record = 8 << 10;
        let mut spec = SpecRing::new(VERSION, e.cap, max_record, 1, (0, 0));
        spec.plain(b"first", T0, false);
        spec.lines(&recs(5), T0 + 1);
        let at = if e.verdict == Verdict::Valid {
            let records: Vec<Vec<u8>> = e.body.split(|&c| c == LF).map(<[u8]>::to_vec).collect();
            spec.lines(&records[..records.len() - 1], T0 + 2)
        } else {
            spec.entry(e.flags, e.count, &e.body, T0 + 2, e.records)
        };
        assert_eq!(at.records, e.records, "{what}");
        spec.lines(&recs(4), T0 + 3);
        spec.plain(b"last", T0 + 4, false);
        let last = *spec.entries.last().unwrap();
        spec.put_slot(1, last.next, last.ts, &[]);

        // The spec's rules say so of this very entry, whose CRCs are right.
        let data = &spec.file[DATA_AT..];
        let hb = &data[at.off as usize..(at.off + HEADER) as usize];
        assert_eq!(
            crc32fast::hash(&hb[..HCRC_AT]),
            u32_at(hb, HCRC_AT),
            "{what}"
        );
        if hb[5] & CHUNKED == 0 {
            assert_eq!(crc32fast::hash(&e.body), u32_at(hb, 36), "{what}: body CRC");
        }
        match (header_at(data, at.off, max_record, 1), e.verdict) {
            (None, Verdict::Refused) => {}
            (Some(h), Verdict::Damaged(_)) => {
                assert!(!entry_valid(data, at.off, &h), "{what}")
            }
            (Some(h), Verdict::Valid) => assert!(entry_valid(data, at.off, &h), "{what}"),
            (h, v) => panic!("{what}: header {h:?}, expected {v:?}"),
        }

        // What the code must return: every record written around it, and the entry as one
        // damage where it is, or its records.
        let damage = match e.verdict {
            Verdict::Refused => Some(Damage::Header),
            Verdict::Damaged(d) => Some(d),
            Verdict::Valid => None,
        };
        let mut want: Vec<Got> = spec.written.iter().map(expected).collect();
        if let Some(damage) = damage {
            let i = want
                .iter()
                .position(|g| matches!(g, Got::Record { seq, .. } if *seq > at.seq))
                .unwrap();
            let next = at.next;
            want.insert(
                i,
                Got::Damaged {
                    at: (at.off, at.seq),
                    damage,
                    next,
                },
            );
        }
        std::fs::write(&path, &spec.file).unwrap();
        let reader = RingReader::open(&path).expect(what);
        let view = reader.view();
        assert_eq!(view.tail, Pos::at(0, 0), "{what}");
        assert_eq!(view.head, Pos::at(last.next.0, last.next.1), "{what}");
        let got = read_all(|p| view.read(p), view.tail);
        assert_reads(&got, &want, what);
        let its =
            |g: &Got| matches!(g, Got::Record { seq, .. } if (at.seq..at.next.1).contains(seq));
        assert_eq!(
            got.iter().filter(|g| its(g)).count() as u64,
            if damage.is_some() { 0 } else { at.records },
            "{what}: its records"
        );
        let verified: Vec<_> = view
            .verify()
            .into_iter()
            .map(|(p, d, lost)| ((p.off, p.seq), d, lost))
            .collect();
        let damaged: Vec<_> = damage
            .map(|d| ((at.off, at.seq), d, at.records))
            .into_iter()
            .collect();
        assert_eq!(verified, damaged, "{what}: verify");
        drop(reader);

        let ring = Ring::open(
            &path,
            &RingOptions {
                capacity: e.cap,
                max_record,
                when_full: WhenFull::DropOldest,
                name: "handmade".into(), // the writer refuses a ring of another feed (§3)
            },
        )
        .expect(what);
        let rec = ring.recovery();
        assert_eq!((rec.scanned, rec.tail_dropped), (0, 0), "{what}");
        assert_reads(&read_all(|p| ring.read(p), ring.tail()), &want, what);
    }
}

/// §4 `epoch`: an active re-reads both slots from the file; a slot that another writer wrote
/// with a higher epoch than this writer's own means it was fenced off (another instance became
/// active), and the code must see it, however the slot got there.
#[test]
fn a_slot_written_by_another_writer_with_a_higher_epoch_is_seen_by_the_open_ring() {
    let dir = TempDir::new("fence");
    let path = dir.file("f.ring");
    let mut ring = Ring::open(&path, &opts("f")).unwrap();
    ring.set_epoch(4);
    ring.checkpoint(T0, true).unwrap();
    assert_eq!(ring.stored_epoch(), 4);
    // The other writer: the current slot again, generation + 1, epoch 9, into the other slot,
    // written through the file (not this process's mapping).
    let file = std::fs::read(&path).unwrap();
    let (cur, slot) = current_slot(&file, CAP);
    assert_eq!(slot.epoch, 4);
    let mut b = file[SLOT_AT[cur]..SLOT_AT[cur] + SLOT_LEN].to_vec();
    let generation = u64_at(&b, 0);
    put_u64(&mut b, 0, generation + 1);
    put_u64(&mut b, 16, 9);
    let crc = crc32fast::hash(&b[..SLOT_CRC_AT]);
    put_u32(&mut b, SLOT_CRC_AT, crc);
    let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&other, &b, SLOT_AT[1 - cur] as u64).unwrap();
    assert_eq!(ring.epoch(), 4, "this writer's own epoch");
    assert_eq!(ring.stored_epoch(), 9, "the higher epoch on disk");
}
