//! Reading a ring's data area: records, damage, resynchronisation, seeks and the recovery scan.
//!
//! Everything here works on a borrowed `&[u8]` (the data area) plus the ring's bounds, so the
//! same code serves the live relay, `ringrelay inspect` (read-only mapping) and the fuzz target
//! (plain bytes). Nothing here writes and nothing here can panic on any content of the bytes: every
//! offset is checked against the capacity before it is sliced.

//!
//! The parts: this file holds the types and the view's bounds, resynchronisation and seeks;
//! `read.rs` reads the record at a position (the record walker, `buffer-spec.md` §7);
//! `chunked.rs` reads the chunk table of a chunked lines entry; `scan.rs` is the recovery's scan
//! past the checkpointed head (§8).

mod chunked;
mod read;
mod scan;

pub use scan::{salvage_reach, scan_forward, Scan};

use super::format::{Pos, RecordHeader, ALIGN, KIND_WRAP, RECORD_HEADER};

/// `Pos::sub` of a record in a chunked lines entry found partly damaged: reading it checks the
/// chunk table and the chunks the record touches, since a position does not remember which
/// chunks of its entry are intact (`buffer-spec.md` §7).
pub const IN_DAMAGED_ENTRY: u32 = u32::MAX;

/// What is wrong with a damaged entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The header's CRC does not match, its kind is unknown, or it does not fit the ring: its
    /// length cannot be trusted, so the reader resynchronised on the next valid header.
    Header,
    /// The header is intact but carries another sequence number than the one expected here.
    Sequence {
        /// The sequence number found.
        found: u64,
    },
    /// The header is intact but the body's CRC does not match.
    Payload {
        /// CRC stored in the header.
        stored: u32,
        /// CRC of the bytes found.
        computed: u32,
    },
    /// The header and the body's CRC are intact but the body of a lines entry does not hold the
    /// LF-terminated records its header counts: a writer bug, never delivered all the same.
    Lines {
        /// Records the header counts.
        count: u32,
        /// LFs in the body.
        found: u64,
    },
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Header => write!(
                f,
                "record header damaged (CRC mismatch or impossible fields)"
            ),
            Damage::Sequence { found } => write!(f, "unexpected sequence number {found}"),
            Damage::Payload { stored, computed } => write!(
                f,
                "payload CRC mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
            Damage::Lines { count, found } => write!(
                f,
                "lines entry does not hold the {count} LF-terminated records its header counts ({found} LFs)"
            ),
        }
    }
}

/// A record and the rest of its entry as LF-terminated lines: what a newline-framed output
/// sends as one piece.
#[derive(Clone, Copy, Debug)]
pub struct Lines<'a> {
    /// This record and every later one of its entry, each followed by an LF.
    pub bytes: &'a [u8],
    /// How many records those are.
    pub records: u64,
    /// Where the record after them is.
    pub next: Pos,
}

/// One valid record, borrowed from the ring.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Where it is.
    pub pos: Pos,
    /// Receive time, ns since the Unix epoch.
    pub ts: u64,
    /// The payload was cut at the feed's `max_record_bytes`.
    pub truncated: bool,
    /// The record's bytes.
    pub payload: &'a [u8],
    /// The payload and the LF after it, in a lines entry, or when the padding of a plain entry
    /// starts with one (the writer puts it there, `buffer-spec.md` §5).
    pub line: Option<&'a [u8]>,
    /// This record and the rest of its entry, when they are LF-terminated in the ring (`line`
    /// is there).
    pub lines: Option<Lines<'a>>,
    /// Where the next record is.
    pub next: Pos,
}

impl<'a> Record<'a> {
    /// [`Record::lines`], cut after the last whole record that fits in `room` bytes (after the
    /// first record, whatever its length).
    pub fn lines_within(&self, room: usize) -> Option<Lines<'a>> {
        let lines = self.lines?;
        if lines.bytes.len() <= room {
            return Some(lines);
        }
        let last_lf = memchr::memrchr(b'\n', &lines.bytes[..room])
            .or_else(|| memchr::memchr(b'\n', lines.bytes))?;
        let cut = last_lf + 1;
        if cut == lines.bytes.len() {
            return Some(lines);
        }
        let records = memchr::memchr_iter(b'\n', &lines.bytes[..cut]).count() as u64;
        Some(Lines {
            bytes: &lines.bytes[..cut],
            records,
            next: Pos {
                off: self.pos.off,
                seq: self.pos.seq + records,
                sub: self.pos.sub + cut as u32,
            },
        })
    }
}

