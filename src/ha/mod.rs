//! Active-standby: who delivers, decided by a lock file and fencing epochs.
//!
//! Two instances share one `lock_file` ([`lock`]). The one that holds its lock is **active**: it
//! opens (recovers) the rings, binds the listeners and delivers. The other is **standby**: no
//! data listener, no ring opened, only the admin endpoint; it retries the lock every
//! `standby_poll` and, once it has it, becomes active the way a start does (a promotion is a
//! restart for the outputs: they resume from their persisted cursors with the replay window).
//! Every activation writes a new, higher **epoch** into the lock file and into every ring. An
//! active re-reads the lock file's epoch and its rings' every [`FENCE_CHECK`]; a higher one
//! means another instance became active behind its back (a lock that stopped excluding, on
//! network storage or after the file was replaced), and it stops at once, without writing to
//! its rings again: **fenced**, for good (the process exits with [`EXIT_FENCED`]).
//!
//! ```text
//! Standby --(lock taken, rings opened)--> Active --(higher epoch seen, lock lost)--> Fenced
//! ```
//!
//! [`Ha`] is the state machine, sans I/O: it takes the time and what the event loop observed
//! (the lock taken or busy, the epochs it read) and says what to do next ([`Action`]) and when
//! ([`Ha::poll_at`]). The event loop does the file I/O and the activation itself.
//!
//! With a **lease** (`[relay] lease`, on by default when `data_dir` is on NFS; [`lease`]), an
//! active also needs a recent heartbeat from the sync helper: [`Ha::lease_check`] runs first on
//! every wake and fences once the deadline passed; [`Ha::heartbeat`] applies a reply;
//! [`Ha::may_write`] is the gate before every accept, append, send and HTTP 200.

pub mod keeper;
pub mod lease;
pub mod lock;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::log::Level;

/// How often an active re-reads the lock file's and its rings' fencing epochs.
pub const FENCE_CHECK: Duration = Duration::from_millis(500);
/// Exit code of an active that found a higher epoch than its own (it was fenced off).
pub const EXIT_FENCED: u8 = 3;

/// The instance's role in an active-standby pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the lock: no listener bound, no ring opened.
    Standby {
        /// When to try the lock again.
        next_try: Instant,
    },
    /// Holding the lock: rings open, listeners bound, delivering.
    Active {
        /// The fencing epoch this instance wrote into the lock file and its rings.
        epoch: u64,
    },
    /// Another instance took over (a higher epoch was seen): delivering stopped for good.
    Fenced {
        /// This instance's epoch.
        epoch: u64,
    },
}

impl Role {
    /// `standby`, `active` or `fenced`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Standby { .. } => "standby",
            Role::Active { .. } => "active",
            Role::Fenced { .. } => "fenced",
        }
    }

    /// The epoch this instance holds (0 while standby).
    pub fn epoch(&self) -> u64 {
        match *self {
            Role::Active { epoch } | Role::Fenced { epoch } => epoch,
            Role::Standby { .. } => 0,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`Ha::on_tick`] asks the event loop to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Try to take the lock; report with [`Ha::lock_busy`] or, once the rings are open and
    /// stamped, [`Ha::activated`].
    TryLock,
    /// Read the lock file's epoch and every ring's; report each with [`Ha::epoch_seen`], a lost
    /// lock with [`Ha::lock_lost`].
    CheckEpochs {
        /// This instance's epoch: anything above it fences.
        epoch: u64,
    },
}

/// The active-standby state machine of one instance.
#[derive(Debug)]
pub struct Ha {
    role: Role,
    standby_poll: Duration,
    next_fence_check: Instant,
    /// For the log lines.
    lock_file: PathBuf,
    /// The configured lease (`None`: no lease keeping, as on a local disk).
    lease_len: Option<Duration>,
    /// The active's lease, from its activation on.
    lease: Option<lease::Lease>,
}

impl Ha {
    /// A new instance of the pair that shares `lock_file`: standby, trying the lock at once.
    pub fn new(standby_poll: Duration, lock_file: &Path, now: Instant) -> Ha {
        Ha {
            role: Role::Standby { next_try: now },
            standby_poll,
            next_fence_check: now,
            lock_file: lock_file.to_path_buf(),
            lease_len: None,
            lease: None,
        }
    }

    /// Keeps a lease of `lease` once active (`None`: none). Set before activation.
    pub fn set_lease(&mut self, lease: Option<Duration>) {
        self.lease_len = lease;
    }

    /// The configured lease, if the instance keeps one.
    pub fn lease_len(&self) -> Option<Duration> {
        self.lease_len
    }

    /// The active's lease deadline, if it keeps a lease.
    pub fn lease_deadline(&self) -> Option<Instant> {
        match self.role {
            Role::Active { .. } => self.lease.map(|l| l.deadline()),
            Role::Standby { .. } | Role::Fenced { .. } => None,
        }
    }

