//! Long life: thousands of laps of a 1 MiB ring with small records, and rings started near the
//! top of the sequence numbers and at the very end of the data area (`Ring::reset_empty_at`),
//! with reopens along the way. Nothing wedges, sequence numbers stay consecutive, every record
//! read is the one its seq implies, seeks still land, cursors keep exact `lost` counts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use ringrelay::ring::{Pos, Read, Ring, RingOptions, WhenFull};

const CAP: u64 = 1 << 20;
const T0: u64 = 1_700_000_000_000_000_000;

fn watchdog() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(150));
            eprintln!("ring_long_life: still running after 150 s; the ring is wedged");
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
            std::env::temp_dir().join(format!("ringrelay-long-{tag}-{}-{n}", std::process::id()));
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

fn opts(max_record: u32) -> RingOptions {
    RingOptions {
        capacity: CAP,
        max_record,
        when_full: WhenFull::DropOldest,
        name: "long".into(),
    }
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The payload of `seq`, `len` bytes: its 8 bytes LE, then filler.
fn payload(seq: u64, len: usize, buf: &mut Vec<u8>) {
    buf.clear();
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.resize(len.max(8), (seq % 251) as u8);
    buf.truncate(len);
}

/// Receive times advance by one every three records, so seeks by time meet equal times.
fn ts_of(seq: u64, first: u64) -> u64 {
    T0 + (seq - first) / 3
}

/// Reads the whole ring and checks it: consecutive, payloads as implied, tail..head.
fn check_ring(ring: &Ring, len_of: &dyn Fn(u64) -> usize, first: u64) {
    let (tail, head) = (ring.tail(), ring.head());
    let mut pos = tail;
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        match ring.read(pos) {
            Read::Record(r) => {
                assert_eq!(r.pos.seq, tail.seq + n, "not consecutive");
                payload(r.pos.seq, len_of(r.pos.seq), &mut buf);
                assert!(r.payload == buf.as_slice(), "payload of seq {}", r.pos.seq);
                assert_eq!(r.ts, ts_of(r.pos.seq, first), "ts of seq {}", r.pos.seq);
                n += 1;
                pos = r.next;
            }
            Read::End => break,
            other => panic!("reading at {pos:?} (tail {tail:?}, head {head:?}): {other:?}"),
        }
    }
    assert_eq!(pos, head);
    assert_eq!(n, head.seq - tail.seq);
    let stats = ring.stats();
    assert_eq!(stats.records, n);
    assert!(
        stats.used > CAP * 3 / 4,
        "a full ring is mostly used: {stats:?}"
    );
}

/// Seeks by seq and by time land on the right records.
fn check_seeks(ring: &Ring, first: u64, salt: u64) {
    let (tail, head) = (ring.tail(), ring.head());
    let span = head.seq - tail.seq;
    for k in 0..32 {
        let seq = tail.seq + mix(salt ^ k) % span;
        let p = ring.seek_seq(seq);
        assert_eq!(p.seq, seq, "seek_seq({seq})");
        match ring.read(p) {
            Read::Record(r) => assert_eq!(r.pos.seq, seq),
            other => panic!("seek_seq({seq}) gave {p:?}: {other:?}"),
        }
        // The first of the records sharing seq's time (but not before the tail).
        let t = ts_of(seq, first);
        let want = (first + (seq - first) / 3 * 3).max(tail.seq);
        assert_eq!(ring.seek_time(t).seq, want, "seek_time({t})");
    }
    assert_eq!(ring.seek_seq(tail.seq.saturating_sub(5)), tail);
    assert_eq!(ring.seek_seq(head.seq), head);
    assert_eq!(ring.seek_time(u64::MAX), head);
    assert_eq!(ring.seek_time(0), tail);
}

/// A ring in use: a `fast` cursor committed close behind the head, a `slow` one that never
/// commits and is pushed along by eviction (so its `lost` is exactly how far it was pushed).
struct Life {
    path: PathBuf,
    opts: RingOptions,
    ring: Ring,
    first: u64,
    fast: usize,
    slow: usize,
    slow_start: u64,
    laps: u64,
}

