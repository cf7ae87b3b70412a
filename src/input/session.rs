//! An input connection's lifecycle, sans I/O: whether it may read, when it must stop (the
//! turn's budget, a full ring, a feed waiting for its sync), what to do with what a sender left
//! when it closed, when it times out, and how its end is reported.
//!
//! ```text
//!   Reading --(ring full, feed syncing)--> Paused(RingFull | Sync) --(resumed)--> Reading
//!      |  --(budget spent)--> Yield (same state, next turn)
//!    (eof)
//!      v
//!     Eof --(pending framed as last)--> close: sender closed
//!      |  --(ring full)--> Draining --(resumed)--> Eof
//!   any --(eof while handshaking, read error, timeout, evicted)--> close(why): Closed(why)
//!
//!   TLS, beside it: Handshake::Handshaking --(rustls done)--> Handshake::Established
//! ```
//!
//! The TLS handshake is a second state beside the first, not one of its steps: a connection
//! still handshaking can be paused too (the feed syncs; newline framing reserves ring room
//! before it reads, and a full ring refuses), and must still count as handshaking when it
//! resumes, times out or closes.
//!
//! [`Session`] takes what the event loop saw (a turn starts, `n` bytes read and framed, EOF, a
//! read error, the ring refused a record, the time) and says what to do next ([`Next`]: read,
//! frame what `pending` holds (as the last bytes, after EOF), stop until the next event, yield
//! to the next turn, close with a [`Close`] reason), what is due ([`Session::due`]) and when
//! ([`Session::poll_at`]), and how a close is reported ([`Ending`]). [`super::Inputs`] does the
//! reads, the framing, the ring appends, the counters and the log lines, and obeys.
//!
//! What the sender left when it closed is framed as the last bytes ([`Next::Frame`] with
//! `last`): a partial line is a record; a partial octet frame is counted as `incomplete_at_eof`
//! and dropped (an `auto` connection whose first frame is incomplete falls back to newline
//! framing and keeps it as lines). A ring that refuses it (`block`) keeps the connection, in
//! [`State::Draining`], until the outputs make room.
//!
//! State changes are not logged one by one (a busy relay makes millions): the lines that
//! matter, `connection_open`, `connection_closed`, `tls_established`, `tls_handshake_failed`,
//! are written by [`super::Inputs`] from what this machine returns.

use std::time::{Duration, Instant};

use super::READS_PER_TURN;

/// How long an `auto` connection's first frame waits for the bytes that would decide its
/// framing before [`super::framing::Framer::decide_now`] decides on what it has (checked once
/// per `checkpoint_interval`).
pub const UNDECIDED_WAIT: Duration = Duration::from_secs(1);

/// Where a connection is in its reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Reading, and framing what comes.
    Reading,
    /// Reading stopped until the feed resumes it.
    Paused(Pause),
    /// The sender closed: what it left is framed as its last bytes next. Within a turn for a
    /// TCP or TLS connection; an HTTP connection stays here until its response is out.
    Eof,
    /// The sender closed and the ring refused what it left (`block`): framed again once the
    /// feed resumes the connection.
    Draining,
    /// Closed (terminal).
    Closed(Close),
}

/// Why reading stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pause {
    /// The ring refused a record (`when_full = "block"`), or had no room to read a lines entry
    /// into: a refused record waits in `pending`, framed again first once resumed.
    RingFull,
    /// The feed waits for its ring's background sync (`buffer-spec.md` §10); nothing was read.
    Sync,
}

/// A TLS connection's handshake (a plain TCP connection has none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Plain TCP.
    None,
    /// Under way: no plaintext yet.
    Handshaking,
    /// Done.
    Established,
}

