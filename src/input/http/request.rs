//! The HTTP input's protocol core, sans I/O: a request head read with `httparse`, and a batch
//! body split into records. The relay feeds it bytes and writes the response it chooses.
//!
//! ## What a sender may post (Cloud NSS and its likes)
//! - `POST <path>` with `Content-Length` (chunked request bodies are refused with 411).
//! - A body of LF-separated records (CR LF accepted, empty lines skipped), or a JSON array of
//!   elements (`[{..},{..}]`, Cloud NSS "JSON Array Notation"), several arrays in a row allowed.
//!   An array is split at its top-level commas, tracking only strings and nesting: an element
//!   need not be valid JSON, it is stored as it came (trimmed of whitespace). A body that starts
//!   like an array but does not close is stored as lines instead: nothing a sender posted is
//!   refused for its content (Cloud NSS drops a batch on 400).
//! - `Content-Encoding: gzip`, decoded with a bound on the decoded size.
//!
//! ## Status codes (FIELD.md §3: 200/204 = delivered, 400 = dropped, anything else = retried)
//! 200 when every record is in the ring; 400 only for what can never be accepted (a head that
//! is not HTTP, a gzip body that does not decode); 401 bad or missing secret; 404 other path;
//! 405 other method; 411 no `Content-Length`; 413 body or decoded body over the limit;
//! 415 a content encoding other than gzip; 431 head over the limit; 503 ring full (`block`).

use std::io::Read as _;

/// Limits of one request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Request line and headers.
    pub max_head: usize,
    /// Body as sent.
    pub max_body: usize,
    /// Body after gzip decoding.
    pub max_decoded: usize,
}

/// Headers a request may carry, at most.
const MAX_HEADERS: usize = 64;

/// What the endpoint expects of a request.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    /// The path to `POST` to (the query string is ignored).
    pub path: &'a str,
    /// `(header name, shared secret)` a request must carry.
    pub auth: Option<(&'a str, &'a [u8])>,
}

/// A request head that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the request line and headers, blank line included.
    pub len: usize,
    /// `Content-Length`.
    pub body_len: usize,
    /// The body is gzip-encoded.
    pub gzip: bool,
    /// The connection stays open after the response.
    pub keep_alive: bool,
}

/// A refusal: the status, a short reason for the response body and the log, and whether the
/// connection must close after it (the rest of the stream cannot be trusted to be framed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Why, in a few words.
    pub reason: &'static str,
    /// Close after the response.
    pub close: bool,
    /// Bytes of the refused request (head and body) to skip when the connection stays open.
    pub skip: usize,
}

const fn refuse(status: u16, reason: &'static str, close: bool) -> Refusal {
    Refusal {
        status,
        reason,
        close,
        skip: 0,
    }
}

/// Reads a request head from the start of `buf`: `Ok(None)` while it is incomplete.
pub fn parse_head(
    buf: &[u8],
    expect: &Expect<'_>,
    limits: &Limits,
) -> Result<Option<Head>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head => {
            return Err(refuse(431, "request head too large", true))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(431, "too many request headers", true))
        }
        Err(_) => return Err(refuse(400, "not an HTTP/1.1 request", true)),
    };
    if len > limits.max_head {
        return Err(refuse(431, "request head too large", true));
    }
    let auth_header = expect.auth.map(|(h, _)| h);
    let f = Fields::read(req.headers, req.version.unwrap_or(0), auth_header)?;
    if f.chunked {
        return Err(refuse(
            411,
            "chunked request bodies are not supported; send Content-Length",
            true,
        ));
    }
    let post = req.method == Some("POST");
    let body_len = match f.body_len {
        Some(n) if n > limits.max_body => {
            return Err(refuse(413, "body larger than max_body_bytes", true))
        }
        Some(n) => n,
        None if post => return Err(refuse(411, "Content-Length required", true)),
        // A GET or HEAD: no body.
        None => 0,
    };
    // From here on the request's length is known: a refusal skips it and keeps the connection.
    let skip = |status, reason| Refusal {
        status,
        reason,
        close: !f.keep_alive,
        skip: len + body_len,
    };
    let path = req.path.unwrap_or("");
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let target = Target {
        post,
        path,
        secret: f.secret,
        other_encoding: f.other_encoding,
    };
    if let Err((status, reason)) = target.check(expect) {
        return Err(skip(status, reason));
    }
    Ok(Some(Head {
        len,
        body_len,
        gzip: f.gzip,
        keep_alive: f.keep_alive,
    }))
}

