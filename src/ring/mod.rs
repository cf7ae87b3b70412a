//! The ring: one memory-mapped, CRC-checked, crash-safe buffer file per feed.
//!
//! `buffer-spec.md` at the repository root is the normative description of the bytes; this module
//! follows it section by section (`format` = §3–5, `view` = §6–8, this file = §9–10).
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
pub mod format;
pub mod salvage;
pub mod sync_helper;
pub mod view;

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
pub use format::{record_stride, CursorState, Pos, MAX_CURSORS, MIN_CAPACITY, RECORD_HEADER};
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

/// Reads and checks the superblock and the file length, before anything is mapped.
fn read_superblock(file: &File, path: &Path) -> Result<Superblock, OpenError> {
    let len = file.metadata().map_err(io_err(path, "stat"))?.len();
    let mut sb = [0u8; SUPERBLOCK_LEN];
    if len < SUPERBLOCK_LEN as u64 {
        let mut head = vec![0u8; len as usize];
        file.read_exact_at(&mut head, 0)
            .map_err(io_err(path, "read superblock"))?;
        return Err(if head.starts_with(&format::MAGIC) {
            OpenError::Length {
                path: path.into(),
                len,
                expected: DATA_OFFSET + MIN_CAPACITY,
            }
        } else {
            OpenError::NotARing { path: path.into() }
        });
    }
    file.read_exact_at(&mut sb, 0)
        .map_err(io_err(path, "read superblock"))?;
    let sb = Superblock::parse(&sb).map_err(|e| match e {
        SuperblockError::Magic => OpenError::NotARing { path: path.into() },
        SuperblockError::Version(found) => OpenError::Version {
            path: path.into(),
            found,
        },
        SuperblockError::Crc => OpenError::DamagedSuperblock {
            path: path.into(),
            why: "CRC mismatch",
        },
        SuperblockError::Geometry => OpenError::DamagedSuperblock {
            path: path.into(),
            why: "impossible geometry (capacity, record header size or alignment)",
        },
    })?;
    let expected = DATA_OFFSET + sb.capacity;
    if len != expected {
        return Err(OpenError::Length {
            path: path.into(),
            len,
            expected,
        });
    }
    Ok(sb)
}

/// The ring's state rebuilt from a file's bytes: the newest valid metadata slot, then the
/// recovery scan (`buffer-spec.md` §8). Shared by [`Ring::open`] and [`RingReader`].
fn recover(map: &[u8], sb: &Superblock, path: &Path) -> Result<(Meta, Recovery), OpenError> {
    let slots = SLOT_OFFSETS.map(|off| {
        let off = off as usize;
        Meta::parse(&map[off..off + META_LEN], sb.capacity)
    });
    let (slot, mut meta) = match slots {
        [Some(a), Some(b)] if b.generation > a.generation => (1, b),
        [Some(a), _] => (0, a),
        [None, Some(b)] => (1, b),
        [None, None] => return Err(OpenError::NoMetadata { path: path.into() }),
    };
    let data = &map[DATA_OFFSET as usize..];
    let scan = view::scan_forward(data, sb.max_record, meta.run, meta.head, meta.last_ts);
    let mut rec = Recovery {
        slot,
        generation: meta.generation,
        scanned: scan.records,
        damaged: scan.damaged,
        torn: scan.torn,
        last_checkpoint_ns: meta.checkpoint_ns,
        ..Recovery::default()
    };
    meta.head = scan.head;
    if let Some(newest) = scan.newest {
        meta.last_ts = newest.ts;
        // The newest record says where the tail was once it was written; the tail's own
        // header (if intact) gives its sequence number.
        let v = View {
            data,
            max_record: sb.max_record,
            run: meta.run,
            run_starts: &meta.run_starts,
            tail: Pos::at(newest.tail, meta.tail.seq),
            head: meta.head,
        };
        let tail_off = v.norm(newest.tail);
        meta.tail = match v.header_at(tail_off) {
            Some(h) if h.seq >= meta.tail.seq && h.seq < meta.head.seq => Pos::at(tail_off, h.seq),
            // The tail inside that entry: an earlier recovery dropped the damaged records of a
            // partly damaged entry before it (below), and the slot's tail is the first one it
            // kept; the records before it in the entry are gone, those from it on are not.
            Some(h) if (h.seq..h.seq.saturating_add(h.records())).contains(&meta.tail.seq) => {
                Pos::at(tail_off, meta.tail.seq)
            }
            _ => v
                .resync(0, v.used(), meta.tail.seq)
                .map_or(meta.head, |(_, p, _)| p),
        };
        meta.evicted += meta.tail.seq.saturating_sub(v.tail.seq);
    }
    // An append interrupted over the oldest records leaves them damaged: they were being
    // evicted, so they are dropped here rather than reported as corruption later.
    loop {
        let v = View {
            data,
            max_record: sb.max_record,
            run: meta.run,
            run_starts: &meta.run_starts,
            tail: meta.tail,
            head: meta.head,
        };
        match v.read(meta.tail) {
            Read::Corrupt { next, .. } => {
                rec.tail_dropped += next.seq - meta.tail.seq;
                meta.tail = next;
            }
            _ => break,
        }
    }
    Ok((meta, rec))
}

