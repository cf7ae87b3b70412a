//! A file output's own care: a record cut short by a full disk is cut back before writing on
//! (`untear`), rotation by size, and the sync at checkpoints.

use super::*;

impl Output {
    /// Cuts a file output back to its last whole record after a short write (a full disk), so
    /// that a torn record is never followed by the next one. `Err` names what failed; the cut
    /// is then made when the file is opened again, before anything is written to it.
    pub(super) fn untear(&mut self) -> Result<(), String> {
        let Sink::File {
            path,
            file,
            size,
            torn_from,
            ..
        } = &mut self.sink
        else {
            return Ok(());
        };
        let whole = size.saturating_sub(self.core.partial as u64);
        self.core.stats.bytes = self
            .core
            .stats
            .bytes
            .saturating_sub(self.core.partial as u64);
        self.core.partial = 0;
        *torn_from = Some(whole);
        let res = match file.as_ref() {
            Some(f) => f.set_len(whole),
            None => Ok(()),
        };
        res.map_err(|e| {
            format!(
                "cut {} back to its last whole record at {whole} bytes: {e}",
                path.display()
            )
        })?;
        *size = whole;
        *torn_from = None;
        Ok(())
    }

    /// Rotates a file output past its size limit: `path` → `path.1` → … → `path.N`.
    /// Returns true if the rotation failed (the output is then in backoff).
    pub(super) fn rotate_if_needed(&mut self, registry: &Registry, now: Instant) -> bool {
        let Sink::File {
            path,
            file,
            size,
            rotate_bytes,
            rotate_keep,
            ..
        } = &mut self.sink
        else {
            return false;
        };
        if *rotate_bytes == 0 || *size < *rotate_bytes || self.core.partial > 0 {
            return false;
        }
        let name = |i: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if let Some(f) = file.take() {
            let _ = f.sync_data();
        }
        let keep = (*rotate_keep).max(1);
        let _ = std::fs::remove_file(name(keep));
        for i in (1..keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let renamed = std::fs::rename(&*path, name(1));
        let reopened = open_append(path);
        match (renamed, reopened) {
            (Ok(()), Ok(f)) => {
                *file = Some(f);
                *size = 0;
                false
            }
            (Err(e), _) | (_, Err(e)) => {
                let why = format!("rotate {}: {e}", path.display());
                self.fail(registry, &why, now);
                true
            }
        }
    }

    /// Makes a file output's delivered bytes durable before its cursor is checkpointed.
    pub fn sync(&self) -> io::Result<()> {
        match &self.sink {
            Sink::File { file: Some(f), .. } => f.sync_data(),
            _ => Ok(()),
        }
    }
}

/// Opens a file output for appending, creating it and its directory (mode 0750) if needed.
pub(super) fn open_append(path: &std::path::Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// A file output opened again after a short write: cut back to its last whole record first.
pub(super) fn untorn(f: File, torn_from: &mut Option<u64>) -> io::Result<File> {
    if let Some(len) = *torn_from {
        if f.metadata()?.len() > len {
            f.set_len(len)?;
        }
        *torn_from = None;
    }
    Ok(f)
}
