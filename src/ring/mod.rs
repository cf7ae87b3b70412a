//! The ring: one memory-mapped, CRC-checked, crash-safe buffer file per feed.
//!
//! `buffer-spec.md` at the repository root is the normative description of the bytes; this module
//! follows it section by section (`format` = §3–5, `view` = §6–8, `recovery` = §8, `writer` =
//! §9, `sync` = §10, `cursors` = §4 and §7; this file holds the types and opens the file).
//!
//! ## Design constraints
//! - A record accepted by [`Ring::append`] is in the file's page cache when `append` returns: a
//!   process crash (SIGKILL, panic, OOM kill) loses nothing that was accepted. What a power loss
//!   can lose depends on the sync policy (`buffer-spec.md` §10).
//! - Every record has a header CRC and a payload CRC; a damaged record is reported and skipped,
//!   never returned as data.
//! - Records never span the end of the data area; sequence numbers are consecutive and receive
//!   times never decrease along the ring (seeks rely on both).
//! - Bytes reach the mapping once: a socket reads newline-framed records straight into room
//!   reserved at the head ([`Ring::reserve`]), framed there and committed as one lines entry
//!   ([`Ring::commit_lines`]); any other record is copied once from the caller's buffer
//!   ([`Ring::append`]). Readers borrow payloads straight from the mapping, one record or the
//!   rest of an entry at a time.
//! - Memory does not grow with the ring: the ring's state is a few hundred bytes plus the map.
//! - The only `unsafe` is the mapping itself, in `backing.rs`.

mod backing;
mod cursors;
pub mod format;
mod recovery;
pub mod salvage;
mod sync;
pub mod view;
mod writer;

use recovery::{read_superblock, recover, validate_options};

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use nix::fcntl::{Flock, FlockArg};

pub use backing::{Backing, MmapBacking};
use format::{
    chunk_table_len, chunked_body_fitting, CursorSlot, Meta, RecordHeader, Superblock,
    SuperblockError, CHUNK, CHUNK_ENTRY, CURSOR_NAME, DATA_OFFSET, FLAG_CHUNKED, FLAG_LINES,
    FLAG_TRUNCATED, KIND_DATA, KIND_WRAP, MAX_RECORD_LIMIT, META_LEN, PAGE, SLOT_OFFSETS,
    SUPERBLOCK_LEN,
};
pub use format::{
    record_stride, ring_bytes, CursorState, Pos, MAX_CURSORS, MIN_CAPACITY, RECORD_HEADER,
};
pub use view::{Damage, Read, Record, View};

/// How many bytes [`Ring::start_writeback`] lets the head move before it starts more disk
/// writes (an eighth of the ring if that is less): large enough that the syscall is rare,
/// small enough that the writes follow the head closely.
pub const WRITEBACK_STEP: u64 = 8 << 20;

/// How far ahead of the head the pages are made writable in one go ([`Ring::append`]): one
/// `madvise` per step instead of a write fault on each page.
const PREFAULT_STEP: u64 = 2 << 20;

/// What `append` does when the ring has no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Overwrite the oldest records; outputs that had not delivered them count them as lost.
    DropOldest,
    /// Refuse the record ([`AppendError::Full`]) until every output has delivered the oldest
    /// record; the caller stops reading its sockets (TCP back-pressure).
    Block,
}

/// How to open or create a ring.
#[derive(Clone, Debug)]
pub struct RingOptions {
    /// Bytes of the data area; a multiple of 4096, at least [`MIN_CAPACITY`].
    pub capacity: u64,
    /// Largest payload accepted.
    pub max_record: u32,
    /// Full-ring policy.
    pub when_full: WhenFull,
    /// The feed's name, recorded in the superblock.
    pub name: String,
}

