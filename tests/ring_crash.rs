//! Crash tests with real processes: a child appends to a ring and reports every accepted
//! record's sequence number through a pipe; the parent SIGKILLs it at a random moment, recovers
//! the ring and checks that every reported record is there, intact, in order and consecutive
//! (`buffer-spec.md` §10: a process crash loses nothing that was accepted).
//!
//! `harness = false`: this file's `main` is both the parent (no arguments, or whatever
//! `cargo test` passes) and the child (`--child PATH CAPACITY MAX_RECORD SALT`).
//! `RING_CRASH_SEED=n` replays a run.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use ringrelay::ring::{Pos, Read, Ring, RingOptions, RingReader, WhenFull};

/// Rings per run, and kills per ring (each kill after the first one hits a recovered ring).
const RINGS: u64 = 12;
const KILLS_PER_RING: u64 = 5;
const MIN_TRIALS: u64 = 50;
/// The whole run stops starting trials after this (each trial is well under a second).
const BUDGET: Duration = Duration::from_secs(20);
/// A child that outlives this exits by itself (the parent died or lost it).
const CHILD_LIFETIME: Duration = Duration::from_secs(10);
const MAX_PAYLOAD: u64 = 4000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--child") {
        return child(&args[i + 1..]);
    }
    parent()
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The record with sequence number `seq`: the seq's bytes repeated, 0..4000 bytes long.
fn payload_of(seq: u64, salt: u64) -> Vec<u8> {
    let len = (mix(seq ^ salt) % MAX_PAYLOAD) as usize;
    seq.to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(len)
        .collect()
}

fn truncated_of(seq: u64) -> bool {
    seq.is_multiple_of(5)
}

fn opts(capacity: u64, max_record: u32) -> RingOptions {
    RingOptions {
        capacity,
        max_record,
        when_full: WhenFull::DropOldest,
        name: "crash".into(),
    }
}

/// The child: append forever, report each accepted seq (8 bytes LE) as soon as `append`
/// returns, checkpoint now and then. Exits when the pipe breaks or its lifetime is over.
fn child(args: &[String]) -> ExitCode {
    let [path, capacity, max_record, salt] = args else {
        eprintln!("usage: ring_crash --child PATH CAPACITY MAX_RECORD SALT");
        return ExitCode::from(2);
    };
    let (capacity, max_record, salt): (u64, u32, u64) =
        match (capacity.parse(), max_record.parse(), salt.parse()) {
            (Ok(c), Ok(m), Ok(s)) => (c, m, s),
            _ => return ExitCode::from(2),
        };
    thread::spawn(|| {
        thread::sleep(CHILD_LIFETIME);
        std::process::exit(0);
    });
    let mut ring = match Ring::open(Path::new(path), &opts(capacity, max_record)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("child: {e}");
            return ExitCode::from(2);
        }
    };
    // One write(2) of 8 bytes per report: atomic on a pipe, so a kill never tears a report.
    // (std's stdout is line-buffered and would split a seq whose bytes contain 0x0A.)
    let out = std::io::stdout();
    let mut rng = mix(salt ^ ring.head().seq);
    let mut until_checkpoint = 0u64;
    loop {
        let seq = ring.head().seq;
        let ts = ringrelay::clock::wall_ns();
        let got = ring.append(&payload_of(seq, salt), ts, truncated_of(seq));
        match got {
            Ok(p) if p.seq == seq => {}
            other => {
                eprintln!("child: append of seq {seq} gave {other:?}");
                return ExitCode::from(2);
            }
        }
        if nix::unistd::write(&out, &seq.to_le_bytes()) != Ok(8) {
            return ExitCode::SUCCESS;
        }
        if until_checkpoint == 0 {
            rng = mix(rng);
            until_checkpoint = rng % 400;
            if let Err(e) = ring.checkpoint(ts, rng.is_multiple_of(4)) {
                eprintln!("child: checkpoint: {e}");
                return ExitCode::from(2);
            }
        } else {
            until_checkpoint -= 1;
        }
    }
}

/// Kills the child on drop, whatever happened.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Trial {
    path: PathBuf,
    capacity: u64,
    max_record: u32,
    salt: u64,
    delay: Duration,
    inspect: bool,
}

/// What one kill left: seqs reported, and what the parent found.
struct Outcome {
    reported: usize,
    wrapped: bool,
}

