//! Model-based tests of the ring: random sequences of appends (plain entries, and lines entries
//! through `reserve` / `reserved_mut` / `commit_lines`), reads, commits, checkpoints, reopens and
//! seeks on a real 1 MiB ring file, checked step by step against an in-memory model.
//!
//! The model lays entries out on its own, from `buffer-spec.md` §5–6 only (stride, wrap markers,
//! eviction of whole entries while free bytes are fewer than the room needed), so it predicts the
//! tail, the head, every cursor's position and `lost` count, and — for `block` — exactly which
//! appends and reservations are refused. A lines entry holds `count` records with consecutive
//! sequence numbers; a reservation evicts for the room of its longest body before anything is
//! written, and the entry committed then takes the stride of its actual length. Every record is
//! read back where the model says it is (entry offset, sequence number, offset in the body). What
//! the ring persists follows §4 and §8–9: cursors reach the file only when metadata is written (a
//! checkpoint, the automatic write after a quarter of the capacity, an open), as the offset of the
//! entry holding their record and its sequence number.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use ringrelay::ring::{AppendError, NotReserved, Pos, Read, Record, Ring, RingOptions, WhenFull};

const CAP: u64 = 1 << 20;
const MAX_RECORD: u32 = 64 << 10;
const HEADER: u64 = 48;
/// The largest body a reservation may ask for in this ring ([`Ring::lines_max`]): a lines entry
/// may hold up to 1 MiB (§5), but no entry (its chunk table included) takes more than a quarter
/// of the ring.
const LINES_MAX: u64 = lines_body_fitting(CAP / 4 - HEADER);
/// §5: a chunked lines entry has a table of 8 bytes per 4096 bytes of body after its body.
const CHUNK: u64 = 4096;
const T0: u64 = 1_700_000_000_000_000_000;
const CURSORS: [&str; 2] = ["siem-a", "siem-b"];

/// Ends the whole test binary if it runs longer than `limit` (a wedged ring must not hang CI).
fn watchdog(limit: Duration) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            eprintln!("ring_model: still running after {limit:?}; a ring operation is wedged");
            std::process::exit(3);
        });
    });
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d =
            std::env::temp_dir().join(format!("ringrelay-model-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        TempDir(d)
    }

    fn ring(&self) -> PathBuf {
        self.0.join("feed.ring")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn opts(when_full: WhenFull) -> RingOptions {
    RingOptions {
        capacity: CAP,
        max_record: MAX_RECORD,
        when_full,
        name: "model".into(),
    }
}

fn stride(len: u64) -> u64 {
    (HEADER + len + 7) & !7
}

/// §5: the stride of a chunked lines entry (every lines entry the code writes).
fn lines_stride(len: u64) -> u64 {
    stride(len + 8 * len.div_ceil(CHUNK))
}

/// The longest lines body whose entry, chunk table included, fits in `bytes` after its header.
const fn lines_body_fitting(bytes: u64) -> u64 {
    let per = CHUNK + 8;
    (bytes / per) * CHUNK + (bytes % per).saturating_sub(8)
}

/// `buffer-spec.md` §6: fewer than a header's bytes before the end are never used.
fn norm(off: u64) -> u64 {
    if off + HEADER > CAP {
        0
    } else {
        off
    }
}

/// A small deterministic generator for payloads, lengths and times.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A data entry as the model holds it.
#[derive(Clone, Debug)]
struct Data {
    off: u64,
    seq: u64,
    ts: u64,
    truncated: bool,
    /// A lines entry: `body` is its records, each followed by an LF. Otherwise `body` is the
    /// one record's payload.
    lines: bool,
    body: Vec<u8>,
    /// Where each record starts in `body`.
    starts: Vec<usize>,
}

/// One record as the model says a read returns it.
#[derive(Clone, Copy, Debug)]
struct Rec<'a> {
    pos: Pos,
    ts: u64,
    truncated: bool,
    payload: &'a [u8],
    /// In a lines entry: this record and the rest of the entry, each followed by an LF.
    rest: Option<&'a [u8]>,
    /// Records from this one to the end of its entry.
    left: u64,
    next: Pos,
    /// The position after the entry.
    entry_next: Pos,
}

impl Data {
    fn plain(payload: &[u8], ts: u64, truncated: bool) -> Data {
        Data {
            off: 0,
            seq: 0,
            ts,
            truncated,
            lines: false,
            body: payload.to_vec(),
            starts: vec![0],
        }
    }

    fn stride(&self) -> u64 {
        if self.lines {
            lines_stride(self.body.len() as u64)
        } else {
            stride(self.body.len() as u64)
        }
    }

    fn lines(records: &[Vec<u8>], ts: u64) -> Data {
        let mut body = Vec::new();
        let mut starts = Vec::new();
        for r in records {
            starts.push(body.len());
            body.extend_from_slice(r);
            body.push(b'\n');
        }
        Data {
            off: 0,
            seq: 0,
            ts,
            truncated: false,
            lines: true,
            body,
            starts,
        }
    }

    fn records(&self) -> u64 {
        self.starts.len() as u64
    }

    fn holds(&self, seq: u64) -> bool {
        (self.seq..self.seq + self.records()).contains(&seq)
    }

    /// Where the next entry goes (or its wrap marker).
    fn next(&self) -> Pos {
        Pos::at(norm(self.off + self.stride()), self.seq + self.records())
    }

    /// Record `i` of the entry; in a lines entry its position says where it starts in the body.
    fn record(&self, i: usize) -> Rec<'_> {
        let start = self.starts[i];
        let end = match (self.lines, self.starts.get(i + 1)) {
            (false, _) => self.body.len(),
            (true, Some(&s)) => s - 1,
            (true, None) => self.body.len() - 1,
        };
        let next = match self.starts.get(i + 1) {
            Some(&s) => Pos {
                off: self.off,
                seq: self.seq + i as u64 + 1,
                sub: s as u32,
            },
            None => self.next(),
        };
        Rec {
            pos: Pos {
                off: self.off,
                seq: self.seq + i as u64,
                sub: start as u32,
            },
            ts: self.ts,
            truncated: self.truncated,
            payload: &self.body[start..end],
            rest: self.lines.then(|| &self.body[start..]),
            left: self.records() - i as u64,
            next,
            entry_next: self.next(),
        }
    }
}

