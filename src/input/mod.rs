//! TCP and TLS inputs: accept, read (decrypt), frame, append to the feed's ring.
//!
//! A TLS connection is the same connection with a rustls `ServerConnection` between the socket
//! and the framer, driven from the loop's readiness events: `read_tls` → `process_new_packets`
//! → `reader` (plaintext into the scratch buffer) → `write_tls` (handshake replies, alerts).
//! rustls holds at most one TLS record of input and [`crate::tls::BUFFER_LIMIT`] of output per
//! connection. A handshake that fails is logged (rate-limited) with the peer and the reason,
//! counted per reason, and closes only its own connection.
//!
//! A connection whose framing is newline (configured, or detected by `auto`) reads straight
//! into room reserved at the ring's head, behind the partial record it kept from its previous
//! read; the complete lines are framed in place and committed as one lines entry
//! ([`read_lines`], `buffer-spec.md` §5): the bytes are copied once, by the kernel. Other
//! connections (octet counting, before `auto` decides, a record longer than `max_record_bytes`
//! and what follows it in that read) read into the relay's one scratch buffer, and complete
//! records are copied from it into the ring. Either way a partial record at the end of a read
//! is kept on the connection, at most `max_record_bytes` + a frame header, until the rest
//! arrives. So a connection costs its partial record plus a few hundred bytes, whatever it
//! sends.

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use rustls::ServerConnection;

pub mod framing;
pub mod http;

use crate::clock;
use crate::config::{FeedConfig, InputKind, SyncPolicy};
use crate::log::{Level, Limiter};
use crate::ring::{AppendError, NotReserved, Ring};
use crate::tls;
use framing::{Detected, Fallback, Framer, FramerConfig, InPlace};
use http::HttpConn;

/// Bytes read per `read` call, on top of room for one partial record.
pub const READ_CHUNK: usize = 64 << 10;
/// Bytes read per `read` call of a newline-framed TCP or TLS connection, straight into the ring
/// (at most a quarter of the ring's largest lines entry, [`Ring::lines_max`]): a lines entry
/// each, so the larger, the fewer entries and system calls.
pub const LINES_READ: usize = 256 << 10;
/// Reads one connection may do per turn.
pub const READS_PER_TURN: usize = 4;

/// Counters of one feed.
#[derive(Clone, Copy, Debug, Default)]
pub struct FeedStats {
    /// Records accepted into the ring.
    pub records: u64,
    /// Payload bytes accepted.
    pub bytes: u64,
    /// Records truncated at `max_record_bytes`.
    pub truncated: u64,
    /// Records dropped for being over `max_record_bytes`.
    pub dropped_oversize: u64,
    /// Octet frames with an invalid header.
    pub bad_frames: u64,
    /// `auto` connections that started with `<digits> ` but were framed by newline (not a
    /// plausible octet frame).
    pub framing_fallbacks: u64,
    /// Partial frames lost when the sender closed.
    pub incomplete_at_eof: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed at once: their source was at `max_connections_per_source` with
    /// nothing to evict.
    pub refused: u64,
    /// Silent connections closed to make room for a new one, at `max_connections` or at
    /// `max_connections_per_source`.
    pub evicted: u64,
    /// Times accepting stopped at `max_connections` with nothing to evict.
    pub accept_paused: u64,
    /// Milliseconds spent so, finished episodes.
    pub accept_paused_ms: u64,
    /// HTTP connections closed for a request head not complete within `header_timeout`.
    pub header_timeouts: u64,
    /// Connections closed for idling.
    pub idle_closed: u64,
    /// Times the ring was full in `block` mode.
    pub blocked: u64,
    /// HTTP responses, by status (`http::STATUSES`).
    pub http_responses: [u64; http::STATUSES.len()],
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes failed, by [`crate::tls::FAILURE_REASONS`].
    pub tls_failures: [u64; crate::tls::FAILURE_REASONS.len()],
}

/// A feed's limits on per-connection log lines, one per kind: one feed's churn (or a flood of
/// one kind) never hides another feed's lines, or a mutual-TLS client's `tls_established`.
struct ConnLogs {
    open: Limiter,
    closed: Limiter,
    tls: Limiter,
    framing: Limiter,
}

impl ConnLogs {
    fn new() -> ConnLogs {
        let per_minute = |n| Limiter::new(n, Duration::from_secs(60));
        ConnLogs {
            open: per_minute(20),
            closed: per_minute(20),
            tls: per_minute(20),
            framing: per_minute(10),
        }
    }
}

/// A feed's input side: its listener, its connections' count and accept state, its counters and
/// log limits. The event loop owns it inside its feed and lends it out with the feed's
/// configuration and ring as a [`FeedIn`].
pub struct FeedInput {
    /// The listener; `None` while standby or after a failed bind.
    pub listener: Option<TcpListener>,
    /// The address the listener is bound to.
    pub local_addr: SocketAddr,
    /// TLS input: the configuration new handshakes use (replaced by a reload).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    tls_log: Limiter,
    /// Connection log lines, limited per kind for this feed alone.
    logs: ConnLogs,
    /// Counters.
    pub stats: FeedStats,
    /// How its connections frame records.
    pub framer: FramerConfig,
    /// Open connections.
    pub conns: usize,
    /// Since when accepting is stopped: at `max_connections`, nothing to evict. New
    /// connections wait in the listen backlog.
    accept_paused: Option<Instant>,
    /// Try accepting again this turn: a connection closed while accepting was stopped.
    accept_due: bool,
    /// Try accepting again then: a connection becomes evictable.
    pub accept_retry: Option<Instant>,
    /// `connections_at_limit` and `connection_evicted` lines.
    limit_log: Limiter,
    /// `connection_refused` lines.
    refuse_log: Limiter,
    /// Records were appended since the outputs last wrote.
    pub dirty: bool,
    /// Connections are paused because the ring is full (`block`).
    pub paused: bool,
    /// Inputs are paused until the ring's background sync finishes: it had not when the next
    /// was due, so the disk is slower than the input (`buffer-spec.md` §10).
    pub sync_wait: bool,
}

