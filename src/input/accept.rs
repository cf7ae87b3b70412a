//! Accepting connections within `max_connections` and `max_connections_per_source`: a new
//! connection takes the place of a silent one, or waits in the listen backlog.

use super::*;

/// A new connection waits at least this long for its first byte before it can be evicted.
pub(super) const EVICT_GRACE: Duration = Duration::from_secs(1);

/// Candidates [`Inputs::evictable`] reads from, at most, in one call.
pub(super) const EVICT_READS: usize = 8;

/// What [`Inputs::evictable`] found.
pub(super) enum Evictable {
    /// This connection: silent, past its grace.
    Conn(usize),
    /// A candidate closed when it was read (the sender had closed): there is room.
    Freed,
    /// Nothing now; a connection becomes evictable then, if ever.
    None(Option<Instant>),
}

/// A connection's partial-record buffer (allocated at accept, never grown): a TCP or TLS
/// connection keeps at most a partial record and a frame header (`max_record_bytes` + 16);
/// under `when_full = "block"` the ring may refuse what one read brought, which then waits
/// there too. An HTTP connection holds its request: the head limit, `max_body_bytes` and one
/// read.
pub fn pending_bytes(f: &crate::config::FeedConfig) -> usize {
    match &f.input.http {
        Some(h) if f.input.kind == InputKind::Http => {
            http::MAX_HEAD + h.max_body_bytes + http::READ_CHUNK
        }
        _ => {
            let refused = match f.when_full {
                crate::ring::WhenFull::Block => LINES_READ.max(READ_CHUNK),
                crate::ring::WhenFull::DropOldest => 0,
            };
            f.max_record_bytes + 16 + refused
        }
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
            let (stream, peer) = match accept_one(feeds.feed(fi), now) {
                Accepted::Conn(stream, peer) => (stream, peer),
                Accepted::Again => continue,
                Accepted::Done => return,
            };
            if !self.make_room(feeds, fi, peer, victim, now) {
                // Refused: `stream` closes here.
                continue;
            }
            self.open_conn(feeds.feed(fi), fi, stream, peer, now);
        }
    }

    /// Makes room for a new connection from `peer` on feed `fi`: at
    /// `max_connections_per_source`, by evicting one of that source's own (false: nothing to
    /// evict, the connection is refused, counted and logged); else by evicting `victim` (at
    /// `max_connections`), if any.
    fn make_room(
        &mut self,
        feeds: &mut dyn Feeds,
        fi: usize,
        peer: SocketAddr,
        victim: Option<usize>,
        now: Instant,
    ) -> bool {
        let per_source = feeds.feed(fi).cfg.input.max_connections_per_source;
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
                    return false;
                }
            }
        } else if let Some(id) = victim {
            self.evict(feeds, id, "max_connections", now);
        }
        true
    }

    /// Sets up connection `stream` from `peer`, accepted on feed `fi` (`feed`): its TLS
    /// session, its registration with the loop, its slot, counted and logged. A failure is
    /// logged and closes it.
    fn open_conn(
        &mut self,
        feed: FeedIn<'_>,
        fi: usize,
        mut stream: TcpStream,
        peer: SocketAddr,
        now: Instant,
    ) {
        let Some(transport) = transport(&feed, peer) else {
            return;
        };
        let http = feed.cfg.input.kind == InputKind::Http;
        // A TLS connection also writes (handshake replies), an HTTP connection writes
        // responses: they want writable events.
        let interest = if http || matches!(transport, Transport::Tls(_)) {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let id = self.free_slots.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let token = Token(self.token_base + id);
        if let Err(e) = self.registry.register(&mut stream, token, interest) {
            crate::log!(
                Level::Error,
                "register_failed",
                feed = feed.cfg.name,
                peer = peer,
                error = e
            );
            self.free_slots.push(id);
            return;
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
        let tls = matches!(transport, Transport::Tls(_));
        self.conns[id] = Some(Conn {
            stream,
            transport,
            session: Session::new(tls, now),
            feed: fi,
            peer,
            framer: Framer::new(feed.input.framer),
            pending: Vec::with_capacity(pending_bytes(feed.cfg)),
            http: http.then(Box::default),
            queued: false,
        });
    }

    /// The connection of feed `fi` (from `source`'s address only, when given) to evict first:
    /// silent TCP/TLS connections (no plaintext yet), oldest first, then HTTP connections
    /// waiting for a request head (idle keep-alive, slowloris), longest-waiting first; each
    /// only after [`EVICT_GRACE`], so a sender that just connected is not cut before its first
    /// write. The candidate gets one read first: one that had data is not silent (its data is
    /// framed as usual) and the next candidate is tried.
    pub(super) fn evictable(
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
    pub(super) fn evict(
        &mut self,
        feeds: &mut dyn Feeds,
        id: usize,
        reason: &'static str,
        now: Instant,
    ) {
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
                idle_ms = now.duration_since(c.session.last_active()).as_millis(),
                suppressed = suppressed
            );
        }
        self.close_conn(feeds, id, Close::Evicted, None, now);
    }

    /// Connections of feed `fi` from `peer`'s address.
    pub(super) fn source_conns(&self, fi: usize, peer: SocketAddr) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|c| c.feed == fi && c.peer.ip() == peer.ip())
            .count()
    }

    /// Stops accepting on feed `fi` (at `max_connections`, nothing to evict) until a
    /// connection closes or `retry`, when one becomes evictable.
    pub(super) fn pause_accept(
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
}

/// What [`accept_one`] got.
enum Accepted {
    /// A connection, from this peer.
    Conn(TcpStream, SocketAddr),
    /// Interrupted: try again.
    Again,
    /// None waiting (`WouldBlock`), or accepting failed (logged): until the next event.
    Done,
}

/// Accepts one connection on `feed`'s listener; ends an episode of stopped accepting.
fn accept_one(feed: FeedIn<'_>, now: Instant) -> Accepted {
    let Some(listener) = feed.input.listener.as_ref() else {
        return Accepted::Done;
    };
    match listener.accept() {
        Ok((stream, peer)) => {
            if let Some(since) = feed.input.accept_paused.take() {
                feed.input.stats.accept_paused_ms += now.duration_since(since).as_millis() as u64;
            }
            Accepted::Conn(stream, peer)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Accepted::Done,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Accepted::Again,
        Err(e) => {
            // EMFILE and friends: log and try again on the next event.
            crate::log!(
                Level::Error,
                "accept_failed",
                feed = feed.cfg.name,
                error = e
            );
            Accepted::Done
        }
    }
}

/// What carries a new connection's bytes on `feed`: plain, or a TLS session with the feed's
/// configuration (`None`: it could not be made, logged).
fn transport(feed: &FeedIn<'_>, peer: SocketAddr) -> Option<Transport> {
    let Some(cfg) = &feed.input.tls else {
        return Some(Transport::Plain);
    };
    match ServerConnection::new(cfg.clone()) {
        Ok(mut conn) => {
            conn.set_buffer_limit(Some(tls::BUFFER_LIMIT));
            Some(Transport::Tls(Box::new(TlsIn {
                conn,
                error: None,
                sock_eof: false,
                closing: false,
            })))
        }
        Err(e) => {
            crate::log!(
                Level::Error,
                "tls_session_failed",
                feed = feed.cfg.name,
                peer = peer,
                error = e
            );
            None
        }
    }
}
