//! HTTP inputs: Cloud NSS-style batches posted over HTTP/1.1, on the same loop and the same
//! connection table as the TCP inputs.
//!
//! A connection handles one request at a time: it reads until the head and the whole body are
//! in its buffer (at most the head limit plus `max_body_bytes`, plus one read), splits the body
//! into records, appends them all to the ring, and only then answers 200: a 200 means every
//! record is in the ring's mapping, where a crash of the relay cannot take it (and on disk, with
//! `sync = "always"`). A `block` ring without room for the whole batch answers 503 with
//! `Retry-After` before taking any of it, so a retry brings no duplicates. While a response is
//! being written nothing more is read: a client that does not read its responses stalls only
//! itself. See [`request`] for the status codes.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub mod request;

use serde::Serialize;

use super::session::{Close, Next};
use super::{Conn, FeedIn, Feeds, Inputs, READS_PER_TURN};
use crate::clock;
use crate::config::SyncPolicy;
use crate::input::framing::Oversize;
use crate::json;
use crate::log::Level;
use crate::ring::WhenFull;
use crate::ring::{record_stride, AppendError};
use request::{Expect, Head, Limits, Refusal};

/// Request line and headers, at most.
pub(crate) const MAX_HEAD: usize = 16 << 10;
/// Bytes per read.
pub(crate) const READ_CHUNK: usize = 64 << 10;
/// Seconds a sender is asked to wait before retrying a refused batch.
const RETRY_AFTER_S: u32 = 5;
/// After a response that closes the connection, how long and how much of what the sender
/// still sends is read and discarded, so that it can read the response before the close
/// (closing with unread data would reset the connection and lose the response).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: u64 = 16 << 20;

/// The statuses counted per feed, in `FeedStats::http_responses` order.
pub const STATUSES: [u16; 12] = [200, 400, 401, 404, 405, 408, 411, 413, 415, 431, 500, 503];

/// The HTTP state of an input connection.
#[derive(Debug, Default)]
pub struct HttpConn {
    /// Response bytes not yet written.
    out: Vec<u8>,
    /// Close once `out` is written.
    close_after: bool,
    /// When the first byte of the request being read arrived.
    started: Option<Instant>,
    /// Closing: our side is shut down since then, and this much has been discarded since.
    lingering: Option<(Instant, u64)>,
    /// The head of the request being read is complete (its body may not be).
    head_done: bool,
    /// When the previous request was answered.
    answered: Option<Instant>,
    /// Records its 200s accepted (for its `connection_closed` line).
    pub(super) records: u64,
    /// `100 Continue` was sent for the request being read (`Expect: 100-continue`).
    continued: bool,
}

impl HttpConn {
    /// Since when the connection has been waiting for a request head (opened at `opened`):
    /// `None` while a request's body is read, a response is written, or the connection closes.
    /// An idle keep-alive connection and a slow head (slowloris) both wait.
    pub fn head_wait_since(&self, opened: Instant) -> Option<Instant> {
        let busy =
            self.head_done || !self.out.is_empty() || self.close_after || self.lingering.is_some();
        (!busy).then(|| self.answered.unwrap_or(opened))
    }

    /// The request is answered: the next one's head is awaited from `now`.
    fn answered(&mut self, now: Instant) {
        self.started = None;
        self.head_done = false;
        self.continued = false;
        self.answered = Some(now);
    }
}

/// What the buffered bytes allowed.
enum Step {
    /// A request was answered; its bytes are consumed.
    Answered(usize),
    /// More bytes are needed.
    More,
}