impl FeedInput {
    /// A feed's input side with `listener` bound at `local_addr` (none while standby).
    pub fn new(
        listener: Option<TcpListener>,
        local_addr: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        framer: FramerConfig,
    ) -> FeedInput {
        FeedInput {
            listener,
            local_addr,
            tls,
            tls_log: Limiter::new(10, Duration::from_secs(60)),
            logs: ConnLogs::new(),
            stats: FeedStats::default(),
            framer,
            conns: 0,
            accept_paused: None,
            accept_due: false,
            accept_retry: None,
            limit_log: Limiter::new(5, Duration::from_secs(60)),
            refuse_log: Limiter::new(5, Duration::from_secs(60)),
            // The outputs look at the ring once at start.
            dirty: true,
            paused: false,
            sync_wait: false,
        }
    }
}

/// A feed as its inputs see it: its configuration, its ring, its input side.
pub struct FeedIn<'a> {
    pub cfg: &'a FeedConfig,
    pub ring: &'a mut Ring,
    pub input: &'a mut FeedInput,
}

impl FeedIn<'_> {
    /// After records were appended at `ts`: the outputs have work; under `sync = "always"`
    /// the records are forced to disk now, under `interval` their disk writes are started
    /// (the periodic sync then waits only for what is left). A failure is logged and returned.
    pub fn appended(&mut self, ts: u64) -> std::io::Result<()> {
        self.input.dirty = true;
        let res = match self.cfg.sync {
            SyncPolicy::Always => self.ring.checkpoint(ts, true),
            SyncPolicy::Interval(_) => self.ring.start_writeback(),
            SyncPolicy::Never => Ok(()),
        };
        if let Err(e) = &res {
            crate::log!(
                Level::Error,
                "ring_sync_failed",
                feed = self.cfg.name,
                path = self.ring.path().display(),
                error = e
            );
        }
        res
    }
}

/// The feeds, as the inputs see them: the event loop owns them and lends one at a time.
pub trait Feeds {
    /// Feed `i` (a connection's `feed` index).
    fn feed(&mut self, i: usize) -> FeedIn<'_>;
    /// How many feeds there are.
    fn count(&self) -> usize;
}

/// Every input connection of every feed, and the buffers they share.
pub struct Inputs {
    /// Registers and deregisters the connections' sockets with the loop's `Poll`.
    registry: Registry,
    /// A connection's token is `token_base + slot`.
    token_base: usize,
    conns: Vec<Option<Conn>>,
    free_slots: Vec<usize>,
    /// Connections with data left after their turn's budget.
    ready: Vec<usize>,
    /// Last turn's `ready`, served this turn (two lists swapped: no allocation per turn).
    serving: Vec<usize>,
    /// Where reads land that do not go straight into a ring: a partial record, a read, and a
    /// frame header's slack.
    scratch: Vec<u8>,
    /// Bytes read from input connections (the shutdown drain watches it).
    pub bytes_in: u64,
    /// Reads of input connections that returned data.
    pub reads: u64,
}

impl Inputs {
    /// No connections yet; sockets registered through `registry` with tokens from
    /// `token_base` up.
    pub fn new(registry: Registry, token_base: usize) -> Inputs {
        Inputs {
            registry,
            token_base,
            conns: Vec::new(),
            free_slots: Vec::new(),
            ready: Vec::new(),
            serving: Vec::new(),
            scratch: Vec::new(),
            bytes_in: 0,
            reads: 0,
        }
    }

    /// Makes the scratch buffer large enough for records of `max_record` bytes.
    pub fn size_scratch(&mut self, max_record: usize) {
        let want = max_record + 64 + LINES_READ.max(READ_CHUNK);
        if self.scratch.len() < want {
            self.scratch.resize(want, 0);
        }
    }

    /// Whether connections wait for their next turn (the loop then polls without waiting).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Starts a turn: the connections whose budget ran out last turn are set aside, to be
    /// served once each by [`Inputs::serve_ready`] after the turn's events, which skip them
    /// (`Conn::queued`). The id of one closed meanwhile can reach the next list twice through
    /// the connection that took its slot: deduplicated.
    pub fn begin_turn(&mut self) {
        std::mem::swap(&mut self.ready, &mut self.serving);
        self.ready.clear();
        self.serving.sort_unstable();
        self.serving.dedup();
    }

    /// Serves the connections set aside by [`Inputs::begin_turn`], once each.
    pub fn serve_ready(&mut self, feeds: &mut dyn Feeds, now: Instant) {
        for i in 0..self.serving.len() {
            let id = self.serving[i];
            if let Some(c) = self.conns.get_mut(id).and_then(Option::as_mut) {
                c.queued = false;
            }
            self.service_conn(feeds, id, now, false);
        }
        self.serving.clear();
    }

    /// An event for token `t`, if it is a connection's.
    pub fn owns(&self, t: usize) -> Option<usize> {
        t.checked_sub(self.token_base)
    }

