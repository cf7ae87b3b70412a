//! The HTTP output's request side, sans I/O: request heads and batch bodies, Splunk HEC
//! acknowledgement JSON, dead-letter lines. Responses are read by [`super::response`]; bytes meet
//! the network in `output/transport.rs`.

use std::io::{self, Write as _};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::config::{BodyFormat, HttpOutput, Preset};
use crate::json::{self, Base64, Text, TooLarge};

/// Bytes a record adds to a body of `format` (an upper bound for `HecEvent`, exact otherwise),
/// after `records_before` records.
pub fn record_cost(format: BodyFormat, record: &[u8], records_before: u32) -> usize {
    match format {
        BodyFormat::Ndjson => record.len() + 1,
        // `[` + records joined by `,` + `]`: the first record also pays for both brackets.
        BodyFormat::JsonArray => record.len() + if records_before == 0 { 2 } else { 1 },
        // `{"event":"` + escaped + `"}\n`: serde-json-core escapes `"`, `\` and control
        // characters (to 2 or 6 bytes), and a byte of invalid UTF-8 becomes U+FFFD (3 bytes).
        BodyFormat::HecEvent => 13 + record.len() + escape_growth(record),
    }
}

fn escape_growth(s: &[u8]) -> usize {
    s.iter()
        .map(|&b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 1,
            0..=0x1f => 5,
            0x80.. => 2,
            _ => 0,
        })
        .sum()
}

/// A HEC `/event` envelope, one a record: `{"event":"..."}` (bytes that are not UTF-8 become
/// U+FFFD, as HEC takes text only).
#[derive(Serialize)]
struct HecEvent<'a> {
    event: Text<'a>,
}

/// Appends one record to a body of `format`. A HEC event takes at most its
/// [`record_cost`] (the escaping's worst case, counted from the record), so
/// [`TooLarge`] means that count is wrong: a bug.
pub fn push_record(body: &mut Vec<u8>, format: BodyFormat, record: &[u8]) -> Result<(), TooLarge> {
    match format {
        BodyFormat::Ndjson => {
            body.extend_from_slice(record);
            body.push(b'\n');
        }
        BodyFormat::JsonArray => {
            body.push(if body.is_empty() { b'[' } else { b',' });
            body.extend_from_slice(record);
        }
        BodyFormat::HecEvent => {
            let bound = record_cost(format, record, 0) - 1;
            json::append(
                body,
                &HecEvent {
                    event: Text(record),
                },
                bound,
            )?;
            body.push(b'\n');
        }
    }
    Ok(())
}

/// Closes a body of `format` once every record is in.
pub fn finish_body(body: &mut Vec<u8>, format: BodyFormat) {
    if format == BodyFormat::JsonArray {
        if body.is_empty() {
            body.push(b'[');
        }
        body.push(b']');
    }
}

/// Gzips `body` into `out` (cleared first).
pub fn gzip_into(body: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    let mut enc = flate2::write::GzEncoder::new(std::mem::take(out), flate2::Compression::fast());
    enc.write_all(body)?;
    *out = enc.finish()?;
    Ok(())
}

/// The request head of a data request: method, path, Host, the configured and preset headers,
/// Content-Length (and Content-Encoding), ending with the blank line.
pub fn data_head(out: &mut Vec<u8>, cfg: &HttpOutput, body_len: usize, gzip: bool) {
    out.clear();
    head_common(out, cfg, &cfg.path);
    let ctype: &[u8] = match cfg.body {
        BodyFormat::JsonArray => b"application/json",
        BodyFormat::Ndjson if matches!(cfg.preset, Preset::Panther | Preset::Generic) => {
            b"application/x-ndjson"
        }
        _ => b"text/plain",
    };
    if !cfg
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ctype);
        out.extend_from_slice(b"\r\n");
    }
    if gzip {
        out.extend_from_slice(b"Content-Encoding: gzip\r\n");
    }
    let _ = write!(out, "Content-Length: {body_len}\r\n\r\n");
}

/// HEC acknowledgement ids polled in one request, at most: one a pending batch (the HTTP
/// output keeps at most this many batches waiting for their acknowledgement).
pub const MAX_ACK_IDS: usize = 64;