#[derive(Clone, Debug)]
enum Entry {
    Wrap { off: u64, seq: u64 },
    Data(Data),
}

impl Entry {
    fn pos(&self) -> Pos {
        match self {
            Entry::Wrap { off, seq } | Entry::Data(Data { off, seq, .. }) => Pos::at(*off, *seq),
        }
    }

    /// Records it holds (§5): none for a wrap marker.
    fn records(&self) -> u64 {
        match self {
            Entry::Wrap { .. } => 0,
            Entry::Data(d) => d.records(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cur {
    pos: Pos,
    lost: u64,
}

/// Room made by `reserve` and not committed yet.
#[derive(Clone, Copy, Debug)]
struct Reserved {
    /// The entry goes at offset 0, after a wrap marker at the head.
    wraps: bool,
    room: u64,
}

/// How often a run met each case the lines-entry properties are about, by name (see
/// [`CASES`]), so that a generator that stops reaching one of them is noticed.
#[derive(Clone, Debug, Default)]
struct Seen(BTreeMap<&'static str, u32>);

impl Seen {
    fn note(&mut self, case: &'static str) {
        *self.0.entry(case).or_default() += 1;
    }
}

/// The cases [`Seen`] counts.
const CASES: [&str; 14] = [
    "lines entry committed",
    "lines entry wrapped",
    // The room before the end of the lap (at least `min`) was shorter than the body.
    "lines entry cut short",
    "reservation given up",
    "reservation given up, then another append",
    "lines entry evicted",
    "reserve refused: full",
    // `block` refused while a cursor stood past the first record of the oldest entry.
    "refused: a cursor inside the oldest entry",
    "reserve refused: too large",
    "commit inside an entry",
    "commit inside an entry, without sub",
    "read from inside an entry",
    "seek into an entry",
    "reopen with a cursor inside an entry",
];

/// The ring as the spec describes it.
struct Model {
    block: bool,
    /// Wrap markers and data entries from the tail to the head.
    entries: VecDeque<Entry>,
    /// Entries evicted by appends or reservations not followed by an entry (refused under
    /// `block`, or given up), since the last entry or metadata write: their bytes are intact,
    /// and recovery (whose tail comes from the newest entry's header or the metadata) brings
    /// them back.
    ghosts: Vec<Entry>,
    head: Pos,
    last_ts: u64,
    evicted: u64,
    cursors: Vec<Cur>,
    /// Cursors as of the last metadata write.
    persisted: Vec<Cur>,
    since_meta: u64,
    reserved: Option<Reserved>,
    seen: Seen,
}

impl Model {
    fn new(block: bool) -> Model {
        Model {
            block,
            entries: VecDeque::new(),
            ghosts: Vec::new(),
            head: Pos::default(),
            last_ts: 0,
            evicted: 0,
            cursors: vec![Cur::default(); CURSORS.len()],
            persisted: vec![Cur::default(); CURSORS.len()],
            since_meta: 0,
            reserved: None,
            seen: Seen::default(),
        }
    }

    fn tail(&self) -> Pos {
        self.entries.front().map_or(self.head, Entry::pos)
    }

    fn used(&self) -> u64 {
        let tail = self.tail();
        if tail.seq == self.head.seq {
            return 0;
        }
        match (self.head.off + CAP - tail.off) % CAP {
            0 => CAP,
            d => d,
        }
    }

    fn records(&self) -> u64 {
        self.entries.iter().map(Entry::records).sum()
    }

    /// Every record from the tail to the head.
    fn data(&self) -> impl Iterator<Item = Rec<'_>> + '_ {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Data(d) => Some(d),
                Entry::Wrap { .. } => None,
            })
            .flat_map(|d| (0..d.starts.len()).map(move |i| d.record(i)))
    }

    fn entry_of(&self, seq: u64) -> Option<&Data> {
        self.entries.iter().find_map(|e| match e {
            Entry::Data(d) if d.holds(seq) => Some(d),
            _ => None,
        })
    }

    fn record(&self, seq: u64) -> Option<Rec<'_>> {
        self.entry_of(seq).map(|d| d.record((seq - d.seq) as usize))
    }

    /// The offsets at which sequence number `seq` may be read: its entry's, and that of the wrap
    /// marker before it if it is the entry's first record and the marker is still held.
    fn positions_of(&self, seq: u64) -> Vec<u64> {
        self.entries
            .iter()
            .filter(|e| match e {
                Entry::Wrap { seq: s, .. } => *s == seq,
                Entry::Data(d) => d.holds(seq),
            })
            .map(|e| e.pos().off)
            .collect()
    }

    fn write_meta(&mut self) {
        self.persisted = self.cursors.clone();
        self.ghosts.clear();
        self.since_meta = 0;
    }

    fn evict_one(&mut self) {
        let e = self
            .entries
            .pop_front()
            .expect("eviction from an empty ring");
        self.evicted += e.records();
        if e.records() > 1 {
            self.seen.note("lines entry evicted");
        }
        self.ghosts.push(e);
        let next = self.tail();
        for c in &mut self.cursors {
            if c.pos.seq < next.seq {
                c.lost += next.seq - c.pos.seq;
                c.pos = next;
            }
        }
    }

    /// §6 "Full ring": evicts whole entries until `need` bytes are free; under `block`, only an
    /// entry every cursor has passed (all its records; a wrap marker, its sequence number).
    fn make_room(&mut self, need: u64) -> Result<(), AppendError> {
        while CAP - self.used() < need {
            let oldest = self.entries.front().expect("a full ring holds entries");
            let (first, end) = (oldest.pos().seq, oldest.pos().seq + oldest.records().max(1));
            let min_cursor = self.cursors.iter().map(|c| c.pos.seq).min().unwrap();
            if self.block && min_cursor < end {
                if min_cursor > first {
                    self.seen.note("refused: a cursor inside the oldest entry");
                }
                return Err(AppendError::Full);
            }
            self.evict_one();
        }
        Ok(())
    }

    /// Writes `d` at the head (at 0 after a wrap marker if `wraps`), room made.
    fn write_entry(&mut self, wraps: bool, mut d: Data) -> Pos {
        let h = self.head;
        let s = d.stride();
        let need = if wraps { CAP - h.off + s } else { s };
        self.ghosts.clear();
        d.ts = d.ts.max(self.last_ts);
        d.seq = h.seq;
        d.off = if wraps {
            self.entries.push_back(Entry::Wrap {
                off: h.off,
                seq: h.seq,
            });
            0
        } else {
            h.off
        };
        let at = Pos::at(d.off, d.seq);
        self.head = d.next();
        self.last_ts = d.ts;
        self.entries.push_back(Entry::Data(d));
        self.since_meta += need;
        if self.since_meta > CAP / 4 {
            self.write_meta();
        }
        at
    }

    fn append(&mut self, payload: &[u8], ts: u64, truncated: bool) -> Result<Pos, AppendError> {
        if self.reserved.take().is_some() {
            self.seen.note("reservation given up, then another append");
        }
        if payload.len() > MAX_RECORD as usize {
            return Err(AppendError::TooLarge);
        }
        let s = stride(payload.len() as u64);
        let h = self.head;
        let wraps = h.off + s > CAP;
        self.make_room(if wraps { CAP - h.off + s } else { s })?;
        Ok(self.write_entry(wraps, Data::plain(payload, ts, truncated)))
    }

    /// Room at the head for a lines body of `max` bytes, or of what is left before the end of
    /// the lap if that is at least `min` (`Ring::reserve`): an entry that does not fit there
    /// wraps (§6). Eviction makes that room before anything is written (§6, write order).
    fn reserve(&mut self, min: u64, max: u64) -> Result<u64, AppendError> {
        if self.reserved.take().is_some() {
            self.seen.note("reservation given up, then another append");
        }
        if max > LINES_MAX {
            self.seen.note("reserve refused: too large");
            return Err(AppendError::TooLarge);
        }
        let h = self.head;
        let to_end = lines_body_fitting(CAP - h.off - HEADER);
        let wraps = to_end < min;
        let room = if wraps { max } else { max.min(to_end) };
        let s = lines_stride(room);
        let result = self.make_room(if wraps { CAP - h.off + s } else { s });
        if result.is_err() {
            self.seen.note("reserve refused: full");
        }
        result?;
        self.reserved = Some(Reserved { wraps, room });
        Ok(room)
    }

    /// Commits `records` (LF-terminated in the reserved room) as one lines entry.
    fn commit_lines(&mut self, records: &[Vec<u8>], ts: u64) -> Pos {
        let r = self.reserved.take().expect("commit without a reservation");
        let d = Data::lines(records, ts);
        assert!(
            d.body.len() as u64 <= r.room,
            "the test wrote past its room"
        );
        self.seen.note("lines entry committed");
        if r.wraps {
            self.seen.note("lines entry wrapped");
        }
        self.write_entry(r.wraps, d)
    }

    fn commit(&mut self, i: usize, pos: Pos) {
        let tail = self.tail();
        self.cursors[i].pos = if pos.seq < tail.seq { tail } else { pos };
    }

    /// Drop and open: recovery keeps every entry, brings back what appends and reservations
    /// not followed by an entry evicted, restores the persisted cursors and puts them back inside
    /// the ring (§8 step 5). A cursor on disk is the offset of its record's entry and the
    /// record's sequence number (§4): the ring finds the record in the entry again, and may keep
    /// where it starts in the body.
    fn reopen(&mut self) {
        for g in self.ghosts.drain(..).rev() {
            self.evicted -= g.records();
            self.entries.push_front(g);
        }
        self.reserved = None;
        let (tail, head) = (self.tail(), self.head);
        let mut cursors = self.persisted.clone();
        for c in &mut cursors {
            if c.pos.seq < tail.seq {
                c.lost += tail.seq - c.pos.seq;
                c.pos = tail;
            } else if c.pos.seq >= head.seq {
                c.pos = head;
            } else {
                let sub = self
                    .record(c.pos.seq)
                    .expect("a record inside the ring")
                    .pos
                    .sub;
                if sub != 0 {
                    self.seen.note("reopen with a cursor inside an entry");
                }
                c.pos.sub = sub;
            }
        }
        self.cursors = cursors;
        self.write_meta();
    }
}

#[derive(Clone, Debug)]
enum Action {
    /// `count` plain entries with lengths, fills, times and flags drawn from `seed`.
    Append {
        count: u8,
        seed: u64,
    },
    /// One lines entry: `reserve(min, max)`, records written into the room, `commit_lines`;
    /// records, lengths, `min`, `max` and time drawn from `seed`. Without `commit`, or when not
    /// even the first record fits the room, the reservation is given up (nothing is written).
    Lines {
        seed: u64,
        commit: bool,
    },
    /// Read from cursor `cursor` to the head; then commit it there if `commit`.
    Read {
        cursor: usize,
        commit: bool,
    },
    /// Commit cursor `cursor` to the record `at` per mille of the way from tail to head (or, if
    /// `stale`, to a position long overwritten). With `bare`, the position names the record by
    /// its entry and sequence number only, as a cursor read back from the file does.
    Commit {
        cursor: usize,
        at: u16,
        stale: bool,
        bare: bool,
    },
    Reopen,
    Checkpoint {
        sync: bool,
    },
    /// Start the disk writes of what was appended (changes nothing a reader sees).
    Writeback,
    SeekSeq {
        at: u16,
    },
    SeekTime {
        at: u16,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (1u8..=40, any::<u64>()).prop_map(|(count, seed)| Action::Append { count, seed }),
        6 => (any::<u64>(), prop::bool::weighted(0.9))
            .prop_map(|(seed, commit)| Action::Lines { seed, commit }),
        3 => (0..CURSORS.len(), any::<bool>())
            .prop_map(|(cursor, commit)| Action::Read { cursor, commit }),
        3 => (0..CURSORS.len(), 0u16..=1000, prop::bool::weighted(0.1), any::<bool>())
            .prop_map(|(cursor, at, stale, bare)| Action::Commit { cursor, at, stale, bare }),
        1 => Just(Action::Reopen),
        1 => any::<bool>().prop_map(|sync| Action::Checkpoint { sync }),
        2 => Just(Action::Writeback),
        2 => (0u16..=1000).prop_map(|at| Action::SeekSeq { at }),
        2 => (0u16..=1000).prop_map(|at| Action::SeekTime { at }),
    ]
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    prop::collection::vec(action(), 1..360)
}

fn open(path: &Path, when_full: WhenFull) -> (Ring, Vec<usize>) {
    let mut ring = Ring::open(path, &opts(when_full)).expect("open ring");
    let ids = CURSORS
        .iter()
        .map(|n| ring.cursor(n).expect("cursor"))
        .collect();
    (ring, ids)
}

fn le64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

/// The cursors `ids` as the current metadata slot of the file holds them, read by the offsets of
/// `buffer-spec.md` §4: the valid slot (CRC of bytes 0..1152 at 1152) with the higher
/// generation; a cursor is its entry's offset, its record's sequence number and `lost`.
fn cursors_on_disk(path: &Path, ids: &[usize]) -> Vec<Cur> {
    let mut head = vec![0u8; 12288];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .expect("read the metadata slots");
    let slot = [4096, 8192]
        .map(|at| &head[at..at + 1156])
        .into_iter()
        .filter(|s| crc32fast::hash(&s[..1152]).to_le_bytes() == s[1152..1156])
        .max_by_key(|s| le64(s))
        .expect("a valid metadata slot");
    ids.iter()
        .zip(CURSORS)
        .map(|(&id, name)| {
            // At 128 + 64 * i: name (32 bytes), seq, off, lost (u64 each).
            let c = &slot[128 + 64 * id..128 + 64 * (id + 1)];
            let mut want = [0u8; 32];
            want[..name.len()].copy_from_slice(name.as_bytes());
            assert_eq!(c[..32], want, "cursor {id} on disk is not {name}");
            Cur {
                pos: Pos::at(le64(&c[40..]), le64(&c[32..])),
                lost: le64(&c[48..]),
            }
        })
        .collect()
}

/// Everything observable about the ring agrees with the model.
fn check(ring: &mut Ring, ids: &[usize], m: &Model, step: usize) {
    let tail = m.tail();
    assert_eq!(ring.tail(), tail, "step {step}: tail");
    assert_eq!(ring.head(), m.head, "step {step}: head");
    let s = ring.stats();
    assert_eq!(m.records(), m.head.seq - tail.seq, "model is inconsistent");
    assert_eq!(s.records, m.records(), "step {step}: records");
    assert_eq!(s.first_seq, tail.seq, "step {step}: first_seq");
    assert_eq!(s.next_seq, m.head.seq, "step {step}: next_seq");
    assert_eq!(s.used, m.used(), "step {step}: used bytes");
    assert_eq!(s.evicted, m.evicted, "step {step}: evicted");
    assert_eq!(s.oldest_ts, m.data().next().map(|r| r.ts), "step {step}");
    assert_eq!(
        s.newest_ts,
        (m.records() > 0).then_some(m.last_ts),
        "step {step}"
    );
    for (i, &id) in ids.iter().enumerate() {
        // A cursor names its record by entry and sequence number; where the record starts in
        // the entry's body is there only once the ring has looked for it (0 otherwise).
        let (got, want) = (ring.cursor_pos(id), m.cursors[i].pos);
        assert_eq!(got.recheck(), want.recheck(), "step {step}: cursor {i}");
        assert!(
            got.sub == 0 || got.sub == want.sub,
            "step {step}: cursor {i} at {got:?}, its record at {want:?}"
        );
        assert_eq!(
            ring.cursor_lost(id),
            m.cursors[i].lost,
            "step {step}: lost {i}"
        );
        if m.block {
            assert!(
                ring.cursor_pos(id).seq >= ring.tail().seq,
                "step {step}: block ring dropped records cursor {i} had not delivered"
            );
        }
    }
    // A reservation lasts until its commit, or until another append or reservation.
    assert_eq!(
        ring.reserved_mut().len() as u64,
        m.reserved.map_or(0, |r| r.room),
        "step {step}: reserved room"
    );
}

/// `r`, read from the ring, is the record the model holds as `want`: position (with its offset
/// in a lines body), time, flag, payload, the position after it, and the LF-terminated run of the
/// rest of its entry that a newline-framed output sends (for a plain entry, the payload and the
/// LF the writer puts in the first padding byte, when there is padding, §5).
fn same_record(r: &Record<'_>, want: &Rec<'_>, step: usize) {
    let seq = want.pos.seq;
    assert_eq!(r.pos, want.pos, "step {step}: position of seq {seq}");
    assert_eq!(r.ts, want.ts, "step {step}: ts of seq {seq}");
    assert_eq!(
        r.truncated, want.truncated,
        "step {step}: flag of seq {seq}"
    );
    assert!(
        r.payload == want.payload,
        "step {step}: payload of seq {seq}"
    );
    assert_eq!(r.next, want.next, "step {step}: next after seq {seq}");
    let n = want.payload.len();
    let has_lf = want.rest.is_some() || !n.is_multiple_of(8);
    match r.line {
        Some(line) => assert!(
            has_lf && line.len() == n + 1 && line[..n] == *want.payload && line[n] == b'\n',
            "step {step}: line of seq {seq}"
        ),
        None => assert!(!has_lf, "step {step}: no line for seq {seq}"),
    }
    let lines = r.lines.map(|l| (l.bytes, l.records, l.next));
    let expected = match want.rest {
        Some(rest) => Some((rest, want.left, want.entry_next)),
        None => r.line.map(|line| (line, 1, want.next)),
    };
    assert_eq!(lines, expected, "step {step}: lines from seq {seq}");
}

/// Each cursor's position reads as the record it names (after every single append: eviction
/// moves cursors, and the next append may overwrite what a stale position points at).
fn cursors_read_their_record(ring: &Ring, ids: &[usize], m: &Model, step: usize) {
    for &id in ids {
        let pos = ring.cursor_pos(id);
        if pos.seq >= ring.head().seq {
            continue;
        }
        match ring.read(pos) {
            Read::Record(r) => {
                let want = m.record(pos.seq).expect("the cursor's record in the model");
                same_record(&r, &want, step);
            }
            other => panic!("step {step}: cursor {id} at {pos:?} reads {other:?}"),
        }
    }
}

/// Reads from `from` to the head; every record must be the model's, in order, and chain.
fn read_all(ring: &Ring, m: &Model, from: Pos, step: usize) -> Pos {
    let mut expected = m.data().skip_while(|r| r.pos.seq < from.seq);
    let mut pos = from;
    loop {
        match ring.read(pos) {
            Read::Record(r) => {
                let want = expected
                    .next()
                    .unwrap_or_else(|| panic!("step {step}: record {:?} past the model", r.pos));
                same_record(&r, &want, step);
                pos = r.next;
            }
            Read::End => {
                assert!(expected.next().is_none(), "step {step}: read ended early");
                assert_eq!(pos, m.head, "step {step}: end is not the head");
                return pos;
            }
            other => panic!("step {step}: reading from {from:?} met {other:?} at {pos:?}"),
        }
    }
}

/// `n` records of 0 to 1999 bytes (a sixth of them empty), with no LF in them.
fn lines_records(rng: &mut Rng, n: u64) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| {
            let len = if rng.below(6) == 0 {
                0
            } else {
                rng.below(2000)
            };
            let mut r = vec![0u8; len as usize];
            rng.fill(&mut r);
            for b in r.iter_mut().filter(|b| **b == b'\n') {
                *b = b'\r';
            }
            r
        })
        .collect()
}