    /// Queues feed `fi`'s paused connections: its ring has room again, or its sync finished.
    pub fn resume_feed(&mut self, fi: usize) {
        for (id, c) in self.conns.iter_mut().enumerate() {
            if let Some(c) = c.as_mut().filter(|c| c.feed == fi && c.paused) {
                c.queue(&mut self.ready, id);
            }
        }
    }

    /// Reads everything the connections have (the shutdown drain).
    pub fn drain(&mut self, feeds: &mut dyn Feeds, now: Instant) {
        for id in 0..self.conns.len() {
            self.service_conn(feeds, id, now, true);
        }
    }
}

/// What carries a connection's bytes.
enum Transport {
    Plain,
    Tls(Box<TlsIn>),
}

/// A TLS connection's state.
enum TlsState {
    Handshaking,
    Established,
}

struct TlsIn {
    conn: ServerConnection,
    state: TlsState,
    /// rustls reported this error (the alert was sent): the connection closes.
    error: Option<rustls::Error>,
    /// The socket reached EOF.
    sock_eof: bool,
    /// Our `close_notify` is queued.
    closing: bool,
}

impl TlsIn {
    /// Reads plaintext into `buf`: as `Read::read` (0 = the sender closed, `WouldBlock` = no
    /// plaintext yet), decrypting as many TLS records as fit.
    fn read(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let failed = |e: &rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e.clone());
        if let Some(e) = &self.error {
            return Err(failed(e));
        }
        match tls::flush(&mut self.conn, stream) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        let mut n = 0;
        loop {
            if n == buf.len() {
                return Ok(n);
            }
            match self.conn.reader().read(&mut buf[n..]) {
                // close_notify: the sender closed cleanly.
                Ok(0) => return Ok(n),
                Ok(k) => {
                    n += k;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without close_notify: EOF all the same for a log sender.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(n),
                Err(e) => return Err(e),
            }
            if self.sock_eof {
                return Ok(n);
            }
            match self.conn.read_tls(stream) {
                Ok(0) => self.sock_eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Deliver what was decrypted; the error comes back on the next call.
                Err(_) if n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // Send the alert, best effort.
                let _ = self.conn.write_tls(stream);
                let err = failed(&e);
                self.error = Some(e);
                return if n > 0 { Ok(n) } else { Err(err) };
            }
            match tls::flush(&mut self.conn, stream) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }
}

/// One sender's connection.
pub struct Conn {
    pub(super) stream: TcpStream,
    transport: Transport,
    pub(super) opened: Instant,
    /// It has delivered plaintext (a TLS handshake is not plaintext): never evicted.
    heard: bool,
    /// Index of its feed.
    pub feed: usize,
    pub(super) peer: SocketAddr,
    framer: Framer,
    /// Bytes read but not yet framed (a partial record, or records the ring refused); on an
    /// HTTP connection, the request being read.
    pub(super) pending: Vec<u8>,
    pub(super) last_active: Instant,
    /// The ring refused a record (`block`): reading stops until outputs free room.
    pub paused: bool,
    /// The sender closed its side; `pending` still holds refused records.
    pub(super) eof: bool,
    /// The HTTP state of a connection to an `http` input.
    pub(super) http: Option<Box<HttpConn>>,
    /// On the relay's ready list: served from it, once, next turn, and not by its events
    /// meanwhile, so a busy connection gets one budget of reads per turn.
    pub(super) queued: bool,
}

impl Conn {
    /// Puts connection `id` (this one) on the ready list unless it is there already.
    pub(super) fn queue(&mut self, ready: &mut Vec<usize>, id: usize) {
        if !self.queued {
            self.queued = true;
            ready.push(id);
        }
    }
}

/// A new connection waits at least this long for its first byte before it can be evicted.
const EVICT_GRACE: Duration = Duration::from_secs(1);
/// Candidates [`Inputs::evictable`] reads from, at most, in one call.
const EVICT_READS: usize = 8;

/// What [`Inputs::evictable`] found.
enum Evictable {
    /// This connection: silent, past its grace.
    Conn(usize),
    /// A candidate closed when it was read (the sender had closed): there is room.
    Freed,
    /// Nothing now; a connection becomes evictable then, if ever.
    None(Option<Instant>),
}

impl Conn {
    /// `(class, since)` if it may be evicted, lowest first: a TCP/TLS connection that has not
    /// delivered plaintext, since it opened; an HTTP connection waiting for a request head,
    /// since it opened or its previous response.
    fn evict_rank(&self) -> Option<(u8, Instant)> {
        match &self.http {
            None => (!self.heard).then_some((0, self.opened)),
            Some(h) => h.head_wait_since(self.opened).map(|s| (1, s)),
        }
    }
}

/// What happened to a connection in one service call.
enum Outcome {
    Open,
    Close(&'static str, Option<io::Error>),
}

impl Conn {
    /// Reads plaintext, as `Read::read`: from the socket, or through TLS (counting and logging
    /// a handshake that completed).
    pub(super) fn read_plain(
        &mut self,
        buf: &mut [u8],
        feed: (&str, &mut FeedStats),
        conn_log: &mut Limiter,
        now: Instant,
    ) -> io::Result<usize> {
        let (feed_name, feed_stats) = feed;
        let t = match &mut self.transport {
            Transport::Plain => {
                let r = self.stream.read(buf);
                self.heard |= matches!(r, Ok(n) if n > 0);
                return r;
            }
            Transport::Tls(t) => t,
        };
        let r = t.read(&mut self.stream, buf);
        self.heard |= matches!(r, Ok(n) if n > 0);
        if matches!(t.state, TlsState::Handshaking) && !t.conn.is_handshaking() {
            t.state = TlsState::Established;
            feed_stats.tls_handshakes += 1;
            if let Some(suppressed) = conn_log.allow(now) {
                let info = t
                    .conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| tls::cert_info(c));
                crate::log!(
                    Level::Info,
                    "tls_established",
                    feed = feed_name,
                    peer = self.peer,
                    subject = info.map_or("-".to_string(), |i| i.subject),
                    version = t
                        .conn
                        .protocol_version()
                        .map_or("?".to_string(), |v| format!("{v:?}")),
                    cipher = t
                        .conn
                        .negotiated_cipher_suite()
                        .map_or("?".to_string(), |c| format!("{:?}", c.suite())),
                    suppressed = suppressed
                );
            }
        }
        r
    }

