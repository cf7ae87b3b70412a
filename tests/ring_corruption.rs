//! Damaged ring files on disk: truncation, a zeroed page, flipped bits in payloads, record
//! headers, each metadata slot and the superblock; files that are not rings. Recovery keeps every
//! intact record, never returns a damaged one as a record, and reading goes on after damage
//! (`buffer-spec.md` §7–8). `ringrelay inspect --verify` (the real binary) exits 0 on a clean
//! ring, 1 on a damaged one and prints exactly the damaged records' offsets, and 2 on a file it
//! cannot read as a ring, naming the path.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use ringrelay::ring::{Damage, OpenError, Pos, Read, Ring, RingOptions, RingReader, WhenFull};

const CAP: u64 = 1 << 20;
const DATA: u64 = 12288;
const HEADER: u64 = 48;
const SLOTS: [u64; 2] = [4096, 8192];

fn watchdog() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(120));
            eprintln!("ring_corruption: still running after 120 s; something is wedged");
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
        let d = std::env::temp_dir().join(format!(
            "ringrelay-corrupt-{tag}-{}-{n}",
            std::process::id()
        ));
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

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn opts() -> RingOptions {
    RingOptions {
        capacity: CAP,
        max_record: 16 << 10,
        when_full: WhenFull::DropOldest,
        name: "corrupt".into(),
    }
}

/// Printable, so no payload can look like a record header.
fn payload_of(seq: u64) -> Vec<u8> {
    let len = 100 + (seq * 7919 % 2900) as usize;
    format!("<{seq}>")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

/// A wrap marker or a record, where the ring put it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    pos: Pos,
    /// Payload bytes; `None` for a wrap marker.
    len: Option<u64>,
}

impl Entry {
    fn header(&self) -> std::ops::Range<u64> {
        self.pos.off..self.pos.off + HEADER
    }

    fn extent(&self) -> std::ops::Range<u64> {
        self.pos.off..self.payload().end
    }

    fn payload(&self) -> std::ops::Range<u64> {
        let start = self.pos.off + HEADER;
        start..start + self.len.unwrap_or(0)
    }
}

/// A ring file written by the code, and where every record in it is.
struct Built {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Tail to head, wrap markers included.
    entries: Vec<Entry>,
    head: Pos,
}

impl Built {
    fn records(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.len.is_some())
    }

    fn tail_seq(&self) -> u64 {
        self.entries[0].pos.seq
    }

    /// Entries other than the tail's (its wrap marker and record).
    fn past_tail(&self) -> Vec<Entry> {
        let t = self.tail_seq();
        self.entries
            .iter()
            .filter(|e| e.pos.seq > t)
            .copied()
            .collect()
    }

    /// Writes `bytes` (the pristine file, damaged by the caller) to a fresh file.
    fn write_damaged(&self, dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.file(name);
        std::fs::write(&p, bytes).expect("write damaged copy");
        p
    }
}

/// Appends `n` records (wrapping if `n` is large), checkpoints them with sync, then appends
/// `unsynced` more that only the recovery scan finds.
fn build(dir: &TempDir, n: u64, unsynced: u64) -> Built {
    let path = dir.file("pristine.ring");
    let mut ring = Ring::open(&path, &opts()).expect("create ring");
    let mut entries = Vec::new();
    for i in 0..n + unsynced {
        let head = ring.head();
        let p = payload_of(head.seq);
        let at = ring.append(&p, 1_000 + i, false).expect("append");
        assert_eq!(at.seq, head.seq);
        if at.off != head.off {
            entries.push(Entry {
                pos: head,
                len: None,
            });
        }
        entries.push(Entry {
            pos: at,
            len: Some(p.len() as u64),
        });
        if i + 1 == n {
            ring.checkpoint(2_000, true).expect("checkpoint");
            ring.checkpoint(2_001, true).expect("checkpoint");
        }
    }
    let tail = ring.tail();
    let first = entries
        .iter()
        .position(|e| e.pos == tail)
        .expect("tail is an entry");
    entries.drain(..first);
    let head = ring.head();
    drop(ring);
    let bytes = std::fs::read(&path).expect("read ring");
    Built {
        path,
        bytes,
        entries,
        head,
    }
}