impl Life {
    fn open(path: PathBuf, opts: RingOptions) -> Life {
        let mut ring = Ring::open(&path, &opts).expect("open ring");
        let fast = ring.cursor("fast").unwrap();
        let slow = ring.cursor("slow").unwrap();
        Life {
            path,
            opts,
            first: ring.head().seq,
            slow_start: ring.cursor_pos(slow).seq,
            ring,
            fast,
            slow,
            laps: 0,
        }
    }

    /// Restarts at `pos` (an empty ring), persisted at once.
    fn reset_at(&mut self, pos: Pos) {
        assert!(self.ring.reset_empty_at(pos), "reset_empty_at({pos:?})");
        assert_eq!((self.ring.tail(), self.ring.head()), (pos, pos));
        self.ring.checkpoint(T0, true).unwrap();
        self.first = pos.seq;
        self.slow_start = self.ring.cursor_pos(self.slow).seq;
        assert_eq!(self.slow_start, pos.seq);
    }

    fn append(&mut self, count: u64, len_of: &dyn Fn(u64) -> usize) {
        let mut buf = Vec::new();
        for _ in 0..count {
            let head = self.ring.head();
            let seq = head.seq;
            payload(seq, len_of(seq), &mut buf);
            let p = self
                .ring
                .append(&buf, ts_of(seq, self.first), false)
                .expect("append");
            assert_eq!(p.seq, seq, "sequence numbers are consecutive");
            if p.off != head.off {
                assert_eq!(p.off, 0, "a record goes at the head or, wrapping, at 0");
            }
            if self.ring.head().off < head.off {
                self.laps += 1;
            }
            if seq.is_multiple_of(64) {
                let next = self.ring.head();
                self.ring.commit(self.fast, next);
            }
        }
        self.check_cursors();
    }

    fn check_cursors(&self) {
        let tail = self.ring.tail();
        assert_eq!(
            self.ring.cursor_lost(self.fast),
            0,
            "the fast cursor lost records"
        );
        let slow = self.ring.cursor_pos(self.slow);
        assert!(slow.seq >= tail.seq);
        assert_eq!(
            self.ring.cursor_lost(self.slow),
            slow.seq - self.slow_start,
            "lost = records the slow cursor was moved past"
        );
        for c in [self.fast, self.slow] {
            let pos = self.ring.cursor_pos(c);
            match self.ring.read(pos) {
                Read::Record(r) => assert_eq!(r.pos.seq, pos.seq),
                Read::End => assert_eq!(pos, self.ring.head()),
                other => panic!("cursor {c} at {pos:?} reads {other:?}"),
            }
        }
    }

    /// Drop and open again (after a checkpoint or not): nothing moves.
    fn reopen(mut self, checkpoint: bool) -> Life {
        if checkpoint {
            self.ring.checkpoint(T0, false).unwrap();
        }
        let (tail, head) = (self.ring.tail(), self.ring.head());
        let stats = self.ring.stats();
        let Life {
            path,
            opts,
            ring,
            first,
            fast,
            slow,
            slow_start,
            laps,
        } = self;
        drop(ring);
        let mut ring = Ring::open(&path, &opts).expect("reopen");
        assert_eq!(ring.cursor("fast").unwrap(), fast);
        assert_eq!(ring.cursor("slow").unwrap(), slow);
        assert_eq!(
            (ring.tail(), ring.head()),
            (tail, head),
            "reopen moved the ring"
        );
        let after = ring.stats();
        assert_eq!(
            (after.records, after.evicted),
            (stats.records, stats.evicted)
        );
        let life = Life {
            path,
            opts,
            ring,
            first,
            fast,
            slow,
            slow_start,
            laps,
        };
        life.check_cursors();
        life
    }
}