/// The body of an acknowledgement poll, `{"acks":[3,4,9]}`.
#[derive(Serialize)]
struct AckPoll<T> {
    acks: T,
}

/// At most [`MAX_ACK_IDS`] ids, as a JSON array.
struct Ids<I>(I);

impl<I: Iterator<Item = u64> + Clone> Serialize for Ids<I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.clone().take(MAX_ACK_IDS))
    }
}

/// The most bytes an [`AckPoll`] body takes: `{"acks":[` + [`MAX_ACK_IDS`] numbers and commas
/// + `]}`.
const ACK_POLL_MAX: usize = 9 + MAX_ACK_IDS * (json::U64 + 1) + 2;

/// The request of a HEC acknowledgement poll for `ids` (the first [`MAX_ACK_IDS`] of them):
/// head and body in one buffer.
pub fn ack_request(
    out: &mut Vec<u8>,
    cfg: &HttpOutput,
    ids: impl Iterator<Item = u64> + Clone,
) -> Result<(), TooLarge> {
    let mut body = [0u8; ACK_POLL_MAX];
    let len = serde_json_core::to_slice(&AckPoll { acks: Ids(ids) }, &mut body).map_err(|_| {
        TooLarge {
            bound: ACK_POLL_MAX,
        }
    })?;
    out.clear();
    head_common(out, cfg, "/services/collector/ack");
    let _ = write!(
        out,
        "Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    out.extend_from_slice(&body[..len]);
    Ok(())
}

fn head_common(out: &mut Vec<u8>, cfg: &HttpOutput, path: &str) {
    let _ = write!(out, "POST {path} HTTP/1.1\r\nHost: ");
    if cfg.host.contains(':') {
        let _ = write!(out, "[{}]", cfg.host);
    } else {
        out.extend_from_slice(cfg.host.as_bytes());
    }
    if cfg.port != 80 {
        let _ = write!(out, ":{}", cfg.port);
    }
    out.extend_from_slice(b"\r\nUser-Agent: ringrelay/");
    out.extend_from_slice(env!("CARGO_PKG_VERSION").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in &cfg.headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    if cfg.preset == Preset::SplunkHec {
        let _ = write!(out, "X-Splunk-Request-Channel: {}\r\n", cfg.channel);
    }
}

/// HEC answers are flat: an answer nested deeper than this is refused unparsed
/// ([`json::nesting_within`]).
const HEC_NESTING_MAX: usize = 8;

/// A HEC answer to a data request, `{"text":"Success","code":0,"ackId":7}`: only `ackId` is
/// read (present with `useACK` on).
#[derive(Deserialize)]
struct HecAnswer {
    #[serde(rename = "ackId", default)]
    ack_id: Option<u64>,
}

/// The `ackId` of a HEC answer `{"text":"Success","code":0,"ackId":7}`; `None` without one, or
/// for a body that is not such a JSON object.
pub fn hec_ack_id(body: &[u8]) -> Option<u64> {
    if !json::nesting_within(body, HEC_NESTING_MAX) {
        return None;
    }
    let (answer, _) = serde_json_core::from_slice::<HecAnswer>(body).ok()?;
    answer.ack_id
}

/// The answer to an acknowledgement poll, `{"acks":{"0":true,"1":false}}`.
#[derive(Deserialize)]
struct AckPollAnswer {
    acks: AckStates,
}

/// `(id, acknowledged)`, at most [`MAX_ACK_IDS`] (the most one poll asks about).
struct AckStates(heapless::Vec<(u64, bool), MAX_ACK_IDS>);

impl<'de> Deserialize<'de> for AckStates {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = AckStates;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of ack ids (decimal strings) to booleans")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AckStates, A::Error> {
                let mut states = heapless::Vec::new();
                while let Some((key, acked)) = map.next_entry::<&str, bool>()? {
                    let id = Some(key)
                        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|k| k.parse::<u64>().ok())
                        .ok_or_else(|| de::Error::custom("an ack id is not a decimal u64"))?;
                    states
                        .push((id, acked))
                        .map_err(|_| de::Error::custom("more ack ids than one poll asks"))?;
                }
                Ok(AckStates(states))
            }
        }
        d.deserialize_map(Entries)
    }
}