fn overlaps(a: &std::ops::Range<u64>, b: &std::ops::Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// What the spec says a reader reports for `damaged` data-area byte ranges: per entry, header
/// damage (resynchronise on the next intact header with a higher seq) or payload damage (skip
/// by stride). Returns the damaged places (position, header?) and the seqs that must still read.
fn predict(b: &Built, damaged: &[std::ops::Range<u64>]) -> (Vec<(Pos, bool)>, BTreeSet<u64>) {
    let hit = |r: std::ops::Range<u64>| damaged.iter().any(|d| overlaps(d, &r));
    let mut places = Vec::new();
    let mut intact = BTreeSet::new();
    let mut i = 0;
    while i < b.entries.len() {
        let e = b.entries[i];
        if hit(e.header()) {
            places.push((e.pos, true));
            i = (i + 1..b.entries.len())
                .find(|&j| !hit(b.entries[j].header()) && b.entries[j].pos.seq > e.pos.seq)
                .unwrap_or(b.entries.len());
            continue;
        }
        if e.len.is_some() {
            if hit(e.payload()) {
                places.push((e.pos, false));
            } else {
                intact.insert(e.pos.seq);
            }
        }
        i += 1;
    }
    (places, intact)
}

/// Reads the whole ring: every record must be the one its seq implies; returns the seqs read
/// and the damaged places met.
fn read_all(path: &Path) -> (BTreeSet<u64>, Vec<(Pos, bool)>) {
    let reader = RingReader::open(path).expect("RingReader::open");
    let view = reader.view();
    let mut seqs = BTreeSet::new();
    let mut places = Vec::new();
    let mut pos = view.tail;
    let mut last = None;
    loop {
        match view.read(pos) {
            Read::Record(r) => {
                assert_eq!(r.pos.seq, pos.seq);
                assert!(
                    r.payload == payload_of(r.pos.seq).as_slice(),
                    "seq {} returned with a damaged payload",
                    r.pos.seq
                );
                assert!(last < Some(r.pos.seq), "records out of order");
                last = Some(r.pos.seq);
                seqs.insert(r.pos.seq);
                pos = r.next;
            }
            Read::Corrupt { at, damage, next } => {
                assert!(next.seq > at.seq, "reading does not go on after damage");
                places.push((at, !matches!(damage, Damage::Payload { .. })));
                pos = next;
            }
            Read::End => break,
            Read::Overrun { tail } => panic!("overrun reading from the tail: {tail:?}"),
        }
    }
    let verified: Vec<(Pos, bool)> = view
        .verify()
        .into_iter()
        .map(|(p, d, _)| (p, !matches!(d, Damage::Payload { .. })))
        .collect();
    assert_eq!(verified, places, "verify() and reading disagree");
    (seqs, places)
}

struct Inspect {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn inspect(path: &Path) -> Inspect {
    let out = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .arg("inspect")
        .arg(path)
        .arg("--verify")
        .output()
        .expect("run ringrelay inspect");
    Inspect {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The (offset, seq) pairs `inspect --verify` lists as damaged.
fn inspect_places(out: &str) -> Vec<(u64, u64)> {
    out.lines()
        .filter_map(|l| {
            let l = l.trim_start().strip_prefix("offset ")?;
            let off = l.split_whitespace().next()?.parse().ok()?;
            let seq = l.split(" seq ").nth(1)?.split(':').next()?.parse().ok()?;
            Some((off, seq))
        })
        .collect()
}

/// Damages `ranges` of the data area (relative offsets) in a copy, then checks the reader and
/// `inspect` against the prediction.
fn check_damage(
    b: &Built,
    dir: &TempDir,
    name: &str,
    bytes: Vec<u8>,
    ranges: &[std::ops::Range<u64>],
) {
    let path = b.write_damaged(dir, name, &bytes);
    let (want_places, want_intact) = predict(b, ranges);
    assert!(!want_places.is_empty(), "{name}: the damage hit nothing");
    let (seqs, places) = read_all(&path);
    assert_eq!(places, want_places, "{name}: damaged places");
    assert_eq!(seqs, want_intact, "{name}: records read");
    let out = inspect(&path);
    assert_eq!(
        out.code,
        Some(1),
        "{name}: inspect exit code\n{}{}",
        out.stdout,
        out.stderr
    );
    let listed = inspect_places(&out.stdout);
    let want: Vec<(u64, u64)> = want_places.iter().map(|(p, _)| (p.off, p.seq)).collect();
    assert_eq!(
        listed, want,
        "{name}: offsets listed by inspect\n{}",
        out.stdout
    );
    // The writer recovers the same records and keeps going after the damage.
    let mut ring = Ring::open(&path, &opts()).expect("Ring::open a damaged ring");
    assert_eq!(ring.head(), b.head, "{name}: head");
    let seq = ring.append(b"after", 9_999, false).expect("append").seq;
    assert_eq!(seq, b.head.seq);
}

#[test]
fn a_clean_ring_reads_completely_and_inspect_exits_zero() {
    let dir = TempDir::new("clean");
    let b = build(&dir, 1500, 20);
    let (seqs, places) = read_all(&b.path);
    assert!(places.is_empty());
    let want: BTreeSet<u64> = b.records().map(|e| e.pos.seq).collect();
    assert_eq!(seqs, want);
    assert!(b.entries.iter().any(|e| e.len.is_none()), "no wrap marker");
    let out = inspect(&b.path);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("clean"), "{}", out.stdout);
}

#[test]
fn a_file_truncated_mid_record_is_refused_with_a_length_error_naming_the_path() {
    let dir = TempDir::new("trunc");
    let b = build(&dir, 300, 0);
    let mid = b.records().nth(100).unwrap();
    for cut in [
        DATA + mid.pos.off + HEADER + 10,
        DATA + 7,
        100,
        DATA + CAP - 1,
    ] {
        let path = b.write_damaged(&dir, "cut.ring", &b.bytes[..cut as usize]);
        match Ring::open(&path, &opts()) {
            Err(e @ OpenError::Length { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
                assert!(msg.contains("truncated"), "{msg}");
            }
            other => panic!("cut at {cut}: {other:?}"),
        }
        assert!(matches!(
            RingReader::open(&path),
            Err(OpenError::Length { .. })
        ));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            cut,
            "open changed the file"
        );
        // Damage: exit 1 (2 is for a bad command line).
        let out = inspect(&path);
        assert_eq!(out.code, Some(1), "cut at {cut}: {}", out.stderr);
        assert!(
            out.stderr.contains(&*path.to_string_lossy()),
            "{}",
            out.stderr
        );
    }
    // Extended by something else: refused too, and says so.
    let mut longer = b.bytes.clone();
    longer.extend_from_slice(&[0; 4096]);
    let path = b.write_damaged(&dir, "long.ring", &longer);
    let e = Ring::open(&path, &opts()).unwrap_err();
    assert!(matches!(e, OpenError::Length { .. }), "{e:?}");
    assert!(e.to_string().contains("extended"), "{e}");
}

#[test]
fn a_zeroed_page_in_the_data_area_loses_only_the_records_it_touches() {
    let dir = TempDir::new("page");
    let b = build(&dir, 1500, 0);
    let mut rng = Rng(11);
    let mut done = 0;
    while done < 6 {
        // A page-aligned file page inside the data area, away from the tail record (recovery
        // drops a damaged tail record instead of reporting it).
        let page = DATA + rng.below(CAP / 4096) * 4096;
        let rel = (page - DATA)..(page - DATA + 4096);
        let near_tail = b
            .entries
            .iter()
            .any(|e| e.pos.seq == b.tail_seq() && overlaps(&rel, &e.extent()));
        if near_tail || b.records().all(|e| !overlaps(&rel, &e.payload())) {
            continue;
        }
        let mut bytes = b.bytes.clone();
        bytes[page as usize..page as usize + 4096].fill(0);
        check_damage(&b, &dir, &format!("page{done}.ring"), bytes, &[rel]);
        done += 1;
    }
}

#[test]
fn flipped_bits_in_payloads_are_reported_at_exactly_those_records_and_skipped() {
    let dir = TempDir::new("payload");
    let b = build(&dir, 1500, 0);
    let mut rng = Rng(12);
    for round in 0..8 {
        let mut bytes = b.bytes.clone();
        let mut ranges = Vec::new();
        let recs: Vec<Entry> = b
            .past_tail()
            .into_iter()
            .filter(|e| e.len.is_some())
            .collect();
        for _ in 0..1 + round {
            let e = recs[rng.below(recs.len() as u64) as usize];
            let p = e.payload();
            let at = p.start + rng.below(p.end - p.start);
            bytes[(DATA + at) as usize] ^= 1 << rng.below(8);
            ranges.push(at..at + 1);
        }
        check_damage(&b, &dir, &format!("payload{round}.ring"), bytes, &ranges);
    }
}

#[test]
fn flipped_bits_in_record_headers_and_wrap_markers_cost_only_those_records() {
    let dir = TempDir::new("header");
    let b = build(&dir, 1500, 0);
    let mut rng = Rng(13);
    let targets = b.past_tail();
    let markers: Vec<Entry> = targets
        .iter()
        .filter(|e| e.len.is_none())
        .copied()
        .collect();
    assert!(!markers.is_empty());
    for round in 0..10 {
        let mut bytes = b.bytes.clone();
        let mut ranges = Vec::new();
        for k in 0..1 + round % 3 {
            // Never the tail (recovery drops a damaged tail record instead of reporting it).
            let e = if round == 0 && k == 0 {
                markers[0]
            } else {
                targets[rng.below(targets.len() as u64) as usize]
            };
            let at = e.pos.off + rng.below(HEADER);
            bytes[(DATA + at) as usize] ^= 1 << rng.below(8);
            ranges.push(at..at + 1);
        }
        check_damage(&b, &dir, &format!("header{round}.ring"), bytes, &ranges);
    }
}

/// Spec §8 step 4: a damaged tail record is what an append interrupted while overwriting the
/// oldest records leaves, so recovery drops it (and counts it) instead of reporting damage.
#[test]
fn a_damaged_tail_record_is_dropped_by_recovery_and_counted() {
    let dir = TempDir::new("tail");
    let b = build(&dir, 1500, 0);
    let tail_rec = b.records().next().copied().unwrap();
    let mut bytes = b.bytes.clone();
    bytes[(DATA + tail_rec.payload().start + 1) as usize] ^= 0x80;
    let path = b.write_damaged(&dir, "tail.ring", &bytes);
    let reader = RingReader::open(&path).unwrap();
    assert_eq!(reader.recovery.tail_dropped, 1);
    assert_eq!(reader.view().tail.seq, tail_rec.pos.seq + 1);
    drop(reader);
    let (seqs, places) = read_all(&path);
    assert!(places.is_empty());
    assert_eq!(seqs.len(), b.records().count() - 1);
    let out = inspect(&path);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(
        out.stdout.contains("damaged tail records dropped: 1"),
        "{}",
        out.stdout
    );
}

/// Spec §7: a reader that meets a damaged header at (o, n) resynchronises on the first header
/// whose seq is *above* n. When the damaged header is a wrap marker, the record n it pointed to
/// (intact, at offset 0) is skipped with it.
#[test]
fn a_damaged_wrap_marker_costs_the_intact_record_it_pointed_to() {
    let dir = TempDir::new("marker");
    let b = build(&dir, 1500, 0);
    let marker = b.past_tail().into_iter().find(|e| e.len.is_none()).unwrap();
    let mut bytes = b.bytes.clone();
    bytes[(DATA + marker.pos.off + 20) as usize] ^= 4;
    let path = b.write_damaged(&dir, "marker.ring", &bytes);
    let (seqs, places) = read_all(&path);
    assert_eq!(places, vec![(marker.pos, true)]);
    assert!(!seqs.contains(&marker.pos.seq));
    assert!(seqs.contains(&(marker.pos.seq + 1)));
    assert_eq!(seqs.len(), b.records().count() - 1);
}

#[test]
fn random_bit_flips_anywhere_never_yield_a_damaged_record_and_keep_every_intact_one() {
    let dir = TempDir::new("random");
    let b = build(&dir, 1500, 0);
    let mut rng = Rng(14);
    for round in 0..60 {
        let mut bytes = b.bytes.clone();
        let mut ranges = Vec::new();
        for _ in 0..1 + rng.below(12) {
            let at = rng.below(CAP);
            bytes[(DATA + at) as usize] ^= 1 << rng.below(8);
            ranges.push(at..at + 1);
        }
        let path = b.write_damaged(&dir, "random.ring", &bytes);
        let (mut want_places, mut want) = predict(&b, &ranges);
        // A damaged tail record is dropped by recovery (it may be a half-overwritten oldest
        // record), not reported; what follows it is read as usual.
        let (seqs, places) = read_all(&path);
        let reader = RingReader::open(&path).unwrap();
        let dropped = reader.recovery.tail_dropped;
        let tail_seq = reader.view().tail.seq;
        drop(reader);
        if dropped > 0 {
            want_places.retain(|(p, _)| p.seq >= tail_seq);
            want.retain(|&s| s >= tail_seq);
        }
        assert_eq!(places, want_places, "round {round}: damaged places");
        assert_eq!(seqs, want, "round {round}: records read");
    }
}

#[test]
fn damage_past_the_last_checkpoint_is_skipped_and_the_intact_records_after_it_are_kept() {
    let dir = TempDir::new("scan");
    let b = build(&dir, 400, 100);
    // The first record written after the checkpoint, one byte flipped in its payload: the
    // page cache reaches the disk in no order, so damage followed by valid entries.
    let first = b
        .records()
        .find(|e| e.pos.seq == b.head.seq - 100)
        .copied()
        .unwrap();
    for (what, victim, header) in [
        ("payload", first, false),
        ("header", first, true),
        (
            "later",
            b.records()
                .find(|e| e.pos.seq == b.head.seq - 60)
                .copied()
                .unwrap(),
            false,
        ),
    ] {
        let mut bytes = b.bytes.clone();
        let byte = if header {
            victim.pos.off + 9
        } else {
            victim.payload().start + 3
        };
        bytes[(DATA + byte) as usize] ^= 0x10;
        let path = b.write_damaged(&dir, "scan.ring", &bytes);
        let flipped = byte..byte + 1;
        let (want_places, want) = predict(&b, std::slice::from_ref(&flipped));
        assert_eq!(want_places, vec![(victim.pos, header)], "{what}");
        let (seqs, places) = read_all(&path);
        assert_eq!(places, want_places, "{what}: damaged places");
        assert_eq!(seqs, want, "{what}: every intact record is kept");
        let reader = RingReader::open(&path).unwrap();
        let rec = &reader.recovery;
        assert!(
            !rec.torn,
            "{what}: damage followed by valid entries is not a torn tail"
        );
        assert_eq!((rec.damaged, rec.tail_dropped), (1, 0), "{what}");
        assert_eq!(rec.scanned, 99, "{what}");
        assert_eq!(reader.view().head, b.head, "{what}");
        drop(reader);
        let out = inspect(&path);
        assert_eq!(out.code, Some(1), "{what}: {}{}", out.stdout, out.stderr);
        assert_eq!(
            inspect_places(&out.stdout),
            vec![(victim.pos.off, victim.pos.seq)]
        );
        assert!(
            out.stdout.contains("99 records, 1 damaged"),
            "{}",
            out.stdout
        );
        // The writer agrees: it continues after the last intact record.
        let mut ring = Ring::open(&path, &opts()).unwrap();
        assert_eq!(ring.head(), b.head, "{what}");
        assert_eq!(ring.recovery().damaged, 1);
        ring.append(b"new", 10_000, false).unwrap();
        ring.checkpoint(10_001, true).unwrap();
        drop(ring);
        let ring = Ring::open(&path, &opts()).unwrap();
        assert_eq!(ring.head().seq, b.head.seq + 1);
    }
}

#[test]
fn damage_in_the_last_entry_past_the_checkpoint_is_a_torn_tail_and_never_returns() {
    let dir = TempDir::new("torn");
    let b = build(&dir, 400, 100);
    let victim = *b.records().last().unwrap();
    let mut bytes = b.bytes.clone();
    bytes[(DATA + victim.payload().start + 3) as usize] ^= 0x10;
    let path = b.write_damaged(&dir, "torn.ring", &bytes);
    let (seqs, places) = read_all(&path);
    assert!(places.is_empty(), "{places:?}");
    assert_eq!(seqs.last(), Some(&(victim.pos.seq - 1)));
    let reader = RingReader::open(&path).unwrap();
    assert!(reader.recovery.torn, "the torn record is reported");
    assert_eq!(reader.recovery.damaged, 0);
    assert_eq!(reader.view().head, victim.pos);
    drop(reader);
    // The writer agrees, continues at the torn record, and the old records after it never
    // come back (their run is older).
    let mut ring = Ring::open(&path, &opts()).unwrap();
    assert_eq!(ring.head(), victim.pos);
    ring.append(b"new", 10_000, false).unwrap();
    ring.checkpoint(10_001, true).unwrap();
    drop(ring);
    let ring = Ring::open(&path, &opts()).unwrap();
    assert_eq!(ring.head().seq, victim.pos.seq + 1);
    assert_eq!(inspect(&path).code, Some(0));
}

/// Generation of the slot at file offset `at`, read straight from the bytes (spec §4).
fn generation(bytes: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(bytes[at as usize..at as usize + 8].try_into().unwrap())
}

#[test]
fn a_flipped_bit_in_either_metadata_slot_makes_recovery_use_the_other() {
    let dir = TempDir::new("slot");
    let b = build(&dir, 700, 30);
    let current = if generation(&b.bytes, SLOTS[1]) > generation(&b.bytes, SLOTS[0]) {
        1
    } else {
        0
    };
    let mut rng = Rng(15);
    let want: BTreeSet<u64> = b.records().map(|e| e.pos.seq).collect();
    for slot in [0, 1, current, 1 - current] {
        for _ in 0..4 {
            let mut bytes = b.bytes.clone();
            let at = SLOTS[slot] + rng.below(1156);
            bytes[at as usize] ^= 1 << rng.below(8);
            let path = b.write_damaged(&dir, "slot.ring", &bytes);
            let reader = RingReader::open(&path).expect("one good slot is enough");
            assert_eq!(reader.recovery.slot, 1 - slot, "flip at {at}");
            assert_eq!(reader.view().head, b.head, "flip at {at}");
            drop(reader);
            let (seqs, places) = read_all(&path);
            assert!(places.is_empty());
            assert_eq!(seqs, want, "flip at {at}");
            assert_eq!(inspect(&path).code, Some(0));
            let ring = Ring::open(&path, &opts()).expect("open");
            assert_eq!(ring.head(), b.head);
        }
    }
    // Both damaged: refused, clearly.
    let mut bytes = b.bytes.clone();
    bytes[SLOTS[0] as usize + 30] ^= 1;
    bytes[SLOTS[1] as usize + 30] ^= 1;
    let path = b.write_damaged(&dir, "noslot.ring", &bytes);
    let e = Ring::open(&path, &opts()).unwrap_err();
    assert!(matches!(e, OpenError::NoMetadata { .. }), "{e:?}");
    assert!(e.to_string().contains(&*path.to_string_lossy()));
    let out = inspect(&path);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("metadata"), "{}", out.stderr);
}

#[test]
fn a_flipped_bit_in_the_superblock_refuses_the_file_and_never_rewrites_it() {
    let dir = TempDir::new("super");
    let b = build(&dir, 50, 0);
    for bit in (0..128 * 8).step_by(7) {
        let mut bytes = b.bytes.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let path = b.write_damaged(&dir, "sb.ring", &bytes);
        let e = Ring::open(&path, &opts()).unwrap_err();
        if bit < 64 {
            assert!(matches!(e, OpenError::NotARing { .. }), "bit {bit}: {e:?}");
        } else {
            assert!(
                matches!(e, OpenError::DamagedSuperblock { .. }),
                "bit {bit}: {e:?}"
            );
        }
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
        assert!(
            std::fs::read(&path).unwrap() == bytes,
            "open rewrote a refused file"
        );
    }
    let out = inspect(&b.write_damaged(&dir, "sb.ring", &{
        let mut bytes = b.bytes.clone();
        bytes[40] ^= 2;
        bytes
    }));
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("superblock"), "{}", out.stderr);
    // Bytes of the superblock's page past the structure are ignored.
    let mut bytes = b.bytes.clone();
    bytes[2000] ^= 0xff;
    let path = b.write_damaged(&dir, "pad.ring", &bytes);
    Ring::open(&path, &opts()).expect("padding is ignored");
}

/// The build reads format versions 1 to 4 (`buffer-spec.md` §3, §12); any other is refused,
/// by the writer as by `inspect`, naming the version found and the ones this build reads, and
/// the file is left as it was (the writer upgrades only a superblock of a version it reads).
#[test]
fn a_ring_of_another_format_version_is_refused_with_the_version_in_the_message() {
    let dir = TempDir::new("version");
    let b = build(&dir, 10, 0);
    let reads = format!(
        "versions {} to {}",
        ringrelay::ring::format::MIN_VERSION,
        ringrelay::ring::format::VERSION
    );
    for version in [ringrelay::ring::format::VERSION + 1, 0, u32::MAX] {
        let mut bytes = b.bytes.clone();
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let crc = crc32fast::hash(&bytes[..124]);
        bytes[124..128].copy_from_slice(&crc.to_le_bytes());
        let path = b.write_damaged(&dir, "other.ring", &bytes);
        let e = Ring::open(&path, &opts()).unwrap_err();
        assert!(
            matches!(e, OpenError::Version { found, .. } if found == version),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("version {version}")) && msg.contains(&reads),
            "{msg}"
        );
        assert!(
            std::fs::read(&path).unwrap() == bytes,
            "open rewrote a ring of version {version}"
        );
        let e = RingReader::open(&path)
            .err()
            .expect("the reader refuses it too");
        assert!(
            matches!(e, OpenError::Version { found, .. } if found == version),
            "{e:?}"
        );
        let out = inspect(&path);
        assert_eq!(out.code, Some(2));
        assert!(
            out.stderr.contains(&format!("version {version}")),
            "{}",
            out.stderr
        );
        assert!(
            out.stderr.contains(&*path.to_string_lossy()),
            "{}",
            out.stderr
        );
    }
}

