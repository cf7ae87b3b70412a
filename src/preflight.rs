//! What `check` and `run` verify on this machine beyond the configuration file itself, so that
//! `check` accepts what `run` can start: the data directory can exist and be written, the rings
//! not created yet fit in its file system's free space, and the rings that exist have the size
//! the configuration asks for (a ring's size cannot change).
//!
//! Findings are [`ConfigError`]s at the line and column of the key they concern. Each has a
//! [`Scope`]: `run` stops for a relay-wide one (exit 1: a data directory that cannot exist)
//! and, for a feed's, starts without that feed (its ring cannot be opened or created);
//! `check` reports both and exits 2.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::sys::statfs::{statfs, PROC_SUPER_MAGIC, SYSFS_MAGIC};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{access, AccessFlags};

use crate::config::{Config, ConfigError, FeedConfig, InputKind};
use crate::nfs;
use crate::ring::format::{Superblock, DATA_OFFSET, SUPERBLOCK_LEN};
use crate::ring::human_bytes_approx as human_bytes;

/// What a finding stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The whole relay.
    Relay,
    /// The feed of this name.
    Feed(String),
}

/// One finding.
#[derive(Clone, Debug)]
pub struct Finding {
    /// What stops.
    pub scope: Scope,
    /// Where and why.
    pub error: ConfigError,
}

/// Checks `cfg` against this machine; nothing is created or changed.
pub fn preflight(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    let relay = &cfg.relay;
    let at = |(line, col): (usize, usize), msg: String| ConfigError {
        path: cfg.path.clone(),
        line,
        col,
        msg,
    };
    let existing = nearest_existing(&relay.data_dir);
    if let Err(why) = writable_dir(&relay.data_dir, &existing) {
        out.push(Finding {
            scope: Scope::Relay,
            error: at(relay.data_dir_at, why),
        });
        return out;
    }
    let storage = Storage::probe(cfg);
    for (severity, msg) in storage.findings(cfg) {
        if severity == nfs::Severity::Error {
            out.push(Finding {
                scope: Scope::Relay,
                error: at(relay.data_dir_at, msg),
            });
        }
    }
    let mut new_rings: Vec<&FeedConfig> = Vec::new();
    for f in &cfg.feeds {
        let path = relay.data_dir.join(format!("{}.ring", f.name));
        match stored_capacity(&path) {
            Some(on_disk) if on_disk != f.capacity => out.push(Finding {
                scope: Scope::Feed(f.name.clone()),
                error: at(
                    f.buffer_at,
                    format!(
                        "feed {:?}: the ring {} exists with a data area of {} ({on_disk} bytes), but buffer asks for {} ({} bytes); a ring's size cannot change: set buffer = {{ size = \"{on_disk}\" }} to keep it, or move it aside (ringrelay inspect PATH --export salvages its records) and a new one is created",
                        f.name,
                        path.display(),
                        human_bytes(on_disk),
                        human_bytes(f.capacity),
                        f.capacity
                    ),
                ),
            }),
            Some(_) => {}
            None if !path.exists() => new_rings.push(f),
            // Not a ring, or damaged: `run` reports it when it opens the ring.
            None => {}
        }
    }
    let need: u64 = new_rings.iter().map(|f| DATA_OFFSET + f.capacity).sum();
    if let (Some(first), Ok(vfs)) = (new_rings.first(), statvfs(&existing)) {
        let free = vfs.blocks_available().saturating_mul(vfs.fragment_size());
        if need > free {
            let names: Vec<String> = new_rings
                .iter()
                .map(|f| format!("{:?} {}", f.name, human_bytes(DATA_OFFSET + f.capacity)))
                .collect();
            out.push(Finding {
                scope: Scope::Feed(first.name.clone()),
                error: at(
                    first.buffer_at,
                    format!(
                        "the rings to create ({}) need {} ({need} bytes) but the file system of {} has {} free; rings are allocated in full when created: lower buffer sizes or free disk space (ringrelay size tells what a rate needs)",
                        names.join(", "),
                        human_bytes(need),
                        existing.display(),
                        human_bytes(free)
                    ),
                ),
            });
        }
    }
    out
}