    /// Writes plaintext, as `Write::write`. Through TLS, what rustls takes (up to its buffer
    /// limit) is encrypted and sent as far as the socket allows; the rest goes out with the
    /// next read or `close_write`.
    pub(super) fn write_plain(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match &mut self.transport {
            Transport::Plain => return self.stream.write(buf),
            Transport::Tls(t) => t,
        };
        let n = t.conn.writer().write(buf)?;
        match tls::flush(&mut t.conn, &mut self.stream) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Ends our side of the connection once everything written is sent (TLS: after a
    /// `close_notify`). `Ok(false)`: the socket is full, call again when writable.
    pub(super) fn close_write(&mut self) -> io::Result<bool> {
        if let Transport::Tls(t) = &mut self.transport {
            if !t.closing {
                t.conn.send_close_notify();
                t.closing = true;
            }
            match tls::flush(&mut t.conn, &mut self.stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        Ok(true)
    }
}

impl Inputs {
    /// Accepts the connections waiting on feed `fi`'s listener. At `max_connections` a new
    /// connection takes the place of an evictable one ([`Inputs::evictable`]); with none,
    /// accepting stops and the rest wait in the listen backlog (their senders' data with
    /// them) until a connection closes or one becomes evictable ([`Inputs::resume_accepts`]).
    /// A connection is never accepted only to be closed, but for one from a source at
    /// `max_connections_per_source` with nothing of its own to evict.
    pub fn accept(&mut self, feeds: &mut dyn Feeds, fi: usize, now: Instant) {
        loop {
            let feed = feeds.feed(fi);
            if feed.input.listener.is_none() {
                return;
            }
            let at_limit = feed.input.conns >= feed.cfg.input.max_connections;
            let victim = if at_limit {
                match self.evictable(feeds, fi, None, now) {
                    Evictable::Conn(id) => Some(id),
                    Evictable::Freed => None,
                    Evictable::None(retry) => return self.pause_accept(feeds, fi, retry, now),
                }
            } else {
                None
            };
            let feed = feeds.feed(fi);
            let Some(listener) = feed.input.listener.as_ref() else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(x) => {
                    if let Some(since) = feed.input.accept_paused.take() {
                        feed.input.stats.accept_paused_ms +=
                            now.duration_since(since).as_millis() as u64;
                    }
                    x
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and try again on the next event.
                    crate::log!(
                        Level::Error,
                        "accept_failed",
                        feed = feed.cfg.name,
                        error = e
                    );
                    return;
                }
            };
            let per_source = feed.cfg.input.max_connections_per_source;
            if per_source > 0 && self.source_conns(fi, peer) >= per_source {
                match self.evictable(feeds, fi, Some(peer), now) {
                    Evictable::Conn(id) => self.evict(feeds, id, "max_connections_per_source", now),
                    Evictable::Freed => {}
                    Evictable::None(_) => {
                        let feed = feeds.feed(fi);
                        feed.input.stats.refused += 1;
                        if let Some(suppressed) = feed.input.refuse_log.allow(now) {
                            crate::log!(
                                Level::Warn,
                                "connection_refused",
                                feed = feed.cfg.name,
                                peer = peer,
                                reason = "per_source",
                                max_connections_per_source = per_source,
                                suppressed = suppressed
                            );
                        }
                        drop(stream);
                        continue;
                    }
                }
            } else if let Some(id) = victim {
                self.evict(feeds, id, "max_connections", now);
            }
            let feed = feeds.feed(fi);
            let transport = match &feed.input.tls {
                None => Transport::Plain,
                Some(cfg) => match ServerConnection::new(cfg.clone()) {
                    Ok(mut conn) => {
                        conn.set_buffer_limit(Some(tls::BUFFER_LIMIT));
                        Transport::Tls(Box::new(TlsIn {
                            conn,
                            state: TlsState::Handshaking,
                            error: None,
                            sock_eof: false,
                            closing: false,
                        }))
                    }
                    Err(e) => {
                        crate::log!(
                            Level::Error,
                            "tls_session_failed",
                            feed = feed.cfg.name,
                            peer = peer,
                            error = e
                        );
                        continue;
                    }
                },
            };
            // A TLS connection also writes (handshake replies): it wants writable events.
            let interest = match transport {
                Transport::Plain => Interest::READABLE,
                Transport::Tls(_) => Interest::READABLE | Interest::WRITABLE,
            };
            let id = self.free_slots.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            // An HTTP connection writes responses: it waits for writable when its socket is full.
            let interest = if feed.cfg.input.kind == InputKind::Http {
                interest | Interest::WRITABLE
            } else {
                interest
            };
            if let Err(e) =
                self.registry
                    .register(&mut stream, Token(self.token_base + id), interest)
            {
                crate::log!(
                    Level::Error,
                    "register_failed",
                    feed = feed.cfg.name,
                    peer = peer,
                    error = e
                );
                self.free_slots.push(id);
                continue;
            }
            feed.input.conns += 1;
            feed.input.stats.accepted += 1;
            if let Some(suppressed) = feed.input.logs.open.allow(now) {
                crate::log!(
                    Level::Info,
                    "connection_open",
                    feed = feed.cfg.name,
                    peer = peer,
                    suppressed = suppressed
                );
            }
            self.conns[id] = Some(Conn {
                stream,
                transport,
                opened: now,
                heard: false,
                feed: fi,
                peer,
                framer: Framer::new(feed.input.framer),
                pending: Vec::with_capacity(pending_capacity(
                    &feed.cfg.input.kind,
                    feed.input.framer.max_record,
                )),
                last_active: now,
                paused: false,
                eof: false,
                http: (feed.cfg.input.kind == InputKind::Http).then(Box::default),
                queued: false,
            });
        }
    }

    /// The connection of feed `fi` (from `source`'s address only, when given) to evict first:
    /// silent TCP/TLS connections (no plaintext yet), oldest first, then HTTP connections
    /// waiting for a request head (idle keep-alive, slowloris), longest-waiting first; each
    /// only after [`EVICT_GRACE`], so a sender that just connected is not cut before its first
    /// write. The candidate gets one read first: one that had data is not silent (its data is
    /// framed as usual) and the next candidate is tried.
    fn evictable(
        &mut self,
        feeds: &mut dyn Feeds,
        fi: usize,
        source: Option<SocketAddr>,
        now: Instant,
    ) -> Evictable {
        for _ in 0..EVICT_READS {
            let mut best: Option<((u8, Instant), usize)> = None;
            let mut retry: Option<Instant> = None;
            for (id, c) in self.conns.iter().enumerate() {
                let Some(c) = c.as_ref().filter(|c| c.feed == fi) else {
                    continue;
                };
                if source.is_some_and(|s| s.ip() != c.peer.ip()) {
                    continue;
                }
                let Some(rank) = c.evict_rank() else {
                    continue;
                };
                if now.duration_since(rank.1) < EVICT_GRACE {
                    let at = rank.1 + EVICT_GRACE;
                    retry = Some(retry.map_or(at, |r| r.min(at)));
                } else if best.is_none_or(|(b, _)| rank < b) {
                    best = Some((rank, id));
                }
            }
            let Some((_, id)) = best else {
                return Evictable::None(retry);
            };
            self.service_conn(feeds, id, now, false);
            match self.conns[id].as_ref() {
                None => return Evictable::Freed,
                Some(c)
                    if c.evict_rank()
                        .is_some_and(|(_, since)| now.duration_since(since) >= EVICT_GRACE) =>
                {
                    return Evictable::Conn(id)
                }
                Some(_) => {}
            }
        }
        // Every candidate tried had data: look again shortly.
        Evictable::None(Some(now + EVICT_GRACE / 10))
    }

    /// Closes connection `id` to make room for a new one: counted, logged (rate-limited).
    fn evict(&mut self, feeds: &mut dyn Feeds, id: usize, reason: &'static str, now: Instant) {
        let Some(c) = self.conns.get(id).and_then(Option::as_ref) else {
            return;
        };
        let feed = feeds.feed(c.feed);
        feed.input.stats.evicted += 1;
        if let Some(suppressed) = feed.input.limit_log.allow(now) {
            crate::log!(
                Level::Warn,
                "connection_evicted",
                feed = feed.cfg.name,
                peer = c.peer,
                reason = reason,
                idle_ms = now.duration_since(c.last_active).as_millis(),
                suppressed = suppressed
            );
        }
        self.close_conn(feeds, id, "evicted", None, now);
    }

    /// Connections of feed `fi` from `peer`'s address.
    fn source_conns(&self, fi: usize, peer: SocketAddr) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|c| c.feed == fi && c.peer.ip() == peer.ip())
            .count()
    }

    /// Stops accepting on feed `fi` (at `max_connections`, nothing to evict) until a
    /// connection closes or `retry`, when one becomes evictable.
    fn pause_accept(
        &mut self,
        feeds: &mut dyn Feeds,
        fi: usize,
        retry: Option<Instant>,
        now: Instant,
    ) {
        let feed = feeds.feed(fi);
        feed.input.accept_retry = retry;
        if feed.input.accept_paused.is_some() {
            return;
        }
        feed.input.accept_paused = Some(now);
        feed.input.stats.accept_paused += 1;
        if let Some(suppressed) = feed.input.limit_log.allow(now) {
            crate::log!(
                Level::Warn,
                "connections_at_limit",
                feed = feed.cfg.name,
                max_connections = feed.cfg.input.max_connections,
                action = "new connections wait in the listen backlog",
                suppressed = suppressed
            );
        }
    }

    /// Accepts again on the feeds that stopped, where a connection closed or became evictable.
    pub fn resume_accepts(&mut self, feeds: &mut dyn Feeds, now: Instant) {
        for fi in 0..feeds.count() {
            let feed = feeds.feed(fi);
            if feed.input.accept_due || feed.input.accept_retry.is_some_and(|r| r <= now) {
                feed.input.accept_due = false;
                feed.input.accept_retry = None;
                self.accept(feeds, fi, now);
            }
        }
    }

    /// Reads and frames what connection `id` has, up to the turn's budget (all of it when
    /// `drain`, at shutdown).
    pub fn service_conn(&mut self, feeds: &mut dyn Feeds, id: usize, now: Instant, drain: bool) {
        let Some(c) = self.conns.get(id).and_then(Option::as_ref) else {
            return;
        };
        if c.queued && !drain {
            // Its turn comes from the ready list.
            return;
        }
        if feeds.feed(c.feed).input.sync_wait && !drain {
            // Until the ring's sync finishes; `resume_after_sync` queues it then.
            if let Some(c) = self.conns[id].as_mut() {
                c.paused = true;
            }
            return;
        }
        if c.http.is_some() {
            return self.service_http(feeds, id, now, drain);
        }
        let Inputs {
            conns,
            scratch,
            ready,
            bytes_in,
            reads: input_reads,
            ..
        } = self;
        let Some(conn) = conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let mut feed = feeds.feed(conn.feed);
        let mut reads = 0;
        let outcome = loop {
            // First frame what is pending (records a full ring refused before).
            if conn.paused || conn.eof {
                conn.paused = false;
                let eof = conn.eof;
                frame_pending(conn, &mut feed, eof, now);
                if conn.paused {
                    break Outcome::Open;
                }
                if conn.eof {
                    break Outcome::Close("sender closed", None);
                }
            }
            if !drain && reads >= READS_PER_TURN {
                conn.queue(ready, id);
                break Outcome::Open;
            }
            let p = conn.pending.len();
            // Newline framing reads straight into the ring, behind the partial record the
            // connection kept, when the ring has a lines entry's room for both.
            let lines_read = LINES_READ.min(feed.ring.lines_max() / 4);
            if conn.framer.in_lines() && p + lines_read <= feed.ring.lines_max() {
                match read_lines(conn, &mut feed, scratch, (p, lines_read), now) {
                    Lines::Read(n) => {
                        reads += 1;
                        *input_reads += 1;
                        *bytes_in += n as u64;
                        conn.last_active = now;
                        if conn.paused {
                            break Outcome::Open;
                        }
                        continue;
                    }
                    Lines::Full => break Outcome::Open,
                    Lines::Eof => {
                        conn.eof = true;
                        continue;
                    }
                    Lines::Err(e) => match e.kind() {
                        io::ErrorKind::WouldBlock => break Outcome::Open,
                        io::ErrorKind::Interrupted => continue,
                        _ => break Outcome::Close("read error", Some(e)),
                    },
                    Lines::Refused => {}
                }
            }
            scratch[..p].copy_from_slice(&conn.pending);
            conn.pending.clear();
            let res = conn.read_plain(
                &mut scratch[p..p + READ_CHUNK],
                (&feed.cfg.name, &mut feed.input.stats),
                &mut feed.input.logs.tls,
                now,
            );
            let n = match res {
                Ok(0) => {
                    conn.eof = true;
                    conn.pending.extend_from_slice(&scratch[..p]);
                    continue;
                }
                Ok(n) => n,
                Err(e) => {
                    conn.pending.extend_from_slice(&scratch[..p]);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break Outcome::Open,
                        io::ErrorKind::Interrupted => continue,
                        _ => break Outcome::Close("read error", Some(e)),
                    }
                }
            };
            reads += 1;
            *input_reads += 1;
            *bytes_in += n as u64;
            conn.last_active = now;
            let data = &scratch[..p + n];
            let consumed = frame(conn, &mut feed, data, false, now);
            conn.pending.extend_from_slice(&data[consumed..]);
            if conn.paused {
                break Outcome::Open;
            }
        };
        if let Outcome::Close(why, err) = outcome {
            self.close_conn(feeds, id, why, err, now);
        }
    }

