//! The fuzz targets' bodies (`fuzz/fuzz_targets/bodies.rs`) on a few thousand generated inputs,
//! so they run in every `cargo test` (cargo-fuzz needs nightly): arbitrary bytes in each mode,
//! valid rings (plain and lines entries) with random bytes flipped or with entries forged,
//! syslog-like streams for the framer, split into reads framed in place as the relay frames
//! them, HTTP-like requests for the HTTP input and HTTP-like response streams for the HTTP
//! output's response reader, and for the Kafka output's response frames and decoders: arbitrary
//! bytes, arbitrary bodies in size prefixes, valid frames of the six answers it reads (encoded
//! here, at every version it asks for) whole and mutated, and frames with absurd lengths.

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

/// Regression: array counts read off the wire (2^31 - 1, 2^32 - 2) in frames of a few bytes.
/// `kafka-protocol` 0.18 reserves the count before reading an element (`Vec::with_capacity` in
/// `Array`/`CompactArray::decode`); before `wire::get_response` checked the lengths, these
/// aborted the process ("memory allocation of ... bytes failed"). Strings and bytes of absurd
/// length, tags of absurd size or number, are here too.
#[test]
fn kafka_frames_with_absurd_lengths_are_errors_not_allocations() {
    watchdog();
    for (kind, v, frame) in bodies::kafka_hostile() {
        let e = bodies::kafka_decode_as(kind, &frame, v).unwrap_err();
        assert!(e.contains(&format!("v{v}")), "{kind} v{v}: {e}");
        bodies::kafka_frame(&frame);
        let mut stream = vec![3u8];
        stream.extend_from_slice(&(frame.len() as i32).to_be_bytes());
        stream.extend_from_slice(&frame);
        bodies::kafka_response(&stream);
    }
}

/// A Kafka response encoder for the tests: the fields the output reads, at any version.
struct Enc {
    out: Vec<u8>,
    flex: bool,
}

