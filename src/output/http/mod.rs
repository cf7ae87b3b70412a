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
use super::{Core, Pass};
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
    /// A batch of records.
    Data(Batch),
    /// A HEC acknowledgement poll.
    AckPoll,
}

/// Records `from..to` sent in one request.
#[derive(Clone, Copy, Debug)]
struct Batch {
    from: Pos,
    to: Pos,
    records: u32,
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
            head: Vec::with_capacity(head_bytes(cfg)),
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

/// An HTTP output's request head, at most: a data request's with the longest Content-Length,
/// or an acknowledgement poll's (head and body) with the most and longest ids.
pub fn head_bytes(h: &HttpOutput) -> usize {
    let mut buf = Vec::new();
    protocol::data_head(&mut buf, h, usize::MAX, h.gzip);
    let data = buf.len();
    let ids = std::iter::repeat_n(u64::MAX, protocol::MAX_ACK_IDS);
    let poll = match protocol::ack_request(&mut buf, h, ids) {
        Ok(()) => buf.len(),
        Err(e) => e.bound + data,
    };
    data.max(poll)
}

/// An HTTP output's batch body, at most: `max_batch_bytes`, or the worst encoding of one
/// record of `max_record` bytes when that is more (a batch has at least one record), and the
/// closing bracket of a JSON array.
pub fn body_bytes(h: &HttpOutput, max_record: usize) -> usize {
    let record = match h.body {
        crate::config::BodyFormat::Ndjson => max_record + 1,
        crate::config::BodyFormat::JsonArray => max_record + 2,
        // `{"event":"` + every byte escaped to 6 + `"}\n`.
        crate::config::BodyFormat::HecEvent => 13 + 6 * max_record,
    };
    h.max_batch_bytes.max(record) + 1
}

fn class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5))
}

impl HttpSink {
    /// Closes the connection and schedules a retry (as [`Output::fail`]).
    fn fail(&mut self, core: &mut Core, registry: &Registry, why: &str, now: Instant) {
        let was_connected = matches!(core.link.state(), State::Connected);
        self.close_failed(registry, was_connected);
        core.failed(why, now, &|| self.peer_name());
    }

    /// A request could not be built (gzip failed, or a JSON part went over its bound, a
    /// bug): logged, and the pass ends blocked.
    fn request_failed(
        &self,
        core: &Core,
        event: &'static str,
        error: &dyn std::fmt::Display,
    ) -> Option<Pass> {
        crate::log!(
            Level::Error,
            event,
            feed = core.feed,
            output = core.name,
            error = error
        );
        Some(Pass::Blocked)
    }

