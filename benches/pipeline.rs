//! End to end on loopback: a sender → ringrelay → a receiving sink, and in the same run the
//! sender → the sink directly, as the ceiling. Prints events/s, MiB/s, the ratio to the
//! ceiling, beside a plain copying proxy, and the relay's peak anonymous memory (RssAnon) and
//! CPU time per GiB beside the proxy's: on a loaded 2-core machine the rates vary from run to
//! run, the CPU cost of a byte much less. The ring is in `block` mode, so nothing is overwritten
//! and the sink must get every byte.
//!
//! Beside the plain proxy, a *mapped* proxy reads straight into a file mapping of the ring's
//! size, checksums each read and writes out straight from the mapping: the floor of any
//! CRC-checked mapped ring, whatever its record format. Relay runs also report the figures after
//! the first lap (from when one ring capacity has gone through): a new process takes a fault on
//! each page the first time it writes it.
//!
//! With `sync = "interval"` (the default) every second's records reach the disk within the
//! next second, so the relay cannot go faster than the disk writes; the run also prints that
//! ceiling: the same bytes written into a file of the ring's size with an `fdatasync` every
//! second. `sync = "never"` (records survive a crash of the relay, not of the machine) shows
//! the relay's own cost.
//!
//! Every measurement runs `PIPELINE_RUNS` times (default 3) and the median is reported, with the
//! range of the relay's rates: on this VM two runs of the same thing differ by up to 2x.
//!
//! `cargo bench --bench pipeline` (env `PIPELINE_RECORDS` to change the record count,
//! `PIPELINE_CASES=1` for the 1 KiB case alone, `RINGRELAY_BIN` to measure another build).

// The mapped proxy maps a scratch file itself; nothing else here is unsafe.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::{rss_anon_kib, Relay};

/// A sink that counts bytes until it has `want`; returns when it got them, and, once it got
/// `lap` bytes (a ring's capacity), when that was and the CPU time `cpu` reported then.
fn sink(
    listener: TcpListener,
    want: u64,
    got: Arc<AtomicU64>,
    lap: Option<(u64, Box<dyn Fn() -> Duration + Send>)>,
) -> thread::JoinHandle<(Instant, Option<(Instant, Duration)>)> {
    thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        let mut lapped = None;
        while n < want {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k as u64;
                    got.store(n, Ordering::Relaxed);
                    if let Some((bytes, cpu)) = &lap {
                        if lapped.is_none() && n >= *bytes {
                            lapped = Some((Instant::now(), cpu()));
                        }
                    }
                }
            }
        }
        (Instant::now(), lapped)
    })
}

/// Sends `records` records of `len` bytes (LF included) as fast as the socket takes them.
fn send(addr: SocketAddr, records: u64, len: usize) -> Instant {
    let mut s = TcpStream::connect(addr).expect("connect");
    let (batch, per_batch) = common::syslog_batch(len);
    let start = Instant::now();
    common::send_batches(&mut s, &batch, per_batch, len, records);
    start
}

fn direct(records: u64, len: usize) -> Duration {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let done = sink(l, records * len as u64, Arc::default(), None);
    let start = send(addr, records, len);
    done.join().unwrap().0 - start
}

/// sender → `proxy(from, to)` in a thread of its own → sink: the time from the first byte sent
/// to the last received, when that was, and what the proxy returned.
fn through_proxy<T: Send + 'static>(
    records: u64,
    len: usize,
    proxy: impl FnOnce(TcpStream, TcpStream) -> T + Send + 'static,
) -> (Duration, Instant, T) {
    let sink_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let siem = sink_l.local_addr().unwrap();
    let proxy_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = proxy_l.local_addr().unwrap();
    let done = sink(sink_l, records * len as u64, Arc::default(), None);
    let proxy = thread::spawn(move || {
        let (from, _) = proxy_l.accept().expect("accept");
        let to = TcpStream::connect(siem).expect("connect sink");
        proxy(from, to)
    });
    let start = send(addr, records, len);
    let end = done.join().unwrap().0;
    (end - start, end, proxy.join().unwrap())
}

