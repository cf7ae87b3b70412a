//! The fuzz targets' bodies. Shared with `tests/fuzz_smoke.rs`, which includes this file by path
//! and runs the same bodies on generated inputs under `cargo test`, so the bodies stay compiled
//! and exercised on stable Rust without cargo-fuzz.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use ringrelay::framing::{Framer, FramerConfig, Framing, Oversize};
use ringrelay::http_batch::{self, Expect, Limits};
use ringrelay::relay::http::{self, Response, ResponseReader, MAX_RESPONSE_BODY};
use ringrelay::ring::view::scan_forward;
use ringrelay::ring::{Pos, Read, Ring, RingOptions, RingReader, View, WhenFull};

/// File offset of the data area (`buffer-spec.md` §2).
pub const DATA: usize = 12288;
/// Capacity of the template ring.
pub const CAP: u64 = 1 << 20;
/// Largest payload of the template ring.
pub const MAX_RECORD: u32 = 8 << 10;

/// The payload the template ring holds for `seq`.
pub fn template_payload(seq: u64) -> Vec<u8> {
    let len = (seq * 7919 % 3000) as usize;
    (0..len).map(|i| (seq as usize + i * 13) as u8).collect()
}

/// A valid ring's bytes, written once by the code: wrapped, with a wrap marker, two cursors,
/// checkpointed, and some records past the checkpoint for the recovery scan.
pub fn template() -> &'static [u8] {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "ringrelay-fuzz-template-{}-{}",
            std::process::id(),
            unique()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let path = dir.join("t.ring");
        let opts = RingOptions {
            capacity: CAP,
            max_record: MAX_RECORD,
            when_full: WhenFull::DropOldest,
            name: "fuzz".into(),
        };
        let mut ring = Ring::open(&path, &opts).expect("create template ring");
        let a = ring.cursor("a").expect("cursor");
        ring.cursor("b").expect("cursor");
        for seq in 0..1000u64 {
            let at = ring
                .append(&template_payload(seq), 1_000 + seq / 2, seq % 9 == 0)
                .expect("append");
            if seq == 900 {
                ring.commit(a, at);
                ring.checkpoint(5_000, true).expect("checkpoint");
            }
        }
        drop(ring);
        let bytes = std::fs::read(&path).expect("read template");
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    })
}

fn unique() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn u32_le(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    for (i, x) in a.iter_mut().enumerate() {
        *x = b.get(at + i).copied().unwrap_or(0);
    }
    u32::from_le_bytes(a)
}

fn u64_le(b: &[u8], at: usize) -> u64 {
    u64::from(u32_le(b, at)) | u64::from(u32_le(b, at + 4)) << 32
}

/// Applies `patches` to a copy of `base`: each is `[offset u32 LE][len u8][len bytes]`, the
/// offset taken modulo the length.
pub fn patch(base: &[u8], mut patches: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    while patches.len() >= 5 {
        let at = u32_le(patches, 0) as usize % out.len();
        let len = usize::from(patches[4]).min(patches.len() - 5);
        let end = (at + len).min(out.len());
        out[at..end].copy_from_slice(&patches[5..5 + end - at]);
        patches = &patches[5 + len..];
    }
    out
}

/// What reading a ring found: the valid records (seq, payload) and the damaged places.
#[derive(Debug, Default)]
pub struct Seen {
    pub records: Vec<(u64, Vec<u8>)>,
    pub damaged: usize,
}

/// Everything a reader does with a view, checking the invariants that hold whatever the bytes:
/// reads go forward and end, seeks land inside the ring, `verify` agrees with reading.
pub fn exercise(view: &View<'_>, keep: bool) -> Seen {
    let (tail, head) = (view.tail, view.head);
    let mut seen = Seen::default();
    let mut pos = tail;
    loop {
        match view.read(pos) {
            Read::Record(r) => {
                assert_eq!(r.pos.seq, pos.seq, "a record carries the seq asked for");
                assert_eq!(r.next.seq, pos.seq + 1);
                assert!(r.payload.len() <= view.max_record as usize);
                if keep {
                    seen.records.push((r.pos.seq, r.payload.to_vec()));
                }
                pos = r.next;
            }
            Read::Corrupt { at, next, .. } => {
                assert!(next.seq > at.seq, "reading goes forward after damage");
                assert!(next.seq <= head.seq);
                seen.damaged += 1;
                pos = next;
            }
            Read::End => break,
            Read::Overrun { tail: t } => {
                assert!(pos.seq < tail.seq, "overrun inside the ring");
                pos = t;
            }
        }
    }
    assert_eq!(
        view.verify().len(),
        seen.damaged,
        "verify and reading disagree"
    );
    let span = head.seq - tail.seq;
    for seq in [
        0,
        tail.seq,
        tail.seq + span / 3,
        tail.seq + span / 2,
        head.seq.saturating_sub(1),
        head.seq,
        u64::MAX,
    ] {
        let p = view.seek_seq(seq);
        assert!(
            p.seq >= tail.seq && p.seq <= head.seq,
            "seek_seq({seq}) = {p:?}"
        );
    }
    for ts in [0, 1_000, 1_250, 1_499, u64::MAX] {
        let p = view.seek_time(ts);
        assert!(
            p.seq >= tail.seq && p.seq <= head.seq,
            "seek_time({ts}) = {p:?}"
        );
    }
    seen
}