/// Writes `records`, each followed by an LF, into the room reserved (`room` bytes) and commits
/// them as a lines entry, in the ring and in the model.
fn commit_lines(
    ring: &mut Ring,
    m: &mut Model,
    records: &[Vec<u8>],
    room: u64,
    ts: u64,
    step: usize,
) {
    let buf = ring.reserved_mut();
    assert_eq!(buf.len() as u64, room, "step {step}: reserved_mut");
    let mut len = 0;
    for r in records {
        buf[len..len + r.len()].copy_from_slice(r);
        buf[len + r.len()] = b'\n';
        len += r.len() + 1;
    }
    let want = m.commit_lines(records, ts);
    let got = ring.commit_lines(len, records.len() as u32, ts);
    assert_eq!(
        got,
        Ok(want),
        "step {step}: commit_lines({len}, {})",
        records.len()
    );
}

/// Reading at what a seek for `seq` returned gives that record (the tail's, below the tail).
fn seek_reads_its_record(ring: &Ring, m: &Model, got: Pos, seq: u64, step: usize) {
    if seq >= m.head.seq {
        return;
    }
    let want = m
        .record(seq.max(m.tail().seq))
        .expect("a record inside the ring");
    match ring.read(got) {
        Read::Record(r) => same_record(&r, &want, step),
        other => panic!("step {step}: seek to {seq} → {got:?} → {other:?}"),
    }
}

