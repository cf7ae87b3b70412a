//! Output cursors and the fencing epoch as the ring keeps them (`buffer-spec.md` §4, §7):
//! named, committed forward only, kept on a record that exists, persisted with the next
//! checkpoint.

use super::*;

impl<B: Backing> Ring<B> {
    /// The cursor named `name`, created at the tail if it does not exist.
    pub fn cursor(&mut self, name: &str) -> Result<usize, CursorError> {
        if name.is_empty() || name.len() > CURSOR_NAME {
            return Err(CursorError::BadName);
        }
        if let Some(i) = self
            .meta
            .cursors
            .iter()
            .position(|c| c.in_use() && c.name_str() == name)
        {
            return Ok(i);
        }
        let i = self
            .meta
            .cursors
            .iter()
            .position(|c| !c.in_use())
            .ok_or(CursorError::NoSlot)?;
        let mut slot = CursorSlot {
            pos: self.meta.tail,
            ..CursorSlot::default()
        };
        slot.name[..name.len()].copy_from_slice(name.as_bytes());
        self.meta.cursors[i] = slot;
        Ok(i)
    }

    /// Removes every cursor whose name is not in `keep` (outputs removed from the config: they
    /// must not hold back a `block` ring). Returns the names removed.
    pub fn retain_cursors(&mut self, keep: &[&str]) -> Vec<String> {
        let mut removed = Vec::new();
        for c in self.meta.cursors.iter_mut().filter(|c| c.in_use()) {
            if !keep.contains(&c.name_str()) {
                removed.push(c.name_str().to_owned());
                *c = CursorSlot::default();
            }
        }
        removed
    }

    /// Where cursor `id` stands: the next record its output has not delivered.
    pub fn cursor_pos(&self, id: usize) -> Pos {
        self.meta.cursors[id].pos
    }

    /// Records cursor `id` lost to overwriting, since the ring was created.
    pub fn cursor_lost(&self, id: usize) -> u64 {
        self.meta.cursors[id].lost
    }

    /// What cursor `id`'s output last recorded of its health (outage, overrun episode).
    pub fn cursor_state(&self, id: usize) -> CursorState {
        self.meta.cursors[id].state
    }

    /// Records cursor `id`'s output health; persisted at the next checkpoint, with the cursor.
    pub fn set_cursor_state(&mut self, id: usize, state: CursorState) {
        self.meta.cursors[id].state = state;
    }

    /// Every cursor in use: name, position, records lost.
    pub fn cursors(&self) -> impl Iterator<Item = (&str, Pos, u64)> + '_ {
        self.meta.cursors_in_use()
    }

    /// Records that cursor `id` has delivered everything before `pos`. Persisted at the next
    /// checkpoint. A position before the tail is moved to the tail.
    pub fn commit(&mut self, id: usize, pos: Pos) {
        let pos = if pos.seq < self.meta.tail.seq {
            self.meta.tail
        } else {
            pos
        };
        self.meta.cursors[id].pos = pos;
    }

    /// The fencing epoch stored in the ring.
    pub fn epoch(&self) -> u64 {
        self.meta.epoch
    }

    /// Sets the fencing epoch (persisted at the next checkpoint).
    pub fn set_epoch(&mut self, epoch: u64) {
        self.meta.epoch = epoch;
    }

    /// The highest fencing epoch in the valid metadata slots as the file holds them now (not
    /// this process's copy): a checkpoint by another writer shows here (`buffer-spec.md` §4).
    pub fn stored_epoch(&self) -> u64 {
        SLOT_OFFSETS
            .iter()
            .filter_map(|&at| {
                let at = at as usize;
                Meta::parse(&self.map[at..at + META_LEN], self.capacity)
            })
            .map(|m| m.epoch)
            .max()
            .unwrap_or(0)
    }
}
