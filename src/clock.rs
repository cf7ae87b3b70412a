//! The only place that reads clocks. Everything else takes the time as a parameter.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock time in ns since the Unix epoch (receive times, checkpoints). A clock before 1970
/// reads as 0.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Monotonic time, for deadlines and rates.
pub fn now() -> Instant {
    Instant::now()
}
