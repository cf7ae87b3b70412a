//! Reading and framing: a connection's turn (reads up to its budget, newline-framed reads
//! straight into the ring as lines entries, everything else through the scratch buffer and the
//! framer), idle and handshake timeouts, and `auto` decided for a sender that waits.

use super::session::{Due, Next, State, Timeouts};
use super::*;

impl Inputs {
    /// Serves connection `id`'s turn: reads and frames what it has, up to the turn's budget
    /// (all of it when `drain`, at shutdown), as its [`Session`] directs.
    pub fn service_conn(&mut self, feeds: &mut dyn Feeds, id: usize, now: Instant, drain: bool) {
        let Some(c) = self.conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if c.queued && !drain {
            // Its turn comes from the ready list.
            return;
        }
        // While its feed waits for the ring's sync, the session pauses (the feed's resume
        // queues it then).
        let first = c.session.begin(feeds.feed(c.feed).input.sync_wait, drain);
        if first == Next::Wait {
            return;
        }
        if c.http.is_some() {
            return self.service_http(feeds, id, now, drain);
        }
        if let Some((why, err)) = self.stream_turn(feeds, id, first, now) {
            self.close_conn(feeds, id, why, err, now);
        }
    }

    /// A TCP or TLS connection's turn, from its session's `first` step: does what the session
    /// says until it waits, yields (queued for the next turn) or closes (returned, with the
    /// read error behind it).
    fn stream_turn(
        &mut self,
        feeds: &mut dyn Feeds,
        id: usize,
        first: Next,
        now: Instant,
    ) -> Option<(Close, Option<io::Error>)> {
        let Inputs {
            conns,
            scratch,
            ready,
            bytes_in,
            reads,
            ..
        } = self;
        let conn = conns.get_mut(id).and_then(Option::as_mut)?;
        let mut feed = feeds.feed(conn.feed);
        let mut error = None;
        let mut next = first;
        loop {
            next = match next {
                Next::Read => match read_once(conn, &mut feed, scratch, now) {
                    Got::Bytes { n, refused } => {
                        *reads += 1;
                        *bytes_in += n as u64;
                        conn.session.read(n, refused, now)
                    }
                    Got::Full => conn.session.ring_full(),
                    Got::Eof => conn.session.eof(),
                    Got::Failed(e) => {
                        let next = conn.session.read_failed(e.kind());
                        error = Some(e);
                        next
                    }
                },
                Next::Frame { last } => {
                    let refused = frame_pending(conn, &mut feed, last, now);
                    conn.session.framed(refused)
                }
                Next::Yield => {
                    conn.queue(ready, id);
                    return None;
                }
                Next::Wait => return None,
                Next::Close(why) => return Some((why, error)),
            };
        }
    }

    /// Closes connections idle for longer than their feed's `idle_timeout`, and TLS
    /// connections still handshaking after `handshake_timeout`; decides `auto` for those whose
    /// first frame waited ([`Session::due`]).
    pub fn close_idle(&mut self, feeds: &mut dyn Feeds, now: Instant) {
        for id in 0..self.conns.len() {
            let Some(c) = self.conns[id].as_ref() else {
                continue;
            };
            let input = &feeds.feed(c.feed).cfg.input;
            let timeouts = Timeouts {
                handshake: input.tls().map(|t| t.handshake_timeout),
                idle: input.idle_timeout,
            };
            match c.session.due(now, timeouts) {
                Some(Due::HandshakeTimeout) => {
                    self.close_conn(feeds, id, Close::HandshakeTimeout, None, now);
                }
                Some(Due::IdleTimeout) => {
                    feeds.feed(c.feed).input.stats.idle_closed += 1;
                    self.close_conn(feeds, id, Close::IdleTimeout, None, now);
                }
                Some(Due::DecideFraming) => self.decide_undecided(feeds, id, now),
                None => {}
            }
        }
    }

    /// Decides `auto` for connection `id` if its first frame has waited since its last read
    /// ([`Framer::decide_now`]), and frames its pending bytes as reading would have.
    pub(super) fn decide_undecided(&mut self, feeds: &mut dyn Feeds, id: usize, now: Instant) {
        let Inputs { conns, .. } = self;
        let Some(conn) = conns.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if conn.http.is_some()
            || conn.session.state() != State::Reading
            || conn.framer.detected() != Detected::Undecided
            || conn.framer.decide_now(&conn.pending) == Detected::Undecided
        {
            return;
        }
        let mut feed = feeds.feed(conn.feed);
        if frame_pending(conn, &mut feed, false, now) {
            conn.session.ring_full();
        }
    }
}

/// What one read of a connection did ([`read_once`], [`read_lines`]).
pub(super) enum Got {
    /// Read this many bytes (more than 0) and framed what they completed; `refused`: the ring
    /// refused a record (`block`), which stays pending.
    Bytes { n: usize, refused: bool },
    /// The ring has no room to read into (`block`); nothing was read.
    Full,
    /// The sender closed; nothing was read.
    Eof,
    /// The read failed (`WouldBlock` included); nothing was read.
    Failed(io::Error),
}