    pub fn close_conn(
        &mut self,
        feeds: &mut dyn Feeds,
        id: usize,
        why: &str,
        err: Option<io::Error>,
        now: Instant,
    ) {
        let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) else {
            return;
        };
        if matches!(&conn.transport, Transport::Tls(t) if matches!(t.state, TlsState::Established))
        {
            // Best effort, without waiting: the sender's TLS stack then sees a deliberate
            // close (idle timeout, shutdown), not a truncation attack.
            let _ = conn.close_write();
        }
        let _ = self.registry.deregister(&mut conn.stream);
        self.free_slots.push(id);
        let feed = feeds.feed(conn.feed);
        feed.input.conns -= 1;
        // The listener reports the connections waiting in its backlog only when another
        // arrives (edge-triggered): accepting resumes this turn.
        feed.input.accept_due |= feed.input.accept_paused.is_some();
        if let Transport::Tls(t) = &conn.transport {
            let reason = match (&t.state, &t.error, why) {
                (TlsState::Established, ..) => None,
                // Counted and logged as an eviction, not as a failed handshake.
                (TlsState::Handshaking, None, "evicted") => None,
                (TlsState::Handshaking, Some(e), _) => Some(tls::failure_reason(e)),
                (TlsState::Handshaking, None, "handshake_timeout") => Some("timeout"),
                (TlsState::Handshaking, None, _) => Some("closed"),
            };
            if let Some(reason) = reason {
                feed.input.stats.tls_failures[tls::reason_index(reason)] += 1;
                if let Some(suppressed) = feed.input.tls_log.allow(now) {
                    let error = match (&t.error, &err) {
                        (Some(e), _) => e.to_string(),
                        (None, Some(e)) => e.to_string(),
                        (None, None) => why.to_string(),
                    };
                    crate::log!(
                        Level::Warn,
                        "tls_handshake_failed",
                        feed = feed.cfg.name,
                        peer = conn.peer,
                        reason = reason,
                        error = error,
                        suppressed = suppressed
                    );
                }
                return;
            }
        }
        let st = conn.framer.stats();
        feed.input.stats.incomplete_at_eof += st.incomplete_at_eof;
        let framing = match conn.framer.detected() {
            Detected::Newline => "newline",
            Detected::Octet => "octet",
            Detected::Undecided => "undecided",
        };
        if let Some(suppressed) = feed.input.logs.closed.allow(now) {
            let error = err.map_or(String::new(), |e| e.to_string());
            crate::log!(
                Level::Info,
                "connection_closed",
                feed = feed.cfg.name,
                peer = conn.peer,
                reason = why,
                error = error,
                framing = framing,
                records = st.records + conn.http.as_ref().map_or(0, |h| h.records),
                truncated = st.truncated,
                dropped_oversize = st.dropped_oversize,
                bad_frames = st.bad_frames,
                suppressed = suppressed
            );
        }
    }

