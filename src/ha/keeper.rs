//! The lease keeper's I/O, in the sync helper process ([`crate::sync_helper`]): the
//! heartbeat write, the fencing epochs read past the page cache, and the watchdog that kills a
//! relay whose loop froze past its lease ([`super::lease`] has the rules; this does the I/O).
//!
//! ## The request and the reply
//! On the helper's socket, next to ring paths (NUL-terminated, answered by an errno), a
//! heartbeat request is `0x01`, the budget in ms, then TAB-separated paths (the heartbeat file,
//! the lock file, every ring), then NUL. The answer is one line: `0 LOCK_EPOCH RING_EPOCH`, or
//! the errno of the heartbeat write. `0x02` then NUL disarms the watchdog (the relay stops
//! cleanly) and gets no answer.
//!
//! ## The heartbeat
//! The helper keeps the heartbeat file open under an OFD **read** lock: on NFSv4 every write
//! through it goes under this client's lock state, so once the server expired this client (the
//! standby took the lock) the write fails with `EIO` instead of landing; a read lock, because
//! several instances on one host (tests; a restart while a stopped predecessor lingers) share
//! the file and must never wait for each other. Each heartbeat is a 16-byte `pwrite` (a counter
//! and the wall time) and an `fdatasync`: a WRITE and a COMMIT the server must answer.
//!
//! ## The epochs, past the page cache
//! The loop's own fencing check reads the rings' epochs from its mapping, which on NFS is
//! never refreshed by a write from another VM (`notes/issue19-design.md` §2.1). With a lease,
//! the helper reads the lock file and every ring's superblock and metadata slots with
//! `O_DIRECT` (straight from the server on NFS) and reports the highest epochs: in the helper,
//! because such a read waits for the disk or the network every time, and the loop must not.
//! A file system that refuses `O_DIRECT` (tmpfs) is local, where the page cache is coherent:
//! plain reads there.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

use crate::ha::lock::LockRecord;
use crate::log::Level;
use crate::ring::format::{Meta, Superblock, META_LEN, PAGE, SLOT_OFFSETS};

/// First byte of a heartbeat request.
pub const HEARTBEAT: u8 = 0x01;
/// First byte of a disarm request.
pub const DISARM: u8 = 0x02;
/// How long after the relay's own deadline the helper kills a relay that did not stop.
pub const KILL_AFTER: Duration = Duration::from_secs(1);

/// A heartbeat request, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The relay's budget (lease − margin).
    pub budget: Duration,
    /// The heartbeat file.
    pub heartbeat: PathBuf,
    /// The lock file.
    pub lock_file: PathBuf,
    /// The rings whose epochs to read.
    pub rings: Vec<PathBuf>,
}

impl Request {
    /// The request's bytes, NUL included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        use std::os::unix::ffi::OsStrExt;
        out.push(HEARTBEAT);
        out.extend_from_slice(self.budget.as_millis().to_string().as_bytes());
        for p in [&self.heartbeat, &self.lock_file]
            .into_iter()
            .chain(&self.rings)
        {
            out.push(b'\t');
            out.extend_from_slice(p.as_os_str().as_bytes());
        }
        out.push(0);
    }

    /// Decodes a request (without its NUL); `None` if it is not one.
    pub fn decode(b: &[u8]) -> Option<Request> {
        use std::os::unix::ffi::OsStrExt;
        let rest = b.strip_prefix(&[HEARTBEAT])?;
        let mut parts = rest.split(|&c| c == b'\t');
        let budget = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let path = |p: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(p));
        let heartbeat = path(parts.next()?);
        let lock_file = path(parts.next()?);
        Some(Request {
            budget: Duration::from_millis(budget),
            heartbeat,
            lock_file,
            rings: parts.map(path).collect(),
        })
    }
}

/// A heartbeat reply, parsed: the epochs, or the errno of the heartbeat write.
pub fn parse_reply(line: &str) -> Result<(u64, u64), i32> {
    let mut it = line.split_ascii_whitespace();
    match it.next().and_then(|c| c.parse::<i32>().ok()) {
        Some(0) => {
            let lock = it.next().and_then(|e| e.parse().ok());
            let ring = it.next().and_then(|e| e.parse().ok());
            match (lock, ring) {
                (Some(l), Some(r)) => Ok((l, r)),
                _ => Err(libc::EPROTO),
            }
        }
        Some(errno) => Err(errno),
        None => Err(libc::EPROTO),
    }
}

/// One page, aligned for `O_DIRECT` (whose buffer, offset and length must be multiples of the
/// logical block size: 512 or 4096).
#[repr(C, align(4096))]
struct Pages([u8; 3 * PAGE as usize]);

