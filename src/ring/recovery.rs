//! Opening a ring file (`buffer-spec.md` §8): the superblock checked, the options checked
//! against it, the newest valid metadata slot chosen and the entries after its checkpoint
//! scanned, past damage, to the head.

use super::*;

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
