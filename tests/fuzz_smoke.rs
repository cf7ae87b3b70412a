//! The fuzz targets' bodies (`fuzz/fuzz_targets/bodies.rs`) on a few thousand generated inputs,
//! so they run in every `cargo test` (cargo-fuzz needs nightly): arbitrary bytes in each mode,
//! valid rings (plain and lines entries) with random bytes flipped or with entries forged,
//! syslog-like streams for the framer, split into reads framed in place as the relay frames
//! them, and HTTP-like requests for the HTTP input and HTTP-like response streams for the HTTP
//! output's response reader.

#[path = "../fuzz/fuzz_targets/bodies.rs"]
mod bodies;

use std::sync::Once;
use std::time::Duration;

use proptest::prelude::*;
use ringrelay::input::framing::{FramerConfig, Framing, Oversize};
use ringrelay::ring::Read;

fn watchdog() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_secs(150));
            eprintln!("fuzz_smoke: still running after 150 s; a fuzz body hangs");
            std::process::exit(3);
        });
    });
}

/// `cases` in a release build (as CI runs it); a fifth in a debug build, where every ring
/// read is several times slower.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(debug_assertions) {
            cases / 5
        } else {
            cases
        },
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    }
}

/// Bytes that look like syslog over TCP: digits, spaces, LF, CR, `<13>` and text.
fn syslogish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b" ".to_vec()),
        Just(b"<13>".to_vec()),
        Just(b"0 ".to_vec()),
        (1u32..200).prop_map(|n| format!("{n} ").into_bytes()),
        (1u32..99_999).prop_map(|n| n.to_string().into_bytes()),
        "[a-z =,\"]{0,40}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

/// Bytes that look like newline-framed logs: lines of every length around the small limits the
/// tests use, empty lines, CRs (before an LF, doubled, alone) and now and then a frame header.
fn linesish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => Just(b"\n".to_vec()),
        2 => Just(b"\r\n".to_vec()),
        1 => Just(b"\r".to_vec()),
        1 => Just(b"\r\r\n".to_vec()),
        1 => Just(b"12 ".to_vec()),
        6 => "[a-z =,]{1,12}".prop_map(String::into_bytes),
        2 => "[a-z]{20,90}".prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..60).prop_map(|v| v.concat())
}

/// `stream` cut where `cuts` say (offsets, taken modulo its length and sorted).
fn cut(stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    at.push(0);
    at.push(stream.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| stream[w[0]..w[1]].to_vec()).collect()
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn framing_body_holds_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        watchdog();
        bodies::framing(&data);
    }

    #[test]
    fn framing_body_holds_on_syslog_like_streams(
        split in any::<u8>(),
        limits in any::<u8>(),
        reads in any::<u8>(),
        stream in syslogish(),
    ) {
        watchdog();
        let mut data = vec![split, limits, reads];
        data.extend_from_slice(&stream);
        bodies::framing(&data);
    }

    /// The relay frames newline reads in place in the ring (`Framer::lines_in_place`) and
    /// gives the rest to `decode`: for any split into reads, every framing and both oversize
    /// policies, with limits small enough that records go over them, that gives the records,
    /// flags and counters `decode` alone gives.
    #[test]
    fn framing_in_place_gives_what_decode_gives_for_any_split_into_reads(
        stream in prop_oneof![linesish(), syslogish()],
        cuts in prop::collection::vec(any::<usize>(), 0..12),
        framing in prop_oneof![Just(Framing::Newline), Just(Framing::Octet), Just(Framing::Auto)],
        max_record in prop_oneof![1usize..24, Just(4096)],
        drop in any::<bool>(),
    ) {
        watchdog();
        let cfg = FramerConfig {
            framing,
            max_record,
            oversize: if drop { Oversize::Drop } else { Oversize::Truncate },
        };
        let reads = cut(&stream, &cuts);
        let reads: Vec<&[u8]> = reads.iter().map(Vec::as_slice).collect();
        bodies::lines_in_place_agrees(cfg, &reads);
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn ring_open_body_holds_on_arbitrary_bytes_in_every_mode(
        mode in 0u8..4,
        rest in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        watchdog();
        let mut data = vec![mode];
        data.extend_from_slice(&rest);
        bodies::ring_open(&data);
    }

    #[test]
    fn ring_open_body_holds_on_patched_rings_with_forged_looking_headers(
        patches in prop::collection::vec(
            (0u32..(bodies::DATA as u32 + 2 * (1 << 20)), prop::collection::vec(any::<u8>(), 0..64)),
            1..6,
        ),
    ) {
        watchdog();
        let mut data = vec![1u8];
        for (at, bytes) in patches {
            data.extend_from_slice(&at.to_le_bytes());
            data.push(bytes.len() as u8);
            data.extend_from_slice(&bytes);
        }
        bodies::ring_open(&data);
    }

    /// Entries of a valid ring patched (their lengths, flags, sequence numbers and counts, LFs
    /// in their bodies, headers forged inside bodies) and sealed again with correct CRCs:
    /// reading never panics, and every record of an entry no patch touched comes back as
    /// written.
    #[test]
    fn ring_open_body_holds_on_rings_with_forged_entries(data in forgeries()) {
        watchdog();
        bodies::ring_open(&data);
    }
}

