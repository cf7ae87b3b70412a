//! Shared storage over NFS: is a path on NFS, and with which mount options
//! (`notes/issue19-design.md` §2.5). [`crate::preflight`] refuses the mounts on which a pair
//! cannot exclude itself and warns on the risky ones ([`assess`]); the event loop keeps a lease
//! on NFS ([`crate::ha::lease`]).
//!
//! What is refused, and why:
//! - **NFSv2/v3** (`nfs`): their locks (NLM) of a dead client are released only when it comes
//!   back: the standby would never take over;
//! - **NFSv4.0**: no sessions, so a client whose lease expired is not cut off as a whole;
//! - **`local_lock=` other than `none`**: locks stay on this VM, and two VMs would both be
//!   active;
//! - **`nfs.recover_lost_locks=Y`**: a lock lost to a partition would be re-taken silently, and
//!   the old active's writes could land in the new active's rings.
//!
//! What is only warned about: `soft`/`softerr` (an outage kills the relay with SIGBUS instead of
//! pausing it) and `sync = "never"` (a VM's death loses up to the kernel's writeback delay).
//!
//! [`parse_mountinfo`] and [`assess`] are pure and unit-tested on real-looking lines; the
//! `statfs` and the `/proc` and `/sys` reads ([`probe`]) are not testable without an NFS mount.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sys::statfs::{statfs, NFS_SUPER_MAGIC};

/// `/proc/self/mountinfo`.
pub const MOUNTINFO: &str = "/proc/self/mountinfo";
/// The NFS client's module parameter that must read `N`.
pub const RECOVER_LOST_LOCKS: &str = "/sys/module/nfs/parameters/recover_lost_locks";
/// The mount options the README recommends.
pub const RECOMMENDED: &str = "vers=4.2,proto=tcp,hard,timeo=100,retrans=2,sec=sys,local_lock=none";

/// Whether `path` (or, if it does not exist yet, its nearest existing ancestor) is on NFS.
/// Unknown (statfs failed) counts as not.
pub fn on_nfs(path: &Path) -> bool {
    existing(path)
        .is_some_and(|p| statfs(p).is_ok_and(|fs| fs.filesystem_type() == NFS_SUPER_MAGIC))
}

fn existing(path: &Path) -> Option<&Path> {
    let mut p = path;
    loop {
        if p.exists() {
            return Some(p);
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return None,
        }
    }
}

/// One line of `/proc/self/mountinfo`, the fields we use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the file system.
    pub dev: (u32, u32),
    /// Where it is mounted (octal escapes decoded).
    pub mount_point: String,
    /// `nfs`, `nfs4`, `ext4`, ...
    pub fstype: String,
    /// `server:/export`, `/dev/vda1`, ...
    pub source: String,
    /// The super block's options (for NFS: `vers=`, `hard`, `local_lock=`, ...).
    pub super_options: String,
}

/// Decodes mountinfo's octal escapes (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one mountinfo line: `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTS [OPTIONAL...] - TYPE
/// SOURCE SUPER_OPTS`.
pub fn parse_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let (_id, _parent) = (l.next()?, l.next()?);
    let (maj, min) = l.next()?.split_once(':')?;
    let _root = l.next()?;
    let mount_point = unescape(l.next()?);
    let mut r = right.split(' ');
    Some(Mount {
        dev: (maj.parse().ok()?, min.parse().ok()?),
        mount_point,
        fstype: r.next()?.to_string(),
        source: unescape(r.next()?),
        super_options: r.next().unwrap_or("").to_string(),
    })
}

/// The mount that holds `path` on device `dev`: among mountinfo's lines for `dev`, the one
/// whose mount point is the longest prefix of `path` (bind mounts show one device twice).
pub fn parse_mountinfo(text: &str, dev: (u32, u32), path: &Path) -> Option<Mount> {
    text.lines()
        .filter_map(parse_line)
        .filter(|m| m.dev == dev && path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.len())
}

