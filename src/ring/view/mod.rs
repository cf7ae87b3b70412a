//! Reading a ring's data area: records, damage, resynchronisation, seeks and the recovery scan.
//!
//! Everything here works on a borrowed `&[u8]` (the data area) plus the ring's bounds, so the
//! same code serves the live relay, `ringrelay inspect` (read-only mapping) and the fuzz target
//! (plain bytes). Nothing here writes and nothing here can panic on any content of the bytes: every
//! offset is checked against the capacity before it is sliced.

use super::format::{
    chunk_table_len, record_stride, Pos, RecordHeader, ALIGN, CHUNK, CHUNK_ENTRY, FLAG_TRUNCATED,
    KIND_WRAP, RECORD_HEADER,
};

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

    /// Reads the record at `pos`.
    pub fn read(&self, pos: Pos) -> Read<'a> {
        self.read_with(pos, false)
    }

    /// Reads the record at `pos`. A reader entering an entry (`pos.sub == 0`) checks its CRCs
    /// unless it is `fresh`; a later record of the entry was reached through that check and is
    /// read without it (`buffer-spec.md` §7).
    pub(super) fn read_with(&self, pos: Pos, fresh: bool) -> Read<'a> {
        if pos.seq >= self.head.seq {
            return Read::End;
        }
        if pos.seq < self.tail.seq {
            return Read::Overrun { tail: self.tail };
        }
        let check = !fresh && pos.sub == 0;
        // The tail's sequence number may be held at two positions: its wrap marker's and its
        // entry's at 0. Once the marker is evicted its bytes are free and get overwritten, so
        // a position still naming the marker (a cursor moved there by eviction, a reader's
        // `next`) is read at the tail instead.
        let mut off = if pos.seq == self.tail.seq {
            self.norm(self.tail.off)
        } else {
            self.norm(pos.off)
        };
        // At most one wrap marker precedes an entry.
        for _ in 0..2 {
            let damage = match self.header_with(off, check) {
                Some(h) if h.kind == KIND_WRAP && h.seq == pos.seq && pos.sub == 0 => {
                    off = 0;
                    continue;
                }
                Some(h) if h.kind == KIND_WRAP => Damage::Sequence { found: h.seq },
                Some(h) => match self.entry_end(&h) {
                    // Records past the head: a count no writer wrote.
                    None => Damage::Header,
                    Some(end) if !(h.seq..end).contains(&pos.seq) => {
                        Damage::Sequence { found: h.seq }
                    }
                    Some(end) => return self.record_in(off, &h, end, pos, check),
                },
                None => Damage::Header,
            };
            return Read::Corrupt {
                at: Pos { off, ..pos },
                damage,
                next: self.after_damaged(self.lin(off) + ALIGN, pos),
            };
        }
        // Two wrap markers in a row: the second is damage. (Unreachable while a marker at
        // offset 0 is not acceptable, kept so that no header can loop the reader.)
        Read::Corrupt {
            at: Pos::at(0, pos.seq),
            damage: Damage::Header,
            next: self.after_damaged(self.lin(0) + ALIGN, pos),
        }
    }

    /// The sequence number after the records of the data entry `h`, if they end at or before
    /// the head (a header that says more is damaged, whatever its CRC).
    pub(crate) fn entry_end(&self, h: &RecordHeader) -> Option<u64> {
        h.seq
            .checked_add(h.records())
            .filter(|&end| end <= self.head.seq)
    }

    /// The record `pos` names in the data entry at `off`, whose header `h` holds its sequence
    /// number (its records end before `end`); with `check`, after checking the entry's body.
    fn record_in(&self, off: u64, h: &RecordHeader, end: u64, pos: Pos, check: bool) -> Read<'a> {
        let body = self.payload(off, h);
        let at = Pos { off, ..pos };
        let next_entry = Pos::at(self.norm(off + h.stride()), end);
        if h.is_chunked() && (check || pos.sub == IN_DAMAGED_ENTRY) {
            let c = Chunked::new(self.data, off, h);
            let whole = match c.check_table(h.pcrc) {
                Ok(()) if pos.sub == IN_DAMAGED_ENTRY => Err(None),
                Ok(()) => c
                    .check_all()
                    .map_err(|d| matches!(d, Damage::Lines { .. }).then_some(d)),
                Err(d) => Err(Some(d)),
            };
            match whole {
                Ok(()) => {}
                // Damage to the whole entry: a table whose CRC does not match (the entry's
                // length is known: go on after it), or that the writer got wrong.
                Err(Some(damage)) => {
                    let next = match damage {
                        Damage::Lines { .. } => self.after_damaged(self.lin(off) + h.stride(), pos),
                        _ => next_entry,
                    };
                    return Read::Corrupt { at, damage, next };
                }
                Err(None) => return self.record_in_damaged(&c, off, h, pos, next_entry),
            }
        } else if check {
            if let Err(damage) = body_check(h, body) {
                // A lines body that does not hold `count` records: the count cannot be
                // trusted, so the next entry is found by its header, as after header damage.
                let next = match damage {
                    Damage::Lines { .. } => self.after_damaged(self.lin(off) + h.stride(), pos),
                    _ => next_entry,
                };
                return Read::Corrupt { at, damage, next };
            }
        }
        if !h.is_lines() {
            // Padding bytes are unspecified: the LF counts only if it is there.
            let end = (off + RECORD_HEADER) as usize + body.len();
            let line = (u64::from(h.len) + RECORD_HEADER < h.stride() && self.data[end] == b'\n')
                .then(|| &self.data[end - body.len()..=end]);
            return Read::Record(Record {
                pos: Pos::at(off, h.seq),
                ts: h.ts,
                truncated: h.flags & FLAG_TRUNCATED != 0,
                payload: body,
                line,
                lines: line.map(|bytes| Lines {
                    bytes,
                    records: 1,
                    next: next_entry,
                }),
                next: next_entry,
            });
        }
        // The record starts after the LF of the one before it: where `sub` says, once a reader
        // found it, or found by counting LFs from the start of the body.
        let nth = pos.seq - h.seq;
        let sub = pos.sub as usize;
        let start = if nth == 0 {
            Some(0)
        } else if sub > 0 && sub < body.len() && body[sub - 1] == b'\n' {
            Some(sub)
        } else {
            memchr::memchr_iter(b'\n', body)
                .nth(nth as usize - 1)
                .map(|i| i + 1)
        };
        let end = start.and_then(|s| memchr::memchr(b'\n', &body[s..]).map(|n| s + n));
        let (Some(start), Some(end)) = (start, end) else {
            // Only an unchecked entry (fresh, or entered before) can get here.
            let found = memchr::memchr_iter(b'\n', body).count() as u64;
            return Read::Corrupt {
                at,
                damage: Damage::Lines {
                    count: h.count,
                    found,
                },
                next: self.after_damaged(self.lin(off) + h.stride(), pos),
            };
        };
        let next = if end + 1 == body.len() {
            next_entry
        } else {
            Pos {
                off,
                seq: pos.seq + 1,
                sub: (end + 1) as u32,
            }
        };
        Read::Record(Record {
            pos: Pos {
                off,
                seq: pos.seq,
                sub: start as u32,
            },
            ts: h.ts,
            truncated: false,
            payload: &body[start..end],
            line: Some(&body[start..=end]),
            lines: Some(Lines {
                bytes: &body[start..],
                records: next_entry.seq - pos.seq,
                next: next_entry,
            }),
            next,
        })
    }

    /// The record `pos` names in the chunked lines entry at `off`, whose table is intact and
    /// some of whose chunks are not: the record is valid when every chunk it touches is
    /// (`buffer-spec.md` §7). The next position checks again.
    fn record_in_damaged(
        &self,
        c: &Chunked<'a>,
        off: u64,
        h: &RecordHeader,
        pos: Pos,
        next_entry: Pos,
    ) -> Read<'a> {
        let at = Pos { off, ..pos };
        let k = (pos.seq - h.seq) as u32;
        let in_entry = |j: Option<u32>| {
            j.map_or(next_entry, |j| Pos {
                off,
                seq: h.seq + u64::from(j),
                sub: IN_DAMAGED_ENTRY,
            })
        };
        let (first, last) = c.span(k);
        if let Some(e) = c.last_damaged(first, last) {
            return Read::Corrupt {
                at,
                damage: Damage::Payload {
                    stored: c.stored(e),
                    computed: c.computed(e),
                },
                next: in_entry(c.next_intact(c.lfs(e) + 1)),
            };
        }
        let start = c.start(k);
        let end = start.and_then(|s| memchr::memchr(b'\n', &c.body[s..]).map(|n| s + n));
        let (Some(start), Some(end)) = (start, end) else {
            // An intact chunk that does not hold the LFs its table counts: a writer bug.
            return Read::Corrupt {
                at,
                damage: Damage::Lines {
                    count: h.count,
                    found: memchr::memchr_iter(b'\n', c.body).count() as u64,
                },
                next: next_entry,
            };
        };
        let next = in_entry((k + 1 < h.count).then_some(k + 1));
        let line = &c.body[start..=end];
        Read::Record(Record {
            // Looked for again, it is checked again: a position inside a partly damaged entry
            // never leads a reader on without checking the chunks.
            pos: Pos {
                off,
                seq: pos.seq,
                sub: IN_DAMAGED_ENTRY,
            },
            ts: h.ts,
            truncated: false,
            payload: &c.body[start..end],
            line: Some(line),
            lines: Some(Lines {
                bytes: line,
                records: 1,
                next,
            }),
            next,
        })
    }

    /// Checks the body of the data entry `h` at `off` (`buffer-spec.md` §5): how many of its
    /// records touch a damaged chunk (0 unless it is chunked), or what is wrong with it whole.
    pub(crate) fn entry_check(&self, off: u64, h: &RecordHeader) -> Result<u64, Damage> {
        if !h.is_chunked() {
            return body_check(h, self.payload(off, h)).map(|()| 0);
        }
        let c = Chunked::new(self.data, off, h);
        c.check_table(h.pcrc)?;
        match c.check_all() {
            Ok(()) => Ok(0),
            Err(d @ Damage::Lines { .. }) => Err(d),
            Err(_) => Ok(c.damaged_records()),
        }
    }

    /// Where reading goes on after damage at `pos`: the first acceptable header at or after
    /// distance `from` from the tail whose sequence number is above `pos`'s (the head if none).
    fn after_damaged(&self, from: u64, pos: Pos) -> Pos {
        self.resync(from, self.used(), pos.seq + 1)
            .map_or(self.head, |(_, p, _)| p)
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

/// Checks an entry's body against its header: the CRC, and for a lines entry that it is
/// `count` records each followed by an LF (`buffer-spec.md` §5).
fn body_check(h: &RecordHeader, body: &[u8]) -> Result<(), Damage> {
    let computed = crc32fast::hash(body);
    if computed != h.pcrc {
        return Err(Damage::Payload {
            stored: h.pcrc,
            computed,
        });
    }
    if h.is_lines() {
        let found = memchr::memchr_iter(b'\n', body).count() as u64;
        if found != u64::from(h.count) || body.last() != Some(&b'\n') {
            return Err(Damage::Lines {
                count: h.count,
                found,
            });
        }
    }
    Ok(())
}

/// The body and chunk table of a chunked lines entry (`buffer-spec.md` §5).
struct Chunked<'a> {
    body: &'a [u8],
    table: &'a [u8],
    count: u32,
}

