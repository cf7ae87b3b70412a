//! The fuzz targets' bodies (`fuzz/fuzz_targets/bodies.rs`) on a few thousand generated inputs,
//! so they run in every `cargo test` (cargo-fuzz needs nightly): arbitrary bytes in each mode,
//! valid rings with random bytes flipped, syslog-like streams for the framer, and HTTP-like
//! requests for the HTTP input and HTTP-like response streams for the HTTP output's response
//! reader.

#[path = "../fuzz/fuzz_targets/bodies.rs"]
mod bodies;

use std::sync::Once;
use std::time::Duration;

use proptest::prelude::*;

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
        stream in syslogish(),
    ) {
        watchdog();
        let mut data = vec![split, limits];
        data.extend_from_slice(&stream);
        bodies::framing(&data);
    }
}

proptest! {
    #![proptest_config(config(400))]

    #[test]
    fn ring_open_body_holds_on_arbitrary_bytes_in_every_mode(
        mode in 0u8..3,
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
}

proptest! {
    #![proptest_config(config(600))]

    /// A valid ring with random bytes flipped (a third of them in the superblock and slots):
    /// opening, verifying, seeking and reading never panic, and no record comes back other
    /// than as it was written.
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
            for (seq, payload) in &seen.records {
                prop_assert!(
                    *payload == bodies::template_payload(*seq),
                    "seq {} came back damaged",
                    seq
                );
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
fn the_template_ring_reads_back_whole() {
    let seen = bodies::open_bytes(bodies::template(), true).expect("the template opens");
    assert_eq!(seen.damaged, 0);
    assert!(seen.records.len() > 300);
    assert_eq!(seen.records.last().unwrap().0, 999);
    for (seq, payload) in &seen.records {
        assert_eq!(*payload, bodies::template_payload(*seq));
    }
}
