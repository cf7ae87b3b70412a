//! `buffer-spec.md` against the code, both ways:
//! - a ring written by the code is parsed by a reader written here from the spec's offsets and
//!   constants only (no `ringrelay::ring::format`): superblock, both metadata slots, every record
//!   from tail to head with its CRCs, sequence numbers and wrap markers, and the §8 recovery scan;
//! - a ring written here from the spec is opened and read by the code.
//!
//! Every number below is quoted from the spec; the only things taken from the crate are the
//! writing/reading API and `crc32fast` (the spec names it as the CRC).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use ringrelay::ring::{Pos, Read, Ring, RingOptions, RingReader, WhenFull};

// §2 file layout
const SUPERBLOCK_AT: usize = 0;
const SLOT_AT: [usize; 2] = [4096, 8192];
const DATA_AT: usize = 12288;
// §3 superblock
const MAGIC: [u8; 8] = [0x89, 0x52, 0x49, 0x4E, 0x47, 0x0D, 0x0A, 0x1A];
const SB_CRC_AT: usize = 124;
const SB_LEN: usize = 128;
// §4 metadata slot
const SLOT_CRC_AT: usize = 1152;
const SLOT_LEN: usize = 1156;
const CURSORS_AT: usize = 128;
const CURSOR_LEN: usize = 64;
const MAX_CURSORS: usize = 16;
// §5 records
const HEADER: u64 = 48;
const HCRC_AT: usize = 44;
const KIND_DATA: u8 = 1;
const KIND_WRAP: u8 = 2;

