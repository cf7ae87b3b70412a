//! The ring file's mapping, its writeback and its background sync: the only code in ringrelay
//! that is `unsafe`.
//!
//! # The contract
//! A memory map hands out `&[u8]` / `&mut [u8]` over bytes the kernel shares with the file.
//! Rust's aliasing rules hold only if nobody else changes or shrinks the file while it is mapped;
//! if the file shrinks, touching the lost pages raises SIGBUS. We keep that promise as far as a
//! process can:
//! - the file is opened `0600` and held under an exclusive `flock` for as long as it is mapped,
//!   so a second ringrelay (or `ringrelay inspect` in write mode) cannot open it;
//! - its length is checked against the superblock before mapping, and the mapping never extends
//!   past it;
//! - the whole file is allocated on disk at creation (`posix_fallocate`), so a write through the
//!   mapping never meets a hole on a full disk (which would raise SIGBUS).
//!
//! What we cannot prevent is another program ignoring the lock and truncating the file (an
//! operator's `truncate -s 0`): that kills the relay with SIGBUS, as it would any mmap user.
//! `ringrelay inspect` maps read-only and without the lock, so it may read a live ring while
//! the relay writes it; it then sees a moving target (records at the head may look torn), never
//! undefined behaviour in the relay.
//!
//! # The seam
//! The ring reaches its file only through [`Backing`]: the bytes, and the syncs that make them
//! durable. [`MmapBacking`] (the mapping and the file) is the only one the relay uses; the ring
//! is generic over it (`Ring<B: Backing = MmapBacking>`), so the hot path calls the mapping
//! directly, as before. `tests/ring_power_loss.rs` runs the ring on an in-memory page cache and
//! disk and cuts the power between any two operations; the trait's docs say what a sync
//! promises, which is all such a test may rely on.

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::ptr;

use memmap2::{Mmap, MmapMut, MmapOptions};
use nix::fcntl::Flock;

/// What the ring needs of its file: the whole file's bytes, to read and write in place, and the
/// operations that move them to disk. [`MmapBacking`] is the file itself (a shared mapping); a
/// test may put the ring on another backing to simulate a power loss
/// (`tests/ring_power_loss.rs`).
///
/// # What each operation promises
/// The bytes (`Deref<Target = [u8]>`, the file from offset 0) are the page cache: a write is
/// seen by every later read and survives a process crash, and nothing in them is durable until
/// a sync covering it completes. A power loss leaves the file as the disk last had it: every
/// page synced since it last changed, plus any of the other changed ("dirty") pages, each one
/// whole, old, or torn at a sector boundary (`buffer-spec.md` §10).
/// - [`Backing::flush_range`]: when it returns `Ok`, the pages that hold `offset..offset + len`
///   (whole pages: the range is widened to page boundaries) are durable as they are now.
/// - [`Backing::start_writeback`]: starts writing pages back without waiting; promises nothing.
/// - [`Backing::populate_write`]: makes pages writable ahead of use; changes no byte, promises
///   nothing; an error means it is not supported (the ring stops asking).
/// - The background sync: [`Backing::background_sync`] sets one up (an error: the backing has
///   none, the ring syncs in the loop); [`Backing::start_background_sync`] starts a sync of the
///   whole file (one at a time); once [`Backing::background_sync_finished`] has returned
///   `Ok(true)` for it (with `wait`, it waits), every page that was dirty when it started is
///   durable, as it was then or as it is now. Until then, nothing more is durable than before
///   it started.
pub trait Backing: Deref<Target = [u8]> + DerefMut {
    /// The state of a background sync ([`Backing::background_sync`]).
    type Sync;

    /// Makes the pages holding `offset..offset + len` durable (`msync(MS_SYNC)`).
    fn flush_range(&mut self, offset: usize, len: usize) -> io::Result<()>;

    /// Starts writing the dirty pages of `offset..offset + len` to disk without waiting
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Nothing is durable by it.
    fn start_writeback(&mut self, offset: u64, len: u64) -> io::Result<()>;

    /// Makes the pages of `offset..offset + len` writable in one go (`MADV_POPULATE_WRITE`).
    fn populate_write(&mut self, offset: usize, len: usize) -> io::Result<()>;

    /// Sets up a background sync, or says why there is none.
    fn background_sync(&mut self) -> io::Result<Self::Sync>;

