//! The ring on its own: append throughput for 100 B, 1 KiB and 16 KiB records, one record per
//! plain entry and 256 KiB of them per lines entry (framed in place, as the relay's newline
//! input does), beside a plain memcpy of the same bytes into a mapping of the same size (the
//! ceiling), read throughput, and,
//! timed once outside criterion's loop, the recovery (open) time of a full 1 GiB ring and the
//! rate at which a backlog is read after a reopen, cold (page cache dropped with
//! `posix_fadvise(DONTNEED)`, when the kernel honours it) and warm.
//!
//! `cargo bench --bench ring` (about a minute; `RING_BENCH_BIG_MIB=256` shrinks the big ring).

// The memcpy ceiling maps a scratch file itself; nothing else here is unsafe.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use memmap2::MmapMut;
use ringrelay::input::framing::{Framer, FramerConfig, Framing, Oversize};
use ringrelay::ring::{record_stride, Read, Ring, RingOptions, RingReader, WhenFull};

const MIB: f64 = 1024.0 * 1024.0;
/// The ring the criterion benchmarks run on: large enough that the working set is not all in
/// the CPU caches, small enough to fill quickly.
const BENCH_CAP: u64 = 64 << 20;
const SIZES: [usize; 3] = [100, 1024, 16 << 10];
const T0: u64 = 1_700_000_000_000_000_000;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("ringrelay-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        TempDir(d)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn opts(capacity: u64) -> RingOptions {
    RingOptions {
        capacity,
        max_record: 64 << 10,
        when_full: WhenFull::DropOldest,
        name: "bench".into(),
    }
}

fn payload(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A ring of `cap` bytes filled until it has wrapped once with `size`-byte records.
fn full_ring(path: &Path, cap: u64, size: usize) -> Ring {
    let mut ring = Ring::open(path, &opts(cap)).expect("open ring");
    let p = payload(size);
    let n = cap / record_stride(size as u64) + 16;
    for i in 0..n {
        ring.append(&p, T0 + i, false).expect("append");
    }
    ring
}

fn group_config<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g
}

fn append(c: &mut Criterion) {
    let dir = TempDir::new("append");
    let mut g = group_config(c, "append");
    for size in SIZES {
        let p = payload(size);
        g.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: size as u64,
        });
        // Steady state: the ring is full, so every append also evicts.
        let mut ring = full_ring(&dir.file(&format!("append-{size}.ring")), BENCH_CAP, size);
        let mut ts = T0 + (1 << 32);
        g.bench_function(BenchmarkId::new("ring", size), |b| {
            b.iter(|| {
                ts += 1;
                ring.append(black_box(&p), ts, false).unwrap()
            })
        });
        drop(ring);
        // The relay's newline path: a read's worth of lines (256 KiB) copied into room reserved
        // at the head (where a socket read puts them), framed in place, committed as one
        // lines entry. Per record.
        let per_entry = (256 << 10) / (size + 1);
        let mut body = Vec::with_capacity(per_entry * (size + 1));
        for _ in 0..per_entry {
            body.extend_from_slice(&p);
            body.push(b'\n');
        }
        let mut ring = full_ring(&dir.file(&format!("lines-{size}.ring")), BENCH_CAP, size);
        let mut framer = Framer::new(FramerConfig {
            framing: Framing::Newline,
            max_record: 64 << 10,
            oversize: Oversize::Truncate,
        });
        g.throughput(Throughput::ElementsAndBytes {
            elements: per_entry as u64,
            bytes: (per_entry * size) as u64,
        });
        g.bench_function(BenchmarkId::new("lines", size), |b| {
            b.iter(|| {
                ts += 1;
                ring.reserve(body.len(), body.len()).unwrap();
                let room = &mut ring.reserved_mut()[..body.len()];
                room.copy_from_slice(black_box(&body));
                let framed = framer.lines_in_place(room).unwrap();
                ring.commit_lines(framed.len, framed.records, ts).unwrap()
            })
        });
        drop(ring);
        g.throughput(Throughput::ElementsAndBytes {
            elements: 1,
            bytes: size as u64,
        });
        // The ceiling: the same bytes copied into a shared mapping of a file of the same size,
        // at the same stride, wrapping at the end.
        let path = dir.file(&format!("memcpy-{size}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(BENCH_CAP).unwrap();
        // SAFETY: the file is this benchmark's own, in its own temp dir, set to this length
        // above and never truncated while mapped.
        let mut map = unsafe { MmapMut::map_mut(&file).unwrap() };
        map.fill(1); // fault every page in, as the full ring's are
        let stride = record_stride(size as u64) as usize;
        let mut at = 0usize;
        g.bench_function(BenchmarkId::new("memcpy", size), |b| {
            b.iter(|| {
                if at + stride > map.len() {
                    at = 0;
                }
                map[at..at + size].copy_from_slice(black_box(&p));
                at += stride;
            })
        });
    }
    g.finish();
}

/// Reads every record from tail to head; returns (records, payload bytes).
fn read_all(ring: &Ring) -> (u64, u64) {
    let mut pos = ring.tail();
    let (mut n, mut bytes) = (0u64, 0u64);
    loop {
        match ring.read(pos) {
            Read::Record(r) => {
                n += 1;
                bytes += r.payload.len() as u64;
                black_box(r.payload);
                pos = r.next;
            }
            Read::End => return (n, bytes),
            other => panic!("{other:?}"),
        }
    }
}