/// What a request asks of the endpoint: what [`Target::check`] holds against [`Expect`].
struct Target<'b> {
    /// The method is `POST`.
    post: bool,
    /// The path, without its query string.
    path: &'b str,
    /// The shared-secret header's value.
    secret: Option<&'b [u8]>,
    /// A `Content-Encoding` other than gzip or identity.
    other_encoding: bool,
}

impl Target<'_> {
    /// The status and reason to refuse it with, in this order: 405 not a `POST`, 404 another
    /// path, 401 a missing or wrong secret, 415 an encoding other than gzip.
    fn check(&self, expect: &Expect<'_>) -> Result<(), (u16, &'static str)> {
        if !self.post {
            return Err((405, "only POST is accepted"));
        }
        if self.path != expect.path {
            return Err((404, "no such path"));
        }
        if let Some((_, want)) = expect.auth {
            if !self.secret.is_some_and(|got| constant_time_eq(got, want)) {
                return Err((401, "missing or wrong shared secret"));
            }
        }
        if self.other_encoding {
            return Err((415, "unsupported Content-Encoding (gzip or identity)"));
        }
        Ok(())
    }
}

/// What a request's headers say, as far as the endpoint cares.
struct Fields<'b> {
    /// `Content-Length`.
    body_len: Option<usize>,
    /// A `Transfer-Encoding` (chunked) was sent.
    chunked: bool,
    /// `Content-Encoding: gzip` (or `x-gzip`).
    gzip: bool,
    /// A `Content-Encoding` other than gzip or identity.
    other_encoding: bool,
    /// The connection stays open after the response.
    keep_alive: bool,
    /// The value of the shared-secret header (`auth`), trimmed.
    secret: Option<&'b [u8]>,
}

impl<'b> Fields<'b> {
    /// Reads `headers` of an HTTP/1.`version` request; `auth`: the name of the shared-secret
    /// header. Two different `Content-Length`s, or one that is not a number, are refused.
    fn read(
        headers: &[httparse::Header<'b>],
        version: u8,
        auth: Option<&str>,
    ) -> Result<Fields<'b>, Refusal> {
        let mut f = Fields {
            body_len: None,
            chunked: false,
            gzip: false,
            other_encoding: false,
            keep_alive: version >= 1,
            secret: None,
        };
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value).ok().map(str::trim);
                match v.and_then(|v| v.parse::<usize>().ok()) {
                    // Two different lengths: request smuggling territory.
                    Some(n) if f.body_len.is_none_or(|b| b == n) => f.body_len = Some(n),
                    _ => return Err(refuse(400, "bad Content-Length", true)),
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                f.chunked = true;
            } else if name.eq_ignore_ascii_case("content-encoding") {
                f.content_encoding(h.value);
            } else if name.eq_ignore_ascii_case("connection") {
                let v = h.value.trim_ascii();
                if v.eq_ignore_ascii_case(b"close") {
                    f.keep_alive = false;
                } else if v.eq_ignore_ascii_case(b"keep-alive") {
                    f.keep_alive = true;
                }
            } else if auth.is_some_and(|want| name.eq_ignore_ascii_case(want)) {
                f.secret = Some(h.value.trim_ascii());
            }
        }
        Ok(f)
    }

    /// A `Content-Encoding` header's comma-separated codings.
    fn content_encoding(&mut self, value: &[u8]) {
        for enc in value.split(|&b| b == b',') {
            match enc.trim_ascii() {
                e if e.eq_ignore_ascii_case(b"gzip") || e.eq_ignore_ascii_case(b"x-gzip") => {
                    self.gzip = true;
                }
                e if e.eq_ignore_ascii_case(b"identity") || e.is_empty() => {}
                _ => self.other_encoding = true,
            }
        }
    }
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

/// Decodes a gzip body into `out` (cleared first), refusing more than `max` decoded bytes.
pub fn gunzip(body: &[u8], max: usize, out: &mut Vec<u8>) -> Result<(), Refusal> {
    out.clear();
    let mut dec = flate2::read::MultiGzDecoder::new(body).take(max as u64 + 1);
    match dec.read_to_end(out) {
        Ok(_) if out.len() > max => Err(refuse(413, "decoded body larger than its limit", false)),
        Ok(_) => Ok(()),
        Err(_) => Err(refuse(400, "body is not valid gzip", false)),
    }
}

