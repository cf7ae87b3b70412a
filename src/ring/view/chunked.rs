//! The chunk table of a chunked lines entry, read for the checks of its body and for the records
//! that touch no damaged chunk (`buffer-spec.md` §5, §7).

use super::Damage;
use crate::ring::format::{chunk_table_len, RecordHeader, CHUNK, CHUNK_ENTRY, RECORD_HEADER};

/// The body and chunk table of a chunked lines entry (`buffer-spec.md` §5).
pub(super) struct Chunked<'a> {
    pub(super) body: &'a [u8],
    table: &'a [u8],
    count: u32,
}

impl<'a> Chunked<'a> {
    /// The entry with header `h` at `off` (acceptable, so its body and table are in the area).
    pub(super) fn new(data: &'a [u8], off: u64, h: &RecordHeader) -> Chunked<'a> {
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
    pub(super) fn stored(&self, i: usize) -> u32 {
        self.field(i, 0)
    }

    /// LFs in the body up to the end of chunk `i`.
    pub(super) fn lfs(&self, i: usize) -> u32 {
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

    pub(super) fn computed(&self, i: usize) -> u32 {
        crc32fast::hash(self.chunk(i))
    }

    /// The table's CRC is `pcrc`, and its LF counts can be: never decreasing, at most a
    /// chunk's bytes per chunk, `count` at the end.
    pub(super) fn check_table(&self, pcrc: u32) -> Result<(), Damage> {
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
    pub(super) fn check_all(&self) -> Result<(), Damage> {
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
            let found = u64::from(crate::ring::format::count_lfs(self.chunk(i)));
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
    pub(super) fn span(&self, k: u32) -> (usize, usize) {
        let first = if k == 0 { 0 } else { self.chunk_of_lf(k - 1) };
        (first, self.chunk_of_lf(k))
    }

    pub(super) fn last_damaged(&self, first: usize, last: usize) -> Option<usize> {
        (first..=last)
            .rev()
            .find(|&i| self.computed(i) != self.stored(i))
    }

    /// The first record from `k` on that touches no damaged chunk.
    pub(super) fn next_intact(&self, mut k: u32) -> Option<u32> {
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
    pub(super) fn start(&self, k: u32) -> Option<usize> {
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
    pub(super) fn damaged_records(&self) -> u64 {
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
