//! Salvage: every intact record of a ring file that cannot be opened (`ringrelay inspect
//! --export`).
//!
//! A ring whose superblock is damaged, whose metadata slots are both damaged, or whose file was
//! truncated has no trustworthy tail or head; but its entries are self-describing
//! (`buffer-spec.md` §5): each header carries its own CRC, sequence number and length, and each
//! body its CRC. So the data area is scanned at every 8-aligned offset for an acceptable header
//! with a valid body, read with the same [`View`] code as any other reader; a valid entry's body
//! is skipped (a payload that looks like a header is never considered inside a valid entry),
//! and the entries found are returned in sequence order. Where two entries hold the same
//! sequence number (a later run rewrote the numbers an earlier recovery dropped, §8 step 6),
//! the later run's wins. Nothing is written.

use std::fs::File;
use std::io;
use std::path::Path;

use super::backing;
use super::format::{
    Superblock, ALIGN, DATA_OFFSET, KIND_WRAP, MAX_RECORD_LIMIT, PAGE, RECORD_HEADER,
    SUPERBLOCK_LEN,
};
use super::view::{Read, Record, View};
use super::Pos;

/// A ring file mapped for salvage, and what the scan found in it.
pub struct Salvage {
    map: Option<memmap2::Mmap>,
    /// The superblock, if it is intact.
    pub superblock: Option<Superblock>,
    /// Bytes of the data area scanned: the superblock's capacity, or what the file holds of it
    /// (a truncated file); without a superblock, the file's length after the metadata, rounded
    /// down to a page.
    pub scanned: u64,
    /// The largest body a plain entry may have: the superblock's `max_record`, or the format's
    /// limit when the superblock is damaged.
    pub max_record: u32,
    /// Valid entries, in sequence order, later runs first.
    entries: Vec<Entry>,
    /// Entries whose header is acceptable but whose body is not valid.
    pub damaged_entries: u64,
}

/// A valid entry found by the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    seq: u64,
    /// Later runs sort first.
    run: std::cmp::Reverse<u32>,
    off: u64,
    stride: u64,
    /// The sequence number after its records.
    end: u64,
}

/// What [`Salvage::records`] gave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exported {
    /// Records given.
    pub records: u64,
    /// The first and last sequence numbers given.
    pub seqs: Option<(u64, u64)>,
    /// Gaps between the records given: places where records are missing.
    pub gaps: u64,
    /// Records missing in those gaps.
    pub missing: u64,
}

impl Salvage {
    /// Maps `path` read-only and scans its data area.
    pub fn open(path: &Path) -> io::Result<Salvage> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut head = vec![0u8; SUPERBLOCK_LEN.min(len as usize)];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0)?;
        let superblock = (head.len() == SUPERBLOCK_LEN)
            .then(|| Superblock::parse(&head).ok())
            .flatten();
        let in_file = len.saturating_sub(DATA_OFFSET);
        let (scanned, max_record) = match &superblock {
            Some(sb) => (sb.capacity.min(in_file), sb.max_record),
            None => (in_file / PAGE * PAGE, MAX_RECORD_LIMIT),
        };
        let map = if scanned == 0 {
            None
        } else {
            Some(backing::map_ro(&file, DATA_OFFSET + scanned)?)
        };
        let mut s = Salvage {
            map,
            superblock,
            scanned,
            max_record,
            entries: Vec::new(),
            damaged_entries: 0,
        };
        s.scan();
        Ok(s)
    }

    fn data(&self) -> &[u8] {
        self.map
            .as_ref()
            .map_or(&[][..], |m| &m[DATA_OFFSET as usize..])
    }

    /// A view that reads the one entry at `off` (its header holds `seq`): the entry is both
    /// tail and, up to its end, the whole ring, so that nothing reads beyond it.
    fn view_at(&self, off: u64, seq: u64, stride: u64) -> View<'_> {
        let data = self.data();
        let end = off + stride;
        let head_off = if end + RECORD_HEADER > data.len() as u64 {
            0
        } else {
            end
        };
        View {
            data,
            max_record: self.max_record,
            run: u32::MAX,
            run_starts: &[],
            tail: Pos::at(off, seq),
            head: Pos::at(head_off, u64::MAX),
        }
    }

    fn scan(&mut self) {
        let data = self.data();
        let cap = data.len() as u64;
        let probe = View {
            data,
            max_record: self.max_record,
            run: u32::MAX,
            run_starts: &[],
            tail: Pos::at(0, 0),
            head: Pos::at(0, u64::MAX),
        };
        let (mut entries, mut damaged) = (Vec::new(), 0);
        let mut off = 0;
        while off + RECORD_HEADER <= cap {
            let Some(h) = probe.header_at(off).filter(|h| h.kind != KIND_WRAP) else {
                off += ALIGN;
                continue;
            };
            match self
                .view_at(off, h.seq, h.stride())
                .read(Pos::at(off, h.seq))
            {
                Read::Record(_) => {
                    entries.push(Entry {
                        seq: h.seq,
                        run: std::cmp::Reverse(h.run),
                        off,
                        stride: h.stride(),
                        end: h.seq.saturating_add(h.records()),
                    });
                    off += h.stride();
                }
                _ => {
                    damaged += 1;
                    off += ALIGN;
                }
            }
        }
        entries.sort_unstable();
        self.entries = entries;
        self.damaged_entries = damaged;
    }

    /// Gives every salvaged record to `each`, in sequence order, each sequence number once.
    pub fn records(&self, mut each: impl FnMut(&Record<'_>)) -> Exported {
        let mut out = Exported::default();
        let mut next: Option<u64> = None;
        for e in &self.entries {
            if next.is_some_and(|n| e.end <= n) {
                continue; // every record already given
            }
            let view = self.view_at(e.off, e.seq, e.stride);
            let mut pos = Pos::at(e.off, e.seq);
            while pos.seq < e.end {
                let Read::Record(r) = view.read(pos) else {
                    break;
                };
                if next.is_none_or(|n| r.pos.seq >= n) {
                    if let Some(n) = next.filter(|&n| r.pos.seq > n) {
                        out.gaps += 1;
                        out.missing += r.pos.seq - n;
                    }
                    each(&r);
                    out.records += 1;
                    out.seqs = Some((out.seqs.map_or(r.pos.seq, |s| s.0), r.pos.seq));
                    next = Some(r.pos.seq + 1);
                }
                pos = r.next;
            }
        }
        out
    }
}
