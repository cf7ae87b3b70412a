//! The active-standby lock file and its fencing epoch.
//!
//! Two instances share one `lock_file`. The one that holds an exclusive open-file-description
//! lock on it (`fcntl(F_OFD_SETLK)`, whole file, write lock) is **active**; the other is
//! **standby** and retries every `standby_poll`. An OFD lock belongs to the open file
//! description, not to the process: closing some other descriptor of the same file (a second
//! `open` in this process, a library reading the file) cannot release it, as it would a classic
//! POSIX record lock. The kernel drops it when the process dies, however it dies.
//!
//! ## The lock record (the file's content)
//! UTF-8 text, one `key=value` per line after a first line that names the format:
//!
//! ```text
//! ringrelay-lock 1
//! epoch=7
//! pid=4242
//! instance=ringrelay
//! since=2026-11-25T12:00:00.000Z
//! ```
//!
//! Only the first line and `epoch` (a decimal u64) are required; unknown keys are ignored, so
//! later versions may add some. An empty file is a lock that was never taken (epoch 0). Every
//! instance that becomes active writes `epoch` = the highest epoch it has seen (in this file or
//! in any of its rings' metadata) + 1, then stamps that epoch into its rings. An active that
//! later reads a higher epoch here or in a ring has been replaced behind its back (its lock was
//! lost, e.g. on network storage): it stops delivering at once and exits with code 3.
//!
//! Parsing ([`LockRecord::parse`]) and rendering ([`LockRecord::render`]) are pure; [`LockFile`]
//! does the I/O.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg};
use nix::libc;

/// First line of a lock record.
pub const HEADER: &str = "ringrelay-lock 1";
/// Lock records are small; anything longer is not ours.
const MAX_RECORD: usize = 4096;
/// Longest `since` kept: an RFC 3339 time (ours are 24 bytes, `2026-11-25T12:00:00.000Z`),
/// with room for a finer fraction or an offset.
pub const SINCE_MAX: usize = 40;
/// Longest `instance` kept: the configuration's bound on the name.
pub const INSTANCE_MAX: usize = crate::config::NAME_MAX;

/// What a lock file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockRecord {
    /// Fencing epoch of the newest active.
    pub epoch: u64,
    /// Its process id.
    pub pid: Option<u32>,
    /// Its `instance` name (informational; a longer one than a ringrelay writes is ignored).
    pub instance: Option<heapless::String<INSTANCE_MAX>>,
    /// When it became active (RFC 3339), informational (ignored when longer than
    /// [`SINCE_MAX`]).
    pub since: Option<heapless::String<SINCE_MAX>>,
}

/// Why a lock file's content was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The first line is not [`HEADER`]: some other program's file.
    NotOurs {
        /// The first line (cut to 60 characters).
        first_line: String,
    },
    /// The `epoch=` line is missing or not a number.
    BadEpoch,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::NotOurs { first_line } => write!(
                f,
                "it does not hold a ringrelay lock record (first line {first_line:?}, expected {HEADER:?})"
            ),
            RecordError::BadEpoch => {
                write!(f, "its lock record has no valid \"epoch=<number>\" line")
            }
        }
    }
}

impl LockRecord {
    /// Parses a lock file's content; an empty (or all-whitespace) file is epoch 0.
    pub fn parse(text: &str) -> Result<LockRecord, RecordError> {
        if text.trim().is_empty() {
            return Ok(LockRecord::default());
        }
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("").trim_end();
        if first != HEADER {
            return Err(RecordError::NotOurs {
                first_line: first.chars().take(60).collect(),
            });
        }
        let mut rec = LockRecord::default();
        let mut epoch = None;
        for line in lines {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim();
            match k.trim() {
                "epoch" => epoch = Some(v.parse::<u64>().map_err(|_| RecordError::BadEpoch)?),
                "pid" => rec.pid = v.parse().ok(),
                "instance" => rec.instance = v.try_into().ok(),
                "since" => rec.since = v.try_into().ok(),
                _ => {} // a later version's key
            }
        }
        rec.epoch = epoch.ok_or(RecordError::BadEpoch)?;
        Ok(rec)
    }

    /// The file's content for this record.
    pub fn render(&self) -> String {
        let mut s = format!("{HEADER}\nepoch={}\n", self.epoch);
        if let Some(pid) = self.pid {
            s.push_str(&format!("pid={pid}\n"));
        }
        if let Some(i) = &self.instance {
            s.push_str(&format!("instance={i}\n"));
        }
        if let Some(t) = &self.since {
            s.push_str(&format!("since={t}\n"));
        }
        s
    }
}