/// Where `data_dir` and the lock file live, as far as a pair is concerned: their NFS mounts,
/// if any (`notes/issue19-design.md` §2.5).
struct Storage {
    data: Result<Option<nfs::NfsMount>, String>,
    lock: Result<Option<nfs::NfsMount>, String>,
    recover_lost_locks: Option<bool>,
}

impl Storage {
    fn probe(cfg: &Config) -> Storage {
        let lock_dir = cfg
            .relay
            .lock_file
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let probe = |p: &Path| nfs::probe(p).map_err(|e| format!("{}: {e}", p.display()));
        let data = probe(&cfg.relay.data_dir);
        let lock = probe(&lock_dir);
        let any = matches!(data, Ok(Some(_))) || matches!(lock, Ok(Some(_)));
        Storage {
            data,
            lock,
            recover_lost_locks: if any { nfs::recover_lost_locks() } else { None },
        }
    }

    /// Errors and warnings, each naming the path and the fix.
    fn findings(&self, cfg: &Config) -> Vec<(nfs::Severity, String)> {
        let relay = &cfg.relay;
        let mut out = Vec::new();
        let err = nfs::Severity::Error;
        let data_what = format!("data_dir {}", relay.data_dir.display());
        let lock_what = format!("lock_file {}", relay.lock_file.display());
        for (what, r) in [(&data_what, &self.data), (&lock_what, &self.lock)] {
            match r {
                Ok(Some(m)) => out.extend(
                    nfs::assess(what, m, self.recover_lost_locks)
                        .into_iter()
                        .map(|f| (f.severity, f.msg)),
                ),
                Ok(None) => {}
                Err(e) => out.push((
                    err,
                    format!("{what}: cannot read its NFS mount's options: {e}; check that /proc is mounted"),
                )),
            }
        }
        let (Ok(data), Ok(lock)) = (&self.data, &self.lock) else {
            return out;
        };
        match (data, lock) {
            (Some(d), Some(l)) if d.mount.dev != l.mount.dev => out.push((
                err,
                format!(
                    "{lock_what} is on the NFS mount {} but {data_what} on {}: the lock must live on the same export as the rings, or it would not exclude the VM that writes them; put lock_file in data_dir (the default)",
                    l.mount.mount_point, d.mount.mount_point
                ),
            )),
            (Some(d), None) => out.push((
                err,
                format!(
                    "{data_what} is on the NFS mount {} but {lock_what} is not on NFS: a lock on this VM's own disk would not exclude the other VM; put lock_file in data_dir (the default)",
                    d.mount.mount_point
                ),
            )),
            (None, Some(l)) => out.push((
                err,
                format!(
                    "{lock_what} is on the NFS mount {} but {data_what} is not: each VM would have its own rings; put data_dir on the same export",
                    l.mount.mount_point
                ),
            )),
            _ => {}
        }
        if let Some(d) = data {
            let never: Vec<&str> = cfg
                .feeds
                .iter()
                .filter(|f| f.sync == crate::config::SyncPolicy::Never)
                .map(|f| f.name.as_str())
                .collect();
            if !never.is_empty() {
                out.push((
                    nfs::Severity::Warning,
                    format!(
                        "{data_what} is on the NFS mount {}: feed(s) {} sync = \"never\": a VM's death loses what its kernel had not written back (up to 30 s of accepted records); use sync = \"interval\" (the default) or \"always\"",
                        d.mount.mount_point,
                        never.join(", ")
                    ),
                ));
            }
            if relay.lease.is_none() {
                out.push((
                    nfs::Severity::Warning,
                    format!(
                        "{data_what} is on the NFS mount {}: [relay] lease is not set, {} s (Linux nfsd's default) is assumed; set it to the server's lease time (nfsd: /proc/fs/nfsd/nfsv4leasetime), or an active may keep going after its lock was taken over",
                        d.mount.mount_point,
                        crate::config::DEFAULT_NFS_LEASE.as_secs()
                    ),
                ));
            }
        }
        out
    }
}