    /// Starts a sync of the whole file in the background (`fdatasync` by Linux AIO). Not while
    /// another is in flight. An error means it did not start.
    fn start_background_sync(&mut self, sync: &mut Self::Sync) -> io::Result<()>;

    /// Whether the sync started last has completed (true when none is in flight); with `wait`,
    /// waits until it has. The sync's own error is returned once, when it completes.
    fn background_sync_finished(&mut self, sync: &mut Self::Sync, wait: bool) -> io::Result<bool>;
}

/// The ring file itself: a shared read-write mapping of all of it, and the file, held under its
/// exclusive `flock` for as long as the mapping (see the module docs).
pub struct MmapBacking {
    map: MmapMut,
    // Declared after the map, so dropped after it: the lock outlives the mapping.
    file: Flock<File>,
}

impl MmapBacking {
    /// `map` must be [`map_rw`] of `file`, which holds the file's exclusive lock.
    pub(super) fn new(map: MmapMut, file: Flock<File>) -> MmapBacking {
        MmapBacking { map, file }
    }
}

impl Deref for MmapBacking {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        &self.map
    }
}

impl DerefMut for MmapBacking {
    #[inline]
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

impl Backing for MmapBacking {
    type Sync = BackgroundSync;

    fn flush_range(&mut self, offset: usize, len: usize) -> io::Result<()> {
        self.map.flush_range(offset, len)
    }

    fn start_writeback(&mut self, offset: u64, len: u64) -> io::Result<()> {
        start_writeback(&self.file, offset, len)
    }

    fn populate_write(&mut self, offset: usize, len: usize) -> io::Result<()> {
        self.map
            .advise_range(memmap2::Advice::PopulateWrite, offset, len)
    }

    fn background_sync(&mut self) -> io::Result<BackgroundSync> {
        BackgroundSync::new()
    }

    fn start_background_sync(&mut self, sync: &mut BackgroundSync) -> io::Result<()> {
        sync.start(&self.file)
    }

    fn background_sync_finished(
        &mut self,
        sync: &mut BackgroundSync,
        wait: bool,
    ) -> io::Result<bool> {
        sync.finished(wait)
    }
}

/// Maps `len` bytes of `file` for reading and writing.
pub fn map_rw(file: &File, len: u64) -> io::Result<MmapMut> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("ring too large to map"))?;
    // SAFETY: the caller holds an exclusive flock on `file` (Ring::open/create take it before
    // calling here and keep the File, and so the lock, alive as long as the map), has checked
    // that the file is at least `len` bytes long and allocated its blocks; ringrelay itself
    // never truncates a mapped ring. See the module docs for what an outside program can break.
    unsafe { MmapOptions::new().len(len).map_mut(file) }
}

/// Maps `len` bytes of `file` read-only, for offline inspection.
pub fn map_ro(file: &File, len: u64) -> io::Result<Mmap> {
    let len = usize::try_from(len).map_err(|_| io::Error::other("ring too large to map"))?;
    // SAFETY: the caller checked the file is at least `len` bytes long. The map is read-only and
    // every read through it goes through bounds-checked slices that tolerate any byte values;
    // a concurrent writer (a live relay) changes bytes we read, which the CRC checks report as
    // damage, and never shrinks the file (see the module docs).
    unsafe { MmapOptions::new().len(len).map(file) }
}