/// Why a ring file could not be opened. Every variant names the file.
#[derive(Debug)]
pub enum OpenError {
    /// An I/O call failed.
    Io {
        /// The ring file.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        err: io::Error,
    },
    /// The file does not start with the ring magic number: it is not a ring file.
    NotARing {
        /// The file.
        path: PathBuf,
    },
    /// A ring of a format version this build does not read.
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// The superblock's CRC or geometry is wrong.
    DamagedSuperblock {
        /// The file.
        path: PathBuf,
        /// Which check failed.
        why: &'static str,
    },
    /// The file is shorter or longer than its superblock says.
    Length {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The length its superblock implies.
        expected: u64,
    },
    /// The ring on disk has another capacity than the configuration asks for.
    Capacity {
        /// The file.
        path: PathBuf,
        /// Capacity of the ring on disk.
        on_disk: u64,
        /// Capacity the configuration asks for.
        configured: u64,
    },
    /// Neither metadata slot is valid.
    NoMetadata {
        /// The file.
        path: PathBuf,
    },
    /// The superblock names another feed: the file was copied or renamed from another feed's
    /// ring (`buffer-spec.md` §3).
    WrongFeed {
        /// The file.
        path: PathBuf,
        /// The feed its superblock names.
        found: String,
        /// The feed that opened it.
        expected: String,
    },
    /// Another process holds the ring's lock.
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The options cannot make a valid ring.
    BadOptions {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Io { path, op, err } => write!(f, "ring {}: {op}: {err}", path.display()),
            OpenError::NotARing { path } => write!(
                f,
                "{}: not a ringrelay ring file (no ring magic number at offset 0)",
                path.display()
            ),
            OpenError::Version { path, found } => write!(
                f,
                "ring {}: format version {found}, this build reads versions {} to {}",
                path.display(),
                format::MIN_VERSION,
                format::VERSION
            ),
            OpenError::DamagedSuperblock { path, why } => {
                write!(f, "ring {}: superblock damaged: {why}", path.display())
            }
            OpenError::Length { path, len, expected } => write!(
                f,
                "ring {}: file is {len} bytes, its superblock says {expected}: {}",
                path.display(),
                if len < expected {
                    "the file was truncated"
                } else {
                    "the file was extended by something other than ringrelay"
                }
            ),
            OpenError::Capacity {
                path,
                on_disk,
                configured,
            } => write!(
                f,
                "ring {}: holds {} ({on_disk} bytes) but the configuration asks for {} ({configured} bytes); \
                 set the feed's buffer back to size = \"{on_disk}\" to keep its records, or stop the relay, \
                 check with `ringrelay inspect` that every output has delivered them, and move the file away",
                path.display(),
                human_bytes(*on_disk),
                human_bytes(*configured)
            ),
            OpenError::NoMetadata { path } => write!(
                f,
                "ring {}: both metadata slots are damaged: the records are still in the file; `ringrelay inspect PATH --export > FILE` writes every intact one, then move the ring aside to start the feed afresh",
                path.display()
            ),
            OpenError::WrongFeed {
                path,
                found,
                expected,
            } => write!(
                f,
                "ring {} belongs to feed {found:?}, not {expected:?}: it was copied or renamed from \
                 another feed's ring; move it back to {found}.ring, or aside to start {expected} afresh",
                path.display()
            ),
            OpenError::Locked { path } => write!(
                f,
                "ring {}: locked by another process; is another ringrelay running with this data_dir?",
                path.display()
            ),
            OpenError::BadOptions { path, why } => write!(f, "ring {}: {why}", path.display()),
        }
    }
}

impl std::error::Error for OpenError {}

/// Why a record was not appended. Zero-sized on the hot path: the caller still holds the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendError {
    /// `block` policy: no room until outputs deliver the oldest records.
    Full,
    /// The payload is longer than the ring's maximum record size (or a reservation longer than
    /// [`Ring::lines_max`]).
    TooLarge,
}

/// [`Ring::commit_lines`] without a reservation that holds the body it names: a bug of the
/// caller. Nothing was committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotReserved;

/// An entry whose body is in place, for [`Ring::write_entry`].
struct NewEntry {
    wraps: bool,
    len: u32,
    flags: u8,
    count: u32,
    pcrc: u32,
    ts: u64,
}