/// What an NFS mount's options say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NfsMount {
    /// The mount.
    pub mount: Mount,
    /// `(major, minor)` NFS version: from `vers=`, or the file system type (`nfs4` → 4.0).
    pub vers: (u32, u32),
    /// `local_lock=` (`none` when absent: the kernel's default).
    pub local_lock: String,
    /// `soft` or `softerr` is set.
    pub soft: bool,
}

impl NfsMount {
    /// `None` unless `m` is an NFS mount.
    pub fn of(m: &Mount) -> Option<NfsMount> {
        if m.fstype != "nfs" && m.fstype != "nfs4" {
            return None;
        }
        let opt = |k: &str| {
            m.super_options
                .split(',')
                .find_map(|o| o.strip_prefix(k)?.strip_prefix('='))
        };
        let flag = |k: &str| m.super_options.split(',').any(|o| o == k);
        let vers = opt("vers")
            .or(opt("nfsvers"))
            .and_then(|v| {
                let (maj, min) = v.split_once('.').unwrap_or((v, "0"));
                Some((maj.parse().ok()?, min.parse().ok()?))
            })
            .unwrap_or(if m.fstype == "nfs4" { (4, 0) } else { (3, 0) });
        Some(NfsMount {
            vers,
            local_lock: opt("local_lock").unwrap_or("none").to_string(),
            soft: flag("soft") || flag("softerr"),
            mount: m.clone(),
        })
    }
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// `check` fails, `run` does not start.
    Error,
    /// Reported; the relay starts.
    Warning,
}

/// What [`assess`] found, with the path and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How bad.
    pub severity: Severity,
    /// What, where and how to fix it.
    pub msg: String,
}

/// Judges the NFS mount `m` that holds `what` (`data_dir /x` or `lock_file /x/y.lock`) for an
/// active-standby pair; `recover_lost_locks` is the client module's parameter (`None`: not
/// readable).
pub fn assess(what: &str, m: &NfsMount, recover_lost_locks: Option<bool>) -> Vec<Finding> {
    let mut out = Vec::new();
    let at = format!(
        "{what} is on the NFS mount {} of {} (vers={}.{})",
        m.mount.mount_point, m.mount.source, m.vers.0, m.vers.1
    );
    let err = |msg: String| Finding {
        severity: Severity::Error,
        msg,
    };
    let remount = format!("mount it with -o {RECOMMENDED}");
    match m.vers {
        (v, _) if v < 4 => out.push(err(format!(
            "{at}: NFSv{v} locks (NLM) of a dead client are released only when it reboots, so a standby would never take over; {remount} (NFSv4.1 or later)"
        ))),
        (4, 0) => out.push(err(format!(
            "{at}: NFSv4.0 has no sessions, so a partitioned active is not cut off as a whole when its lease expires; {remount} (NFSv4.1 or later)"
        ))),
        _ => {}
    }
    if m.local_lock != "none" {
        out.push(err(format!(
            "{at}: local_lock={} keeps locks on this VM, so two VMs would both be active; {remount} (local_lock=none, never nolock)",
            m.local_lock
        )));
    }
    if recover_lost_locks == Some(true) {
        out.push(err(format!(
            "{at}: {RECOVER_LOST_LOCKS} is Y: a lock lost to a partition would be re-taken silently and the old active's writes could land in the new active's rings; set it to N (echo N > {RECOVER_LOST_LOCKS}, or nfs.recover_lost_locks=0 on the kernel command line)"
        )));
    }
    if m.soft {
        out.push(Finding {
            severity: Severity::Warning,
            msg: format!(
                "{at}: soft/softerr: an NFS outage kills the relay with SIGBUS instead of pausing it, and a timed-out write may still land later; {remount} (hard)"
            ),
        });
    }
    out
}