/// sender → a plain copying proxy (read into a 1 MiB buffer, write it out) → sink: what any
/// relay without a ring, framing or checksums would cost on this machine. Returns the time and
/// the proxy's CPU time.
fn proxied(records: u64, len: usize) -> (Duration, Duration) {
    let (took, _, cpu) = through_proxy(records, len, |mut from, mut to| {
        let mut buf = vec![0u8; 1 << 20];
        let cpu_before = thread_cpu_time();
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => to.write_all(&buf[..k]).expect("proxy write"),
            }
        }
        thread_cpu_time() - cpu_before
    });
    (took, cpu)
}

/// sender → a proxy that reads straight into a shared mapping of a file of the ring's size
/// (written once before, as a warm ring is; wrapping at its end), computes one CRC32 over each
/// read and writes the output straight from the mapping: no framing, no record headers, no
/// cursors. It is the floor of any CRC-checked mapped ring on this machine, whatever its
/// record format.
/// Returns the time and its CPU time, and the same two after its first lap through the file.
fn mapped_proxy(dir: &Path, records: u64, len: usize, ring: u64) -> (Duration, Duration, Lap) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("mapped-proxy.bin");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    // Written once, as a restarted relay's warm ring is, then mapped afresh.
    let chunk = vec![b'x'; 1 << 20];
    for off in (0..ring).step_by(chunk.len()) {
        std::os::unix::fs::FileExt::write_all_at(&file, &chunk, off).unwrap();
    }
    // SAFETY: the file was created above, in this run's own directory, and nothing else maps
    // or resizes it while the proxy runs.
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    let (took, end, (cpu_before, lapped, cpu_end)) =
        through_proxy(records, len, move |mut from, mut to| {
            let cpu_before = thread_cpu_time();
            let (mut off, mut crc, mut total, mut lapped) = (0usize, 0u32, 0u64, None);
            const CHUNK: usize = 64 << 10;
            loop {
                if off + CHUNK > map.len() {
                    off = 0;
                }
                match from.read(&mut map[off..off + CHUNK]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        crc ^= crc32fast::hash(&map[off..off + k]);
                        to.write_all(&map[off..off + k]).expect("proxy write");
                        off += k;
                        total += k as u64;
                        if lapped.is_none() && total >= ring {
                            lapped = Some((Instant::now(), thread_cpu_time()));
                        }
                    }
                }
            }
            std::hint::black_box(crc);
            (cpu_before, lapped, thread_cpu_time())
        });
    let _ = std::fs::remove_file(&path);
    let after_lap = lapped.map(|(at, cpu)| (end - at, cpu_end - cpu));
    (took, cpu_end - cpu_before, after_lap)
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu_time() -> Duration {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

/// The same bytes written into a file of the ring's size (wrapping at its end) in 1 MiB
/// writes, with an `fdatasync` every second and at the end: what this disk takes under
/// `sync = "interval"`.
fn disk(dir: &Path, bytes: u64, ring: u64) -> Duration {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("disk.bin");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(ring).unwrap();
    // Written once, as a relay's warm ring is, then timed.
    let chunk = vec![b'x'; 1 << 20];
    let pass = |n: u64| {
        let (mut off, mut done, mut last) = (0u64, 0u64, Instant::now());
        while done < n {
            f.write_all_at(&chunk, off).unwrap();
            done += chunk.len() as u64;
            off = (off + chunk.len() as u64) % ring;
            if last.elapsed() >= Duration::from_secs(1) {
                f.sync_data().unwrap();
                last = Instant::now();
            }
        }
        f.sync_data().unwrap();
    };
    pass(ring);
    let start = Instant::now();
    pass(bytes);
    let took = start.elapsed();
    let _ = std::fs::remove_file(&path);
    took
}

/// The relay's CPU time (user + system) so far, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses: utime and stime are 14 and 15.
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().skip(11).take(2))
        .into_iter()
        .flatten()
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on every Linux we ship for.
    Duration::from_millis(ticks * 10)
}

/// The time and CPU time from when one ring capacity of bytes had gone through to the end: the
/// steady state, after the first lap through a mapping that a new process starts with no page
/// mapped (each first write to a page takes a fault). `None` when the run was shorter.
type Lap = Option<(Duration, Duration)>;

/// What one relay run measured.
struct Run {
    /// From the first byte sent to the last received.
    took: Duration,
    /// The relay's CPU time over the run.
    cpu: Duration,
    /// The same two from when the sink had received one ring capacity of bytes.
    after_lap: Lap,
    /// Peak RssAnon, KiB.
    peak: u64,
}

