//! Opening a ring file (`buffer-spec.md` §8): the superblock checked, the options checked
//! against it, the newest valid metadata slot chosen and the entries after its checkpoint
//! scanned, past damage, to the head.

use super::*;

impl Ring {
    /// Creates a new ring file: written under a temporary name, allocated, synced, then linked
    /// into place. `Ok(false)` when a file was there by then: a link never replaces one (a
    /// rename would). On NFS a standby's client may have cached "no such file" for a ring the
    /// active created since; the server refuses the link, and the active's ring is opened
    /// instead of being replaced by an empty one.
    pub(super) fn create(path: &Path, opts: &RingOptions) -> Result<bool, OpenError> {
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
        let linked = match std::fs::hard_link(&tmp, path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err(path, "link into place")(e)),
        };
        std::fs::remove_file(&tmp).map_err(io_err(&tmp, "remove"))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(path, "fsync data directory"))?;
        }
        Ok(linked)
    }
}

/// Reads and checks the superblock and the file length, before anything is mapped.
pub(super) fn read_superblock(file: &File, path: &Path) -> Result<Superblock, OpenError> {
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
pub(super) fn recover(
    map: &[u8],
    sb: &Superblock,
    path: &Path,
) -> Result<(Meta, Recovery), OpenError> {
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

pub(super) fn validate_options(path: &Path, opts: &RingOptions) -> Result<(), OpenError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The story: on NFS a standby's client cached "no such file" for a ring the active had
    /// created since; at takeover the relay created a ring and renamed it over the active's,
    /// 13,900 records with `sync = "always"` gone (image/test-pair.sh saw `created=true`).
    #[test]
    fn creating_a_ring_where_one_appeared_meanwhile_keeps_the_one_that_is_there() {
        let dir = std::env::temp_dir().join(format!("ringrelay-create-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("f.ring");
        let opts = RingOptions {
            capacity: MIN_CAPACITY,
            max_record: 1024,
            when_full: WhenFull::DropOldest,
            name: "f".into(),
        };
        {
            let mut ring = Ring::open(&path, &opts).expect("a new ring");
            assert!(ring.recovery().created);
            for i in 0..10u32 {
                ring.append(&i.to_le_bytes(), 0, false).expect("append");
            }
            ring.checkpoint(1, true).expect("checkpoint");
        }
        // As the open after a stale "no such file" does.
        assert!(
            !Ring::create(&path, &opts).expect("create"),
            "a ring was replaced"
        );
        assert!(
            !path.with_extension("ring.tmp").exists(),
            "temporary file left"
        );
        let ring = Ring::open(&path, &opts).expect("reopen");
        assert!(!ring.recovery().created);
        assert_eq!(
            ring.head().seq - ring.tail().seq,
            10,
            "the records are still there"
        );
        drop(ring);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
