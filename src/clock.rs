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

/// Calendar fields of `secs` since the Unix epoch, UTC: (year, month, day, hour, minute, second).
pub fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for every u64 second count here.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month as u32,
        day as u32,
        (rem / 3600) as u32,
        ((rem / 60) % 60) as u32,
        (rem % 60) as u32,
    )
}

/// Seconds since the Unix epoch of a UTC calendar time (the inverse of [`civil`]); `None`
/// before 1970.
pub fn from_civil(year: i64, month: u32, day: u32, h: u32, m: u32, s: u32) -> Option<u64> {
    let y = year - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s);
    u64::try_from(secs).ok()
}

/// `ns` since the Unix epoch as RFC 3339 UTC with milliseconds: `2026-11-24T09:13:00.123Z`.
pub fn rfc3339(ns: u64) -> String {
    let (year, month, day, h, m, s) = civil(ns / 1_000_000_000);
    let ms = (ns / 1_000_000) % 1000;
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_700_000_000_123_000_000),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(
            super::rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
        for secs in [0, 951_782_400, 1_700_000_000, 4_102_444_799] {
            let (y, mo, d, h, mi, s) = super::civil(secs);
            assert_eq!(super::from_civil(y, mo, d, h, mi, s), Some(secs));
        }
    }
}
