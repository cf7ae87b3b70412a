//! The HTTP output: batches of records from the ring, one request at a time on a keep-alive
//! connection, the cursor committed only on success.
//!
//! ## Exchange (inside the output's `Connected` state)
//! `Idle` → (a batch is ready, or an ack poll is due) → `Sending` → (request written) →
//! `Receiving` → (response read) → `Idle`. A response that arrives while still sending is read
//! as well (a server may answer 413 early); the connection is then closed, as the request was
//! cut short. `request_timeout` bounds `Sending` + `Receiving`.
//!
//! ## What a response does
//! - 2xx: the batch is delivered; the cursor moves past it (with HEC `ack = true`: once its
//!   ackId is acknowledged, batches committed in order).
//! - 413 and other 4xx (but 401, 403, 404, 407, 408, 429): the batch is halved and re-sent, down
//!   to single records; a single record still refused is written to the dead-letter file and
//!   skipped. One poisoned record never blocks a feed. Each success (or dead-lettered record)
//!   doubles the batch limit again, and it is lifted once the output has passed the end of the
//!   batch that was refused: about 3·log2(records) requests find one bad record.
//! - 429, 5xx, 3xx, 401, 403, 404, 407, 408, connection errors and timeouts: the connection is
//!   closed and the same records are sent again after the capped exponential backoff, or after
//!   `Retry-After` seconds when the server gives them. (Auth and path errors are configuration
//!   problems: dead-lettering the feed record by record would be the wrong fix.)

use std::fs::OpenOptions;
use std::io::{self, IoSlice, Write as _};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::clock;
use crate::config::HttpOutput;
use crate::log::{Level, Limiter};
use crate::ring::{Pos, Read, Ring};

pub mod acks;
pub mod protocol;
pub mod response;
mod transport;

use super::link::State;
use super::{Output, Pass, Sink};
use acks::{verdict, Acks, Verdict};
use response::{Response, ResponseReader};
use transport::Transport;

/// Batches sent and waiting for their HEC acknowledgement, at most.
/// Bytes read from the socket per call.
pub(crate) const READ_CHUNK: usize = 16 << 10;

/// Counters of an HTTP output.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpStats {
    /// Responses by status class: index 1..=5 for 1xx..5xx; index 0 counts requests that got no
    /// response (connection error, timeout, malformed response).
    pub requests: [u64; 6],
    /// Records written to the dead-letter file.
    pub dead_lettered: u64,
    /// Batches sent again (after a retryable status, a timeout, a split or an ack timeout).
    pub batches_retried: u64,
}

/// A request on the wire.
#[derive(Clone, Copy, Debug)]
enum Req {
    /// Records `from..to`.
    Data { from: Pos, to: Pos, records: u32 },
    /// A HEC acknowledgement poll.
    AckPoll,
}

/// Where the one request in flight is.
#[derive(Clone, Copy, Debug)]
enum Exchange {
    /// No request in flight.
    Idle,
    /// Writing the request.
    Sending { req: Req, deadline: Instant },
    /// Waiting for the response.
    Receiving { req: Req, deadline: Instant },
}

/// The batch being gathered from `from`: `records` records, `bytes` of body.
#[derive(Clone, Copy, Debug)]
struct Scan {
    from: Pos,
    to: Pos,
    bytes: usize,
    records: u32,
    first_ts: u64,
    /// No more records fit (or a gap in the ring ends it): send now.
    full: bool,
}