    /// Whether this instance may accept, append, send or answer 200 at `now`: active, and its
    /// lease (if it keeps one) holds. One comparison, no I/O.
    pub fn may_write(&self, now: Instant) -> bool {
        match self.role {
            Role::Active { .. } => self.lease.is_none_or(|l| l.holds(now)),
            Role::Standby { .. } | Role::Fenced { .. } => false,
        }
    }

    /// The deadline check, first thing on every wake: fenced (and why) if the active's lease
    /// ran out by `now`.
    pub fn lease_check(&mut self, now: Instant) -> Option<String> {
        let (Role::Active { epoch }, Some(l)) = (self.role, self.lease) else {
            return None;
        };
        let why = l.check(now)?;
        self.set_state(Role::Fenced { epoch }, &why);
        Some(why)
    }

    /// The sync helper answered the heartbeat requested at `requested` with `result` (an
    /// errno on failure). The deadline is checked first, so a late reply cannot revive an
    /// expired lease. Returns why this instance is fenced now, if it is.
    pub fn heartbeat(
        &mut self,
        requested: Instant,
        result: Result<(), i32>,
        now: Instant,
    ) -> Option<String> {
        let (Role::Active { epoch }, Some(l)) = (self.role, self.lease.as_mut()) else {
            return None;
        };
        match l.heartbeat(requested, result, now) {
            lease::Verdict::Holds => None,
            lease::Verdict::Fenced(why) => {
                self.set_state(Role::Fenced { epoch }, &why);
                Some(why)
            }
        }
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.role
    }

    /// A reload changed `standby_poll`: the next try uses it.
    pub fn set_standby_poll(&mut self, poll: Duration) {
        self.standby_poll = poll;
    }

    /// When [`Ha::on_tick`] has something to do next; `None` once fenced.
    pub fn poll_at(&self) -> Option<Instant> {
        match self.role {
            Role::Standby { next_try } => Some(next_try),
            Role::Active { .. } => Some(match self.lease {
                Some(l) => self.next_fence_check.min(l.deadline()),
                None => self.next_fence_check,
            }),
            Role::Fenced { .. } => None,
        }
    }

    /// What is due at `now`: a standby's next try of the lock, an active's fencing check.
    pub fn on_tick(&mut self, now: Instant) -> Option<Action> {
        match self.role {
            // The try is due: until the loop reports, the next one is a poll away.
            Role::Standby { next_try } if now >= next_try => {
                self.role = Role::Standby {
                    next_try: now + self.standby_poll,
                };
                Some(Action::TryLock)
            }
            Role::Active { epoch } if now >= self.next_fence_check => {
                self.next_fence_check = now + FENCE_CHECK;
                Some(Action::CheckEpochs { epoch })
            }
            // Not due yet; a fenced instance does nothing ever again.
            Role::Standby { .. } | Role::Active { .. } | Role::Fenced { .. } => None,
        }
    }

    /// The lock is held elsewhere: stay standby, try again in `standby_poll`.
    pub fn lock_busy(&mut self, now: Instant) {
        if let Role::Standby { .. } = self.role {
            self.role = Role::Standby {
                next_try: now + self.standby_poll,
            };
        }
    }

    /// The lock is ours, epoch `epoch` is in the lock file and every ring: active.
    /// With a lease, taking the lock proved it: the deadline starts at `now`.
    pub fn activated(&mut self, epoch: u64, reason: &str, now: Instant) {
        self.next_fence_check = now + FENCE_CHECK;
        self.lease = self.lease_len.map(|l| lease::Lease::new(l, now));
        self.set_state(Role::Active { epoch }, reason);
    }

    /// An epoch read back by a fencing check, from `source` (the lock file or a ring). Returns
    /// why this instance is fenced now, if it is: the epoch is above its own.
    ///
    /// `source` (where `seen` was read) is formatted only when it fences: the periodic check
    /// allocates nothing.
    pub fn epoch_seen(&mut self, seen: u64, source: impl fmt::Display) -> Option<String> {
        match self.role {
            Role::Active { epoch } if seen > epoch => {
                let why = format!(
                    "{source} holds epoch {seen} above this instance's {epoch}: another instance is active"
                );
                self.set_state(Role::Fenced { epoch }, &why);
                Some(why)
            }
            // Ours or an older one; a standby has no epoch to defend; fenced stays fenced.
            Role::Active { .. } | Role::Standby { .. } | Role::Fenced { .. } => None,
        }
    }