/// One read of a TCP or TLS connection, framed: newline framing reads straight into the ring
/// ([`read_lines`]), behind the partial record the connection kept, when the ring has a lines
/// entry's room for both; everything else reads into `scratch` behind the partial record, and
/// the complete records are copied into the ring.
fn read_once(conn: &mut Conn, feed: &mut FeedIn<'_>, scratch: &mut [u8], now: Instant) -> Got {
    let p = conn.pending.len();
    let lines_read = LINES_READ.min(feed.ring.lines_max() / 4);
    if conn.framer.in_lines() && p + lines_read <= feed.ring.lines_max() {
        if let Some(got) = read_lines(conn, feed, scratch, (p, lines_read), now) {
            return got;
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
            conn.pending.extend_from_slice(&scratch[..p]);
            return Got::Eof;
        }
        Ok(n) => n,
        Err(e) => {
            conn.pending.extend_from_slice(&scratch[..p]);
            return Got::Failed(e);
        }
    };
    let data = &scratch[..p + n];
    let framed = frame(conn, feed, data, false, now);
    conn.pending.extend_from_slice(&data[framed.consumed..]);
    Got::Bytes {
        n,
        refused: framed.refused,
    }
}

/// What [`frame`] did with some bytes.
pub(super) struct Framed {
    /// Bytes consumed from the front: what is left stays pending.
    pub(super) consumed: usize,
    /// The ring refused a record (`block`): it is not consumed.
    pub(super) refused: bool,
}

/// One read of a newline-framed connection, straight into the ring: reserves a lines entry's
/// room at the head, puts the connection's partial record at its start, reads up to
/// `lines_read` bytes behind it, frames the complete lines in place and commits them as one
/// entry (`buffer-spec.md` §5). What they leave (the next partial record, or an oversize record
/// and what follows it) goes through [`frame`], from `scratch`, as before. `None`: the ring
/// cannot hold a lines entry that long, nothing was read (the scratch path reads instead).
pub(super) fn read_lines(
    conn: &mut Conn,
    feed: &mut FeedIn<'_>,
    scratch: &mut [u8],
    (p, lines_read): (usize, usize),
    now: Instant,
) -> Option<Got> {
    match feed.ring.reserve(p + lines_read.min(4096), p + lines_read) {
        Ok(_) => {}
        Err(AppendError::Full) => {
            blocked(feed.input);
            return Some(Got::Full);
        }
        // The caller asks for no more than `lines_max`; were it more, the scratch path reads.
        Err(AppendError::TooLarge) => return None,
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
        Ok(0) => return Some(Got::Eof),
        Ok(n) => n,
        Err(e) => return Some(Got::Failed(e)),
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
    let mut refused = false;
    if rest > 0 {
        let framed = frame(conn, feed, &scratch[..rest], false, now);
        conn.pending
            .extend_from_slice(&scratch[framed.consumed..rest]);
        refused = framed.refused;
    }
    Some(Got::Bytes { n, refused })
}

/// Frames what `conn.pending` holds, in place (`eof`: as the sender's last bytes): the bytes
/// consumed leave its front, and the vector keeps its capacity (no allocation on a resume
/// after back-pressure). Returns whether the ring refused a record (`block`).
pub(super) fn frame_pending(
    conn: &mut Conn,
    feed: &mut FeedIn<'_>,
    eof: bool,
    now: Instant,
) -> bool {
    // Moved out for the borrow only: `Vec::new` does not allocate, and `frame` does not touch
    // `pending`.
    let mut data = std::mem::take(&mut conn.pending);
    let framed = frame(conn, feed, &data, eof, now);
    debug_assert!(conn.pending.is_empty());
    data.drain(..framed.consumed);
    conn.pending = data;
    framed.refused
}

/// Frames `data` into the feed's ring (`eof`: as the sender's last bytes). When the ring
/// refuses a record (`block`), that record is not consumed. `auto` decides there, and logs a
/// fallback (rate-limited by the feed's framing log).
pub(super) fn frame(
    conn: &mut Conn,
    feed: &mut FeedIn<'_>,
    data: &[u8],
    eof: bool,
    now: Instant,
) -> Framed {
    let framed = frame_records(conn, feed, data, eof);
    if let Some(why) = conn.framer.take_fallback() {
        if let Some(suppressed) = feed.input.logs.framing.allow(now) {
            log_fallback(conn, &feed.cfg.name, why, data, suppressed);
        }
    }
    framed
}

/// Logs that `auto` fell back to newline framing on `conn`, whose first frame starts in `data`
/// (after any CR and LF).
pub(super) fn log_fallback(conn: &Conn, feed: &str, why: Fallback, data: &[u8], suppressed: u64) {
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
pub(super) struct Escaped<'a>(&'a [u8]);

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
pub(super) fn frame_records(
    conn: &mut Conn,
    feed: &mut FeedIn<'_>,
    data: &[u8],
    eof: bool,
) -> Framed {
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
        blocked(feed.input);
    }
    if after.records > before.records {
        // Under `sync = "always"` the records are on disk before more is read from this
        // sender. A failure is logged; the records stay in the ring, in memory.
        let _ = feed.appended(ts);
    }
    Framed {
        consumed,
        refused: full,
    }
}

/// The ring refused a connection's record or read (`block`): the feed's inputs are paused
/// until its outputs free room, counted once per episode.
fn blocked(input: &mut FeedInput) {
    if !input.paused {
        input.paused = true;
        input.stats.blocked += 1;
    }
}