    /// Closes connections idle for longer than their feed's `idle_timeout`, and TLS
    /// connections still handshaking after `handshake_timeout`.
    pub fn close_idle(&mut self, feeds: &mut dyn Feeds, now: Instant) {
        for id in 0..self.conns.len() {
            let Some(c) = self.conns[id].as_ref() else {
                continue;
            };
            let input = &feeds.feed(c.feed).cfg.input;
            let handshaking = matches!(&c.transport, Transport::Tls(t) if matches!(t.state, TlsState::Handshaking));
            let past = |since: Instant, limit: Option<std::time::Duration>| {
                limit.is_some_and(|t| now.duration_since(since) > t)
            };
            if handshaking && past(c.opened, input.tls().map(|t| t.handshake_timeout)) {
                self.close_conn(feeds, id, "handshake_timeout", None, now);
            } else if past(c.last_active, input.idle_timeout) {
                feeds.feed(c.feed).input.stats.idle_closed += 1;
                self.close_conn(feeds, id, "idle_timeout", None, now);
            } else if past(c.last_active, Some(UNDECIDED_WAIT)) {
                self.decide_undecided(feeds, id, now);
            }
        }
    }

    /// Decides `auto` for connection `id` if its first frame has waited since its last read
    /// ([`Framer::decide_now`]), and frames its pending bytes as reading would have.
    fn decide_undecided(&mut self, feeds: &mut dyn Feeds, id: usize, now: Instant) {
        let Inputs { conns, .. } = self;
        let Some(conn) = conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if conn.http.is_some()
            || conn.paused
            || conn.framer.detected() != Detected::Undecided
            || conn.framer.decide_now(&conn.pending) == Detected::Undecided
        {
            return;
        }
        let mut feed = feeds.feed(conn.feed);
        frame_pending(conn, &mut feed, false, now);
    }
}

