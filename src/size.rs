//! `ringrelay size`: ring and VM sizing from an event rate, as the vendors' sizing guides do,
//! or for a configuration (`--config`): its rings and the relay's own memory, line by line
//! ([`crate::memory`]).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::Config;
use crate::memory::{self, Budget, Bytes};

use crate::ring::format::{record_stride, ring_bytes, DATA_OFFSET};
use crate::ring::human_bytes;

/// The inputs of a sizing.
#[derive(Clone, Copy, Debug)]
pub struct Sizing {
    /// Events per second per feed.
    pub eps: u64,
    /// Average event size in bytes.
    pub bytes: u64,
    /// How long the ring must cover.
    pub retention: Duration,
    /// Feeds of this shape.
    pub feeds: u64,
}

/// The relay's CPU per record and per byte, one TCP output, `sync = "interval"`, by how the
/// input's records reach the ring: from `cargo bench --bench pipeline` on the 2-core
/// development VM (README, Performance), rounded up.
#[derive(Clone, Copy, Debug)]
pub struct CpuCost {
    /// Seconds per record.
    pub per_record: f64,
    /// Seconds per byte.
    pub per_byte: f64,
}

/// Newline-framed TCP or TLS input (NSS, LSS): a read's records go into one lines entry and
/// out as one frame (256 B and 1 KiB records cost 0.73-0.76 and 0.76-0.78 CPU s/GiB: the
/// cost is the bytes').
pub const CPU_LINES: CpuCost = CpuCost {
    per_record: 0.02e-6,
    per_byte: 0.8e-9,
};

/// A plain entry per record: octet counting, the HTTP input (2.3-2.45 and 1.29-1.43 CPU s/GiB
/// for 256 B and 1 KiB records, measured before lines entries existed, when every record
/// went this way).
pub const CPU_PLAIN: CpuCost = CpuCost {
    per_record: 0.35e-6,
    per_byte: 1.0e-9,
};

/// The share of one core the relay's event loop needs for `feeds` feeds of `eps` events/s of
/// `bytes` bytes each, at `cost`.
pub fn cpu_share(eps: u64, bytes: u64, feeds: u64, cost: CpuCost) -> f64 {
    let records = eps.saturating_mul(feeds) as f64;
    records * (cost.per_record + bytes as f64 * cost.per_byte)
}

/// Appliance classes from the vendors' deployment guides (FIELD.md §1.1, §4.5).
const CLASSES: [(&str, u64, &str); 2] = [
    (
        "NSS-class VM (2 cores, 8-64 GB RAM, 500 GB disk)",
        500_000_000_000,
        "NSS",
    ),
    (
        "App-Connector-class VM (4 vCPU, 4-8 GB RAM, 64 GB disk)",
        64_000_000_000,
        "App Connector",
    ),
];

/// Disk the OS, the image and logs need beside the rings.
const SYSTEM_DISK: u64 = 8_000_000_000;