fn parent() -> ExitCode {
    let seed = std::env::var("RING_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| ringrelay::clock::wall_ns() % 1_000_000);
    let exe = std::env::current_exe().expect("current_exe");
    let dir = TempDir(std::env::temp_dir().join(format!("ringrelay-crash-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0).expect("create temp dir");
    println!("ring_crash: seed {seed} (RING_CRASH_SEED={seed} replays it)");
    let start = Instant::now();
    let (mut passed, mut failed) = (0u64, 0u64);
    let (mut reported, mut wrapped) = (0usize, 0u64);
    let mut rng = mix(seed);
    'rings: for r in 0..RINGS {
        // Every other ring is the smallest allowed (1 MiB): it wraps within a few ms.
        let (capacity, max_record) = if r % 2 == 0 {
            (1 << 20, 8 << 10)
        } else {
            (16 << 20, 64 << 10)
        };
        let path = dir.0.join(format!("feed{r}.ring"));
        for k in 0..KILLS_PER_RING {
            let n = r * KILLS_PER_RING + k;
            if start.elapsed() > BUDGET && n >= MIN_TRIALS {
                break 'rings;
            }
            rng = mix(rng);
            let trial = Trial {
                path: path.clone(),
                capacity,
                max_record,
                salt: seed ^ r,
                delay: Duration::from_millis(5 + rng % 56),
                inspect: n % 10 == 9,
            };
            match run_trial(&exe, &trial) {
                Ok(o) => {
                    passed += 1;
                    reported += o.reported;
                    wrapped += u64::from(o.wrapped);
                }
                Err(why) => {
                    failed += 1;
                    println!(
                        "ring_crash: trial {n} (ring {r}, kill {k}, delay {:?}) FAILED: {why}",
                        trial.delay
                    );
                }
            }
        }
    }
    println!(
        "ring_crash: {} records reported before the kills, {wrapped} trials found a wrapped ring, {:.1} s",
        reported,
        start.elapsed().as_secs_f64()
    );
    let enough = passed + failed >= MIN_TRIALS;
    if !enough {
        println!("ring_crash: only {} trials ran", passed + failed);
    }
    println!("ring_crash: {passed} passed, {failed} failed");
    if failed == 0 && enough {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn run_trial(exe: &Path, t: &Trial) -> Result<Outcome, String> {
    let child = Command::new(exe)
        .arg("--child")
        .arg(&t.path)
        .arg(t.capacity.to_string())
        .arg(t.max_record.to_string())
        .arg(t.salt.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn child: {e}"))?;
    let mut child = Killed(child);
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    let reader = thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let errs = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    thread::sleep(t.delay);
    let early_exit = child.0.try_wait().ok().flatten();
    let _ = child.0.kill();
    let _ = child.0.wait();
    drop(child);
    let bytes = reader.join().map_err(|_| "pipe reader panicked")?;
    let child_err = errs.join().unwrap_or_default();
    if let Some(status) = early_exit {
        return Err(format!("child exited by itself ({status}): {child_err}"));
    }
    let seqs: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    if bytes.len() % 8 != 0 {
        return Err(format!("torn report: {} bytes", bytes.len()));
    }
    if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
        return Err("the child reported non-consecutive seqs".into());
    }
    if !t.path.exists() {
        // Killed while creating the ring (before the rename): nothing was accepted.
        return if seqs.is_empty() {
            Ok(Outcome {
                reported: 0,
                wrapped: false,
            })
        } else {
            Err("records were reported but there is no ring file".into())
        };
    }
    // The read-only recovery (`inspect`) and the writing one must agree.
    let reader = RingReader::open(&t.path).map_err(|e| format!("RingReader::open: {e}"))?;
    let (ro_tail, ro_head) = (reader.view().tail, reader.view().head);
    drop(reader);
    if t.inspect {
        let out = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
            .arg("inspect")
            .arg(&t.path)
            .arg("--verify")
            .output()
            .map_err(|e| format!("run inspect: {e}"))?;
        if out.status.code() != Some(0) {
            return Err(format!(
                "inspect --verify exited {:?}: {}{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let ring = Ring::open(&t.path, &opts(t.capacity, t.max_record))
        .map_err(|e| format!("Ring::open after the kill: {e}"))?;
    let (tail, head) = (ring.tail(), ring.head());
    if (tail, head) != (ro_tail, ro_head) {
        return Err(format!(
            "read-only recovery found {ro_tail:?}..{ro_head:?}, Ring::open {tail:?}..{head:?}"
        ));
    }
    check_records(&ring, t.salt, &seqs)?;
    let stats = ring.stats();
    Ok(Outcome {
        reported: seqs.len(),
        wrapped: stats.evicted > 0,
    })
}

/// Every record from tail to head is intact and consecutive; every reported record that the
/// ring still holds is there; the ones it no longer holds were evicted by a full ring.
fn check_records(ring: &Ring, salt: u64, seqs: &[u64]) -> Result<(), String> {
    let (tail, head) = (ring.tail(), ring.head());
    if let Some(&last) = seqs.last() {
        // Accepted and reported: present. At most one more was accepted before the kill.
        if head.seq <= last {
            return Err(format!(
                "seq {last} was reported but the recovered head is {head:?}"
            ));
        }
        if head.seq > last + 2 {
            return Err(format!(
                "recovered head {head:?} is past the last accepted record {last} + 1"
            ));
        }
    }
    let stats = ring.stats();
    if let Some(&first) = seqs.first() {
        if first < tail.seq {
            // Lost to eviction only if the ring really was full.
            if stats.evicted == 0 || stats.used < ring.capacity() / 2 {
                return Err(format!(
                    "reported seq {first} is below the tail {tail:?} of a ring that is not full: {stats:?}"
                ));
            }
        }
    }
    if !ring.view().verify().is_empty() {
        return Err(format!("verify found damage: {:?}", ring.view().verify()));
    }
    let mut pos: Pos = tail;
    let mut last_ts = 0;
    loop {
        match ring.read(pos) {
            Read::Record(r) => {
                let seq = r.pos.seq;
                if seq != pos.seq {
                    return Err(format!("read at {pos:?} returned seq {seq}"));
                }
                if r.payload != payload_of(seq, salt).as_slice() {
                    return Err(format!("payload of seq {seq} differs"));
                }
                if r.truncated != truncated_of(seq) {
                    return Err(format!("truncated flag of seq {seq} differs"));
                }
                if r.ts < last_ts {
                    return Err(format!("ts of seq {seq} goes backwards"));
                }
                last_ts = r.ts;
                pos = r.next;
            }
            Read::End if pos == head => return Ok(()),
            other => return Err(format!("reading at {pos:?}: {other:?}")),
        }
    }
}