/// One relay run over the ring in `dir` (created on the first run, reused warm on the next).
fn relayed(dir: &Path, records: u64, len: usize, ring: &str, ring_bytes: u64, sync: &str) -> Run {
    std::fs::create_dir_all(dir).unwrap();
    let sink_l = TcpListener::bind("127.0.0.1:0").unwrap();
    let siem = sink_l.local_addr().unwrap();
    let port = common::free_port();
    let config = format!(
        "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"off\"\n[[feed]]\nname = \"bench\"\ninput = {{ kind = \"tcp\", listen = \"{port}\" }}\nframing = \"newline\"\nbuffer = {{ size = \"{ring}\" }}\nwhen_full = \"block\"\nsync = \"{sync}\"\n[[feed.output]]\nname = \"sink\"\nkind = \"tcp\"\naddress = \"{siem}\"\nreplay = \"0s\"\n",
        dir.join("data").display()
    );
    let got = Arc::new(AtomicU64::new(0));
    let relay_pid = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let lap_cpu = {
        let relay_pid = relay_pid.clone();
        Box::new(move || cpu_time(relay_pid.load(Ordering::Relaxed))) as Box<_>
    };
    let done = sink(
        sink_l,
        records * len as u64,
        got.clone(),
        Some((ring_bytes, lap_cpu)),
    );
    let mut relay = Relay::start(dir, &config, &[port]);
    let pid = relay.child.id();
    relay_pid.store(pid, Ordering::Relaxed);
    let cpu_before = cpu_time(pid);
    let sender = thread::spawn(move || send(port, records, len));
    let mut peak = 0;
    let t1 = Instant::now();
    while !done.is_finished() {
        peak = peak.max(rss_anon_kib(pid));
        if t1.elapsed() > Duration::from_secs(300) {
            // Killing the relay closes the sink's connection, which ends the sink.
            let _ = relay.child.kill();
        }
        thread::sleep(Duration::from_millis(20));
    }
    let start = sender.join().unwrap();
    let (end, lapped) = done.join().unwrap();
    peak = peak.max(rss_anon_kib(pid));
    let cpu_end = cpu_time(pid);
    let log = relay.log();
    // SIGTERM: the relay checkpoints its cursor, so the warm run starts with nothing to resend.
    drop(relay);
    assert_eq!(
        got.load(Ordering::Relaxed),
        records * len as u64,
        "sink did not get everything; relay log:\n{log}"
    );
    Run {
        took: end - start,
        cpu: cpu_end - cpu_before,
        after_lap: lapped.map(|(at, cpu)| (end - at, cpu_end - cpu)),
        peak,
    }
}

/// The median run's after-lap figures (by time), if every run had them.
fn after_lap(laps: Vec<Lap>) -> Lap {
    let laps: Option<Vec<(Duration, Duration)>> = laps.into_iter().collect();
    laps.map(median)
}