#[test]
fn two_thousand_laps_of_small_records_stay_consecutive_and_seekable() {
    let dir = TempDir::new("laps");
    let mut life = Life::open(dir.ring(), opts(4 << 10));
    let len_of = |seq: u64| 8 + (mix(seq) % 40) as usize;
    let start = Instant::now();
    let mut round = 0u64;
    // A debug build is about ten times slower: fewer laps there, all of them in release.
    let laps = if cfg!(debug_assertions) { 200 } else { 2000 };
    while life.laps < laps {
        life.append(20_000, &len_of);
        round += 1;
        if round.is_multiple_of(40) {
            check_ring(&life.ring, &len_of, life.first);
            check_seeks(&life.ring, life.first, round);
        }
        if round.is_multiple_of(50) {
            life = life.reopen(round.is_multiple_of(100));
        }
    }
    check_ring(&life.ring, &len_of, life.first);
    check_seeks(&life.ring, life.first, 0);
    let stats = life.ring.stats();
    eprintln!(
        "{} laps, {} records, {:.1} s",
        life.laps,
        stats.next_seq,
        start.elapsed().as_secs_f64()
    );
    assert!(stats.evicted > laps * 10_000);
}

/// Rings started at the very end of the data area (the first record wraps at once) and ten
/// million records below the top of the sequence numbers, run for hundreds of laps with records
/// up to the maximum size, reopened along the way (with and without a checkpoint first).
#[test]
fn rings_started_near_the_top_of_seq_and_the_end_of_the_area_run_many_laps() {
    let start_seq = u64::MAX - 10_000_000;
    // Mostly small records, now and then one of the maximum size (64 KiB).
    let len_of = |seq: u64| match mix(seq) % 1000 {
        0 => 64 << 10,
        1..=9 => (mix(seq ^ 1) % (64 << 10)) as usize,
        r => (r % 120) as usize,
    };
    for (k, off) in [
        CAP - 48,
        CAP - 56,
        CAP - 4096,
        CAP - (64 << 10) - 40,
        CAP / 2 + 8,
    ]
    .into_iter()
    .enumerate()
    {
        let dir = TempDir::new("top");
        let mut life = Life::open(dir.ring(), opts(64 << 10));
        life.reset_at(Pos::at(off, start_seq));
        life = life.reopen(false);
        assert_eq!(life.ring.head(), Pos::at(off, start_seq));
        for chunk in 0..8u64 {
            life.append(60_000, &len_of);
            check_ring(&life.ring, &len_of, life.first);
            check_seeks(&life.ring, life.first, chunk);
            life = life.reopen(chunk % 2 == 0);
        }
        assert!(life.laps > 40, "offset {off}: only {} laps", life.laps);
        // This one runs to one below the top: u64::MAX - 1 is the next seq. (About 9.5 million
        // appends: a second in release, a minute in a debug build, which skips it.)
        if k == 0 && !cfg!(debug_assertions) {
            let left = u64::MAX - 1 - life.ring.head().seq;
            life.append(left, &len_of);
            assert_eq!(life.ring.head().seq, u64::MAX - 1);
            life = life.reopen(false);
            assert_eq!(life.ring.head().seq, u64::MAX - 1);
            check_ring(&life.ring, &len_of, life.first);
            check_seeks(&life.ring, life.first, 99);
        }
    }
}

#[test]
fn reset_empty_at_refuses_a_ring_with_records_and_impossible_positions() {
    let dir = TempDir::new("reset");
    let mut ring = Ring::open(&dir.ring(), &opts(4 << 10)).unwrap();
    for bad in [CAP - 40, CAP, 12, u64::MAX - 7] {
        assert!(!ring.reset_empty_at(Pos::at(bad, 5)), "off {bad}");
    }
    assert_eq!(ring.head(), Pos::default());
    ring.append(b"x", T0, false).unwrap();
    assert!(!ring.reset_empty_at(Pos::at(64, 5)));
    assert_eq!(ring.head().seq, 1);
}
