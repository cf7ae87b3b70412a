//! Writing (`buffer-spec.md` §9): appending records and lines entries at the head, the wrap
//! point, making room by evicting the oldest records (or refusing, in `block` mode), and keeping
//! every cursor on a record that exists.

use super::*;

impl<B: Backing> Ring<B> {
    /// Appends one record received at `ts_ns` (raised to the newest record's time if the clock
    /// went back) as a plain entry, copying `payload` once into the map. Returns where it was
    /// written.
    pub fn append(
        &mut self,
        payload: &[u8],
        ts_ns: u64,
        truncated: bool,
    ) -> Result<Pos, AppendError> {
        self.reserved = None;
        if payload.len() > self.max_record as usize {
            return Err(AppendError::TooLarge);
        }
        let (wraps, need) = self.placement(payload.len() as u64);
        self.make_room(need)?;
        let at = if wraps { 0 } else { self.meta.head.off };
        let body = (at + RECORD_HEADER) as usize;
        let data = self.data_mut();
        data[body..body + payload.len()].copy_from_slice(payload);
        if RECORD_HEADER + (payload.len() as u64) < record_stride(payload.len() as u64) {
            // An LF in the padding lets a newline-framed output send payload and LF as one.
            data[body + payload.len()] = b'\n';
        }
        Ok(self.write_entry(NewEntry {
            wraps,
            len: payload.len() as u32,
            flags: if truncated { FLAG_TRUNCATED } else { 0 },
            count: 0,
            pcrc: crc32fast::hash(payload),
            ts: ts_ns,
        }))
    }

    /// The largest body a lines entry may have in this ring: what [`Ring::reserve`] takes.
    pub fn lines_max(&self) -> usize {
        let limit = u64::from(self.max_record.max(format::LINES_MAX));
        // The body and its chunk table in a quarter of the ring.
        limit.min(chunked_body_fitting(self.capacity / 4 - RECORD_HEADER)) as usize
    }

    /// Makes room at the head for the body of a lines entry, of `max` bytes, or of at least
    /// `min` bytes if that avoids wrapping: evicts what it must (`drop_oldest`) or refuses
    /// (`block`, [`AppendError::Full`]). Returns the room, which [`Ring::reserved_mut`] gives
    /// to be filled (a socket reads straight into it) and [`Ring::commit_lines`] turns into an
    /// entry. Nothing is written: until it is committed, the room is free space, and any other
    /// append or reserve gives it up (refused or not). `max` above [`Ring::lines_max`], or
    /// below `min`, is refused as [`AppendError::TooLarge`].
    pub fn reserve(&mut self, min: usize, max: usize) -> Result<usize, AppendError> {
        self.reserved = None;
        if min > max || max > self.lines_max() {
            return Err(AppendError::TooLarge);
        }
        let to_end = self.capacity - self.meta.head.off - RECORD_HEADER;
        let to_end = chunked_body_fitting(to_end) as usize;
        let room = if to_end >= min { max.min(to_end) } else { max };
        // Room for the body and, after the part of it the read fills, its chunk table.
        let room_table = room as u64 + chunk_table_len(room as u64);
        let (wraps, need) = self.placement(room_table);
        self.make_room(need)?;
        self.reserved = Some(Reserved { wraps, room });
        Ok(room)
    }

    /// The room [`Ring::reserve`] made (empty if there is none).
    pub fn reserved_mut(&mut self) -> &mut [u8] {
        let Some(r) = self.reserved else {
            return &mut [];
        };
        let at = (if r.wraps { 0 } else { self.meta.head.off } + RECORD_HEADER) as usize;
        &mut self.data_mut()[at..at + r.room]
    }

