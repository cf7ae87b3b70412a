//! The bytes on disk, exactly as `buffer-spec.md` (format version 4) lays them out.
//!
//! ```text
//! file offset   size        what
//! 0             4096        superblock  (written once at creation)
//! 4096          4096        metadata slot A
//! 8192          4096        metadata slot B
//! 12288         capacity    data area: entries, each 8-aligned
//! ```
//!
//! An entry is a 48-byte header and a body. A plain entry holds one record (its body is the
//! payload); a *lines* entry ([`FLAG_LINES`]) holds `count` records, each followed by an LF.
//! Version 3 writes lines entries *chunked* ([`FLAG_CHUNKED`]): a table after the body holds a
//! CRC per [`CHUNK`] bytes of body and the LFs counted up to each chunk's end, so damage costs
//! only the records that touch a damaged chunk. Version 1 files hold plain entries only and
//! version 2 files unchunked lines entries: both read as version 4, as do version 3 files
//! (whose slots hold at most four run starts, [`Meta::run_starts`]).
//!
//! All integers are little-endian. Every structure carries its own CRC-32 (IEEE, as computed by
//! `crc32fast`). Offsets inside the data area are relative to [`DATA_OFFSET`].
//!
//! Parsing never panics: every `parse` takes a slice of at least the structure's size (callers
//! check lengths first) and returns `None` when the CRC or a field is invalid.

/// `0x89 'R' 'I' 'N' 'G' '\r' '\n' 0x1a`: a high byte to catch 7-bit transfers, a name, and the
/// CR LF / ^Z pair to catch line-ending conversions, as PNG does.
pub const MAGIC: [u8; 8] = [0x89, b'R', b'I', b'N', b'G', b'\r', b'\n', 0x1a];
/// The format version this code writes.
pub const VERSION: u32 = 4;
/// The oldest format version this code reads (version 1 has no lines entries).
pub const MIN_VERSION: u32 = 1;
/// Page size the layout is built on; each metadata slot has a page of its own.
pub const PAGE: u64 = 4096;
/// File offset of the superblock.
pub const SUPERBLOCK_OFFSET: u64 = 0;
/// File offsets of the two metadata slots.
pub const SLOT_OFFSETS: [u64; 2] = [PAGE, 2 * PAGE];
/// File offset of the data area.
pub const DATA_OFFSET: u64 = 3 * PAGE;
/// Records start at multiples of this inside the data area.
pub const ALIGN: u64 = 8;
/// Size of a record header.
pub const RECORD_HEADER: u64 = 48;
/// Cursors kept per ring.
pub const MAX_CURSORS: usize = 16;
/// Run starts a metadata slot keeps (`buffer-spec.md` §4): four in the slot's main part, the
/// older ones in its run-start table (version 4).
pub const RUN_STARTS: usize = 4 + meta::MORE_RUN_STARTS;
/// Bytes of a cursor name (UTF-8, zero-padded; all zero = unused entry).
pub const CURSOR_NAME: usize = 32;
/// Bytes of the feed name kept in the superblock.
pub const FEED_NAME: usize = 64;
/// Smallest data area a ring may have.
pub const MIN_CAPACITY: u64 = 1 << 20;
/// Largest payload any ring accepts (the per-ring limit is in the superblock).
pub const MAX_RECORD_LIMIT: u32 = 64 << 20;

/// Record kinds.
pub const KIND_DATA: u8 = 1;
/// A wrap marker: the rest of the data area is unused; the record with this marker's sequence
/// number is at data offset 0.
pub const KIND_WRAP: u8 = 2;
/// Entry flag: the payload was cut at the feed's `max_record_bytes` (plain entries only).
pub const FLAG_TRUNCATED: u8 = 1;
/// Entry flag: a lines entry, whose body is `count` records each followed by an LF.
pub const FLAG_LINES: u8 = 2;
/// Entry flag (version 3, lines entries only): the body is followed by a chunk table, one
/// [`CHUNK_ENTRY`] per [`CHUNK`] bytes of body, and `pcrc` is the CRC of that table.
pub const FLAG_CHUNKED: u8 = 4;
/// Bytes of body each entry of a chunk table covers (the last chunk may be shorter).
pub const CHUNK: u64 = 4096;
/// Bytes of a chunk-table entry: the chunk's CRC-32 (u32), then the LFs in the body from its
/// start to the chunk's end (u32).
pub const CHUNK_ENTRY: u64 = 8;

