//! Reading and framing: a connection's turn (reads up to its budget, newline-framed reads
//! straight into the ring as lines entries, everything else through the scratch buffer and the
//! framer), idle and handshake timeouts, and `auto` decided for a sender that waits.

use super::*;

impl Inputs {
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
    pub(super) fn decide_undecided(&mut self, feeds: &mut dyn Feeds, id: usize, now: Instant) {
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

/// What happened to a connection in one service call.
pub(super) enum Outcome {
    Open,
    Close(&'static str, Option<io::Error>),
}

/// How long an `auto` connection's first frame waits for the bytes that would decide its
/// framing before [`Framer::decide_now`] decides on what it has (checked once per
/// `checkpoint_interval`).
const UNDECIDED_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`read_lines`] did.
pub(super) enum Lines {
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
pub(super) fn read_lines(
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
pub(super) fn frame_pending(conn: &mut Conn, feed: &mut FeedIn<'_>, eof: bool, now: Instant) {
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
pub(super) fn frame(
    conn: &mut Conn,
    feed: &mut FeedIn<'_>,
    data: &[u8],
    eof: bool,
    now: Instant,
) -> usize {
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
) -> usize {
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