    /// Commits the first `len` bytes of the reserved room as a lines entry of `count` records
    /// received at `ts_ns`: they must be `count` records, each followed by an LF (the framer
    /// makes them so). Returns where the entry is.
    pub fn commit_lines(&mut self, len: usize, count: u32, ts_ns: u64) -> Result<Pos, NotReserved> {
        let Some(r) = self.reserved.take() else {
            return Err(NotReserved);
        };
        if len > r.room || count == 0 || len < count as usize {
            return Err(NotReserved);
        }
        let at = (if r.wraps { 0 } else { self.meta.head.off } + RECORD_HEADER) as usize;
        // The chunk table goes right after the body, in the room reserved for it: per 4 KiB
        // chunk, its CRC and the LFs up to its end (`buffer-spec.md` §5).
        let table_len = chunk_table_len(len as u64) as usize;
        let (body, table) = self.data_mut()[at..at + len + table_len].split_at_mut(len);
        let mut lfs = 0u32;
        for (chunk, entry) in body
            .chunks(CHUNK as usize)
            .zip(table.chunks_exact_mut(CHUNK_ENTRY as usize))
        {
            lfs += format::count_lfs(chunk);
            entry[..4].copy_from_slice(&crc32fast::hash(chunk).to_le_bytes());
            entry[4..].copy_from_slice(&lfs.to_le_bytes());
        }
        debug_assert!(
            body.last() == Some(&b'\n') && lfs == count,
            "commit_lines: the body is not {count} LF-terminated records"
        );
        let pcrc = crc32fast::hash(table);
        Ok(self.write_entry(NewEntry {
            wraps: r.wraps,
            len: len as u32,
            flags: FLAG_LINES | FLAG_CHUNKED,
            count,
            pcrc,
            ts: ts_ns,
        }))
    }

    /// Whether an entry with a body of `len` bytes at the head wraps, and the ring bytes it
    /// takes then ([`Ring::room_taken`]).
    pub(super) fn placement(&self, len: u64) -> (bool, u64) {
        let wraps = self.meta.head.off + record_stride(len) > self.capacity;
        (wraps, self.room_taken(wraps, len))
    }

    /// The ring bytes an entry with a body of `len` bytes at the head takes: its stride, plus
    /// the unused end of the lap when it goes at offset 0 instead.
    pub(super) fn room_taken(&self, wraps: bool, len: u64) -> u64 {
        let skipped = if wraps {
            self.capacity - self.meta.head.off
        } else {
            0
        };
        skipped + record_stride(len)
    }

    /// Writes the header of an entry whose body is in place (after a wrap marker if it wraps),
    /// header last: until it is complete the entry is not valid (`buffer-spec.md` §6). Moves
    /// the head past it.
    pub(super) fn write_entry(&mut self, e: NewEntry) -> Pos {
        let head = self.meta.head;
        let ts = e.ts.max(self.meta.last_ts);
        let (tail, run) = (self.meta.tail.off, self.meta.run);
        let at = if e.wraps { 0 } else { head.off };
        // The bytes after the header: the body, and a chunk table after it.
        let len = u64::from(e.len)
            + if e.flags & FLAG_CHUNKED != 0 {
                chunk_table_len(u64::from(e.len))
            } else {
                0
            };
        let need = self.room_taken(e.wraps, len);
        let header = |len, kind, flags, pcrc, count| RecordHeader {
            len,
            kind,
            flags,
            seq: head.seq,
            ts,
            tail,
            run,
            pcrc,
            count,
        };
        let entry = header(e.len, KIND_DATA, e.flags, e.pcrc, e.count);
        let data = self.data_mut();
        if e.wraps {
            // `head.off` is normalised, so a header always fits before the end.
            let at = head.off as usize;
            header(0, KIND_WRAP, 0, 0, 0).write(&mut data[at..at + RECORD_HEADER as usize]);
        }
        entry.write(&mut data[at as usize..(at + RECORD_HEADER) as usize]);
        let next_off = self.view().norm(at + record_stride(len));
        self.meta.head = Pos::at(next_off, head.seq + entry.records());
        self.meta.last_ts = ts;
        self.prefault(next_off);
        if self.dirty_bytes == 0 {
            self.dirty_from = head.off;
        }
        self.dirty_bytes += need;
        self.since_meta += need;
        self.appended_bytes += need;
        if self.since_meta > self.capacity / 4 {
            // Keep the recovery scan under a quarter lap even if nobody checkpoints.
            self.write_meta(ts);
        }
        Pos::at(at, head.seq)
    }

    /// When the head at `head_off` enters another [`PREFAULT_STEP`], makes the pages of the
    /// next step (from 0 past the end) writable with `MADV_POPULATE_WRITE`: the work of the
    /// write faults an append would take there (after every sync, which write-protects
    /// them), without a trap per page. Changes no byte.
    pub(super) fn prefault(&mut self, head_off: u64) {
        let step = head_off / PREFAULT_STEP;
        if step == self.prefault_step || self.prefault_step == u64::MAX {
            return;
        }
        self.prefault_step = step;
        let start = match (step + 1) * PREFAULT_STEP {
            s if s >= self.capacity => 0,
            s => s,
        };
        let len = PREFAULT_STEP.min(self.capacity - start);
        let at = (DATA_OFFSET + start) as usize;
        if self.map.populate_write(at, len as usize).is_err() {
            self.prefault_step = u64::MAX;
        }
    }