/// Bytes of the chunk table of a chunked entry with a body of `len` bytes.
pub const fn chunk_table_len(len: u64) -> u64 {
    len.div_ceil(CHUNK) * CHUNK_ENTRY
}

/// The longest body whose chunked entry (body and chunk table) fits in `bytes`.
pub const fn chunked_body_fitting(bytes: u64) -> u64 {
    let per = CHUNK + CHUNK_ENTRY;
    let rem = bytes % per;
    (bytes / per) * CHUNK + rem.saturating_sub(CHUNK_ENTRY)
}

/// The LFs in `bytes`, counted 32 bytes at a time in byte-wide counters the compiler turns
/// into vector compares: a chunk's count costs about what its CRC does, whatever the density
/// of LFs (an iterator over matches pays per LF).
pub fn count_lfs(bytes: &[u8]) -> u32 {
    const LANES: usize = 32;
    let mut total = 0u32;
    // At most 255 rounds, so that no byte counter overflows.
    for block in bytes.chunks(LANES * 255) {
        let mut acc = [0u8; LANES];
        let mut words = block.chunks_exact(LANES);
        for w in &mut words {
            for (a, &b) in acc.iter_mut().zip(w) {
                *a += u8::from(b == b'\n');
            }
        }
        total += acc.iter().map(|&a| u32::from(a)).sum::<u32>();
        total += words.remainder().iter().filter(|&&b| b == b'\n').count() as u32;
    }
    total
}

/// Lines entries may have a body of up to this many bytes even in a ring whose `max_record` is
/// smaller (`buffer-spec.md` §5).
pub const LINES_MAX: u32 = 1 << 20;

/// Bytes one record with a payload of `len` bytes occupies: header + payload, rounded up to
/// [`ALIGN`].
pub const fn record_stride(len: u64) -> u64 {
    (RECORD_HEADER + len + ALIGN - 1) & !(ALIGN - 1)
}

/// Bytes of ring data area one feed needs: every record costs its stride (header, payload,
/// padding; `buffer-spec.md` §5), rounded up to whole pages.
pub fn ring_bytes(eps: u64, bytes: u64, retention: std::time::Duration) -> u64 {
    let raw = eps
        .saturating_mul(retention.as_secs())
        .saturating_mul(record_stride(bytes));
    raw.div_ceil(PAGE).saturating_mul(PAGE)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Field offsets of the superblock (`buffer-spec.md` §3).
mod sb {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = 8;
    pub const FLAGS: usize = 12;
    pub const DATA_OFFSET: usize = 16;
    pub const CAPACITY: usize = 24;
    pub const MAX_RECORD: usize = 32;
    pub const RECORD_HEADER: usize = 36;
    pub const ALIGN: usize = 40;
    pub const MAX_CURSORS: usize = 44;
    pub const CREATED_NS: usize = 48;
    pub const NAME: usize = 56;
    pub const RESERVED: usize = NAME + super::FEED_NAME; // 120
    pub const CRC: usize = RESERVED + 4; // 124
    pub const LEN: usize = CRC + 4; // 128
}
/// Bytes of the superblock covered by structure (the rest of its page is zero).
pub const SUPERBLOCK_LEN: usize = sb::LEN;

/// The superblock: what kind of file this is and its fixed geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Format version of the file ([`MIN_VERSION`] ..= [`VERSION`]).
    pub version: u32,
    /// Bytes in the data area (a multiple of [`PAGE`]).
    pub capacity: u64,
    /// Largest payload this ring accepts.
    pub max_record: u32,
    /// Wall-clock creation time, ns since the Unix epoch.
    pub created_ns: u64,
    /// The feed this ring belongs to.
    pub name: String,
}

/// Why a superblock was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuperblockError {
    /// The first 8 bytes are not [`MAGIC`]: not a ring file.
    Magic,
    /// The CRC does not match: the superblock is damaged.
    Crc,
    /// A format version this code does not read.
    Version(u32),
    /// The geometry fields are not those of the format.
    Geometry,
}