impl Ring {
    /// Opens the ring at `path`, creating it if it does not exist, and recovers it
    /// (`buffer-spec.md` §8): the newest valid metadata slot, the records written after it, the
    /// tail, the cursors. The recovered state is checkpointed before this returns.
    pub fn open(path: &Path, opts: &RingOptions) -> Result<Ring, OpenError> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A creation that failed (a full disk) leaves no temporary file behind.
                Self::create(path, opts)
                    .inspect_err(|_| drop(std::fs::remove_file(path.with_extension("ring.tmp"))))?;
                let mut ring = Self::open(path, opts)?;
                ring.recovery.created = true;
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

    /// Creates a new ring file: written under a temporary name, allocated, synced, renamed.
    fn create(path: &Path, opts: &RingOptions) -> Result<(), OpenError> {
        validate_options(path, opts)?;
        let tmp = path.with_extension("ring.tmp");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        let len = DATA_OFFSET + opts.capacity;
        nix::fcntl::posix_fallocate(&file, 0, len as i64).map_err(|e| OpenError::Io {
            path: tmp.clone(),
            op: "allocate disk space (posix_fallocate)",
            err: io::Error::from(e),
        })?;
        let mut head = vec![0u8; DATA_OFFSET as usize];
        Superblock {
            version: format::VERSION,
            capacity: opts.capacity,
            max_record: opts.max_record,
            created_ns: crate::clock::wall_ns(),
            name: opts.name.clone(),
        }
        .write(&mut head[..SUPERBLOCK_LEN]);
        // Generation 0 lives in slot A (`g mod 2`), so the first open writes generation 1 into
        // slot B and a torn write there leaves this slot intact.
        Meta {
            generation: 0,
            ..Meta::default()
        }
        .write(&mut head[SLOT_OFFSETS[0] as usize..]);
        file.write_all_at(&head, 0)
            .map_err(io_err(&tmp, "write header"))?;
        file.sync_all().map_err(io_err(&tmp, "fsync"))?;
        std::fs::rename(&tmp, path).map_err(io_err(path, "rename into place"))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(path, "fsync data directory"))?;
        }
        Ok(())
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
    fn placement(&self, len: u64) -> (bool, u64) {
        let wraps = self.meta.head.off + record_stride(len) > self.capacity;
        (wraps, self.room_taken(wraps, len))
    }

    /// The ring bytes an entry with a body of `len` bytes at the head takes: its stride, plus
    /// the unused end of the lap when it goes at offset 0 instead.
    fn room_taken(&self, wraps: bool, len: u64) -> u64 {
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
    fn write_entry(&mut self, e: NewEntry) -> Pos {
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
    fn prefault(&mut self, head_off: u64) {
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

    fn free(&self) -> u64 {
        self.capacity - self.view().used()
    }

    fn min_cursor_seq(&self) -> u64 {
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

    fn make_room(&mut self, need: u64) -> Result<(), AppendError> {
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
    fn after_tail(&self) -> (Pos, u64) {
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
    fn evict_to(&mut self, next: Pos) {
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
    fn fix_cursors(&mut self) {
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
        self.meta
            .cursors
            .iter()
            .filter(|c| c.in_use())
            .map(|c| (c.name_str(), c.pos, c.lost))
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

    fn write_meta(&mut self, now_ns: u64) -> usize {
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
    fn mark_synced(&mut self) {
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
    fn sync_completed(&mut self) {
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

    /// Ring bytes the entries appended since the ring was opened took, headers, padding and
    /// the unused ends of laps included: what the input costs the ring.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes
    }

    /// Background checkpoints that found the previous sync still running since the ring was
    /// opened: a disk slower than the sync period.
    pub fn syncs_behind(&self) -> u64 {
        self.syncs_behind
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

fn validate_options(path: &Path, opts: &RingOptions) -> Result<(), OpenError> {
    let bad = |why: String| {
        Err(OpenError::BadOptions {
            path: path.into(),
            why,
        })
    };
    if opts.capacity < MIN_CAPACITY || !opts.capacity.is_multiple_of(PAGE) {
        return bad(format!(
            "capacity {} must be a multiple of 4096 and at least {} bytes",
            opts.capacity, MIN_CAPACITY
        ));
    }
    if opts.max_record == 0 || opts.max_record > MAX_RECORD_LIMIT {
        return bad(format!(
            "max record size {} must be between 1 and {MAX_RECORD_LIMIT}",
            opts.max_record
        ));
    }
    if record_stride(u64::from(opts.max_record)) > opts.capacity / 4 {
        return bad(format!(
            "capacity {} must hold at least 4 records of the maximum size {} (at least {} bytes)",
            opts.capacity,
            opts.max_record,
            4 * record_stride(u64::from(opts.max_record))
        ));
    }
    Ok(())
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
        self.meta
            .cursors
            .iter()
            .filter(|c| c.in_use())
            .map(|c| (c.name_str(), c.pos, c.lost))
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
