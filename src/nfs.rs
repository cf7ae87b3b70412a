//! Shared storage over NFS: is a path on NFS, and with which mount options
//! (`notes/issue19-design.md` §2.5). [`preflight`](crate::preflight) refuses the mounts on
//! which a pair cannot exclude itself; the event loop keeps a lease on NFS
//! ([`crate::ha::lease`]).

use std::path::Path;

use nix::sys::statfs::{statfs, NFS_SUPER_MAGIC};

/// Whether `path` (or, if it does not exist yet, its nearest existing ancestor) is on NFS.
/// Unknown (statfs failed) counts as not.
pub fn on_nfs(path: &Path) -> bool {
    let mut p = path;
    loop {
        match statfs(p) {
            Ok(fs) => return fs.filesystem_type() == NFS_SUPER_MAGIC,
            Err(_) => match p.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                _ => return false,
            },
        }
    }
}
