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
//!
//! ## Files
//! This file holds the sink's state, its connection and its failures; `send.rs` chooses and
//! writes the next request; `answer.rs` reads responses and acts on them; `acks.rs` is the
//! sans-I/O verdict and HEC ack window; `protocol.rs` and `response.rs` the wire format.

use std::io;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Registry, Token};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::config::HttpOutput;
use crate::log::{Level, Limiter};
use crate::ring::{Pos, Read, Ring};

pub mod acks;
mod answer;
pub mod protocol;
pub mod response;
mod send;

use super::dead_letter::DeadLetters;
use super::link::State;
use super::scan::Scan;
use super::transport::Transport;
use super::{Core, Pass};
use acks::{verdict, Acks, Verdict};
use response::{Response, ResponseReader};

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
    dead: DeadLetters,
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
            dead: DeadLetters::new(dead_path),
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
        let session = match &self.tls {
            None => None,
            Some((config, name)) => match Transport::tls_session(config, name.clone()) {
                Ok(c) => Some(c),
                Err(why) => return self.fail(core, registry, &why, now),
            },
        };
        let target = format!("{}:{}", self.cfg.host, self.cfg.port);
        let host = (self.cfg.host.as_str(), self.cfg.port);
        match Transport::connect(host, &target, registry, token, session) {
            Ok((conn, addr)) => {
                let insecure = self.cfg.tls.as_ref();
                if insecure.is_some_and(|t| t.files.insecure_skip_verify) {
                    super::connect::warn_insecure(core, &addr);
                }
                self.conn = Some(conn);
                self.peer = Some(addr);
                self.reader.reset();
                core.link.connecting(now);
            }
            Err(why) => self.fail(core, registry, &why, now),
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
}