/// The scratch file of this thread.
fn scratch() -> PathBuf {
    thread_local! {
        static PATH: PathBuf = std::env::temp_dir().join(format!(
            "ringrelay-fuzz-{}-{}.ring",
            std::process::id(),
            unique()
        ));
    }
    PATH.with(|p| p.clone())
}

/// Opens `bytes` as a ring file read-only (as `ringrelay inspect` does) and reads all of it.
/// `None` if the file is refused.
pub fn open_bytes(bytes: &[u8], keep: bool) -> Option<Seen> {
    let path = scratch();
    std::fs::write(&path, bytes).expect("write scratch file");
    let seen = match RingReader::open(&path) {
        Ok(r) => {
            let view = r.view();
            assert!(view.tail.seq <= view.head.seq);
            assert!(view.tail.off + 48 <= view.data.len() as u64);
            assert!(view.head.off + 48 <= view.data.len() as u64);
            let stats = r.stats();
            assert_eq!(stats.records, view.head.seq - view.tail.seq);
            assert!(stats.used <= stats.capacity);
            for (_, p, _) in r.cursors() {
                let _ = view.read(p);
            }
            Some(exercise(&view, keep))
        }
        Err(e) => {
            let _ = e.to_string();
            None
        }
    };
    let _ = std::fs::remove_file(&path);
    seen
}

/// A bare data area (the template's, patched) in a `View` whose bounds come from the input,
/// within what recovery can produce: aligned offsets inside the area, tail seq <= head seq.
pub fn view_only(input: &[u8]) {
    let area_positions = (CAP - 48) / 8 + 1;
    let tail = Pos {
        off: u64::from(u32_le(input, 0)) % area_positions * 8,
        seq: u64_le(input, 4),
    };
    let head = Pos {
        off: u64::from(u32_le(input, 12)) % area_positions * 8,
        seq: tail.seq.saturating_add(u64::from(u32_le(input, 16)) % 4096),
    };
    let run = u32_le(input, 20) % 4;
    let max_record = u32_le(input, 24) % (64 << 20) + 1;
    let last_ts = u64_le(input, 28);
    let data = patch(&template()[DATA..], input.get(36..).unwrap_or(&[]));
    let view = View {
        data: &data,
        max_record,
        run,
        tail,
        head,
    };
    exercise(&view, false);
    let scan = scan_forward(&data, max_record, run, head, last_ts);
    assert!(scan.head.off + 48 <= CAP);
    assert!(scan.head.seq >= head.seq);
    assert!(scan.records <= CAP / 48);
}

/// The `ring_open` target: the first byte picks the mode.
pub fn ring_open(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        // The input is the whole file.
        0 => {
            open_bytes(rest, false);
        }
        // A valid ring with the input's patches.
        1 => {
            open_bytes(&patch(template(), rest), false);
        }
        // A data area straight into the reader.
        _ => view_only(rest),
    }
}

/// Feeds `chunks` to a new framer as one connection would (the last chunk with `eof`), checking
/// the bounds the framing module promises; returns the records. With `refuse`, every other emit
/// is refused first and the same bytes presented again.
pub fn feed(cfg: FramerConfig, chunks: &[&[u8]], refuse: bool) -> Vec<(Vec<u8>, bool)> {
    let mut f = Framer::new(cfg);
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut calls = 0u64;
    for (k, chunk) in chunks.iter().enumerate() {
        pending.extend_from_slice(chunk);
        let eof = k + 1 == chunks.len();
        loop {
            let mut refused = false;
            let n = f.decode(&pending, eof, &mut |r, truncated| {
                calls += 1;
                if refuse && calls % 2 == 1 {
                    refused = true;
                    return false;
                }
                assert!(r.len() <= cfg.max_record.max(1), "record over max_record");
                out.push((r.to_vec(), truncated));
                true
            });
            assert!(
                n <= pending.len(),
                "consumed {n} of {} bytes",
                pending.len()
            );
            pending.drain(..n);
            if refused {
                // A refused record stays unconsumed, however long (the caller, whose ring is
                // full, stops reading); presenting the same bytes again emits it again.
                continue;
            }
            assert!(
                pending.len() <= cfg.max_record.max(1) + 16,
                "retained {} bytes with max_record {}",
                pending.len(),
                cfg.max_record
            );
            break;
        }
        if eof {
            assert!(
                pending.is_empty(),
                "bytes left after eof: {}",
                pending.len()
            );
        }
    }
    assert_eq!(f.stats().records, out.len() as u64);
    out
}