/// How a batch body holds its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One or more closed JSON arrays: one record per element.
    Arrays,
    /// Anything else: one record per line.
    Lines,
}

/// The body's shape: arrays if it starts with `[` and is nothing but closed arrays.
pub fn shape(body: &[u8]) -> Shape {
    let first = body.iter().position(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|i| body[i] == b'[') && json_arrays(body, &mut |_| {}) {
        Shape::Arrays
    } else {
        Shape::Lines
    }
}

/// The records of a body of that shape, in order.
pub fn split(body: &[u8], shape: Shape, emit: &mut dyn FnMut(&[u8])) {
    match shape {
        Shape::Arrays => {
            json_arrays(body, emit);
        }
        Shape::Lines => lines(body, emit),
    }
}

/// The records of a batch body, in order: JSON array elements, or lines.
pub fn split_records(body: &[u8], emit: &mut dyn FnMut(&[u8])) {
    split(body, shape(body), emit);
}

/// LF-separated records; a CR before the LF is dropped, empty lines are skipped.
fn lines(body: &[u8], emit: &mut dyn FnMut(&[u8])) {
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', body).chain([body.len()]) {
        let line = &body[start..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            emit(line);
        }
        start = end + 1;
    }
}

/// One or more JSON arrays in a row, split at their top-level commas. Returns false (having
/// emitted part of the records) if the body is not such arrays: an array does not close, or
/// something other than whitespace stands between or after them.
fn json_arrays(body: &[u8], emit: &mut dyn FnMut(&[u8])) -> bool {
    let mut i = 0;
    loop {
        while i < body.len() && body[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == body.len() {
            return true;
        }
        if body[i] != b'[' {
            return false;
        }
        i += 1;
        let mut start = i;
        let mut depth = 0usize;
        loop {
            let Some(&b) = body.get(i) else {
                return false;
            };
            i += 1;
            match b {
                // A string: jump from quote or backslash to the next (most bytes of NSS and
                // LSS records are inside strings).
                b'"' => loop {
                    let rest = body.get(i..).unwrap_or_default();
                    let Some(k) = memchr::memchr2(b'"', b'\\', rest) else {
                        return false;
                    };
                    i += k + 1;
                    if body[i - 1] == b'"' {
                        break;
                    }
                    // A backslash escapes the next byte, whatever it is.
                    i += 1;
                },
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b',' | b']' if depth == 0 => {
                    let element = body[start..i - 1].trim_ascii();
                    if !element.is_empty() {
                        emit(element);
                    }
                    start = i;
                    if b == b']' {
                        break;
                    }
                }
                // A stray closer inside an element is part of the element.
                _ => {}
            }
        }
    }
}

/// An HTTP/1.1 response with a small text body.
pub fn response(status: u16, body: &str, keep_alive: bool, retry_after: Option<u32>) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut r = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(s) = retry_after {
        r.push_str(&format!("Retry-After: {s}\r\n"));
    }
    if !keep_alive {
        r.push_str("Connection: close\r\n");
    }
    r.push_str("\r\n");
    r.push_str(body);
    r.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 1024,
        max_body: 4096,
        max_decoded: 8192,
    };
    const EXPECT: Expect<'static> = Expect {
        path: "/nss",
        auth: Some(("x-panther-zscaler", b"s3cret")),
    };

    fn split(body: &[u8]) -> Vec<String> {
        let mut v = Vec::new();
        split_records(body, &mut |r| {
            v.push(String::from_utf8_lossy(r).into_owned())
        });
        v
    }

    #[test]
    fn a_json_array_splits_at_top_level_commas_only() {
        let body =
            br#" [ {"a":"x,]}","b":[1,2,{"c":3}]} , {"d":"\"quoted\", still"},{broken:json} ]
"#;
        assert_eq!(
            split(body),
            [
                r#"{"a":"x,]}","b":[1,2,{"c":3}]}"#,
                r#"{"d":"\"quoted\", still"}"#,
                "{broken:json}"
            ]
        );
        assert_eq!(
            split(b"[{\"a\":1}][{\"b\":2}]\n"),
            ["{\"a\":1}", "{\"b\":2}"]
        );
        assert!(split(b"[]").is_empty());
    }

    #[test]
    fn a_backslash_at_the_very_end_of_a_string_is_not_read_past() {
        // Found by the fuzz smoke test: the escape skip stepped past the end of the body.
        assert_eq!(split(b"[\"\\"), ["[\"\\"]);
        assert_eq!(split(b"[\"a\\\"\"]"), ["\"a\\\"\""]);
    }

    #[test]
    fn lines_drop_cr_and_skip_empty_lines() {
        assert_eq!(split(b"one\r\n\ntwo\nthree"), ["one", "two", "three"]);
    }

    #[test]
    fn an_array_that_does_not_close_is_kept_as_lines() {
        assert_eq!(split(b"[{\"a\":1},\n{\"b\":2"), ["[{\"a\":1},", "{\"b\":2"]);
        assert_eq!(split(b"[1] trailing"), ["[1] trailing"]);
    }

    fn head(req: &str) -> Result<Option<Head>, Refusal> {
        parse_head(req.as_bytes(), &EXPECT, &LIMITS)
    }

    #[test]
    fn a_good_request_head_gives_its_body_length() {
        let req = "POST /nss?x=1 HTTP/1.1\r\nHost: a\r\nX-Panther-Zscaler: s3cret\r\nContent-Length: 12\r\nContent-Encoding: gzip\r\n\r\n";
        let h = head(req).unwrap().unwrap();
        assert_eq!(
            h,
            Head {
                len: req.len(),
                body_len: 12,
                gzip: true,
                keep_alive: true
            }
        );
        assert_eq!(head(&req[..20]), Ok(None));
    }

    #[test]
    fn each_bad_head_gets_its_own_status() {
        let with =
            |extra: &str| format!("POST /nss HTTP/1.1\r\nx-panther-zscaler: s3cret\r\n{extra}\r\n");
        let status = |r: Result<Option<Head>, Refusal>| r.unwrap_err().status;
        assert_eq!(status(head(&with(""))), 411);
        assert_eq!(status(head(&with("Transfer-Encoding: chunked\r\n"))), 411);
        assert_eq!(status(head(&with("Content-Length: 5000\r\n"))), 413);
        assert_eq!(
            status(head(&with("Content-Length: 1\r\nContent-Length: 2\r\n"))),
            400
        );
        assert_eq!(
            status(head(&with("Content-Length: 1\r\nContent-Encoding: br\r\n"))),
            415
        );
        assert_eq!(
            status(head("POST /nss HTTP/1.1\r\nContent-Length: 1\r\n\r\n")),
            401
        );
        assert_eq!(
            status(head(
                "POST /nss HTTP/1.1\r\nx-panther-zscaler: s3cre\r\nContent-Length: 1\r\n\r\n"
            )),
            401
        );
        assert_eq!(
            status(head("POST /other HTTP/1.1\r\nContent-Length: 1\r\n\r\n")),
            404
        );
        assert_eq!(status(head("GET /nss HTTP/1.1\r\n\r\n")), 405);
        assert_eq!(status(head("\x16\x03\x01 hello")), 400);
        assert_eq!(
            status(head(&format!(
                "POST /nss HTTP/1.1\r\nA: {}\r\n",
                "x".repeat(2000)
            ))),
            431
        );
    }

    #[test]
    fn refusals_after_a_known_length_keep_the_connection() {
        let req = "POST /other HTTP/1.1\r\nContent-Length: 1\r\n\r\n";
        let r = head(req).unwrap_err();
        assert!(!r.close);
        assert_eq!(r.skip, req.len() + 1);
        let r = head("POST /nss HTTP/1.1\r\nContent-Length: 9999\r\n\r\n").unwrap_err();
        assert!(r.close);
    }

    #[test]
    fn gzip_decodes_within_its_limit() {
        use std::io::Write as _;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&[b'a'; 10_000]).unwrap();
        let gz = enc.finish().unwrap();
        let mut out = Vec::new();
        assert!(gunzip(&gz, 10_000, &mut out).is_ok());
        assert_eq!(out.len(), 10_000);
        assert_eq!(gunzip(&gz, 9_999, &mut out).unwrap_err().status, 413);
        assert_eq!(gunzip(b"not gzip", 100, &mut out).unwrap_err().status, 400);
    }

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
