//! Gathering a batch (HTTP requests, Kafka record batches): the ring walked from the send
//! position until the batch is full, holds `limit` records or reaches the head. Overwritten
//! and damaged records before the first one are stepped over (and counted); a gap after some
//! records ends the batch, so that those go first. A batch smaller than its size limit waits
//! until its oldest record is `max_batch_age` old.

use std::time::{Duration, Instant};

use super::Core;
use crate::clock;
use crate::ring::{Pos, Read, Ring};

/// The batch being gathered from `from`: `records` records, `bytes` of it so far.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scan {
    pub from: Pos,
    pub to: Pos,
    pub bytes: usize,
    pub records: u32,
    /// Receive time of the first record, ns.
    pub first_ts: u64,
    /// No more records fit (or a gap in the ring ends it): send now.
    pub full: bool,
}

impl Scan {
    /// The scan to go on with: the `saved` one while it still starts at the send position, is
    /// not overwritten and holds no more than `limit`; otherwise an empty one at `send` whose
    /// batch starts with `header` bytes.
    pub fn resume(saved: Option<Scan>, send: Pos, tail: Pos, limit: u32, header: usize) -> Scan {
        match saved {
            Some(s) if s.from == send && s.from.seq >= tail.seq && s.records <= limit => s,
            _ => Scan {
                from: send,
                to: send,
                bytes: header,
                records: 0,
                first_ts: 0,
                full: false,
            },
        }
    }

    /// When a batch that is neither full nor at `limit` is old enough to go, if that is later
    /// than now (`None`: it goes now).
    pub fn wait_until(&self, limit: u32, max_age: Duration, now: Instant) -> Option<Instant> {
        if self.full || self.records >= limit {
            return None;
        }
        let age = u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX);
        let due = self.first_ts.saturating_add(age);
        let wall = clock::wall_ns();
        (wall < due).then(|| now + Duration::from_nanos(due - wall))
    }
}

impl Core {
    /// Extends `scan` until the batch is full (`max` bytes, each record costing
    /// `cost(payload, records before it)`), holds `limit` records or reaches the head. Steps
    /// over overwritten records and damaged ones before the first record (the send position
    /// moves past them); `skipped(core, ring, at, next)` settles damaged records `at..next`.
    pub(super) fn scan(
        &mut self,
        ring: &mut Ring,
        scan: &mut Scan,
        limit: u32,
        max: usize,
        cost: impl Fn(&[u8], u32) -> usize,
        mut skipped: impl FnMut(&mut Core, &mut Ring, Pos, Pos),
    ) {
        while !scan.full && scan.records < limit {
            match ring.read(scan.to) {
                Read::Record(r) => {
                    let cost = cost(r.payload, scan.records);
                    if scan.records > 0 && scan.bytes + cost > max {
                        scan.full = true;
                        break;
                    }
                    if scan.records == 0 {
                        scan.first_ts = r.ts;
                    }
                    scan.bytes += cost;
                    scan.records += 1;
                    scan.to = r.next;
                }
                Read::End => break,
                Read::Overrun { tail } if scan.records == 0 => {
                    self.note_overrun(ring);
                    self.send = tail;
                    scan.from = tail;
                    scan.to = tail;
                }
                Read::Corrupt { at, damage, next } if scan.records == 0 => {
                    self.note_damage(at, damage, next);
                    self.send = next;
                    skipped(self, ring, at, next);
                    scan.from = next;
                    scan.to = next;
                }
                // A gap after some records: send those first.
                Read::Overrun { .. } | Read::Corrupt { .. } => scan.full = true,
            }
        }
    }
}