#[test]
fn files_that_are_not_rings_are_refused_untouched_and_inspect_exits_two_naming_them() {
    let dir = TempDir::new("notring");
    let mut rng = Rng(16);
    let random: Vec<u8> = (0..DATA + CAP).map(|_| rng.next() as u8).collect();
    let cases: [(&str, Vec<u8>); 4] = [
        ("random.ring", random),
        ("empty.ring", Vec::new()),
        (
            "text.ring",
            b"feed = \"zia\"\nthis is a text file\n".repeat(100),
        ),
        ("magic-only.ring", b"\x89RING\r\n\x1a".to_vec()),
    ];
    for (name, bytes) in cases {
        let path = dir.file(name);
        std::fs::write(&path, &bytes).unwrap();
        let e = Ring::open(&path, &opts()).unwrap_err();
        if name == "magic-only.ring" {
            assert!(matches!(e, OpenError::Length { .. }), "{name}: {e:?}");
        } else {
            assert!(matches!(e, OpenError::NotARing { .. }), "{name}: {e:?}");
        }
        assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
        assert!(
            std::fs::read(&path).unwrap() == bytes,
            "{name} was modified"
        );
        // A ring's magic and nothing else is a truncated ring: damage, exit 1.
        let out = inspect(&path);
        let code = if name == "magic-only.ring" { 1 } else { 2 };
        assert_eq!(out.code, Some(code), "{name}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr.contains(&*path.to_string_lossy()),
            "{name}: {}",
            out.stderr
        );
    }
    let missing = dir.file("missing.ring");
    let out = inspect(&missing);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains(&*missing.to_string_lossy()));
}