/// The outcome of reading at a position.
#[derive(Clone, Copy, Debug)]
pub enum Read<'a> {
    /// A valid record.
    Record(Record<'a>),
    /// Nothing more: the position is the head.
    End,
    /// The position's record has been overwritten; the oldest record is at `tail`.
    Overrun {
        /// Where reading can go on.
        tail: Pos,
    },
    /// The record at `at` is damaged and must be skipped; reading goes on at `next`, and
    /// `next.seq - at.seq` records are lost.
    Corrupt {
        /// The damaged record's position.
        at: Pos,
        /// What is wrong with it.
        damage: Damage,
        /// The next valid record (or the head).
        next: Pos,
    },
}

/// A data area and the bounds that make sense of it.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    /// The data area (`capacity` bytes).
    pub data: &'a [u8],
    /// Largest valid payload.
    pub max_record: u32,
    /// Records with a higher run number than this are not valid.
    pub run: u32,
    /// Where runs began (`(run, seq)`; `run` 0: none): an entry of an earlier run than `run`
    /// whose records reach `seq` is a leftover its recovery dropped, not a record
    /// (`buffer-spec.md` §5).
    pub run_starts: &'a [(u32, u64)],
    /// The oldest record.
    pub tail: Pos,
    /// Where the next record will go.
    pub head: Pos,
}

impl<'a> View<'a> {
    fn cap(&self) -> u64 {
        self.data.len() as u64
    }

    /// Where a record at `off` really starts: fewer than a header's bytes before the end of the
    /// data area are never used, and reading continues at offset 0.
    pub fn norm(&self, off: u64) -> u64 {
        if off.saturating_add(RECORD_HEADER) > self.cap() {
            0
        } else {
            off
        }
    }

    /// Bytes from the tail to the head (the wasted end of a lap included).
    pub fn used(&self) -> u64 {
        if self.tail.seq == self.head.seq {
            return 0;
        }
        // Both offsets are below the capacity (valid slots and normalised positions), so no
        // division: the writer asks this before every append.
        let (head, tail, cap) = (self.head.off, self.tail.off, self.cap());
        debug_assert!(
            head < cap && tail < cap,
            "head {head} tail {tail} capacity {cap}"
        );
        if head > tail {
            head - tail
        } else {
            head + cap - tail
        }
    }

    /// Distance of data offset `off` from the tail, in ring order.
    pub(crate) fn lin(&self, off: u64) -> u64 {
        (off % self.cap() + self.cap() - self.tail.off % self.cap()) % self.cap()
    }

    fn off_of(&self, lin: u64) -> u64 {
        (self.tail.off + lin) % self.cap()
    }

    /// The header at `off` if its CRC matches and it fits this ring (length, bounds, run).
    pub fn header_at(&self, off: u64) -> Option<RecordHeader> {
        self.header_with(off, true)
    }

    /// [`View::header_at`], with the header CRC checked only with `check_crc`.
    fn header_with(&self, off: u64, check_crc: bool) -> Option<RecordHeader> {
        if !off.is_multiple_of(ALIGN) || off.checked_add(RECORD_HEADER)? > self.cap() {
            return None;
        }
        let bytes = &self.data[off as usize..(off + RECORD_HEADER) as usize];
        let h = RecordHeader::parse_with(bytes, check_crc)?;
        let fits = match h.kind {
            KIND_WRAP => off != 0,
            _ => h.len <= h.max_len(self.max_record) && off + h.stride() <= self.cap(),
        };
        // The entry's last record (a wrap marker's: the one it carries). A recovery kept the
        // records of earlier runs up to its run start, never one past it: an entry of an
        // earlier run that reaches a run start was dropped, even if it begins before it.
        let last = h.seq.saturating_add(h.records().max(1) - 1);
        let of_its_run = h.run <= self.run
            && self
                .run_starts
                .iter()
                .all(|&(run, seq)| run == 0 || last < seq || h.run >= run);
        (fits && of_its_run).then_some(h)
    }

