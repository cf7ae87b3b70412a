//! The crash window (issue 15 item 1): records lost per SIGKILL of the relay at 20,000
//! records/s of 870 bytes, per sync policy; see `common/crash.rs` for how they are counted.
//! Prints the median and maximum lost per kill and the kill count.
//!
//! `cargo bench --bench crash_window` (env `CRASH_KILLS`, default 25; `CRASH_POLICIES`, default
//! `interval,never,always`; `CRASH_RATE`, default 20000; `CRASH_LEN`, default 870;
//! `RINGRELAY_BIN` to measure another build). About a minute per policy.

#[path = "common/crash.rs"]
mod crash;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument, if any, picks policies too.
    let kills: usize = env_or("CRASH_KILLS", 25);
    let rate: u64 = env_or("CRASH_RATE", 20_000);
    let len: usize = env_or("CRASH_LEN", 870);
    let policies: String = env_or("CRASH_POLICIES", "interval,never,always".to_string());
    let bin = crash::relay_bin(env!("CARGO_BIN_EXE_ringrelay"));
    let dir = std::env::temp_dir().join(format!("ringrelay-crash-window-{}", std::process::id()));
    println!(
        "crash window: {} ({} records/s of {} B, {} kills per policy)",
        bin.display(),
        rate,
        len,
        kills
    );
    for policy in policies.split(',') {
        let w = crash::kill_loop(&bin, &dir, policy, kills, rate, len);
        println!("{}", w.line());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