impl Enc {
    /// A frame answering correlation id `id`; `header_flex` for response header v1.
    fn new(id: i32, header_flex: bool, flex: bool) -> Enc {
        let mut out = id.to_be_bytes().to_vec();
        if header_flex {
            out.push(0);
        }
        Enc { out, flex }
    }
    fn i8(&mut self, x: i8) {
        self.out.push(x as u8);
    }
    fn i16(&mut self, x: i16) {
        self.out.extend_from_slice(&x.to_be_bytes());
    }
    fn i32(&mut self, x: i32) {
        self.out.extend_from_slice(&x.to_be_bytes());
    }
    fn i64(&mut self, x: i64) {
        self.out.extend_from_slice(&x.to_be_bytes());
    }
    fn varint(&mut self, mut x: u32) {
        while x >= 0x80 {
            self.out.push(x as u8 | 0x80);
            x >>= 7;
        }
        self.out.push(x as u8);
    }
    fn str(&mut self, s: Option<&str>) {
        match (s, self.flex) {
            (None, true) => self.varint(0),
            (None, false) => self.i16(-1),
            (Some(s), true) => {
                self.varint(s.len() as u32 + 1);
                self.out.extend_from_slice(s.as_bytes());
            }
            (Some(s), false) => {
                self.i16(s.len() as i16);
                self.out.extend_from_slice(s.as_bytes());
            }
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        if self.flex {
            self.varint(b.len() as u32 + 1);
        } else {
            self.i32(b.len() as i32);
        }
        self.out.extend_from_slice(b);
    }
    fn len(&mut self, n: usize) {
        if self.flex {
            self.varint(n as u32 + 1);
        } else {
            self.i32(n as i32);
        }
    }
    fn tags(&mut self) {
        if self.flex {
            self.varint(0);
        }
    }
}

type Broker = (i32, String, i32, Option<String>);
type Partition = (i16, i32, i32, Vec<i32>);
type Topic = (i16, Option<String>, Vec<Partition>);
type ProduceTopic = (String, Vec<(i32, i16, i64)>);

fn api_versions_frame(v: i16, id: i32, err: i16, apis: &[(i16, i16, i16)]) -> Vec<u8> {
    let mut e = Enc::new(id, false, v >= 3);
    e.i16(err);
    e.len(apis.len());
    for &(k, lo, hi) in apis {
        e.i16(k);
        e.i16(lo);
        e.i16(hi);
        e.tags();
    }
    if v >= 1 {
        e.i32(0);
    }
    if v >= 3 {
        // finalized_features_epoch (tag 1) and an unknown tag.
        e.varint(2);
        e.varint(1);
        e.varint(8);
        e.i64(5);
        e.varint(40);
        e.varint(1);
        e.out.push(b'x');
    }
    e.out
}

fn metadata_frame(v: i16, id: i32, brokers: &[Broker], topics: &[Topic]) -> Vec<u8> {
    let mut e = Enc::new(id, v >= 9, v >= 9);
    if v >= 3 {
        e.i32(0);
    }
    e.len(brokers.len());
    for (node, host, port, rack) in brokers {
        e.i32(*node);
        e.str(Some(host));
        e.i32(*port);
        if v >= 1 {
            e.str(rack.as_deref());
        }
        e.tags();
    }
    if v >= 2 {
        e.str(Some("cluster"));
    }
    if v >= 1 {
        e.i32(1);
    }
    e.len(topics.len());
    for (err, name, parts) in topics {
        e.i16(*err);
        e.str(name.as_deref());
        if v >= 10 {
            e.out.extend_from_slice(&[7; 16]);
        }
        if v >= 1 {
            e.i8(0);
        }
        e.len(parts.len());
        for (perr, index, leader, replicas) in parts {
            e.i16(*perr);
            e.i32(*index);
            e.i32(*leader);
            if v >= 7 {
                e.i32(3);
            }
            for _ in 0..if v >= 5 { 3 } else { 2 } {
                e.len(replicas.len());
                for r in replicas {
                    e.i32(*r);
                }
            }
            e.tags();
        }
        if v >= 8 {
            e.i32(0);
        }
        e.tags();
    }
    if (8..=10).contains(&v) {
        e.i32(0);
    }
    e.tags();
    e.out
}

fn produce_frame(v: i16, id: i32, topics: &[ProduceTopic]) -> Vec<u8> {
    let mut e = Enc::new(id, v >= 9, v >= 9);
    e.len(topics.len());
    for (name, parts) in topics {
        e.str(Some(name));
        e.len(parts.len());
        for &(index, err, offset) in parts {
            e.i32(index);
            e.i16(err);
            e.i64(offset);
            e.i64(-1);
            if v >= 5 {
                e.i64(0);
            }
            if v >= 8 {
                e.len(usize::from(err != 0));
                if err != 0 {
                    e.i32(0);
                    e.str(Some("bad record"));
                    e.tags();
                }
                e.str(None);
            }
            if v >= 10 && err == 6 {
                // current_leader, tag 0.
                e.varint(1);
                e.varint(0);
                e.varint(9);
                e.i32(2);
                e.i32(4);
                e.tags();
            } else {
                e.tags();
            }
        }
        e.tags();
    }
    e.i32(0);
    if v >= 10 {
        // node_endpoints, tag 0.
        let mut ne = Enc::new(0, false, true);
        ne.out.clear();
        ne.len(1);
        ne.i32(2);
        ne.str(Some("b2"));
        ne.i32(9092);
        ne.str(None);
        ne.tags();
        e.varint(1);
        e.varint(0);
        e.varint(ne.out.len() as u32);
        e.out.extend_from_slice(&ne.out);
    } else {
        e.tags();
    }
    e.out
}

fn init_producer_id_frame(v: i16, id: i32, pid: i64, epoch: i16) -> Vec<u8> {
    let mut e = Enc::new(id, v >= 2, v >= 2);
    e.i32(0);
    e.i16(0);
    e.i64(pid);
    e.i16(epoch);
    e.tags();
    e.out
}

fn sasl_handshake_frame(id: i32, mechanisms: &[String]) -> Vec<u8> {
    let mut e = Enc::new(id, false, false);
    e.i16(0);
    e.len(mechanisms.len());
    for m in mechanisms {
        e.str(Some(m));
    }
    e.out
}

fn sasl_authenticate_frame(v: i16, id: i32, msg: Option<&str>, auth: &[u8]) -> Vec<u8> {
    let mut e = Enc::new(id, v >= 2, v >= 2);
    e.i16(0);
    e.str(msg);
    e.bytes(auth);
    if v >= 1 {
        e.i64(60_000);
    }
    e.tags();
    e.out
}

/// A valid response frame of one of the six kinds at one of the versions the output asks
/// for, as `(kind, version, frame)`.
fn kafka_valid() -> impl Strategy<Value = (&'static str, i16, Vec<u8>)> {
    let name = "[a-z.]{0,12}";
    let id = any::<i32>();
    let broker = (any::<i32>(), name, 0i32..65536, prop::option::of(name));
    let partition = (
        prop_oneof![Just(0i16), any::<i16>()],
        0i32..6,
        -1i32..4,
        prop::collection::vec(0i32..5, 0..4),
    );
    let topic = (
        prop_oneof![Just(0i16), Just(3), any::<i16>()],
        prop::option::of(prop_oneof![
            Just("t".to_string()),
            name.prop_map(String::from)
        ]),
        prop::collection::vec(partition, 0..6),
    );
    prop_oneof![
        (
            0i16..=3,
            id,
            prop_oneof![Just(0i16), Just(35)],
            prop::collection::vec(
                (prop_oneof![0i16..40, any::<i16>()], 0i16..4, 0i16..14),
                0..20
            )
        )
            .prop_map(|(v, id, err, apis)| (
                "ApiVersions",
                v,
                api_versions_frame(v, id, err, &apis)
            )),
        (
            4i16..=12,
            id,
            prop::collection::vec(broker, 0..4),
            prop::collection::vec(topic, 0..4)
        )
            .prop_map(|(v, id, b, t)| ("Metadata", v, metadata_frame(v, id, &b, &t))),
        (
            3i16..=12,
            id,
            prop::collection::vec(
                (
                    name.prop_map(String::from),
                    prop::collection::vec(
                        (
                            0i32..8,
                            prop_oneof![Just(0i16), Just(6), Just(10)],
                            any::<i64>()
                        ),
                        0..4
                    )
                ),
                0..3
            )
        )
            .prop_map(|(v, id, t)| ("Produce", v, produce_frame(v, id, &t))),
        (0i16..=5, id, any::<i64>(), any::<i16>()).prop_map(|(v, id, p, e)| (
            "InitProducerId",
            v,
            init_producer_id_frame(v, id, p, e)
        )),
        (id, prop::collection::vec("[A-Z0-9-]{0,14}", 0..4)).prop_map(|(id, m)| (
            "SaslHandshake",
            1,
            sasl_handshake_frame(id, &m)
        )),
        (
            0i16..=2,
            id,
            prop::option::of(name),
            prop::collection::vec(any::<u8>(), 0..40)
        )
            .prop_map(|(v, id, m, a)| (
                "SaslAuthenticate",
                v,
                sasl_authenticate_frame(v, id, m.as_deref(), &a)
            )),
    ]
}

/// What a mutation does to a valid frame.
#[derive(Clone, Debug)]
enum Mutation {
    /// XOR a byte.
    Flip(usize, u8),
    /// Overwrite 1 to 5 bytes with a length: i32::MAX, -1, -2, a big varint, a small count.
    Length(usize, Vec<u8>),
    /// Cut the frame short.
    Truncate(usize),
    /// Bytes after it.
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let length = prop_oneof![
        Just(vec![0x7f, 0xff, 0xff, 0xff]),
        Just(vec![0xff, 0xff, 0xff, 0xff]),
        Just(vec![0xff, 0xff, 0xff, 0xfe]),
        Just(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
        Just(vec![0x80, 0x80, 0x04]),
        Just(vec![0x7f, 0xff]),
        Just(vec![0x00, 0x00, 0x01, 0x00]),
        (0u8..8).prop_map(|n| vec![n]),
    ];
    prop_oneof![
        3 => (any::<usize>(), 1u8..=255).prop_map(|(at, x)| Mutation::Flip(at, x)),
        3 => (any::<usize>(), length).prop_map(|(at, l)| Mutation::Length(at, l)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => prop::collection::vec(any::<u8>(), 1..20).prop_map(Mutation::Append),
    ]
}

fn mutate(mut frame: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = frame.len().max(1);
        match m {
            Mutation::Flip(at, x) => {
                if let Some(b) = frame.get_mut(at % n) {
                    *b ^= x;
                }
            }
            Mutation::Length(at, l) => {
                for (i, &b) in l.iter().enumerate() {
                    if let Some(x) = frame.get_mut(at % n + i) {
                        *x = b;
                    }
                }
            }
            Mutation::Truncate(at) => frame.truncate(at % n),
            Mutation::Append(b) => frame.extend_from_slice(b),
        }
    }
    frame
}

/// `frames` as a broker's stream: each with its size prefix, the first byte the read sizes.
fn stream_of(seed: u8, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![seed];
    for f in frames {
        out.extend_from_slice(&(f.len() as i32).to_be_bytes());
        out.extend_from_slice(f);
    }
    out
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn kafka_response_body_holds_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        watchdog();
        bodies::kafka_response(&data);
    }