/// What `check` and `run` warn about on this machine: risky NFS mount options, `sync =
/// "never"` on NFS, no `lease` on NFS. Nothing stops.
pub fn warnings(cfg: &Config) -> Vec<ConfigError> {
    Storage::probe(cfg)
        .findings(cfg)
        .into_iter()
        .filter(|(s, _)| *s == nfs::Severity::Warning)
        .map(|(_, msg)| ConfigError {
            path: cfg.path.clone(),
            line: cfg.relay.data_dir_at.0,
            col: cfg.relay.data_dir_at.1,
            msg,
        })
        .collect()
}

/// `dir` itself if it exists, else its nearest ancestor that does (absolute, for messages).
fn nearest_existing(dir: &Path) -> PathBuf {
    let mut p = dir;
    let found = loop {
        if p.exists() {
            break p.to_path_buf();
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break PathBuf::from("."),
        }
    };
    std::fs::canonicalize(&found).unwrap_or(found)
}

/// Whether `dir` exists as a writable directory, or can be created in `existing`.
fn writable_dir(dir: &Path, existing: &Path) -> Result<(), String> {
    let what = format!("data_dir {}", dir.display());
    if !existing.is_dir() {
        return Err(format!("{what}: {} is not a directory", existing.display()));
    }
    if let Ok(fs) = statfs(existing) {
        let t = fs.filesystem_type();
        if t == PROC_SUPER_MAGIC || t == SYSFS_MAGIC {
            return Err(format!(
                "{what}: {} is a kernel pseudo file system (proc, sys); rings need a real disk",
                existing.display()
            ));
        }
    }
    if statvfs(existing).is_ok_and(|v| v.flags().contains(FsFlags::ST_RDONLY)) {
        return Err(format!(
            "{what}: {} is on a read-only file system",
            existing.display()
        ));
    }
    if access(existing, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
        let verb = if existing == dir {
            "is not writable by this user"
        } else {
            "cannot be created: its parent is not writable by this user"
        };
        return Err(format!("{what} {verb} ({})", existing.display()));
    }
    Ok(())
}

/// The data-area size a ring file's superblock records, if it is a readable ring.
fn stored_capacity(path: &Path) -> Option<u64> {
    let file = File::open(path).ok()?;
    let mut sb = [0u8; SUPERBLOCK_LEN];
    file.read_exact_at(&mut sb, 0).ok()?;
    Superblock::parse(&sb).ok().map(|s| s.capacity)
}