const CAP: u64 = 1 << 20;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
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
    assert_eq!(u32_at(b, 8), 1, "version");
    assert_eq!(u32_at(b, 12), 0, "flags");
    assert_eq!(u64_at(b, 16), 12288, "data_offset");
    let capacity = u64_at(b, 24);
    let max_record = u32_at(b, 32);
    assert_eq!(u32_at(b, 36), 48, "record_header");
    assert_eq!(u32_at(b, 40), 8, "align");
    assert_eq!(u32_at(b, 44), 16, "max_cursors");
    assert_eq!(u32_at(b, 120), 0, "reserved");
    assert!(capacity >= 1 << 20 && capacity % 4096 == 0, "capacity");
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
    let in_area = |o: u64| o % 8 == 0 && o.checked_add(48).is_some_and(|e| e <= cap);
    if !(in_area(tail.0) && in_area(head.0) && tail.1 <= head.1) {
        return None;
    }
    assert_eq!(u32_at(b, 12), 0, "slot reserved 12..16");
    assert!(b[80..128].iter().all(|&c| c == 0), "slot reserved 80..128");
    assert!(
        page[SLOT_LEN..].iter().all(|&c| c == 0),
        "slot page past the structure"
    );
    let mut cursors = Vec::new();
    for i in 0..MAX_CURSORS {
        let c = &b[CURSORS_AT + CURSOR_LEN * i..CURSORS_AT + CURSOR_LEN * (i + 1)];
        assert_eq!(u64_at(c, 56), 0, "cursor reserved");
        if c[..32].iter().all(|&x| x == 0) {
            assert!(c.iter().all(|&x| x == 0), "an unused cursor entry is zero");
            continue;
        }
        cursors.push(Cursor {
            name: zero_padded(&c[..32]),
            seq: u64_at(c, 32),
            off: u64_at(c, 40),
            lost: u64_at(c, 48),
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

#[derive(Clone, Copy, Debug)]
struct Header {
    len: u32,
    kind: u8,
    flags: u8,
    seq: u64,
    ts: u64,
    tail: u64,
    run: u32,
    pcrc: u32,
}

/// §5: the header at data offset `o` if it is acceptable.
fn header_at(data: &[u8], o: u64, max_record: u32, run: u32) -> Option<Header> {
    let cap = data.len() as u64;
    if o % 8 != 0 || o + HEADER > cap {
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
        seq: u64_at(b, 8),
        ts: u64_at(b, 16),
        tail: u64_at(b, 24),
        run: u32_at(b, 32),
        pcrc: u32_at(b, 36),
    };
    let ok = match h.kind {
        KIND_DATA => h.len <= max_record && o + stride(u64::from(h.len)) <= cap,
        KIND_WRAP => h.len == 0 && o != 0,
        _ => false,
    };
    if !ok || h.run > run {
        return None;
    }
    assert_eq!(u16_at(b, 6), 0, "header reserved 6..8");
    assert_eq!(u32_at(b, 40), 0, "header reserved 40..44");
    Some(h)
}

fn payload<'a>(data: &'a [u8], o: u64, h: &Header) -> &'a [u8] {
    let start = (o + HEADER) as usize;
    &data[start..start + h.len as usize]
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    off: u64,
    seq: u64,
    ts: u64,
    truncated: bool,
    tail: u64,
    run: u32,
    payload: Vec<u8>,
}

/// §7: reads every record from `tail` to `head`, all of which must be valid; returns them and
/// the offsets of the wrap markers met.
fn walk(
    data: &[u8],
    sb: &Superblock,
    run: u32,
    tail: (u64, u64),
    head: (u64, u64),
) -> (Vec<Record>, Vec<(u64, u64)>) {
    let cap = data.len() as u64;
    let (mut o, mut n) = (normalise(tail.0, cap), tail.1);
    let mut records = Vec::new();
    let mut markers = Vec::new();
    let mut last_ts = 0;
    while n < head.1 {
        let mut h = header_at(data, o, sb.max_record, run)
            .unwrap_or_else(|| panic!("no acceptable header at {o} for seq {n}"));
        assert_eq!(h.seq, n, "sequence number at {o}");
        if h.kind == KIND_WRAP {
            markers.push((o, n));
            let h0 = header_at(data, 0, sb.max_record, run).expect("a record at 0");
            assert_eq!(h0.kind, KIND_DATA, "two wrap markers in a row");
            assert_eq!(
                (h0.seq, h0.ts),
                (h.seq, h.ts),
                "a marker carries its record's seq and ts"
            );
            // The record really did not fit before the end.
            assert!(o + stride(u64::from(h0.len)) > cap, "needless wrap at {o}");
            o = 0;
            h = h0;
        }
        let p = payload(data, o, &h);
        assert_eq!(crc32fast::hash(p), h.pcrc, "payload CRC of seq {n}");
        assert!(h.ts >= last_ts, "receive times never decrease");
        assert!(
            h.tail % 8 == 0 && h.tail + HEADER <= cap,
            "tail field of seq {n}"
        );
        assert_eq!(h.flags & !1, 0, "unknown flags on seq {n}");
        last_ts = h.ts;
        records.push(Record {
            off: o,
            seq: n,
            ts: h.ts,
            truncated: h.flags & 1 != 0,
            tail: h.tail,
            run: h.run,
            payload: p.to_vec(),
        });
        o = normalise(o + stride(u64::from(h.len)), cap);
        n += 1;
    }
    assert_eq!((o, n), head, "the walk ends at the head");
    (records, markers)
}

/// §8 step 3: from the slot's head, accept records that chain (seq, run, ts, CRCs).
fn scan_forward(data: &[u8], sb: &Superblock, slot: &Slot) -> ((u64, u64), Option<Header>) {
    let cap = data.len() as u64;
    let (mut o, mut n) = (normalise(slot.head.0, cap), slot.head.1);
    let mut ts = slot.last_ts;
    let mut newest = None;
    let mut spent = 0;
    loop {
        let valid = |o: u64| {
            header_at(data, o, sb.max_record, slot.run).filter(|h| {
                h.seq == n
                    && h.run == slot.run
                    && h.ts >= ts
                    && (h.kind == KIND_WRAP || crc32fast::hash(payload(data, o, h)) == h.pcrc)
            })
        };
        let Some(mut h) = valid(o) else { break };
        let mut at = o;
        let mut used = 0;
        if h.kind == KIND_WRAP {
            match valid(0) {
                Some(h0) if h0.kind == KIND_DATA => {
                    used = cap - o;
                    at = 0;
                    h = h0;
                }
                _ => break,
            }
        }
        used += stride(u64::from(h.len));
        if spent + used > cap {
            break;
        }
        spent += used;
        ts = h.ts;
        newest = Some(h);
        o = normalise(at + stride(u64::from(h.len)), cap);
        n += 1;
    }
    ((o, n), newest)
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

const T0: u64 = 1_700_000_000_000_000_000;

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

#[test]
fn a_ring_written_by_the_code_parses_with_a_reader_written_from_the_spec() {
    let dir = TempDir::new("read");
    let path = dir.file("feed.ring");
    let mut ring = Ring::open(&path, &opts("zia-web")).unwrap();
    let siem = ring.cursor("siem-a").unwrap();
    let lagging = ring.cursor("file-b").unwrap();
    let mut wanted = BTreeMap::new();
    let mut siem_at = Pos::default();
    // About 1.6 laps, so records wrap and the oldest are evicted.
    for i in 0..900u64 {
        let seq = ring.head().seq;
        let p = payload_of(seq);
        // Every third time goes back a little: the ring raises it to the newest time.
        let ts = T0 + i * 1000 - (i % 3) * 1500;
        ring.append(&p, ts, seq % 7 == 0).unwrap();
        wanted.insert(seq, p);
        if i == 700 {
            siem_at = ring.head();
            ring.commit(siem, siem_at);
        }
    }
    ring.set_epoch(7);
    ring.checkpoint(T0 + 5_000_000_000, true).unwrap();
    let stats = ring.stats();
    let (tail, head) = (ring.tail(), ring.head());
    let lost_a = ring.cursor_lost(siem);
    let lost_b = ring.cursor_lost(lagging);
    let lagging_at = ring.cursor_pos(lagging);
    // The file as of the checkpoint (the map is shared, so this is what is on disk).
    let file = std::fs::read(&path).unwrap();
    // Some more after the checkpoint: only the recovery scan finds these.
    for _ in 0..25 {
        let seq = ring.head().seq;
        let p = payload_of(seq);
        ring.append(&p, T0 + 10_000_000_000, false).unwrap();
        wanted.insert(seq, p);
    }
    let final_head = ring.head();
    drop(ring);

    let sb = parse_superblock(&file);
    let data = &file[DATA_AT..];
    let (_, slot) = current_slot(&file, sb.capacity);
    assert_eq!(slot.run, 1);
    assert_eq!(slot.epoch, 7);
    assert_eq!(slot.checkpoint_ns, T0 + 5_000_000_000);
    assert_eq!(slot.tail, (tail.off, tail.seq));
    assert_eq!(slot.head, (head.off, head.seq));
    assert_eq!(slot.evicted, stats.evicted);
    assert!(slot.evicted > 0, "the ring did not wrap");
    assert_eq!(used(slot.tail, slot.head, CAP), stats.used);
    assert_eq!(
        slot.cursors,
        vec![
            Cursor {
                name: "siem-a".into(),
                seq: siem_at.seq,
                off: siem_at.off,
                lost: lost_a
            },
            Cursor {
                name: "file-b".into(),
                seq: lagging_at.seq,
                off: lagging_at.off,
                lost: lost_b
            },
        ]
    );
    assert_eq!(
        lost_b, lagging_at.seq,
        "moved from seq 0 to the tail, all counted"
    );

    // Checkpointed records: tail to head.
    let (records, markers) = walk(data, &sb, slot.run, slot.tail, slot.head);
    assert_eq!(records.len() as u64, stats.records);
    assert!(!markers.is_empty(), "no wrap marker between tail and head");
    assert_eq!(slot.last_ts, records.last().unwrap().ts);
    for r in &records {
        assert_eq!(&r.payload, &wanted[&r.seq], "payload of seq {}", r.seq);
        assert_eq!(r.truncated, r.seq % 7 == 0, "flag of seq {}", r.seq);
        assert_eq!(r.run, 1);
    }
    assert_eq!(
        records.last().unwrap().tail,
        slot.tail.0,
        "newest record's tail field"
    );

    // §8, on the file as the writer left it: scan from the slot's head; the newest record's
    // tail field gives the tail (the checkpointed tail has been overwritten since).
    let file = std::fs::read(&path).unwrap();
    let data = &file[DATA_AT..];
    assert_eq!(current_slot(&file, CAP).1.generation, slot.generation);
    let (scan_head, newest) = scan_forward(data, &sb, &slot);
    assert_eq!(scan_head, (final_head.off, final_head.seq));
    let newest = newest.expect("records past the checkpoint");
    let t = newest.tail;
    let th = header_at(data, t, sb.max_record, slot.run).expect("tail header");
    let (all, _) = walk(data, &sb, slot.run, (t, th.seq), scan_head);
    assert_eq!(all.len() as u64, final_head.seq - th.seq);
    for r in &all {
        assert_eq!(&r.payload, &wanted[&r.seq], "payload of seq {}", r.seq);
    }
    // And the code's own recovery agrees with the spec's.
    let reader = RingReader::open(&path).unwrap();
    assert_eq!(
        reader.view().head,
        Pos {
            off: scan_head.0,
            seq: scan_head.1
        }
    );
    assert_eq!(
        reader.view().tail,
        Pos {
            off: t,
            seq: th.seq
        }
    );
}

/// Writes a ring file from the spec alone: superblock, two slots (B current, its head a few
/// records behind the last one written), records from `start` with a wrap. Returns the bytes
/// and the (seq, payload, ts) written.
/// (seq, payload, ts) of each record written.
type Written = Vec<(u64, Vec<u8>, u64)>;

fn spec_written_ring(start: (u64, u64)) -> (Vec<u8>, Written) {
    let max_record: u32 = 8 << 10;
    let mut file = vec![0u8; DATA_AT + CAP as usize];
    {
        let b = &mut file[..SB_LEN];
        b[..8].copy_from_slice(&MAGIC);
        put_u32(b, 8, 1);
        put_u64(b, 16, 12288);
        put_u64(b, 24, CAP);
        put_u32(b, 32, max_record);
        put_u32(b, 36, 48);
        put_u32(b, 40, 8);
        put_u32(b, 44, 16);
        put_u64(b, 48, T0);
        b[56..56 + 8].copy_from_slice(b"handmade");
        let crc = crc32fast::hash(&b[..SB_CRC_AT]);
        put_u32(b, SB_CRC_AT, crc);
    }
    let run = 3;
    let (mut o, mut n) = start;
    let mut written = Vec::new();
    let mut used = 0;
    let mut heads = Vec::new();
    loop {
        let len = (n.wrapping_mul(977) % (u64::from(max_record) + 1)) as usize;
        let s = stride(len as u64);
        let wraps = o + s > CAP;
        let need = if wraps { CAP - o + s } else { s };
        if used + need > CAP * 3 / 4 {
            break;
        }
        used += need;
        let ts = T0 + (n - start.1);
        let data = &mut file[DATA_AT..];
        let mut header = |at: u64, len: u32, kind: u8, pcrc: u32| {
            let b = &mut data[at as usize..(at + HEADER) as usize];
            put_u32(b, 0, len);
            b[4] = kind;
            b[5] = u8::from(n % 4 == 0);
            put_u64(b, 8, n);
            put_u64(b, 16, ts);
            put_u64(b, 24, start.0);
            put_u32(b, 32, run);
            put_u32(b, 36, pcrc);
            let crc = crc32fast::hash(&b[..HCRC_AT]);
            put_u32(b, HCRC_AT, crc);
        };
        let at = if wraps {
            header(o, 0, KIND_WRAP, 0);
            0
        } else {
            o
        };
        let payload: Vec<u8> = (0..len).map(|i| (i as u64 ^ n) as u8).collect();
        header(at, len as u32, KIND_DATA, crc32fast::hash(&payload));
        data[(at + HEADER) as usize..(at + HEADER) as usize + len].copy_from_slice(&payload);
        written.push((n, payload, ts));
        o = normalise(at + s, CAP);
        n += 1;
        heads.push((o, n));
    }
    // Slot B (generation 5) is current but checkpointed 10 records before the end; slot A
    // (generation 4) is older still.
    let slot = |generation: u64, head: (u64, u64), last_ts: u64| {
        let mut b = vec![0u8; SLOT_LEN];
        put_u64(&mut b, 0, generation);
        put_u32(&mut b, 8, run);
        put_u64(&mut b, 24, start.0);
        put_u64(&mut b, 32, start.1);
        put_u64(&mut b, 40, head.0);
        put_u64(&mut b, 48, head.1);
        put_u64(&mut b, 56, last_ts);
        put_u64(&mut b, 64, T0);
        let c = &mut b[CURSORS_AT..CURSORS_AT + CURSOR_LEN];
        c[..4].copy_from_slice(b"siem");
        put_u64(c, 32, start.1 + 3);
        put_u64(c, 40, heads[2].0);
        let crc = crc32fast::hash(&b[..SLOT_CRC_AT]);
        put_u32(&mut b, SLOT_CRC_AT, crc);
        b
    };
    let k = heads.len();
    let b = slot(5, heads[k - 11], written[k - 11].2);
    let a = slot(4, heads[k / 2], written[k / 2].2);
    file[SLOT_AT[1]..SLOT_AT[1] + SLOT_LEN].copy_from_slice(&b);
    file[SLOT_AT[0]..SLOT_AT[0] + SLOT_LEN].copy_from_slice(&a);
    (file, written)
}

fn read_with_the_code(path: &Path, written: &[(u64, Vec<u8>, u64)]) {
    let reader = RingReader::open(path).expect("the code opens a spec-written ring");
    assert_eq!(reader.superblock.name, "handmade");
    assert_eq!(reader.recovery.slot, 1, "slot B has the higher generation");
    assert_eq!(
        reader.recovery.scanned, 10,
        "ten records past the checkpoint"
    );
    let view = reader.view();
    assert!(view.verify().is_empty());
    let mut pos = view.tail;
    let mut it = written.iter();
    loop {
        match view.read(pos) {
            Read::Record(r) => {
                let (seq, p, ts) = it.next().expect("more records than written");
                assert_eq!((r.pos.seq, r.ts, r.truncated), (*seq, *ts, seq % 4 == 0));
                assert!(r.payload == p.as_slice(), "payload of seq {seq}");
                pos = r.next;
            }
            Read::End => break,
            other => panic!("{other:?}"),
        }
    }
    assert!(it.next().is_none(), "records missing");
    let (_, cpos, _) = reader.cursors().next().expect("the cursor");
    assert_eq!(cpos.seq, written[3].0);
}

#[test]
fn a_ring_written_from_the_spec_is_read_and_continued_by_the_code() {
    let dir = TempDir::new("write");
    for start in [
        (CAP - 3000, 1000),
        (CAP - 48, 0),
        (CAP / 2, u64::MAX - 100_000),
    ] {
        let (file, written) = spec_written_ring(start);
        let path = dir.file("handmade.ring");
        std::fs::write(&path, &file).unwrap();
        read_with_the_code(&path, &written);
        // The code's writer takes it over, appends, and the spec reader follows.
        let mut ring = Ring::open(
            &path,
            &RingOptions {
                capacity: CAP,
                max_record: 8 << 10,
                when_full: WhenFull::DropOldest,
                name: "ignored".into(),
            },
        )
        .unwrap();
        let next = ring.head().seq;
        assert_eq!(next, written.last().unwrap().0 + 1);
        for i in 0..300u64 {
            let mut p = payload_of(next + i);
            p.truncate(4000);
            ring.append(&p, T0 + 1_000_000 + i, false).unwrap();
        }
        ring.checkpoint(T0 + 2_000_000, true).unwrap();
        drop(ring);
        let file = std::fs::read(&path).unwrap();
        let sb = parse_superblock(&file);
        let (_, slot) = current_slot(&file, CAP);
        assert_eq!(slot.run, 4, "the next run");
        let (records, _) = walk(&file[DATA_AT..], &sb, slot.run, slot.tail, slot.head);
        for r in &records {
            if r.seq >= next {
                assert_eq!(r.payload, payload_of(r.seq)[..r.payload.len()]);
                assert!(r.payload.len() == payload_of(r.seq).len().min(4000));
                assert_eq!(r.run, 4);
            } else {
                let w = &written[(r.seq - start.1) as usize];
                assert_eq!((r.seq, &r.payload), (w.0, &w.1));
                assert_eq!(r.run, 3);
            }
        }
        assert_eq!(records.last().unwrap().seq, next + 299);
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