    /// Arbitrary bodies in well-formed size prefixes, so that they reach the decoders.
    #[test]
    fn kafka_response_body_holds_on_arbitrary_frames(
        seed in any::<u8>(),
        frames in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..4),
    ) {
        watchdog();
        bodies::kafka_response(&stream_of(seed, &frames));
    }
}

proptest! {
    #![proptest_config(config(4000))]

    /// Valid frames of every kind at every version the output asks for decode (the length walk
    /// turns none away), and go through the body whole; then mutated (bytes flipped, lengths
    /// overwritten with absurd ones, cut short, extended), the body holds.
    #[test]
    fn kafka_response_body_holds_on_valid_and_mutated_frames(
        seed in any::<u8>(),
        (kind, v, frame) in kafka_valid(),
        mutations in prop::collection::vec(mutation(), 1..4),
        more in prop::collection::vec(kafka_valid(), 0..2),
    ) {
        watchdog();
        let id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let framed = {
            let mut f = frame.clone();
            f[..4].copy_from_slice(&7i32.to_be_bytes());
            f
        };
        if let Err(e) = bodies::kafka_decode_as(kind, &framed, v) {
            prop_assert!(false, "a valid {} v{} frame was refused: {} ({:?}, id {})", kind, v, e, frame, id);
        }
        let mut frames = vec![frame.clone()];
        frames.extend(more.into_iter().map(|(_, _, f)| f));
        bodies::kafka_response(&stream_of(seed, &frames));
        let mutated = mutate(frame, &mutations);
        bodies::kafka_frame(&mutated);
        bodies::kafka_response(&stream_of(seed, &[mutated]));
    }
}

