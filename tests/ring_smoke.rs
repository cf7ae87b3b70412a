//! Quick end-to-end checks of the ring's basic contract on a real file.

use ringrelay::ring::{
    AppendError, BackgroundCheckpoint, Damage, Pos, Read, Ring, RingOptions, WhenFull,
};

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ringrelay-smoke-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(when_full: WhenFull) -> RingOptions {
    RingOptions {
        capacity: 1 << 20,
        max_record: 64 << 10,
        when_full,
        name: "t".into(),
    }
}

fn collect(ring: &Ring, mut pos: Pos) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        match ring.read(pos) {
            Read::Record(r) => {
                out.push((r.pos.seq, r.payload.to_vec()));
                pos = r.next;
            }
            Read::End => return out,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn records_survive_reopen_and_wrap_many_laps() {
    let dir = tmpdir("wrap");
    let path = dir.join("f.ring");
    let mut last = 0;
    for round in 0..5u64 {
        let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
        for i in 0..20_000u64 {
            let n = (i * 7919 + round) % 3000;
            let payload = vec![(i % 251) as u8; n as usize];
            last = ring.append(&payload, i, false).unwrap().seq;
        }
        let got = collect(&ring, ring.tail());
        assert_eq!(got.last().unwrap().0, last);
        for w in got.windows(2) {
            assert_eq!(w[0].0 + 1, w[1].0);
        }
        let stats = ring.stats();
        assert!(stats.used > (1 << 20) * 3 / 4, "{stats:?}");
        // Seek agrees with a linear walk.
        let mid = got[got.len() / 2].0;
        assert_eq!(ring.seek_seq(mid).seq, mid);
        if round % 2 == 0 {
            ring.checkpoint(1, true).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn block_refuses_until_the_cursor_moves() {
    let dir = tmpdir("block");
    let path = dir.join("f.ring");
    let mut ring = Ring::open(&path, &opts(WhenFull::Block)).unwrap();
    let c = ring.cursor("out").unwrap();
    let payload = vec![b'x'; 1000];
    let mut n = 0;
    loop {
        match ring.append(&payload, 0, false) {
            Ok(_) => n += 1,
            Err(AppendError::Full) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(n > 900, "{n}");
    let head = ring.head();
    ring.commit(c, head);
    ring.append(&payload, 0, false).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `has_room` promises what `append` then keeps: a batch it admits goes in whole, and it
/// refuses only when the ring could not take the batch without overwriting undelivered records.
#[test]
fn has_room_admits_exactly_what_block_mode_can_take() {
    let dir = tmpdir("has-room");
    let mut ring = Ring::open(&dir.join("f.ring"), &opts(WhenFull::Block)).unwrap();
    let c = ring.cursor("out").unwrap();
    let payload = vec![b'y'; 1000];
    let stride = ringrelay::ring::record_stride(1000);
    let wrap = ringrelay::ring::record_stride(64 << 10);
    let (mut admitted, mut refused) = (0, 0);
    for round in 0..50u64 {
        // Batches of a size that varies by round; deliver part of what is held each round.
        let batch = 10 + (round * 37) % 300;
        if ring.has_room(batch * stride + wrap) {
            admitted += 1;
            for _ in 0..batch {
                ring.append(&payload, round, false)
                    .expect("admitted batches fit whole");
            }
        } else {
            // Refused: the ring really is that full (within the one-wrap allowance).
            refused += 1;
            let mut took = 0;
            while ring.append(&payload, round, false).is_ok() {
                took += 1;
            }
            assert!(
                took < batch + wrap / stride,
                "round {round}: refused, yet {took} more fit (batch {batch})"
            );
        }
        if round % 3 == 0 {
            let (t, h) = (ring.tail().seq, ring.head().seq);
            let quarter = ring.seek_seq(t + (h - t) / 4);
            ring.commit(c, quarter);
        }
    }
    assert!(
        admitted > 5 && refused > 5,
        "admitted {admitted}, refused {refused}"
    );
    assert!(!ring.has_room((1 << 20) + 1));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Flips one byte of the payload of the record at `pos`, through the file rather than the
/// map: the page cache the ring's map shares, as a storage fault read back would.
fn flip_payload_byte(path: &std::path::Path, pos: Pos) {
    // The payload comes after the record's 48-byte header.
    flip_record_byte(path, pos, 48 + 5);
}

/// Flips the byte `at` bytes into the record at `pos` (its header first), through the file.
fn flip_record_byte(path: &std::path::Path, pos: Pos, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // The data area starts after the superblock and two metadata pages.
    let at = 3 * 4096 + pos.off + at;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
}

#[test]
fn a_record_damaged_in_a_live_ring_is_reported_once_it_is_no_longer_fresh() {
    let dir = tmpdir("fresh");
    let path = dir.join("f.ring");
    let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    let payload = vec![b'r'; 1000];
    let old = ring.append(&payload, 1, false).unwrap();
    ring.checkpoint(1, false).unwrap();
    // Appended after the checkpoint: fresh, its CRC was computed from the bytes copied in and
    // is not computed again (buffer-spec.md §7).
    let fresh = ring.append(&payload, 2, false).unwrap();
    flip_payload_byte(&path, old);
    flip_payload_byte(&path, fresh);
    assert!(
        matches!(
            ring.read(old),
            Read::Corrupt {
                damage: Damage::Payload { .. },
                ..
            }
        ),
        "a record from before the checkpoint is checked: {:?}",
        ring.read(old)
    );
    assert!(matches!(ring.read(fresh), Read::Record(_)));
    // Writeback started past it (two steps of an eighth of the ring): no longer fresh.
    let mut last = fresh;
    while ring.head().seq - fresh.seq < 300 {
        last = ring.append(&payload, 3, false).unwrap();
        ring.start_writeback().unwrap();
    }
    assert!(
        matches!(
            ring.read(fresh),
            Read::Corrupt {
                damage: Damage::Payload { .. },
                ..
            }
        ),
        "{:?}",
        ring.read(fresh)
    );
    // The newest records are still fresh, header included (a flipped bit of its receive time,
    // byte 16), and a checkpoint ends that too.
    flip_payload_byte(&path, last);
    flip_record_byte(&path, last, 16);
    assert!(matches!(ring.read(last), Read::Record(_)));
    ring.checkpoint(4, false).unwrap();
    assert!(
        matches!(
            ring.read(last),
            Read::Corrupt {
                damage: Damage::Header,
                ..
            }
        ),
        "{:?}",
        ring.read(last)
    );
    // A process that did not write a record always checks it.
    drop(ring);
    let ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    assert!(matches!(ring.read(last), Read::Corrupt { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn writeback_in_steps_across_many_laps_keeps_every_record_readable() {
    let dir = tmpdir("writeback");
    let path = dir.join("f.ring");
    let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    for i in 0..30_000u64 {
        let payload = vec![(i % 251) as u8; (i * 7919 % 1500) as usize];
        ring.append(&payload, i, false).unwrap();
        ring.start_writeback().unwrap();
        if i % 10_000 == 9_999 {
            ring.checkpoint(i, true).unwrap();
        }
    }
    // Many laps of a 1 MiB ring: every record still there reads back intact and in order.
    let got = collect(&ring, ring.tail());
    assert!(got.len() > 500, "{}", got.len());
    for (seq, payload) in &got {
        assert_eq!(payload.len() as u64, seq * 7919 % 1500);
        assert!(payload.iter().all(|b| u64::from(*b) == seq % 251));
    }
    assert_eq!(got.last().unwrap().0, 29_999);
    drop(ring);
    let ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    assert_eq!(collect(&ring, ring.tail()), got);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The writer puts an LF in the first padding byte (buffer-spec.md §5): a record with padding
/// reads with `line` = payload + LF, one without (48 + len a multiple of 8) with none; and
/// since padding is unspecified, a reader takes the LF only when it is there.
#[test]
fn a_padded_record_carries_its_lf_and_a_reader_checks_it_is_one() {
    let dir = tmpdir("line");
    let path = dir.join("f.ring");
    let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    let positions: Vec<Pos> = (0..16usize)
        .map(|len| {
            ring.append(&vec![b'a' + len as u8; len + 1], 1, false)
                .unwrap()
        })
        .collect();
    for (len, &pos) in (1..=16usize).zip(&positions) {
        let Read::Record(r) = ring.read(pos) else {
            panic!("record {len} unreadable");
        };
        if (48 + len) % 8 == 0 {
            assert_eq!(r.line, None, "{len} bytes: no padding, no LF");
        } else {
            let mut want = r.payload.to_vec();
            want.push(b'\n');
            assert_eq!(r.line, Some(&want[..]), "{len} bytes");
        }
    }
    // Padding overwritten with something else (an older writer, a reused file): no line, the
    // record itself intact, since the CRCs do not cover padding.
    let pos = positions[0];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(b"x", 3 * 4096 + pos.off + 48 + 1).unwrap();
    }
    ring.checkpoint(2, false).unwrap();
    match ring.read(pos) {
        Read::Record(r) => {
            assert_eq!(r.payload, b"a");
            assert_eq!(r.line, None);
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A background checkpoint writes the slot and starts a sync; one asked for while that sync
/// runs writes the slot only and is counted; a blocking checkpoint after them waits for the
/// sync in flight; a reopen finds every record and the newest slot.
#[test]
fn background_checkpoints_take_turns_with_the_sync_in_flight() {
    let dir = tmpdir("background");
    let path = dir.join("f.ring");
    let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    let payload = vec![b'x'; 900];
    let (mut started, mut busy) = (0u64, 0u64);
    for round in 0..50u64 {
        for i in 0..100u64 {
            ring.append(&payload, round * 100 + i, false).unwrap();
        }
        match ring.checkpoint_in_background(round + 10).unwrap() {
            BackgroundCheckpoint::Started => started += 1,
            BackgroundCheckpoint::Busy => busy += 1,
            // A kernel without AIO: the relay syncs in the loop instead.
            BackgroundCheckpoint::Unavailable(_) => {
                ring.checkpoint(round + 10, true).unwrap();
            }
            BackgroundCheckpoint::ForHelper => panic!("no sync helper was set"),
        }
    }
    assert_eq!(ring.syncs_behind(), busy);
    if started > 0 {
        assert!(started + busy == 50, "{started} started, {busy} busy of 50");
    }
    let last = ring.head().seq - 1;
    ring.checkpoint(100, true).unwrap();
    drop(ring);
    let ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    assert_eq!(
        ring.recovery().scanned,
        0,
        "the last checkpoint had every record"
    );
    assert_eq!(ring.head().seq - 1, last);
    let got = collect(&ring, ring.tail());
    assert_eq!(got.last().unwrap().0, last);
    assert!(got.iter().all(|(_, p)| *p == payload));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With a sync helper (`Ring::set_sync_helper`), a background checkpoint writes the slot and
/// leaves the sync to the caller; until the helper reports it done, the next ones write the slot
/// only and are counted, and a blocking checkpoint syncs the file itself; a helper that is gone
/// leaves the ring syncing by itself again, after syncing what it did not report.
#[test]
fn background_checkpoints_with_a_sync_helper_wait_for_its_report() {
    let dir = tmpdir("helper");
    let path = dir.join("f.ring");
    let mut ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    let payload = vec![b'y'; 900];
    ring.set_sync_helper(true).unwrap();
    for i in 0..100u64 {
        ring.append(&payload, i, false).unwrap();
    }
    assert!(matches!(
        ring.checkpoint_in_background(1).unwrap(),
        BackgroundCheckpoint::ForHelper
    ));
    assert!(!ring.background_sync_finished().unwrap(), "not reported");
    assert!(matches!(
        ring.checkpoint_in_background(2).unwrap(),
        BackgroundCheckpoint::Busy
    ));
    assert_eq!(ring.syncs_behind(), 1);
    ring.helper_sync_done(Ok(()));
    assert!(ring.background_sync_finished().unwrap());
    assert!(matches!(
        ring.checkpoint_in_background(3).unwrap(),
        BackgroundCheckpoint::ForHelper
    ));
    // A failure the helper reports is the ring's error, once.
    ring.helper_sync_done(Err(std::io::Error::from_raw_os_error(5)));
    assert_eq!(
        ring.background_sync_finished().unwrap_err().raw_os_error(),
        Some(5)
    );
    assert!(ring.background_sync_finished().unwrap());
    assert!(matches!(
        ring.checkpoint_in_background(4).unwrap(),
        BackgroundCheckpoint::ForHelper
    ));
    for i in 100..200u64 {
        ring.append(&payload, i, false).unwrap();
    }
    // The helper is gone with a sync unreported: the ring syncs the file itself.
    ring.set_sync_helper(false).unwrap();
    assert!(ring.background_sync_finished().unwrap());
    assert!(!matches!(
        ring.checkpoint_in_background(5).unwrap(),
        BackgroundCheckpoint::ForHelper
    ));
    let last = ring.head().seq - 1;
    ring.checkpoint(100, true).unwrap();
    drop(ring);
    let ring = Ring::open(&path, &opts(WhenFull::DropOldest)).unwrap();
    assert_eq!(ring.head().seq - 1, last);
    let got = collect(&ring, ring.tail());
    assert_eq!(got.len(), 200);
    assert!(got.iter().all(|(_, p)| *p == payload));
    std::fs::remove_dir_all(&dir).unwrap();
}
