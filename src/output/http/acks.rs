//! What an HTTP response means for its batch, and the batches waiting for their Splunk HEC
//! acknowledgement: sans I/O, so that the decisions our integration tests found the hard way
//! (a 413 splits, an ack that never comes resends, acks arriving out of order commit in order)
//! are tested without a socket.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::ring::Pos;

/// Batches answered 2xx and waiting for their acknowledgement, at most: a receiver that never
/// acknowledges stops the output here (and `ack_timeout` resends), not in memory.
pub const MAX_PENDING: usize = 64;

/// What a response to a batch of `records` records means for the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered (with HEC acks: once acknowledged).
    Delivered,
    /// The receiver, or the way to it, is at fault (429, 5xx, 3xx, 401, 403, 404, 407, 408):
    /// the same batch again after the backoff; auth and path errors are configuration problems,
    /// and dead-lettering the feed record by record would be the wrong fix.
    Retry,
    /// The batch is refused as a whole (413, other 4xx): send at most this many records, until
    /// the records at fault stand alone.
    Split {
        /// The new limit: half the batch.
        retry_with: u32,
    },
    /// A single record still refused: it goes to the dead-letter file, and the output moves on.
    DeadLetter,
}

/// The verdict on `status` for a batch of `records` records.
pub fn verdict(status: u16, records: u32) -> Verdict {
    let success = (200..300).contains(&status);
    let batch_at_fault =
        (400..500).contains(&status) && !matches!(status, 401 | 403 | 404 | 407 | 408 | 429);
    match (success, batch_at_fault) {
        (true, _) => Verdict::Delivered,
        (false, false) => Verdict::Retry,
        (false, true) if records > 1 => Verdict::Split {
            retry_with: (records / 2).max(1),
        },
        (false, true) => Verdict::DeadLetter,
    }
}

/// A batch answered 2xx and waiting for its acknowledgement, or settled already (a
/// dead-lettered record, a skipped corrupt range) and kept in order behind unacked batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Its first record.
    pub from: Pos,
    /// One past its last record.
    pub to: Pos,
    /// Records delivered when it is committed (0 for a settled range).
    pub records: u32,
    /// The receiver's ackId; `None`: nothing to wait for.
    pub ack_id: Option<u64>,
    /// Acknowledged (or nothing to wait for).
    pub acked: bool,
    /// When its 2xx came.
    pub sent_at: Instant,
}

/// The batches waiting for acknowledgement, oldest first; committed strictly in order.
#[derive(Debug)]
pub struct Acks {
    pending: VecDeque<Pending>,
}

impl Default for Acks {
    fn default() -> Acks {
        Acks {
            pending: VecDeque::with_capacity(MAX_PENDING),
        }
    }
}

impl Acks {
    /// Whether no more batches may be sent until some are acknowledged.
    pub fn is_full(&self) -> bool {
        self.pending.len() >= MAX_PENDING
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Batches still unacknowledged.
    pub fn unacked(&self) -> usize {
        self.pending.iter().filter(|p| !p.acked).count()
    }

    /// A batch answered 2xx with `ack_id` (none: it counts as acknowledged at once), or a
    /// settled range (`records` 0, `ack_id` none).
    pub fn push(&mut self, from: Pos, to: Pos, records: u32, ack_id: Option<u64>, now: Instant) {
        self.pending.push_back(Pending {
            from,
            to,
            records,
            ack_id,
            acked: ack_id.is_none(),
            sent_at: now,
        });
    }

    /// The receiver acknowledged `id`.
    pub fn acked(&mut self, id: u64) {
        for p in self.pending.iter_mut().filter(|p| p.ack_id == Some(id)) {
            p.acked = true;
        }
    }

    /// The oldest batch, if it is acknowledged: the cursor may pass it.
    pub fn pop_committable(&mut self) -> Option<Pending> {
        self.pending.front().filter(|p| p.acked)?;
        self.pending.pop_front()
    }

    /// The ackIds to ask about.
    pub fn poll_ids(&self) -> impl Iterator<Item = u64> + Clone + '_ {
        self.pending
            .iter()
            .filter(|p| !p.acked)
            .filter_map(|p| p.ack_id)
    }

    /// The oldest batch, if it is unacknowledged for `timeout` at `now`: it and every batch
    /// after it must be sent again (acks that never come).
    pub fn timed_out(&self, timeout: Duration, now: Instant) -> Option<Pending> {
        self.pending
            .front()
            .filter(|p| !p.acked && p.sent_at + timeout <= now)
            .copied()
    }

    /// When the oldest unacknowledged batch times out.
    pub fn timeout_at(&self, timeout: Duration) -> Option<Instant> {
        self.pending
            .front()
            .filter(|p| !p.acked)
            .map(|p| p.sent_at + timeout)
    }