    /// Starts a non-blocking connect to the URL's host.
    pub(super) fn connect(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        token: Token,
        now: Instant,
    ) {
        let target = format!("{}:{}", self.cfg.host, self.cfg.port);
        let addr = match (self.cfg.host.as_str(), self.cfg.port).to_socket_addrs() {
            Ok(mut a) => match a.next() {
                Some(a) => a,
                None => return self.fail(core, registry, "address resolved to nothing", now),
            },
            Err(e) => {
                let why = format!("resolve {target}: {e}");
                return self.fail(core, registry, &why, now);
            }
        };
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                if let Err(e) =
                    registry.register(&mut s, token, Interest::READABLE | Interest::WRITABLE)
                {
                    let why = format!("register socket: {e}");
                    return self.fail(core, registry, &why, now);
                }
                let session = match &self.tls {
                    None => None,
                    Some((config, name)) => {
                        match ClientConnection::new(config.clone(), name.clone()) {
                            Ok(mut c) => {
                                c.set_buffer_limit(Some(crate::tls::BUFFER_LIMIT));
                                Some(c)
                            }
                            Err(e) => {
                                let why = format!("TLS session: {e}");
                                return self.fail(core, registry, &why, now);
                            }
                        }
                    }
                };
                if self
                    .cfg
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.files.insecure_skip_verify)
                {
                    crate::log!(
                        Level::Warn,
                        "tls_verification_disabled",
                        feed = core.feed,
                        output = core.name,
                        peer = addr,
                        reason = "insecure_skip_verify = true: the receiver is not authenticated (labs only)"
                    );
                }
                self.conn = Some(Transport::new(s, session));
                self.peer = Some(addr);
                self.reader.reset();
                core.link.connecting(now);
            }
            Err(e) => {
                let why = format!("connect {addr}: {e}");
                self.fail(core, registry, &why, now);
            }
        }
    }

    /// A new connection (after `send` was set to the cursor): batches answered 2xx and waiting
    /// for their HEC acknowledgement stay pending (ackIds belong to the channel, not to the
    /// connection; some load balancers close after every request), so sending resumes after
    /// the last of them. `ack_timeout` still catches acknowledgements that never come.
    pub(super) fn on_connected(&mut self, core: &mut Core) {
        let send = core.send;
        self.exchange = Exchange::Idle;
        self.scan = None;
        self.wait = None;
        let after = self.acks.resume_after().filter(|to| to.seq > send.seq);
        if let Some(to) = after {
            core.send = to;
        }
    }

    /// Closes the connection after a failure (from [`Output::fail`]); a request in flight on a
    /// connection that was up counts as one without a response.
    pub(super) fn close_failed(&mut self, registry: &Registry, was_connected: bool) {
        if was_connected {
            if let Exchange::Sending { req, .. } | Exchange::Receiving { req, .. } = self.exchange {
                self.stats.requests[0] += 1;
                if matches!(req, Req::Data(_)) {
                    self.stats.batches_retried += 1;
                }
            }
        }
        self.close(registry);
    }

    /// The server closed a kept-alive connection, or asked to: reconnect right away, quietly;
    /// unless the connection never proved itself (no 2xx, not up for `settle`): a server that
    /// accepts and closes is a failed connect, with its backoff and its alert.
    fn reconnect_now(&mut self, core: &mut Core, registry: &Registry, now: Instant) {
        if core.link.unproven() {
            return self.fail(core, registry, "the server closed the connection", now);
        }
        self.close(registry);
        core.link.reopen(now);
    }

    /// The server closed a reused connection before answering the request sent on it.
    fn stale(&mut self, core: &mut Core, registry: &Registry, now: Instant) {
        self.stats.requests[0] += 1;
        if let Exchange::Sending {
            req: Req::Data(_), ..
        }
        | Exchange::Receiving {
            req: Req::Data(_), ..
        } = self.exchange
        {
            self.stats.batches_retried += 1;
        }
        self.reconnect_now(core, registry, now);
    }

    /// Fires expired deadlines while connected.
    pub(super) fn on_timer(&mut self, core: &mut Core, registry: &Registry, now: Instant) {
        if let Exchange::Sending { deadline, .. } | Exchange::Receiving { deadline, .. } =
            self.exchange
        {
            if deadline <= now {
                let why = format!(
                    "no complete response within request_timeout ({}s)",
                    self.cfg.request_timeout.as_secs_f64()
                );
                self.fail(core, registry, &why, now);
            }
        }
    }

    /// Reads what the server sent; handles a complete response.
    pub(super) fn on_readable(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        now: Instant,
    ) {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let in_flight = !matches!(self.exchange, Exchange::Idle);
            // A kept-alive connection the server closed as we sent on it: not a failure of the
            // server; send the same request again on a new connection at once (a new
            // connection that does the same fails as usual).
            let stale = in_flight && self.served > 0 && !self.reader.started();
            let handshaking = conn.handshaking();
            let res = conn.read(&mut buf);
            let (established, tls_failed) = (
                handshaking && !conn.handshaking(),
                handshaking && conn.tls_failed(),
            );
            if established {
                // The request waited for the handshake: it may go now.
                core.write_blocked = false;
                crate::log!(
                    Level::Info,
                    "tls_established",
                    feed = core.feed,
                    output = core.name,
                    peer = self.peer_name()
                );
            }
            if tls_failed {
                core.stats.tls_failures += 1;
            }
            let n = match res {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if stale && e.kind() == io::ErrorKind::ConnectionReset => {
                    return self.stale(core, registry, now);
                }
                Err(e) => {
                    let why = format!("read: {e}");
                    return self.fail(core, registry, &why, now);
                }
            };
            if n == 0 && stale {
                return self.stale(core, registry, now);
            }
            if n == 0 {
                return self.on_eof(core, registry, ring, in_flight, now);
            }
            if !in_flight {
                return self.fail(
                    core,
                    registry,
                    "the server sent bytes nobody asked for",
                    now,
                );
            }
            if !self.on_bytes(core, registry, ring, &buf[..n], now) {
                return;
            }
        }
    }

    /// The server closed the connection (not while a reused connection's request was
    /// unanswered: that is [`HttpSink::stale`]).
    fn on_eof(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        in_flight: bool,
        now: Instant,
    ) {
        if !in_flight && !self.reader.started() {
            // An idle keep-alive connection closed by the server: normal.
            return self.reconnect_now(core, registry, now);
        }
        match self.reader.eof() {
            Ok(resp) if in_flight => {
                self.on_response(core, registry, ring, resp, now);
                if matches!(core.link.state(), State::Connected) {
                    self.reconnect_now(core, registry, now);
                }
            }
            Ok(_) => self.reconnect_now(core, registry, now),
            Err(e) => {
                let why = format!("response: {e}");
                self.fail(core, registry, &why, now);
            }
        }
    }

    /// Response bytes read while a request is in flight: acts on each complete response.
    /// Returns whether to read on (false once the connection was closed or replaced).
    fn on_bytes(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        mut data: &[u8],
        now: Instant,
    ) -> bool {
        loop {
            match self.reader.push(data) {
                Ok(Some(resp)) => {
                    let early = matches!(self.exchange, Exchange::Sending { .. });
                    let close = resp.close;
                    if early && (200..300).contains(&resp.status) {
                        // A success for a request not yet sent whole proves nothing.
                        self.stats.requests[class(resp.status)] += 1;
                        self.stats.batches_retried += 1;
                        self.exchange = Exchange::Idle;
                        let why = format!("HTTP {} before the request was sent whole", resp.status);
                        self.fail(core, registry, &why, now);
                        return false;
                    }
                    self.on_response(core, registry, ring, resp, now);
                    if !matches!(core.link.state(), State::Connected) {
                        return false;
                    }
                    if early || close {
                        self.reconnect_now(core, registry, now);
                        return false;
                    }
                    data = b"";
                    if matches!(self.exchange, Exchange::Idle) {
                        // A second response to one request: the stream is out of step.
                        if self.reader.started() {
                            let why = "response bytes past the response";
                            self.fail(core, registry, why, now);
                            return false;
                        }
                        return true;
                    }
                }
                Ok(None) => return true,
                Err(e) => {
                    let why = format!("response: {e}");
                    self.fail(core, registry, &why, now);
                    return false;
                }
            }
        }
    }

    /// Acts on a complete response to the request in flight.
    fn on_response(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        resp: Response,
        now: Instant,
    ) {
        let req = match self.exchange {
            Exchange::Sending { req, .. } | Exchange::Receiving { req, .. } => req,
            Exchange::Idle => return,
        };
        self.exchange = Exchange::Idle;
        self.served += 1;
        self.stats.requests[class(resp.status)] += 1;
        let status = resp.status;
        match req {
            Req::AckPoll => {
                self.next_poll = Some(now + self.cfg.ack_poll);
                if (200..300).contains(&status) {
                    let acks = &mut self.acks;
                    let parsed = protocol::hec_acks(&resp.body, |id, acked| {
                        if acked {
                            acks.acked(id);
                        }
                    });
                    if parsed.is_none() {
                        self.log_status(core, "hec_ack_poll_unreadable", status, &resp, now);
                    }
                    self.commit_acked(core, ring);
                } else {
                    self.log_status(core, "hec_ack_poll_refused", status, &resp, now);
                }
            }
            Req::Data(batch) => match verdict(status, batch.records) {
                Verdict::Delivered => self.success(core, ring, batch, &resp, now),
                Verdict::Retry => {
                    self.stats.batches_retried += 1;
                    core.link.retry_after(resp.retry_after);
                    let snippet = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                        .into_owned();
                    let why = format!("HTTP {status}: {snippet}");
                    self.fail(core, registry, &why, now);
                }
                Verdict::Split { retry_with } => {
                    // The batch is refused as a whole: halve it until the records at fault
                    // stand alone.
                    self.stats.batches_retried += 1;
                    self.limit = retry_with;
                    self.narrow_until = self.narrow_until.max(batch.to.seq);
                    self.scan = None;
                    if let Some(suppressed) = self.status_log.allow(now) {
                        crate::log!(
                            Level::Warn,
                            "http_batch_split",
                            feed = core.feed,
                            output = core.name,
                            status = status,
                            records = batch.records,
                            retry_with = retry_with,
                            first_seq = batch.from.seq,
                            suppressed = suppressed
                        );
                    }
                }
                Verdict::DeadLetter => {
                    self.dead_letter(core, ring, batch.from, batch.to, &resp, now)
                }
            },
        }
    }

    /// A 2xx for records `from..to`.
    fn success(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        batch: Batch,
        resp: &Response,
        now: Instant,
    ) {
        let Batch { from, to, records } = batch;
        core.prove(ring, now, &|| self.peer_name());
        core.send = to;
        self.scan = None;
        self.limit = self.limit.saturating_mul(2);
        if !self.cfg.ack {
            core.count_delivered(from, to);
            core.commit_upto(ring, to);
            return;
        }
        let ack_id = protocol::hec_ack_id(&resp.body);
        self.acks.push(from, to, records, ack_id, now);
        if ack_id.is_none() {
            if let Some(suppressed) = self.status_log.allow(now) {
                crate::log!(
                    Level::Warn,
                    "hec_no_ack_id",
                    feed = core.feed,
                    output = core.name,
                    body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]),
                    hint = "ack = true but the answer has no ackId: is useACK on for this token? The batch counts as delivered at 200",
                    suppressed = suppressed
                );
            }
        }
        if self.next_poll.is_none() {
            self.next_poll = Some(now + self.cfg.ack_poll);
        }
        self.commit_acked(core, ring);
    }

    /// Commits the cursor across acknowledged batches, oldest first, stopping at the first one
    /// still unacknowledged.
    fn commit_acked(&mut self, core: &mut Core, ring: &mut Ring) {
        while let Some(p) = self.acks.pop_committable() {
            if p.records > 0 {
                core.count_delivered(p.from, p.to);
            }
            core.commit_upto(ring, p.to);
        }
        if self.acks.is_empty() {
            self.next_poll = None;
        }
    }

    /// Records `from..to` are done without being delivered (dead-lettered, or skipped as
    /// corrupt): the cursor passes them once everything before them is.
    fn settle_skipped(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        from: Pos,
        to: Pos,
        now: Instant,
    ) {
        if self.cfg.ack && !self.acks.is_empty() {
            self.acks.push(from, to, 0, None, now);
            self.commit_acked(core, ring);
        } else {
            core.commit_upto(ring, to);
        }
    }

    /// A single record refused with a status that retrying cannot fix: into the dead-letter
    /// file, counted, logged; the output moves on.
    fn dead_letter(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        from: Pos,
        to: Pos,
        resp: &Response,
        now: Instant,
    ) {
        let (line, seq) = match ring.read(from) {
            Read::Record(r) => (
                protocol::dead_letter_line(
                    &clock::rfc3339(clock::wall_ns()),
                    &core.feed,
                    &core.name,
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
        let path = self.dead_path.clone();
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
        self.stats.dead_lettered += 1;
        if let Some(suppressed) = self.dead_log.allow(now) {
            let body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
            match &written {
                Ok(()) => crate::log!(
                    Level::Error,
                    "http_record_dead_lettered",
                    feed = core.feed,
                    output = core.name,
                    status = resp.status,
                    seq = seq,
                    response = body,
                    file = path.display(),
                    suppressed = suppressed
                ),
                Err(e) => crate::log!(
                    Level::Error,
                    "http_dead_letter_write_failed",
                    feed = core.feed,
                    output = core.name,
                    status = resp.status,
                    seq = seq,
                    file = path.display(),
                    error = e,
                    hint = "the record is skipped all the same, so that it cannot block the feed",
                    suppressed = suppressed
                ),
            }
        }
        core.send = to;
        self.scan = None;
        self.limit = self.limit.saturating_mul(2);
        self.settle_skipped(core, ring, from, to, now);
    }

    fn log_status(
        &mut self,
        core: &mut Core,
        event: &str,
        status: u16,
        resp: &Response,
        now: Instant,
    ) {
        if let Some(suppressed) = self.status_log.allow(now) {
            crate::log!(
                Level::Warn,
                event,
                feed = core.feed,
                output = core.name,
                status = status,
                body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]),
                suppressed = suppressed
            );
        }
    }

    /// Sends batches (and ack polls) until the socket is full, a response is awaited, or there is
    /// nothing to send yet.
    pub(super) fn write(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        now: Instant,
    ) -> Pass {
        loop {
            match self.exchange {
                Exchange::Receiving { .. } => return Pass::Blocked,
                Exchange::Sending { req, deadline } => match self.send_bytes(core, registry, now) {
                    Some(true) => {
                        self.exchange = Exchange::Receiving { req, deadline };
                    }
                    Some(false) => return Pass::Blocked,
                    None => return Pass::Failed,
                },
                Exchange::Idle => {
                    if let Some(pass) = self.start_request(core, ring, now) {
                        return pass;
                    }
                }
            }
        }
    }

    /// Writes request bytes: `Some(true)` when all are written, `Some(false)` when the socket is
    /// full, `None` after a failure.
    fn send_bytes(&mut self, core: &mut Core, registry: &Registry, now: Instant) -> Option<bool> {
        loop {
            let payload: &[u8] = match self.exchange {
                Exchange::Sending {
                    req: Req::Data(_), ..
                } if self.cfg.gzip => &self.gz,
                Exchange::Sending {
                    req: Req::Data(_), ..
                } => &self.body,
                _ => &[],
            };
            let total = self.head.len() + payload.len();
            if self.sent >= total {
                return Some(true);
            }
            let (a, b) = if self.sent < self.head.len() {
                (&self.head[self.sent..], payload)
            } else {
                (&[][..], &payload[self.sent - self.head.len()..])
            };
            let iov = [IoSlice::new(a), IoSlice::new(b)];
            let conn = self.conn.as_mut()?;
            match conn.write(&iov) {
                Ok(0) => {
                    self.fail(core, registry, "write returned 0", now);
                    return None;
                }
                Ok(n) => {
                    self.sent += n;
                    core.stats.bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    core.write_blocked = true;
                    return Some(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = format!("write: {e}");
                    self.fail(core, registry, &why, now);
                    return None;
                }
            }
        }
    }

    /// With no request in flight: starts an ack poll or a batch. Returns how the pass ends when
    /// there is nothing to start.
    fn start_request(&mut self, core: &mut Core, ring: &mut Ring, now: Instant) -> Option<Pass> {
        if self.cfg.ack {
            // The oldest unacknowledged batch timed out: send it, and all after it, again.
            if let Some(p) = self.acks.timed_out(self.cfg.ack_timeout, now) {
                let n = self.acks.clear() as u64;
                self.stats.batches_retried += n;
                self.next_poll = None;
                self.scan = None;
                let ack_timeout_s = self.cfg.ack_timeout.as_secs();
                crate::log!(
                    Level::Warn,
                    "hec_ack_timeout",
                    feed = core.feed,
                    output = core.name,
                    ack_id = p.ack_id.map_or("none".to_string(), |i| i.to_string()),
                    first_seq = p.from.seq,
                    batches_resent = n,
                    ack_timeout_s = ack_timeout_s
                );
                core.send = p.from;
            }
            let due = self.next_poll.is_some_and(|t| t <= now);
            if due && self.acks.poll_ids().next().is_some() {
                let HttpSink {
                    head, cfg, acks, ..
                } = &mut *self;
                if let Err(e) = protocol::ack_request(head, cfg, acks.poll_ids()) {
                    return self.request_failed(core, "hec_ack_poll_failed", &e);
                }
                self.sent = 0;
                self.exchange = Exchange::Sending {
                    req: Req::AckPoll,
                    deadline: now + self.cfg.request_timeout,
                };
                return None;
            }
            if self.acks.is_full() {
                return Some(Pass::Blocked);
            }
        }
        self.start_batch(core, ring, now)
    }

    /// Gathers the next batch; starts it when it is full or old enough.
    fn start_batch(&mut self, core: &mut Core, ring: &mut Ring, now: Instant) -> Option<Pass> {
        let Some(limit) = self.batch_limit(core, now) else {
            return Some(Pass::Blocked);
        };
        let scan = self.scan(core, ring, limit, now);
        if scan.records == 0 {
            self.scan = None;
            self.wait = None;
            core.end_episode();
            return Some(Pass::Done);
        }
        if !scan.full && scan.records < limit {
            let age = u64::try_from(self.cfg.max_batch_age.as_nanos()).unwrap_or(u64::MAX);
            let due = scan.first_ts.saturating_add(age);
            let wall = clock::wall_ns();
            if wall < due {
                self.scan = Some(scan);
                self.wait = Some(now + Duration::from_nanos(due - wall));
                return Some(Pass::Blocked);
            }
        }
        self.scan = None;
        self.wait = None;
        self.send_batch(core, ring, scan, now)
    }

    /// Records the next batch may hold: the narrowing limit while a refused batch is split,
    /// and the rate limiter's allowance. `None` when the bucket is empty: the pass ends
    /// blocked.
    fn batch_limit(&mut self, core: &mut Core, now: Instant) -> Option<u32> {
        if core.send.seq >= self.narrow_until {
            self.limit = u32::MAX;
        }
        let mut limit = self.limit;
        if let Some(b) = core.bucket.as_mut() {
            let n = b.allowance(now, false);
            if n == 0 {
                b.exhaust(now);
                // The bucket's wake-up comes first now; the batch is looked at again then.
                self.wait = None;
                return None;
            }
            limit = limit.min(u32::try_from(n).unwrap_or(u32::MAX));
        }
        Some(limit)
    }

    /// Walks the ring from the send position (or from where the last look stopped) until the
    /// batch is full, holds `limit` records or reaches the head; steps over overwritten and
    /// damaged records before the first one.
    fn scan(&mut self, core: &mut Core, ring: &mut Ring, limit: u32, now: Instant) -> Scan {
        let send = core.send;
        let tail = ring.tail();
        let (format, max) = (self.cfg.body, self.cfg.max_batch_bytes);
        let mut scan = match self.scan {
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
                    core.note_overrun(ring);
                    core.send = tail;
                    scan.from = tail;
                    scan.to = tail;
                }
                Read::Corrupt { at, damage, next } if scan.records == 0 => {
                    core.note_damage(at, damage, next);
                    core.send = next;
                    self.settle_skipped(core, ring, at, next, now);
                    scan.from = next;
                    scan.to = next;
                }
                // A gap after some records: send those first.
                Read::Overrun { .. } | Read::Corrupt { .. } => scan.full = true,
            }
        }
        scan
    }

    /// Builds the request for the scanned records (body from the ring, gzip, head) and starts
    /// sending it.
    fn send_batch(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        scan: Scan,
        now: Instant,
    ) -> Option<Pass> {
        // Build the body from the ring (nothing was appended since the scan: one loop turn).
        let (format, max) = (self.cfg.body, self.cfg.max_batch_bytes);
        self.body.clear();
        self.body.reserve_exact(scan.bytes.max(max) + 1);
        let mut pos = scan.from;
        let mut records = 0;
        let mut last_ts = 0;
        while records < scan.records {
            let Read::Record(r) = ring.read(pos) else {
                break;
            };
            if let Err(e) = protocol::push_record(&mut self.body, format, r.payload) {
                return self.request_failed(core, "http_body_failed", &e);
            }
            last_ts = r.ts;
            records += 1;
            pos = r.next;
        }
        protocol::finish_body(&mut self.body, format);
        if self.cfg.gzip {
            let HttpSink { body, gz, .. } = &mut *self;
            gz.reserve_exact(protocol::gzip_bound(body.len()));
            if let Err(e) = protocol::gzip_into(body, gz) {
                return self.request_failed(core, "http_gzip_failed", &e);
            }
        }
        let len = if self.cfg.gzip {
            self.gz.len()
        } else {
            self.body.len()
        };
        let HttpSink { head, cfg, .. } = &mut *self;
        protocol::data_head(head, cfg, len, cfg.gzip);
        self.sent = 0;
        self.exchange = Exchange::Sending {
            req: Req::Data(Batch {
                from: scan.from,
                to: pos,
                records,
            }),
            deadline: now + self.cfg.request_timeout,
        };
        if let Some(b) = core.bucket.as_mut() {
            b.tokens -= f64::from(records);
        }
        core.last_sent_ts = last_ts;
        if let Some(e) = core.episode.as_mut().filter(|e| e.before_ns == 0) {
            e.before_ns = last_ts;
        }
        None
    }
}

impl Core {
    /// Counts records `from..to` as delivered or replayed.
    fn count_delivered(&mut self, from: Pos, to: Pos) {
        let replayed = self.replay_until.clamp(from.seq, to.seq) - from.seq;
        self.stats.replayed += replayed;
        self.stats.delivered += to.seq - from.seq - replayed;
    }
}
