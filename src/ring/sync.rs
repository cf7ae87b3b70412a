//! Checkpoints and syncs (`buffer-spec.md` §4, §10): the metadata slots written in turn, never
//! over the slot the last completed sync made durable; data synced before the slot that covers
//! it; in the loop, in the kernel's background, or by the sync helper process.

use super::*;

impl<B: Backing> Ring<B> {
    pub(super) fn write_meta(&mut self, now_ns: u64) -> usize {
        self.meta.generation += 1;
        // Never over the slot of the last completed sync: two slot writes without a sync
        // between them would put the second there, and a power loss that tears it would
        // leave only the other slot, which may be a lap old. Generations may skip a number.
        if self.durable_slot == Some((self.meta.generation % 2) as usize) {
            self.meta.generation += 1;
        }
        self.meta.checkpoint_ns = now_ns;
        // The tail moved: the run starts that guard only evicted records go.
        self.meta.prune_run_starts();
        let slot = (self.meta.generation % 2) as usize;
        let at = SLOT_OFFSETS[slot] as usize;
        let meta = self.meta.clone();
        meta.write(&mut self.map[at..at + META_LEN]);
        self.since_meta = 0;
        slot
    }

    /// Forces the records appended since the last sync to disk (`msync`), after waiting for a
    /// background sync in flight, which has the records appended before it.
    pub fn sync_data(&mut self) -> io::Result<()> {
        match &mut self.background {
            Background::Ready(b) => {
                self.map.background_sync_finished(b, true)?;
                self.sync_completed();
            }
            Background::Helper {
                in_flight: true, ..
            } => {
                // The records handed to the helper are not known to be on disk: one sync of
                // the whole file here has them and everything since.
                let len = self.map.len();
                self.map.flush_range(0, len)?;
                self.sync_completed();
                self.mark_synced();
                return Ok(());
            }
            _ => {}
        }
        if self.dirty_bytes == 0 {
            return Ok(());
        }
        let data = DATA_OFFSET as usize;
        if self.dirty_bytes >= self.capacity {
            self.map.flush_range(data, self.capacity as usize)?;
        } else {
            let end = self.dirty_from + self.dirty_bytes;
            let first = end.min(self.capacity) - self.dirty_from;
            self.map
                .flush_range(data + self.dirty_from as usize, first as usize)?;
            if end > self.capacity {
                self.map.flush_range(data, (end - self.capacity) as usize)?;
            }
        }
        self.mark_synced();
        Ok(())
    }

    /// After a sync (done, or started in the background) of everything appended so far:
    /// nothing is dirty, no writeback is pending, nothing is fresh.
    pub(super) fn mark_synced(&mut self) {
        self.dirty_bytes = 0;
        self.writeback_started = 0;
        self.writeback_mark = (0, self.meta.head.seq);
        self.fresh_from = self.meta.head.seq;
    }

    /// Starts the disk writes of records appended since the last sync, without waiting for
    /// them, once [`WRITEBACK_STEP`] more bytes were appended since the last call that did: of
    /// the whole pages up to where the head was at that call. The next [`Ring::sync_data`] then
    /// finds most pages written and waits only for the rest, so the disk writes while the relay
    /// works. Nothing is durable before that sync.
    ///
    /// The step between the head and what is handed to the disk keeps the newest records
    /// *fresh* (see [`Ring::read`]): the pages an output is about to send from are still the
    /// ones this process wrote, never written out and read back.
    ///
    /// Does nothing once the ring syncs in the background ([`Ring::checkpoint_in_background`]).
    pub fn start_writeback(&mut self) -> io::Result<()> {
        if let Background::Ready(_) | Background::Helper { .. } = self.background {
            // The background sync writes them without holding the loop, where
            // `sync_file_range` blocks once the disk's queue is full.
            return Ok(());
        }
        let head = self.dirty_bytes;
        if head < self.writeback_mark.0 + WRITEBACK_STEP.min(self.capacity / 8) {
            return Ok(());
        }
        // Linear positions count bytes from `dirty_from`; whole pages only.
        let to = ((self.dirty_from + self.writeback_mark.0) & !(PAGE - 1))
            .saturating_sub(self.dirty_from);
        let from = self.writeback_started;
        if to > from {
            let len = (to - from).min(self.capacity);
            let start = (self.dirty_from + from) % self.capacity;
            let first = len.min(self.capacity - start);
            self.map.start_writeback(DATA_OFFSET + start, first)?;
            if len > first {
                self.map.start_writeback(DATA_OFFSET, len - first)?;
            }
            self.writeback_started = to;
        }
        self.fresh_from = self.writeback_mark.1;
        self.writeback_mark = (head, self.meta.head.seq);
        Ok(())
    }

    /// Moves the head (and tail) of an empty ring to `pos`: the long-life tests start rings
    /// near the top of the sequence and offset ranges with it. Returns false (and does nothing)
    /// if the ring holds records or `pos` is not a valid record start.
    pub fn reset_empty_at(&mut self, pos: Pos) -> bool {
        let valid =
            pos.off.is_multiple_of(format::ALIGN) && pos.off <= self.capacity - RECORD_HEADER;
        if self.meta.tail.seq != self.meta.head.seq || !valid {
            return false;
        }
        self.meta.tail = pos;
        self.meta.head = pos;
        self.writeback_mark.1 = pos.seq;
        self.fresh_from = pos.seq;
        for c in self.meta.cursors.iter_mut().filter(|c| c.in_use()) {
            c.pos = pos;
        }
        true
    }

