//! Lines entries (`buffer-spec.md` §5, format version 3) on a real ring file: records read one
//! by one inside an entry and as one run, cursors inside entries across reopens, `block` waiting
//! for a whole entry, damage to a lines body, seeks into entries, recovery after a crash, and
//! reservations that are given up.

use std::path::{Path, PathBuf};

use ringrelay::ring::{AppendError, Damage, Pos, Read, Ring, RingOptions, WhenFull};

const T0: u64 = 1_700_000_000_000_000_000;

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("ringrelay-lines-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        TempDir(d)
    }

    fn ring(&self) -> PathBuf {
        self.0.join("f.ring")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn opts(when_full: WhenFull) -> RingOptions {
    RingOptions {
        capacity: 1 << 20,
        max_record: 16 << 10,
        when_full,
        name: "t".into(),
    }
}

/// Record `i` of the test streams: its sequence number in its bytes, lengths varying.
fn record(i: u64) -> Vec<u8> {
    let mut r = format!("rec-{i:06}-").into_bytes();
    r.resize(12 + (i as usize * 37) % 300, b'a' + (i % 26) as u8);
    r
}

/// Appends records `first..first + n` as one lines entry.
fn append_lines(ring: &mut Ring, first: u64, n: u64, ts: u64) -> Result<Pos, AppendError> {
    let body: Vec<u8> = (first..first + n)
        .flat_map(|i| {
            let mut r = record(i);
            r.push(b'\n');
            r
        })
        .collect();
    ring.reserve(body.len(), body.len())?;
    ring.reserved_mut()[..body.len()].copy_from_slice(&body);
    Ok(ring
        .commit_lines(body.len(), n as u32, ts)
        .expect("commit what was reserved"))
}

/// Every record from `pos` to the head, one read at a time.
fn collect(ring: &Ring, mut pos: Pos) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        match ring.read(pos) {
            Read::Record(r) => {
                out.push((r.pos.seq, r.payload.to_vec()));
                pos = r.next;
            }
            Read::End => return out,
            other => panic!("unexpected {other:?} at {pos:?}"),
        }
    }
}

fn flip(path: &Path, file_off: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, file_off).unwrap();
    b[0] ^= 0x20;
    f.write_all_at(&b, file_off).unwrap();
}

/// File offset of the data area (`buffer-spec.md` §2).
const DATA: u64 = 12288;

#[test]
fn records_of_a_lines_entry_read_one_by_one_and_as_one_run() {
    let dir = TempDir::new("read");
    let mut ring = Ring::open(&dir.ring(), &opts(WhenFull::DropOldest)).unwrap();
    ring.append(b"plain", T0, false).unwrap();
    let at = append_lines(&mut ring, 1, 10, T0 + 1).unwrap();
    assert_eq!((at.seq, ring.head().seq), (1, 11));
    let want: Vec<(u64, Vec<u8>)> = std::iter::once((0, b"plain".to_vec()))
        .chain((1..11).map(|i| (i, record(i))))
        .collect();
    assert_eq!(collect(&ring, ring.tail()), want);
    // From the fourth record on, the rest of the entry is one piece.
    let mut pos = at;
    for _ in 0..3 {
        let Read::Record(r) = ring.read(pos) else {
            panic!("record")
        };
        pos = r.next;
    }
    let Read::Record(r) = ring.read(pos) else {
        panic!("record")
    };
    assert_eq!((r.pos.seq, r.payload), (4, &record(4)[..]));
    let lines = r.lines.expect("a lines entry's records are LF-terminated");
    let rest: Vec<u8> = (4..11)
        .flat_map(|i| [record(i), b"\n".to_vec()].concat())
        .collect();
    assert_eq!((lines.bytes, lines.records), (&rest[..], 7));
    assert_eq!(lines.next, ring.head());
    // Cut at a record boundary: the records that fit, then the next one's position.
    let two = record(4).len() + record(5).len() + 2;
    let cut = r.lines_within(two + 3).unwrap();
    assert_eq!((cut.bytes.len(), cut.records), (two, 2));
    let Read::Record(after) = ring.read(cut.next) else {
        panic!("record")
    };
    assert_eq!(after.pos.seq, 6);
    assert_eq!(after.payload, &record(6)[..]);
    // At least one record, however small the room.
    assert_eq!(r.lines_within(1).unwrap().records, 1);
}