/// The middle value (the upper one of the two middle ones).
fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let records: u64 = std::env::var("PIPELINE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let runs: usize = std::env::var("PIPELINE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let mib_s = |bytes: u64, d: Duration| bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64();
    let dir = std::env::temp_dir().join(format!("ringrelay-bench-{}", std::process::id()));
    // PIPELINE_CASES=1 runs the first case only (1 KiB records, 1 GiB ring).
    let cases: usize = std::env::var("PIPELINE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for (len, ring, ring_bytes) in [
        (1024usize, "1GiB", 1u64 << 30),
        (256, "1GiB", 1 << 30),
        (1024, "8GiB", 8 << 30),
    ]
    .into_iter()
    .take(cases)
    {
        let n = records * 1024 / len as u64;
        let bytes = n * len as u64;
        let direct = median((0..runs).map(|_| direct(n, len)).collect());
        let proxies: Vec<(Duration, Duration)> = (0..runs).map(|_| proxied(n, len)).collect();
        let proxy = median(proxies.iter().map(|p| p.0).collect());
        let proxy_cpu = median(proxies.iter().map(|p| p.1).collect());
        let mapped: Vec<(Duration, Duration, Lap)> = (0..runs)
            .map(|_| mapped_proxy(&dir, n, len, ring_bytes))
            .collect();
        let mapped_cpu = median(mapped.iter().map(|p| p.1).collect());
        let mapped_lap = after_lap(mapped.iter().map(|p| p.2).collect());
        let mapped = median(mapped.iter().map(|p| p.0).collect());
        let gib = bytes as f64 / (1u64 << 30) as f64;
        let disk = disk(&dir, bytes, ring_bytes);
        println!(
            "pipeline {len:>4} B x {n}, {ring:>4}: direct {:.0} ev/s {:.0} MiB/s | plain proxy {:.0} MiB/s ({:.2}), {:.2} CPU s/GiB | mapped proxy {:.0} MiB/s ({:.2}), {:.2} CPU s/GiB | disk, fdatasync every 1 s: {:.0} MiB/s",
            n as f64 / direct.as_secs_f64(),
            mib_s(bytes, direct),
            mib_s(bytes, proxy),
            direct.as_secs_f64() / proxy.as_secs_f64(),
            proxy_cpu.as_secs_f64() / gib,
            mib_s(bytes, mapped),
            direct.as_secs_f64() / mapped.as_secs_f64(),
            mapped_cpu.as_secs_f64() / gib,
            mib_s(bytes, disk),
        );
        let lap_bytes = bytes.saturating_sub(ring_bytes);
        // The rate and CPU per GiB after the first lap, and the rate's ratio to the direct one.
        let steady = |lap: Lap| {
            lap.map(|(took, cpu)| {
                (
                    mib_s(lap_bytes, took),
                    cpu.as_secs_f64() / (lap_bytes as f64 / (1u64 << 30) as f64),
                    mib_s(lap_bytes, took) / mib_s(bytes, direct),
                )
            })
        };
        if let Some((rate, cpu, ratio)) = steady(mapped_lap) {
            println!("  mapped proxy after its first lap: {rate:.0} MiB/s ({ratio:.2}), {cpu:.2} CPU s/GiB");
        }
        // A new ring's first lap writes blocks the file system has only reserved; a restarted
        // relay's ring is resident where the last run wrote it (all of a 1 GiB ring, a quarter
        // of an 8 GiB one).
        let relay_cases: &[(&str, &str)] = if ring == "1GiB" && len == 1024 {
            &[
                ("new ring", "interval"),
                ("warm ring", "interval"),
                ("warm ring", "never"),
            ]
        } else if ring == "1GiB" {
            &[("new ring", "interval"), ("warm ring", "interval")]
        } else {
            &[("new ring", "interval")]
        };
        let _ = std::fs::remove_dir_all(&dir);
        for (lap, sync) in relay_cases {
            let results: Vec<Run> = (0..runs)
                .map(|_| {
                    if *lap == "new ring" {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    relayed(&dir, n, len, ring, ring_bytes, sync)
                })
                .collect();
            let relay = median(results.iter().map(|r| r.took).collect());
            let cpu = median(results.iter().map(|r| r.cpu).collect());
            let peak = results.iter().map(|r| r.peak).max().unwrap_or(0);
            let fastest = results.iter().map(|r| r.took).min().unwrap_or(relay);
            let slowest = results.iter().map(|r| r.took).max().unwrap_or(relay);
            let lapped = match steady(after_lap(results.iter().map(|r| r.after_lap).collect())) {
                Some((rate, cpu, ratio)) => {
                    format!(
                        " | after the first lap {rate:.0} MiB/s ({ratio:.2}), {cpu:.2} CPU s/GiB"
                    )
                }
                None => String::new(),
            };
            println!(
                "  ringrelay {lap:<9} sync={sync:<8}: {:>8.0} ev/s {:>5.0} MiB/s ({:.0}-{:.0}) | vs direct {:.2}, vs proxy {:.2}, vs disk {:.2} | relay {:.2} CPU s/GiB, busy {:.0}% of the run{lapped} | peak RssAnon {peak} KiB",
                n as f64 / relay.as_secs_f64(),
                mib_s(bytes, relay),
                mib_s(bytes, slowest),
                mib_s(bytes, fastest),
                direct.as_secs_f64() / relay.as_secs_f64(),
                proxy.as_secs_f64() / relay.as_secs_f64(),
                disk.as_secs_f64() / relay.as_secs_f64(),
                cpu.as_secs_f64() / gib,
                100.0 * cpu.as_secs_f64() / relay.as_secs_f64(),
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