/// What a stream connection's `pending` holds between reads, sized once at accept: the
/// framer leaves at most `max_record + 16` bytes unconsumed (`framing.rs`). A paused connection
/// can hold a whole read more (the refused record and what follows it): then the vector grows
/// once, to its high-water mark, and keeps it. An HTTP connection sizes its own as requests
/// come (its limits are the HTTP input's).
fn pending_capacity(kind: &InputKind, max_record: usize) -> usize {
    match kind {
        InputKind::Http => 0,
        _ => max_record + 16,
    }
}

/// How long an `auto` connection's first frame waits for the bytes that would decide its
/// framing before [`Framer::decide_now`] decides on what it has (checked once per
/// `checkpoint_interval`).
const UNDECIDED_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`read_lines`] did.
enum Lines {
    /// Read this many bytes; framed what they completed.
    Read(usize),
    /// The ring has no room (`block`): the connection is paused, nothing was read.
    Full,
    /// The sender closed; nothing was read.
    Eof,
    /// The read failed (`WouldBlock` included); nothing was read.
    Err(io::Error),
    /// The ring cannot hold a lines entry that long; nothing was read.
    Refused,
}

/// One read of a newline-framed connection, straight into the ring: reserves a lines entry's
/// room at the head, puts the connection's partial record at its start, reads up to
/// `lines_read` bytes behind it, frames the complete lines in place and commits them as one
/// entry (`buffer-spec.md` §5). What they leave (the next partial record, or an oversize record
/// and what follows it) goes through [`frame`], from `scratch`, as before.
fn read_lines(
    conn: &mut Conn,
    feed: &mut FeedIn<'_>,
    scratch: &mut [u8],
    (p, lines_read): (usize, usize),
    now: Instant,
) -> Lines {
    match feed.ring.reserve(p + lines_read.min(4096), p + lines_read) {
        Ok(_) => {}
        Err(AppendError::Full) => {
            conn.paused = true;
            if !feed.input.paused {
                feed.input.paused = true;
                feed.input.stats.blocked += 1;
            }
            return Lines::Full;
        }
        // The caller asks for no more than `lines_max`; were it more, the scratch path reads.
        Err(AppendError::TooLarge) => return Lines::Refused,
    }
    let FeedIn { ring, cfg, input } = feed;
    let room = ring.reserved_mut();
    room[..p].copy_from_slice(&conn.pending);
    let n = match conn.read_plain(
        &mut room[p..],
        (&cfg.name, &mut input.stats),
        &mut input.logs.tls,
        now,
    ) {
        Ok(0) => return Lines::Eof,
        Ok(n) => n,
        Err(e) => return Lines::Err(e),
    };
    let ts = clock::wall_ns();
    // The caller checked `in_lines`; were it false, every byte would go to `frame` below.
    let framed = conn
        .framer
        .lines_in_place(&mut room[..p + n])
        .unwrap_or(InPlace {
            len: 0,
            records: 0,
            consumed: 0,
        });
    // What the lines leave is copied out before the entry is committed: the next append goes
    // where those bytes are.
    let rest = p + n - framed.consumed;
    scratch[..rest].copy_from_slice(&room[framed.consumed..p + n]);
    conn.pending.clear();
    if framed.records > 0 {
        match ring.commit_lines(framed.len, framed.records, ts) {
            Ok(_) => {
                input.stats.records += u64::from(framed.records);
                input.stats.bytes += (framed.len - framed.records as usize) as u64;
            }
            // A bug: `reserve` above made the room. Counted as dropped, never silent.
            Err(NotReserved) => {
                input.stats.dropped_oversize += u64::from(framed.records);
                crate::log!(
                    Level::Error,
                    "ring_commit_refused",
                    feed = cfg.name,
                    records = framed.records,
                    reason = "no reservation (a bug)"
                );
            }
        }
        let _ = feed.appended(ts);
    }
    if rest > 0 {
        let consumed = frame(conn, feed, &scratch[..rest], false, now);
        conn.pending.extend_from_slice(&scratch[consumed..rest]);
    }
    Lines::Read(n)
}