/// Room made at the head by [`Ring::reserve`].
#[derive(Clone, Copy, Debug)]
struct Reserved {
    /// The entry goes at offset 0, after a wrap marker at the head.
    wraps: bool,
    /// Bytes of body.
    room: usize,
}

/// What [`Ring::checkpoint_in_background`] did.
#[derive(Debug)]
pub enum BackgroundCheckpoint {
    /// The slot is written and a sync of the file (records and slot) is running in the kernel.
    Started,
    /// The previous sync has not finished: the slot is written, the next sync waits for the
    /// next checkpoint. Counted in [`Ring::syncs_behind`].
    Busy,
    /// The kernel refuses background syncs (no AIO, a seccomp filter, a file system without
    /// fsync for AIO, no AIO resources): no sync started, now or from now on; the caller syncs
    /// with [`Ring::checkpoint`]. Carries the error the first time only.
    Unavailable(Option<io::Error>),
    /// The slot is written; the caller has the sync helper process sync the file (records and
    /// slot) and reports its end with [`Ring::helper_sync_done`] ([`Ring::set_sync_helper`]).
    ForHelper,
}

/// The ring's background sync, set up on first use.
enum Background<S> {
    Untried,
    Ready(S),
    /// Another process (the relay's sync helper) runs the syncs: `in_flight` until it reports
    /// the one handed to it done; `failed`, its error, until the ring returns it.
    Helper {
        in_flight: bool,
        failed: Option<io::Error>,
    },
    Refused,
}

/// Why a cursor could not be opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CursorError {
    /// All [`MAX_CURSORS`] entries are taken.
    NoSlot,
    /// Names are 1 to 32 bytes.
    BadName,
}

/// What opening the ring found and repaired.
#[derive(Clone, Debug, Default)]
pub struct Recovery {
    /// The metadata slot used (0 = A, 1 = B) and its generation.
    pub slot: usize,
    /// The generation of that slot.
    pub generation: u64,
    /// Records found past the last checkpoint (written before a crash and kept).
    pub scanned: u64,
    /// Records past the last checkpoint found damaged, with valid entries of the same run after
    /// them: kept in the ring, where readers report and skip them (`inspect --verify` lists
    /// them). Not a torn tail.
    pub damaged: u64,
    /// The scan ended on a record with the right sequence number but a bad CRC: a torn write.
    pub torn: bool,
    /// Damaged records at the tail dropped (an interrupted write over the oldest records).
    pub tail_dropped: u64,
    /// Wall-clock time of the last checkpoint before this open, ns (0 for a new ring).
    pub last_checkpoint_ns: u64,
    /// Whether the ring was created by this open.
    pub created: bool,
}

/// Numbers about a ring, for `inspect`, metrics and sizing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of the data area.
    pub capacity: u64,
    /// Bytes between tail and head.
    pub used: u64,
    /// Records held.
    pub records: u64,
    /// Sequence number of the oldest record held.
    pub first_seq: u64,
    /// Sequence number the next record will get.
    pub next_seq: u64,
    /// Receive time of the oldest record, ns.
    pub oldest_ts: Option<u64>,
    /// Receive time of the newest record, ns.
    pub newest_ts: Option<u64>,
    /// Records overwritten since creation.
    pub evicted: u64,
}

impl Stats {
    /// Seconds between the oldest and the newest record.
    pub fn span_secs(&self) -> f64 {
        match (self.oldest_ts, self.newest_ts) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1e9,
            _ => 0.0,
        }
    }
}

