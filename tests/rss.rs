//! The relay binary's resident anonymous memory (`RssAnon`) stays within the memory formula of
//! `ringrelay::memory` (what `ringrelay size --config` prints) plus
//! [`ringrelay::memory::PROCESS_ALLOWANCE`] for the stack, the code's writable data and the
//! allocator, after relaying 200,000 records TCP to TCP.
//!
//! The story: no test held RssAnon, and a `Vec::resize` of the input scratch buffer (it wrote
//! every byte: 1.3 MiB with the default `max_record_bytes`, 5x the relay's usual footprint)
//! got as far as the benchmark. The configuration here keeps the formula small (2 connections,
//! 4 KiB records), so the bound is tight: about 1.5 MiB, against 0.8 MiB measured with the
//! debug binary (benches/pipeline measured 0.3 MiB with the release one); a relay five times
//! its size fails.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::{send_records, wait_until, RelayProc, TempDir};
use ringrelay::config::Config;

const RECORDS: u64 = 200_000;
const LEN: usize = 500;

#[test]
fn rss_anon_stays_within_the_memory_formula_after_200k_records() {
    let dir = TempDir::new("rss");
    // The SIEM: counts the lines it gets.
    let siem = TcpListener::bind("127.0.0.1:0").expect("bind the SIEM");
    let siem_addr = siem.local_addr().expect("SIEM address");
    let lines = Arc::new(AtomicU64::new(0));
    let counted = lines.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok((mut s, _)) = siem.accept() {
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let nl = buf[..n].iter().filter(|&&b| b == b'\n').count();
                counted.fetch_add(nl as u64, Ordering::Relaxed);
            }
        }
    });
    let config = dir.path().join("ringrelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"[relay]
data_dir = "{data}"
lock_file = "{data}/ringrelay.lock"
admin_listen = "off"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "127.0.0.1:0", max_connections = 2 }}
buffer = {{ size = "256MiB" }}
max_record_bytes = "4KiB"

[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem_addr}"
"#,
            data = dir.path().join("data").display()
        ),
    )
    .expect("write config");
    let budget = ringrelay::memory::budget(&Config::load(&config).expect("a valid config"));
    let bound = budget.total() + ringrelay::memory::PROCESS_ALLOWANCE;

    let relay = RelayProc::start(&config, 1);
    send_records(relay.addr("f"), 0..RECORDS, LEN);
    let ok = wait_until(Duration::from_secs(60), || {
        lines.load(Ordering::Relaxed) >= RECORDS
    });
    assert!(
        ok,
        "{} of {RECORDS} records arrived; log:\n{}",
        lines.load(Ordering::Relaxed),
        relay.log_text()
    );
    let rss = relay.rss_anon_kib() * 1024;
    eprintln!(
        "RssAnon {rss} bytes after {RECORDS} records; formula {} + allowance {} = {bound}",
        budget.total(),
        ringrelay::memory::PROCESS_ALLOWANCE
    );
    assert!(rss > 0, "RssAnon not readable");
    assert!(
        rss <= bound,
        "RssAnon {rss} bytes after {RECORDS} records, over the formula's {} bytes + {} for the \
         stack, writable data and the allocator ({bound}): the relay holds memory the formula \
         (src/memory.rs) does not count, or touches more of a buffer than it did",
        budget.total(),
        ringrelay::memory::PROCESS_ALLOWANCE
    );
}