impl Superblock {
    /// Encodes into the first [`SUPERBLOCK_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        let b = &mut out[..sb::LEN];
        b.fill(0);
        b[sb::MAGIC..sb::MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(b, sb::VERSION, self.version);
        put_u32(b, sb::FLAGS, 0);
        put_u64(b, sb::DATA_OFFSET, DATA_OFFSET);
        put_u64(b, sb::CAPACITY, self.capacity);
        put_u32(b, sb::MAX_RECORD, self.max_record);
        put_u32(b, sb::RECORD_HEADER, RECORD_HEADER as u32);
        put_u32(b, sb::ALIGN, ALIGN as u32);
        put_u32(b, sb::MAX_CURSORS, MAX_CURSORS as u32);
        put_u64(b, sb::CREATED_NS, self.created_ns);
        let name = self.name.as_bytes();
        let n = name.len().min(FEED_NAME);
        b[sb::NAME..sb::NAME + n].copy_from_slice(&name[..n]);
        let crc = crc32fast::hash(&b[..sb::CRC]);
        put_u32(b, sb::CRC, crc);
    }

    /// Decodes the superblock at the start of `b` (at least [`SUPERBLOCK_LEN`] bytes).
    pub fn parse(b: &[u8]) -> Result<Superblock, SuperblockError> {
        let b = &b[..sb::LEN];
        if b[sb::MAGIC..sb::MAGIC + 8] != MAGIC {
            return Err(SuperblockError::Magic);
        }
        if crc32fast::hash(&b[..sb::CRC]) != u32_at(b, sb::CRC) {
            return Err(SuperblockError::Crc);
        }
        let version = u32_at(b, sb::VERSION);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(SuperblockError::Version(version));
        }
        let capacity = u64_at(b, sb::CAPACITY);
        let max_record = u32_at(b, sb::MAX_RECORD);
        let geometry_ok = u64_at(b, sb::DATA_OFFSET) == DATA_OFFSET
            && u32_at(b, sb::RECORD_HEADER) == RECORD_HEADER as u32
            && u32_at(b, sb::ALIGN) == ALIGN as u32
            && u32_at(b, sb::MAX_CURSORS) == MAX_CURSORS as u32
            && capacity >= MIN_CAPACITY
            && capacity.is_multiple_of(PAGE)
            && (1..=MAX_RECORD_LIMIT).contains(&max_record)
            && record_stride(u64::from(max_record)) <= capacity / 4;
        if !geometry_ok {
            return Err(SuperblockError::Geometry);
        }
        let name_bytes = &b[sb::NAME..sb::NAME + FEED_NAME];
        let end = name_bytes.iter().position(|&c| c == 0).unwrap_or(FEED_NAME);
        Ok(Superblock {
            version,
            capacity,
            max_record,
            created_ns: u64_at(b, sb::CREATED_NS),
            name: String::from_utf8_lossy(&name_bytes[..end]).into_owned(),
        })
    }
}

/// A position in the ring: a record, by the entry that holds it and its sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Pos {
    /// Offset in the data area of the entry holding the record.
    pub off: u64,
    /// Sequence number of the record.
    pub seq: u64,
    /// Where the record starts in the body of a lines entry, once a reader has found it; 0 for
    /// the first record of an entry, and for a record not looked for yet (a cursor read back
    /// from a metadata slot): reading it then checks the entry and counts LFs to find it; or
    /// [`crate::ring::view::IN_DAMAGED_ENTRY`] for a record of a partly damaged chunked entry,
    /// which every read checks again. Never written to disk.
    pub sub: u32,
}

impl Pos {
    /// The first record of the entry at `off`, whose sequence number is `seq`.
    pub const fn at(off: u64, seq: u64) -> Pos {
        Pos { off, seq, sub: 0 }
    }

    /// The same record, to be looked for again: the next read checks its entry's CRCs as a
    /// reader entering the entry does (`buffer-spec.md` §7), instead of trusting an earlier look.
    pub const fn recheck(self) -> Pos {
        Pos { sub: 0, ..self }
    }
}

/// One persisted output cursor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CursorSlot {
    /// Output name, zero-padded; all zero means the entry is unused.
    pub name: [u8; CURSOR_NAME],
    /// The next record this output has not yet delivered.
    pub pos: Pos,
    /// Records this output lost because the ring overwrote them first (cumulative).
    pub lost: u64,
    /// What the output had reported of its health when the slot was written (the cursor-state
    /// table, `buffer-spec.md` §4).
    pub state: CursorState,
}