/// The `framing` target: byte 0 picks the split point, byte 1 the limits.
pub fn framing(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let (cfg, stream) = data.split_at(2);
    let split = usize::from(cfg[0]) * stream.len() / 255;
    let max_record = if cfg[1] & 0x80 != 0 {
        4096
    } else {
        1 + usize::from(cfg[1] % 64)
    };
    let oversize = if cfg[1] & 0x40 != 0 {
        Oversize::Drop
    } else {
        Oversize::Truncate
    };
    for framing in [Framing::Newline, Framing::Octet, Framing::Auto] {
        let cfg = FramerConfig {
            framing,
            max_record,
            oversize,
        };
        let whole = feed(cfg, &[stream], false);
        let parts = feed(cfg, &[&stream[..split], &stream[split..]], false);
        assert_eq!(whole, parts, "{framing:?}: records depend on the split");
        let refused = feed(cfg, &[&stream[..split], &stream[split..]], true);
        assert_eq!(whole, refused, "{framing:?}: refusals change the records");
    }
}

/// Reads `chunks` as one response stream, to the end: the responses, then how it ended.
fn read_responses(chunks: &[&[u8]]) -> (Vec<Response>, String) {
    let mut r = ResponseReader::new();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut data = *chunk;
        loop {
            match r.push(data) {
                Ok(Some(resp)) => {
                    assert!(resp.body.len() <= MAX_RESPONSE_BODY);
                    assert!(resp.body_len >= resp.body.len() as u64);
                    out.push(resp);
                    data = b"";
                }
                Ok(None) => break,
                Err(e) => return (out, format!("error {:?}", std::mem::discriminant(&e))),
            }
        }
    }
    let end = match r.eof() {
        Ok(resp) => {
            assert!(resp.body.len() <= MAX_RESPONSE_BODY);
            out.push(resp);
            "eof".to_string()
        }
        Err(e) => format!("eof error {:?}", std::mem::discriminant(&e)),
    };
    (out, end)
}

/// Any bytes as the HTTP output's response stream, split in two at a position taken from the
/// first byte: the reader never panics, keeps at most `MAX_RESPONSE_BODY` of a body, and reads
/// the same responses however the stream is split; the HEC acknowledgement readers never panic.
pub fn http_response(data: &[u8]) {
    let split = data.first().map_or(0, |&b| usize::from(b)) % (data.len() + 1);
    let whole = read_responses(&[data]);
    let parts = read_responses(&[&data[..split], &data[split..]]);
    assert_eq!(whole, parts, "split at {split}");
    let _ = http::hec_ack_id(data);
    let _ = http::hec_acks(data, |_, _| {});
}

/// Any bytes as an HTTP input's request stream: the head parser never panics and never claims
/// more than it was given; a refusal that keeps the connection skips exactly one framed
/// request; the body (the rest, gunzipped when it says so) splits into non-empty records that
/// are pieces of the body, and LF-split records hold no LF.
pub fn http_request(data: &[u8]) {
    let limits = Limits {
        max_head: 512,
        max_body: 4096,
        max_decoded: 8192,
    };
    let expect = Expect {
        path: "/nss",
        auth: Some(("x-key", b"k")),
    };
    let (body, gzip) = match http_batch::parse_head(data, &expect, &limits) {
        Ok(Some(h)) => {
            assert!(h.len <= data.len() && h.body_len <= limits.max_body);
            (&data[h.len..data.len().min(h.len + h.body_len)], h.gzip)
        }
        Ok(None) => (data, false),
        Err(r) => {
            assert!((400..600).contains(&r.status));
            assert!(
                r.close || r.skip > 0,
                "a kept connection must skip the request"
            );
            (data, false)
        }
    };
    let mut decoded = Vec::new();
    let body = if gzip && http_batch::gunzip(body, limits.max_decoded, &mut decoded).is_ok() {
        assert!(decoded.len() <= limits.max_decoded);
        &decoded[..]
    } else {
        body
    };
    let range = body.as_ptr_range();
    let array = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let mut total = 0;
    http_batch::split_records(body, &mut |r| {
        assert!(!r.is_empty());
        assert!(range.contains(&r.as_ptr()) && r.len() <= body.len());
        if !array {
            assert!(!r.contains(&b'\n'));
        }
        total += r.len();
    });
    assert!(total <= body.len());
}