/// Why a connection closed: the `reason` of its `connection_closed` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The sender closed, and what it left was framed.
    SenderClosed,
    /// HTTP: the sender closed in the middle of a request.
    SenderClosedMidRequest,
    /// A read failed (a TLS error included).
    ReadError,
    /// HTTP: writing a response failed.
    WriteError,
    /// TLS: the handshake took longer than `handshake_timeout`.
    HandshakeTimeout,
    /// Nothing read for `idle_timeout`.
    IdleTimeout,
    /// HTTP: no complete request head within `header_timeout`.
    HeaderTimeout,
    /// Closed to make room for a new connection.
    Evicted,
    /// HTTP: a response with `Connection: close` was sent, and the sender closed.
    ResponseSent,
    /// HTTP: after a closing response, the sender went on sending.
    ResponseSentSenderKeptSending,
    /// HTTP: after a closing response, the sender kept the connection open.
    ResponseSentSenderKeptOpen,
}

impl Close {
    /// As the log line says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Close::SenderClosed => "sender closed",
            Close::SenderClosedMidRequest => "sender closed mid-request",
            Close::ReadError => "read error",
            Close::WriteError => "write error",
            Close::HandshakeTimeout => "handshake_timeout",
            Close::IdleTimeout => "idle_timeout",
            Close::HeaderTimeout => "header_timeout",
            Close::Evicted => "evicted",
            Close::ResponseSent => "response sent; connection: close",
            Close::ResponseSentSenderKeptSending => "response sent; sender kept sending",
            Close::ResponseSentSenderKeptOpen => "response sent; sender kept the connection open",
        }
    }
}

/// What the connection does next, within its turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Read from the socket (through TLS), frame what comes, report [`Session::read`] (or
    /// [`Session::eof`], [`Session::read_failed`], [`Session::ring_full`]).
    Read,
    /// Frame what `pending` holds (`last`: as the sender's last bytes), report
    /// [`Session::framed`].
    Frame {
        /// The sender closed: a partial record is final.
        last: bool,
    },
    /// The turn's budget is spent: go on next turn (the ready list).
    Yield,
    /// Nothing more now: wait for the next readiness event or resume.
    Wait,
    /// Close the connection for this reason ([`Session::close`]).
    Close(Close),
}

/// What [`Session::due`] found due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// TLS: still handshaking after `handshake_timeout`: close it.
    HandshakeTimeout,
    /// Nothing read for `idle_timeout`: close it.
    IdleTimeout,
    /// Nothing read for [`UNDECIDED_WAIT`]: an `auto` connection still undecided decides now.
    DecideFraming,
}

/// A feed's time limits on its connections.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timeouts {
    /// TLS: `handshake_timeout`.
    pub handshake: Option<Duration>,
    /// `idle_timeout`.
    pub idle: Option<Duration>,
}

/// How a connection's end is reported ([`Session::close`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// A `connection_closed` line.
    Closed,
    /// A TLS handshake that did not finish: a `tls_handshake_failed` line, counted under this
    /// reason ([`crate::tls::FAILURE_REASONS`]).
    HandshakeFailed(&'static str),
}

/// An input connection's lifecycle.
#[derive(Clone, Copy, Debug)]
pub struct Session {
    state: State,
    /// TLS: changes once, in [`Session::handshake_done`].
    handshake: Handshake,
    /// When it was accepted.
    opened: Instant,
    /// Its last read of data (or answered request), or when it opened.
    last_active: Instant,
    /// It has delivered plaintext (a TLS handshake is not plaintext): never evicted.
    heard: bool,
    /// Reads this turn.
    reads: usize,
    /// This turn reads everything (the shutdown drain): no budget, no pause for a sync.
    drain: bool,
}

impl Session {
    /// A connection accepted at `now`, reading (after a handshake: `tls`).
    pub fn new(tls: bool, now: Instant) -> Session {
        Session {
            state: State::Reading,
            handshake: if tls {
                Handshake::Handshaking
            } else {
                Handshake::None
            },
            opened: now,
            last_active: now,
            heard: false,
            reads: 0,
            drain: false,
        }
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.state
    }

    /// TLS: where its handshake is.
    pub fn handshake(&self) -> Handshake {
        self.handshake
    }

    /// TLS: the handshake has not finished.
    pub fn handshaking(&self) -> bool {
        self.handshake == Handshake::Handshaking
    }