/// An output's delivery health, persisted with its cursor so that an outage or a loss is never
/// forgotten by a restart (`buffer-spec.md` §4, cursor-state table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CursorState {
    /// Wall-clock time (ns) since which the output has not been delivering; 0 while it was.
    pub down_since_ns: u64,
    /// The cursor's `lost` count when its current overrun episode began; the episode is open
    /// while `lost` is above it.
    pub overrun_base: u64,
    /// Receive time (ns) of the last record delivered before the episode's gap; 0: unknown.
    pub overrun_after_ns: u64,
    /// The `output_down` alert was raised for the outage that began at `down_since_ns`.
    pub down_alerted: bool,
    /// The `output_overrun` alert was raised for the open episode.
    pub overrun_alerted: bool,
}

impl CursorState {
    const DOWN_ALERTED: u32 = 1;
    const OVERRUN_ALERTED: u32 = 2;

    fn flags(&self) -> u32 {
        (u32::from(self.down_alerted) * Self::DOWN_ALERTED)
            | (u32::from(self.overrun_alerted) * Self::OVERRUN_ALERTED)
    }
}

impl CursorSlot {
    /// Whether the entry holds a cursor.
    pub fn in_use(&self) -> bool {
        self.name[0] != 0
    }

    /// The name as text.
    pub fn name_str(&self) -> &str {
        let end = self
            .name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(CURSOR_NAME);
        std::str::from_utf8(&self.name[..end]).unwrap_or("?")
    }
}

/// Field offsets of a metadata slot (`buffer-spec.md` §4).
mod meta {
    pub const GENERATION: usize = 0;
    pub const RUN: usize = 8;
    /// How many run starts the run-start table holds (version 4; reserved, 0, before).
    pub const MORE: usize = 12;
    pub const EPOCH: usize = 16;
    pub const TAIL_OFF: usize = 24;
    pub const TAIL_SEQ: usize = 32;
    pub const HEAD_OFF: usize = 40;
    pub const HEAD_SEQ: usize = 48;
    pub const LAST_TS: usize = 56;
    pub const CHECKPOINT_NS: usize = 64;
    pub const EVICTED: usize = 72;
    /// Four pairs of (seq: u64, run: u32), newest first.
    pub const RUN_STARTS: usize = 80;
    pub const MAIN_RUN_STARTS: usize = 4;
    pub const RUN_START_LEN: usize = 12;
    pub const CURSORS: usize = 128;
    pub const CURSOR_LEN: usize = 64;
    pub const CURSOR_SEQ: usize = 32;
    pub const CURSOR_OFF: usize = 40;
    pub const CURSOR_LOST: usize = 48;
    pub const CRC: usize = CURSORS + super::MAX_CURSORS * CURSOR_LEN; // 1152
    /// The cursor-state table: the slot's generation again, one state per cursor entry, a CRC.
    pub const STATE_GENERATION: usize = 1160;
    pub const STATES: usize = STATE_GENERATION + 8; // 1168
    pub const STATE_LEN: usize = 32;
    pub const STATE_DOWN_SINCE: usize = 0;
    pub const STATE_OVERRUN_BASE: usize = 8;
    pub const STATE_OVERRUN_AFTER: usize = 16;
    pub const STATE_FLAGS: usize = 24;
    pub const STATE_CRC: usize = STATES + super::MAX_CURSORS * STATE_LEN; // 1680
    /// The run-start table (version 4): the slot's generation again, the run starts older than
    /// the main part's four (as many as `MORE` says, newest first, then zeros), a CRC.
    pub const MORE_GENERATION: usize = 1688;
    pub const MORE_RUN_STARTS_AT: usize = MORE_GENERATION + 8; // 1696
    pub const MORE_RUN_STARTS: usize = 124;
    pub const MORE_CRC: usize = MORE_RUN_STARTS_AT + MORE_RUN_STARTS * RUN_START_LEN; // 3184
    pub const LEN: usize = MORE_CRC + 4; // 3188
}
/// Bytes of a metadata slot covered by structure (the rest of its page is zero).
pub const META_LEN: usize = meta::LEN;

