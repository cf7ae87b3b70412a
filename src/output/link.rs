//! An output's connection lifecycle, sans I/O: when to connect, how long a connect or a TLS
//! handshake may take, when a connection has proven itself, how long to back off after a
//! failure, and since when the output has been down.
//!
//! ```text
//! Backoff{until} --(until)--> Connecting{deadline} --(connected)--> [Handshaking{deadline}
//!   --(handshake done)-->] Connected (unproven) --(settle, a file write, a 2xx)--> proven
//! any state --(failure, timeout)--> Backoff{now + backoff}
//! ```
//!
//! [`Link`] takes the time and what happened (a connect started, a connection up, a failure)
//! and says what is due ([`Link::due`]) and when ([`Link::poll_at`]); the [`super::Output`]
//! does the sockets, the files, the logging and the cursor. A connection that fails before it
//! proved itself is a failed connect: the backoff keeps growing and the outage goes on.

use std::time::{Duration, Instant};

/// The shortest backoff, and the floor under a server's `Retry-After`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest backoff.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a connect (and, separately, a TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The connection state of an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting to (re)connect.
    Backoff {
        /// When to try.
        until: Instant,
    },
    /// A non-blocking connect is under way.
    Connecting {
        /// Give up at.
        deadline: Instant,
    },
    /// The TLS handshake is under way.
    Handshaking {
        /// Give up at.
        deadline: Instant,
    },
    /// Delivering.
    Connected,
}

impl State {
    /// The name the logs and `/metrics` use.
    pub fn name(&self) -> &'static str {
        match self {
            State::Backoff { .. } => "backoff",
            State::Connecting { .. } => "connecting",
            State::Handshaking { .. } => "handshaking",
            State::Connected => "connected",
        }
    }
}

/// What [`Link::due`] found due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// The backoff is over: connect (then report [`Link::connecting`] or a failure).
    Connect,
    /// The connect took longer than [`CONNECT_TIMEOUT`]: fail it.
    ConnectTimeout,
    /// The TLS handshake took longer than [`CONNECT_TIMEOUT`]: fail it.
    HandshakeTimeout,
    /// The connection lasted `settle`: it may prove itself ([`Link::prove`]).
    Settled,
}

/// What a failure did ([`Link::fail`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The next connect comes after this long.
    pub delay: Duration,
    /// The connection had not proven itself: a failed connect, not the end of a delivery.
    pub unproven: bool,
    /// It was a proven connection: an outage starts now.
    pub outage_starts: bool,
}

/// An output's connection lifecycle.
#[derive(Debug)]
pub struct Link {
    state: State,
    /// Failed connects since the last proven connection.
    attempt: u32,
    /// xorshift64 state for the backoff's jitter.
    rng: u64,
    /// How long a new connection must last before it counts as delivering.
    settle: Duration,
    /// Connected but not proven yet, until then.
    settle_until: Option<Instant>,
    /// Not delivering since then (also before the first connect).
    down_since: Option<Instant>,
    /// The server's `Retry-After`, for the next backoff.
    retry_after: Option<Duration>,
}

impl Link {
    /// A link that connects at `now`, down since `down_since`; `seed` varies the jitter from one
    /// output to the next.
    pub fn new(settle: Duration, seed: u64, down_since: Instant, now: Instant) -> Link {
        Link {
            state: State::Backoff { until: now },
            attempt: 0,
            // xorshift64 must not start at zero.
            rng: seed | 1,
            settle,
            settle_until: None,
            down_since: Some(down_since),
            retry_after: None,
        }
    }

    /// The state now.
    pub fn state(&self) -> State {
        self.state
    }

    /// Failed connects since the last proven connection.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Not delivering since then; `None` while a proven connection is up.
    pub fn down_since(&self) -> Option<Instant> {
        self.down_since
    }

    /// Connected and not proven yet: what it wrote is not committed (a stream output).
    pub fn unproven(&self) -> bool {
        self.settle_until.is_some()
    }

    /// Connected and proven.
    pub fn delivering(&self) -> bool {
        self.state == State::Connected && self.settle_until.is_none()
    }

    /// When [`Link::due`] has something next.
    pub fn poll_at(&self) -> Option<Instant> {
        match self.state {
            State::Backoff { until } => Some(until),
            State::Connecting { deadline } | State::Handshaking { deadline } => Some(deadline),
            State::Connected => self.settle_until,
        }
    }