    /// When it was accepted.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// Its last read of data, or when it opened.
    pub fn last_active(&self) -> Instant {
        self.last_active
    }

    /// It waits for its feed (the ring's room, its sync): the feed's resume queues it.
    pub fn waits_for_feed(&self) -> bool {
        matches!(self.state, State::Paused(_) | State::Draining)
    }

    /// The sender closed (an HTTP connection answers what it has, then closes).
    pub fn sender_closed(&self) -> bool {
        matches!(self.state, State::Eof | State::Draining)
    }

    /// Since when it may be evicted, if it may: it has not delivered plaintext.
    pub fn silent_since(&self) -> Option<Instant> {
        (!self.heard).then_some(self.opened)
    }

    /// A turn starts: from an event, the ready list, a resume or the shutdown drain (`drain`:
    /// read everything, whatever the budget and the feed's sync). `syncing`: the feed waits for
    /// its ring's sync, and reads nothing until it is resumed.
    pub fn begin(&mut self, syncing: bool, drain: bool) -> Next {
        self.reads = 0;
        self.drain = drain;
        match self.state {
            // The feed's sync first: nothing is read or framed meanwhile.
            State::Reading if syncing && !drain => {
                self.set_state(State::Paused(Pause::Sync));
                Next::Wait
            }
            // HTTP: the sender closed while the feed syncs; its answer waits too.
            State::Eof if syncing && !drain => {
                self.set_state(State::Draining);
                Next::Wait
            }
            // Paused already: stays so until the sync is over.
            State::Paused(_) | State::Draining if syncing && !drain => Next::Wait,
            State::Reading => Next::Read,
            // Resumed (or drained): what the ring refused goes first.
            State::Paused(_) => {
                self.set_state(State::Reading);
                Next::Frame { last: false }
            }
            // Resumed after EOF: what the sender left, as its last bytes.
            State::Draining | State::Eof => {
                self.set_state(State::Eof);
                Next::Frame { last: true }
            }
            // Gone: nothing to do (a stale event).
            State::Closed(_) => Next::Wait,
        }
    }

    /// `n` bytes (more than 0) were read at `now` and framed; `refused`: the ring refused a
    /// record (`block`), which stays pending.
    pub fn read(&mut self, n: usize, refused: bool, now: Instant) -> Next {
        debug_assert!(n > 0, "a read of 0 bytes is EOF: Session::eof");
        self.reads += 1;
        self.last_active = now;
        if refused {
            return self.ring_full();
        }
        self.budget()
    }

    /// Plaintext arrived (a read through TLS may return none while the handshake goes on).
    pub fn heard(&mut self) {
        self.heard = true;
    }

    /// HTTP: a request was read or answered at `now` (the idle clock starts again).
    pub fn active(&mut self, now: Instant) {
        self.last_active = now;
    }

    /// TLS: rustls finished the handshake. Returns whether this is news (count it, log
    /// `tls_established`).
    pub fn handshake_done(&mut self) -> bool {
        if self.handshake != Handshake::Handshaking {
            return false;
        }
        self.handshake = Handshake::Established;
        true
    }

    /// A read returned 0: the sender closed its side.
    pub fn eof(&mut self) -> Next {
        match self.state {
            // A handshake that never finished: nothing to frame, it failed ("closed").
            State::Reading if self.handshaking() => Next::Close(Close::SenderClosed),
            // What it left is framed as its last bytes; then it closes.
            State::Reading => {
                self.set_state(State::Eof);
                Next::Frame { last: true }
            }
            // Not reading: EOF once more (HTTP reads until it answers).
            State::Eof | State::Draining | State::Paused(_) | State::Closed(_) => {
                Next::Close(Close::SenderClosed)
            }
        }
    }

    /// A read failed with `kind` (nothing was read).
    pub fn read_failed(&mut self, kind: std::io::ErrorKind) -> Next {
        match kind {
            // Drained to `WouldBlock`: the next readiness event brings more.
            std::io::ErrorKind::WouldBlock => Next::Wait,
            std::io::ErrorKind::Interrupted => Next::Read,
            _ => Next::Close(Close::ReadError),
        }
    }

