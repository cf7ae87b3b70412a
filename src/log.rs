//! The relay's own log: one line per event, `key=value`, to stderr (journald adds the time).
//!
//! ```text
//! level=warn event=output_down feed=zia-web output=siem peer=10.0.0.5:514 error="connection refused" retry_ms=800
//! ```
//! Values with spaces, quotes or `=` are quoted. Per-connection noise goes through a
//! [`Limiter`], which lets a burst through and then says how many lines it suppressed.

use std::fmt::{self, Display, Write as _};
use std::time::{Duration, Instant};

/// Severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Something an operator should act on.
    Error,
    /// Something degraded.
    Warn,
    /// Normal state changes.
    Info,
}

impl Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
        })
    }
}

/// Formats one line (without the newline).
pub fn line(level: Level, event: &str, kv: &[(&str, &dyn Display)]) -> String {
    let mut s = format!("level={level} event={event}");
    for (k, v) in kv {
        let v = v.to_string();
        let quote = v.is_empty()
            || v.contains(|c: char| c == ' ' || c == '"' || c == '=' || c.is_control());
        if quote {
            let _ = write!(
                s,
                " {k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            );
        } else {
            let _ = write!(s, " {k}={v}");
        }
    }
    s
}

/// Writes one line to stderr.
pub fn emit(level: Level, event: &str, kv: &[(&str, &dyn Display)]) {
    eprintln!("{}", line(level, event, kv));
}

/// `log!(Level::Info, "event", key = value, ...)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $event:expr $(, $k:ident = $v:expr)* $(,)?) => {
        $crate::log::emit($level, $event, &[$((stringify!($k), &$v as &dyn ::std::fmt::Display)),*])
    };
}

/// Lets `burst` lines through per `window`, then counts what it suppresses.
#[derive(Debug)]
pub struct Limiter {
    window: Duration,
    burst: u32,
    start: Option<Instant>,
    passed: u32,
    suppressed: u64,
}

impl Limiter {
    /// A limiter of `burst` lines per `window`.
    pub const fn new(burst: u32, window: Duration) -> Limiter {
        Limiter {
            window,
            burst,
            start: None,
            passed: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be written now; `Some(n)` also reports `n` lines suppressed since the
    /// last one that passed (add it to the line as `suppressed=n`).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .start
            .is_none_or(|s| now.duration_since(s) >= self.window)
        {
            self.start = Some(now);
            self.passed = 0;
        }
        if self.passed < self.burst {
            self.passed += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_with_spaces_are_quoted() {
        let l = line(
            Level::Warn,
            "x",
            &[("a", &1), ("b", &"two words"), ("c", &"q\"")],
        );
        assert_eq!(l, r#"level=warn event=x a=1 b="two words" c="q\"""#);
    }

    #[test]
    fn limiter_passes_a_burst_then_counts() {
        let mut l = Limiter::new(2, Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t), None);
        assert_eq!(l.allow(t), None);
        assert_eq!(l.allow(t + Duration::from_secs(11)), Some(2));
    }
}
