//! The systemd notification protocol (`sd_notify(3)`), without a daemon library: one datagram per
//! message to the `AF_UNIX` socket named by `$NOTIFY_SOCKET` (a path, or an abstract name
//! written `@name`).
//!
//! What the relay sends: `READY=1` once its listeners are bound (active) or it has entered
//! standby; `STATUS=role=… feeds=…` at every role change; `WATCHDOG=1` from the event loop's
//! timer at half of `$WATCHDOG_USEC`, so a loop that is stuck stops pinging and systemd restarts
//! it; `STOPPING=1` when it starts to shut down.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd, or `Type=simple`) every call is a no-op.
//! A failed send is logged once per burst and otherwise ignored: notifications must never stop
//! the relay.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use crate::log::{Level, Limiter};

/// A connection-less sender to systemd's notification socket.
pub struct Notifier {
    fd: OwnedFd,
    addr: UnixAddr,
    /// What `$NOTIFY_SOCKET` said, for log lines.
    name: String,
    /// Half of `$WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog_every: Option<Duration>,
    log: Limiter,
}

/// Where `$NOTIFY_SOCKET` points: a file system path or an abstract name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A socket file.
    Path(String),
    /// An abstract socket (`@name` in the variable), without the leading `@`.
    Abstract(Vec<u8>),
}

/// Parses `$NOTIFY_SOCKET`: `/path`, `@abstract`; `None` for anything else (unset, empty, or a
/// transport we do not speak such as `vsock:`).
pub fn parse_target(v: &str) -> Option<Target> {
    if let Some(name) = v.strip_prefix('@') {
        return (!name.is_empty()).then(|| Target::Abstract(name.as_bytes().to_vec()));
    }
    v.starts_with('/').then(|| Target::Path(v.to_string()))
}

/// The ping period for `$WATCHDOG_USEC` (half of it), when `$WATCHDOG_PID` is unset or names
/// this process.
pub fn watchdog_period(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

impl Notifier {
    /// From the environment; `None` when there is nowhere to send to.
    pub fn from_env() -> Option<Notifier> {
        let var = std::env::var("NOTIFY_SOCKET").ok()?;
        let Some(target) = parse_target(&var) else {
            crate::log!(
                Level::Warn,
                "notify_socket_unsupported",
                notify_socket = var,
                reason =
                    "only a path or an @abstract name is supported; systemd notifications are off"
            );
            return None;
        };
        let watchdog_every = watchdog_period(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        match Self::open(&target, watchdog_every) {
            Ok(mut n) => {
                n.name = var;
                Some(n)
            }
            Err(e) => {
                crate::log!(
                    Level::Warn,
                    "notify_socket_failed",
                    notify_socket = var,
                    error = e
                );
                None
            }
        }
    }

    /// A sender to `target`.
    pub fn open(target: &Target, watchdog_every: Option<Duration>) -> Result<Notifier, String> {
        let addr = match target {
            Target::Path(p) => UnixAddr::new(p.as_str()),
            Target::Abstract(name) => UnixAddr::new_abstract(name),
        }
        .map_err(|e| format!("address: {e}"))?;
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        Ok(Notifier {
            fd,
            addr,
            name: String::new(),
            watchdog_every,
            log: Limiter::new(3, Duration::from_secs(60)),
        })
    }

    /// Half of `$WATCHDOG_USEC`, if systemd watches this process.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// Sends one message (`KEY=value` lines).
    pub fn send(&mut self, msg: &str, now: Instant) {
        let r = socket::sendto(
            self.fd.as_raw_fd(),
            msg.as_bytes(),
            &self.addr,
            MsgFlags::MSG_NOSIGNAL,
        );
        if let Err(e) = r {
            if let Some(suppressed) = self.log.allow(now) {
                crate::log!(
                    Level::Warn,
                    "notify_failed",
                    notify_socket = self.name,
                    message = msg.lines().next().unwrap_or(""),
                    error = e,
                    suppressed = suppressed
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_paths_and_abstract_names() {
        assert_eq!(
            parse_target("/run/systemd/notify"),
            Some(Target::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            parse_target("@/org/systemd/x"),
            Some(Target::Abstract(b"/org/systemd/x".to_vec()))
        );
        assert_eq!(parse_target("@"), None);
        assert_eq!(parse_target(""), None);
        assert_eq!(parse_target("vsock:2:1234"), None);
    }

    #[test]
    fn watchdog_pings_at_half_the_period_and_only_for_this_pid() {
        let half = Some(Duration::from_secs(5));
        assert_eq!(watchdog_period(Some("10000000"), None, 7), half);
        assert_eq!(watchdog_period(Some("10000000"), Some("7"), 7), half);
        assert_eq!(watchdog_period(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_period(Some("0"), None, 7), None);
        assert_eq!(watchdog_period(Some("x"), None, 7), None);
        assert_eq!(watchdog_period(None, None, 7), None);
    }

    #[test]
    fn a_datagram_reaches_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("ringrelay-notify-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier::open(&Target::Path(path.display().to_string()), None).unwrap();
        n.send("READY=1\nSTATUS=role=active feeds=1", Instant::now());
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=role=active feeds=1");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
