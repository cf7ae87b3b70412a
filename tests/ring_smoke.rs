//! Quick end-to-end checks of the ring's basic contract on a real file.

use ringrelay::ring::{AppendError, Pos, Read, Ring, RingOptions, WhenFull};

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