/// Input for the `ring_open` target's forged-entries mode: patches on neighbouring entries (so
/// that a count raised by one patch can meet an LF added by another, and forged entries are
/// followed by intact ones), each changing the low bytes of a header field (len, flags, seq,
/// count), writing bytes (LFs often) into an entry, or overwriting a header.
fn forgeries() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![Just(b'\n'), Just(0u8), Just(2u8), any::<u8>()];
    let field = prop_oneof![Just(0u16), Just(5), Just(8), Just(40)];
    let patch = prop_oneof![
        (field, prop::collection::vec(any::<u8>(), 1..3)),
        (any::<u16>(), prop::collection::vec(byte.clone(), 1..8)),
        (0u16..48, prop::collection::vec(byte, 0..64)),
    ];
    let patches = prop::collection::vec((0u16..3, patch), 1..5);
    (any::<u16>(), patches).prop_map(|(first, patches)| {
        let mut data = vec![3u8];
        for (next, (at, bytes)) in patches {
            data.extend_from_slice(&first.wrapping_add(next).to_le_bytes());
            data.extend_from_slice(&at.to_le_bytes());
            data.push(bytes.len() as u8);
            data.extend_from_slice(&bytes);
        }
        data
    })
}

proptest! {
    #![proptest_config(config(600))]

    /// A valid ring with random bytes flipped (about half of them in the superblock and slots):
    /// opening, verifying, seeking and reading never panic, and no record, of a plain entry or
    /// inside a lines entry, comes back other than as it was written.
    #[test]
    fn mutated_valid_rings_never_yield_a_damaged_record(
        flips in prop::collection::vec((any::<u32>(), 1u8..=255, any::<bool>()), 1..12),
    ) {
        watchdog();
        let template = bodies::template();
        let mut bytes = template.to_vec();
        for (at, xor, in_head) in flips {
            let at = if in_head {
                at as usize % bodies::DATA
            } else {
                at as usize % bytes.len()
            };
            bytes[at] ^= xor;
        }
        if let Some(seen) = bodies::open_bytes(&bytes, true) {
            for got in &seen.records {
                prop_assert!(got.as_written(), "{:?} came back damaged", got);
            }
        }
    }
}

/// Bytes that look like HTTP/1.1 responses: status lines, the headers the reader acts on,
/// chunk sizes, CRLFs and bodies.
fn http_responseish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"HTTP/1.1 200 OK\r\n".to_vec()),
        Just(b"HTTP/1.0 503 Busy\r\n".to_vec()),
        Just(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        Just(b"HTTP/1.1 204 No Content\r\n".to_vec()),
        Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
        Just(b"Connection: close\r\n".to_vec()),
        Just(b"Retry-After: 3\r\n".to_vec()),
        (0u32..40).prop_map(|n| format!("Content-Length: {n}\r\n").into_bytes()),
        (0u32..40).prop_map(|n| format!("{n:x}\r\n").into_bytes()),
        Just(b"\r\n".to_vec()),
        Just(b"{\"acks\":{\"0\":true,\"1\":false}}".to_vec()),
        Just(b"{\"text\":\"Success\",\"code\":0,\"ackId\":7}".to_vec()),
        "[a-z0-9 :;=,]{0,20}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..30).prop_map(|v| v.concat())
}

