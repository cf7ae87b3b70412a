//! The lease keeper's arithmetic, sans I/O: how long an active may go on accepting and
//! delivering after the last proof that the shared storage still honours its lock.
//!
//! On NFSv4 the active's locks live in its client's **lease** on the server: a client that
//! stops renewing (a partition, a dead VM) loses them about one lease time after its last
//! renewal, and the standby's next try of the lock then succeeds. The relay must have stopped
//! accepting and delivering **before** that, or two instances would be active at once. So the
//! sync helper heartbeats: every [`super::FENCE_CHECK`] it writes and `fdatasync`s a small file
//! under a lock of its own, which succeeds only while the server still honours this client's
//! state. Each success proves the lease was valid when the heartbeat was *requested*, and
//! moves the deadline to `requested + budget`, where `budget = lease − margin` and
//! `margin = 2 s + lease/10` (nfsd counts renewals in whole seconds, so a client can expire up
//! to a second early; the rest is scheduling and clock rate).
//!
//! Rules, each tested below:
//! - the deadline is checked **first** on every wake, before any reply is applied: a reply that
//!   arrives after a stall can never revive a lease that ran out meanwhile;
//! - a heartbeat that succeeded moves the deadline forward only (an older reply never pulls it
//!   back), and only if the new deadline is still ahead of now;
//! - a heartbeat that failed with `EIO` fences at once: on NFS, that is a lost lock (another
//!   instance has it); other errors only withhold the renewal, and the deadline decides.
//!
//! The design note is `notes/issue19-design.md` §3.2.

use std::time::{Duration, Instant};

/// `2 s + lease/10`: what is kept back from the lease (nfsd's whole-second accounting, the
/// helper's scheduling, clock rate).
pub fn margin(lease: Duration) -> Duration {
    Duration::from_secs(2) + lease / 10
}

/// `lease − margin`: how long after a heartbeat was requested the relay may go on.
pub fn budget(lease: Duration) -> Duration {
    lease.saturating_sub(margin(lease))
}

/// What a heartbeat reply means for the lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The lease holds (renewed, or not renewed by this reply but not run out).
    Holds,
    /// Stop for good: why.
    Fenced(String),
}

/// One active's lease: the deadline after which it must have stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    lease: Duration,
    budget: Duration,
    deadline: Instant,
    /// When the heartbeat behind the deadline was requested (or the lock taken).
    renewed: Instant,
}

impl Lease {
    /// A lease of `lease` whose lock was just proven at `now` (taken, or written under).
    pub fn new(lease: Duration, now: Instant) -> Lease {
        let budget = budget(lease);
        Lease {
            lease,
            budget,
            deadline: now + budget,
            renewed: now,
        }
    }

    /// The configured lease.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// After this instant the relay must not accept, append or deliver.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the lease still holds at `now`: one comparison, no I/O.
    pub fn holds(&self, now: Instant) -> bool {
        now < self.deadline
    }

    /// The deadline check: why the lease ran out, if it did by `now`.
    pub fn check(&self, now: Instant) -> Option<String> {
        if self.holds(now) {
            return None;
        }
        Some(format!(
            "no heartbeat from the storage since {:.1} s (lease {} s, margin {:.1} s): the lock may be lost and another instance may take over",
            now.saturating_duration_since(self.renewed).as_secs_f64(),
            self.lease.as_secs(),
            margin(self.lease).as_secs_f64()
        ))
    }