/// The answer to an acknowledgement poll, `{"acks":{"0":true,"1":false}}`: calls `f(id, acked)`
/// for each entry. Returns `None` for a body of another shape, or one with more than
/// [`MAX_ACK_IDS`] entries (more than we asked about); then `f` is not called.
pub fn hec_acks(body: &[u8], mut f: impl FnMut(u64, bool)) -> Option<()> {
    if !json::nesting_within(body, HEC_NESTING_MAX) {
        return None;
    }
    let (answer, _) = serde_json_core::from_slice::<AckPollAnswer>(body).ok()?;
    for &(id, acked) in &answer.acks.0 {
        f(id, acked);
    }
    Some(())
}

/// Response bytes a dead-letter line keeps.
pub const DEAD_LETTER_RESPONSE_MAX: usize = 1024;

/// One dead-letter line: when, which output, the status and (truncated) response body, and
/// the record with its sequence number; `record_base64` (exact) only when the record is not
/// UTF-8, where `record` has U+FFFD in place of what is not.
#[derive(Serialize)]
struct DeadLetter<'a> {
    time: &'a str,
    feed: &'a str,
    output: &'a str,
    status: u16,
    response: Text<'a>,
    seq: u64,
    record: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_base64: Option<Base64<'a>>,
}

/// One dead-letter line (JSON, LF-terminated): [`DeadLetter`]. Its bound is counted from the
/// lengths of what goes in (each string at its worst-case escaping), so [`TooLarge`] is a bug.
pub fn dead_letter_line(
    time: &str,
    feed: &str,
    output: &str,
    status: u16,
    response: &[u8],
    seq: u64,
    record: &[u8],
) -> Result<Vec<u8>, TooLarge> {
    let response = &response[..response.len().min(DEAD_LETTER_RESPONSE_MAX)];
    let (text, exact) = json::text_and_exact(record);
    let line = DeadLetter {
        time,
        feed,
        output,
        status,
        response: Text(response),
        seq,
        record: text,
        record_base64: exact,
    };
    let bound = 2
        + json::key_bound("time")
        + json::str_bound(time.len())
        + json::key_bound("feed")
        + json::str_bound(feed.len())
        + json::key_bound("output")
        + json::str_bound(output.len())
        + json::key_bound("status")
        + json::U64
        + json::key_bound("response")
        + json::str_bound(response.len())
        + json::key_bound("seq")
        + json::U64
        + json::key_bound("record")
        + json::str_bound(record.len())
        + json::key_bound("record_base64")
        + json::base64_bound(record.len());
    let mut out = Vec::with_capacity(bound + 1);
    json::append(&mut out, &line, bound)?;
    out.push(b'\n');
    Ok(out)
}