    fn payload(&self, off: u64, h: &RecordHeader) -> &'a [u8] {
        let start = (off + RECORD_HEADER) as usize;
        &self.data[start..start + h.len as usize]
    }

    /// The sequence number after the records of the data entry `h`, if they end at or before
    /// the head (a header that says more is damaged, whatever its CRC).
    pub(crate) fn entry_end(&self, h: &RecordHeader) -> Option<u64> {
        h.seq
            .checked_add(h.records())
            .filter(|&end| end <= self.head.seq)
    }

    /// The first valid header at or after distance `from` from the tail and before `end`, whose
    /// sequence number is at least `min_seq` and below the head's: its distance, position and
    /// header. A header that does not chain is never the answer of a single damaged record: the
    /// next record after it starts within `record_stride(max_record)` bytes (`buffer-spec.md`
    /// §7), but the scan goes on to `end` so that a zeroed page is also skipped.
    pub fn resync(&self, from: u64, end: u64, min_seq: u64) -> Option<(u64, Pos, RecordHeader)> {
        let mut lin = from.next_multiple_of(ALIGN);
        while lin < end {
            let off = self.off_of(lin);
            if off + RECORD_HEADER > self.cap() {
                lin += self.cap() - off;
                continue;
            }
            if let Some(h) = self.header_at(off) {
                if h.seq >= min_seq && h.seq < self.head.seq {
                    return Some((lin, Pos::at(off, h.seq), h));
                }
            }
            lin += ALIGN;
        }
        None
    }

    /// The first record for which `before(seq, ts)` is false, given that it is true for a prefix
    /// of the ring and false for the rest; the head if it is true for every record. A binary
    /// search over byte distance, resynchronising on record headers at each probe: O(log n)
    /// probes of at most one record's bytes each.
    pub fn seek(&self, before: impl Fn(u64, u64) -> bool) -> Pos {
        let tail_hdr = match self.read(self.tail) {
            Read::Record(r) => Some((r.pos.seq, r.ts)),
            _ => None,
        };
        match tail_hdr {
            None if self.tail.seq >= self.head.seq => return self.head,
            Some((seq, ts)) if !before(seq, ts) => return self.tail,
            _ => {}
        }
        let (mut lo_lin, mut lo) = (0u64, self.tail);
        let mut hi_lin = self.used();
        while hi_lin - lo_lin > 4 * crate::ring::format::PAGE {
            let mid = lo_lin + (hi_lin - lo_lin) / 2;
            match self.resync(mid, hi_lin, lo.seq + 1) {
                None => hi_lin = mid,
                Some((lin, p, h)) if before(h.seq, h.ts) => (lo_lin, lo) = (lin, p),
                Some((lin, _, _)) => hi_lin = lin,
            }
        }
        let mut pos = lo;
        loop {
            match self.read(pos) {
                Read::Record(r) if !before(r.pos.seq, r.ts) => return pos,
                Read::Record(r) => pos = r.next,
                Read::Corrupt { next, .. } => pos = next,
                Read::End => return self.head,
                Read::Overrun { tail } => pos = tail,
            }
        }
    }

    /// The position of the record with sequence number `seq` (the tail if it was overwritten,
    /// the head if it is not written yet).
    pub fn seek_seq(&self, seq: u64) -> Pos {
        if seq <= self.tail.seq {
            return self.tail;
        }
        if seq >= self.head.seq {
            return self.head;
        }
        self.seek(|s, _| s < seq)
    }

    /// The first record received at or after `ts_ns`.
    pub fn seek_time(&self, ts_ns: u64) -> Pos {
        self.seek(|_, ts| ts < ts_ns)
    }

    /// Every damaged record between tail and head, in order.
    pub fn verify(&self) -> Vec<(Pos, Damage, u64)> {
        let mut found = Vec::new();
        let mut pos = self.tail;
        loop {
            match self.read(pos) {
                Read::Record(r) => pos = r.next,
                Read::Corrupt { at, damage, next } => {
                    found.push((at, damage, next.seq - at.seq));
                    pos = next;
                }
                Read::End | Read::Overrun { .. } => return found,
            }
        }
    }
}