/// A ring file opened for writing.
pub struct Ring<B: Backing = MmapBacking> {
    path: PathBuf,
    map: B,
    capacity: u64,
    /// Largest payload `append` accepts (the configured limit).
    max_record: u32,
    /// Largest payload a valid record may have (the superblock's limit, never lowered).
    read_max: u32,
    when_full: WhenFull,
    meta: Meta,
    since_meta: u64,
    /// Where the records not yet synced begin, and how many bytes of ring they take.
    dirty_from: u64,
    dirty_bytes: u64,
    /// How many of those bytes have been handed to the disk already ([`Ring::start_writeback`]).
    writeback_started: u64,
    /// Where the head was (bytes from `dirty_from`, sequence number) when writeback last
    /// started: the next writeback goes up to there.
    writeback_mark: (u64, u64),
    /// Records from this sequence number on were appended by this process after it last
    /// synced, checkpointed or started writeback of their pages: their CRCs are not computed
    /// again when read (see [`Ring::read`]).
    fresh_from: u64,
    /// The [`PREFAULT_STEP`] the head is in; `u64::MAX` once `MADV_POPULATE_WRITE` failed
    /// (a kernel before 5.14): pages then fault one by one.
    prefault_step: u64,
    background: Background<B::Sync>,
    /// The metadata slot the last completed sync made durable: never written over until the
    /// next sync completes (`buffer-spec.md` §4).
    durable_slot: Option<usize>,
    /// The slot written when the sync in flight started: durable once it completes.
    syncing_slot: Option<usize>,
    /// Background checkpoints that found the previous sync still running.
    syncs_behind: u64,
    /// Room made for a lines entry, not committed yet.
    reserved: Option<Reserved>,
    /// Ring bytes the entries appended since the open took (wrap waste included).
    appended_bytes: u64,
    recovery: Recovery,
}

impl<B: Backing> fmt::Debug for Ring<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .field("tail", &self.meta.tail)
            .field("head", &self.meta.head)
            .finish()
    }
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> OpenError + 'a {
    move |err| OpenError::Io {
        path: path.to_path_buf(),
        op,
        err,
    }
}

impl Ring {
    /// Opens the ring at `path`, creating it if it does not exist, and recovers it
    /// (`buffer-spec.md` §8): the newest valid metadata slot, the records written after it, the
    /// tail, the cursors. The recovered state is checkpointed before this returns.
    pub fn open(path: &Path, opts: &RingOptions) -> Result<Ring, OpenError> {
        Self::open_or_create(path, opts, true)
    }

    /// [`Ring::open`]; `may_create` false after a creation found the file already there.
    fn open_or_create(
        path: &Path,
        opts: &RingOptions,
        may_create: bool,
    ) -> Result<Ring, OpenError> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && may_create => {
                // A creation that failed (a full disk) leaves no temporary file behind.
                let created = Self::create(path, opts)
                    .inspect_err(|_| drop(std::fs::remove_file(path.with_extension("ring.tmp"))))?;
                let mut ring = Self::open_or_create(path, opts, false)?;
                ring.recovery.created = created;
                return Ok(ring);
            }
            Err(e) => return Err(io_err(path, "open")(e)),
        };
        let file = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| OpenError::Locked { path: path.into() })?;
        let sb = read_superblock(&file, path)?;
        // A ring renamed from another feed would send that feed's records to this feed's
        // outputs. (A reader, `inspect`, opens any ring.)
        if sb.name != opts.name {
            return Err(OpenError::WrongFeed {
                path: path.into(),
                found: sb.name,
                expected: opts.name.clone(),
            });
        }
        if sb.capacity != opts.capacity {
            return Err(OpenError::Capacity {
                path: path.into(),
                on_disk: sb.capacity,
                configured: opts.capacity,
            });
        }
        let map = backing::map_rw(&file, DATA_OFFSET + sb.capacity).map_err(io_err(path, "map"))?;
        Self::open_on(path, sb, MmapBacking::new(map, file), opts)
    }
}

impl<B: Backing> Ring<B> {
    /// Opens the ring file image that `backing` holds and recovers it as [`Ring::open`] does
    /// (the superblock's geometry is checked; `path` only names the ring in errors). For tests
    /// that run the ring on a simulated disk (`tests/ring_power_loss.rs`); the relay uses
    /// [`Ring::open`].
    pub fn open_backing(path: &Path, backing: B, opts: &RingOptions) -> Result<Ring<B>, OpenError> {
        let damaged = |why| OpenError::DamagedSuperblock {
            path: path.into(),
            why,
        };
        let sb = backing
            .get(..SUPERBLOCK_LEN)
            .ok_or(damaged("shorter than a superblock"))
            .and_then(|b| Superblock::parse(b).map_err(|_| damaged("does not parse")))?;
        let len = backing.len() as u64;
        if len != DATA_OFFSET + sb.capacity {
            return Err(OpenError::Length {
                path: path.into(),
                len,
                expected: DATA_OFFSET + sb.capacity,
            });
        }
        if sb.capacity != opts.capacity {
            return Err(OpenError::Capacity {
                path: path.into(),
                on_disk: sb.capacity,
                configured: opts.capacity,
            });
        }
        Self::open_on(path, sb, backing, opts)
    }

