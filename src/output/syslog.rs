//! Syslog headers for outputs whose receiver needs one, sans-I/O: a record's receive time and
//! ring sequence number in, header bytes out, written into a caller's buffer (no allocation per
//! record).
//!
//! - RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - - SD MSG`, the timestamp UTC with
//!   microseconds; with `syslog_sd` the structured data is
//!   `[ringrelay@32473 instance="NAME" seq="N"]` (32473 is the enterprise number RFC 5612
//!   reserves for examples and documentation), so a SIEM can remove replay duplicates exactly
//!   by (instance, seq).
//! - RFC 3164: `<PRI>Mmm dd hh:mm:ss HOSTNAME APP-NAME: MSG`, the time in UTC (3164 has no zone).

use std::io::Write as _;

pub use crate::config::{Format, SyslogConfig, APP_NAME_MAX, FACILITIES, SEVERITIES};

/// The longest header [`Header::write`] produces.
pub const HEADER_MAX: usize = 768;
const HOSTNAME_MAX: usize = 255;
const INSTANCE_MAX: usize = 128;

/// A printable-ASCII token without spaces (RFC 5424 PRINTUSASCII), cut to `max`.
fn token(s: &str, max: usize) -> String {
    let t: String = s
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if t.is_empty() {
        "-".into()
    } else {
        t
    }
}

/// The machine's host name (`-` if it cannot be read).
pub fn machine_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "-".into())
}

/// A prepared header: everything but the time and the sequence number is fixed per output.
#[derive(Clone, Debug)]
pub struct Header {
    format: Format,
    pri: u8,
    hostname: String,
    app_name: String,
    /// `[ringrelay@32473 instance="NAME" seq="`, escaped.
    sd_prefix: Option<String>,
}

impl Header {
    /// Prepares the header of an output of relay `instance`.
    pub fn new(cfg: &SyslogConfig, instance: &str) -> Header {
        let hostname = cfg.hostname.clone().unwrap_or_else(machine_hostname);
        let sd_prefix = (cfg.sd && cfg.format == Format::Rfc5424).then(|| {
            let mut v = String::new();
            for c in instance.chars().take(INSTANCE_MAX) {
                // RFC 5424 §6.3.3: '"', '\' and ']' are escaped in PARAM-VALUE.
                if matches!(c, '"' | '\\' | ']') {
                    v.push('\\');
                }
                v.push(c);
            }
            format!("[ringrelay@32473 instance=\"{v}\" seq=\"")
        });
        Header {
            format: cfg.format,
            pri: cfg.facility * 8 + cfg.severity,
            hostname: token(&hostname, HOSTNAME_MAX),
            app_name: token(&cfg.app_name, APP_NAME_MAX),
            sd_prefix,
        }
    }

    /// Whether records get a header at all.
    pub fn enabled(&self) -> bool {
        self.format != Format::None
    }

    /// Writes the header of the record received at `ts_ns` with sequence number `seq` into
    /// `out`; returns its length (0 for [`Format::None`]).
    pub fn write(&self, ts_ns: u64, seq: u64, out: &mut [u8; HEADER_MAX]) -> usize {
        let total = out.len();
        let mut w = &mut out[..];
        // The calendar fields only for a format that has them: this runs for every record sent.
        let civil = || crate::clock::civil(ts_ns / 1_000_000_000);
        let res = match self.format {
            Format::None => return 0,
            Format::Rfc5424 => {
                let (year, month, day, h, m, s) = civil();
                let us = (ts_ns / 1000) % 1_000_000;
                let r = write!(
                    w,
                    "<{}>1 {year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{us:06}Z {} {} - - ",
                    self.pri, self.hostname, self.app_name
                );
                match (&self.sd_prefix, r) {
                    (Some(p), Ok(())) => write!(w, "{p}{seq}\"] "),
                    (None, Ok(())) => w.write_all(b"- "),
                    (_, e) => e,
                }
            }
            Format::Rfc3164 => {
                let (_, month, day, h, m, s) = civil();
                const MONTHS: [&str; 12] = [
                    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                    "Dec",
                ];
                let mon = MONTHS[(month as usize + 11) % 12];
                write!(
                    w,
                    "<{}>{mon} {day:>2} {h:02}:{m:02}:{s:02} {} {}: ",
                    self.pri, self.hostname, self.app_name
                )
            }
        };
        debug_assert!(res.is_ok(), "HEADER_MAX is too small");
        total - w.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-24T09:13:00.123456789Z
    const TS: u64 = 1_795_511_580_123_456_789;

    fn header(format: Format, sd: bool) -> Header {
        let cfg = SyslogConfig {
            format,
            app_name: "ringrelay".into(),
            hostname: Some("relay-1".into()),
            facility: 16,
            severity: 6,
            sd,
        };
        Header::new(&cfg, "nss \"a\"")
    }

    fn render(h: &Header, ts: u64, seq: u64) -> String {
        let mut buf = [0u8; HEADER_MAX];
        let n = h.write(ts, seq, &mut buf);
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn rfc5424_header_bytes() {
        assert_eq!(
            render(&header(Format::Rfc5424, false), TS, 7),
            "<134>1 2026-11-24T09:13:00.123456Z relay-1 ringrelay - - - "
        );
    }

    #[test]
    fn rfc5424_structured_data_carries_instance_and_seq_escaped() {
        assert_eq!(
            render(&header(Format::Rfc5424, true), TS, 123),
            "<134>1 2026-11-24T09:13:00.123456Z relay-1 ringrelay - - \
             [ringrelay@32473 instance=\"nss \\\"a\\\"\" seq=\"123\"] "
        );
    }

    #[test]
    fn rfc3164_header_bytes_pad_the_day() {
        assert_eq!(
            render(&header(Format::Rfc3164, true), TS, 1),
            "<134>Nov 24 09:13:00 relay-1 ringrelay: "
        );
        // 2026-03-05T00:00:09Z: single-digit day padded with a space.
        let ts = crate::clock::from_civil(2026, 3, 5, 0, 0, 9).unwrap() * 1_000_000_000;
        assert_eq!(
            render(&header(Format::Rfc3164, false), ts, 1),
            "<134>Mar  5 00:00:09 relay-1 ringrelay: "
        );
    }

    #[test]
    fn none_writes_nothing_and_long_fields_fit() {
        assert_eq!(render(&header(Format::None, true), TS, 1), "");
        let cfg = SyslogConfig {
            format: Format::Rfc5424,
            app_name: "a".repeat(500),
            hostname: Some("h o s t".repeat(100)),
            facility: 23,
            severity: 7,
            sd: true,
        };
        let h = Header::new(&cfg, &"]".repeat(1000));
        let s = render(&h, u64::MAX, u64::MAX);
        assert!(s.starts_with("<191>1 "), "{s}");
        assert!(s.len() <= HEADER_MAX);
        assert!(s.ends_with(&format!("seq=\"{}\"] ", u64::MAX)), "{s}");
    }
}