/// The gzipped form of `n` bytes, at most: deflate's stored blocks (5 bytes per 16 KiB at
/// worst) and gzip's header and trailer, with room to spare.
pub fn gzip_bound(n: usize) -> usize {
    n + n / 1024 + 128
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::http::response::MAX_RESPONSE_BODY;
    use std::io::Read as _;
    use std::time::Duration;

    fn cfg(preset: Preset, body: BodyFormat, path: &str) -> HttpOutput {
        HttpOutput {
            host: "siem.example.net".into(),
            port: 8088,
            path: path.into(),
            preset,
            headers: vec![("Authorization".into(), "Splunk T0K".into())],
            body,
            gzip: false,
            max_batch_bytes: 1 << 20,
            max_batch_age: Duration::from_secs(1),
            request_timeout: Duration::from_secs(30),
            ack: false,
            ack_timeout: Duration::from_secs(300),
            ack_poll: Duration::from_secs(10),
            channel: "11111111-2222-8333-9444-555555555555".into(),
            tls: None,
        }
    }

    fn body_of(format: BodyFormat, recs: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            let before = b.len();
            push_record(&mut b, format, r).unwrap();
            let cost = record_cost(format, r, i as u32);
            let added = b.len() - before + usize::from(format == BodyFormat::JsonArray && i == 0);
            assert!(added <= cost, "cost {cost} < {added} for {r:?}");
        }
        finish_body(&mut b, format);
        b
    }

    #[test]
    fn a_small_ndjson_hec_raw_request_is_exactly_these_bytes() {
        let c = cfg(
            Preset::SplunkHec,
            BodyFormat::Ndjson,
            "/services/collector/raw",
        );
        let body = body_of(BodyFormat::Ndjson, &[b"{\"a\":1}", b"line two"]);
        assert_eq!(body, b"{\"a\":1}\nline two\n");
        let mut head = Vec::new();
        data_head(&mut head, &c, body.len(), false);
        let want = format!(
            "POST /services/collector/raw HTTP/1.1\r\nHost: siem.example.net:8088\r\nUser-Agent: ringrelay/{}\r\nAuthorization: Splunk T0K\r\nX-Splunk-Request-Channel: 11111111-2222-8333-9444-555555555555\r\nContent-Type: text/plain\r\nContent-Length: 17\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(head).unwrap(), want);
    }

    #[test]
    fn json_array_and_hec_event_bodies_are_valid_json_shapes() {
        assert_eq!(
            body_of(BodyFormat::JsonArray, &[b"{\"a\":1}", b"{\"b\":2}"]),
            b"[{\"a\":1},{\"b\":2}]"
        );
        assert_eq!(body_of(BodyFormat::JsonArray, &[]), b"[]");
        assert_eq!(
            body_of(BodyFormat::HecEvent, &[b"say \"hi\"\\\t\x01", b"\xff ok"]),
            "{\"event\":\"say \\\"hi\\\"\\\\\\t\\u0001\"}\n{\"event\":\"\u{fffd} ok\"}\n"
                .as_bytes()
        );
        let mut c = cfg(Preset::Generic, BodyFormat::JsonArray, "/in?x=1");
        c.port = 80;
        c.headers.clear();
        let mut head = Vec::new();
        data_head(&mut head, &c, 2, true);
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("POST /in?x=1 HTTP/1.1\r\nHost: siem.example.net\r\n"));
        assert!(head.ends_with(
            "Content-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n"
        ));
    }

    #[test]
    fn gzip_round_trips_through_flate2() {
        let body = body_of(
            BodyFormat::Ndjson,
            &[b"rec 1 aaaaaaaaaaaaaaaaaaaa", b"rec 2 bbbbbbbbbbbbbbbbbbbb"],
        );
        let mut gz = vec![1, 2, 3];
        gzip_into(&body, &mut gz).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn ack_poll_request_lists_the_ids() {
        let c = cfg(
            Preset::SplunkHec,
            BodyFormat::Ndjson,
            "/services/collector/raw",
        );
        let mut req = Vec::new();
        ack_request(&mut req, &c, [3u64, 4, 9].into_iter()).unwrap();
        let s = String::from_utf8(req).unwrap();
        assert!(s.starts_with("POST /services/collector/ack HTTP/1.1\r\n"));
        assert!(s.contains("X-Splunk-Request-Channel: 11111111-2222-8333-9444-555555555555\r\n"));
        assert!(s.ends_with("Content-Length: 16\r\n\r\n{\"acks\":[3,4,9]}"));
    }

    #[test]
    fn hec_ack_json_is_read() {
        assert_eq!(
            hec_ack_id(b"{\"text\":\"Success\",\"code\":0,\"ackId\":42}"),
            Some(42)
        );
        assert_eq!(hec_ack_id(b"{ \"ackId\" : 7 }\n"), Some(7));
        assert_eq!(hec_ack_id(b"{\"text\":\"Success\",\"code\":0}"), None);
        let mut seen = Vec::new();
        let ok = hec_acks(
            b"{\"acks\": {\"0\":true, \"1\" : false,\"12\":true}}",
            |i, a| seen.push((i, a)),
        );
        assert_eq!(ok, Some(()));
        assert_eq!(seen, [(0, true), (1, false), (12, true)]);
        assert_eq!(hec_acks(b"{\"acks\":{}}", |_, _| panic!()), Some(()));
        assert_eq!(hec_acks(b"{\"acks\":[1]}", |_, _| {}), None);
        assert_eq!(hec_acks(b"{\"acks\":{\"x\":true}}", |_, _| {}), None);
        assert_eq!(hec_acks(b"{\"acks\":{\"+1\":true}}", |_, _| {}), None);
        assert_eq!(hec_acks(b"{\"acks\":{\"1\":tru", |_, _| {}), None);
    }

    #[test]
    fn a_hec_answer_is_parsed_as_json_not_searched() {
        // The old reader found `"ackId"` anywhere, inside a string too.
        assert_eq!(hec_ack_id(b"{\"text\":\"no \\\"ackId\\\":9 here\"}"), None);
        assert_eq!(hec_ack_id(b"{\"ackId\":7} trailing"), None);
        assert_eq!(hec_ack_id(b"{\"ackId\":-1}"), None);
        assert_eq!(hec_ack_id(b"{\"ackId\":18446744073709551616}"), None);
        assert_eq!(
            hec_ack_id(b"{\"text\":\"Success\",\"extra\":{\"a\":[1,{\"b\":null}]},\"ackId\":3}"),
            Some(3)
        );
        // Unknown members are skipped, also when they hold the key we look for.
        let mut seen = Vec::new();
        let body = b"{\"note\":{\"acks\":1},\"acks\":{\"5\":true}}";
        assert_eq!(hec_acks(body, |i, a| seen.push((i, a))), Some(()));
        assert_eq!(seen, [(5, true)]);
    }

    #[test]
    fn a_deeply_nested_answer_is_refused_without_recursing() {
        let mut body = b"{\"x\":".to_vec();
        body.extend(std::iter::repeat_n(b'[', MAX_RESPONSE_BODY));
        assert_eq!(hec_ack_id(&body), None);
        assert_eq!(hec_acks(&body, |_, _| panic!()), None);
    }

    #[test]
    fn an_ack_poll_answer_with_more_ids_than_asked_is_refused() {
        let mut body = String::from("{\"acks\":{");
        for i in 0..=MAX_ACK_IDS {
            body.push_str(&format!("{}\"{i}\":true", if i > 0 { "," } else { "" }));
        }
        body.push_str("}}");
        assert_eq!(hec_acks(body.as_bytes(), |_, _| panic!()), None);
    }

    #[test]
    fn an_ack_poll_asks_about_at_most_max_ack_ids() {
        let c = cfg(
            Preset::SplunkHec,
            BodyFormat::Ndjson,
            "/services/collector/raw",
        );
        let mut req = Vec::new();
        ack_request(&mut req, &c, u64::MAX - 100..u64::MAX).unwrap();
        let body = &req[req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        assert_eq!(body.iter().filter(|&&b| b == b',').count(), MAX_ACK_IDS - 1);
        assert!(body.len() <= ACK_POLL_MAX);
    }

    #[test]
    fn a_dead_letter_line_is_one_json_line() {
        let l = dead_letter_line(
            "2026-01-01T00:00:00.000Z",
            "f",
            "o",
            400,
            b"{\"error\":\"bad\"}",
            777,
            b"rec 777 \"x\"\n",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(l).unwrap(),
            "{\"time\":\"2026-01-01T00:00:00.000Z\",\"feed\":\"f\",\"output\":\"o\",\"status\":400,\"response\":\"{\\\"error\\\":\\\"bad\\\"}\",\"seq\":777,\"record\":\"rec 777 \\\"x\\\"\\n\"}\n"
        );
    }

    #[test]
    fn a_dead_letter_line_keeps_a_record_that_is_not_utf8_exactly() {
        let record = [b'a', 0xff, 0x00, b'"', 0xe2, 0x82];
        let l = dead_letter_line("t", "f", "o", 400, &[0xc3; 2000], 1, &record).unwrap();
        let l = String::from_utf8(l).unwrap();
        assert!(
            l.ends_with(
                ",\"record\":\"a\u{fffd}\\u0000\\\"\u{fffd}\",\"record_base64\":\"Yf8AIuKC\"}\n"
            ),
            "{l}"
        );
        // The response is cut at DEAD_LETTER_RESPONSE_MAX bytes, each invalid alone.
        assert_eq!(l.matches('\u{fffd}').count(), DEAD_LETTER_RESPONSE_MAX + 2);
    }

    #[test]
    fn a_worst_case_dead_letter_line_fits_its_bound() {
        let record = [0x01u8; 4096];
        let l = dead_letter_line("t", "f", "o", 599, &[0x1f; 4096], u64::MAX, &record).unwrap();
        assert!(l.len() > 6 * record.len());
    }
}