    /// The backing (for tests on a simulated disk).
    pub fn backing(&self) -> &B {
        &self.map
    }

    /// The backing, to change (for tests on a simulated disk: a power loss, a sync that
    /// completes).
    pub fn backing_mut(&mut self) -> &mut B {
        &mut self.map
    }

    /// [`Ring::open`] once the file is mapped and its superblock checked.
    fn open_on(
        path: &Path,
        mut sb: Superblock,
        mut map: B,
        opts: &RingOptions,
    ) -> Result<Ring<B>, OpenError> {
        // A larger record limit only widens what is valid: raise it in place. A version 1, 2 or
        // 3 ring is a version 4 ring without chunked entries or more than four run starts: say
        // version 4 before writing any.
        if opts.max_record > sb.max_record || sb.version < format::VERSION {
            validate_options(path, opts)?;
            sb.max_record = sb.max_record.max(opts.max_record);
            sb.version = format::VERSION;
            sb.write(&mut map[..SUPERBLOCK_LEN]);
            map.flush_range(0, SUPERBLOCK_LEN)
                .map_err(io_err(path, "sync superblock"))?;
        }
        let (meta, recovery) = recover(&map, &sb, path)?;
        let head_seq = meta.head.seq;
        let mut ring = Ring {
            path: path.into(),
            map,
            capacity: sb.capacity,
            max_record: opts.max_record.min(sb.max_record),
            read_max: sb.max_record,
            when_full: opts.when_full,
            meta,
            since_meta: 0,
            dirty_from: 0,
            dirty_bytes: 0,
            writeback_started: 0,
            writeback_mark: (0, head_seq),
            fresh_from: head_seq,
            prefault_step: 0,
            background: Background::Untried,
            durable_slot: None,
            syncing_slot: None,
            syncs_behind: 0,
            reserved: None,
            appended_bytes: 0,
            recovery,
        };
        ring.fix_cursors();
        // A new run: records written from now on carry it, so nothing an earlier run left
        // beyond the recovered head can ever chain onto them (`buffer-spec.md` §8, step 5).
        ring.meta.run = ring.meta.run.saturating_add(1);
        // And from the recovered head on, only this run's entries are records: what an earlier
        // run left there (dropped by this recovery) is never read as one, even when a later
        // slot reaches the disk before this run's entries do (`buffer-spec.md` §4, §5). The
        // earlier starts stay as long as the records they guard are in the ring: damage a
        // power loss left there may uncover an earlier run's leftovers at any later time.
        ring.meta.start_run(ring.meta.run);
        let now = ring.meta.checkpoint_ns.max(ring.meta.last_ts);
        ring.checkpoint(now, true)
            .map_err(io_err(path, "checkpoint after recovery"))?;
        Ok(ring)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening the ring found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Bytes of the data area.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Largest payload accepted.
    pub fn max_record(&self) -> u32 {
        self.max_record
    }

    fn data(&self) -> &[u8] {
        &self.map[DATA_OFFSET as usize..]
    }

    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.map[DATA_OFFSET as usize..]
    }

