//! The HTTP output's response side, sans I/O: an incremental HTTP/1.1 response reader
//! (length, chunked and close-delimited bodies, in any split) and `Retry-After`.

use std::time::Duration;

/// Response bytes kept of a body; the rest is read and discarded.
pub const MAX_RESPONSE_BODY: usize = 64 << 10;
/// A response head longer than this is refused (the connection is then closed).
pub const MAX_RESPONSE_HEAD: usize = 16 << 10;
/// A chunk size line (with extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 1024;
/// `Retry-After` is honoured up to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A complete response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// The first [`MAX_RESPONSE_BODY`] bytes of the body.
    pub body: Vec<u8>,
    /// The body's whole length.
    pub body_len: u64,
    /// `Retry-After` in its seconds form.
    pub retry_after: Option<Duration>,
    /// The server closes the connection after this response.
    pub close: bool,
}

/// Why a response could not be read. The connection is closed after any of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseError {
    /// Not HTTP/1.x, or a malformed head (the peer is probably not an HTTP server).
    BadHead(String),
    /// The head is longer than [`MAX_RESPONSE_HEAD`].
    HeadTooLong,
    /// A malformed chunk size line.
    BadChunk,
    /// The connection closed before the response was complete.
    Truncated,
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResponseError::BadHead(e) => write!(f, "malformed response head: {e}"),
            ResponseError::HeadTooLong => {
                write!(f, "response head longer than {MAX_RESPONSE_HEAD} bytes")
            }
            ResponseError::BadChunk => f.write_str("malformed chunk in a chunked response"),
            ResponseError::Truncated => f.write_str("connection closed before the response ended"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    /// Reading the head.
    Head,
    /// `left` bytes of a Content-Length body to go.
    Length { left: u64 },
    /// Expecting a chunk size line.
    ChunkSize,
    /// `left` bytes of chunk data, then its CRLF.
    ChunkData { left: u64 },
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
    /// The body runs until the connection closes.
    UntilClose,
}

/// Reads one response at a time from bytes pushed in any split; bounded memory: unparsed bytes
/// stay below one read's worth plus a head, and only [`MAX_RESPONSE_BODY`] of a body is kept.
#[derive(Debug)]
pub struct ResponseReader {
    buf: Vec<u8>,
    state: BodyState,
    status: u16,
    retry_after: Option<Duration>,
    close: bool,
    body: Vec<u8>,
    body_len: u64,
}

impl Default for ResponseReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseReader {
    /// A reader expecting a response head.
    pub fn new() -> ResponseReader {
        ResponseReader {
            buf: Vec::with_capacity(MAX_RESPONSE_HEAD + super::READ_CHUNK),
            state: BodyState::Head,
            status: 0,
            retry_after: None,
            close: false,
            body: Vec::new(),
            body_len: 0,
        }
    }