/// Runs `actions` on a new ring and on the model, checking after every step; returns the cases
/// the run met.
/// The cursors in the file's current metadata slot are those the model persisted last, each
/// naming its entry (no in-body offset reaches the disk).
fn assert_cursors_persisted(path: &Path, ids: &[usize], m: &Model, step: usize) {
    let persisted: Vec<Cur> = m
        .persisted
        .iter()
        .map(|c| Cur {
            pos: c.pos.recheck(),
            ..*c
        })
        .collect();
    assert_eq!(
        cursors_on_disk(path, ids),
        persisted,
        "step {step}: cursors on disk"
    );
}

fn run_actions(when_full: WhenFull, actions: &[Action]) -> Seen {
    watchdog(Duration::from_secs(240));
    let dir = TempDir::new(if when_full == WhenFull::Block {
        "block"
    } else {
        "drop"
    });
    let path = dir.ring();
    let mut m = Model::new(when_full == WhenFull::Block);
    let (mut ring, mut ids) = open(&path, when_full);
    assert_eq!(ring.lines_max() as u64, LINES_MAX, "lines_max");
    // Cursors exist on disk from the start, so a reopen finds them.
    ring.checkpoint(1, false).unwrap();
    m.write_meta();
    let mut clock = T0;
    for (step, a) in actions.iter().enumerate() {
        match *a {
            Action::Append { count, seed } => {
                let mut rng = Rng(seed);
                for _ in 0..count {
                    let len = match rng.below(200) {
                        0 => MAX_RECORD as usize + 1,
                        1..=4 => rng.below(u64::from(MAX_RECORD) + 1) as usize,
                        _ => rng.below(3000) as usize,
                    };
                    let mut payload = vec![0u8; len];
                    rng.fill(&mut payload);
                    // Receive times mostly advance, sometimes repeat or go back a little.
                    clock = (clock + rng.below(12_000)).saturating_sub(2_000);
                    let truncated = rng.below(7) == 0;
                    let want = m.append(&payload, clock, truncated);
                    let got = ring.append(&payload, clock, truncated);
                    assert_eq!(got, want, "step {step}: append of {len} bytes");
                    cursors_read_their_record(&ring, &ids, &m, step);
                }
            }
            Action::Lines { seed, commit } => {
                let mut rng = Rng(seed);
                let n = 1 + rng.below(40);
                let records = lines_records(&mut rng, n);
                let body = records.iter().map(|r| r.len() as u64 + 1).sum::<u64>();
                let max = match rng.below(16) {
                    0 => LINES_MAX + 1 + rng.below(4096),
                    1 => LINES_MAX,
                    2..=5 => body + rng.below(100),
                    6..=8 => body + rng.below(40_000),
                    _ => body,
                };
                // The body room left before the end of the lap: a `min` above it wraps.
                let to_end = CAP - m.head.off - HEADER;
                let min = match rng.below(8) {
                    0 => 0,
                    1 => records[0].len() as u64 + 1,
                    2 => rng.below(max + 1),
                    3 => max,
                    4 => (to_end + rng.below(2)).min(max),
                    _ => body.min(max),
                };
                clock = (clock + rng.below(12_000)).saturating_sub(2_000);
                let want = m.reserve(min, max);
                let got = ring.reserve(min as usize, max as usize);
                assert_eq!(
                    got.map(|room| room as u64),
                    want,
                    "step {step}: reserve({min}, {max})"
                );
                cursors_read_their_record(&ring, &ids, &m, step);
                match want {
                    Err(_) if m.reserved.is_none() => {
                        // Nothing is reserved: there is nothing to commit.
                        assert_eq!(ring.commit_lines(1, 1, clock), Err(NotReserved));
                    }
                    // Too large: a reservation made before is still there.
                    Err(_) => {}
                    Ok(room) => {
                        // What a socket read into the room brings: the records that fit.
                        let fit = records
                            .iter()
                            .scan(0, |end, r| {
                                *end += r.len() as u64 + 1;
                                Some(*end)
                            })
                            .take_while(|&end| end <= room)
                            .count();
                        if commit && fit > 0 {
                            if fit < records.len() {
                                m.seen.note("lines entry cut short");
                            }
                            commit_lines(&mut ring, &mut m, &records[..fit], room, clock, step);
                            cursors_read_their_record(&ring, &ids, &m, step);
                        } else {
                            m.seen.note("reservation given up");
                        }
                    }
                }
            }
            Action::Read { cursor, commit } => {
                let from = ring.cursor_pos(ids[cursor]);
                if m.record(from.seq).is_some_and(|r| r.pos.sub != 0) {
                    m.seen.note("read from inside an entry");
                }
                let end = read_all(&ring, &m, from, step);
                if commit {
                    ring.commit(ids[cursor], end);
                    m.commit(cursor, end);
                }
            }
            Action::Commit {
                cursor,
                at,
                stale,
                bare,
            } => {
                let pos = if stale && m.tail().seq > 0 {
                    // Overwritten long ago: the ring moves it to the tail.
                    Pos::at(8, 0)
                } else {
                    let n = m.records();
                    let k = n * u64::from(at) / 1000;
                    let picked = m.data().nth(k as usize).map(|r| r.pos);
                    match picked {
                        Some(p) if p.sub != 0 && bare => {
                            m.seen.note("commit inside an entry, without sub");
                            p.recheck()
                        }
                        Some(p) if p.sub != 0 => {
                            m.seen.note("commit inside an entry");
                            p
                        }
                        Some(p) => p,
                        None => m.head,
                    }
                };
                ring.commit(ids[cursor], pos);
                m.commit(cursor, pos);
                // The cursor reads as its record, found in its entry by counting LFs without sub.
                cursors_read_their_record(&ring, &ids, &m, step);
            }
            Action::Reopen => {
                drop(ring);
                (ring, ids) = open(&path, when_full);
                m.reopen();
                let rec = ring.recovery();
                assert!(!rec.torn, "step {step}: clean reopen found a torn record");
                assert_eq!(
                    rec.tail_dropped, 0,
                    "step {step}: clean reopen dropped records"
                );
                assert_cursors_persisted(&path, &ids, &m, step);
                cursors_read_their_record(&ring, &ids, &m, step);
            }
            Action::Checkpoint { sync } => {
                ring.checkpoint(clock, sync).unwrap();
                m.write_meta();
                assert_cursors_persisted(&path, &ids, &m, step);
            }
            Action::Writeback => ring.start_writeback().unwrap(),
            Action::SeekSeq { at } => {
                let tail = m.tail();
                let span = m.head.seq - tail.seq + 6;
                let seq = (tail.seq + span * u64::from(at) / 1000).saturating_sub(3);
                let got = ring.seek_seq(seq);
                if seq <= tail.seq {
                    assert_eq!(got, tail, "step {step}: seek_seq({seq}) below the tail");
                } else if seq >= m.head.seq {
                    assert_eq!(got, m.head, "step {step}: seek_seq({seq}) past the head");
                } else {
                    let want = m.record(seq).expect("a record inside the ring").pos;
                    if want.sub != 0 {
                        m.seen.note("seek into an entry");
                    }
                    assert_eq!(got.seq, seq, "step {step}: seek_seq({seq})");
                    assert!(m.positions_of(seq).contains(&got.off), "step {step}");
                    // Where in the body, if the seek says (a record found by reading).
                    assert!(got.sub == 0 || got.sub == want.sub, "step {step}: {got:?}");
                }
                seek_reads_its_record(&ring, &m, got, seq, step);
            }
            Action::SeekTime { at } => {
                let first = m.data().next().map_or(clock, |r| r.ts);
                let span = m.last_ts.saturating_sub(first) + 20_000;
                let t = (first + span * u64::from(at) / 1000).saturating_sub(10_000);
                let want = m.data().find(|r| r.ts >= t).map(|r| r.pos.seq);
                let got = ring.seek_time(t);
                match want {
                    None => assert_eq!(got, m.head, "step {step}: seek_time({t}) past the end"),
                    Some(seq) => {
                        // Records of an entry share its time: the first of them.
                        assert_eq!(got.seq, seq, "step {step}: seek_time({t})");
                        assert_eq!(got.sub, 0, "step {step}: seek_time({t})");
                        assert!(m.positions_of(seq).contains(&got.off), "step {step}");
                        seek_reads_its_record(&ring, &m, got, seq, step);
                    }
                }
            }
        }
        check(&mut ring, &ids, &m, step);
    }
    m.seen
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        max_shrink_iters: 1000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn drop_oldest_ring_agrees_with_the_model_through_wraps_reopens_and_seeks(
        actions in actions()
    ) {
        run_actions(WhenFull::DropOldest, &actions);
    }

    #[test]
    fn block_ring_refuses_exactly_when_the_model_says_and_never_loses_undelivered_records(
        actions in actions()
    ) {
        run_actions(WhenFull::Block, &actions);
    }
}