    /// What is due at `now`, if anything.
    pub fn due(&self, now: Instant) -> Option<Due> {
        match self.state {
            State::Backoff { until } if until <= now => Some(Due::Connect),
            State::Connecting { deadline } if deadline <= now => Some(Due::ConnectTimeout),
            State::Handshaking { deadline } if deadline <= now => Some(Due::HandshakeTimeout),
            State::Connected if self.settle_until.is_some_and(|t| t <= now) => Some(Due::Settled),
            // Nothing expired.
            State::Backoff { .. }
            | State::Connecting { .. }
            | State::Handshaking { .. }
            | State::Connected => None,
        }
    }

    /// A non-blocking connect was started.
    pub fn connecting(&mut self, now: Instant) {
        self.set_state(State::Connecting {
            deadline: now + CONNECT_TIMEOUT,
        });
    }

    /// The socket connected; a TLS handshake starts.
    pub fn handshaking(&mut self, now: Instant) {
        self.set_state(State::Handshaking {
            deadline: now + CONNECT_TIMEOUT,
        });
    }

    /// The connection is up (after its handshake), not proven yet. Returns whether it proves
    /// itself at once (`settle = 0`).
    pub fn connected(&mut self, now: Instant) -> bool {
        self.set_state(State::Connected);
        self.settle_until = Some(now + self.settle);
        self.settle.is_zero()
    }

    /// The connection proved itself (lasted `settle`, a file took whole records, a 2xx): the
    /// backoff starts again from its minimum. Returns `None` if it had proven itself already,
    /// else `Some` of when the outage it ends began (`None` inside: there was none).
    pub fn prove(&mut self) -> Option<Option<Instant>> {
        self.settle_until.take()?;
        self.attempt = 0;
        Some(self.down_since.take())
    }

    /// The connection (or the connect) failed at `now`: back off, with capped exponential
    /// backoff and jitter, or for the server's `Retry-After`.
    pub fn fail(&mut self, now: Instant) -> Failure {
        let was_connected = self.state == State::Connected;
        let unproven = self.settle_until.take().is_some();
        let outage_starts = was_connected && !unproven;
        if outage_starts {
            self.down_since = Some(now);
        }
        let delay = match self.retry_after.take() {
            // The server said when: that, not our guess (but never a busy loop on "0").
            Some(after) => after.max(BACKOFF_MIN),
            None => self.backoff(),
        };
        self.attempt = self.attempt.saturating_add(1);
        self.set_state(State::Backoff { until: now + delay });
        Failure {
            delay,
            unproven,
            outage_starts,
        }
    }

    /// The server asked for this long before the next try (`Retry-After`).
    pub fn retry_after(&mut self, after: Option<Duration>) {
        self.retry_after = after;
    }

    /// Connect again at once, from the smallest backoff (a new address from a reload).
    pub fn reconnect_now(&mut self, now: Instant) {
        self.attempt = 0;
        self.set_state(State::Backoff { until: now });
    }

    /// A kept-alive connection the server closed after it proved itself: connect again at
    /// once, quietly (not a failure).
    pub fn reopen(&mut self, now: Instant) {
        self.set_state(State::Backoff { until: now });
    }

    /// `BACKOFF_MIN * 2^attempt`, capped at `BACKOFF_MAX`, times a jitter of 0.8..1.2 so that a
    /// fleet does not reconnect in lockstep.
    fn backoff(&mut self) -> Duration {
        let exp = BACKOFF_MIN.saturating_mul(1u32 << self.attempt.min(16));
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let jitter = 0.8 + (self.rng % 1000) as f64 / 2500.0;
        exp.min(BACKOFF_MAX).mul_f64(jitter).min(BACKOFF_MAX)
    }