/// Rewrites the slot at file offset `at` with `tail_off` and a CRC that matches (spec §4).
fn forge_slot(bytes: &mut [u8], at: u64, tail_off: u64) {
    let s = &mut bytes[at as usize..at as usize + 1156];
    s[24..32].copy_from_slice(&tail_off.to_le_bytes());
    let crc = crc32fast::hash(&s[..1152]);
    s[1152..1156].copy_from_slice(&crc.to_le_bytes());
}

/// A slot whose CRC matches but whose offset lies past the data area (here so far past that
/// `off + 48` overflows) is invalid: recovery uses the other slot, and with both forged the file
/// is refused. Before the fix a debug build (and a fuzzer) panicked on the overflow and a release
/// build accepted the slot.
#[test]
fn a_metadata_slot_with_an_offset_past_the_area_is_invalid_even_with_a_good_crc() {
    let dir = TempDir::new("forged");
    let b = build(&dir, 300, 0);
    let current = if generation(&b.bytes, SLOTS[1]) > generation(&b.bytes, SLOTS[0]) {
        1
    } else {
        0
    };
    for bad in [u64::MAX - 7, u64::MAX - 47, CAP, CAP - 40] {
        let mut bytes = b.bytes.clone();
        forge_slot(&mut bytes, SLOTS[current], bad);
        let path = b.write_damaged(&dir, "forged.ring", &bytes);
        let reader = RingReader::open(&path).expect("the other slot is good");
        assert_eq!(reader.recovery.slot, 1 - current, "tail_off {bad}");
        assert!(reader.view().tail.off + HEADER <= CAP);
        assert_eq!(reader.view().head, b.head);
        drop(reader);
        forge_slot(&mut bytes, SLOTS[1 - current], bad);
        let path = b.write_damaged(&dir, "forged.ring", &bytes);
        let e = RingReader::open(&path).err().expect("both slots forged");
        assert!(matches!(e, OpenError::NoMetadata { .. }), "{e:?}");
        assert_eq!(inspect(&path).code, Some(1));
    }
}