    /// Forgets everything (a new connection).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.body.clear();
        self.start_head();
    }

    fn start_head(&mut self) {
        self.state = BodyState::Head;
        self.status = 0;
        self.retry_after = None;
        self.close = false;
        self.body.clear();
        self.body_len = 0;
    }

    /// Whether a response has started arriving.
    pub fn started(&self) -> bool {
        !self.buf.is_empty() || self.state != BodyState::Head
    }

    /// Takes received bytes; returns a response once one is complete. Bytes after it stay for
    /// the next call (a server may not send them; we never pipeline).
    pub fn push(&mut self, data: &[u8]) -> Result<Option<Response>, ResponseError> {
        self.buf.extend_from_slice(data);
        self.advance()
    }

    /// The connection closed: completes a close-delimited body, or fails.
    pub fn eof(&mut self) -> Result<Response, ResponseError> {
        if let Some(r) = self.advance()? {
            return Ok(r);
        }
        match self.state {
            BodyState::UntilClose => Ok(self.complete()),
            _ => Err(ResponseError::Truncated),
        }
    }

    fn keep(&mut self, n: usize) {
        let room = MAX_RESPONSE_BODY.saturating_sub(self.body.len());
        self.body.reserve_exact(n.min(room));
        self.body.extend_from_slice(&self.buf[..n.min(room)]);
        self.body_len += n as u64;
        self.buf.drain(..n);
    }

    fn complete(&mut self) -> Response {
        let r = Response {
            status: self.status,
            body: std::mem::take(&mut self.body),
            body_len: self.body_len,
            retry_after: self.retry_after,
            close: self.close,
        };
        self.start_head();
        r
    }

    fn advance(&mut self) -> Result<Option<Response>, ResponseError> {
        loop {
            match self.state {
                BodyState::Head => {
                    if !self.head()? {
                        return Ok(None);
                    }
                }
                BodyState::Length { left } => {
                    let n = (left.min(self.buf.len() as u64)) as usize;
                    self.keep(n);
                    let left = left - n as u64;
                    if left > 0 {
                        self.state = BodyState::Length { left };
                        return Ok(None);
                    }
                    return Ok(Some(self.complete()));
                }
                BodyState::ChunkSize => {
                    if !self.chunk_size()? {
                        return Ok(None);
                    }
                }
                BodyState::ChunkData { left } => {
                    let n = (left.min(self.buf.len() as u64)) as usize;
                    self.keep(n);
                    let left = left - n as u64;
                    if left > 0 {
                        self.state = BodyState::ChunkData { left };
                        return Ok(None);
                    }
                    self.state = BodyState::ChunkEnd;
                }
                BodyState::ChunkEnd => {
                    if self.buf.len() < 2 {
                        return Ok(None);
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(ResponseError::BadChunk);
                    }
                    self.buf.drain(..2);
                    self.state = BodyState::ChunkSize;
                }
                BodyState::Trailers => match self.trailer()? {
                    Some(true) => return Ok(Some(self.complete())),
                    Some(false) => {}
                    None => return Ok(None),
                },
                BodyState::UntilClose => {
                    let n = self.buf.len();
                    self.keep(n);
                    return Ok(None);
                }
            }
        }
    }

    /// Reads a response head: false while it is incomplete. An interim response (1xx) is
    /// consumed and the state stays `Head`; any other sets the body's state.
    fn head(&mut self) -> Result<bool, ResponseError> {
        let mut headers = [httparse::EMPTY_HEADER; 48];
        let mut resp = httparse::Response::new(&mut headers);
        let n = match resp.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if self.buf.len() > MAX_RESPONSE_HEAD {
                    return Err(ResponseError::HeadTooLong);
                }
                return Ok(false);
            }
            Err(e) => return Err(ResponseError::BadHead(e.to_string())),
        };
        if n > MAX_RESPONSE_HEAD {
            return Err(ResponseError::HeadTooLong);
        }
        let status = resp.code.unwrap_or(0);
        let head = Head::of(&resp)?;
        self.buf.drain(..n);
        if (100..200).contains(&status) {
            // An interim response (100 Continue): the real one follows.
            return Ok(true);
        }
        self.status = status;
        self.close = head.close;
        self.retry_after = head.retry_after;
        self.state = if status == 204 || status == 304 {
            BodyState::Length { left: 0 }
        } else if head.chunked {
            BodyState::ChunkSize
        } else if let Some(left) = head.length {
            BodyState::Length { left }
        } else {
            self.close = true;
            BodyState::UntilClose
        };
        Ok(true)
    }

    /// Reads a chunk-size line: false while it is incomplete.
    fn chunk_size(&mut self) -> Result<bool, ResponseError> {
        match httparse::parse_chunk_size(&self.buf) {
            Ok(httparse::Status::Complete((n, _))) if n > MAX_CHUNK_LINE => {
                Err(ResponseError::BadChunk)
            }
            Ok(httparse::Status::Complete((n, size))) => {
                self.buf.drain(..n);
                self.state = if size == 0 {
                    BodyState::Trailers
                } else {
                    BodyState::ChunkData { left: size }
                };
                Ok(true)
            }
            Ok(httparse::Status::Partial) if self.buf.len() > MAX_CHUNK_LINE => {
                Err(ResponseError::BadChunk)
            }
            Ok(httparse::Status::Partial) => Ok(false),
            Err(_) => Err(ResponseError::BadChunk),
        }
    }

    /// Reads one trailer line: `Some(true)` at the empty line that ends the response,
    /// `Some(false)` after another, `None` while the line is incomplete.
    fn trailer(&mut self) -> Result<Option<bool>, ResponseError> {
        let Some(i) = memchr::memchr(b'\n', &self.buf) else {
            if self.buf.len() > MAX_RESPONSE_HEAD {
                return Err(ResponseError::HeadTooLong);
            }
            return Ok(None);
        };
        if i >= MAX_RESPONSE_HEAD {
            return Err(ResponseError::HeadTooLong);
        }
        let empty = self.buf[..i] == *b"" || self.buf[..i] == *b"\r";
        self.buf.drain(..=i);
        Ok(Some(empty))
    }
}