/// Why the lock file could not be used.
#[derive(Debug)]
pub enum LockError {
    /// It cannot be opened (or created) for reading and writing.
    Open {
        /// The lock file.
        path: PathBuf,
        /// The error.
        err: io::Error,
    },
    /// The file system refuses `fcntl` locks on it.
    Unsupported {
        /// The lock file.
        path: PathBuf,
        /// The errno.
        errno: Errno,
    },
    /// Its content is not a ringrelay lock record; it is not overwritten.
    Foreign {
        /// The lock file.
        path: PathBuf,
        /// What is wrong with it.
        why: RecordError,
    },
    /// Reading or writing it failed.
    Io {
        /// The lock file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        err: io::Error,
    },
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Open { path, err } => {
                let hint = match err.kind() {
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
                        "; the relay needs to create and write its lock file: give its user write access to that directory (under systemd: StateDirectory= or ReadWritePaths=)"
                    }
                    io::ErrorKind::NotFound => "; its directory does not exist",
                    _ => "",
                };
                write!(
                    f,
                    "lock file {}: cannot open for writing: {err}{hint}",
                    path.display()
                )
            }
            LockError::Unsupported { path, errno } => write!(
                f,
                "lock file {}: the file system does not support fcntl locks ({errno}); put lock_file on a file system with working locks (local disk, NFSv4, or NFSv3 with lockd)",
                path.display(),
            ),
            LockError::Foreign { path, why } => write!(
                f,
                "lock file {}: {why}; it may belong to another program: point lock_file at a file of its own",
                path.display()
            ),
            LockError::Io { path, op, err } => {
                write!(f, "lock file {}: {op}: {err}", path.display())
            }
        }
    }
}

/// What an active's look at its lock file found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// The lock no longer excludes another instance.
    Lost(String),
    /// The file could not be read or parsed just now (perhaps half-written).
    Unreadable(String),
}

/// The lock file, opened for reading and writing; the lock itself is taken by
/// [`LockFile::try_lock`].
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    file: File,
    held: bool,
}