    /// A read-only view of the records.
    pub fn view(&self) -> View<'_> {
        View {
            data: self.data(),
            max_record: self.read_max,
            run: self.meta.run,
            run_starts: &self.meta.run_starts,
            tail: self.meta.tail,
            head: self.meta.head,
        }
    }

    /// The oldest record held.
    pub fn tail(&self) -> Pos {
        self.meta.tail
    }

    /// Where the next record goes.
    pub fn head(&self) -> Pos {
        self.meta.head
    }

    /// Reads the record at `pos`, as [`View::read`], except that the CRCs of a *fresh* record
    /// are not computed again: one this process appended since it last synced, checkpointed
    /// (at least once a second in the relay) or started the writeback of its pages. They were
    /// computed from the bytes it wrote; its pages have not been written out and read back
    /// since, so they hold those bytes (`buffer-spec.md` §7). Its header's fields are checked
    /// as any other's (kind, length, sequence number, run).
    pub fn read(&self, pos: Pos) -> Read<'_> {
        self.view().read_with(pos, pos.seq >= self.fresh_from)
    }

    /// The record with sequence number `seq` (clamped to tail and head). O(log n).
    pub fn seek_seq(&self, seq: u64) -> Pos {
        self.view().seek_seq(seq)
    }

    /// The first record received at or after `ts_ns`. O(log n).
    pub fn seek_time(&self, ts_ns: u64) -> Pos {
        self.view().seek_time(ts_ns)
    }

    /// Ring bytes the entries appended since the ring was opened took, headers, padding and
    /// the unused ends of laps included: what the input costs the ring.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes
    }

    /// Numbers about the ring.
    pub fn stats(&self) -> Stats {
        stats_of(&self.view(), &self.meta)
    }
}

fn stats_of(v: &View<'_>, meta: &Meta) -> Stats {
    let records = v.head.seq - v.tail.seq;
    let oldest_ts = match v.read(v.tail) {
        Read::Record(r) => Some(r.ts),
        _ => None,
    };
    let newest_ts = (records > 0).then_some(meta.last_ts);
    let evicted = meta.evicted;
    Stats {
        capacity: v.data.len() as u64,
        used: v.used(),
        records,
        first_seq: v.tail.seq,
        next_seq: v.head.seq,
        oldest_ts,
        newest_ts,
        evicted,
    }
}

/// A ring file opened read-only, for `inspect`: no lock is taken, nothing is written; the
/// recovery is computed in memory exactly as [`Ring::open`] would.
pub struct RingReader {
    map: Mmap,
    /// The superblock.
    pub superblock: Superblock,
    meta: Meta,
    /// What recovery found.
    pub recovery: Recovery,
}

impl RingReader {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<RingReader, OpenError> {
        let file = File::open(path).map_err(io_err(path, "open"))?;
        let sb = read_superblock(&file, path)?;
        let map = backing::map_ro(&file, DATA_OFFSET + sb.capacity).map_err(io_err(path, "map"))?;
        let (meta, recovery) = recover(&map, &sb, path)?;
        Ok(RingReader {
            map,
            superblock: sb,
            meta,
            recovery,
        })
    }

    /// A view of the records.
    pub fn view(&self) -> View<'_> {
        View {
            data: &self.map[DATA_OFFSET as usize..],
            max_record: self.superblock.max_record,
            run: self.meta.run,
            run_starts: &self.meta.run_starts,
            tail: self.meta.tail,
            head: self.meta.head,
        }
    }

    /// Numbers about the ring.
    pub fn stats(&self) -> Stats {
        stats_of(&self.view(), &self.meta)
    }

    /// Cursors: name, position, records lost.
    pub fn cursors(&self) -> impl Iterator<Item = (&str, Pos, u64)> + '_ {
        self.meta.cursors_in_use()
    }

    /// The fencing epoch and run.
    pub fn epoch_run(&self) -> (u64, u32) {
        (self.meta.epoch, self.meta.run)
    }
}

/// `1073741824` → `1 GiB`; exact multiples only get a unit.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
    }
    if n >= 1 << 20 {
        return format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64);
    }
    format!("{n} B")
}

/// `n` bytes to one decimal in the largest binary unit it reaches (`85.0 GiB`, `4.0 MiB`).
pub fn human_bytes_approx(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    match UNITS.iter().find(|(u, _)| n >= *u) {
        Some((u, name)) => format!("{:.1} {name}", n as f64 / *u as f64),
        None => format!("{n} bytes"),
    }
}
