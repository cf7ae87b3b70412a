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
//!
//! Each connection's lifecycle is a sans-I/O state machine, its [`session::Session`]: whether
//! it reads, when it stops (the turn's budget, a full ring, its feed's sync), what becomes of
//! what a sender left when it closed, its timeouts, how its end is reported. [`Inputs`] does
//! the reads, the framing, the ring appends, the counters and the log lines as the session
//! says.

use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use rustls::ServerConnection;

mod accept;
mod conn;
pub mod framing;
pub mod http;
mod read;
pub mod session;

pub use accept::pending_bytes;

pub use conn::Conn;
use conn::{TlsIn, Transport};
use session::{Close, Ending, Session};

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
        let want = scratch_bytes(max_record);
        if self.scratch.len() < want {
            // A new zeroed allocation, not `resize`: the kernel's zero pages cost no memory
            // until a read lands on them, where writing the zeros would touch every page
            // (1.3 MiB of RssAnon with the default `max_record_bytes`). Nothing in it
            // outlives a call, so nothing is copied over.
            self.scratch = vec![0u8; want];
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

    /// Queues feed `fi`'s connections that wait for it ([`Session::waits_for_feed`]): its ring
    /// has room again, or its sync finished.
    pub fn resume_feed(&mut self, fi: usize) {
        for (id, c) in self.conns.iter_mut().enumerate() {
            if let Some(c) = c
                .as_mut()
                .filter(|c| c.feed == fi && c.session.waits_for_feed())
            {
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

impl Inputs {
    /// Closes connection `id` for `why` (`err`: the I/O error behind it): deregisters it,
    /// frees its slot, lets its feed accept again, and reports its end, as a failed TLS
    /// handshake or a `connection_closed` line ([`Session::close`]).
    pub fn close_conn(
        &mut self,
        feeds: &mut dyn Feeds,
        id: usize,
        why: Close,
        err: Option<io::Error>,
        now: Instant,
    ) {
        let Some(mut conn) = self.conns.get_mut(id).and_then(Option::take) else {
            return;
        };
        if matches!(conn.transport, Transport::Tls(_)) && !conn.session.handshaking() {
            // Best effort, without waiting: the sender's TLS stack then sees a deliberate
            // close (idle timeout, shutdown), not a truncation attack.
            let _ = conn.close_write();
        }
        let _ = self.registry.deregister(&mut conn.stream);
        self.free_slots.push(id);
        let mut feed = feeds.feed(conn.feed);
        feed.input.conns -= 1;
        // The listener reports the connections waiting in its backlog only when another
        // arrives (edge-triggered): accepting resumes this turn.
        feed.input.accept_due |= feed.input.accept_paused.is_some();
        let tls_error = conn.tls_error().map(tls::failure_reason);
        match conn.session.close(why, tls_error) {
            Ending::HandshakeFailed(reason) => {
                log_handshake_failed(&mut feed, &conn, reason, err, why, now);
            }
            Ending::Closed => log_closed(&mut feed, &conn, why, err, now),
        }
    }
}

/// Counts and logs (rate-limited) a TLS handshake that failed for `reason`, with the error
/// rustls reported, else the I/O error `err`, else why it closed.
fn log_handshake_failed(
    feed: &mut FeedIn<'_>,
    conn: &Conn,
    reason: &'static str,
    err: Option<io::Error>,
    why: Close,
    now: Instant,
) {
    feed.input.stats.tls_failures[tls::reason_index(reason)] += 1;
    if let Some(suppressed) = feed.input.tls_log.allow(now) {
        let error = match (conn.tls_error(), &err) {
            (Some(e), _) => e.to_string(),
            (None, Some(e)) => e.to_string(),
            (None, None) => why.as_str().to_string(),
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
}

/// Counts what the framer lost at EOF and logs (rate-limited) `connection_closed`.
fn log_closed(
    feed: &mut FeedIn<'_>,
    conn: &Conn,
    why: Close,
    err: Option<io::Error>,
    now: Instant,
) {
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
            reason = why.as_str(),
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

/// The inputs' scratch buffer for records of `max_record` bytes: a partial record, one read
/// (the larger of [`LINES_READ`] and [`READ_CHUNK`]) and a frame
/// header's slack.
pub fn scratch_bytes(max_record: usize) -> usize {
    max_record + 64 + LINES_READ.max(READ_CHUNK)
}