    /// Every state change goes through here.
    fn set_state(&mut self, state: State) {
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(2);

    fn up(now: Instant) -> Link {
        let mut l = Link::new(SETTLE, 42, now, now);
        assert_eq!(l.due(now), Some(Due::Connect));
        l.connecting(now);
        assert!(!l.connected(now));
        l
    }

    #[test]
    fn backoff_connects_at_once_then_times_out_a_slow_connect() {
        let t0 = Instant::now();
        let mut l = Link::new(SETTLE, 1, t0, t0);
        assert_eq!(l.due(t0), Some(Due::Connect));
        l.connecting(t0);
        assert_eq!(l.state().name(), "connecting");
        assert_eq!(l.due(t0 + CONNECT_TIMEOUT / 2), None);
        assert_eq!(l.due(t0 + CONNECT_TIMEOUT), Some(Due::ConnectTimeout));
        let f = l.fail(t0 + CONNECT_TIMEOUT);
        assert!(!f.unproven && !f.outage_starts);
        assert_eq!(l.attempts(), 1);
    }

    #[test]
    fn handshaking_times_out_on_its_own_deadline() {
        let t0 = Instant::now();
        let mut l = Link::new(SETTLE, 1, t0, t0);
        l.connecting(t0);
        let t1 = t0 + Duration::from_secs(9);
        l.handshaking(t1);
        assert_eq!(
            l.due(t0 + CONNECT_TIMEOUT),
            None,
            "the connect's deadline is over"
        );
        assert_eq!(l.due(t1 + CONNECT_TIMEOUT), Some(Due::HandshakeTimeout));
    }

    #[test]
    fn connected_is_unproven_until_settle_then_ends_the_outage() {
        let t0 = Instant::now();
        let mut l = up(t0);
        assert!(l.unproven() && !l.delivering());
        assert_eq!(l.poll_at(), Some(t0 + SETTLE));
        assert_eq!(l.due(t0 + SETTLE / 2), None);
        assert_eq!(l.due(t0 + SETTLE), Some(Due::Settled));
        assert_eq!(
            l.prove(),
            Some(Some(t0)),
            "ends the outage that began at t0"
        );
        assert!(l.delivering());
        assert_eq!(l.down_since(), None);
        assert_eq!(l.prove(), None, "proven once");
        assert_eq!(l.due(t0 + SETTLE * 10), None);
    }

    #[test]
    fn settle_zero_proves_at_once() {
        let t0 = Instant::now();
        let mut l = Link::new(Duration::ZERO, 1, t0, t0);
        l.connecting(t0);
        assert!(l.connected(t0));
    }

    #[test]
    fn accepted_then_closed_is_a_failed_connect_and_the_backoff_keeps_growing() {
        // A receiver that accepts and closes at once: every connection fails unproven.
        let t0 = Instant::now();
        let mut l = Link::new(SETTLE, 7, t0, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            assert_eq!(l.due(now), Some(Due::Connect));
            l.connecting(now);
            l.connected(now);
            let f = l.fail(now);
            assert!(f.unproven && !f.outage_starts);
            delays.push(f.delay);
            now += f.delay;
        }
        assert_eq!(l.down_since(), Some(t0), "the outage goes on from t0");
        assert_eq!(l.attempts(), 8);
        // Jitter is 0.8..1.2: each step at least 1.6/1.2 = 1.33x the one before (below the cap).
        for w in delays.windows(2) {
            assert!(w[1] > w[0], "{delays:?}");
        }
    }

    #[test]
    fn proven_connection_that_fails_starts_an_outage_with_the_smallest_backoff() {
        let t0 = Instant::now();
        let mut l = up(t0);
        l.prove();
        let t1 = t0 + Duration::from_secs(60);
        let f = l.fail(t1);
        assert!(f.outage_starts && !f.unproven);
        assert_eq!(l.down_since(), Some(t1));
        assert!(f.delay >= BACKOFF_MIN.mul_f64(0.8) && f.delay <= BACKOFF_MIN.mul_f64(1.2));
        assert_eq!(
            l.state(),
            State::Backoff {
                until: t1 + f.delay
            }
        );
    }

    #[test]
    fn backoff_is_capped() {
        let t0 = Instant::now();
        let mut l = Link::new(SETTLE, 3, t0, t0);
        for _ in 0..40 {
            let f = l.fail(t0);
            assert!(f.delay <= BACKOFF_MAX, "{:?}", f.delay);
        }
        assert_eq!(l.attempts(), 40);
    }

    #[test]
    fn retry_after_replaces_the_guess_once_and_never_busy_loops() {
        let t0 = Instant::now();
        let mut l = up(t0);
        l.retry_after(Some(Duration::from_secs(120)));
        assert_eq!(l.fail(t0).delay, Duration::from_secs(120));
        l.retry_after(Some(Duration::ZERO));
        assert_eq!(l.fail(t0).delay, BACKOFF_MIN);
        // Used once: the next failure is back to the backoff.
        assert!(l.fail(t0).delay <= BACKOFF_MIN * 8);
    }

    #[test]
    fn reconnect_now_resets_the_backoff() {
        let t0 = Instant::now();
        let mut l = Link::new(SETTLE, 3, t0, t0);
        for _ in 0..5 {
            l.fail(t0);
        }
        l.reconnect_now(t0);
        assert_eq!(l.attempts(), 0);
        assert_eq!(l.due(t0), Some(Due::Connect));
    }
}