/// The NFS mount that holds `path` (or its nearest existing ancestor), with its options;
/// `Ok(None)` when it is not on NFS.
pub fn probe(path: &Path) -> io::Result<Option<NfsMount>> {
    let Some(p) = existing(path) else {
        return Ok(None);
    };
    if statfs(p)?.filesystem_type() != NFS_SUPER_MAGIC {
        return Ok(None);
    }
    let p = std::fs::canonicalize(p)?;
    let dev = std::fs::metadata(&p)?.dev();
    let dev = (
        nix::sys::stat::major(dev) as u32,
        nix::sys::stat::minor(dev) as u32,
    );
    let text = std::fs::read_to_string(MOUNTINFO)?;
    let m = parse_mountinfo(&text, dev, &p).ok_or_else(|| {
        io::Error::other(format!(
            "{} is on NFS but {MOUNTINFO} has no line for its device {}:{}",
            p.display(),
            dev.0,
            dev.1
        ))
    })?;
    Ok(NfsMount::of(&m))
}

/// `nfs.recover_lost_locks`: `Some(true)` for `Y`; `None` when the module is not loaded.
pub fn recover_lost_locks() -> Option<bool> {
    std::fs::read_to_string(RECOVER_LOST_LOCKS)
        .ok()
        .map(|v| matches!(v.trim(), "Y" | "y" | "1"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V42: &str = "44 29 0:53 / /var/lib/ringrelay rw,relatime shared:27 - nfs4 192.168.101.1:/var/lib/ringrelay/export rw,vers=4.2,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=100,retrans=2,sec=sys,clientaddr=192.168.101.2,local_lock=none,addr=192.168.101.1";
    const V3: &str = "45 29 0:54 / /mnt/nas rw,relatime shared:28 - nfs nas:/export rw,vers=3,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys,mountaddr=10.0.0.5,mountvers=3,mountport=20048,mountproto=udp,local_lock=none,addr=10.0.0.5";
    const SOFT: &str = "46 29 0:55 / /mnt/efs rw,relatime shared:29 - nfs4 fs-1.efs.example:/ rw,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,soft,noresvport,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.9,local_lock=none,addr=10.0.0.7";
    const V40_LOCAL: &str = "47 29 0:56 / /mnt/old rw,relatime shared:30 - nfs4 old:/x rw,vers=4.0,hard,proto=tcp,timeo=600,retrans=2,sec=sys,clientaddr=10.0.0.9,local_lock=all,addr=10.0.0.8";
    const EXT4: &str = "29 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro";
    const SPACE: &str = "48 29 0:57 / /mnt/with\\040space rw shared:31 - nfs4 s:/e rw,vers=4.2,hard,local_lock=none";

    fn table() -> String {
        [EXT4, V42, V3, SOFT, V40_LOCAL, SPACE].join("\n")
    }

    fn nfs(line: &str) -> NfsMount {
        NfsMount::of(&parse_line(line).expect("parses")).expect("nfs")
    }

    #[test]
    fn a_local_ext4_mount_is_found_and_is_not_nfs() {
        let m =
            parse_mountinfo(&table(), (254, 1), Path::new("/var/lib/ringrelay")).expect("found");
        assert_eq!(m.fstype, "ext4");
        assert_eq!(m.mount_point, "/");
        assert_eq!(m.source, "/dev/vda1");
        assert_eq!(NfsMount::of(&m), None);
    }

    #[test]
    fn an_nfs_4_2_hard_mount_is_accepted() {
        let m =
            parse_mountinfo(&table(), (0, 53), Path::new("/var/lib/ringrelay/x")).expect("found");
        assert_eq!(m.mount_point, "/var/lib/ringrelay");
        assert_eq!(m.source, "192.168.101.1:/var/lib/ringrelay/export");
        let n = NfsMount::of(&m).expect("nfs");
        assert_eq!(n.vers, (4, 2));
        assert_eq!(n.local_lock, "none");
        assert!(!n.soft);
        assert_eq!(
            assess("data_dir /var/lib/ringrelay", &n, Some(false)),
            vec![]
        );
        assert_eq!(assess("data_dir /var/lib/ringrelay", &n, None), vec![]);
    }

    #[test]
    fn an_nfs_v3_mount_is_refused_with_the_path_and_the_fix() {
        let n = nfs(V3);
        assert_eq!(n.vers, (3, 0));
        let f = assess("data_dir /mnt/nas/rr", &n, Some(false));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Error);
        let msg = &f[0].msg;
        assert!(
            msg.starts_with("data_dir /mnt/nas/rr is on the NFS mount /mnt/nas of nas:/export"),
            "{msg}"
        );
        assert!(
            msg.contains("NFSv3 locks (NLM)") && msg.contains("vers=4.2"),
            "{msg}"
        );
    }

    #[test]
    fn a_soft_mount_is_a_warning() {
        let n = nfs(SOFT);
        assert_eq!(n.vers, (4, 1));
        assert!(n.soft);
        let f = assess("data_dir /mnt/efs", &n, Some(false));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Warning);
        assert!(
            f[0].msg.contains("SIGBUS") && f[0].msg.contains("hard"),
            "{}",
            f[0].msg
        );
    }

    #[test]
    fn nfs_4_0_local_lock_and_recover_lost_locks_are_each_refused() {
        let n = nfs(V40_LOCAL);
        assert_eq!(n.vers, (4, 0));
        assert_eq!(n.local_lock, "all");
        let f = assess("lock_file /mnt/old/rr.lock", &n, Some(true));
        let msgs: Vec<&str> = f.iter().map(|x| x.msg.as_str()).collect();
        assert_eq!(f.len(), 3, "{msgs:#?}");
        assert!(f.iter().all(|x| x.severity == Severity::Error));
        assert!(msgs[0].contains("NFSv4.0 has no sessions"), "{}", msgs[0]);
        assert!(msgs[1].contains("local_lock=all"), "{}", msgs[1]);
        assert!(
            msgs[2].contains("recover_lost_locks is Y") && msgs[2].contains("echo N >"),
            "{}",
            msgs[2]
        );
    }

    #[test]
    fn nfs4_without_vers_is_4_0_and_nfs_without_vers_is_3() {
        let m = parse_line("1 2 0:9 / /m rw - nfs4 s:/ rw,hard").expect("parses");
        assert_eq!(NfsMount::of(&m).map(|n| n.vers), Some((4, 0)));
        let m = parse_line("1 2 0:9 / /m rw - nfs s:/ rw,hard").expect("parses");
        assert_eq!(NfsMount::of(&m).map(|n| n.vers), Some((3, 0)));
    }

    #[test]
    fn escaped_mount_points_and_bind_mounts_pick_the_right_line() {
        let m = parse_mountinfo(&table(), (0, 57), Path::new("/mnt/with space/d")).expect("found");
        assert_eq!(m.mount_point, "/mnt/with space");
        // The same device mounted twice (a bind mount): the longest matching mount point.
        let bind = "60 44 0:53 /sub /var/lib/ringrelay/sub rw - nfs4 s:/e/sub rw,vers=4.2,hard,local_lock=none";
        let text = format!("{}\n{bind}", table());
        let m =
            parse_mountinfo(&text, (0, 53), Path::new("/var/lib/ringrelay/sub/x")).expect("found");
        assert_eq!(m.mount_point, "/var/lib/ringrelay/sub");
        let m = parse_mountinfo(&text, (0, 53), Path::new("/var/lib/ringrelay/y")).expect("found");
        assert_eq!(m.mount_point, "/var/lib/ringrelay");
        assert_eq!(parse_mountinfo(&text, (0, 99), Path::new("/")), None);
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("1 2 x / /m rw - ext4 a b"), None);
        assert_eq!(parse_line("no separator here"), None);
    }

    /// What `check` prints for each NFS case (see the README): run with `--nocapture`.
    #[test]
    fn print_the_messages() {
        for (what, line, rll) in [
            ("data_dir /mnt/nas/rr", V3, Some(false)),
            ("data_dir /mnt/old/rr", V40_LOCAL, Some(true)),
            ("data_dir /mnt/efs/rr", SOFT, Some(false)),
        ] {
            for f in assess(what, &nfs(line), rll) {
                eprintln!("{:?}: {}", f.severity, f.msg);
            }
        }
    }
}