/// Bytes that look like HTTP requests to the input: heads, headers, bodies of lines and arrays.
fn httpish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"POST /nss HTTP/1.1\r\n".to_vec()),
        Just(b"x-key: k\r\n".to_vec()),
        Just(b"Content-Encoding: gzip\r\n".to_vec()),
        Just(b"Connection: close\r\n".to_vec()),
        (0u32..5000).prop_map(|n| format!("Content-Length: {n}\r\n").into_bytes()),
        Just(b"\r\n".to_vec()),
        Just(b"[".to_vec()),
        Just(b"]".to_vec()),
        Just(b",".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\\".to_vec()),
        Just(b"{\"a\":[1,{}]}".to_vec()),
        Just(vec![0x1f, 0x8b, 8, 0]),
        "[a-z \n]{0,20}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn http_response_body_holds_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        watchdog();
        bodies::http_response(&data);
    }

    #[test]
    fn http_response_body_holds_on_response_like_streams(split in any::<u8>(), stream in http_responseish()) {
        watchdog();
        let mut data = vec![split];
        data.extend_from_slice(&stream);
        bodies::http_response(&data);
    }

    #[test]
    fn http_request_body_holds_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        watchdog();
        bodies::http_request(&data);
    }

    #[test]
    fn http_request_body_holds_on_http_like_streams(data in httpish()) {
        watchdog();
        bodies::http_request(&data);
    }
}

#[test]
fn the_template_ring_reads_back_whole_with_lines_entries_and_every_seek_lands() {
    let t = bodies::template_ring();
    let lines_at_0 = t.entries.iter().any(|e| e.lines && e.off == 0);
    assert!(
        lines_at_0,
        "the template has a lines entry after its wrap marker"
    );
    let seen = bodies::open_bytes(&t.bytes, true).expect("the template opens");
    assert_eq!(seen.damaged, 0);
    assert!(seen.in_lines > 800 && seen.records.len() - seen.in_lines > 200);
    let last = seen.records.iter().map(|g| g.pos.seq).max();
    assert_eq!(last, Some(t.records.len() as u64 - 1));
    for got in &seen.records {
        assert!(got.as_written(), "{got:?}");
    }
    bodies::open_with(&t.bytes, |r| {
        let view = r.view();
        assert_eq!(view.tail.seq, t.entries[0].seq);
        let (_, cursor, _) = r.cursors().next().expect("cursor a");
        let e = t
            .entries
            .iter()
            .find(|e| e.off == cursor.off)
            .expect("its entry");
        assert!(
            e.lines && cursor.seq == e.seq + 2,
            "cursor a is inside a lines entry"
        );
        for seq in view.tail.seq..view.head.seq {
            let p = view.seek_seq(seq);
            match view.read(p) {
                Read::Record(rec) => {
                    assert_eq!(rec.pos.seq, seq);
                    assert_eq!(
                        Some(rec.payload),
                        t.records.get(seq as usize).map(|w| &w.payload[..])
                    );
                }
                other => panic!("seek_seq({seq}) = {p:?} reads {other:?}"),
            }
        }
    })
    .expect("the template opens");
}

/// Regressions found by `ring_open_body_holds_on_rings_with_forged_entries` (mode 3: entries
/// patched, then sealed with correct CRCs). A lines header whose `count` is above its body's
/// LFs sent the reader's `next` past the head (386 intact records never read) and, on the tail
/// entry, recovery's tail past the head; a header with a sequence number near `u64::MAX`
/// overflowed `seq + records`. The inputs name entries of the template ring by index.
#[test]
fn forged_entry_counts_and_sequence_numbers_stay_inside_the_ring() {
    watchdog();
    for input in [
        &[3u8, 0x9e, 0x38, 41, 0, 1, 2][..],
        &[3, 0x7d, 0x02, 41, 0, 1, 7],
        &[
            3, 211, 0, 8, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
    ] {
        bodies::ring_open(input);
    }
}