    pub(super) fn free(&self) -> u64 {
        self.capacity - self.view().used()
    }

    pub(super) fn min_cursor_seq(&self) -> u64 {
        self.meta
            .cursors
            .iter()
            .filter(|c| c.in_use())
            .map(|c| c.pos.seq)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Whether records taking `bytes` of the ring (their strides, plus room for one wrap) can
    /// be appended now without [`AppendError::Full`]: always under `drop_oldest`, under `block`
    /// when the free space and the records every cursor has passed add up to it. Lets a caller
    /// refuse a whole batch instead of taking part of it.
    pub fn has_room(&self, bytes: u64) -> bool {
        if bytes > self.capacity {
            return false;
        }
        if self.when_full == WhenFull::DropOldest {
            return true;
        }
        let slowest = self
            .meta
            .cursors
            .iter()
            .filter(|c| c.in_use())
            .map(|c| c.pos)
            .min_by_key(|p| p.seq);
        let reclaimable = match slowest {
            None => self.view().used(),
            Some(p) if p.seq <= self.meta.tail.seq => 0,
            Some(p) if p.seq >= self.meta.head.seq => self.view().used(),
            Some(p) => self.view().lin(p.off),
        };
        self.free() + reclaimable >= bytes
    }

    pub(super) fn make_room(&mut self, need: u64) -> Result<(), AppendError> {
        while self.free() < need {
            let (next, needed_below) = self.after_tail();
            if self.when_full == WhenFull::Block && self.min_cursor_seq() < needed_below {
                return Err(AppendError::Full);
            }
            self.evict_to(next);
        }
        Ok(())
    }

    /// Where the tail goes when the oldest entry is evicted, and the sequence number below
    /// which a cursor has not delivered all of that entry yet (`block` waits for it): the end of
    /// its records, or the tail's own number plus one for a wrap marker or a damaged entry.
    pub(super) fn after_tail(&self) -> (Pos, u64) {
        let v = self.view();
        let t = self.meta.tail;
        let off = v.norm(t.off);
        match v.header_at(off) {
            Some(h) if h.seq == t.seq && h.kind == KIND_WRAP && off != 0 => {
                (Pos::at(0, t.seq), t.seq + 1)
            }
            Some(h) if h.seq == t.seq && h.kind == KIND_DATA && v.entry_end(&h).is_some() => {
                let next = Pos::at(v.norm(off + h.stride()), t.seq + h.records());
                (next, next.seq)
            }
            // A damaged oldest entry: its length is unknown, skip to the next valid header.
            _ => {
                let next = v
                    .resync(format::ALIGN, v.used(), t.seq + 1)
                    .map_or(self.meta.head, |(_, p, _)| p);
                (next, t.seq + 1)
            }
        }
    }

    /// Drops the oldest entry (the tail moves to `next`); moves cursors that had not delivered
    /// it.
    pub(super) fn evict_to(&mut self, next: Pos) {
        let t = self.meta.tail;
        self.meta.evicted += next.seq - t.seq;
        self.meta.tail = next;
        for c in self.meta.cursors.iter_mut().filter(|c| c.in_use()) {
            if c.pos.seq < next.seq {
                c.lost += next.seq - c.pos.seq;
                c.pos = next;
            }
        }
    }

    /// Cursors that point outside the recovered ring, or at a record that does not carry their
    /// sequence number, are put back on a record.
    pub(super) fn fix_cursors(&mut self) {
        let (tail, head) = (self.meta.tail, self.meta.head);
        for i in 0..MAX_CURSORS {
            let c = self.meta.cursors[i];
            if !c.in_use() {
                continue;
            }
            let pos = if c.pos.seq < tail.seq {
                self.meta.cursors[i].lost += tail.seq - c.pos.seq;
                tail
            } else if c.pos.seq >= head.seq {
                head
            } else {
                // Read back from a slot, the position names the entry: the read checks it and
                // finds the record in it. A damaged body stays where it is, for the output to
                // report and skip; a header that does not hold the record is looked for.
                match self.read(c.pos.recheck()) {
                    Read::Record(r) if r.pos.seq == c.pos.seq => Pos {
                        sub: r.pos.sub,
                        ..c.pos
                    },
                    Read::Corrupt {
                        at,
                        damage: Damage::Payload { .. } | Damage::Lines { .. },
                        ..
                    } if at.seq == c.pos.seq => c.pos.recheck(),
                    _ => self.seek_seq(c.pos.seq),
                }
            };
            self.meta.cursors[i].pos = pos;
        }
    }
}