/// The ring's state as of a checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Incremented by every metadata write; the valid slot with the higher one is current.
    pub generation: u64,
    /// Incremented each time the ring is opened for writing; stamped into every record.
    pub run: u32,
    /// Fencing epoch of the active instance that wrote this (active-standby pairs).
    pub epoch: u64,
    /// The oldest record still in the ring.
    pub tail: Pos,
    /// Where the next record goes, and its sequence number.
    pub head: Pos,
    /// Receive time of the newest record, ns since the Unix epoch (0 when none yet).
    pub last_ts: u64,
    /// Wall-clock time of this checkpoint, ns since the Unix epoch.
    pub checkpoint_ns: u64,
    /// Records overwritten by `drop_oldest` since the ring was created.
    pub evicted: u64,
    /// Where the runs whose leftovers may still lie between tail and head began, newest first:
    /// `(run, seq)` of the head each writer recovered when it opened the ring, at most
    /// [`RUN_STARTS`]. An entry of an earlier run than `run` whose records reach `seq` is a
    /// leftover its recovery dropped, not a record (`buffer-spec.md` §4, §5); see
    /// [`Meta::start_run`] for which ones are kept.
    pub run_starts: heapless::Vec<(u32, u64), RUN_STARTS>,
    /// Per-output cursors.
    pub cursors: [CursorSlot; MAX_CURSORS],
}