/// The helper's side: the open heartbeat file and the files it reads epochs from.
pub struct Keeper {
    heartbeat: Option<(PathBuf, File)>,
    count: u64,
    /// Files opened for epoch reads, kept open: every `open` on NFS is a round trip and may
    /// invalidate the relay's cached pages of that file (close-to-open).
    readers: Vec<(PathBuf, File)>,
    pages: Box<Pages>,
}

impl Default for Keeper {
    fn default() -> Self {
        Keeper::new()
    }
}

impl Keeper {
    /// No file open yet.
    pub fn new() -> Keeper {
        Keeper {
            heartbeat: None,
            count: 0,
            readers: Vec::new(),
            pages: Box::new(Pages([0; 3 * PAGE as usize])),
        }
    }

    /// Runs one heartbeat request: the write, then the epochs. The reply line, without LF.
    pub fn run(&mut self, req: &Request) -> String {
        if let Err(e) = self.beat(&req.heartbeat) {
            return e.raw_os_error().unwrap_or(libc::EIO).to_string();
        }
        let lock = self.lock_epoch(&req.lock_file);
        let ring = req
            .rings
            .iter()
            .map(|r| self.ring_epoch(r))
            .max()
            .unwrap_or(0);
        format!("0 {lock} {ring}")
    }

    fn beat(&mut self, path: &Path) -> io::Result<()> {
        if self.heartbeat.as_ref().is_none_or(|(p, _)| p != path) {
            self.heartbeat = None;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o640)
                .open(path)?;
            let mut fl = crate::ha::lock::zeroed_flock();
            fl.l_type = libc::F_RDLCK as libc::c_short;
            fl.l_whence = libc::SEEK_SET as libc::c_short;
            // Never waits: nobody else takes a write lock on it; if something does, the
            // heartbeat fails (EAGAIN) and the lease's deadline decides.
            fcntl(&f, FcntlArg::F_OFD_SETLK(&fl)).map_err(io::Error::from)?;
            self.heartbeat = Some((path.to_path_buf(), f));
        }
        let Some((_, f)) = &self.heartbeat else {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        };
        self.count += 1;
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..].copy_from_slice(&crate::clock::wall_ns().to_le_bytes());
        f.write_all_at(&b, 0)?;
        f.sync_data()
    }

    /// The file at `path` open for reading past the page cache (plain where `O_DIRECT` is
    /// refused), kept open.
    fn reader(&mut self, path: &Path) -> io::Result<usize> {
        // A file replaced since it was opened (a new inode at the path) is opened again.
        let current = std::fs::metadata(path)?;
        if let Some(i) = self.readers.iter().position(|(p, _)| p == path) {
            let same = self.readers[i]
                .1
                .metadata()
                .is_ok_and(|m| (m.dev(), m.ino()) == (current.dev(), current.ino()));
            if !same {
                self.readers.swap_remove(i);
            }
        }
        let at = match self.readers.iter().position(|(p, _)| p == path) {
            Some(i) => i,
            None => {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .or_else(|e| match e.raw_os_error() {
                        Some(libc::EINVAL) => File::open(path),
                        _ => Err(e),
                    })?;
                self.readers.push((path.to_path_buf(), f));
                self.readers.len() - 1
            }
        };
        Ok(at)
    }

    /// Reads `len` bytes (a multiple of the page) at 0; the bytes read.
    fn read_pages(&mut self, path: &Path, len: usize) -> io::Result<usize> {
        let read = {
            let at = self.reader(path)?;
            read_full(&self.readers[at].1, &mut self.pages.0[..len])
        };
        if read.is_err() {
            // A file replaced or gone: open it again next time.
            self.readers.retain(|(p, _)| p != path);
        }
        read
    }

    /// The lock file's epoch as the storage holds it (0 if unreadable: the loop's own check
    /// reports a lock file that is not ours).
    fn lock_epoch(&mut self, path: &Path) -> u64 {
        let Ok(n) = self.read_pages(path, PAGE as usize) else {
            return 0;
        };
        std::str::from_utf8(&self.pages.0[..n])
            .ok()
            .and_then(|t| LockRecord::parse(t.trim_end_matches('\0')).ok())
            .map_or(0, |r| r.epoch)
    }

    /// The highest epoch of a ring's valid metadata slots as the storage holds them.
    fn ring_epoch(&mut self, path: &Path) -> u64 {
        let len = 3 * PAGE as usize;
        match self.read_pages(path, len) {
            Ok(n) if n == len => {}
            _ => return 0,
        }
        let b = &self.pages.0;
        let Ok(sb) = Superblock::parse(&b[..PAGE as usize]) else {
            return 0;
        };
        SLOT_OFFSETS
            .iter()
            .filter_map(|&at| Meta::parse(&b[at as usize..at as usize + META_LEN], sb.capacity))
            .map(|m| m.epoch)
            .max()
            .unwrap_or(0)
    }
}