/// The properties above hold vacuously for a case the generated actions never reach: action
/// lists drawn as the property tests draw theirs (from a fixed seed, alternating the two
/// policies, at most a quarter as many as the property tests run) must reach every case [`Seen`]
/// counts.
#[test]
fn the_generated_actions_reach_every_lines_entry_case_the_model_checks() {
    let mut runner = TestRunner::deterministic();
    let mut seen = Seen::default();
    let reached_all = |seen: &Seen| CASES.iter().all(|c| seen.0.contains_key(c));
    for when_full in [WhenFull::DropOldest, WhenFull::Block].repeat(24) {
        let list = actions()
            .new_tree(&mut runner)
            .expect("generate actions")
            .current();
        for (case, n) in run_actions(when_full, &list).0 {
            *seen.0.entry(case).or_default() += n;
        }
        if reached_all(&seen) {
            break;
        }
    }
    let missing: Vec<_> = CASES.iter().filter(|c| !seen.0.contains_key(*c)).collect();
    assert!(
        missing.is_empty(),
        "never reached: {missing:?} (reached: {seen:?})"
    );
    let unknown: Vec<_> = seen.0.keys().filter(|c| !CASES.contains(c)).collect();
    assert!(unknown.is_empty(), "cases not in CASES: {unknown:?}");
}