/// Frames what `conn.pending` holds, in place: the bytes consumed leave its front, and the
/// vector keeps its capacity (no allocation on a resume after back-pressure).
fn frame_pending(conn: &mut Conn, feed: &mut FeedIn<'_>, eof: bool, now: Instant) {
    // Moved out for the borrow only: `Vec::new` does not allocate, and `frame` does not touch
    // `pending`.
    let mut data = std::mem::take(&mut conn.pending);
    let consumed = frame(conn, feed, &data, eof, now);
    debug_assert!(conn.pending.is_empty());
    data.drain(..consumed);
    conn.pending = data;
}

/// Frames `data` into the feed's ring; returns the bytes consumed. Sets `conn.paused` when the
/// ring refused a record (`block`), in which case the refused record is not consumed.
/// `auto` decides there, and logs a fallback (rate-limited by the connection log's `log`).
fn frame(conn: &mut Conn, feed: &mut FeedIn<'_>, data: &[u8], eof: bool, now: Instant) -> usize {
    let consumed = frame_records(conn, feed, data, eof);
    if let Some(why) = conn.framer.take_fallback() {
        if let Some(suppressed) = feed.input.logs.framing.allow(now) {
            log_fallback(conn, &feed.cfg.name, why, data, suppressed);
        }
    }
    consumed
}

/// Logs that `auto` fell back to newline framing on `conn`, whose first frame starts in `data`
/// (after any CR and LF).
fn log_fallback(conn: &Conn, feed: &str, why: Fallback, data: &[u8], suppressed: u64) {
    let start = data
        .iter()
        .position(|b| !matches!(b, b'\n' | b'\r'))
        .unwrap_or(data.len());
    let first = &data[start..data.len().min(start + 32)];
    crate::log!(
        Level::Warn,
        "framing_fallback",
        feed = feed,
        peer = conn.peer,
        reason = why.reason(),
        first_bytes = Escaped(first),
        suppressed = suppressed
    );
}

/// Bytes for a log line: printable ASCII as it is, other bytes (and `%`, `"`, backslash) as
/// `%XX`.
struct Escaped<'a>(&'a [u8]);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for &b in self.0 {
            if (0x20..0x7f).contains(&b) && !matches!(b, b'%' | b'"' | b'\\') {
                write!(f, "{}", char::from(b))?;
            } else {
                write!(f, "%{b:02X}")?;
            }
        }
        Ok(())
    }
}

/// [`frame`] without the fallback log.
fn frame_records(conn: &mut Conn, feed: &mut FeedIn<'_>, data: &[u8], eof: bool) -> usize {
    let ts = clock::wall_ns();
    let before = conn.framer.stats();
    let ring = &mut feed.ring;
    let stats = &mut feed.input.stats;
    let mut full = false;
    let consumed = conn
        .framer
        .decode(data, eof, &mut |rec: &[u8], truncated: bool| {
            match ring.append(rec, ts, truncated) {
                Ok(_) => {
                    stats.records += 1;
                    stats.bytes += rec.len() as u64;
                    true
                }
                Err(AppendError::Full) => {
                    full = true;
                    false
                }
                // The framer never emits more than max_record_bytes, the ring's limit.
                Err(AppendError::TooLarge) => {
                    stats.dropped_oversize += 1;
                    true
                }
            }
        });
    let after = conn.framer.stats();
    stats.truncated += after.truncated - before.truncated;
    stats.dropped_oversize += after.dropped_oversize - before.dropped_oversize;
    stats.bad_frames += after.bad_frames - before.bad_frames;
    stats.framing_fallbacks += after.auto_fallbacks - before.auto_fallbacks;
    if full {
        conn.paused = true;
        if !feed.input.paused {
            feed.input.paused = true;
            stats.blocked += 1;
        }
    }
    if after.records > before.records {
        // Under `sync = "always"` the records are on disk before more is read from this
        // sender. A failure is logged; the records stay in the ring, in memory.
        let _ = feed.appended(ts);
    }
    consumed
}