/// Starts writing the dirty pages of `file` in `offset..offset + len` to disk and returns
/// without waiting for them (`sync_file_range(2)` with `SYNC_FILE_RANGE_WRITE`). This makes
/// nothing durable by itself: a later `msync` waits for these writes, writes what is left and
/// flushes the disk's cache; it only finds less to do.
pub fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    // SAFETY: sync_file_range(2) takes a file descriptor and three integers and touches no
    // memory of ours; the descriptor is valid for the call because `file` is borrowed.
    let rc = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct iocb` of `linux/aio_abi.h`, in its little-endian layout (x86-64, AArch64).
#[repr(C)]
#[derive(Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    lio_opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// `struct io_event` of `linux/aio_abi.h`.
#[repr(C)]
#[derive(Default)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

const _: () = assert!(std::mem::size_of::<Iocb>() == 64 && cfg!(target_endian = "little"));
const _: () = assert!(std::mem::size_of::<IoEvent>() == 32);

/// `IOCB_CMD_FDSYNC`: `fdatasync(2)`, run by the kernel in the background (Linux 4.18).
const IOCB_CMD_FDSYNC: u16 = 3;

/// A kernel AIO context (`io_setup(2)`) that runs one `fdatasync` of a file at a time in the
/// background, so that the event loop does not wait for the disk: the kernel does the same
/// work as `msync(MS_SYNC)` of the whole file (on Linux both write the file's dirty pages,
/// those dirtied through a shared mapping included, and flush the disk's cache) in a worker
/// thread of its own.
pub struct BackgroundSync {
    ctx: libc::c_ulong,
    in_flight: bool,
}

impl BackgroundSync {
    /// A new context, or the error of a kernel (or seccomp filter) that refuses AIO.
    pub fn new() -> io::Result<BackgroundSync> {
        let mut ctx: libc::c_ulong = 0;
        // SAFETY: io_setup(2) writes the new context's id into `ctx`, a local we own, and
        // reads nothing else of ours.
        let rc = unsafe { libc::syscall(libc::SYS_io_setup, 1 as libc::c_long, &mut ctx) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(BackgroundSync {
            ctx,
            in_flight: false,
        })
    }

    /// Starts `fdatasync(file)` and returns without waiting for it. Not while another is in
    /// flight. An error (`EINVAL`: the file system has no fsync for AIO; `EAGAIN`: no AIO
    /// resources) means the sync did not start.
    pub fn start(&mut self, file: &File) -> io::Result<()> {
        debug_assert!(!self.in_flight, "one background sync at a time");
        let mut iocb = Iocb {
            lio_opcode: IOCB_CMD_FDSYNC,
            fildes: file.as_raw_fd() as u32,
            ..Iocb::default()
        };
        let mut list = [&mut iocb as *mut Iocb];
        // SAFETY: io_submit(2) reads one pointer from `list` and the iocb it points to, both
        // locals that outlive the call; the kernel copies the iocb and takes its own reference
        // to the file, so neither needs to live on after it returns.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_io_submit,
                self.ctx,
                1 as libc::c_long,
                list.as_mut_ptr(),
            )
        };
        match rc {
            1 => {
                self.in_flight = true;
                Ok(())
            }
            0 => Err(io::Error::other("io_submit took no request")),
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Whether the sync started last has finished (true when none is in flight); with `wait`,
    /// blocks until it has. The sync's own error (`EIO`) is returned once, when it finishes.
    pub fn finished(&mut self, wait: bool) -> io::Result<bool> {
        if !self.in_flight {
            return Ok(true);
        }
        let mut event = IoEvent::default();
        let now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let timeout: *const libc::timespec = if wait { ptr::null() } else { &now };
        loop {
            // SAFETY: io_getevents(2) writes at most one event into `event`, a local of the
            // kernel's `struct io_event` layout, and reads the timeout, a local or null.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_io_getevents,
                    self.ctx,
                    libc::c_long::from(wait),
                    1 as libc::c_long,
                    &mut event as *mut IoEvent,
                    timeout,
                )
            };
            match rc {
                0 => return Ok(false),
                1 => break,
                _ => {
                    let err = io::Error::last_os_error();
                    if err.kind() != io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
        }
        self.in_flight = false;
        if event.res < 0 {
            return Err(io::Error::from_raw_os_error(-event.res as i32));
        }
        Ok(true)
    }
}

impl Drop for BackgroundSync {
    fn drop(&mut self) {
        // SAFETY: io_destroy(2) takes the context id this value owns (and waits for a sync in
        // flight); nothing uses the id afterwards.
        unsafe {
            libc::syscall(libc::SYS_io_destroy, self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_background_sync_of_a_written_file_finishes_without_error() {
        let dir = std::env::temp_dir().join(format!("ringrelay-aio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let mut file = File::create(&path).unwrap();
        file.write_all(&[7u8; 1 << 20]).unwrap();
        // A kernel or seccomp profile without AIO refuses here; the relay then syncs in the
        // loop, as the ring's own tests show. Anything else must work.
        let mut sync = match BackgroundSync::new() {
            Ok(s) => s,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)) => return,
            Err(e) => panic!("io_setup: {e}"),
        };
        assert!(sync.finished(false).unwrap(), "nothing in flight yet");
        sync.start(&file).unwrap();
        assert!(sync.finished(true).unwrap());
        assert!(
            sync.finished(false).unwrap(),
            "seen finished, nothing in flight"
        );
        // And again: one context serves one sync after another.
        file.write_all(&[8u8; 4096]).unwrap();
        sync.start(&file).unwrap();
        assert!(sync.finished(true).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
