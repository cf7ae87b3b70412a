//! Model-based tests of the ring: random sequences of appends, reads, commits, checkpoints,
//! reopens and seeks on a real 1 MiB ring file, checked step by step against an in-memory model.
//!
//! The model lays records out on its own, from `buffer-spec.md` §5–6 only (stride, wrap markers,
//! eviction while free bytes are fewer than the room needed), so it predicts the tail, the head,
//! every cursor's position and `lost` count, and — for `block` — exactly which appends are
//! refused. What the ring persists follows §8–9: cursors reach the file only when metadata is
//! written (a checkpoint, the automatic write after a quarter of the capacity, an open).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::Duration;

use proptest::prelude::*;
use ringrelay::ring::{AppendError, Pos, Read, Ring, RingOptions, WhenFull};

const CAP: u64 = 1 << 20;
const MAX_RECORD: u32 = 64 << 10;
const HEADER: u64 = 48;
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

#[derive(Clone, Debug)]
enum Entry {
    Wrap {
        off: u64,
        seq: u64,
    },
    Data {
        off: u64,
        seq: u64,
        ts: u64,
        truncated: bool,
        payload: Vec<u8>,
    },
}

impl Entry {
    fn pos(&self) -> Pos {
        match *self {
            Entry::Wrap { off, seq } | Entry::Data { off, seq, .. } => Pos { off, seq },
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cur {
    pos: Pos,
    lost: u64,
}

/// The ring as the spec describes it.
struct Model {
    block: bool,
    /// Wrap markers and records from the tail to the head.
    entries: VecDeque<Entry>,
    /// Entries evicted by appends that were then refused (`block`), since the last record or
    /// metadata write: their bytes are intact, and recovery (whose tail comes from the newest
    /// record's header or the metadata) brings them back.
    ghosts: Vec<Entry>,
    head: Pos,
    last_ts: u64,
    evicted: u64,
    cursors: Vec<Cur>,
    /// Cursors as of the last metadata write.
    persisted: Vec<Cur>,
    since_meta: u64,
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
        self.entries
            .iter()
            .filter(|e| matches!(e, Entry::Data { .. }))
            .count() as u64
    }

    fn data(&self) -> impl Iterator<Item = (Pos, u64, bool, &[u8])> + '_ {
        self.entries.iter().filter_map(|e| match e {
            Entry::Data {
                off,
                seq,
                ts,
                truncated,
                payload,
            } => Some((
                Pos {
                    off: *off,
                    seq: *seq,
                },
                *ts,
                *truncated,
                payload.as_slice(),
            )),
            Entry::Wrap { .. } => None,
        })
    }

    /// The positions at which sequence number `seq` may be read: its record's, and its wrap
    /// marker's if the marker is still held.
    fn positions_of(&self, seq: u64) -> Vec<u64> {
        self.entries
            .iter()
            .map(Entry::pos)
            .filter(|p| p.seq == seq)
            .map(|p| p.off)
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
        if matches!(e, Entry::Data { .. }) {
            self.evicted += 1;
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

    fn append(&mut self, payload: &[u8], ts: u64, truncated: bool) -> Result<Pos, AppendError> {
        if payload.len() > MAX_RECORD as usize {
            return Err(AppendError::TooLarge);
        }
        let s = stride(payload.len() as u64);
        let h = self.head;
        let wraps = h.off + s > CAP;
        let need = if wraps { CAP - h.off + s } else { s };
        while CAP - self.used() < need {
            let min_cursor = self.cursors.iter().map(|c| c.pos.seq).min().unwrap();
            if self.block && min_cursor <= self.tail().seq {
                return Err(AppendError::Full);
            }
            self.evict_one();
        }
        self.ghosts.clear();
        let ts = ts.max(self.last_ts);
        let off = if wraps {
            self.entries.push_back(Entry::Wrap {
                off: h.off,
                seq: h.seq,
            });
            0
        } else {
            h.off
        };
        self.entries.push_back(Entry::Data {
            off,
            seq: h.seq,
            ts,
            truncated,
            payload: payload.to_vec(),
        });
        self.head = Pos {
            off: norm(off + s),
            seq: h.seq + 1,
        };
        self.last_ts = ts;
        self.since_meta += need;
        if self.since_meta > CAP / 4 {
            self.write_meta();
        }
        Ok(Pos { off, seq: h.seq })
    }

    fn commit(&mut self, i: usize, pos: Pos) {
        let tail = self.tail();
        self.cursors[i].pos = if pos.seq < tail.seq { tail } else { pos };
    }

    /// Drop and open: recovery keeps every record, brings back what refused appends evicted,
    /// restores the persisted cursors and puts them back inside the ring (§8 step 5).
    fn reopen(&mut self) {
        for g in self.ghosts.drain(..).rev() {
            if matches!(g, Entry::Data { .. }) {
                self.evicted -= 1;
            }
            self.entries.push_front(g);
        }
        let (tail, head) = (self.tail(), self.head);
        self.cursors = self.persisted.clone();
        for c in &mut self.cursors {
            if c.pos.seq < tail.seq {
                c.lost += tail.seq - c.pos.seq;
                c.pos = tail;
            } else if c.pos.seq >= head.seq {
                c.pos = head;
            }
        }
        self.write_meta();
    }
}

#[derive(Clone, Debug)]
enum Action {
    /// `count` records with lengths, fills, times and flags drawn from `seed`.
    Append {
        count: u8,
        seed: u64,
    },
    /// Read from cursor `cursor` to the head; then commit it there if `commit`.
    Read {
        cursor: usize,
        commit: bool,
    },
    /// Commit cursor `cursor` to the record `at` per mille of the way from tail to head (or, if
    /// `stale`, to a position long overwritten).
    Commit {
        cursor: usize,
        at: u16,
        stale: bool,
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
        3 => (0..CURSORS.len(), any::<bool>())
            .prop_map(|(cursor, commit)| Action::Read { cursor, commit }),
        2 => (0..CURSORS.len(), 0u16..=1000, prop::bool::weighted(0.1))
            .prop_map(|(cursor, at, stale)| Action::Commit { cursor, at, stale }),
        1 => Just(Action::Reopen),
        1 => any::<bool>().prop_map(|sync| Action::Checkpoint { sync }),
        2 => Just(Action::Writeback),
        2 => (0u16..=1000).prop_map(|at| Action::SeekSeq { at }),
        2 => (0u16..=1000).prop_map(|at| Action::SeekTime { at }),
    ]
}

fn open(path: &Path, when_full: WhenFull) -> (Ring, Vec<usize>) {
    let mut ring = Ring::open(path, &opts(when_full)).expect("open ring");
    let ids = CURSORS
        .iter()
        .map(|n| ring.cursor(n).expect("cursor"))
        .collect();
    (ring, ids)
}

/// Everything observable about the ring agrees with the model.
fn check(ring: &Ring, ids: &[usize], m: &Model, step: usize) {
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
    assert_eq!(s.oldest_ts, m.data().next().map(|d| d.1), "step {step}");
    assert_eq!(
        s.newest_ts,
        (m.records() > 0).then_some(m.last_ts),
        "step {step}"
    );
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(
            ring.cursor_pos(id),
            m.cursors[i].pos,
            "step {step}: cursor {i}"
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
}

/// Each cursor's position reads as the record it names (after every single append: eviction
/// moves cursors, and the next append may overwrite what a stale position points at).
fn cursors_read_their_record(ring: &Ring, ids: &[usize], step: usize) {
    for &id in ids {
        let pos = ring.cursor_pos(id);
        if pos.seq >= ring.head().seq {
            continue;
        }
        match ring.read(pos) {
            Read::Record(r) => assert_eq!(r.pos.seq, pos.seq, "step {step}: cursor {id}"),
            other => panic!("step {step}: cursor {id} at {pos:?} reads {other:?}"),
        }
    }
}

/// Reads from `from` to the head; every record must be the model's, in order, and chain.
fn read_all(ring: &Ring, m: &Model, from: Pos, step: usize) -> Pos {
    let mut expected = m.data().skip_while(|d| d.0.seq < from.seq);
    let mut pos = from;
    loop {
        match ring.read(pos) {
            Read::Record(r) => {
                let (p, ts, truncated, payload) = expected
                    .next()
                    .unwrap_or_else(|| panic!("step {step}: record {:?} past the model", r.pos));
                assert_eq!(r.pos, p, "step {step}: record position");
                assert_eq!(r.ts, ts, "step {step}: ts of seq {}", p.seq);
                assert_eq!(r.truncated, truncated, "step {step}: flag of seq {}", p.seq);
                assert!(
                    r.payload == payload,
                    "step {step}: payload of seq {}",
                    p.seq
                );
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

fn run_actions(when_full: WhenFull, actions: &[Action]) {
    watchdog(Duration::from_secs(240));
    let dir = TempDir::new(if when_full == WhenFull::Block {
        "block"
    } else {
        "drop"
    });
    let path = dir.ring();
    let mut m = Model::new(when_full == WhenFull::Block);
    let (mut ring, mut ids) = open(&path, when_full);
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
                    cursors_read_their_record(&ring, &ids, step);
                }
            }
            Action::Read { cursor, commit } => {
                let end = read_all(&ring, &m, ring.cursor_pos(ids[cursor]), step);
                if commit {
                    ring.commit(ids[cursor], end);
                    m.commit(cursor, end);
                }
            }
            Action::Commit { cursor, at, stale } => {
                let pos = if stale && m.tail().seq > 0 {
                    // Overwritten long ago: the ring moves it to the tail.
                    Pos { off: 8, seq: 0 }
                } else {
                    let n = m.records();
                    let k = n * u64::from(at) / 1000;
                    m.data().nth(k as usize).map_or(m.head, |d| d.0)
                };
                ring.commit(ids[cursor], pos);
                m.commit(cursor, pos);
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
            }
            Action::Checkpoint { sync } => {
                ring.checkpoint(clock, sync).unwrap();
                m.write_meta();
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
                    assert_eq!(got.seq, seq, "step {step}: seek_seq({seq})");
                    assert!(m.positions_of(seq).contains(&got.off), "step {step}");
                }
                if seq < m.head.seq {
                    match ring.read(got) {
                        Read::Record(r) => assert_eq!(r.pos.seq, seq.max(tail.seq)),
                        other => panic!("step {step}: seek_seq({seq}) → {got:?} → {other:?}"),
                    }
                }
            }
            Action::SeekTime { at } => {
                let first = m.data().next().map_or(clock, |d| d.1);
                let span = m.last_ts.saturating_sub(first) + 20_000;
                let t = (first + span * u64::from(at) / 1000).saturating_sub(10_000);
                let want = m.data().find(|d| d.1 >= t).map(|d| d.0.seq);
                let got = ring.seek_time(t);
                match want {
                    None => assert_eq!(got, m.head, "step {step}: seek_time({t}) past the end"),
                    Some(seq) => {
                        assert_eq!(got.seq, seq, "step {step}: seek_time({t})");
                        assert!(m.positions_of(seq).contains(&got.off), "step {step}");
                    }
                }
            }
        }
        check(&ring, &ids, &m, step);
    }
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
        actions in prop::collection::vec(action(), 1..300)
    ) {
        run_actions(WhenFull::DropOldest, &actions);
    }

    #[test]
    fn block_ring_refuses_exactly_when_the_model_says_and_never_loses_undelivered_records(
        actions in prop::collection::vec(action(), 1..300)
    ) {
        run_actions(WhenFull::Block, &actions);
    }
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