    /// Where sending resumes on a new connection: after the last batch waiting (ackIds belong
    /// to the channel, not to the connection).
    pub fn resume_after(&self) -> Option<Pos> {
        self.pending.back().map(|p| p.to)
    }

    /// Forgets every batch (they are sent again); returns how many there were.
    pub fn clear(&mut self) -> usize {
        let n = self.pending.len();
        self.pending.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: u64) -> Pos {
        Pos {
            off: seq * 64,
            seq,
            sub: 0,
        }
    }

    #[test]
    fn a_413_splits_the_batch_down_to_a_single_record_then_dead_letters_it() {
        let mut records = 1000;
        let mut steps = 0;
        loop {
            match verdict(413, records) {
                Verdict::Split { retry_with } => {
                    assert_eq!(retry_with, records / 2);
                    records = retry_with;
                    steps += 1;
                }
                Verdict::DeadLetter => break,
                v => panic!("{v:?}"),
            }
        }
        assert_eq!(records, 1);
        assert_eq!(steps, 9, "about log2(1000) halvings");
        assert_eq!(verdict(400, 1), Verdict::DeadLetter);
    }

    #[test]
    fn receiver_and_configuration_faults_retry_the_same_batch() {
        for status in [429, 500, 502, 503, 301, 401, 403, 404, 407, 408] {
            assert_eq!(verdict(status, 500), Verdict::Retry, "{status}");
            assert_eq!(
                verdict(status, 1),
                Verdict::Retry,
                "{status}: never dead-lettered"
            );
        }
        for status in [200, 201, 204] {
            assert_eq!(verdict(status, 3), Verdict::Delivered);
        }
    }

    #[test]
    fn acks_out_of_order_commit_in_order() {
        let t0 = Instant::now();
        let mut a = Acks::default();
        a.push(pos(0), pos(10), 10, Some(1), t0);
        a.push(pos(10), pos(20), 10, Some(2), t0);
        a.acked(2);
        assert_eq!(a.pop_committable(), None, "batch 1 is still out");
        assert_eq!(a.poll_ids().collect::<Vec<_>>(), vec![1]);
        a.acked(1);
        assert_eq!(a.pop_committable().map(|p| p.to), Some(pos(10)));
        assert_eq!(a.pop_committable().map(|p| p.to), Some(pos(20)));
        assert!(a.is_empty());
    }

    #[test]
    fn an_ack_that_never_comes_resends_from_the_oldest_unacked_batch() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(60);
        let mut a = Acks::default();
        a.push(pos(0), pos(10), 10, Some(7), t0);
        a.push(pos(10), pos(20), 10, Some(8), t0 + Duration::from_secs(5));
        assert_eq!(a.timeout_at(timeout), Some(t0 + timeout));
        assert_eq!(a.timed_out(timeout, t0 + timeout / 2), None);
        let late = a.timed_out(timeout, t0 + timeout).expect("timed out");
        assert_eq!(late.from, pos(0), "resend from the oldest");
        assert_eq!(a.clear(), 2, "and every batch after it");
        assert_eq!(a.resume_after(), None);
    }

    #[test]
    fn a_settled_range_behind_an_unacked_batch_waits_for_it() {
        let t0 = Instant::now();
        let mut a = Acks::default();
        a.push(pos(0), pos(10), 10, Some(1), t0);
        // A dead-lettered record: settled, but the cursor may not pass batch 1 yet.
        a.push(pos(10), pos(11), 0, None, t0);
        assert_eq!(a.unacked(), 1);
        assert_eq!(a.pop_committable(), None);
        a.acked(1);
        assert_eq!(a.pop_committable().map(|p| p.records), Some(10));
        assert_eq!(a.pop_committable().map(|p| p.records), Some(0));
    }

    #[test]
    fn a_new_connection_resumes_after_the_batches_waiting() {
        let t0 = Instant::now();
        let mut a = Acks::default();
        a.push(pos(0), pos(10), 10, Some(1), t0);
        a.push(pos(10), pos(25), 15, Some(2), t0);
        assert_eq!(a.resume_after(), Some(pos(25)));
    }

    #[test]
    fn a_receiver_that_never_acknowledges_fills_the_window_not_the_memory() {
        let t0 = Instant::now();
        let mut a = Acks::default();
        for i in 0..MAX_PENDING as u64 {
            assert!(!a.is_full());
            a.push(pos(i), pos(i + 1), 1, Some(i), t0);
        }
        assert!(a.is_full());
        assert_eq!(a.unacked(), MAX_PENDING);
    }
}