/// A lagging cursor is moved by eviction to the position after the record it lost: when that
/// record was the last before a wrap, the position is the wrap marker's. The next eviction
/// removes the marker (the tail goes to offset 0 with the same sequence number, so the cursor is
/// not moved again) and the next lap overwrites the marker's bytes. Reading at the cursor must
/// still return its record, not report damage and skip a lap of records.
#[test]
fn a_lagging_cursor_left_on_an_evicted_wrap_marker_still_reads_its_record() {
    watchdog(Duration::from_secs(240));
    let dir = TempDir::new("marker");
    let (mut ring, ids) = open(&dir.ring(), WhenFull::DropOldest);
    let slow = ids[0];
    let mut on_marker = 0;
    let mut rng = Rng(7);
    let mut lens = Vec::new();
    for i in 0..30_000u64 {
        let len = rng.below(3000) as usize;
        lens.push(len);
        ring.append(&vec![(i % 251) as u8; len], T0 + i, false)
            .unwrap();
        let pos = ring.cursor_pos(slow);
        if pos.seq == ring.tail().seq && pos.off != ring.tail().off {
            on_marker += 1;
        }
        match ring.read(pos) {
            Read::Record(r) => {
                assert_eq!(r.pos.seq, pos.seq);
                let want = vec![(pos.seq % 251) as u8; lens[pos.seq as usize]];
                assert!(r.payload == want, "payload of seq {}", pos.seq);
            }
            other => panic!("after append {i}: cursor at {pos:?} reads {other:?}"),
        }
    }
    assert!(
        on_marker > 10,
        "the scenario never arose ({on_marker} times)"
    );
}