impl Meta {
    /// Encodes into the first [`META_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        let b = &mut out[..meta::LEN];
        b.fill(0);
        put_u64(b, meta::GENERATION, self.generation);
        put_u32(b, meta::RUN, self.run);
        put_u64(b, meta::EPOCH, self.epoch);
        put_u64(b, meta::TAIL_OFF, self.tail.off);
        put_u64(b, meta::TAIL_SEQ, self.tail.seq);
        put_u64(b, meta::HEAD_OFF, self.head.off);
        put_u64(b, meta::HEAD_SEQ, self.head.seq);
        put_u64(b, meta::LAST_TS, self.last_ts);
        put_u64(b, meta::CHECKPOINT_NS, self.checkpoint_ns);
        put_u64(b, meta::EVICTED, self.evicted);
        let starts = &self.run_starts[..self.run_starts.len().min(RUN_STARTS)];
        let (main, more) = starts.split_at(starts.len().min(meta::MAIN_RUN_STARTS));
        for (i, &(run, seq)) in main.iter().enumerate() {
            let at = meta::RUN_STARTS + i * meta::RUN_START_LEN;
            put_u64(b, at, seq);
            put_u32(b, at + 8, run);
        }
        put_u32(b, meta::MORE, more.len() as u32);
        for (i, c) in self.cursors.iter().enumerate() {
            let at = meta::CURSORS + i * meta::CURSOR_LEN;
            b[at..at + CURSOR_NAME].copy_from_slice(&c.name);
            put_u64(b, at + meta::CURSOR_SEQ, c.pos.seq);
            put_u64(b, at + meta::CURSOR_OFF, c.pos.off);
            put_u64(b, at + meta::CURSOR_LOST, c.lost);
        }
        let crc = crc32fast::hash(&b[..meta::CRC]);
        put_u32(b, meta::CRC, crc);
        put_u64(b, meta::STATE_GENERATION, self.generation);
        for (i, c) in self.cursors.iter().enumerate() {
            let at = meta::STATES + i * meta::STATE_LEN;
            put_u64(b, at + meta::STATE_DOWN_SINCE, c.state.down_since_ns);
            put_u64(b, at + meta::STATE_OVERRUN_BASE, c.state.overrun_base);
            put_u64(b, at + meta::STATE_OVERRUN_AFTER, c.state.overrun_after_ns);
            put_u32(b, at + meta::STATE_FLAGS, c.state.flags());
        }
        let crc = crc32fast::hash(&b[meta::STATE_GENERATION..meta::STATE_CRC]);
        put_u32(b, meta::STATE_CRC, crc);
        put_u64(b, meta::MORE_GENERATION, self.generation);
        for (i, &(run, seq)) in more.iter().enumerate() {
            let at = meta::MORE_RUN_STARTS_AT + i * meta::RUN_START_LEN;
            put_u64(b, at, seq);
            put_u32(b, at + 8, run);
        }
        let crc = crc32fast::hash(&b[meta::MORE_GENERATION..meta::MORE_CRC]);
        put_u32(b, meta::MORE_CRC, crc);
    }

    /// Every cursor in use: name, position, records lost.
    pub fn cursors_in_use(&self) -> impl Iterator<Item = (&str, Pos, u64)> + '_ {
        self.cursors
            .iter()
            .filter(|c| c.in_use())
            .map(|c| (c.name_str(), c.pos, c.lost))
    }

    /// Records that a new run `run` begins at the head, `(run, head seq)`, as the newest run
    /// start (`buffer-spec.md` §8, step 6), and forgets the starts no reader needs any more
    /// ([`Meta::prune_run_starts`]).
    pub fn start_run(&mut self, run: u32) {
        // Full: the oldest goes first, as `prune_run_starts` would have done.
        self.run_starts.truncate(RUN_STARTS - 1);
        let _ = self.run_starts.insert(0, (run, self.head.seq));
        self.prune_run_starts();
    }

    /// Forgets the run starts no reader needs (`buffer-spec.md` §4): one that a newer start
    /// with a sequence number at most its own covers (the newer run refuses more), and one
    /// whose range ends at or before the tail (the next newer start's `seq` is at most
    /// `tail_seq`: the entries it refuses hold no record between tail and head). Beyond
    /// [`RUN_STARTS`] the oldest is forgotten.
    pub fn prune_run_starts(&mut self) {
        let mut below = u64::MAX;
        self.run_starts.retain(|&(run, seq)| {
            let keep = run != 0 && seq < below;
            below = below.min(seq);
            keep
        });
        // Newest first, `seq` now strictly decreasing: the first start at or before the tail
        // is the last one a reader needs.
        if let Some(i) = self
            .run_starts
            .iter()
            .position(|&(_, seq)| seq <= self.tail.seq)
        {
            self.run_starts.truncate(i + 1);
        }
        self.run_starts.truncate(RUN_STARTS);
    }

    /// Decodes a slot (at least [`META_LEN`] bytes); `None` if its CRC does not match or its
    /// positions lie outside a data area of `capacity` bytes.
    pub fn parse(b: &[u8], capacity: u64) -> Option<Meta> {
        let b = &b[..meta::LEN];
        if crc32fast::hash(&b[..meta::CRC]) != u32_at(b, meta::CRC) {
            return None;
        }
        let pos = |off_at, seq_at| Pos::at(u64_at(b, off_at), u64_at(b, seq_at));
        let mut m = Meta {
            generation: u64_at(b, meta::GENERATION),
            run: u32_at(b, meta::RUN),
            epoch: u64_at(b, meta::EPOCH),
            tail: pos(meta::TAIL_OFF, meta::TAIL_SEQ),
            head: pos(meta::HEAD_OFF, meta::HEAD_SEQ),
            last_ts: u64_at(b, meta::LAST_TS),
            checkpoint_ns: u64_at(b, meta::CHECKPOINT_NS),
            evicted: u64_at(b, meta::EVICTED),
            run_starts: heapless::Vec::new(),
            cursors: [CursorSlot::default(); MAX_CURSORS],
        };
        for (i, c) in m.cursors.iter_mut().enumerate() {
            let at = meta::CURSORS + i * meta::CURSOR_LEN;
            c.name.copy_from_slice(&b[at..at + CURSOR_NAME]);
            c.pos = pos(at + meta::CURSOR_OFF, at + meta::CURSOR_SEQ);
            c.lost = u64_at(b, at + meta::CURSOR_LOST);
        }
        m.parse_states(b);
        if !m.parse_run_starts(b) {
            return None;
        }
        let in_area = |p: Pos| {
            p.off.is_multiple_of(ALIGN)
                && p.off
                    .checked_add(RECORD_HEADER)
                    .is_some_and(|e| e <= capacity)
        };
        let sane = in_area(m.tail) && in_area(m.head) && m.tail.seq <= m.head.seq;
        sane.then_some(m)
    }

    /// Reads the run starts of a slot whose main part is valid: the main part's four, then as
    /// many from the run-start table as the main part says (version 4). False if that table is
    /// not valid (its CRC or generation do not match: a torn slot write), which makes the slot
    /// invalid: a slot that lost run starts would let readers take leftovers for records.
    fn parse_run_starts(&mut self, b: &[u8]) -> bool {
        let pair = |at: usize| (u32_at(b, at + 8), u64_at(b, at));
        let more = u32_at(b, meta::MORE) as usize;
        let main =
            (0..meta::MAIN_RUN_STARTS).map(|i| pair(meta::RUN_STARTS + i * meta::RUN_START_LEN));
        self.run_starts.clear();
        // At most MAIN_RUN_STARTS + MORE_RUN_STARTS = RUN_STARTS: the pushes cannot fail.
        for start in main.filter(|&(run, _)| run != 0) {
            let _ = self.run_starts.push(start);
        }
        if more == 0 {
            return true;
        }
        let valid = more <= meta::MORE_RUN_STARTS
            && u64_at(b, meta::MORE_GENERATION) == self.generation
            && crc32fast::hash(&b[meta::MORE_GENERATION..meta::MORE_CRC])
                == u32_at(b, meta::MORE_CRC);
        if !valid {
            // Not read: `more` may be anything in a slot no writer finished.
            return false;
        }
        let table = (0..more).map(|i| pair(meta::MORE_RUN_STARTS_AT + i * meta::RUN_START_LEN));
        for start in table.filter(|&(run, _)| run != 0) {
            let _ = self.run_starts.push(start);
        }
        true
    }

    /// Reads the cursor-state table of a slot whose main part is valid. A table that is absent
    /// (a slot written before it existed, or by a writer that does not know it), damaged, or
    /// left from another generation gives each cursor the state "delivering, nothing
    /// unreported".
    fn parse_states(&mut self, b: &[u8]) {
        let valid = u64_at(b, meta::STATE_GENERATION) == self.generation
            && crc32fast::hash(&b[meta::STATE_GENERATION..meta::STATE_CRC])
                == u32_at(b, meta::STATE_CRC);
        for (i, c) in self.cursors.iter_mut().enumerate() {
            let at = meta::STATES + i * meta::STATE_LEN;
            c.state = if valid && c.in_use() {
                let flags = u32_at(b, at + meta::STATE_FLAGS);
                CursorState {
                    down_since_ns: u64_at(b, at + meta::STATE_DOWN_SINCE),
                    overrun_base: u64_at(b, at + meta::STATE_OVERRUN_BASE).min(c.lost),
                    overrun_after_ns: u64_at(b, at + meta::STATE_OVERRUN_AFTER),
                    down_alerted: flags & CursorState::DOWN_ALERTED != 0,
                    overrun_alerted: flags & CursorState::OVERRUN_ALERTED != 0,
                }
            } else {
                CursorState {
                    overrun_base: c.lost,
                    ..CursorState::default()
                }
            };
        }
    }
}