impl LockFile {
    /// Opens (creating, mode 0644) the lock file. No lock is taken yet.
    pub fn open(path: &Path) -> Result<LockFile, LockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(|err| LockError::Open {
                path: path.into(),
                err,
            })?;
        Ok(LockFile {
            path: path.into(),
            file,
            held: false,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this process holds the lock.
    pub fn held(&self) -> bool {
        self.held
    }

    /// Tries to take the exclusive lock without waiting: `Ok(true)` taken (or already held),
    /// `Ok(false)` another open file description holds it.
    pub fn try_lock(&mut self) -> Result<bool, LockError> {
        if self.held {
            return Ok(true);
        }
        let mut fl = zeroed_flock();
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_start = 0;
        fl.l_len = 0; // the whole file, however long it grows
        fl.l_pid = 0; // required for OFD locks
        match fcntl(&self.file, FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => {
                self.held = true;
                Ok(true)
            }
            Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
            Err(errno @ (Errno::EINVAL | Errno::ENOLCK | Errno::EOPNOTSUPP | Errno::ENOSYS)) => {
                Err(LockError::Unsupported {
                    path: self.path.clone(),
                    errno,
                })
            }
            Err(errno) => Err(LockError::Io {
                path: self.path.clone(),
                op: "fcntl(F_OFD_SETLK)",
                err: io::Error::from(errno),
            }),
        }
    }

    /// Reads and parses the lock record.
    ///
    /// The active reads it every [`FENCE_CHECK`](super::FENCE_CHECK): the bytes go to the
    /// stack and the record's strings are bounded, so a check does not allocate (unless the
    /// file is not UTF-8).
    pub fn read(&self) -> Result<LockRecord, LockError> {
        let mut buf = [0u8; MAX_RECORD];
        let mut len = 0;
        while len < buf.len() {
            match self.file.read_at(&mut buf[len..], len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(LockError::Io {
                        path: self.path.clone(),
                        op: "read",
                        err,
                    })
                }
            }
        }
        let text = String::from_utf8_lossy(&buf[..len]);
        LockRecord::parse(&text).map_err(|why| LockError::Foreign {
            path: self.path.clone(),
            why,
        })
    }

    /// Replaces the lock record (only while holding the lock) and forces it to disk.
    pub fn write(&self, rec: &LockRecord) -> Result<(), LockError> {
        let io = |op| {
            let path = self.path.clone();
            move |err| LockError::Io { path, op, err }
        };
        let text = rec.render();
        self.file
            .write_all_at(text.as_bytes(), 0)
            .map_err(io("write"))?;
        self.file
            .set_len(text.len() as u64)
            .map_err(io("truncate"))?;
        self.file.sync_data().map_err(io("fsync"))
    }

    /// An active's periodic look at its lock file, by path: the record there, or why the lock
    /// this process holds no longer protects anything (the file at the path was removed or
    /// replaced, so another instance can lock the new one).
    pub fn check(&self) -> Result<LockRecord, CheckError> {
        let ours = self
            .file
            .metadata()
            .map_err(|e| CheckError::Unreadable(format!("fstat: {e}")))?;
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CheckError::Lost("it was removed".into()))
            }
            Err(e) => return Err(CheckError::Unreadable(format!("stat: {e}"))),
            Ok(m) if (m.dev(), m.ino()) != (ours.dev(), ours.ino()) => {
                return Err(CheckError::Lost(
                    "it was replaced by another file (new inode)".into(),
                ))
            }
            Ok(_) => {}
        }
        self.read()
            .map_err(|e| CheckError::Unreadable(e.to_string()))
    }

    /// Best effort: who seems to hold the lock, for the standby's log line.
    pub fn holder(&self) -> String {
        // ringrelay only takes OFD locks, which report no pid (-1). A classic POSIX record lock
        // reports its owner's pid: some other program holds it.
        let mut fl = zeroed_flock();
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        if fcntl(&self.file, FcntlArg::F_OFD_GETLK(&mut fl)).is_ok() && fl.l_pid > 0 {
            let pid = fl.l_pid;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map_or_else(|_| "?".to_string(), |c| c.trim().to_string());
            return format!(
                "pid {pid} ({comm}) holds a POSIX record lock on it: not ringrelay, which uses OFD locks"
            );
        }
        match self.read() {
            Ok(rec) if rec == LockRecord::default() => {
                "unknown (the lock file is empty: not a ringrelay that became active)".into()
            }
            Ok(rec) => {
                let Some(pid) = rec.pid else {
                    return format!("epoch {}", rec.epoch);
                };
                // On one host, /proc tells whether that pid is still a ringrelay; on another
                // host (shared storage) the pid means nothing here.
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_string())
                    .ok();
                match comm {
                    Some(c) if !c.starts_with("ringrelay") => format!(
                        "pid {pid} per the lock record, but that process is {c:?}, not ringrelay: the lock may be held by another program"
                    ),
                    _ => format!("pid {pid} epoch {}", rec.epoch),
                }
            }
            Err(e) => format!("not ringrelay? {e}"),
        }
    }
}