/// An HTTP output's sink: its settings, connection and the batch machinery.
pub(super) struct HttpSink {
    cfg: HttpOutput,
    conn: Option<Transport>,
    peer: Option<std::net::SocketAddr>,
    exchange: Exchange,
    /// The request head (for an ack poll: the whole request).
    head: Vec<u8>,
    /// The batch body.
    body: Vec<u8>,
    /// The gzipped body.
    gz: Vec<u8>,
    /// Bytes of head + body written.
    sent: usize,
    reader: ResponseReader,
    scan: Option<Scan>,
    /// A batch younger than `max_batch_age` waits until then.
    wait: Option<Instant>,
    /// Records per batch at most, while narrowing down a refused batch.
    limit: u32,
    /// The limit holds until the output reaches this sequence number.
    narrow_until: u64,
    /// Batches answered 2xx, waiting for their HEC acknowledgement.
    acks: Acks,
    next_poll: Option<Instant>,
    /// Responses read on this connection.
    served: u32,
    pub(super) stats: HttpStats,
    dead_path: PathBuf,
    dead_log: Limiter,
    status_log: Limiter,
    /// `https://`: the client configuration (replaced by a reload) and the name to verify.
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

impl HttpSink {
    pub(super) fn new(
        cfg: &HttpOutput,
        dead_path: PathBuf,
        tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    ) -> HttpSink {
        HttpSink {
            tls,
            cfg: cfg.clone(),
            conn: None,
            peer: None,
            exchange: Exchange::Idle,
            head: Vec::with_capacity(crate::memory::http_head_bytes(cfg)),
            body: Vec::new(),
            gz: Vec::new(),
            sent: 0,
            reader: ResponseReader::new(),
            scan: None,
            wait: None,
            limit: u32::MAX,
            narrow_until: 0,
            acks: Acks::default(),
            next_poll: None,
            served: 0,
            stats: HttpStats::default(),
            dead_path,
            dead_log: Limiter::new(10, Duration::from_secs(60)),
            status_log: Limiter::new(10, Duration::from_secs(60)),
        }
    }

    /// SIGHUP: re-reads an https output's CA and client certificate files (`None` for http).
    pub(super) fn reload_tls(
        &mut self,
    ) -> Option<Result<Vec<crate::tls::Expired>, crate::tls::FileError>> {
        let files = &self.cfg.tls.as_ref()?.files;
        let (_, name) = self.tls.as_ref()?;
        let name = name.clone();
        Some(crate::tls::client_config(files).map(|(config, expired)| {
            self.tls = Some((config, name));
            expired
        }))
    }

    pub(super) fn stream(&self) -> Option<&TcpStream> {
        self.conn.as_ref().map(Transport::stream_ref)
    }

    pub(super) fn peer_name(&self) -> String {
        match self.peer {
            Some(p) => p.to_string(),
            None => format!("{}:{}", self.cfg.host, self.cfg.port),
        }
    }

    /// Batches answered 2xx and not yet acknowledged.
    pub(super) fn acks_pending(&self) -> usize {
        self.acks.unacked()
    }

    /// No request in flight.
    pub(super) fn idle(&self) -> bool {
        matches!(self.exchange, Exchange::Idle)
    }

    /// Whether a request's response is awaited (nothing to write meanwhile).
    pub(super) fn receiving(&self) -> bool {
        matches!(self.exchange, Exchange::Receiving { .. })
    }

    fn close(&mut self, registry: &Registry) {
        if let Some(mut c) = self.conn.take() {
            let _ = registry.deregister(c.stream());
        }
        self.exchange = Exchange::Idle;
        self.reader.reset();
        self.scan = None;
        self.wait = None;
        self.served = 0;
    }

    /// When the sink wants the loop back while connected; with `idle_work` false (the rate
    /// limiter holds the output) only the request timeout counts.
    pub(super) fn deadline(&self, idle_work: bool) -> Option<Instant> {
        match self.exchange {
            Exchange::Sending { deadline, .. } | Exchange::Receiving { deadline, .. } => {
                Some(deadline)
            }
            Exchange::Idle if !idle_work => None,
            Exchange::Idle => {
                let mut d = self.wait;
                if self.cfg.ack {
                    let unacked = self.acks.unacked() > 0;
                    let poll = self.next_poll.filter(|_| unacked);
                    let timeout = self.acks.timeout_at(self.cfg.ack_timeout);
                    for x in [poll, timeout].into_iter().flatten() {
                        d = Some(d.map_or(x, |d| d.min(x)));
                    }
                }
                d
            }
        }
    }
}

fn class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5))
}