    /// Writes the ring's state (head, tail, cursors) to the older metadata slot. With `sync`,
    /// first forces the records to disk, then the slot: after a power loss the slot never
    /// points past records that are not on disk.
    pub fn checkpoint(&mut self, now_ns: u64, sync: bool) -> io::Result<()> {
        // Whatever the sync policy, nothing stays fresh longer than a checkpoint interval:
        // the kernel may write pages out on its own.
        self.fresh_from = self.meta.head.seq;
        if sync {
            self.sync_data()?;
        }
        let slot = self.write_meta(now_ns);
        if sync {
            self.map
                .flush_range(SLOT_OFFSETS[slot] as usize, PAGE as usize)?;
            self.durable_slot = Some(slot);
            self.syncing_slot = None;
        }
        Ok(())
    }

    /// `sync = "interval"` without holding the event loop: writes the older metadata slot, then
    /// starts an `fdatasync` of the file in the kernel's background (`buffer-spec.md` §10) and
    /// returns; with a sync helper ([`Ring::set_sync_helper`]), leaves that sync to the caller
    /// ([`BackgroundCheckpoint::ForHelper`]). Once it finishes, the records appended before this call and the slot are on
    /// disk. If the previous one has not finished (the disk is slower than the period), writes
    /// the slot only and returns [`BackgroundCheckpoint::Busy`].
    pub fn checkpoint_in_background(&mut self, now_ns: u64) -> io::Result<BackgroundCheckpoint> {
        match self.background {
            Background::Ready(_) | Background::Helper { .. } => {}
            Background::Refused => return Ok(BackgroundCheckpoint::Unavailable(None)),
            Background::Untried => match self.map.background_sync() {
                Ok(b) => self.background = Background::Ready(b),
                Err(e) => {
                    self.background = Background::Refused;
                    return Ok(BackgroundCheckpoint::Unavailable(Some(e)));
                }
            },
        }
        let finished = self.background_sync_finished()?;
        // As in `checkpoint`: nothing stays fresh longer than a checkpoint interval.
        self.fresh_from = self.meta.head.seq;
        let slot = self.write_meta(now_ns);
        if !finished {
            self.syncs_behind += 1;
            return Ok(BackgroundCheckpoint::Busy);
        }
        if let Background::Helper { in_flight, .. } = &mut self.background {
            // Everything appended so far is in the sync the caller hands to the helper.
            *in_flight = true;
            self.syncing_slot = Some(slot);
            self.mark_synced();
            return Ok(BackgroundCheckpoint::ForHelper);
        }
        if let Background::Ready(b) = &mut self.background {
            if let Err(e) = self.map.start_background_sync(b) {
                // EINVAL: the file system has no fsync for AIO; EAGAIN: the kernel is out of
                // AIO resources. Either way nothing started: sync in the loop from now on. (A
                // sync that starts and fails, EIO, is an error of the next `finished`, as of
                // an msync.)
                self.background = Background::Refused;
                return Ok(BackgroundCheckpoint::Unavailable(Some(e)));
            }
        }
        // Everything appended so far is in that sync.
        self.syncing_slot = Some(slot);
        self.mark_synced();
        Ok(BackgroundCheckpoint::Started)
    }

    /// Whether the background sync started last has finished (true when there is none); its
    /// error, if it failed.
    pub fn background_sync_finished(&mut self) -> io::Result<bool> {
        let done = match &mut self.background {
            Background::Ready(b) => self.map.background_sync_finished(b, false),
            Background::Helper { in_flight, failed } => match failed.take() {
                Some(e) => Err(e),
                None => Ok(!*in_flight),
            },
            _ => Ok(true),
        };
        if matches!(done, Ok(true)) {
            self.sync_completed();
        }
        done
    }

    /// The sync in flight completed: the slot written when it started is the durable one.
    pub(super) fn sync_completed(&mut self) {
        if let Some(slot) = self.syncing_slot.take() {
            self.durable_slot = Some(slot);
        }
    }

    /// With `on`, [`Ring::checkpoint_in_background`] leaves the sync to the relay's sync
    /// helper process from now on ([`BackgroundCheckpoint::ForHelper`]); without, it goes back
    /// to the kernel's background sync. Turning it off while a sync handed to the helper was
    /// not reported done (the helper is gone) syncs the file here, waiting for the disk.
    pub fn set_sync_helper(&mut self, on: bool) -> io::Result<()> {
        match (&mut self.background, on) {
            (Background::Helper { .. }, true) | (Background::Refused, false) => Ok(()),
            (Background::Helper { in_flight, failed }, false) => {
                let (in_flight, failed) = (*in_flight, failed.take());
                self.background = Background::Untried;
                if let Some(e) = failed {
                    return Err(e);
                }
                if in_flight {
                    let len = self.map.len();
                    self.map.flush_range(0, len)?;
                    self.sync_completed();
                }
                Ok(())
            }
            (_, false) => Ok(()),
            (b, true) => {
                if let Background::Ready(aio) = b {
                    self.map.background_sync_finished(aio, true)?;
                    self.sync_completed();
                }
                self.background = Background::Helper {
                    in_flight: false,
                    failed: None,
                };
                Ok(())
            }
        }
    }

    /// The sync helper reports the sync it was handed done (or failed): the records appended
    /// before the [`BackgroundCheckpoint::ForHelper`] checkpoint, and its slot, are on disk. A
    /// failure is returned by the next [`Ring::background_sync_finished`].
    pub fn helper_sync_done(&mut self, res: io::Result<()>) {
        if let Background::Helper { in_flight, failed } = &mut self.background {
            *in_flight = false;
            match res {
                Ok(()) => self.sync_completed(),
                Err(e) => *failed = Some(e),
            }
        }
    }

    /// Background checkpoints that found the previous sync still running since the ring was
    /// opened: a disk slower than the sync period.
    pub fn syncs_behind(&self) -> u64 {
        self.syncs_behind
    }
}