/// Field offsets of a record header (`buffer-spec.md` §5).
mod rec {
    pub const LEN: usize = 0;
    pub const KIND: usize = 4;
    pub const FLAGS: usize = 5;
    pub const SEQ: usize = 8;
    pub const TS: usize = 16;
    pub const TAIL: usize = 24;
    pub const RUN: usize = 32;
    pub const PCRC: usize = 36;
    pub const COUNT: usize = 40;
    pub const HCRC: usize = 44;
}

/// An entry header whose CRC matched (`buffer-spec.md` §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Body bytes (0 for a wrap marker).
    pub len: u32,
    /// [`KIND_DATA`] or [`KIND_WRAP`].
    pub kind: u8,
    /// [`FLAG_TRUNCATED`], [`FLAG_LINES`] or 0.
    pub flags: u8,
    /// Sequence number of the entry's first record (a wrap marker carries the number of the
    /// entry at offset 0).
    pub seq: u64,
    /// Receive time, ns since the Unix epoch; never decreases along the ring.
    pub ts: u64,
    /// Data offset of the oldest record in the ring once this one was written.
    pub tail: u64,
    /// The run (open count) that wrote it.
    pub run: u32,
    /// CRC-32 of the body.
    pub pcrc: u32,
    /// Records in a lines entry; 0 in any other entry.
    pub count: u32,
}