impl Output {
    /// A request could not be built (gzip failed, or a JSON part went over its bound, a
    /// bug): logged, and the pass ends blocked.
    fn request_failed(&self, event: &'static str, error: &dyn std::fmt::Display) -> Option<Pass> {
        crate::log!(
            Level::Error,
            event,
            feed = self.feed,
            output = self.name,
            error = error
        );
        Some(Pass::Blocked)
    }

    fn http(&mut self) -> &mut HttpSink {
        match &mut self.sink {
            Sink::Http(h) => h,
            _ => unreachable!("http() on a non-http output"),
        }
    }

    /// Starts a non-blocking connect to the URL's host.
    pub(super) fn http_connect(&mut self, registry: &Registry, token: Token, now: Instant) {
        let h = self.http();
        let target = format!("{}:{}", h.cfg.host, h.cfg.port);
        let addr = match (h.cfg.host.as_str(), h.cfg.port).to_socket_addrs() {
            Ok(mut a) => match a.next() {
                Some(a) => a,
                None => return self.fail(registry, "address resolved to nothing", now),
            },
            Err(e) => {
                let why = format!("resolve {target}: {e}");
                return self.fail(registry, &why, now);
            }
        };
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                if let Err(e) =
                    registry.register(&mut s, token, Interest::READABLE | Interest::WRITABLE)
                {
                    let why = format!("register socket: {e}");
                    return self.fail(registry, &why, now);
                }
                let h = self.http();
                let session = match &h.tls {
                    None => None,
                    Some((config, name)) => {
                        match ClientConnection::new(config.clone(), name.clone()) {
                            Ok(mut c) => {
                                c.set_buffer_limit(Some(crate::tls::BUFFER_LIMIT));
                                Some(c)
                            }
                            Err(e) => {
                                let why = format!("TLS session: {e}");
                                return self.fail(registry, &why, now);
                            }
                        }
                    }
                };
                if h.cfg
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.files.insecure_skip_verify)
                {
                    crate::log!(
                        Level::Warn,
                        "tls_verification_disabled",
                        feed = self.feed,
                        output = self.name,
                        peer = addr,
                        reason = "insecure_skip_verify = true: the receiver is not authenticated (labs only)"
                    );
                }
                let h = self.http();
                h.conn = Some(Transport::new(s, session));
                h.peer = Some(addr);
                h.reader.reset();
                self.link.connecting(now);
            }
            Err(e) => {
                let why = format!("connect {addr}: {e}");
                self.fail(registry, &why, now);
            }
        }
    }

    /// A new connection (after `send` was set to the cursor): batches answered 2xx and waiting
    /// for their HEC acknowledgement stay pending (ackIds belong to the channel, not to the
    /// connection; some load balancers close after every request), so sending resumes after
    /// the last of them. `ack_timeout` still catches acknowledgements that never come.
    pub(super) fn http_on_connected(&mut self) {
        let send = self.send;
        let h = self.http();
        h.exchange = Exchange::Idle;
        h.scan = None;
        h.wait = None;
        let after = h.acks.resume_after().filter(|to| to.seq > send.seq);
        if let Some(to) = after {
            self.send = to;
        }
    }

    /// Closes the connection (from `fail`).
    pub(super) fn http_close(&mut self, registry: &Registry, failed: bool) {
        let h = self.http();
        if failed {
            if let Exchange::Sending { req, .. } | Exchange::Receiving { req, .. } = h.exchange {
                h.stats.requests[0] += 1;
                if matches!(req, Req::Data { .. }) {
                    h.stats.batches_retried += 1;
                }
            }
        }
        h.close(registry);
    }

    /// The server closed a kept-alive connection, or asked to: reconnect right away, quietly;
    /// unless the connection never proved itself (no 2xx, not up for `settle`): a server that
    /// accepts and closes is a failed connect, with its backoff and its alert.
    fn http_reconnect_now(&mut self, registry: &Registry, now: Instant) {
        if self.link.unproven() {
            return self.fail(registry, "the server closed the connection", now);
        }
        self.http().close(registry);
        self.link.reopen(now);
    }

    /// The server closed a reused connection before answering the request sent on it.
    fn http_stale(&mut self, registry: &Registry, now: Instant) {
        let h = self.http();
        h.stats.requests[0] += 1;
        if let Exchange::Sending {
            req: Req::Data { .. },
            ..
        }
        | Exchange::Receiving {
            req: Req::Data { .. },
            ..
        } = h.exchange
        {
            h.stats.batches_retried += 1;
        }
        self.http_reconnect_now(registry, now);
    }

    /// Fires expired deadlines while connected.
    pub(super) fn http_on_timer(&mut self, registry: &Registry, now: Instant) {
        let h = self.http();
        if let Exchange::Sending { deadline, .. } | Exchange::Receiving { deadline, .. } =
            h.exchange
        {
            if deadline <= now {
                let why = format!(
                    "no complete response within request_timeout ({}s)",
                    h.cfg.request_timeout.as_secs_f64()
                );
                self.fail(registry, &why, now);
            }
        }
    }

    /// Reads what the server sent; handles a complete response.
    pub(super) fn http_on_readable(&mut self, registry: &Registry, ring: &mut Ring, now: Instant) {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let h = self.http();
            let Some(conn) = h.conn.as_mut() else {
                return;
            };
            let in_flight = !matches!(h.exchange, Exchange::Idle);
            // A kept-alive connection the server closed as we sent on it: not a failure of the
            // server; send the same request again on a new connection at once (a new
            // connection that does the same fails as usual).
            let stale = in_flight && h.served > 0 && !h.reader.started();
            let handshaking = conn.handshaking();
            let res = conn.read(&mut buf);
            let (established, tls_failed) = (
                handshaking && !conn.handshaking(),
                handshaking && conn.tls_failed(),
            );
            if established {
                // The request waited for the handshake: it may go now.
                self.write_blocked = false;
                crate::log!(
                    Level::Info,
                    "tls_established",
                    feed = self.feed,
                    output = self.name,
                    peer = self.peer_name()
                );
            }
            if tls_failed {
                self.stats.tls_failures += 1;
            }
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if stale && e.kind() == io::ErrorKind::ConnectionReset => {
                    return self.http_stale(registry, now);
                }
                Err(e) => {
                    let why = format!("read: {e}");
                    return self.fail(registry, &why, now);
                }
            };
            if n == 0 && stale {
                return self.http_stale(registry, now);
            }
            if n == 0 {
                let h = self.http();
                if !in_flight && !h.reader.started() {
                    // An idle keep-alive connection closed by the server: normal.
                    return self.http_reconnect_now(registry, now);
                }
                match h.reader.eof() {
                    Ok(resp) if in_flight => {
                        self.http_response(registry, ring, resp, now);
                        if matches!(self.link.state(), State::Connected) {
                            self.http_reconnect_now(registry, now);
                        }
                        return;
                    }
                    Ok(_) => return self.http_reconnect_now(registry, now),
                    Err(e) => {
                        let why = format!("response: {e}");
                        return self.fail(registry, &why, now);
                    }
                }
            }
            if !in_flight {
                return self.fail(registry, "the server sent bytes nobody asked for", now);
            }
            let mut data = &buf[..n];
            loop {
                let h = self.http();
                match h.reader.push(data) {
                    Ok(Some(resp)) => {
                        let early = matches!(h.exchange, Exchange::Sending { .. });
                        let close = resp.close;
                        if early && (200..300).contains(&resp.status) {
                            // A success for a request not yet sent whole proves nothing.
                            h.stats.requests[class(resp.status)] += 1;
                            h.stats.batches_retried += 1;
                            h.exchange = Exchange::Idle;
                            let why =
                                format!("HTTP {} before the request was sent whole", resp.status);
                            return self.fail(registry, &why, now);
                        }
                        self.http_response(registry, ring, resp, now);
                        if !matches!(self.link.state(), State::Connected) {
                            return;
                        }
                        if early || close {
                            return self.http_reconnect_now(registry, now);
                        }
                        data = b"";
                        if matches!(self.http().exchange, Exchange::Idle) {
                            // A second response to one request: the stream is out of step.
                            if self.http().reader.started() {
                                return self.fail(
                                    registry,
                                    "response bytes past the response",
                                    now,
                                );
                            }
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let why = format!("response: {e}");
                        return self.fail(registry, &why, now);
                    }
                }
            }
        }
    }

    /// Acts on a complete response to the request in flight.
    fn http_response(
        &mut self,
        registry: &Registry,
        ring: &mut Ring,
        resp: Response,
        now: Instant,
    ) {
        let h = self.http();
        let req = match h.exchange {
            Exchange::Sending { req, .. } | Exchange::Receiving { req, .. } => req,
            Exchange::Idle => return,
        };
        h.exchange = Exchange::Idle;
        h.served += 1;
        h.stats.requests[class(resp.status)] += 1;
        let status = resp.status;
        match req {
            Req::AckPoll => {
                h.next_poll = Some(now + h.cfg.ack_poll);
                if (200..300).contains(&status) {
                    let acks = &mut h.acks;
                    let parsed = protocol::hec_acks(&resp.body, |id, acked| {
                        if acked {
                            acks.acked(id);
                        }
                    });
                    if parsed.is_none() {
                        self.log_status("hec_ack_poll_unreadable", status, &resp, now);
                    }
                    self.commit_acked(ring);
                } else {
                    self.log_status("hec_ack_poll_refused", status, &resp, now);
                }
            }
            Req::Data { from, to, records } => match verdict(status, records) {
                Verdict::Delivered => self.http_success(ring, from, to, records, &resp, now),
                Verdict::Retry => {
                    let h = self.http();
                    h.stats.batches_retried += 1;
                    self.link.retry_after(resp.retry_after);
                    let snippet = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                        .into_owned();
                    let why = format!("HTTP {status}: {snippet}");
                    self.fail(registry, &why, now);
                }
                Verdict::Split { retry_with } => {
                    // The batch is refused as a whole: halve it until the records at fault
                    // stand alone.
                    let h = self.http();
                    h.stats.batches_retried += 1;
                    h.limit = retry_with;
                    h.narrow_until = h.narrow_until.max(to.seq);
                    h.scan = None;
                    if let Some(suppressed) = h.status_log.allow(now) {
                        crate::log!(
                            Level::Warn,
                            "http_batch_split",
                            feed = self.feed,
                            output = self.name,
                            status = status,
                            records = records,
                            retry_with = retry_with,
                            first_seq = from.seq,
                            suppressed = suppressed
                        );
                    }
                }
                Verdict::DeadLetter => self.dead_letter(ring, from, to, &resp, now),
            },
        }
    }

    /// A 2xx for records `from..to`.
    fn http_success(
        &mut self,
        ring: &mut Ring,
        from: Pos,
        to: Pos,
        records: u32,
        resp: &Response,
        now: Instant,
    ) {
        self.prove(ring, now);
        self.send = to;
        let h = self.http();
        h.scan = None;
        h.limit = h.limit.saturating_mul(2);
        if !h.cfg.ack {
            self.count_delivered(from, to);
            self.commit_upto(ring, to);
            return;
        }
        let ack_id = protocol::hec_ack_id(&resp.body);
        h.acks.push(from, to, records, ack_id, now);
        if ack_id.is_none() {
            if let Some(suppressed) = h.status_log.allow(now) {
                crate::log!(
                    Level::Warn,
                    "hec_no_ack_id",
                    feed = self.feed,
                    output = self.name,
                    body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]),
                    hint = "ack = true but the answer has no ackId: is useACK on for this token? The batch counts as delivered at 200",
                    suppressed = suppressed
                );
            }
        }
        let h = self.http();
        if h.next_poll.is_none() {
            h.next_poll = Some(now + h.cfg.ack_poll);
        }
        self.commit_acked(ring);
    }

    /// Counts records `from..to` as delivered or replayed.
    fn count_delivered(&mut self, from: Pos, to: Pos) {
        let replayed = self.replay_until.clamp(from.seq, to.seq) - from.seq;
        self.stats.replayed += replayed;
        self.stats.delivered += to.seq - from.seq - replayed;
    }

    /// Commits the cursor across acknowledged batches, oldest first, stopping at the first one
    /// still unacknowledged.
    fn commit_acked(&mut self, ring: &mut Ring) {
        while let Some(p) = self.http().acks.pop_committable() {
            if p.records > 0 {
                self.count_delivered(p.from, p.to);
            }
            self.commit_upto(ring, p.to);
        }
        let h = self.http();
        if h.acks.is_empty() {
            h.next_poll = None;
        }
    }

    /// Records `from..to` are done without being delivered (dead-lettered, or skipped as
    /// corrupt): the cursor passes them once everything before them is.
    fn settle_skipped(&mut self, ring: &mut Ring, from: Pos, to: Pos, now: Instant) {
        if self.http().cfg.ack && !self.http().acks.is_empty() {
            self.http().acks.push(from, to, 0, None, now);
            self.commit_acked(ring);
        } else {
            self.commit_upto(ring, to);
        }
    }

    /// A single record refused with a status that retrying cannot fix: into the dead-letter
    /// file, counted, logged; the output moves on.
    fn dead_letter(&mut self, ring: &mut Ring, from: Pos, to: Pos, resp: &Response, now: Instant) {
        let (line, seq) = match ring.read(from) {
            Read::Record(r) => (
                protocol::dead_letter_line(
                    &clock::rfc3339(clock::wall_ns()),
                    &self.feed,
                    &self.name,
                    resp.status,
                    &resp.body,
                    r.pos.seq,
                    r.payload,
                )
                .map_err(io::Error::other),
                r.pos.seq,
            ),
            // Overwritten meanwhile: nothing left to keep.
            _ => (Ok(Vec::new()), from.seq),
        };
        let path = self.http().dead_path.clone();
        let written = line.and_then(|line| {
            if line.is_empty() {
                return Ok(());
            }
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(&line))
        });
        let h = self.http();
        h.stats.dead_lettered += 1;
        if let Some(suppressed) = h.dead_log.allow(now) {
            let body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
            match &written {
                Ok(()) => crate::log!(
                    Level::Error,
                    "http_record_dead_lettered",
                    feed = self.feed,
                    output = self.name,
                    status = resp.status,
                    seq = seq,
                    response = body,
                    file = path.display(),
                    suppressed = suppressed
                ),
                Err(e) => crate::log!(
                    Level::Error,
                    "http_dead_letter_write_failed",
                    feed = self.feed,
                    output = self.name,
                    status = resp.status,
                    seq = seq,
                    file = path.display(),
                    error = e,
                    hint = "the record is skipped all the same, so that it cannot block the feed",
                    suppressed = suppressed
                ),
            }
        }
        self.send = to;
        let h = self.http();
        h.scan = None;
        h.limit = h.limit.saturating_mul(2);
        self.settle_skipped(ring, from, to, now);
    }

    fn log_status(&mut self, event: &str, status: u16, resp: &Response, now: Instant) {
        let h = self.http();
        if let Some(suppressed) = h.status_log.allow(now) {
            crate::log!(
                Level::Warn,
                event,
                feed = self.feed,
                output = self.name,
                status = status,
                body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]),
                suppressed = suppressed
            );
        }
    }

    /// Sends batches (and ack polls) until the socket is full, a response is awaited, or there is
    /// nothing to send yet.
    pub(super) fn write_http(
        &mut self,
        registry: &Registry,
        ring: &mut Ring,
        now: Instant,
    ) -> Pass {
        loop {
            match self.http().exchange {
                Exchange::Receiving { .. } => return Pass::Blocked,
                Exchange::Sending { req, deadline } => match self.http_send_bytes(registry, now) {
                    Some(true) => {
                        self.http().exchange = Exchange::Receiving { req, deadline };
                    }
                    Some(false) => return Pass::Blocked,
                    None => return Pass::Failed,
                },
                Exchange::Idle => {
                    if let Some(pass) = self.http_start_request(ring, now) {
                        return pass;
                    }
                }
            }
        }
    }

    /// Writes request bytes: `Some(true)` when all are written, `Some(false)` when the socket is
    /// full, `None` after a failure.
    fn http_send_bytes(&mut self, registry: &Registry, now: Instant) -> Option<bool> {
        loop {
            let h = self.http();
            let payload: &[u8] = match h.exchange {
                Exchange::Sending {
                    req: Req::Data { .. },
                    ..
                } if h.cfg.gzip => &h.gz,
                Exchange::Sending {
                    req: Req::Data { .. },
                    ..
                } => &h.body,
                _ => &[],
            };
            let total = h.head.len() + payload.len();
            if h.sent >= total {
                return Some(true);
            }
            let (a, b) = if h.sent < h.head.len() {
                (&h.head[h.sent..], payload)
            } else {
                (&[][..], &payload[h.sent - h.head.len()..])
            };
            let iov = [IoSlice::new(a), IoSlice::new(b)];
            let conn = h.conn.as_mut()?;
            match conn.write(&iov) {
                Ok(0) => {
                    self.fail(registry, "write returned 0", now);
                    return None;
                }
                Ok(n) => {
                    h.sent += n;
                    self.stats.bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    return Some(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("write: {e}");
                    self.fail(registry, &why, now);
                    return None;
                }
            }
        }
    }

    /// With no request in flight: starts an ack poll or a batch. Returns how the pass ends when
    /// there is nothing to start.
    fn http_start_request(&mut self, ring: &mut Ring, now: Instant) -> Option<Pass> {
        let h = self.http();
        if h.cfg.ack {
            // The oldest unacknowledged batch timed out: send it, and all after it, again.
            if let Some(p) = h.acks.timed_out(h.cfg.ack_timeout, now) {
                let n = h.acks.clear() as u64;
                h.stats.batches_retried += n;
                h.next_poll = None;
                h.scan = None;
                let ack_timeout_s = h.cfg.ack_timeout.as_secs();
                crate::log!(
                    Level::Warn,
                    "hec_ack_timeout",
                    feed = self.feed,
                    output = self.name,
                    ack_id = p.ack_id.map_or("none".to_string(), |i| i.to_string()),
                    first_seq = p.from.seq,
                    batches_resent = n,
                    ack_timeout_s = ack_timeout_s
                );
                self.send = p.from;
            }
            let h = self.http();
            let due = h.next_poll.is_some_and(|t| t <= now);
            if due && h.acks.poll_ids().next().is_some() {
                let HttpSink {
                    head, cfg, acks, ..
                } = &mut *h;
                if let Err(e) = protocol::ack_request(head, cfg, acks.poll_ids()) {
                    return self.request_failed("hec_ack_poll_failed", &e);
                }
                h.sent = 0;
                h.exchange = Exchange::Sending {
                    req: Req::AckPoll,
                    deadline: now + h.cfg.request_timeout,
                };
                return None;
            }
            if h.acks.is_full() {
                return Some(Pass::Blocked);
            }
        }
        self.http_start_batch(ring, now)
    }

    /// Gathers the next batch; starts it when it is full or old enough.
    fn http_start_batch(&mut self, ring: &mut Ring, now: Instant) -> Option<Pass> {
        let mut limit = {
            let send = self.send;
            let h = self.http();
            if send.seq >= h.narrow_until {
                h.limit = u32::MAX;
            }
            h.limit
        };
        if let Some(b) = self.bucket.as_mut() {
            let n = b.allowance(now, false);
            if n == 0 {
                b.exhaust(now);
                // The bucket's wake-up comes first now; the batch is looked at again then.
                self.http().wait = None;
                return Some(Pass::Blocked);
            }
            limit = limit.min(u32::try_from(n).unwrap_or(u32::MAX));
        }
        let send = self.send;
        let tail = ring.tail();
        let h = self.http();
        let (format, max) = (h.cfg.body, h.cfg.max_batch_bytes);
        let mut scan = match h.scan {
            Some(s) if s.from == send && s.from.seq >= tail.seq && s.records <= limit => s,
            _ => Scan {
                from: send,
                to: send,
                bytes: 0,
                records: 0,
                first_ts: 0,
                full: false,
            },
        };
        while !scan.full && scan.records < limit {
            match ring.read(scan.to) {
                Read::Record(r) => {
                    let cost = protocol::record_cost(format, r.payload, scan.records);
                    if scan.records > 0 && scan.bytes + cost > max {
                        scan.full = true;
                        break;
                    }
                    if scan.records == 0 {
                        scan.first_ts = r.ts;
                    }
                    scan.bytes += cost;
                    scan.records += 1;
                    scan.to = r.next;
                }
                Read::End => break,
                Read::Overrun { tail } if scan.records == 0 => {
                    self.note_overrun(ring);
                    self.send = tail;
                    scan.from = tail;
                    scan.to = tail;
                }
                Read::Corrupt { at, damage, next } if scan.records == 0 => {
                    self.note_damage(at, damage, next);
                    self.send = next;
                    self.settle_skipped(ring, at, next, now);
                    scan.from = next;
                    scan.to = next;
                }
                // A gap after some records: send those first.
                Read::Overrun { .. } | Read::Corrupt { .. } => scan.full = true,
            }
        }
        let h = self.http();
        if scan.records == 0 {
            h.scan = None;
            h.wait = None;
            self.end_episode();
            return Some(Pass::Done);
        }
        if !scan.full && scan.records < limit {
            let age = u64::try_from(h.cfg.max_batch_age.as_nanos()).unwrap_or(u64::MAX);
            let due = scan.first_ts.saturating_add(age);
            let wall = clock::wall_ns();
            if wall < due {
                h.scan = Some(scan);
                h.wait = Some(now + Duration::from_nanos(due - wall));
                return Some(Pass::Blocked);
            }
        }
        h.scan = None;
        h.wait = None;
        // Build the body from the ring (nothing was appended since the scan: one loop turn).
        h.body.clear();
        h.body.reserve_exact(scan.bytes.max(max) + 1);
        let mut pos = scan.from;
        let mut records = 0;
        let mut last_ts = 0;
        while records < scan.records {
            let Read::Record(r) = ring.read(pos) else {
                break;
            };
            if let Err(e) = protocol::push_record(&mut h.body, format, r.payload) {
                return self.request_failed("http_body_failed", &e);
            }
            last_ts = r.ts;
            records += 1;
            pos = r.next;
        }
        protocol::finish_body(&mut h.body, format);
        if h.cfg.gzip {
            let HttpSink { body, gz, .. } = &mut *h;
            gz.reserve_exact(crate::memory::gzip_bound(body.len()));
            if let Err(e) = protocol::gzip_into(body, gz) {
                return self.request_failed("http_gzip_failed", &e);
            }
        }
        let h = self.http();
        let len = if h.cfg.gzip { h.gz.len() } else { h.body.len() };
        let HttpSink { head, cfg, .. } = &mut *h;
        protocol::data_head(head, cfg, len, cfg.gzip);
        h.sent = 0;
        h.exchange = Exchange::Sending {
            req: Req::Data {
                from: scan.from,
                to: pos,
                records,
            },
            deadline: now + h.cfg.request_timeout,
        };
        if let Some(b) = self.bucket.as_mut() {
            b.tokens -= f64::from(records);
        }
        self.last_sent_ts = last_ts;
        if let Some(e) = self.episode.as_mut().filter(|e| e.before_ns == 0) {
            e.before_ns = last_ts;
        }
        None
    }
}
