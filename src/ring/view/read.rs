//! Reading the record at a position: the entry's header, the checks of its body, the record
//! inside a lines entry, and where reading goes on after damage (`buffer-spec.md` §7).

use super::chunked::Chunked;
use super::{Damage, Lines, Read, Record, View, IN_DAMAGED_ENTRY};
use crate::ring::format::{Pos, RecordHeader, ALIGN, FLAG_TRUNCATED, KIND_WRAP, RECORD_HEADER};

impl<'a> View<'a> {
    /// Reads the record at `pos`.
    pub fn read(&self, pos: Pos) -> Read<'a> {
        self.read_with(pos, false)
    }

    /// Reads the record at `pos`. A reader entering an entry (`pos.sub == 0`) checks its CRCs
    /// unless it is `fresh`; a later record of the entry was reached through that check and is
    /// read without it (`buffer-spec.md` §7).
    pub(in crate::ring) fn read_with(&self, pos: Pos, fresh: bool) -> Read<'a> {
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

    /// The record `pos` names in the data entry at `off`, whose header `h` holds its sequence
    /// number (its records end before `end`); with `check`, after checking the entry's body.
    fn record_in(&self, off: u64, h: &RecordHeader, end: u64, pos: Pos, check: bool) -> Read<'a> {
        let next_entry = Pos::at(self.norm(off + h.stride()), end);
        if let Some(read) = self.read_if_damaged(off, h, pos, check, next_entry) {
            return read;
        }
        if h.is_lines() {
            self.line_in(off, h, pos, next_entry)
        } else {
            self.plain_record(off, h, next_entry)
        }
    }

    /// Checks the body of the data entry `h` at `off` as [`View::record_in`] was asked to (a
    /// chunked entry also when `pos` is in a partly damaged one), and says what reading at `pos`
    /// gives if the body is damaged; `None` when the record can be taken from the body as it is.
    fn read_if_damaged(
        &self,
        off: u64,
        h: &RecordHeader,
        pos: Pos,
        check: bool,
        next_entry: Pos,
    ) -> Option<Read<'a>> {
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
                Ok(()) => None,
                // Damage to the whole entry: a table whose CRC does not match (the entry's
                // length is known: go on after it), or that the writer got wrong.
                Err(Some(damage)) => Some(self.damaged_body(off, h, pos, damage, next_entry)),
                Err(None) => Some(self.record_in_damaged(&c, off, h, pos, next_entry)),
            }
        } else if check {
            body_check(h, self.payload(off, h))
                .err()
                .map(|damage| self.damaged_body(off, h, pos, damage, next_entry))
        } else {
            None
        }
    }

    /// Reading at `pos` in the data entry `h` at `off`, whose body has `damage`. A lines body
    /// that does not hold `count` records: the count cannot be trusted, so the next entry is
    /// found by its header, as after header damage. Any other damage leaves the header's count
    /// standing: reading goes on at `next_entry`.
    fn damaged_body(
        &self,
        off: u64,
        h: &RecordHeader,
        pos: Pos,
        damage: Damage,
        next_entry: Pos,
    ) -> Read<'a> {
        let next = match damage {
            Damage::Lines { .. } => self.after_damaged(self.lin(off) + h.stride(), pos),
            _ => next_entry,
        };
        Read::Corrupt {
            at: Pos { off, ..pos },
            damage,
            next,
        }
    }

    /// The record of the plain entry `h` at `off` (its body checked if it had to be).
    fn plain_record(&self, off: u64, h: &RecordHeader, next_entry: Pos) -> Read<'a> {
        let body = self.payload(off, h);
        // Padding bytes are unspecified: the LF counts only if it is there.
        let end = (off + RECORD_HEADER) as usize + body.len();
        let line = (u64::from(h.len) + RECORD_HEADER < h.stride() && self.data[end] == b'\n')
            .then(|| &self.data[end - body.len()..=end]);
        Read::Record(Record {
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
        })
    }

    /// The record `pos` names in the lines entry `h` at `off` (its body checked if it had to
    /// be), and the rest of the entry after it.
    fn line_in(&self, off: u64, h: &RecordHeader, pos: Pos, next_entry: Pos) -> Read<'a> {
        let body = self.payload(off, h);
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
                at: Pos { off, ..pos },
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