/// `ringrelay check --config FILE`: the file's errors, warnings, and what only this machine can
/// tell ([`preflight`]); exit 2 on any error.
pub fn check(path: &Path) -> ExitCode {
    let Some(cfg) = Config::load_or_report(path) else {
        return ExitCode::from(2);
    };
    for w in &cfg.warnings {
        println!(
            "{}:{}:{}: warning: {}",
            w.path.display(),
            w.line,
            w.col,
            w.msg
        );
    }
    for w in warnings(&cfg) {
        println!(
            "{}:{}:{}: warning: {}",
            w.path.display(),
            w.line,
            w.col,
            w.msg
        );
    }
    // What `run` would fail on, or start the feed without, on this machine.
    let findings = preflight(&cfg);
    if !findings.is_empty() {
        for f in &findings {
            eprintln!("{}", f.error);
        }
        eprintln!("{}: {} error(s)", path.display(), findings.len());
        return ExitCode::from(2);
    }
    // Expired certificates are warnings, not errors (the relay still starts).
    for f in &cfg.feeds {
        let mut expired = Vec::new();
        if let InputKind::Tls(t) = &f.input.kind {
            if let Ok((_, e)) = crate::tls::server_config(&t.files) {
                expired.extend(e);
            }
        }
        for o in &f.outputs {
            if let crate::config::OutputKind::Tls(t) = &o.kind {
                if let Ok((_, e)) = crate::tls::client_config(&t.files) {
                    expired.extend(e);
                }
            }
        }
        for e in expired {
            println!(
                "{}: warning: feed {}: {}: certificate {:?} expired at {}",
                path.display(),
                f.name,
                e.path.display(),
                e.subject,
                e.not_after
            );
        }
    }
    let outputs: usize = cfg.feeds.iter().map(|f| f.outputs.len()).sum();
    println!(
        "{}: ok: {} feed(s), {} output(s), data_dir {}",
        path.display(),
        cfg.feeds.len(),
        outputs,
        cfg.relay.data_dir.display()
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(relay_extra: &str, feed_extra: &str) -> Config {
        let text = format!(
            "[relay]\ndata_dir = \"/var/lib/ringrelay\"\n{relay_extra}\n\n[[feed]]\nname = \"f\"\ninput = {{ kind = \"tcp\", listen = \"127.0.0.1:0\" }}\nbuffer = {{ size = \"8MiB\" }}\n{feed_extra}\n\n[[feed.output]]\nname = \"o\"\nkind = \"tcp\"\naddress = \"127.0.0.1:9\"\n"
        );
        Config::parse(&text, Path::new("/etc/ringrelay/r.toml")).expect("valid config")
    }

    fn mount(line: &str) -> nfs::NfsMount {
        nfs::NfsMount::of(&nfs::parse_line(line).expect("parses")).expect("nfs")
    }

    const EXPORT: &str =
        "44 29 0:53 / /var/lib/ringrelay rw - nfs4 s:/export rw,vers=4.2,hard,local_lock=none";
    const OTHER: &str =
        "45 29 0:54 / /mnt/locks rw - nfs4 s:/locks rw,vers=4.2,hard,local_lock=none";

    fn findings(s: &Storage, cfg: &Config) -> Vec<(nfs::Severity, String)> {
        s.findings(cfg)
    }

    #[test]
    fn a_good_nfs_mount_with_a_lease_set_has_no_finding() {
        let cfg = config("lease = \"10s\"", "");
        let s = Storage {
            data: Ok(Some(mount(EXPORT))),
            lock: Ok(Some(mount(EXPORT))),
            recover_lost_locks: Some(false),
        };
        assert_eq!(findings(&s, &cfg), vec![]);
    }

    #[test]
    fn local_storage_has_no_finding() {
        let cfg = config("", "sync = \"never\"");
        let s = Storage {
            data: Ok(None),
            lock: Ok(None),
            recover_lost_locks: None,
        };
        assert_eq!(findings(&s, &cfg), vec![]);
    }

    #[test]
    fn on_nfs_an_unset_lease_and_sync_never_are_warnings() {
        let cfg = config("", "sync = \"never\"");
        let s = Storage {
            data: Ok(Some(mount(EXPORT))),
            lock: Ok(Some(mount(EXPORT))),
            recover_lost_locks: Some(false),
        };
        let f = findings(&s, &cfg);
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(f.iter().all(|(s, _)| *s == nfs::Severity::Warning));
        assert!(f[0].1.contains("feed(s) f sync = \"never\""), "{}", f[0].1);
        assert!(f[1].1.contains("lease is not set, 90 s"), "{}", f[1].1);
    }

    #[test]
    fn a_lock_file_off_the_rings_export_is_refused() {
        let cfg = config("lease = \"10s\"\nlock_file = \"/mnt/locks/r.lock\"", "");
        let other = Storage {
            data: Ok(Some(mount(EXPORT))),
            lock: Ok(Some(mount(OTHER))),
            recover_lost_locks: Some(false),
        };
        let f = findings(&other, &cfg);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert_eq!(f[0].0, nfs::Severity::Error);
        assert!(
            f[0].1.starts_with("lock_file /mnt/locks/r.lock is on the NFS mount /mnt/locks but data_dir /var/lib/ringrelay on /var/lib/ringrelay"),
            "{}",
            f[0].1
        );
        let local = Storage {
            data: Ok(Some(mount(EXPORT))),
            lock: Ok(None),
            recover_lost_locks: Some(false),
        };
        let f = findings(&local, &cfg);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(f[0].1.contains("is not on NFS"), "{}", f[0].1);
    }

    #[test]
    fn an_unreadable_mountinfo_is_an_error_naming_the_path() {
        let cfg = config("lease = \"10s\"", "");
        let s = Storage {
            data: Err("/var/lib/ringrelay: no line for its device".into()),
            lock: Ok(None),
            recover_lost_locks: None,
        };
        let f = findings(&s, &cfg);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(
            f[0].1
                .starts_with("data_dir /var/lib/ringrelay: cannot read its NFS mount's options"),
            "{}",
            f[0].1
        );
    }
}