/// What a response head says about its body and its connection.
struct Head {
    length: Option<u64>,
    chunked: bool,
    close: bool,
    retry_after: Option<Duration>,
}

impl Head {
    fn of(resp: &httparse::Response<'_, '_>) -> Result<Head, ResponseError> {
        let mut head = Head {
            length: None,
            chunked: false,
            close: resp.version == Some(0),
            retry_after: None,
        };
        for h in resp.headers.iter() {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            if h.name.eq_ignore_ascii_case("content-length") {
                match v.parse::<u64>() {
                    Ok(l) => head.length = Some(l),
                    Err(_) => return Err(ResponseError::BadHead(format!("Content-Length {v:?}"))),
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = v
                    .rsplit(',')
                    .next()
                    .is_some_and(|l| l.trim().eq_ignore_ascii_case("chunked"));
            } else if h.name.eq_ignore_ascii_case("connection") {
                for t in v.split(',') {
                    if t.trim().eq_ignore_ascii_case("close") {
                        head.close = true;
                    } else if t.trim().eq_ignore_ascii_case("keep-alive") {
                        head.close = false;
                    }
                }
            } else if h.name.eq_ignore_ascii_case("retry-after") {
                head.retry_after = parse_retry_after(v);
            }
        }
        Ok(head)
    }
}

/// `Retry-After` in seconds (the HTTP-date form is not honoured: it needs a trusted wall clock
/// agreement with the server; the normal backoff applies then).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = v.parse().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` in pieces of `step`, returns every response.
    fn read_all(bytes: &[u8], step: usize) -> Result<Vec<Response>, ResponseError> {
        let mut r = ResponseReader::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            let mut data = piece;
            while let Some(resp) = r.push(data)? {
                out.push(resp);
                data = b"";
            }
        }
        Ok(out)
    }

    #[test]
    fn responses_parse_in_any_split_with_length_and_chunked_bodies() {
        let stream = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
        for step in [1, 2, 3, 7, 64, stream.len()] {
            let rs = read_all(stream, step).unwrap();
            assert_eq!(rs.len(), 3, "step {step}");
            assert_eq!((rs[0].status, &rs[0].body[..]), (200, &b"hello"[..]));
            assert!(!rs[0].close);
            assert_eq!((rs[1].status, &rs[1].body[..]), (429, &b"abcde"[..]));
            assert_eq!(rs[1].retry_after, Some(Duration::from_secs(7)));
            assert_eq!((rs[2].status, rs[2].body_len, rs[2].close), (204, 0, true));
        }
    }

    #[test]
    fn a_close_delimited_body_ends_at_eof_and_a_cut_one_is_an_error() {
        let mut r = ResponseReader::new();
        assert_eq!(r.push(b"HTTP/1.0 503 Busy\r\n\r\nbusy now").unwrap(), None);
        let resp = r.eof().unwrap();
        assert_eq!(
            (resp.status, &resp.body[..], resp.close),
            (503, &b"busy now"[..], true)
        );
        let mut r = ResponseReader::new();
        assert_eq!(
            r.push(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
                .unwrap(),
            None
        );
        assert_eq!(r.eof(), Err(ResponseError::Truncated));
        assert!(matches!(
            ResponseReader::new().push(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(ResponseError::BadHead(_))
        ));
    }

    #[test]
    fn a_long_body_is_kept_up_to_the_cap_and_counted_whole() {
        let n = MAX_RESPONSE_BODY + 1000;
        let mut bytes = format!("HTTP/1.1 400 Bad\r\nContent-Length: {n}\r\n\r\n").into_bytes();
        bytes.extend(std::iter::repeat_n(b'x', n));
        let rs = read_all(&bytes, 4096).unwrap();
        assert_eq!(rs[0].body.len(), MAX_RESPONSE_BODY);
        assert_eq!(rs[0].body_len, n as u64);
    }

    #[test]
    fn retry_after_takes_seconds_only() {
        assert_eq!(parse_retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