fn read(c: &mut Criterion) {
    let dir = TempDir::new("read");
    let mut g = group_config(c, "read_whole_ring");
    for size in SIZES {
        let ring = full_ring(&dir.file(&format!("read-{size}.ring")), BENCH_CAP, size);
        let (n, bytes) = read_all(&ring);
        g.throughput(Throughput::ElementsAndBytes { elements: n, bytes });
        g.bench_function(BenchmarkId::new("ring", size), |b| {
            b.iter(|| read_all(&ring))
        });
    }
    g.finish();
}

fn cached_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("Cached:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Writes the file back and asks the kernel to drop its pages; reports what happened.
fn drop_cache(path: &Path) -> String {
    let before = cached_kib();
    let file = File::open(path).unwrap();
    if let Err(e) = file.sync_all() {
        return format!("fsync failed: {e}");
    }
    let len = file.metadata().unwrap().len() as i64;
    let advice = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
    if let Err(e) = nix::fcntl::posix_fadvise(file.as_fd(), 0, len, advice) {
        return format!("posix_fadvise(DONTNEED) failed: {e}");
    }
    match (before, cached_kib()) {
        (Some(b), Some(a)) => format!(
            "posix_fadvise(DONTNEED): page cache went from {:.0} to {:.0} MiB ({:.0} MiB dropped, file {:.0} MiB)",
            b as f64 / 1024.0,
            a as f64 / 1024.0,
            b.saturating_sub(a) as f64 / 1024.0,
            len as f64 / MIB
        ),
        _ => "posix_fadvise(DONTNEED) returned ok (no /proc/meminfo to check)".into(),
    }
}

fn rate(what: &str, n: u64, bytes: u64, t: Duration) {
    let s = t.as_secs_f64();
    println!(
        "  {what:<44} {:>8.1} ms  {:>12.0} events/s  {:>8.1} MiB/s",
        s * 1e3,
        n as f64 / s,
        bytes as f64 / MIB / s
    );
}

/// One-shot measurements on a full 1 GiB ring (1 KiB records).
fn recovery_and_backlog(_c: &mut Criterion) {
    let mib: u64 = std::env::var("RING_BENCH_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let cap = mib << 20;
    let dir = TempDir::new("big");
    let path = dir.file("big.ring");
    let size = 1024usize;
    println!("\nring of {mib} MiB, {size} B records (one-shot timings):");
    let t = Instant::now();
    let mut ring = Ring::open(&path, &opts(cap)).expect("create");
    println!(
        "  create (posix_fallocate, fsync)              {:>8.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    let p = payload(size);
    let n = cap / record_stride(size as u64) + 1000;
    let t = Instant::now();
    for i in 0..n {
        ring.append(&p, T0 + i, false).unwrap();
    }
    rate(
        "fill: append, first touch of every page",
        n,
        n * size as u64,
        t.elapsed(),
    );
    drop(ring);

    // Recovery (open) after a drop without a checkpoint, as after a crash: the scan from the
    // last metadata write dominates. The writer writes metadata once a quarter of the capacity
    // has been appended, so the worst case is just under a quarter.
    let stride = record_stride(size as u64);
    let quarter = cap / 4 / stride - 8;
    let mut seq_ts = T0 + n;
    let mut timed_open = |what: &str, top_up: u64, cold: bool| {
        let mut ring = Ring::open(&path, &opts(cap)).unwrap();
        for _ in 0..top_up {
            seq_ts += 1;
            ring.append(&p, seq_ts, false).unwrap();
        }
        drop(ring);
        if cold {
            println!("  {}", drop_cache(&path));
        }
        let t = Instant::now();
        let ring = Ring::open(&path, &opts(cap)).expect("recover");
        let took = t.elapsed();
        let scanned = ring.recovery().scanned;
        println!(
            "  {what:<44} {:>8.1} ms  scanned {scanned} records ({:.0} MiB) past the checkpoint",
            took.as_secs_f64() * 1e3,
            (scanned * stride) as f64 / MIB
        );
    };
    timed_open("recovery (open), cold cache, worst case", quarter, true);
    timed_open("recovery (open), warm cache, worst case", quarter, false);
    timed_open("recovery (open), cold cache, nothing to scan", 0, true);

    // Backlog: everything in the ring read after a reopen (read-only, as an output replaying).
    println!("  {}", drop_cache(&path));
    let reader = RingReader::open(&path).unwrap();
    let view = reader.view();
    let read_view = || {
        let (mut pos, mut k, mut bytes) = (view.tail, 0u64, 0u64);
        loop {
            match view.read(pos) {
                Read::Record(r) => {
                    k += 1;
                    bytes += r.payload.len() as u64;
                    black_box(r.payload);
                    pos = r.next;
                }
                Read::End => return (k, bytes),
                other => panic!("{other:?}"),
            }
        }
    };
    let t = Instant::now();
    let (k, bytes) = read_view();
    rate(
        "backlog read after reopen, cold cache",
        k,
        bytes,
        t.elapsed(),
    );
    let t = Instant::now();
    let (k, bytes) = read_view();
    rate("backlog read again, warm cache", k, bytes, t.elapsed());
    println!();
}

criterion_group!(benches, append, read, recovery_and_backlog);
criterion_main!(benches);