#[test]
fn a_cursor_inside_a_lines_entry_names_the_same_record_after_a_reopen() {
    let dir = TempDir::new("cursor");
    let path = dir.ring();
    {
        let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
        let c = ring.cursor("siem").unwrap();
        let at = append_lines(&mut ring, 0, 20, T0).unwrap();
        append_lines(&mut ring, 20, 5, T0 + 1).unwrap();
        let mut pos = at;
        for _ in 0..13 {
            let Read::Record(r) = ring.read(pos) else {
                panic!("record")
            };
            pos = r.next;
        }
        assert!(pos.sub > 0, "a position inside the entry: {pos:?}");
        ring.commit(c, pos);
        ring.checkpoint(T0 + 2, true).unwrap();
    }
    let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    let c = ring.cursor("siem").unwrap();
    let pos = ring.cursor_pos(c);
    assert_eq!(pos.seq, 13);
    let got = collect(&ring, pos);
    let want: Vec<(u64, Vec<u8>)> = (13..25).map(|i| (i, record(i))).collect();
    assert_eq!(got, want);
    // A position without `sub` finds its record by counting LFs.
    assert_eq!(collect(&ring, pos.recheck()), want);
}

#[test]
fn block_keeps_an_entry_until_every_cursor_is_past_its_last_record() {
    let dir = TempDir::new("block");
    let mut ring = Ring::open(&dir.ring(), &opts(WhenFull::Block)).unwrap();
    let c = ring.cursor("siem").unwrap();
    let mut next = 0u64;
    let first = append_lines(&mut ring, next, 50, T0).unwrap();
    next += 50;
    loop {
        match append_lines(&mut ring, next, 50, T0) {
            Ok(_) => next += 50,
            Err(AppendError::Full) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    // The cursor on the tail entry's last record: the entry is still needed.
    let mut pos = first;
    for _ in 0..49 {
        let Read::Record(r) = ring.read(pos) else {
            panic!("record")
        };
        pos = r.next;
    }
    assert_eq!(pos.seq, 49);
    ring.commit(c, pos);
    assert_eq!(
        append_lines(&mut ring, next, 50, T0),
        Err(AppendError::Full)
    );
    assert_eq!(ring.tail(), first);
    // Past it: the entry goes, nothing is lost.
    let Read::Record(r) = ring.read(pos) else {
        panic!("record")
    };
    ring.commit(c, r.next);
    append_lines(&mut ring, next, 50, T0).unwrap();
    assert_eq!(ring.tail().seq, 50);
    assert_eq!(ring.cursor_lost(c), 0);
    assert_eq!(ring.stats().evicted, 50);
}

#[test]
fn drop_oldest_evicts_whole_entries_and_counts_a_cursor_inside_one_as_lost() {
    let dir = TempDir::new("drop");
    let mut ring = Ring::open(&dir.ring(), &opts(WhenFull::DropOldest)).unwrap();
    let c = ring.cursor("siem").unwrap();
    let first = append_lines(&mut ring, 0, 40, T0).unwrap();
    let Read::Record(r) = ring.read(first) else {
        panic!("record")
    };
    ring.commit(c, r.next);
    let mut next = 40;
    while ring.tail().seq == 0 {
        append_lines(&mut ring, next, 40, T0).unwrap();
        next += 40;
    }
    assert_eq!(ring.tail().seq, 40, "the first entry went whole");
    assert_eq!(ring.cursor_lost(c), 39);
    assert_eq!(ring.cursor_pos(c), ring.tail());
    let got = collect(&ring, ring.tail());
    let want: Vec<(u64, Vec<u8>)> = (40..next).map(|i| (i, record(i))).collect();
    assert_eq!(got, want);
}

#[test]
fn a_damaged_lines_body_is_skipped_whole_and_a_cursor_inside_it_does_not_deliver_it() {
    let dir = TempDir::new("damage");
    let path = dir.ring();
    let (bad, cursor_pos) = {
        let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
        let c = ring.cursor("siem").unwrap();
        append_lines(&mut ring, 0, 10, T0).unwrap();
        let bad = append_lines(&mut ring, 10, 10, T0 + 1).unwrap();
        append_lines(&mut ring, 20, 10, T0 + 2).unwrap();
        let Read::Record(r) = ring.read(bad) else {
            panic!("record")
        };
        let Read::Record(r) = ring.read(r.next) else {
            panic!("record")
        };
        let second = r.pos;
        ring.commit(c, second);
        ring.checkpoint(T0 + 3, true).unwrap();
        (bad, second)
    };
    // A byte of the sixth record of the middle entry.
    let sixth: usize = (10..15).map(|i| record(i).len() + 1).sum();
    flip(&path, DATA + bad.off + 48 + sixth as u64 + 3);
    let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    // Recovery kept every entry (the damage is older than the checkpoint).
    assert_eq!(ring.head().seq, 30);
    match ring.read(bad) {
        Read::Corrupt { at, damage, next } => {
            assert!(matches!(damage, Damage::Payload { .. }), "{damage:?}");
            assert_eq!((at.seq, next.seq), (10, 20));
        }
        other => panic!("damage must show: {other:?}"),
    }
    // The cursor was inside the damaged entry: reading there checks the entry again.
    let c = ring.cursor("siem").unwrap();
    assert_eq!(ring.cursor_pos(c).seq, cursor_pos.seq);
    match ring.read(ring.cursor_pos(c).recheck()) {
        Read::Corrupt { at, next, .. } => assert_eq!((at.seq, next.seq), (11, 20)),
        other => panic!("damage must show: {other:?}"),
    }
    let verified = ring.view().verify();
    assert_eq!(verified.len(), 1, "{verified:?}");
    assert_eq!((verified[0].0.seq, verified[0].2), (10, 10));
    // No record of it is ever returned by a walk.
    let mut pos = ring.tail();
    let mut seen = Vec::new();
    loop {
        match ring.read(pos) {
            Read::Record(r) => {
                assert_eq!(r.payload, &record(r.pos.seq)[..]);
                seen.push(r.pos.seq);
                pos = r.next;
            }
            Read::Corrupt { next, .. } => pos = next,
            Read::End => break,
            Read::Overrun { tail } => pos = tail,
        }
    }
    let want: Vec<u64> = (0..10).chain(20..30).collect();
    assert_eq!(seen, want);
}

#[test]
fn seeking_a_sequence_number_lands_on_its_record_inside_an_entry() {
    let dir = TempDir::new("seek");
    let mut ring = Ring::open(&dir.ring(), &opts(WhenFull::DropOldest)).unwrap();
    let mut next = 0;
    // Several laps of entries of 1 to 60 records.
    for k in 0..400u64 {
        let n = 1 + (k * 13) % 60;
        append_lines(&mut ring, next, n, T0 + k).unwrap();
        next += n;
    }
    let tail = ring.tail().seq;
    assert!(tail > 0, "the ring wrapped");
    for seq in (tail..next).step_by(7) {
        let pos = ring.seek_seq(seq);
        assert_eq!(pos.seq, seq);
        match ring.read(pos) {
            Read::Record(r) => assert_eq!(r.payload, &record(seq)[..], "seq {seq}"),
            other => panic!("seq {seq}: {other:?}"),
        }
    }
    // By time: the first record of the entry received at that time.
    let pos = ring.seek_time(T0 + 399);
    let Read::Record(r) = ring.read(pos) else {
        panic!("record")
    };
    assert_eq!((r.ts, r.pos.sub), (T0 + 399, 0));
}

#[test]
fn lines_entries_written_before_a_crash_are_found_by_the_recovery_scan() {
    let dir = TempDir::new("crash");
    let path = dir.ring();
    let mut next = 0;
    {
        let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
        ring.checkpoint(T0, true).unwrap();
        for k in 0..30u64 {
            append_lines(&mut ring, next, 1 + k % 9, T0 + k).unwrap();
            next += 1 + k % 9;
        }
        // No checkpoint: the process dies here (the map's pages stay in the page cache).
    }
    let ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    assert_eq!(ring.recovery().scanned, next);
    let want: Vec<(u64, Vec<u8>)> = (0..next).map(|i| (i, record(i))).collect();
    assert_eq!(collect(&ring, ring.tail()), want);
}

#[test]
fn a_reservation_given_up_leaves_nothing_behind() {
    let dir = TempDir::new("giveup");
    let path = dir.ring();
    {
        let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
        let max = ring.lines_max();
        assert_eq!(ring.reserve(1, max + 1), Err(AppendError::TooLarge));
        let room = ring.reserve(100, 4096).unwrap();
        assert_eq!(room, 4096);
        // Bytes that would pass for lines, never committed.
        ring.reserved_mut().fill(b'\n');
        ring.append(b"kept", T0, false).unwrap();
        // The reservation is gone with that append: nothing to commit any more.
        assert!(ring.commit_lines(10, 10, T0).is_err());
        ring.reserve(100, 4096).unwrap();
        ring.reserved_mut()[..4].copy_from_slice(b"x\ny\n");
    }
    let ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    assert_eq!(collect(&ring, ring.tail()), vec![(0, b"kept".to_vec())]);
}