/// Prints the sizing; exit 0 when it fits at least one class, 1 otherwise.
pub fn run(s: Sizing) -> ExitCode {
    let per_record = record_stride(s.bytes);
    let ring = ring_bytes(s.eps, s.bytes, s.retention);
    let file = ring + DATA_OFFSET;
    let total = file.saturating_mul(s.feeds);
    // File-system slack and room to grow one feed without a new disk.
    let disk = total + total / 10 + SYSTEM_DISK;
    let write_rate = s.eps * per_record;
    let hours = s.retention.as_secs_f64() / 3600.0;
    println!(
        "sizing for {} feed(s) of {} events/s x {} bytes, retention {hours:.2} h",
        s.feeds, s.eps, s.bytes
    );
    println!(
        "  per record on disk   {per_record} bytes at most ({} payload + {} header and padding; a newline-framed read's records share one header: about {} bytes each)",
        s.bytes,
        per_record - s.bytes,
        s.bytes + 1
    );
    println!(
        "  ring per feed        {} ({ring} bytes); buffer = {{ size = \"{ring}\" }}",
        human_bytes_approx(ring)
    );
    println!(
        "  all rings            {} ({total} bytes)",
        human_bytes_approx(total)
    );
    println!(
        "  disk to provision    {} (rings + 10% + 8 GB for the system)",
        human_bytes_approx(disk)
    );
    println!(
        "  sustained disk write {:.1} MB/s per feed, {:.1} MB/s in all",
        write_rate as f64 / 1e6,
        (write_rate * s.feeds) as f64 / 1e6
    );
    match default_budget(s.feeds) {
        Some(b) => println!(
            "  relay memory         {} of heap at most with the defaults (256 connections a feed, max_record_bytes 1 MiB, one TCP output; `ringrelay size --config FILE` for yours), resident only where written; rings need not fit in RAM",
            Bytes(b.total())
        ),
        None => println!("  relay memory         `ringrelay size --config FILE` prints it for a configuration; rings need not fit in RAM"),
    }
    let lines = cpu_share(s.eps, s.bytes, s.feeds, CPU_LINES);
    let plain = cpu_share(s.eps, s.bytes, s.feeds, CPU_PLAIN);
    let pct = |share: f64| (share * 100.0).max(1.0);
    println!(
        "  relay CPU            about {:.0}% of one core with newline framing (NSS, LSS), {:.0}% with octet counting or the HTTP input (one TCP output; more with TLS or more outputs){}",
        pct(lines),
        pct(plain),
        match (lines > 0.7, plain > 0.7) {
            (true, _) => ": the event loop is one thread, so above one core it falls behind; split the feeds over more instances",
            (false, true) => ": with octet counting or the HTTP input the event loop (one thread) would fall behind; split those feeds over more instances",
            (false, false) => "",
        }
    );
    let mut fits_any = false;
    for (name, disk_bytes, short) in CLASSES {
        let fits = disk <= disk_bytes;
        fits_any |= fits;
        println!(
            "  {name}: {}",
            if fits {
                format!(
                    "fits ({:.0}% of its disk)",
                    disk as f64 * 100.0 / disk_bytes as f64
                )
            } else {
                format!(
                    "does NOT fit: needs {} of disk, the {short} disk is {}",
                    human_bytes_approx(disk),
                    human_bytes_approx(disk_bytes)
                )
            }
        );
    }
    if fits_any {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The budget of `feeds` feeds with every default: a TCP input and one TCP output each.
fn default_budget(feeds: u64) -> Option<Budget> {
    let mut text = String::from("[relay]\ndata_dir = \"/var/lib/ringrelay\"\n");
    for i in 0..feeds {
        text.push_str(&format!(
            "[[feed]]\nname = \"f{i}\"\ninput = {{ kind = \"tcp\", listen = \"127.0.0.1:{}\" }}\nbuffer = {{ size = \"16MiB\" }}\n[[feed.output]]\nname = \"o\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n",
            10_000 + i
        ));
    }
    let cfg = Config::parse(&text, Path::new("ringrelay.toml")).ok()?;
    Some(memory::budget(&cfg))
}

/// `ringrelay size --config FILE`: each feed's ring and disk, and the relay's own memory by
/// line. Exit 0, or 2 for a configuration with errors.
pub fn run_config(path: &Path) -> ExitCode {
    let Some(cfg) = Config::load_or_report(path) else {
        return ExitCode::from(2);
    };
    println!(
        "sizing for {} ({} feed(s))",
        path.display(),
        cfg.feeds.len()
    );
    let mut files = 0u64;
    for f in &cfg.feeds {
        let file = f.capacity + DATA_OFFSET;
        files += file;
        println!(
            "  feed {:<24} ring {} ({} bytes), file {}",
            format!("{:?}", f.name),
            Bytes(f.capacity),
            f.capacity,
            Bytes(file)
        );
    }
    println!(
        "  all ring files       {} ({files} bytes); disk to provision {} (rings + 10% + 8 GB for the system)",
        Bytes(files),
        Bytes(files + files / 10 + SYSTEM_DISK)
    );
    print_budget(&memory::budget(&cfg));
    ExitCode::SUCCESS
}

/// The relay's own memory, line by line ([`crate::memory`]'s formula).
pub fn print_budget(b: &Budget) {
    println!("relay memory: heap allocated at most (resident only where written)");
    let row = |indent: usize, what: &str, bytes: u64| {
        println!(
            "  {:indent$}{what:<w$} {:>10}",
            "",
            Bytes(bytes).to_string(),
            w = 44 - indent
        );
    };
    row(0, "relay", b.relay.iter().map(|l| l.bytes).sum());
    for l in &b.relay {
        row(2, l.what, l.bytes);
    }
    for f in &b.feeds {
        row(0, &format!("feed {:?}", f.name), f.total());
        for l in &f.feed {
            row(2, l.what, l.bytes);
        }
        row(
            2,
            &format!("per connection (x {} max_connections)", f.max_connections),
            f.per_connection(),
        );
        for l in &f.connection {
            row(4, l.what, l.bytes);
        }
        row(
            2,
            &format!("all {} connections", f.max_connections),
            f.max_connections * f.per_connection(),
        );
        for o in &f.outputs {
            row(2, &format!("output {:?}", o.name), o.total());
            for l in &o.lines {
                row(4, l.what, l.bytes);
            }
        }
    }
    println!(
        "  {:<44} {:>10} ({} bytes)",
        "total",
        Bytes(b.total()).to_string(),
        b.total()
    );
    println!(
        "  {:<44} {:>10} (the total + {} for the stack, writable data and the allocator)",
        "process RssAnon at most",
        Bytes(b.total() + memory::PROCESS_ALLOWANCE).to_string(),
        Bytes(memory::PROCESS_ALLOWANCE)
    );
}

fn human_bytes_approx(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        human_bytes(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_share_adds_a_cost_per_record_and_per_byte() {
        // 10,000 events/s of 1,500 bytes: 3.5 ms + 15 ms of CPU a second in plain entries,
        // 0.2 ms + 12 ms in lines entries.
        let share = cpu_share(10_000, 1500, 1, CPU_PLAIN);
        assert!((share - 0.0185).abs() < 1e-9, "{share}");
        let lines = cpu_share(10_000, 1500, 1, CPU_LINES);
        assert!((lines - 0.0122).abs() < 1e-9, "{lines}");
        // Twice the feeds, twice the CPU; nothing for an idle feed.
        assert!((cpu_share(10_000, 1500, 2, CPU_PLAIN) - 2.0 * share).abs() < 1e-9);
        assert_eq!(cpu_share(0, 1500, 4, CPU_LINES), 0.0);
    }

    #[test]
    fn one_hour_of_1000_eps_at_1500_bytes_is_the_field_figure_plus_headers() {
        // FIELD.md: "one hour at 1,000 events/s of 1.5 KB is 5.4 GB" of payload.
        let b = ring_bytes(1000, 1500, Duration::from_secs(3600));
        // 1500 + 48-byte header = 1548, padded to 8 = 1552 per record; the
        // total is rounded up to whole 4 KiB pages.
        let records = 1000 * 3600 * 1552u64;
        assert_eq!(b, records.div_ceil(4096) * 4096);
        assert!(b - records < 4096);
        assert!(b > 5_400_000_000 && b < 5_700_000_000);
    }
}