/// What a real broker (tansu 0.6.0) answered, as `(response, version, frame)`
/// (`tests/kafka/tansu-responses.txt`).
fn broker_frames() -> Vec<(&'static str, i16, Vec<u8>)> {
    include_str!("kafka/tansu-responses.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let mut f = l.split(' ');
            let kind = f.next().unwrap();
            let v = f.next().unwrap().parse().unwrap();
            let hex = f.next().unwrap().as_bytes();
            let frame = hex
                .chunks(2)
                .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
                .collect();
            (kind, v, frame)
        })
        .collect()
}

/// Every answer a real broker gave decodes at its version (the length walk turns none away)
/// and reads as the output reads it: the versions it would choose, the topic's 3 partitions.
#[test]
fn kafka_frames_a_real_broker_sent_decode_and_read_as_expected() {
    use kafka_protocol::messages::{ApiVersionsResponse, MetadataResponse};
    use ringrelay::output::kafka::cluster::{Topology, Versions};
    use ringrelay::output::kafka::wire::get_response;

    watchdog();
    let frames = broker_frames();
    assert!(frames.len() >= 25, "{} frames", frames.len());
    for (kind, v, frame) in &frames {
        let id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let mut at7 = frame.clone();
        at7[..4].copy_from_slice(&7i32.to_be_bytes());
        if let Err(e) = bodies::kafka_decode_as(kind, &at7, *v) {
            panic!("{kind} v{v}: {e}");
        }
        match *kind {
            "ApiVersions" => {
                let r: ApiVersionsResponse = get_response(frame, *v, id).unwrap();
                let chosen = Versions::from_response(&r).unwrap();
                assert_eq!((chosen.produce, chosen.metadata), (11, 12), "v{v}");
            }
            "Metadata" => {
                let r: MetadataResponse = get_response(frame, *v, id).unwrap();
                let t = Topology::from_metadata(&r, "t").unwrap();
                assert_eq!(t.leaders.len(), 3, "v{v}");
                assert_eq!(t.nodes.len(), 1, "v{v}");
            }
            _ => {}
        }
        bodies::kafka_frame(frame);
    }
    let all: Vec<Vec<u8>> = frames.into_iter().map(|(_, _, f)| f).collect();
    for seed in [0u8, 1, 7, 200] {
        bodies::kafka_response(&stream_of(seed, &all));
    }
}

proptest! {
    #![proptest_config(config(2000))]

    /// A real broker's answers, mutated (bytes flipped, lengths overwritten with absurd ones,
    /// cut short, extended): the body holds.
    #[test]
    fn kafka_response_body_holds_on_mutated_broker_frames(
        seed in any::<u8>(),
        pick in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        watchdog();
        static FRAMES: std::sync::OnceLock<Vec<(&'static str, i16, Vec<u8>)>> =
            std::sync::OnceLock::new();
        let frames = FRAMES.get_or_init(broker_frames);
        let (_, _, frame) = pick.get(frames);
        let mutated = mutate(frame.clone(), &mutations);
        bodies::kafka_frame(&mutated);
        bodies::kafka_response(&stream_of(seed, &[mutated]));
    }
}