/// One read at offset 0: with `O_DIRECT` a short read is the end of the file (a second read
/// at an unaligned offset would be refused).
fn read_full(f: &File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read_at(buf, 0) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// The watchdog: a thread of the helper that SIGKILLs the relay once it has sent no heartbeat
/// request for its budget + [`KILL_AFTER`]: its loop is frozen (on NFS: in a page fault or a
/// write the server does not answer) past the point where it would have fenced itself. A
/// thread, so that a heartbeat stuck in the same server outage cannot hold it.
pub struct Watchdog {
    base: Instant,
    /// Milliseconds after `base` at which to kill; `u64::MAX`: disarmed.
    kill_at: Arc<AtomicU64>,
}

impl Watchdog {
    /// Starts the thread, disarmed, watching `relay`.
    pub fn start(relay: i32) -> io::Result<Watchdog> {
        let base = Instant::now();
        let kill_at = Arc::new(AtomicU64::new(u64::MAX));
        let at = Arc::clone(&kill_at);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(relay, base, &at))?;
        Ok(Watchdog { base, kill_at })
    }

    /// A heartbeat request arrived now: the relay's deadline is at most `budget` from now.
    pub fn arm(&self, budget: Duration) {
        let at = self.base.elapsed() + budget + KILL_AFTER;
        self.kill_at.store(
            u64::try_from(at.as_millis()).unwrap_or(u64::MAX - 1),
            Ordering::SeqCst,
        );
    }

    /// The relay stops cleanly: no more heartbeats are coming, and that is fine.
    pub fn disarm(&self) {
        self.kill_at.store(u64::MAX, Ordering::SeqCst);
    }
}

fn watch(relay: i32, base: Instant, kill_at: &AtomicU64) {
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let at = kill_at.load(Ordering::SeqCst);
        let now = u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX);
        if at == u64::MAX || now < at {
            continue;
        }
        crate::log!(
            Level::Error,
            "fenced_by_helper",
            relay_pid = relay,
            reason = format!(
                "no heartbeat request from the relay for its lease budget + {} s: its event loop is frozen (on NFS: blocked on the server) past its lease deadline",
                KILL_AFTER.as_secs()
            ),
            action = "SIGKILL the relay so that it accepts and delivers nothing more; systemd restarts it and it stands by"
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(relay),
            nix::sys::signal::Signal::SIGKILL,
        );
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips() {
        let r = Request {
            budget: Duration::from_millis(1600),
            heartbeat: "/d/.heartbeat-vm1".into(),
            lock_file: "/d/ringrelay.lock".into(),
            rings: vec!["/d/a.ring".into(), "/d/b b.ring".into()],
        };
        let mut b = Vec::new();
        r.encode(&mut b);
        assert_eq!(b.last(), Some(&0));
        assert_eq!(Request::decode(&b[..b.len() - 1]), Some(r));
        assert_eq!(
            Request::decode(b"/d/a.ring"),
            None,
            "a ring path is not one"
        );
    }

    #[test]
    fn replies_parse() {
        assert_eq!(parse_reply("0 7 6"), Ok((7, 6)));
        assert_eq!(parse_reply("5"), Err(libc::EIO));
        assert_eq!(parse_reply("0"), Err(libc::EPROTO));
        assert_eq!(parse_reply("?"), Err(libc::EPROTO));
    }

    #[test]
    fn a_heartbeat_writes_its_file_and_reads_the_epochs_back() {
        let dir = std::env::temp_dir().join(format!("keeper-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lock = dir.join("x.lock");
        std::fs::write(&lock, "ringrelay-lock 1\nepoch=9\n").unwrap();
        let mut k = Keeper::new();
        let req = Request {
            budget: Duration::from_secs(1),
            heartbeat: dir.join(".heartbeat-test"),
            lock_file: lock,
            rings: vec![dir.join("missing.ring")],
        };
        assert_eq!(k.run(&req), "0 9 0");
        assert_eq!(k.run(&req), "0 9 0");
        let hb = std::fs::read(dir.join(".heartbeat-test")).unwrap();
        assert_eq!(u64::from_le_bytes(hb[..8].try_into().unwrap()), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