    /// The lock no longer excludes anyone (the file was removed or replaced): fenced, as if a
    /// higher epoch had been seen, since one may be written any moment.
    pub fn lock_lost(&mut self, why: &str) -> bool {
        match self.role {
            Role::Active { epoch } => {
                self.set_state(Role::Fenced { epoch }, why);
                true
            }
            Role::Standby { .. } | Role::Fenced { .. } => false,
        }
    }

    /// Every role change goes through here, and is logged `role=A=>B`.
    fn set_state(&mut self, role: Role, reason: &str) {
        crate::log!(
            if matches!(role, Role::Fenced { .. }) {
                Level::Error
            } else {
                Level::Info
            },
            "role_changed",
            role = format_args!("{}=>{}", self.role, role),
            epoch = role.epoch(),
            lock_file = self.lock_file.display(),
            reason = reason
        );
        self.role = role;
    }
}

/// The epoch a new active takes: above the lock file's and every ring's (a ring stamped above
/// the lock file means the file was removed or replaced: going above it keeps the new active
/// from fencing itself).
pub fn next_epoch(lock_epoch: u64, rings_max: u64) -> u64 {
    lock_epoch.max(rings_max).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLL: Duration = Duration::from_secs(2);

    fn active(now: Instant, epoch: u64) -> Ha {
        let mut ha = Ha::new(POLL, Path::new("pair.lock"), now);
        assert_eq!(ha.on_tick(now), Some(Action::TryLock));
        ha.activated(epoch, "lock acquired", now);
        ha
    }

    #[test]
    fn standby_tries_the_lock_at_start_then_every_standby_poll() {
        let t0 = Instant::now();
        let mut ha = Ha::new(POLL, Path::new("pair.lock"), t0);
        assert_eq!(ha.poll_at(), Some(t0));
        assert_eq!(ha.on_tick(t0), Some(Action::TryLock));
        ha.lock_busy(t0);
        assert_eq!(ha.role().name(), "standby");
        assert_eq!(ha.poll_at(), Some(t0 + POLL));
        assert_eq!(ha.on_tick(t0 + POLL / 2), None);
        assert_eq!(ha.on_tick(t0 + POLL), Some(Action::TryLock));
    }

    #[test]
    fn standby_does_not_try_twice_while_a_try_is_outstanding() {
        let t0 = Instant::now();
        let mut ha = Ha::new(POLL, Path::new("pair.lock"), t0);
        assert_eq!(ha.on_tick(t0), Some(Action::TryLock));
        // The loop has not reported yet; a spurious wake-up must not try again at once.
        assert_eq!(ha.on_tick(t0 + Duration::from_millis(1)), None);
    }

    #[test]
    fn activated_checks_epochs_every_fence_check() {
        let t0 = Instant::now();
        let mut ha = active(t0, 7);
        assert_eq!(ha.role(), Role::Active { epoch: 7 });
        assert_eq!(ha.poll_at(), Some(t0 + FENCE_CHECK));
        assert_eq!(ha.on_tick(t0 + FENCE_CHECK / 2), None);
        assert_eq!(
            ha.on_tick(t0 + FENCE_CHECK),
            Some(Action::CheckEpochs { epoch: 7 })
        );
        assert_eq!(ha.poll_at(), Some(t0 + 2 * FENCE_CHECK));
    }

    #[test]
    fn active_higher_epoch_seen_is_fenced_for_good() {
        let t0 = Instant::now();
        let mut ha = active(t0, 7);
        assert_eq!(ha.epoch_seen(7, "lock file x"), None, "its own epoch");
        assert_eq!(ha.epoch_seen(3, "ring a.ring"), None, "an older one");
        let why = ha.epoch_seen(8, "ring a.ring").expect("fenced");
        assert!(
            why.contains("ring a.ring holds epoch 8 above this instance's 7"),
            "{why}"
        );
        assert_eq!(ha.role(), Role::Fenced { epoch: 7 });
        // Terminal: nothing due, no more tries or checks, no way back.
        assert_eq!(ha.poll_at(), None);
        assert_eq!(ha.on_tick(t0 + Duration::from_secs(3600)), None);
        assert_eq!(ha.epoch_seen(9, "lock file x"), None);
        ha.lock_busy(t0);
        assert_eq!(ha.role(), Role::Fenced { epoch: 7 });
    }

    #[test]
    fn active_lock_lost_is_fenced() {
        let t0 = Instant::now();
        let mut ha = active(t0, 2);
        assert!(ha.lock_lost("lock file x was replaced"));
        assert_eq!(ha.role(), Role::Fenced { epoch: 2 });
    }

    #[test]
    fn standby_ignores_epochs_and_lost_locks() {
        let t0 = Instant::now();
        let mut ha = Ha::new(POLL, Path::new("pair.lock"), t0);
        assert_eq!(ha.epoch_seen(100, "lock file x"), None);
        assert!(!ha.lock_lost("gone"));
        assert_eq!(ha.role().name(), "standby");
    }

    const LEASE: Duration = Duration::from_secs(10);

    fn active_with_lease(now: Instant, epoch: u64) -> Ha {
        let mut ha = Ha::new(POLL, Path::new("pair.lock"), now);
        ha.set_lease(Some(LEASE));
        assert_eq!(ha.on_tick(now), Some(Action::TryLock));
        ha.activated(epoch, "lock acquired", now);
        ha
    }

    #[test]
    fn without_a_lease_an_active_may_always_write_and_heartbeats_do_nothing() {
        let t0 = Instant::now();
        let mut ha = active(t0, 1);
        assert_eq!(ha.lease_deadline(), None);
        assert!(ha.may_write(t0 + Duration::from_secs(3600)));
        assert_eq!(ha.lease_check(t0 + Duration::from_secs(3600)), None);
        assert_eq!(ha.heartbeat(t0, Err(libc::EIO), t0), None);
        assert_eq!(ha.role(), Role::Active { epoch: 1 });
    }

    #[test]
    fn standby_may_not_write_and_has_no_deadline() {
        let t0 = Instant::now();
        let mut ha = Ha::new(POLL, Path::new("pair.lock"), t0);
        ha.set_lease(Some(LEASE));
        assert!(!ha.may_write(t0));
        assert_eq!(ha.lease_deadline(), None);
        assert_eq!(ha.lease_check(t0 + LEASE * 10), None);
    }

    #[test]
    fn active_heartbeat_ok_moves_the_deadline_and_poll_at_wakes_for_it() {
        let t0 = Instant::now();
        let mut ha = active_with_lease(t0, 3);
        let budget = lease::budget(LEASE);
        assert_eq!(ha.lease_deadline(), Some(t0 + budget));
        let req = t0 + Duration::from_secs(2);
        assert_eq!(ha.heartbeat(req, Ok(()), req), None);
        assert_eq!(ha.lease_deadline(), Some(req + budget));
        assert!(ha.may_write(req + budget - Duration::from_millis(1)));
        assert!(!ha.may_write(req + budget));
        // Heartbeats stop: the fencing checks still come, and the loop wakes at the deadline.
        let mut t = req;
        while ha.poll_at() < Some(req + budget) {
            t = ha.poll_at().expect("active");
            assert!(ha.on_tick(t).is_some() || t == req + budget);
        }
        assert_eq!(ha.poll_at(), Some(req + budget), "last tick {t:?}");
    }

    #[test]
    fn active_past_the_deadline_is_fenced_by_the_check_and_a_late_reply_cannot_revive_it() {
        let t0 = Instant::now();
        let mut ha = active_with_lease(t0, 3);
        let late = t0 + lease::budget(LEASE);
        let why = ha.lease_check(late).expect("fenced");
        assert!(
            why.contains("no heartbeat") && why.contains("lease 10 s"),
            "{why}"
        );
        assert_eq!(ha.role(), Role::Fenced { epoch: 3 });
        assert_eq!(
            ha.heartbeat(t0 + Duration::from_secs(1), Ok(()), late),
            None
        );
        assert_eq!(ha.role(), Role::Fenced { epoch: 3 });
        assert!(!ha.may_write(late));
        assert_eq!(ha.poll_at(), None);
    }

    #[test]
    fn active_a_reply_after_the_deadline_fences_before_it_is_applied() {
        let t0 = Instant::now();
        let mut ha = active_with_lease(t0, 3);
        // The loop was stalled: the first thing it sees is a reply, late.
        let late = t0 + lease::budget(LEASE) + Duration::from_millis(5);
        let why = ha
            .heartbeat(t0 + Duration::from_secs(1), Ok(()), late)
            .expect("fenced");
        assert!(why.contains("no heartbeat"), "{why}");
        assert_eq!(ha.role(), Role::Fenced { epoch: 3 });
    }

    #[test]
    fn active_heartbeat_eio_fences() {
        let t0 = Instant::now();
        let mut ha = active_with_lease(t0, 4);
        let why = ha
            .heartbeat(t0, Err(libc::EIO), t0 + Duration::from_millis(10))
            .expect("fenced");
        assert!(why.contains("EIO"), "{why}");
        assert_eq!(ha.role(), Role::Fenced { epoch: 4 });
    }

    #[test]
    fn next_epoch_goes_above_the_lock_file_and_every_ring() {
        assert_eq!(next_epoch(0, 0), 1);
        assert_eq!(next_epoch(4, 2), 5);
        // The lock file was replaced: a ring remembers a higher epoch.
        assert_eq!(next_epoch(1, 9), 10);
        assert_eq!(next_epoch(u64::MAX, 0), u64::MAX);
    }
}
