//! TCP inputs: accept, read, frame, append to the feed's ring.
//!
//! Reads go into the relay's one scratch buffer; complete records are copied from it into the
//! ring (the only copy), and a partial record at the end of a read is kept on the connection,
//! at most `max_record_bytes` + a frame header, until the rest arrives. So a connection costs its
//! partial record plus a few hundred bytes, whatever it sends.

use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Token};

use super::http_in::HttpConn;
use super::{Relay, CONN_BASE, READS_PER_TURN};
use crate::clock;
use crate::config::{InputKind, SyncPolicy};
use crate::framing::Framer;
use crate::log::Level;
use crate::ring::AppendError;

/// One sender's connection.
pub struct Conn {
    pub(super) stream: TcpStream,
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
}

/// What happened to a connection in one service call.
enum Outcome {
    Open,
    Close(&'static str, Option<io::Error>),
}

impl Relay {
    pub(super) fn accept(&mut self, fi: usize, now: Instant) {
        loop {
            let feed = &mut self.feeds[fi];
            let Some(listener) = feed.listener.as_ref() else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(x) => x,
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
            if feed.conns >= feed.cfg.input.max_connections {
                feed.stats.refused += 1;
                if let Some(suppressed) = feed.refuse_log.allow(now) {
                    crate::log!(
                        Level::Warn,
                        "connection_refused",
                        feed = feed.cfg.name,
                        peer = peer,
                        reason = "max_connections reached",
                        max_connections = feed.cfg.input.max_connections,
                        suppressed = suppressed
                    );
                }
                drop(stream);
                continue;
            }
            let id = self.free_slots.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            let http = feed.cfg.input.kind == InputKind::Http;
            // An HTTP connection writes responses: it waits for writable when its socket is full.
            let interest = if http {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
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
            if let Some(suppressed) = self.conn_log.allow(now) {
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
                feed: fi,
                peer,
                framer: Framer::new(feed.framer),
                pending: Vec::new(),
                last_active: now,
                paused: false,
                eof: false,
                http: http.then(Box::default),
            });
        }
    }

    /// Reads and frames what connection `id` has, up to the turn's budget (all of it when
    /// `drain`, at shutdown).
    pub(super) fn service_conn(&mut self, id: usize, now: Instant, drain: bool) {
        if self
            .conns
            .get(id)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.http.is_some())
        {
            return self.service_http(id, now, drain);
        }
        let Relay {
            conns,
            feeds,
            scratch,
            ready,
            bytes_in,
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
                let consumed = frame(conn, feed, &data, conn.eof);
                conn.pending.extend_from_slice(&data[consumed..]);
                if conn.paused {
                    break Outcome::Open;
                }
                if conn.eof {
                    break Outcome::Close("sender closed", None);
                }
            }
            if !drain && reads >= READS_PER_TURN {
                ready.push(id);
                break Outcome::Open;
            }
            let p = conn.pending.len();
            scratch[..p].copy_from_slice(&conn.pending);
            conn.pending.clear();
            let res = conn.stream.read(&mut scratch[p..]);
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
            *bytes_in += n as u64;
            conn.last_active = now;
            let data = &scratch[..p + n];
            let consumed = frame(conn, feed, data, false);
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
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.free_slots.push(id);
        let feed = &mut self.feeds[conn.feed];
        feed.conns -= 1;
        let st = conn.framer.stats();
        feed.stats.incomplete_at_eof += st.incomplete_at_eof;
        if let Some(suppressed) = self.conn_log.allow(now) {
            let error = err.map_or(String::new(), |e| e.to_string());
            crate::log!(
                Level::Info,
                "connection_closed",
                feed = feed.cfg.name,
                peer = conn.peer,
                reason = why,
                error = error,
                records = st.records,
                truncated = st.truncated,
                dropped_oversize = st.dropped_oversize,
                bad_frames = st.bad_frames,
                suppressed = suppressed
            );
        }
    }

    /// Closes connections idle for longer than their feed's `idle_timeout`.
    pub(super) fn close_idle(&mut self, now: Instant) {
        for id in 0..self.conns.len() {
            let idle = self.conns[id].as_ref().is_some_and(|c| {
                self.feeds[c.feed]
                    .cfg
                    .input
                    .idle_timeout
                    .is_some_and(|t| now.duration_since(c.last_active) > t)
            });
            if idle {
                if let Some(c) = self.conns[id].as_ref() {
                    self.feeds[c.feed].stats.idle_closed += 1;
                }
                self.close_conn(id, "idle_timeout", None, now);
            }
        }
    }
}

/// Frames `data` into the feed's ring; returns the bytes consumed. Sets `conn.paused` when the
/// ring refused a record (`block`), in which case the refused record is not consumed.
fn frame(conn: &mut Conn, feed: &mut super::Feed, data: &[u8], eof: bool) -> usize {
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
    if after.records > before.records {
        feed.dirty = true;
        if feed.cfg.sync == SyncPolicy::Always {
            // Records are on disk before more is read from this sender.
            if let Err(e) = feed.ring.checkpoint(ts, true) {
                crate::log!(
                    Level::Error,
                    "ring_sync_failed",
                    feed = feed.cfg.name,
                    path = feed.ring.path().display(),
                    error = e
                );
            }
        }
    }
    if full {
        conn.paused = true;
        if !feed.paused {
            feed.paused = true;
            stats.blocked += 1;
        }
    }
    consumed
}