    /// The ring refused a record (`block`), or had no room to read into: reading stops until
    /// the feed resumes the connection.
    pub fn ring_full(&mut self) -> Next {
        match self.state {
            State::Eof | State::Draining => self.set_state(State::Draining),
            State::Reading | State::Paused(_) => self.set_state(State::Paused(Pause::RingFull)),
            State::Closed(_) => {}
        }
        Next::Wait
    }

    /// What `pending` held was framed ([`Next::Frame`]); `refused`: the ring refused a record.
    pub fn framed(&mut self, refused: bool) -> Next {
        if refused {
            return self.ring_full();
        }
        match self.state {
            // All of it is in the ring: done.
            State::Eof => Next::Close(Close::SenderClosed),
            State::Reading => self.budget(),
            // Not in a turn: nothing more.
            State::Paused(_) | State::Draining | State::Closed(_) => Next::Wait,
        }
    }

    /// Read again, or yield once the turn's budget ([`READS_PER_TURN`]) is spent.
    fn budget(&self) -> Next {
        if !self.drain && self.reads >= READS_PER_TURN {
            Next::Yield
        } else {
            Next::Read
        }
    }

    /// What is due at `now`, if anything: a handshake over `handshake_timeout` first, then an
    /// idle connection, then an `auto` decision that waited [`UNDECIDED_WAIT`] (only while
    /// reading: a paused connection's pending bytes wait for the ring). Each is due once its
    /// time is *exceeded*.
    pub fn due(&self, now: Instant, t: Timeouts) -> Option<Due> {
        let past = |since: Instant, limit: Option<Duration>| {
            limit.is_some_and(|l| now.duration_since(since) > l)
        };
        if self.handshaking() && past(self.opened, t.handshake) {
            Some(Due::HandshakeTimeout)
        } else if past(self.last_active, t.idle) {
            Some(Due::IdleTimeout)
        } else if self.state == State::Reading && past(self.last_active, Some(UNDECIDED_WAIT)) {
            Some(Due::DecideFraming)
        } else {
            None
        }
    }

    /// When its next timeout ends (`handshake_timeout`, `idle_timeout`): [`Session::due`]
    /// reports it from just after then. `None` when neither applies, or it is closed. (The
    /// event loop does not wake for it yet: it asks [`Session::due`] every
    /// `checkpoint_interval`, as before.)
    pub fn poll_at(&self, t: Timeouts) -> Option<Instant> {
        if matches!(self.state, State::Closed(_)) {
            return None;
        }
        let handshake = t
            .handshake
            .filter(|_| self.handshaking())
            .map(|l| self.opened + l);
        let idle = t.idle.map(|l| self.last_active + l);
        match (handshake, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes it for `why`; `tls_error`: the failure reason of the TLS error rustls reported,
    /// if any. Returns how the end is reported: a TLS handshake that did not finish is a
    /// failed handshake (unless it was evicted: that is counted as an eviction).
    pub fn close(&mut self, why: Close, tls_error: Option<&'static str>) -> Ending {
        let ending = match (self.handshaking(), tls_error, why) {
            (false, ..) => Ending::Closed,
            (true, None, Close::Evicted) => Ending::Closed,
            (true, Some(reason), _) => Ending::HandshakeFailed(reason),
            (true, None, Close::HandshakeTimeout) => Ending::HandshakeFailed("timeout"),
            (true, None, _) => Ending::HandshakeFailed("closed"),
        };
        self.set_state(State::Closed(why));
        ending
    }

    /// Every change of [`State`] goes through here. Not logged: see the module docs.
    fn set_state(&mut self, state: State) {
        debug_assert!(
            !matches!(self.state, State::Closed(_)),
            "a closed connection changes no more: {:?} => {:?}",
            self.state,
            state
        );
        self.state = state;
    }
}

#[cfg(test)]
mod tests;
