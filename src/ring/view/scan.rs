//! The recovery's scan past the checkpointed head (`buffer-spec.md` §8).

use super::View;
use crate::ring::format::{
    chunk_table_len, record_stride, Pos, RecordHeader, ALIGN, KIND_WRAP, RECORD_HEADER,
};

/// What the recovery scan found past the checkpointed head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scan {
    /// Where the next record goes.
    pub head: Pos,
    /// Valid records found past the checkpoint.
    pub records: u64,
    /// Records past the checkpoint that are damaged but followed by valid entries of this run,
    /// or that touch a damaged chunk of an entry kept: they stay in the ring, where readers
    /// report and skip them (`buffer-spec.md` §8).
    pub damaged: u64,
    /// The newest entry's header, if any was found.
    pub newest: Option<RecordHeader>,
    /// Bytes at the head that looked like the start of a record but failed validation (a torn
    /// write); false when the scan ended on an old lap's bytes or on zeroes.
    pub torn: bool,
}

/// How far past the checkpointed head the recovery scan looks for a valid entry after damage:
/// the writer writes a metadata slot once the bytes appended since the last one pass a quarter
/// of the capacity, so every entry written after the checkpoint lies within a quarter plus one
/// entry and its wrap (`buffer-spec.md` §8).
pub fn salvage_reach(cap: u64, max_record: u32) -> u64 {
    let len = u64::from(max_record.max(crate::ring::format::LINES_MAX));
    let entry = record_stride(len + chunk_table_len(len));
    (cap / 4 + 2 * entry).min(cap)
}

/// Scans forward from the checkpointed head `start`, accepting an entry only if its header and
/// body check out, it carries the next sequence number, it was written by `run` and its
/// receive time does not go backwards (`buffer-spec.md` §8). Past an entry that fails, it
/// resynchronises and goes on from the first entry that passes those checks with a sequence
/// number at or above the expected one (no further than [`salvage_reach`]): the records in
/// between are damaged. The head is after the last entry accepted; what fails after it is the
/// torn tail. Never scans more than one lap.
pub fn scan_forward(data: &[u8], max_record: u32, run: u32, start: Pos, last_ts: u64) -> Scan {
    let cap = data.len() as u64;
    let start = Pos::at(
        if start.off.saturating_add(RECORD_HEADER) > cap {
            0
        } else {
            start.off
        },
        start.seq,
    );
    let scanner = Scanner {
        view: View {
            data,
            max_record,
            run,
            // The scan takes only entries of `run` itself.
            run_starts: &[],
            tail: start,
            head: Pos::at(start.off, u64::MAX),
        },
        run,
        cap,
        reach: salvage_reach(cap, max_record),
    };
    let mut scan = Scan {
        head: start,
        records: 0,
        damaged: 0,
        newest: None,
        torn: false,
    };
    let mut ts = last_ts;
    // Distance of `scan.head` from `start`, in ring order.
    let mut lin = 0u64;
    loop {
        let (off, seq) = (scan.head.off, scan.head.seq);
        if let Some((rec_off, h, spent, bad)) = scanner.accept(off, seq, ts) {
            let end = rec_off + h.stride();
            let next = scanner.view.norm(end);
            // The unused end of the lap after it, if the next entry goes at 0.
            let skipped = if next == end { 0 } else { cap - end };
            if lin + spent > cap {
                return scan;
            }
            lin += spent + skipped;
            ts = h.ts;
            scan.records += h.records() - bad;
            scan.damaged += bad;
            scan.newest = Some(h);
            scan.head = Pos::at(next, seq + h.records());
            continue;
        }
        match scanner.after_damage(off, seq, ts, lin) {
            Some((at, p)) => {
                scan.damaged += p.seq - seq;
                lin = at;
                scan.head = p;
            }
            None => {
                scan.torn = scanner.view.header_at(off).is_some_and(|h| h.seq == seq);
                return scan;
            }
        }
    }
}

/// What [`scan_forward`] checks entries against: the data area seen from the checkpointed head,
/// the run that wrote after it, and how far it looks past damage.
struct Scanner<'a> {
    view: View<'a>,
    run: u32,
    cap: u64,
    reach: u64,
}

impl Scanner<'_> {
    /// The header at `off` if it chains, with its records that touch a damaged chunk.
    fn valid(&self, off: u64, seq: u64, ts: u64) -> Option<(RecordHeader, u64)> {
        let h = self.view.header_at(off)?;
        let ok = h.seq == seq
            && h.run == self.run
            && h.ts >= ts
            && seq.checked_add(h.records().max(1)).is_some();
        if !ok {
            return None;
        }
        if h.kind == KIND_WRAP {
            return Some((h, 0));
        }
        self.view.entry_check(off, &h).ok().map(|bad| (h, bad))
    }

    /// The entry at `off` (after its wrap marker, if it is one) if it is accepted: its offset,
    /// header, the ring bytes from `off` to its end, and its damaged records.
    fn accept(&self, off: u64, seq: u64, ts: u64) -> Option<(u64, RecordHeader, u64, u64)> {
        let (h, bad) = self.valid(off, seq, ts)?;
        if h.kind != KIND_WRAP {
            return Some((off, h, h.stride(), bad));
        }
        // A wrap marker counts only together with the record it points to.
        match self.valid(0, seq, ts) {
            Some((h0, bad)) if h0.kind != KIND_WRAP => {
                Some((0, h0, self.cap - off + h0.stride(), bad))
            }
            _ => None,
        }
    }

    /// Where the scan goes on after damage (or the end) at `off`, distance `lin` from the
    /// start, where an entry with sequence number `seq` received no earlier than `ts` was
    /// expected: the distance and position of the first entry further on that would be
    /// accepted, with a higher sequence number; `None` if there is none within reach.
    fn after_damage(&self, off: u64, seq: u64, ts: u64, lin: u64) -> Option<(u64, Pos)> {
        // An intact header of this run that carries the expected number gives its length: the
        // next entry is after it. Otherwise its length is unknown.
        let own = self
            .view
            .header_at(off)
            .filter(|h| h.seq == seq && h.run == self.run && h.kind != KIND_WRAP);
        let mut from = lin + own.map_or(ALIGN, |h| h.stride());
        loop {
            // Above the expected number: a damaged entry holds at least one record (a damaged
            // wrap marker loses the entry after it, as a reader resynchronising there does).
            let (at, p, h) = self.view.resync(from, self.reach, seq + 1)?;
            // Each record takes at least a byte of the ring: a sequence number further ahead
            // than the bytes skipped is not this ring's (a forgery in an old payload).
            let plausible = h.run == self.run && h.ts >= ts && h.seq - seq <= at - lin;
            if plausible
                && self
                    .accept(p.off, h.seq, ts)
                    .is_some_and(|(_, _, n, _)| at + n <= self.cap)
            {
                return Some((at, p));
            }
            from = at + ALIGN;
        }
    }
}