/// A record written: its payload and, in a lines entry, the entry's offset and where the
/// record starts in the body.
type Written = (Vec<u8>, Option<(u64, u64)>);

/// §5, §7 (version 3): a flipped bit in the body of a lines entry costs exactly the records that
/// touch its 4096-byte chunk (from the LF before a record to its own), by the model's layout of
/// the records in the body; every other record of the ring reads back, and reading reports the
/// lost ones as damage. Random records (1 to 700 bytes, some entries past 1 MiB of ring) and
/// random flips, checkpointed or only found by the recovery scan.
#[test]
fn a_flipped_bit_in_a_lines_entry_loses_only_the_records_touching_its_chunk() {
    watchdog(Duration::from_secs(240));
    let dir = TempDir::new("chunks");
    let path = dir.ring();
    for round in 0..12u64 {
        let _ = std::fs::remove_file(&path);
        let mut rng = Rng(round * 7 + 1);
        let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).expect("open ring");
        // Every record written: its seq, and for a lines record its entry and start.
        let mut written: BTreeMap<u64, Written> = BTreeMap::new();
        let mut entries: Vec<(Pos, Data)> = Vec::new();
        let mut clock = T0;
        for k in 0..40 {
            clock += 1;
            if k % 5 == 4 {
                let seq = ring.head().seq;
                let p = vec![b'p'; 1 + rng.below(500) as usize];
                ring.append(&p, clock, false).unwrap();
                written.insert(seq, (p, None));
                continue;
            }
            let records: Vec<Vec<u8>> = (0..1 + rng.below(400))
                .map(|i| vec![b'a' + (i % 26) as u8; 1 + rng.below(700) as usize])
                .collect();
            let d = Data::lines(&records, clock);
            let len = d.body.len();
            if len > LINES_MAX as usize {
                continue;
            }
            ring.reserve(len, len).unwrap();
            ring.reserved_mut()[..len].copy_from_slice(&d.body);
            let at = ring.commit_lines(len, records.len() as u32, clock).unwrap();
            for (i, r) in records.iter().enumerate() {
                written.insert(
                    at.seq + i as u64,
                    (r.clone(), Some((at.off, d.starts[i] as u64))),
                );
            }
            entries.push((at, d));
        }
        if round % 2 == 0 {
            ring.checkpoint(clock, true).unwrap();
        }
        let tail = ring.tail().seq;
        drop(ring);
        // A lines entry still in the ring, a byte of its body.
        let live: Vec<&(Pos, Data)> = entries.iter().filter(|(p, _)| p.seq >= tail).collect();
        let (at, d) = live[rng.below(live.len() as u64) as usize];
        let byte = rng.below(d.body.len() as u64);
        let chunk = byte / 4096 * 4096..(byte / 4096 + 1) * 4096;
        let mut file = std::fs::read(&path).unwrap();
        file[(12288 + at.off + HEADER + byte) as usize] ^= 1 << rng.below(8);
        let damaged_path = dir.0.join("damaged.ring");
        std::fs::write(&damaged_path, &file).unwrap();
        // The model: record i touches the chunk when its bytes or the LF before it are in it.
        let lost: Vec<u64> = (0..d.starts.len())
            .filter(|&i| {
                let start = d.starts[i] as u64;
                let end = start + written[&(at.seq + i as u64)].0.len() as u64; // its LF
                start.saturating_sub(1) < chunk.end && chunk.start <= end
            })
            .map(|i| at.seq + i as u64)
            .collect();
        assert!(!lost.is_empty() && lost.len() <= 4096 / 2 + 2);
        let reader = ringrelay::ring::RingReader::open(&damaged_path).unwrap();
        let view = reader.view();
        let (mut read, mut skipped) = (Vec::new(), Vec::new());
        let mut pos = view.tail;
        loop {
            match view.read(pos) {
                Read::Record(r) => {
                    let (payload, place) = &written[&r.pos.seq];
                    assert_eq!(
                        r.payload,
                        payload.as_slice(),
                        "round {round} seq {}",
                        r.pos.seq
                    );
                    if let Some((off, start)) = place {
                        assert_eq!(r.pos.off, *off);
                        // In the damaged entry a record is checked again when looked for.
                        if r.pos.sub != ringrelay::ring::view::IN_DAMAGED_ENTRY {
                            assert_eq!(u64::from(r.pos.sub), *start);
                        }
                    }
                    read.push(r.pos.seq);
                    pos = r.next;
                }
                Read::Corrupt { at, next, .. } => {
                    skipped.extend(at.seq..next.seq);
                    pos = next;
                }
                Read::End => break,
                Read::Overrun { tail } => pos = tail,
            }
        }
        assert_eq!(
            skipped, lost,
            "round {round}: the records touching the chunk"
        );
        let want: Vec<u64> = written
            .keys()
            .copied()
            .filter(|s| *s >= view.tail.seq && !lost.contains(s))
            .collect();
        assert_eq!(read, want, "round {round}: every other record");
        assert!(!reader.recovery.torn, "round {round}");
    }
}