impl RecordHeader {
    /// Encodes into the first [`RECORD_HEADER`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) {
        let b = &mut out[..RECORD_HEADER as usize];
        put_u32(b, rec::LEN, self.len);
        b[rec::KIND] = self.kind;
        b[rec::FLAGS] = self.flags;
        b[rec::FLAGS + 1] = 0;
        b[rec::FLAGS + 2] = 0;
        put_u64(b, rec::SEQ, self.seq);
        put_u64(b, rec::TS, self.ts);
        put_u64(b, rec::TAIL, self.tail);
        put_u32(b, rec::RUN, self.run);
        put_u32(b, rec::PCRC, self.pcrc);
        put_u32(b, rec::COUNT, self.count);
        let crc = crc32fast::hash(&b[..rec::HCRC]);
        put_u32(b, rec::HCRC, crc);
    }

    /// Decodes a header (at least [`RECORD_HEADER`] bytes); `None` if its CRC does not match or
    /// its kind is unknown. Whether it fits the ring is the caller's check.
    pub fn parse(b: &[u8]) -> Option<RecordHeader> {
        RecordHeader::parse_with(b, true)
    }

    /// [`RecordHeader::parse`], with the CRC checked only with `check_crc` (a fresh record,
    /// `buffer-spec.md` §7).
    pub fn parse_with(b: &[u8], check_crc: bool) -> Option<RecordHeader> {
        let b = &b[..RECORD_HEADER as usize];
        // Resynchronisation tests every aligned position of a body: most fail on the kind
        // byte, before any CRC is computed.
        if !matches!(b[rec::KIND], KIND_DATA | KIND_WRAP) {
            return None;
        }
        if check_crc && crc32fast::hash(&b[..rec::HCRC]) != u32_at(b, rec::HCRC) {
            return None;
        }
        let h = RecordHeader {
            len: u32_at(b, rec::LEN),
            kind: b[rec::KIND],
            flags: b[rec::FLAGS],
            seq: u64_at(b, rec::SEQ),
            ts: u64_at(b, rec::TS),
            tail: u64_at(b, rec::TAIL),
            run: u32_at(b, rec::RUN),
            pcrc: u32_at(b, rec::PCRC),
            count: u32_at(b, rec::COUNT),
        };
        // A lines entry holds at least one record, each with its LF, and no truncated one.
        let lines_ok =
            |h: &RecordHeader| h.count >= 1 && h.len >= h.count && h.flags & FLAG_TRUNCATED == 0;
        match h.kind {
            KIND_DATA if h.flags & FLAG_LINES != 0 => lines_ok(&h).then_some(h),
            KIND_DATA if h.count == 0 && h.flags & FLAG_CHUNKED == 0 => Some(h),
            KIND_WRAP if h.len == 0 && h.count == 0 => Some(h),
            _ => None,
        }
    }

    /// Whether this is a lines entry.
    pub fn is_lines(&self) -> bool {
        self.kind == KIND_DATA && self.flags & FLAG_LINES != 0
    }

    /// Records this entry holds: `count` for a lines entry, 1 for a plain one, 0 for a wrap
    /// marker. The next entry's first sequence number is `seq + records()`.
    pub fn records(&self) -> u64 {
        match self.kind {
            KIND_WRAP => 0,
            _ if self.is_lines() => u64::from(self.count),
            _ => 1,
        }
    }

    /// Whether this is a chunked lines entry: a chunk table follows the body.
    pub fn is_chunked(&self) -> bool {
        self.is_lines() && self.flags & FLAG_CHUNKED != 0
    }

    /// Bytes after the header: the body, and the chunk table of a chunked entry.
    pub fn extent(&self) -> u64 {
        let len = u64::from(self.len);
        if self.is_chunked() {
            len + chunk_table_len(len)
        } else {
            len
        }
    }

    /// Largest body this entry may have in a ring whose records are at most `max_record`.
    pub fn max_len(&self, max_record: u32) -> u32 {
        if self.is_lines() {
            max_record.max(LINES_MAX)
        } else {
            max_record
        }
    }

    /// Bytes this record occupies in the data area.
    pub fn stride(&self) -> u64 {
        record_stride(self.extent())
    }
}

#[cfg(test)]
mod tests;
