//! The ring file's mapping and its writeback: the only code in ringrelay that is `unsafe`.
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

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use memmap2::{Mmap, MmapMut, MmapOptions};

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