    /// The heartbeat requested at `requested` came back at `now` with `result` (an errno on
    /// failure). The deadline is checked first.
    pub fn heartbeat(
        &mut self,
        requested: Instant,
        result: Result<(), i32>,
        now: Instant,
    ) -> Verdict {
        if let Some(why) = self.check(now) {
            return Verdict::Fenced(why);
        }
        match result {
            Ok(()) => {
                let deadline = requested + self.budget;
                if deadline > self.deadline && deadline > now {
                    self.deadline = deadline;
                    self.renewed = requested;
                }
                Verdict::Holds
            }
            Err(errno) if errno == libc::EIO => Verdict::Fenced(format!(
                "the heartbeat write failed with EIO (lease {} s): on NFS the lock was lost to a lease expiry and another instance may hold it",
                self.lease.as_secs()
            )),
            // ENOSPC, EDQUOT, ...: not proof of a lost lock; no renewal, the deadline decides.
            Err(_) => Verdict::Holds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Duration = Duration::from_secs(10);
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn margin_and_budget_follow_the_lease() {
        assert_eq!(margin(L), Duration::from_secs(3));
        assert_eq!(budget(L), Duration::from_secs(7));
        assert_eq!(budget(Duration::from_secs(90)), Duration::from_secs(79));
        assert_eq!(budget(Duration::from_secs(4)), Duration::from_millis(1600));
    }

    #[test]
    fn a_new_lease_holds_for_the_budget_then_runs_out() {
        let t0 = Instant::now();
        let l = Lease::new(L, t0);
        assert!(l.holds(t0 + budget(L) - MS));
        assert!(l.check(t0 + budget(L) - MS).is_none());
        assert!(!l.holds(t0 + budget(L)));
        let why = l.check(t0 + budget(L)).expect("ran out");
        assert!(
            why.contains("no heartbeat") && why.contains("lease 10 s"),
            "{why}"
        );
    }

    #[test]
    fn heartbeat_ok_moves_the_deadline_from_when_it_was_requested() {
        let t0 = Instant::now();
        let mut l = Lease::new(L, t0);
        let req = t0 + Duration::from_secs(3);
        assert_eq!(l.heartbeat(req, Ok(()), req + 100 * MS), Verdict::Holds);
        assert_eq!(l.deadline(), req + budget(L));
        // An older reply (requested before) never pulls the deadline back.
        assert_eq!(l.heartbeat(t0 + MS, Ok(()), req + 200 * MS), Verdict::Holds);
        assert_eq!(l.deadline(), req + budget(L));
    }

    #[test]
    fn a_late_reply_cannot_revive_an_expired_lease() {
        let t0 = Instant::now();
        let mut l = Lease::new(L, t0);
        // Requested while the lease held, answered after the deadline (a stall).
        let req = t0 + Duration::from_secs(6);
        let late = t0 + budget(L) + MS;
        match l.heartbeat(req, Ok(()), late) {
            Verdict::Fenced(why) => assert!(why.contains("no heartbeat"), "{why}"),
            Verdict::Holds => panic!("a late reply revived the lease"),
        }
        assert_eq!(l.deadline(), t0 + budget(L), "the deadline did not move");
    }

    #[test]
    fn the_deadline_check_comes_before_the_reply_even_an_eio() {
        let t0 = Instant::now();
        let mut l = Lease::new(L, t0);
        match l.heartbeat(t0, Err(libc::EIO), t0 + budget(L)) {
            Verdict::Fenced(why) => assert!(why.contains("no heartbeat"), "{why}"),
            Verdict::Holds => panic!("not fenced"),
        }
    }

    #[test]
    fn eio_fences_at_once_other_errors_only_withhold_the_renewal() {
        let t0 = Instant::now();
        let mut l = Lease::new(L, t0);
        let req = t0 + Duration::from_secs(1);
        assert_eq!(
            l.heartbeat(req, Err(libc::ENOSPC), req + MS),
            Verdict::Holds
        );
        assert_eq!(l.deadline(), t0 + budget(L), "no renewal");
        match l.heartbeat(req, Err(libc::EIO), req + MS) {
            Verdict::Fenced(why) => assert!(why.contains("EIO"), "{why}"),
            Verdict::Holds => panic!("EIO did not fence"),
        }
    }

    #[test]
    fn a_renewal_that_would_already_be_past_is_not_taken() {
        let t0 = Instant::now();
        let mut l = Lease::new(L, t0);
        // Renewed at 6 s: deadline 13 s.
        let r = t0 + Duration::from_secs(6);
        assert_eq!(l.heartbeat(r, Ok(()), r), Verdict::Holds);
        // A reply, at 12.9 s, to a request of 5.95 s: its deadline (12.95) is not later.
        let now = t0 + Duration::from_millis(12_900);
        assert_eq!(
            l.heartbeat(t0 + Duration::from_millis(5_950), Ok(()), now),
            Verdict::Holds
        );
        assert_eq!(l.deadline(), r + budget(L));
    }
}