impl<'a> Chunked<'a> {
    /// The entry with header `h` at `off` (acceptable, so its body and table are in the area).
    fn new(data: &'a [u8], off: u64, h: &RecordHeader) -> Chunked<'a> {
        let start = (off + RECORD_HEADER) as usize;
        let len = h.len as usize;
        let table = chunk_table_len(len as u64) as usize;
        Chunked {
            body: &data[start..start + len],
            table: &data[start + len..start + len + table],
            count: h.count,
        }
    }

    fn chunks(&self) -> usize {
        self.table.len() / CHUNK_ENTRY as usize
    }

    fn field(&self, i: usize, at: usize) -> u32 {
        let o = i * CHUNK_ENTRY as usize + at;
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.table[o..o + 4]);
        u32::from_le_bytes(b)
    }

    /// The CRC the table holds for chunk `i`.
    fn stored(&self, i: usize) -> u32 {
        self.field(i, 0)
    }

    /// LFs in the body up to the end of chunk `i`.
    fn lfs(&self, i: usize) -> u32 {
        self.field(i, 4)
    }

    fn lfs_before(&self, i: usize) -> u32 {
        if i == 0 {
            0
        } else {
            self.lfs(i - 1)
        }
    }

    fn chunk(&self, i: usize) -> &'a [u8] {
        let s = i * CHUNK as usize;
        &self.body[s..(s + CHUNK as usize).min(self.body.len())]
    }

    fn computed(&self, i: usize) -> u32 {
        crc32fast::hash(self.chunk(i))
    }

    /// The table's CRC is `pcrc`, and its LF counts can be: never decreasing, at most a
    /// chunk's bytes per chunk, `count` at the end.
    fn check_table(&self, pcrc: u32) -> Result<(), Damage> {
        let computed = crc32fast::hash(self.table);
        if computed != pcrc {
            return Err(Damage::Payload {
                stored: pcrc,
                computed,
            });
        }
        let mut before = 0u32;
        for i in 0..self.chunks() {
            let lfs = self.lfs(i);
            if lfs < before || (lfs - before) as usize > self.chunk(i).len() {
                return Err(Damage::Lines {
                    count: self.count,
                    found: u64::from(lfs),
                });
            }
            before = lfs;
        }
        if before != self.count {
            return Err(Damage::Lines {
                count: self.count,
                found: u64::from(before),
            });
        }
        Ok(())
    }

    /// After [`Chunked::check_table`]: every chunk intact and holding the LFs its table entry
    /// counts, the last byte an LF. The first damaged chunk's CRCs otherwise.
    fn check_all(&self) -> Result<(), Damage> {
        for i in 0..self.chunks() {
            let computed = self.computed(i);
            if computed != self.stored(i) {
                return Err(Damage::Payload {
                    stored: self.stored(i),
                    computed,
                });
            }
        }
        for i in 0..self.chunks() {
            let found = u64::from(super::format::count_lfs(self.chunk(i)));
            if found + u64::from(self.lfs_before(i)) != u64::from(self.lfs(i)) {
                return Err(Damage::Lines {
                    count: self.count,
                    found: found + u64::from(self.lfs_before(i)),
                });
            }
        }
        if self.body.last() != Some(&b'\n') {
            return Err(Damage::Lines {
                count: self.count,
                found: u64::from(self.count) - 1,
            });
        }
        Ok(())
    }

    /// The chunk that holds LF number `j` (from 0; `j < count`).
    fn chunk_of_lf(&self, j: u32) -> usize {
        let (mut lo, mut hi) = (0, self.chunks() - 1);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.lfs(mid) > j {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }

    /// The chunks record `k` touches: from the one holding the LF before it (the first for
    /// record 0) to the one holding its own LF.
    fn span(&self, k: u32) -> (usize, usize) {
        let first = if k == 0 { 0 } else { self.chunk_of_lf(k - 1) };
        (first, self.chunk_of_lf(k))
    }

    fn last_damaged(&self, first: usize, last: usize) -> Option<usize> {
        (first..=last)
            .rev()
            .find(|&i| self.computed(i) != self.stored(i))
    }

    /// The first record from `k` on that touches no damaged chunk.
    fn next_intact(&self, mut k: u32) -> Option<u32> {
        while k < self.count {
            let (first, last) = self.span(k);
            match self.last_damaged(first, last) {
                None => return Some(k),
                // Every record up to the one after that chunk's last LF touches it.
                Some(e) => k = self.lfs(e) + 1,
            }
        }
        None
    }

    /// Where record `k` starts in the body: after the LF before it, counted in its chunk.
    fn start(&self, k: u32) -> Option<usize> {
        if k == 0 {
            return Some(0);
        }
        let c = self.chunk_of_lf(k - 1);
        let nth = (k - 1 - self.lfs_before(c)) as usize;
        memchr::memchr_iter(b'\n', self.chunk(c))
            .nth(nth)
            .map(|i| c * CHUNK as usize + i + 1)
    }

    /// Records that touch a damaged chunk.
    fn damaged_records(&self) -> u64 {
        let bad: Vec<bool> = (0..self.chunks())
            .map(|i| self.computed(i) != self.stored(i))
            .collect();
        (0..self.count)
            .filter(|&k| {
                let (first, last) = self.span(k);
                bad[first..=last].iter().any(|&b| b)
            })
            .count() as u64
    }
}

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
    let len = u64::from(max_record.max(super::format::LINES_MAX));
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
    let view = View {
        data,
        max_record,
        run,
        // The scan takes only entries of `run` itself.
        run_starts: &[],
        tail: start,
        head: Pos::at(start.off, u64::MAX),
    };
    // The header at `off` if it chains, with its records that touch a damaged chunk.
    let valid = |off: u64, seq: u64, ts: u64| -> Option<(RecordHeader, u64)> {
        let h = view.header_at(off)?;
        let ok = h.seq == seq
            && h.run == run
            && h.ts >= ts
            && seq.checked_add(h.records().max(1)).is_some();
        if !ok {
            return None;
        }
        if h.kind == KIND_WRAP {
            return Some((h, 0));
        }
        view.entry_check(off, &h).ok().map(|bad| (h, bad))
    };
    // The entry at `off` (after its wrap marker, if it is one) if it is accepted: its offset,
    // header, the ring bytes from `off` to its end, and its damaged records.
    let accept = |off: u64, seq: u64, ts: u64| -> Option<(u64, RecordHeader, u64, u64)> {
        let (h, bad) = valid(off, seq, ts)?;
        if h.kind != KIND_WRAP {
            return Some((off, h, h.stride(), bad));
        }
        // A wrap marker counts only together with the record it points to.
        match valid(0, seq, ts) {
            Some((h0, bad)) if h0.kind != KIND_WRAP => Some((0, h0, cap - off + h0.stride(), bad)),
            _ => None,
        }
    };
    let reach = salvage_reach(cap, max_record);
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
        if let Some((rec_off, h, spent, bad)) = accept(off, seq, ts) {
            let end = rec_off + h.stride();
            let next = view.norm(end);
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
        // Damage, or the end. An intact header of this run that carries the expected number
        // gives its length: the next entry is after it. Otherwise its length is unknown.
        let own = view
            .header_at(off)
            .filter(|h| h.seq == seq && h.run == run && h.kind != KIND_WRAP);
        let mut from = lin + own.map_or(ALIGN, |h| h.stride());
        let found = loop {
            // Above the expected number: a damaged entry holds at least one record (a damaged
            // wrap marker loses the entry after it, as a reader resynchronising there does).
            let Some((at, p, h)) = view.resync(from, reach, seq + 1) else {
                break None;
            };
            // Each record takes at least a byte of the ring: a sequence number further ahead
            // than the bytes skipped is not this ring's (a forgery in an old payload).
            let plausible = h.run == run && h.ts >= ts && h.seq - seq <= at - lin;
            if plausible && accept(p.off, h.seq, ts).is_some_and(|(_, _, n, _)| at + n <= cap) {
                break Some((at, p));
            }
            from = at + ALIGN;
        };
        match found {
            Some((at, p)) => {
                scan.damaged += p.seq - seq;
                lin = at;
                scan.head = p;
            }
            None => {
                scan.torn = view.header_at(off).is_some_and(|h| h.seq == seq);
                return scan;
            }
        }
    }
}