impl Inputs {
    /// Serves HTTP connection `id`: writes what is owed, answers complete requests, reads more
    /// up to the turn's budget (everything, when `drain`).
    pub fn service_http(&mut self, feeds: &mut dyn Feeds, id: usize, now: Instant, drain: bool) {
        let Inputs {
            conns,
            ready,
            bytes_in,
            reads: input_reads,
            ..
        } = self;
        let Some(conn) = conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let mut feed = feeds.feed(conn.feed);
        // Out of the connection while it is served, so both can be borrowed.
        let Some(mut http) = conn.http.take() else {
            return;
        };
        let mut reads = 0;
        let closing: Option<(Close, Option<io::Error>)> = loop {
            // What is owed first; once a closing response is out, only the linger.
            let flow = match send_owed(conn, &mut http, now) {
                Flow::On => linger(conn, &mut http, &mut feed, now),
                flow => flow,
            };
            match flow {
                Flow::On => {}
                Flow::Again => continue,
                Flow::Wait => break None,
                Flow::Close(why, err) => break Some((why, err)),
            }
            match answer(&mut http, &mut feed, &conn.pending, conn.peer) {
                Step::Answered(n) => {
                    conn.pending.drain(..n);
                    conn.session.active(now);
                    continue;
                }
                // A `100 Continue` to write before the body can come.
                Step::More if !http.out.is_empty() => continue,
                Step::More if conn.session.sender_closed() => {
                    break Some(if conn.pending.is_empty() {
                        (Close::SenderClosed, None)
                    } else {
                        (Close::SenderClosedMidRequest, None)
                    });
                }
                Step::More => {}
            }
            if !drain && reads >= READS_PER_TURN {
                conn.queue(ready, id);
                break None;
            }
            match read_more(conn, &mut feed, now) {
                Ok(0) => {
                    // A TLS handshake that never finished closes at once.
                    if let Next::Close(why) = conn.session.eof() {
                        break Some((why, None));
                    }
                }
                Ok(n) => {
                    reads += 1;
                    *input_reads += 1;
                    *bytes_in += n as u64;
                    conn.session.active(now);
                    http.started.get_or_insert(now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some((Close::ReadError, Some(e))),
            }
        };
        conn.http = Some(http);
        if let Some((why, err)) = closing {
            self.close_conn(feeds, id, why, err, now);
        }
    }

    /// Answers requests that have taken longer than their feed's `request_timeout` with 408
    /// and closes their connections; closes connections whose request head did not arrive
    /// within `header_timeout` (with a 408 if part of it did).
    pub fn expire_requests(&mut self, feeds: &mut dyn Feeds, now: Instant) {
        for id in 0..self.conns.len() {
            let Some(conn) = self.conns[id].as_mut() else {
                continue;
            };
            let mut feed = feeds.feed(conn.feed);
            let Some((http, cfg)) = conn.http.as_deref_mut().zip(feed.cfg.input.http.as_ref())
            else {
                continue;
            };
            if http
                .lingering
                .is_some_and(|(since, _)| now.duration_since(since) > LINGER)
            {
                self.close_conn(feeds, id, Close::ResponseSentSenderKeptOpen, None, now);
                continue;
            }
            if http
                .head_wait_since(conn.session.opened())
                .is_some_and(|s| now.duration_since(s) > cfg.header_timeout)
            {
                feed.input.stats.header_timeouts += 1;
                if conn.pending.is_empty() {
                    // Nothing of a request: nobody to answer.
                    self.close_conn(feeds, id, Close::HeaderTimeout, None, now);
                    continue;
                }
                let refusal = Refusal {
                    status: 408,
                    reason: "request head not complete within header_timeout",
                    close: true,
                    skip: 0,
                };
                respond(http, &mut feed, conn.peer, &refusal, None);
                self.service_http(feeds, id, now, false);
                continue;
            }
            if http
                .started
                .is_some_and(|s| now.duration_since(s) > cfg.request_timeout)
            {
                let refusal = Refusal {
                    status: 408,
                    reason: "request not complete within request_timeout",
                    close: true,
                    skip: 0,
                };
                respond(http, &mut feed, conn.peer, &refusal, None);
                self.service_http(feeds, id, now, false);
            }
        }
    }
}

/// What a step of an HTTP connection's turn says to do next.
enum Flow {
    /// Nothing for this step: on to the next.
    On,
    /// Start the turn's steps again.
    Again,
    /// Nothing more until the next event.
    Wait,
    /// Close the connection (the error behind it).
    Close(Close, Option<io::Error>),
}

/// Writes the response bytes owed to the sender; after a closing response, ends our side of
/// the connection and starts the linger.
fn send_owed(conn: &mut Conn, http: &mut HttpConn, now: Instant) -> Flow {
    if !http.out.is_empty() {
        return match conn.write_plain(&http.out) {
            Ok(n) => {
                http.out.drain(..n);
                Flow::Again
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Flow::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Flow::Again,
            Err(e) => Flow::Close(Close::WriteError, Some(e)),
        };
    }
    if http.close_after && http.lingering.is_none() {
        match conn.close_write() {
            Ok(true) => http.lingering = Some((now, 0)),
            Ok(false) => return Flow::Wait,
            Err(e) => return Flow::Close(Close::WriteError, Some(e)),
        }
    }
    Flow::On
}

/// After a closing response: reads and discards what the sender still sends, until it closes
/// or [`LINGER`] or [`LINGER_BYTES`] is over. `On` when not lingering.
fn linger(conn: &mut Conn, http: &mut HttpConn, feed: &mut FeedIn<'_>, now: Instant) -> Flow {
    let Some((since, discarded)) = http.lingering.as_mut() else {
        return Flow::On;
    };
    let mut sink = [0u8; 16 << 10];
    match conn.read_plain(
        &mut sink,
        (&feed.cfg.name, &mut feed.input.stats),
        &mut feed.input.logs.tls,
        now,
    ) {
        Ok(0) => return Flow::Close(Close::ResponseSent, None),
        Ok(n) => *discarded += n as u64,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flow::Wait,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => return Flow::Close(Close::ReadError, Some(e)),
    }
    if *discarded > LINGER_BYTES || now.duration_since(*since) > LINGER {
        return Flow::Close(Close::ResponseSentSenderKeptSending, None);
    }
    Flow::Again
}

/// Reads up to [`READ_CHUNK`] more of the request into `conn.pending`, as `Read::read`.
fn read_more(conn: &mut Conn, feed: &mut FeedIn<'_>, now: Instant) -> io::Result<usize> {
    let old = conn.pending.len();
    conn.pending.resize(old + READ_CHUNK, 0);
    let mut buf = std::mem::take(&mut conn.pending);
    let res = conn.read_plain(
        &mut buf[old..],
        (&feed.cfg.name, &mut feed.input.stats),
        &mut feed.input.logs.tls,
        now,
    );
    conn.pending = buf;
    conn.pending.truncate(old + *res.as_ref().unwrap_or(&0));
    res
}

/// Answers the request at the start of `pending`, if it is complete.
fn answer(http: &mut HttpConn, feed: &mut FeedIn<'_>, pending: &[u8], peer: SocketAddr) -> Step {
    let Some(cfg) = feed.cfg.input.http.as_ref() else {
        return Step::More;
    };
    let expect = Expect {
        path: &cfg.path,
        auth: cfg.auth.as_ref().map(|(h, s)| (h.as_str(), s.as_bytes())),
    };
    let limits = Limits {
        max_head: MAX_HEAD,
        max_body: cfg.max_body_bytes,
        max_decoded: cfg.max_decoded_bytes,
    };
    if pending.is_empty() {
        return Step::More;
    }
    let head = match request::parse_head(pending, &expect, &limits) {
        Ok(None) => return Step::More,
        Ok(Some(head)) => {
            http.head_done = true;
            head
        }
        Err(r) => return refuse_head(http, feed, pending, peer, r),
    };
    let Head {
        len,
        body_len,
        gzip,
        keep_alive,
    } = head;
    if pending.len() < len + body_len {
        // Path, secret and length are acceptable: tell a sender that waits for it (curl waits
        // a second) to send the body.
        if !http.continued && pending.len() == len && expects_continue(&pending[..len]) {
            http.out.extend_from_slice(CONTINUE);
            http.continued = true;
        }
        return Step::More;
    }
    let body = &pending[len..len + body_len];
    let mut decoded = Vec::with_capacity(if gzip { limits.max_decoded + 1 } else { 0 });
    let body = if gzip {
        if let Err(r) = request::gunzip(body, limits.max_decoded, &mut decoded) {
            let r = Refusal {
                close: !keep_alive,
                ..r
            };
            respond(http, feed, peer, &r, None);
            return Step::Answered(len + body_len);
        }
        &decoded[..]
    } else {
        body
    };
    match take_batch(feed, body) {
        Ok(records) => {
            let text = answer_body(200, Some(records), None);
            let r = request::response(200, &text, keep_alive, None);
            http.out.extend_from_slice(&r);
            http.close_after |= !keep_alive;
            http.answered(clock::now());
            http.records += records;
            feed.input.stats.http_responses[0] += 1;
        }
        Err(r) => {
            let r = Refusal {
                close: !keep_alive,
                ..r
            };
            let retry = (r.status == 503).then_some(RETRY_AFTER_S);
            respond(http, feed, peer, &r, retry);
        }
    }
    Step::Answered(len + body_len)
}

/// Answers the request at the start of `pending`, whose head was refused (`r`), once the
/// answer can be given.
fn refuse_head(
    http: &mut HttpConn,
    feed: &mut FeedIn<'_>,
    pending: &[u8],
    peer: SocketAddr,
    r: Refusal,
) -> Step {
    match r {
        r if r.close => {
            respond(http, feed, peer, &r, None);
            Step::Answered(pending.len())
        }
        // Refused, but framed: skip the whole request once it is here.
        r if pending.len() >= r.skip => {
            respond(http, feed, peer, &r, None);
            Step::Answered(r.skip)
        }
        // The sender waits for our word before it sends the body (`Expect: 100-continue`):
        // the final status now, and the connection closed after it (RFC 9110 §10.1.1: a
        // body it sends anyway is read and discarded while the connection lingers).
        r if expects_continue(pending) => {
            respond(http, feed, peer, &Refusal { close: true, ..r }, None);
            Step::Answered(pending.len())
        }
        _ => Step::More,
    }
}

/// The interim response to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Whether the complete request head at the start of `buf` is HTTP/1.1 and carries
/// `Expect: 100-continue` (an HTTP/1.0 sender gets no interim response: RFC 9110 §10.1.1).
fn expects_continue(buf: &[u8]) -> bool {
    // As many as `request::parse_head` takes; a head with more was refused (431) already.
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    matches!(req.parse(buf), Ok(httparse::Status::Complete(_)))
        && req.version == Some(1)
        && req.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("expect")
                && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
        })
}

/// Appends every record of `body` to the feed's ring, or none of them.
fn take_batch(feed: &mut FeedIn<'_>, body: &[u8]) -> Result<u64, Refusal> {
    let max = feed.input.framer.max_record;
    let drop_oversize = feed.input.framer.oversize == Oversize::Drop;
    let shape = request::shape(body);
    // A record of one byte and its separator take 2 body bytes and a 56-byte stride: a ring
    // that overwrites and holds 64 times the body takes it without counting.
    let roomy = feed.cfg.when_full == WhenFull::DropOldest
        && (body.len() as u64 + 1).saturating_mul(64) <= feed.ring.capacity();
    let mut need = 0u64;
    if !roomy {
        request::split(body, shape, &mut |r| {
            if r.len() <= max || !drop_oversize {
                need += record_stride(r.len().min(max) as u64);
            }
        });
    }
    // Room for every record and one wrap.
    if !roomy && !feed.ring.has_room(need + record_stride(max as u64)) {
        feed.input.stats.blocked += 1;
        return Err(Refusal {
            status: 503,
            reason: "ring full (when_full = block); retry later",
            close: false,
            skip: 0,
        });
    }
    let ts = clock::wall_ns();
    let (ring, stats) = (&mut feed.ring, &mut feed.input.stats);
    let mut taken = 0u64;
    let mut full = false;
    request::split(body, shape, &mut |r| {
        if full {
            return;
        }
        let truncated = r.len() > max;
        if truncated && drop_oversize {
            stats.dropped_oversize += 1;
            return;
        }
        let r = &r[..r.len().min(max)];
        match ring.append(r, ts, truncated) {
            Ok(_) => {
                taken += 1;
                stats.records += 1;
                stats.bytes += r.len() as u64;
                stats.truncated += u64::from(truncated);
            }
            Err(AppendError::Full | AppendError::TooLarge) => full = true,
        }
    });
    let stored = if taken > 0 { feed.appended(ts) } else { Ok(()) };
    if full {
        // has_room said yes: only a damaged ring gets here. What was taken stays (a retry
        // duplicates it); the sender is told to retry.
        return Err(Refusal {
            status: 503,
            reason: "ring refused part of the batch; retry later",
            close: false,
            skip: 0,
        });
    }
    if stored.is_err() && feed.cfg.sync == SyncPolicy::Always {
        return Err(Refusal {
            status: 503,
            reason: "ring sync failed",
            close: false,
            skip: 0,
        });
    }
    Ok(taken)
}

/// The JSON body of an answer: `{"status":200,"records":12}` or
/// `{"status":413,"error":"body too large"}`.
#[derive(Serialize)]
struct Answer<'a> {
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    records: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// The longest refusal reason an [`Answer`] has room for (they are constants, a few words).
const REASON_MAX: usize = 128;
/// The most bytes an [`Answer`] takes.
const ANSWER_MAX: usize = 2
    + json::key_bound("status")
    + json::U64
    + json::key_bound("records")
    + json::U64
    + json::key_bound("error")
    + json::str_bound(REASON_MAX);

/// An [`Answer`] on the stack; with a reason over [`REASON_MAX`] (a bug) the status alone.
fn answer_body(
    status: u16,
    records: Option<u64>,
    error: Option<&str>,
) -> heapless::String<ANSWER_MAX> {
    let answer = Answer {
        status,
        records,
        error,
    };
    let status_only = Answer {
        status,
        records: None,
        error: None,
    };
    serde_json_core::to_string(&answer)
        .or_else(|_| serde_json_core::to_string(&status_only))
        .unwrap_or_default()
}

/// Queues a refusal, counts it and logs it (rate-limited).
fn respond(
    http: &mut HttpConn,
    feed: &mut FeedIn<'_>,
    peer: SocketAddr,
    r: &Refusal,
    retry: Option<u32>,
) {
    let body = answer_body(r.status, None, Some(r.reason));
    http.out
        .extend_from_slice(&request::response(r.status, &body, !r.close, retry));
    http.close_after |= r.close;
    let now = clock::now();
    http.answered(now);
    if let Some(i) = STATUSES.iter().position(|&s| s == r.status) {
        feed.input.stats.http_responses[i] += 1;
    }
    if let Some(suppressed) = feed.input.refuse_log.allow(now) {
        crate::log!(
            Level::Warn,
            "http_request_refused",
            feed = feed.cfg.name,
            peer = peer,
            status = r.status,
            reason = r.reason,
            suppressed = suppressed
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_json_with_records_or_an_escaped_error() {
        assert_eq!(
            answer_body(200, Some(12), None).as_str(),
            r#"{"status":200,"records":12}"#
        );
        assert_eq!(
            answer_body(413, None, Some("body \"too\" large")).as_str(),
            r#"{"status":413,"error":"body \"too\" large"}"#
        );
        let long = "x".repeat(ANSWER_MAX);
        assert_eq!(
            answer_body(400, None, Some(&long)).as_str(),
            r#"{"status":400}"#
        );
    }
}