/// A zeroed `libc::flock`, built field by field (no `mem::zeroed`: the crate denies `unsafe`).
pub(crate) fn zeroed_flock() -> libc::flock {
    libc::flock {
        l_type: 0,
        l_whence: 0,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let rec = LockRecord {
            epoch: 7,
            pid: Some(4242),
            instance: "relay-a".try_into().ok(),
            since: "2026-11-25T12:00:00.000Z".try_into().ok(),
        };
        assert!(rec.instance.is_some() && rec.since.is_some());
        let text = rec.render();
        assert!(text.starts_with("ringrelay-lock 1\nepoch=7\n"), "{text}");
        assert_eq!(LockRecord::parse(&text), Ok(rec));
    }

    #[test]
    fn informational_values_longer_than_their_bound_are_ignored() {
        let long = "i".repeat(INSTANCE_MAX + 1);
        let text = format!("ringrelay-lock 1\nepoch=2\ninstance={long}\nsince={long}\n");
        let rec = LockRecord::parse(&text).unwrap();
        assert_eq!((rec.epoch, rec.instance, rec.since), (2, None, None));
        let fits = "i".repeat(INSTANCE_MAX);
        let text = format!("ringrelay-lock 1\nepoch=2\ninstance={fits}\n");
        let rec = LockRecord::parse(&text).unwrap();
        assert_eq!(rec.instance.as_deref(), Some(fits.as_str()));
    }

    #[test]
    fn empty_file_is_epoch_zero() {
        assert_eq!(LockRecord::parse(""), Ok(LockRecord::default()));
        assert_eq!(LockRecord::parse("\n  \n"), Ok(LockRecord::default()));
    }

    #[test]
    fn only_header_and_epoch_are_required_and_unknown_keys_are_ignored() {
        let r = LockRecord::parse("ringrelay-lock 1\nfuture=1\nepoch= 18446744073709551615\n");
        assert_eq!(r.map(|r| r.epoch), Ok(u64::MAX));
    }

    #[test]
    fn foreign_content_is_refused() {
        assert_eq!(
            LockRecord::parse("12345\n"),
            Err(RecordError::NotOurs {
                first_line: "12345".into()
            })
        );
        assert_eq!(
            LockRecord::parse("ringrelay-lock 1\npid=3\n"),
            Err(RecordError::BadEpoch)
        );
        assert_eq!(
            LockRecord::parse("ringrelay-lock 1\nepoch=-1\n"),
            Err(RecordError::BadEpoch)
        );
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ringrelay-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_second_open_file_description_in_the_same_process_cannot_take_or_release_the_lock() {
        let d = temp("ofd");
        let path = d.join("ringrelay.lock");
        let mut a = LockFile::open(&path).unwrap();
        assert!(a.try_lock().unwrap());
        let mut b = LockFile::open(&path).unwrap();
        assert!(
            !b.try_lock().unwrap(),
            "an OFD lock conflicts within a process"
        );
        drop(b); // closing another descriptor of the file must not release a's lock
        let mut c = LockFile::open(&path).unwrap();
        assert!(!c.try_lock().unwrap());
        a.write(&LockRecord {
            epoch: 3,
            ..LockRecord::default()
        })
        .unwrap();
        assert_eq!(c.read().unwrap().epoch, 3);
        drop(a);
        assert!(
            c.try_lock().unwrap(),
            "closing the holder releases the lock"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn an_unwritable_lock_file_path_is_named_in_the_error() {
        let path = Path::new("/proc/ringrelay-no-such-dir/ringrelay.lock");
        let e = LockFile::open(path).unwrap_err().to_string();
        assert_eq!(
            e,
            "lock file /proc/ringrelay-no-such-dir/ringrelay.lock: cannot open for writing: \
             No such file or directory (os error 2); its directory does not exist"
        );
        // Permission denied: a read-only file (root ignores its mode bits), and sysfs, where
        // even root cannot create files.
        let d = temp("ro");
        let ro = d.join("ro.lock");
        std::fs::write(&ro, "").unwrap();
        let mut perms = std::fs::metadata(&ro).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        std::fs::set_permissions(&ro, perms).unwrap();
        let sys = PathBuf::from("/sys/kernel/ringrelay.lock");
        let mut denied = 0;
        for p in [ro.as_path(), sys.as_path()] {
            if let Err(e) = LockFile::open(p) {
                let e = e.to_string();
                assert!(
                    e.starts_with(&format!(
                        "lock file {}: cannot open for writing: ",
                        p.display()
                    )),
                    "{e}"
                );
                assert!(e.contains("give its user write access"), "{e}");
                denied += 1;
            }
        }
        assert!(
            denied > 0,
            "neither a 0444 file nor sysfs refused a write open"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_classic_posix_lock_is_reported_as_not_ringrelay() {
        let d = temp("posix");
        let path = d.join("ringrelay.lock");
        // A classic (process-owned) record lock, as another program would take. OFD locks
        // conflict with classic ones even within one process, so no second process is needed.
        let other = LockFile::open(&path).unwrap();
        let mut fl = zeroed_flock();
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fcntl(&other.file, FcntlArg::F_SETLK(&fl)).unwrap();
        let mut ours = LockFile::open(&path).unwrap();
        assert!(!ours.try_lock().unwrap());
        let holder = ours.holder();
        assert!(
            holder.starts_with(&format!("pid {} (", std::process::id())),
            "{holder}"
        );
        assert!(
            holder.contains("holds a POSIX record lock on it: not ringrelay"),
            "{holder}"
        );
        drop(other);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_file_system_without_locks_is_named_with_the_fix() {
        let e = LockError::Unsupported {
            path: "/mnt/shared/ringrelay.lock".into(),
            errno: Errno::ENOLCK,
        }
        .to_string();
        // The errno's description comes from nix; the rest is ours.
        assert!(
            e.starts_with(
                "lock file /mnt/shared/ringrelay.lock: the file system does not support fcntl \
                 locks (ENOLCK: "
            ),
            "{e}"
        );
        assert!(
            e.ends_with(
                "); put lock_file on a file system with working locks (local disk, NFSv4, or \
                 NFSv3 with lockd)"
            ),
            "{e}"
        );
    }

    #[test]
    fn a_foreign_file_is_reported_plainly() {
        let d = temp("foreign");
        let path = d.join("pidfile");
        std::fs::write(&path, "31337\n").unwrap();
        let lf = LockFile::open(&path).unwrap();
        let e = lf.read().unwrap_err().to_string();
        assert!(e.contains("does not hold a ringrelay lock record"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
