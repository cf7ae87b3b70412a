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
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Token};
use rustls::ServerConnection;

use super::http_in::HttpConn;
use super::{Feed, FeedStats, Relay, CONN_BASE, LINES_READ, READS_PER_TURN, READ_CHUNK};
use crate::clock;
use crate::config::InputKind;
use crate::framing::{Detected, Fallback, Framer, InPlace};
use crate::log::{Level, Limiter};
use crate::ring::{AppendError, NotReserved};
use crate::tls;

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
/// Candidates [`Relay::evictable`] reads from, at most, in one call.
const EVICT_READS: usize = 8;

/// What [`Relay::evictable`] found.
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

impl Relay {
    /// Accepts the connections waiting on feed `fi`'s listener. At `max_connections` a new
    /// connection takes the place of an evictable one ([`Relay::evictable`]); with none,
    /// accepting stops and the rest wait in the listen backlog (their senders' data with
    /// them) until a connection closes or one becomes evictable ([`Relay::resume_accepts`]).
    /// A connection is never accepted only to be closed, but for one from a source at
    /// `max_connections_per_source` with nothing of its own to evict.
    pub(super) fn accept(&mut self, fi: usize, now: Instant) {
        loop {
            let feed = &self.feeds[fi];
            if feed.listener.is_none() {
                return;
            }
            let at_limit = feed.conns >= feed.cfg.input.max_connections;
            let victim = if at_limit {
                match self.evictable(fi, None, now) {
                    Evictable::Conn(id) => Some(id),
                    Evictable::Freed => None,
                    Evictable::None(retry) => return self.pause_accept(fi, retry, now),
                }
            } else {
                None
            };
            let feed = &mut self.feeds[fi];
            let Some(listener) = feed.listener.as_ref() else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(x) => {
                    if let Some(since) = feed.accept_paused.take() {
                        feed.stats.accept_paused_ms += now.duration_since(since).as_millis() as u64;
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
                match self.evictable(fi, Some(peer), now) {
                    Evictable::Conn(id) => self.evict(id, "max_connections_per_source", now),
                    Evictable::Freed => {}
                    Evictable::None(_) => {
                        let feed = &mut self.feeds[fi];
                        feed.stats.refused += 1;
                        if let Some(suppressed) = feed.refuse_log.allow(now) {
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
                self.evict(id, "max_connections", now);
            }
            let feed = &mut self.feeds[fi];
            let transport = match &feed.tls {
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
                self.poll
                    .registry()
                    .register(&mut stream, Token(CONN_BASE + id), interest)
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
            feed.conns += 1;
            feed.stats.accepted += 1;
            if let Some(suppressed) = feed.logs.open.allow(now) {
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
                framer: Framer::new(feed.framer),
                pending: Vec::new(),
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
    fn evictable(&mut self, fi: usize, source: Option<SocketAddr>, now: Instant) -> Evictable {
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
            self.service_conn(id, now, false);
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
    fn evict(&mut self, id: usize, reason: &'static str, now: Instant) {
        let Some(c) = self.conns.get(id).and_then(Option::as_ref) else {
            return;
        };
        let feed = &mut self.feeds[c.feed];
        feed.stats.evicted += 1;
        if let Some(suppressed) = feed.limit_log.allow(now) {
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
        self.close_conn(id, "evicted", None, now);
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
    fn pause_accept(&mut self, fi: usize, retry: Option<Instant>, now: Instant) {
        let feed = &mut self.feeds[fi];
        feed.accept_retry = retry;
        if feed.accept_paused.is_some() {
            return;
        }
        feed.accept_paused = Some(now);
        feed.stats.accept_paused += 1;
        if let Some(suppressed) = feed.limit_log.allow(now) {
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
    pub(super) fn resume_accepts(&mut self, now: Instant) {
        for fi in 0..self.feeds.len() {
            let feed = &mut self.feeds[fi];
            if feed.accept_due || feed.accept_retry.is_some_and(|r| r <= now) {
                feed.accept_due = false;
                feed.accept_retry = None;
                self.accept(fi, now);
            }
        }
    }

    /// Reads and frames what connection `id` has, up to the turn's budget (all of it when
    /// `drain`, at shutdown).
    pub(super) fn service_conn(&mut self, id: usize, now: Instant, drain: bool) {
        let Some(c) = self.conns.get(id).and_then(Option::as_ref) else {
            return;
        };
        if c.queued && !drain {
            // Its turn comes from the ready list.
            return;
        }
        if self.feeds[c.feed].sync_wait && !drain {
            // Until the ring's sync finishes; `resume_after_sync` queues it then.
            if let Some(c) = self.conns[id].as_mut() {
                c.paused = true;
            }
            return;
        }
        if c.http.is_some() {
            return self.service_http(id, now, drain);
        }
        let Relay {
            conns,
            feeds,
            scratch,
            ready,
            bytes_in,
            loop_stats,
            ..
        } = self;
        let Some(conn) = conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        let feed = &mut feeds[conn.feed];
        let mut reads = 0;
        let outcome = loop {
            // First frame what is pending (records a full ring refused before).
            if conn.paused || conn.eof {
                conn.paused = false;
                let data = std::mem::take(&mut conn.pending);
                let consumed = frame(conn, feed, &data, conn.eof, now);
                conn.pending.extend_from_slice(&data[consumed..]);
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
                match read_lines(conn, feed, scratch, (p, lines_read), now) {
                    Lines::Read(n) => {
                        reads += 1;
                        loop_stats.input_reads += 1;
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
                (&feed.cfg.name, &mut feed.stats),
                &mut feed.logs.tls,
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
            loop_stats.input_reads += 1;
            *bytes_in += n as u64;
            conn.last_active = now;
            let data = &scratch[..p + n];
            let consumed = frame(conn, feed, data, false, now);
            conn.pending.extend_from_slice(&data[consumed..]);
            if conn.paused {
                break Outcome::Open;
            }
        };
        if let Outcome::Close(why, err) = outcome {
            self.close_conn(id, why, err, now);
        }
    }

    pub(super) fn close_conn(
        &mut self,
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
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.free_slots.push(id);
        let feed = &mut self.feeds[conn.feed];
        feed.conns -= 1;
        // The listener reports the connections waiting in its backlog only when another
        // arrives (edge-triggered): accepting resumes this turn.
        feed.accept_due |= feed.accept_paused.is_some();
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
                feed.stats.tls_failures[tls::reason_index(reason)] += 1;
                if let Some(suppressed) = feed.tls_log.allow(now) {
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
        feed.stats.incomplete_at_eof += st.incomplete_at_eof;
        let framing = match conn.framer.detected() {
            Detected::Newline => "newline",
            Detected::Octet => "octet",
            Detected::Undecided => "undecided",
        };
        if let Some(suppressed) = feed.logs.closed.allow(now) {
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
    pub(super) fn close_idle(&mut self, now: Instant) {
        for id in 0..self.conns.len() {
            let Some(c) = self.conns[id].as_ref() else {
                continue;
            };
            let input = &self.feeds[c.feed].cfg.input;
            let handshaking = matches!(&c.transport, Transport::Tls(t) if matches!(t.state, TlsState::Handshaking));
            let past = |since: Instant, limit: Option<std::time::Duration>| {
                limit.is_some_and(|t| now.duration_since(since) > t)
            };
            if handshaking && past(c.opened, input.tls().map(|t| t.handshake_timeout)) {
                self.close_conn(id, "handshake_timeout", None, now);
            } else if past(c.last_active, input.idle_timeout) {
                self.feeds[c.feed].stats.idle_closed += 1;
                self.close_conn(id, "idle_timeout", None, now);
            } else if past(c.last_active, Some(UNDECIDED_WAIT)) {
                self.decide_undecided(id, now);
            }
        }
    }

    /// Decides `auto` for connection `id` if its first frame has waited since its last read
    /// ([`Framer::decide_now`]), and frames its pending bytes as reading would have.
    fn decide_undecided(&mut self, id: usize, now: Instant) {
        let Relay { conns, feeds, .. } = self;
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
        let feed = &mut feeds[conn.feed];
        let data = std::mem::take(&mut conn.pending);
        let consumed = frame(conn, feed, &data, false, now);
        conn.pending.extend_from_slice(&data[consumed..]);
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
    feed: &mut Feed,
    scratch: &mut [u8],
    (p, lines_read): (usize, usize),
    now: Instant,
) -> Lines {
    match feed.ring.reserve(p + lines_read.min(4096), p + lines_read) {
        Ok(_) => {}
        Err(AppendError::Full) => {
            conn.paused = true;
            if !feed.paused {
                feed.paused = true;
                feed.stats.blocked += 1;
            }
            return Lines::Full;
        }
        // The caller asks for no more than `lines_max`; were it more, the scratch path reads.
        Err(AppendError::TooLarge) => return Lines::Refused,
    }
    let Feed {
        ring,
        stats,
        cfg,
        logs,
        ..
    } = feed;
    let room = ring.reserved_mut();
    room[..p].copy_from_slice(&conn.pending);
    let n = match conn.read_plain(&mut room[p..], (&cfg.name, stats), &mut logs.tls, now) {
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
                stats.records += u64::from(framed.records);
                stats.bytes += (framed.len - framed.records as usize) as u64;
            }
            // A bug: `reserve` above made the room. Counted as dropped, never silent.
            Err(NotReserved) => {
                stats.dropped_oversize += u64::from(framed.records);
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

/// Frames `data` into the feed's ring; returns the bytes consumed. Sets `conn.paused` when the
/// ring refused a record (`block`), in which case the refused record is not consumed.
/// `auto` decides there, and logs a fallback (rate-limited by the connection log's `log`).
fn frame(conn: &mut Conn, feed: &mut super::Feed, data: &[u8], eof: bool, now: Instant) -> usize {
    let consumed = frame_records(conn, feed, data, eof);
    if let Some(why) = conn.framer.take_fallback() {
        if let Some(suppressed) = feed.logs.framing.allow(now) {
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
fn frame_records(conn: &mut Conn, feed: &mut super::Feed, data: &[u8], eof: bool) -> usize {
    let ts = clock::wall_ns();
    let before = conn.framer.stats();
    let ring = &mut feed.ring;
    let stats = &mut feed.stats;
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
        if !feed.paused {
            feed.paused = true;
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
