//! The relay: one thread, one `mio::Poll`, every listener, connection, output, timer and signal.
//!
//! ## The loop
//! Each turn: wait for events (or the nearest deadline), handle them, read connections that still
//! have data, run timers that expired, then let outputs write what was appended. mio is
//! edge-triggered, so a connection or output that stopped before `WouldBlock` because its turn's
//! budget ran out is kept on a list and served again next turn with a zero timeout: one busy
//! connection cannot starve the others, and none is forgotten.
//!
//! ## Roles
//! At start the relay opens its lock file ([`lock`]) and tries to lock it. The holder is
//! **active**: it opens (recovers) the rings, binds the listeners and delivers. Otherwise it is
//! **standby**: no data listener, no ring opened, only the admin endpoint; it retries the lock
//! every `standby_poll` from the loop's timers and, once it gets it, becomes active through the
//! same [`Relay::activate`] that a start uses (a promotion is a restart for the outputs: they
//! resume from their persisted cursors with the replay window). An active re-reads the lock
//! file's epoch and its rings' epochs every [`FENCE_CHECK`]; a higher one means another instance
//! became active behind its back, and it stops at once ([`Outcome::Fenced`], exit code 3)
//! without writing to its rings again.
//!
//! ```text
//! Standby --(lock taken)--> Active --(higher epoch seen)--> Fenced
//! ```
//!
//! ## Tokens
//! `SIGNALS` = 0; listeners `1 + feed`; the admin listener 999, admin connections 5000 + slot;
//! outputs `OUTPUT_BASE + feed * 16 + output`; connections
//! `CONN_BASE + slot`. Events for tokens that no longer exist are ignored (a closed connection
//! can still have a queued event).

mod admin;
pub mod alert;
pub mod http;
mod http_in;
mod input;
pub mod lock;
pub mod notify;
pub mod output;
pub mod reload;
pub mod sync_helper;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::clock;
use crate::config::{Config, FeedConfig, InputKind, SyncPolicy};
use crate::framing::FramerConfig;
use crate::log::{Level, Limiter};
use crate::ring::{AppendError, BackgroundCheckpoint, OpenError, Ring, RingOptions};
use alert::{Alert, AlertKind, AlertStats, Value};
use input::Conn;
use lock::{LockFile, LockRecord};
use notify::Notifier;
use output::{Output, Pass};

const SIGNALS: Token = Token(0);
/// The sync helper's socket ([`sync_helper`]).
const SYNC_HELPER: Token = Token(998);
const LISTENER_BASE: usize = 1;
const OUTPUT_BASE: usize = 1_000;
const CONN_BASE: usize = 10_000;
/// Listen backlog of an input listener.
const LISTEN_BACKLOG: i32 = 4096;
/// Bytes read per `read` call, on top of room for one partial record.
const READ_CHUNK: usize = 64 << 10;
/// Bytes read per `read` call of a newline-framed TCP or TLS connection, straight into the ring
/// (at most a quarter of the ring's largest lines entry, [`Ring::lines_max`]): a lines entry
/// each, so the larger, the fewer entries and system calls.
const LINES_READ: usize = 256 << 10;
/// Reads one connection may do per turn.
const READS_PER_TURN: usize = 4;
/// How long a shutdown may spend reading what is already in socket buffers.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long every input must have been silent for the shutdown drain to end early.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// How often a feed whose inputs wait for its ring's background sync asks whether it finished.
const SYNC_WAIT_POLL: Duration = Duration::from_millis(5);
/// How often an active re-reads the lock file's and its rings' fencing epochs.
pub const FENCE_CHECK: Duration = Duration::from_millis(500);
/// Exit code of an active that found a higher epoch than its own (it was fenced off).
pub const EXIT_FENCED: u8 = 3;

/// The instance's role in an active-standby pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the lock: no listener bound, no ring opened.
    Standby {
        /// When to try the lock again.
        next_try: Instant,
    },
    /// Holding the lock: rings open, listeners bound, delivering.
    Active {
        /// The fencing epoch this instance wrote into the lock file and its rings.
        epoch: u64,
    },
    /// Another instance took over (a higher epoch was seen): delivering stopped for good.
    Fenced {
        /// This instance's epoch.
        epoch: u64,
    },
}

impl Role {
    /// `standby`, `active` or `fenced`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Standby { .. } => "standby",
            Role::Active { .. } => "active",
            Role::Fenced { .. } => "fenced",
        }
    }
}

/// Why [`Relay::run_until`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// SIGTERM or SIGINT: drained, checkpointed.
    Stopped,
    /// A higher fencing epoch was seen: stopped without touching the rings (exit 3).
    Fenced,
    /// The `until` deadline passed.
    TimeUp,
}

/// Counters of one feed.
#[derive(Clone, Copy, Debug, Default)]
pub struct FeedStats {
    /// Records accepted into the ring.
    pub records: u64,
    /// Payload bytes accepted.
    pub bytes: u64,
    /// Records truncated at `max_record_bytes`.
    pub truncated: u64,
    /// Records dropped for being over `max_record_bytes`.
    pub dropped_oversize: u64,
    /// Octet frames with an invalid header.
    pub bad_frames: u64,
    /// `auto` connections that started with `<digits> ` but were framed by newline (not a
    /// plausible octet frame).
    pub framing_fallbacks: u64,
    /// Partial frames lost when the sender closed.
    pub incomplete_at_eof: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections closed at once: their source was at `max_connections_per_source` with
    /// nothing to evict.
    pub refused: u64,
    /// Silent connections closed to make room for a new one, at `max_connections` or at
    /// `max_connections_per_source`.
    pub evicted: u64,
    /// Times accepting stopped at `max_connections` with nothing to evict.
    pub accept_paused: u64,
    /// Milliseconds spent so, finished episodes.
    pub accept_paused_ms: u64,
    /// HTTP connections closed for a request head not complete within `header_timeout`.
    pub header_timeouts: u64,
    /// Connections closed for idling.
    pub idle_closed: u64,
    /// Times the ring was full in `block` mode.
    pub blocked: u64,
    /// HTTP responses, by status (`http_in::STATUSES`).
    pub http_responses: [u64; http_in::STATUSES.len()],
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS handshakes failed, by [`crate::tls::FAILURE_REASONS`].
    pub tls_failures: [u64; crate::tls::FAILURE_REASONS.len()],
}

/// One feed: its ring, listener, outputs.
pub struct Feed {
    /// Its configuration.
    pub cfg: FeedConfig,
    /// Its ring.
    pub ring: Ring,
    listener: Option<TcpListener>,
    /// TLS input: the configuration new handshakes use (replaced by a reload).
    tls: Option<Arc<rustls::ServerConfig>>,
    tls_log: Limiter,
    /// Connection log lines, limited per kind for this feed alone.
    logs: ConnLogs,
    /// The address the listener is bound to.
    pub local_addr: SocketAddr,
    /// Its outputs.
    pub outputs: Vec<Output>,
    /// Counters.
    pub stats: FeedStats,
    framer: FramerConfig,
    conns: usize,
    /// Since when accepting is stopped: at `max_connections`, nothing to evict. New
    /// connections wait in the listen backlog.
    accept_paused: Option<Instant>,
    /// Try accepting again this turn: a connection closed while accepting was stopped.
    accept_due: bool,
    /// Try accepting again then: a connection becomes evictable.
    accept_retry: Option<Instant>,
    /// `connections_at_limit` and `connection_evicted` lines.
    limit_log: Limiter,
    /// Records were appended since the outputs last wrote.
    dirty: bool,
    /// Connections are paused because the ring is full (`block`).
    paused: bool,
    /// Inputs are paused until the ring's background sync finishes: it had not when the next
    /// was due, so the disk is slower than the input (`buffer-spec.md` §10).
    sync_wait: bool,
    /// The sync helper's ticket for this ring's sync in flight: only its report completes it
    /// (not that of an earlier ring at the same path, removed by a reload).
    helper_ticket: Option<u64>,
    next_sync: Instant,
    refuse_log: Limiter,
    /// `ring_sync_behind` lines: a disk slower than the sync period.
    sync_log: Limiter,
    rate: InputRate,
    /// Coverage is below `retention` (logged at the transition).
    coverage_low: bool,
}

/// A feed whose ring could not be opened (truncated, damaged, of another feed, of another
/// size): it binds no listener and runs no output, so its senders fail over or retry and
/// nothing is accepted that could not be kept; every other feed runs. Logged once with the fix,
/// alerted once ([`AlertKind::FeedFailed`]), shown by `/health` and `/metrics` until a restart
/// finds the ring openable.
#[derive(Clone, Debug)]
pub struct FailedFeed {
    /// The feed's name.
    pub name: String,
    /// Its ring file.
    pub path: PathBuf,
    /// Why the ring could not be opened.
    pub error: String,
}

/// A feed's limits on per-connection log lines, one per kind: one feed's churn (or a flood of
/// one kind) never hides another feed's lines, or a mutual-TLS client's `tls_established`.
struct ConnLogs {
    open: Limiter,
    closed: Limiter,
    tls: Limiter,
    framing: Limiter,
}

impl ConnLogs {
    fn new() -> ConnLogs {
        let per_minute = |n| Limiter::new(n, Duration::from_secs(60));
        ConnLogs {
            open: per_minute(20),
            closed: per_minute(20),
            tls: per_minute(20),
            framing: per_minute(10),
        }
    }
}

/// The feed's input rate in ring bytes per second, smoothed over about half a minute.
#[derive(Clone, Copy, Debug)]
struct InputRate {
    last_bytes: u64,
    last_at: Instant,
    bytes_per_s: Option<f64>,
}

const RATE_SMOOTHING_SECS: f64 = 30.0;

impl Feed {
    /// A `sync = "interval"` checkpoint with the sync in the kernel's background
    /// ([`Ring::checkpoint_in_background`]), or by the sync helper process when there is one
    /// ([`sync_helper`]); in the loop where the kernel refuses that. A sync still running from
    /// the last period pauses the inputs until it finishes.
    fn checkpoint_in_background(
        &mut self,
        wall: u64,
        now: Instant,
        helper: Option<&mut sync_helper::SyncHelper>,
    ) -> std::io::Result<()> {
        self.ring.set_sync_helper(helper.is_some())?;
        match self.ring.checkpoint_in_background(wall)? {
            BackgroundCheckpoint::Started => Ok(()),
            BackgroundCheckpoint::ForHelper => {
                if let Some(h) = helper {
                    self.helper_ticket = Some(h.request(self.ring.path()));
                }
                Ok(())
            }
            BackgroundCheckpoint::Busy => {
                // What is not read waits in the senders' sockets, not in unsynced pages: a
                // power loss takes about two periods of records at most.
                self.sync_wait = true;
                if let Some(suppressed) = self.sync_log.allow(now) {
                    crate::log!(
                        Level::Warn,
                        "ring_sync_behind",
                        feed = self.cfg.name,
                        path = self.ring.path().display(),
                        reason = "the previous sync has not finished: the disk is slower than the input; inputs wait for it",
                        syncs_behind = self.ring.syncs_behind(),
                        suppressed = suppressed
                    );
                }
                Ok(())
            }
            BackgroundCheckpoint::Unavailable(why) => {
                if let Some(e) = why {
                    crate::log!(
                        Level::Warn,
                        "ring_sync_in_loop",
                        feed = self.cfg.name,
                        path = self.ring.path().display(),
                        error = e,
                        reason =
                            "the kernel refuses background syncs; each sync holds the event loop"
                    );
                }
                self.ring.checkpoint(wall, true)
            }
        }
    }

    /// After records were appended at `ts`: the outputs have work; under `sync = "always"`
    /// the records are forced to disk now, under `interval` their disk writes are started
    /// (the periodic sync then waits only for what is left). A failure is logged and returned.
    fn appended(&mut self, ts: u64) -> std::io::Result<()> {
        self.dirty = true;
        let res = match self.cfg.sync {
            SyncPolicy::Always => self.ring.checkpoint(ts, true),
            SyncPolicy::Interval(_) => self.ring.start_writeback(),
            SyncPolicy::Never => Ok(()),
        };
        if let Err(e) = &res {
            crate::log!(
                Level::Error,
                "ring_sync_failed",
                feed = self.cfg.name,
                path = self.ring.path().display(),
                error = e
            );
        }
        res
    }

    /// Seconds of input the ring holds at the current input rate; `None` while idle.
    pub fn coverage_secs(&self) -> Option<f64> {
        self.rate
            .bytes_per_s
            .filter(|r| *r >= 1.0)
            .map(|r| self.ring.capacity() as f64 / r)
    }

    /// Updates the input rate; logs and raises an alert when coverage crosses the configured
    /// retention.
    fn measure(&mut self, now: Instant, alerts: &mut Vec<Alert>) {
        let dt = now
            .saturating_duration_since(self.rate.last_at)
            .as_secs_f64();
        if dt < 0.5 {
            return;
        }
        let bytes = self.ring.appended_bytes();
        let sample = bytes.saturating_sub(self.rate.last_bytes) as f64 / dt;
        let alpha = 1.0 - (-dt / RATE_SMOOTHING_SECS).exp();
        self.rate.bytes_per_s = Some(match self.rate.bytes_per_s {
            Some(r) => r + alpha * (sample - r),
            None => sample,
        });
        self.rate.last_bytes = bytes;
        self.rate.last_at = now;
        let retention = self.cfg.retention.as_secs_f64();
        let low = self.coverage_secs().is_some_and(|c| c < retention);
        if low != self.coverage_low {
            self.coverage_low = low;
            let coverage = self.coverage_secs().unwrap_or(f64::INFINITY);
            let rate = self.rate.bytes_per_s.unwrap_or(0.0);
            crate::log!(
                if low { Level::Warn } else { Level::Info },
                if low {
                    "coverage_below_retention"
                } else {
                    "coverage_ok"
                },
                feed = self.cfg.name,
                coverage_s = format!("{coverage:.0}"),
                retention_s = format!("{retention:.0}"),
                input_bytes_per_s = format!("{rate:.0}"),
                capacity = crate::ring::human_bytes(self.ring.capacity())
            );
            alerts.push(Alert {
                kind: if low {
                    AlertKind::CoverageBelowRetention
                } else {
                    AlertKind::CoverageOk
                },
                feed: self.cfg.name.clone(),
                output: None,
                detail: vec![
                    (
                        "coverage_s",
                        Value::Num(coverage.min(u64::MAX as f64) as u64),
                    ),
                    ("retention_s", Value::Num(self.cfg.retention.as_secs())),
                    ("input_bytes_per_s", Value::Num(rate as u64)),
                    ("capacity_bytes", Value::Num(self.ring.capacity())),
                ],
            });
        }
    }
}

/// What the event loop did, for `/metrics`: a turn is one poll and the work it woke.
#[derive(Default)]
pub struct LoopStats {
    pub turns: u64,
    /// The longest turn: how long every other socket, timer and signal had to wait.
    pub turn_max: Duration,
    /// Reads of input connections that returned data.
    pub input_reads: u64,
}

/// The running relay.
pub struct Relay {
    poll: Poll,
    /// The feeds that run, in configuration order (a feed's index here names its listener's
    /// and outputs' tokens).
    pub feeds: Vec<Feed>,
    /// The feeds whose ring could not be opened, in configuration order.
    pub failed: Vec<FailedFeed>,
    conns: Vec<Option<Conn>>,
    free_slots: Vec<usize>,
    /// Connections with data left after their turn's budget.
    ready: Vec<usize>,
    /// Outputs (feed, output) with data left after their turn's budget.
    more: Vec<(usize, usize)>,
    signals: SignalFd,
    scratch: Vec<u8>,
    checkpoint_every: Duration,
    next_checkpoint: Instant,
    stopping: bool,
    admin: Option<admin::Admin>,
    /// Bytes read from input connections, for the shutdown drain.
    bytes_in: u64,
    instance: String,
    started_ns: u64,
    /// Alerts raised by feeds, waiting to be counted and written.
    pending_alerts: Vec<Alert>,
    /// Alert counters.
    pub alert_stats: AlertStats,
    pub loop_stats: LoopStats,
    /// The configuration in force (what a reload compares against).
    cfg: Config,
    lock: LockFile,
    role: Role,
    next_fence_check: Instant,
    fence_log: Limiter,
    notify: Option<Notifier>,
    /// `READY=1` was sent: role changes are announced from then on.
    announced: bool,
    next_watchdog: Option<Instant>,
    /// The process that runs the rings' `interval` syncs ([`Relay::use_sync_helper`]); without
    /// one, the kernel's background sync does.
    sync_helper: Option<sync_helper::SyncHelper>,
}

/// `ringrelay check --config FILE`: the file's errors, warnings, and what only this machine can
/// tell ([`crate::preflight`]); exit 2 on any error.
pub fn check(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            return ExitCode::from(2);
        }
    };
    for w in &cfg.warnings {
        println!(
            "{}:{}:{}: warning: {}",
            w.path.display(),
            w.line,
            w.col,
            w.msg
        );
    }
    // What `run` would fail on, or start the feed without, on this machine.
    let findings = crate::preflight::preflight(&cfg);
    if !findings.is_empty() {
        for f in &findings {
            eprintln!("{}", f.error);
        }
        eprintln!("{}: {} error(s)", path.display(), findings.len());
        return ExitCode::from(2);
    }
    // Expired certificates are warnings, not errors (the relay still starts).
    for f in &cfg.feeds {
        let mut expired = Vec::new();
        if let InputKind::Tls(t) = &f.input.kind {
            if let Ok((_, e)) = crate::tls::server_config(&t.files) {
                expired.extend(e);
            }
        }
        for o in &f.outputs {
            if let crate::config::OutputKind::Tls(t) = &o.kind {
                if let Ok((_, e)) = crate::tls::client_config(&t.files) {
                    expired.extend(e);
                }
            }
        }
        for e in expired {
            println!(
                "{}: warning: feed {}: {}: certificate {:?} expired at {}",
                path.display(),
                f.name,
                e.path.display(),
                e.subject,
                e.not_after
            );
        }
    }
    let outputs: usize = cfg.feeds.iter().map(|f| f.outputs.len()).sum();
    println!(
        "{}: ok: {} feed(s), {} output(s), data_dir {}",
        path.display(),
        cfg.feeds.len(),
        outputs,
        cfg.relay.data_dir.display()
    );
    ExitCode::SUCCESS
}

/// `ringrelay run --config FILE`: exit 0 after SIGTERM/SIGINT, 2 for a bad config, 1 when the
/// relay cannot start or fails, 3 when it was fenced off by a newer active.
pub fn run(path: &Path) -> ExitCode {
    let cfg = match Config::load(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            crate::log!(
                Level::Error,
                "config_invalid",
                config = path.display(),
                errors = errors.len()
            );
            return ExitCode::from(2);
        }
    };
    for w in &cfg.warnings {
        crate::log!(Level::Warn, "config_warning", warning = w);
    }
    for finding in crate::preflight::preflight(&cfg) {
        let error = finding.error.to_string();
        match finding.scope {
            // A data directory that cannot exist: retried by systemd (a disk mounted late).
            crate::preflight::Scope::Relay => {
                crate::log!(
                    Level::Error,
                    "start_failed",
                    config = path.display(),
                    error = error
                );
                return ExitCode::from(1);
            }
            // That feed's ring cannot be opened or created: opening it says so.
            crate::preflight::Scope::Feed(feed) => {
                crate::log!(Level::Error, "preflight_failed", feed = feed, error = error);
            }
        }
    }
    let mut relay = match Relay::start(&cfg) {
        Ok(r) => r,
        Err(why) => {
            crate::log!(
                Level::Error,
                "start_failed",
                config = path.display(),
                error = why
            );
            return ExitCode::from(1);
        }
    };
    // `/proc/self/exe` runs this very binary even after a package upgrade replaced the file
    // (the helper must speak this relay's protocol); the path otherwise.
    let exe = std::path::PathBuf::from("/proc/self/exe");
    match if exe.exists() {
        Ok(exe)
    } else {
        std::env::current_exe()
    } {
        Ok(exe) => relay.use_sync_helper(exe),
        Err(e) => crate::log!(
            Level::Warn,
            "sync_helper_unavailable",
            error = e,
            reason = "cannot find our own binary; rings sync in the kernel's background (a SIGKILL of the relay then waits for a sync in flight)"
        ),
    }
    match relay.run_until(None) {
        Ok(Outcome::Fenced) => ExitCode::from(EXIT_FENCED),
        Ok(_) => ExitCode::SUCCESS,
        Err(why) => {
            crate::log!(Level::Error, "relay_failed", error = why);
            ExitCode::from(1)
        }
    }
}

/// Puts feed `fi`'s paused connections on the ready list: what paused them (a full `block`
/// ring, a sync behind) may be over; one still in force pauses them again.
fn queue_paused(conns: &mut [Option<Conn>], ready: &mut Vec<usize>, fi: usize) {
    for (id, c) in conns.iter_mut().enumerate() {
        if let Some(c) = c.as_mut().filter(|c| c.feed == fi && c.paused) {
            c.queue(ready, id);
        }
    }
}

fn blocked_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Logs each already-expired certificate (a warning: the relay still starts): of the feed's
/// input, or of its output named `output`.
pub(super) fn log_expired(feed: &str, output: Option<&str>, expired: &[crate::tls::Expired]) {
    for e in expired {
        match output {
            None => crate::log!(
                Level::Warn,
                "certificate_expired",
                feed = feed,
                side = "input",
                file = e.path.display(),
                subject = e.subject,
                not_after = e.not_after
            ),
            Some(output) => crate::log!(
                Level::Warn,
                "certificate_expired",
                feed = feed,
                side = "output",
                output = output,
                file = e.path.display(),
                subject = e.subject,
                not_after = e.not_after
            ),
        }
    }
}

impl Relay {
    /// Sets up signals, the admin endpoint and the lock; then, holding the lock, opens every
    /// ring (recovering it), binds every listener and sets up outputs ([`Relay::activate`]);
    /// without it, enters standby. Tells systemd `READY=1` either way.
    pub fn start(cfg: &Config) -> Result<Relay, String> {
        let data_dir = &cfg.relay.data_dir;
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("create data_dir {}: {e}", data_dir.display()))?;
        let mut lock = LockFile::open(&cfg.relay.lock_file).map_err(|e| e.to_string())?;
        // Signals arrive as readable events on a signalfd, never in a handler.
        let mask = blocked_signals();
        mask.thread_block()
            .map_err(|e| format!("block signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("signalfd: {e}"))?;
        let poll = Poll::new().map_err(|e| format!("epoll: {e}"))?;
        poll.registry()
            .register(
                &mut SourceFd(&signals.as_raw_fd()),
                SIGNALS,
                Interest::READABLE,
            )
            .map_err(|e| format!("register signalfd: {e}"))?;
        let now = clock::now();
        let max_record = cfg
            .feeds
            .iter()
            .map(|f| f.max_record_bytes)
            .max()
            .unwrap_or(0);
        let admin = match cfg.relay.admin_listen {
            Some(addr) => Some(admin::Admin::bind(poll.registry(), addr)?),
            None => None,
        };
        let got_lock = lock.try_lock().map_err(|e| e.to_string())?;
        let notify = Notifier::from_env();
        let next_watchdog = notify
            .as_ref()
            .and_then(Notifier::watchdog_every)
            .map(|p| now + p);
        let mut relay = Relay {
            pending_alerts: Vec::new(),
            alert_stats: AlertStats::default(),
            loop_stats: LoopStats::default(),
            admin,
            bytes_in: 0,
            instance: cfg.relay.instance.clone(),
            started_ns: clock::wall_ns(),
            poll,
            feeds: Vec::new(),
            failed: Vec::new(),
            conns: Vec::new(),
            free_slots: Vec::new(),
            ready: Vec::new(),
            more: Vec::new(),
            signals,
            scratch: vec![0u8; max_record + 64 + LINES_READ.max(READ_CHUNK)],
            checkpoint_every: cfg.relay.checkpoint_interval,
            next_checkpoint: now + cfg.relay.checkpoint_interval,
            stopping: false,
            cfg: cfg.clone(),
            lock,
            role: Role::Standby { next_try: now },
            next_fence_check: now + FENCE_CHECK,
            fence_log: Limiter::new(3, Duration::from_secs(60)),
            notify,
            announced: false,
            next_watchdog,
            sync_helper: None,
        };
        crate::log!(
            Level::Info,
            "started",
            instance = cfg.relay.instance,
            feeds = cfg.feeds.len(),
            data_dir = data_dir.display(),
            lock_file = cfg.relay.lock_file.display(),
            pid = std::process::id()
        );
        if got_lock {
            relay.activate(now)?;
        } else {
            relay.enter_standby(now);
        }
        let status = relay.status_line();
        relay.notify(&format!("READY=1\n{status}"), now);
        relay.announced = true;
        Ok(relay)
    }

    /// Has the rings' `sync = "interval"` syncs run by a helper process, our binary `exe`
    /// ([`sync_helper`]): a SIGKILL of the relay then closes its sockets at once. If it cannot
    /// start, logs why; the kernel's background sync runs them as before.
    pub fn use_sync_helper(&mut self, exe: std::path::PathBuf) {
        match sync_helper::SyncHelper::start(exe, self.poll.registry(), SYNC_HELPER) {
            Ok(h) => {
                crate::log!(Level::Info, "sync_helper_started", pid = h.pid());
                self.sync_helper = Some(h);
            }
            Err(e) => crate::log!(
                Level::Warn,
                "sync_helper_unavailable",
                error = e,
                reason = "cannot start it; rings sync in the kernel's background (a SIGKILL of the relay then waits for a sync in flight)"
            ),
        }
    }

    /// The sync helper's process id, while there is one.
    pub fn sync_helper_pid(&self) -> Option<u32> {
        self.sync_helper.as_ref().map(sync_helper::SyncHelper::pid)
    }

    /// The sync helper's socket: syncs done, or the helper gone.
    fn on_sync_helper(&mut self, now: Instant) {
        let Some(h) = self.sync_helper.as_mut() else {
            return;
        };
        for ev in h.on_event(self.poll.registry(), now) {
            match ev {
                sync_helper::Event::Done(ticket, res) => {
                    // A feed removed by a reload meanwhile has no ring to tell.
                    if let Some(f) = self
                        .feeds
                        .iter_mut()
                        .find(|f| f.helper_ticket == Some(ticket))
                    {
                        f.helper_ticket = None;
                        f.ring.helper_sync_done(res);
                    }
                }
                sync_helper::Event::Restarted => {}
                // The rings go back to the kernel's sync at their next checkpoint, syncing
                // there what the helper did not report.
                sync_helper::Event::Gone => self.sync_helper = None,
            }
        }
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.role
    }

    /// One place for role changes: logs `role=A=>B` and tells systemd.
    fn set_role(&mut self, role: Role, reason: &str, now: Instant) {
        let epoch = match role {
            Role::Active { epoch } | Role::Fenced { epoch } => epoch,
            Role::Standby { .. } => 0,
        };
        crate::log!(
            if matches!(role, Role::Fenced { .. }) {
                Level::Error
            } else {
                Level::Info
            },
            "role_changed",
            role = format!("{}=>{}", self.role.name(), role.name()),
            epoch = epoch,
            lock_file = self.lock.path().display(),
            reason = reason
        );
        self.role = role;
        if self.announced {
            let status = self.status_line();
            self.notify(&status, now);
        }
    }

    fn status_line(&self) -> String {
        match self.role {
            Role::Active { epoch } if !self.failed.is_empty() => format!(
                "STATUS=role=active epoch={epoch} feeds={} failed={}",
                self.feeds.len(),
                self.failed
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Role::Active { epoch } => format!(
                "STATUS=role=active epoch={epoch} feeds={}",
                self.feeds.len()
            ),
            Role::Standby { .. } => format!(
                "STATUS=role=standby feeds={} lock_file={}",
                self.cfg.feeds.len(),
                self.lock.path().display()
            ),
            Role::Fenced { epoch } => format!("STATUS=role=fenced epoch={epoch}"),
        }
    }

    fn notify(&mut self, msg: &str, now: Instant) {
        if let Some(n) = self.notify.as_mut() {
            n.send(msg, now);
        }
    }

    /// Standby: the lock is held elsewhere; try again every `standby_poll`.
    fn enter_standby(&mut self, now: Instant) {
        let holder = self.lock.holder();
        crate::log!(
            Level::Info,
            "standby",
            lock_file = self.lock.path().display(),
            holder = holder,
            poll_ms = self.cfg.relay.standby_poll.as_millis()
        );
        self.role = Role::Standby {
            next_try: now + self.cfg.relay.standby_poll,
        };
    }

    /// Becomes active (the lock is held): a new epoch into the lock file, every ring opened and
    /// recovered and stamped with the epoch, every listener bound, every output set up to resume
    /// from its cursor with the replay window. The start of an active and the promotion of a
    /// standby both come here.
    fn activate(&mut self, now: Instant) -> Result<(), String> {
        let previous = match self.lock.read() {
            Ok(rec) => rec,
            // Our header but no valid epoch: a record torn by a crash while it was written. The
            // rings' epochs (below) keep the new epoch above every earlier active's.
            Err(lock::LockError::Foreign {
                why: lock::RecordError::BadEpoch,
                ..
            }) => {
                crate::log!(
                    Level::Warn,
                    "lock_record_damaged",
                    lock_file = self.lock.path().display(),
                    action = "rewritten; the new epoch is taken above the rings' epochs"
                );
                LockRecord::default()
            }
            Err(e) => return Err(e.to_string()),
        };
        let mut epoch = previous.epoch.saturating_add(1);
        self.write_lock(epoch)?;
        let mut feeds = Vec::with_capacity(self.cfg.feeds.len());
        let mut failed = Vec::new();
        for fc in &self.cfg.feeds {
            let path = self.cfg.relay.data_dir.join(format!("{}.ring", fc.name));
            let opts = RingOptions {
                capacity: fc.capacity,
                max_record: u32::try_from(fc.max_record_bytes).unwrap_or(u32::MAX),
                when_full: fc.when_full,
                name: fc.name.clone(),
            };
            let ring = match Ring::open(&path, &opts) {
                Ok(ring) => ring,
                // Another process has the ring: another relay runs on this data_dir, which
                // concerns every feed, not this one.
                Err(e @ OpenError::Locked { .. }) => return Err(format!("feed {}: {e}", fc.name)),
                // The ring's own trouble: this feed fails, the others run.
                Err(e) => {
                    failed.push(Self::feed_failed(fc, path, &e));
                    continue;
                }
            };
            feeds.push(Self::start_feed(
                &self.poll,
                feeds.len(),
                fc,
                ring,
                &self.cfg.relay.instance,
                now,
            )?);
        }
        if feeds.is_empty() && !failed.is_empty() {
            crate::log!(
                Level::Error,
                "no_feed_running",
                failed = failed.len(),
                action = "every feed's ring failed to open; the admin endpoint stays up: see the feed_failed lines"
            );
        }
        // A ring stamped with a higher epoch than the lock file's (the lock file was removed or
        // replaced): go above it, or this instance would fence itself.
        // Both slots count: a fenced active that had not noticed yet may have written its lower
        // epoch into the newer slot after a higher one went into the older.
        let ring_max = feeds
            .iter()
            .map(|f| f.ring.epoch().max(f.ring.stored_epoch()))
            .max()
            .unwrap_or(0);
        if ring_max >= epoch {
            crate::log!(
                Level::Warn,
                "epoch_raised",
                lock_file = self.lock.path().display(),
                lock_epoch = previous.epoch,
                ring_epoch = ring_max,
                epoch = ring_max + 1,
                reason = "a ring carries a higher epoch than the lock file"
            );
            epoch = ring_max + 1;
            self.write_lock(epoch)?;
        }
        let wall = clock::wall_ns();
        for feed in &mut feeds {
            feed.ring.set_epoch(epoch);
            feed.ring.checkpoint(wall, true).map_err(|e| {
                format!(
                    "feed {}: checkpoint {}: {e}",
                    feed.cfg.name,
                    feed.ring.path().display()
                )
            })?;
        }
        // A standby's reload may have raised max_record_bytes since the buffer was sized.
        let max_record = self.feeds_max_record();
        if self.scratch.len() < max_record + 64 + LINES_READ.max(READ_CHUNK) {
            self.scratch
                .resize(max_record + 64 + LINES_READ.max(READ_CHUNK), 0);
        }
        self.feeds = feeds;
        for f in &failed {
            self.pending_alerts.push(Alert {
                kind: AlertKind::FeedFailed,
                feed: f.name.clone(),
                output: None,
                detail: vec![
                    ("path", Value::Text(f.path.display().to_string())),
                    ("error", Value::Text(f.error.clone())),
                ],
            });
        }
        self.failed = failed;
        self.next_fence_check = now + FENCE_CHECK;
        self.next_checkpoint = now + self.checkpoint_every;
        let reason = match self.role {
            Role::Standby { .. } if previous.epoch > 0 => "lock acquired; previous active gone",
            _ => "lock acquired",
        };
        self.set_role(Role::Active { epoch }, reason, now);
        Ok(())
    }

    fn feeds_max_record(&self) -> usize {
        self.cfg
            .feeds
            .iter()
            .map(|f| f.max_record_bytes)
            .max()
            .unwrap_or(0)
    }

    fn write_lock(&mut self, epoch: u64) -> Result<(), String> {
        self.lock
            .write(&LockRecord {
                epoch,
                pid: Some(std::process::id()),
                instance: Some(self.instance.clone()),
                since: Some(clock::rfc3339(clock::wall_ns())),
            })
            .map_err(|e| e.to_string())
    }

    /// Active: has anyone become active with a higher epoch? Returns the reason if so.
    fn fence_reason(&mut self, epoch: u64, now: Instant) -> Option<String> {
        match self.lock.check() {
            Ok(rec) if rec.epoch > epoch => {
                return Some(format!(
                    "lock file {} holds epoch {} above this instance's {epoch}: another instance is active",
                    self.lock.path().display(),
                    rec.epoch
                ))
            }
            Ok(_) => {}
            Err(lock::CheckError::Lost(why)) => {
                return Some(format!(
                    "lock file {}: {why}: the lock no longer excludes anyone",
                    self.lock.path().display()
                ))
            }
            Err(lock::CheckError::Unreadable(why)) => {
                // Half-written by someone, or an I/O hiccup: the rings' epochs below still
                // guard; look again at the next check.
                if let Some(suppressed) = self.fence_log.allow(now) {
                    crate::log!(
                        Level::Warn,
                        "lock_unreadable",
                        error = why,
                        suppressed = suppressed
                    );
                }
            }
        }
        for feed in &self.feeds {
            let stored = feed.ring.stored_epoch();
            if stored > epoch {
                return Some(format!(
                    "ring {} holds epoch {stored} above this instance's {epoch}: another instance wrote it",
                    feed.ring.path().display()
                ));
            }
        }
        None
    }

    /// Stops delivering at once: nothing more is written to a socket, a file or a ring.
    fn fence(&mut self, epoch: u64, why: &str, now: Instant) {
        self.notify("STOPPING=1", now);
        self.set_role(Role::Fenced { epoch }, why, now);
        crate::log!(
            Level::Error,
            "fenced",
            epoch = epoch,
            reason = why,
            action = format!(
                "stopped delivering without writing the rings again; exiting with code {EXIT_FENCED}"
            )
        );
    }

    /// Feed `fc` cannot run: its ring at `path` did not open. Logs it once with the fix.
    fn feed_failed(fc: &FeedConfig, path: PathBuf, e: &OpenError) -> FailedFeed {
        let p = path.display();
        // A name to move it to that says what and when: `...ring.damaged-20260102T030405Z`.
        let stamp: String = clock::rfc3339(clock::wall_ns())
            .chars()
            .take(19)
            .filter(|c| !matches!(c, '-' | ':'))
            .collect();
        let aside = format!("{p}.damaged-{stamp}Z");
        let fix = match e {
            OpenError::WrongFeed { found, .. } => format!(
                "this is feed {found:?}'s ring: move it back (mv {p} {dir}/{found}.ring) if that is \
                 where it belongs, or aside (mv {p} {aside}); then restart ringrelay (feed {:?} gets a \
                 new, empty ring)",
                fc.name,
                dir = path.parent().map_or("".into(), |d| d.display().to_string()),
            ),
            OpenError::Capacity { .. } => format!(
                "set the feed's buffer back to the ring's size, or move the ring aside \
                 (mv {p} {aside}) and restart ringrelay (a new ring is created); salvage its \
                 records with: ringrelay inspect {aside} --export > FILE"
            ),
            OpenError::Io { .. } => format!(
                "fix the file's access or the disk, then restart ringrelay; if the ring is \
                 unreadable, move it aside (mv {p} {aside}) and restart (a new ring is created)"
            ),
            _ => format!(
                "move it aside: mv {p} {aside}, then restart ringrelay (a new, empty ring is \
                 created); salvage its records with: ringrelay inspect {aside} --export > FILE"
            ),
        };
        crate::log!(
            Level::Error,
            "feed_failed",
            feed = fc.name,
            path = p,
            error = e,
            fix = fix,
            action =
                "this feed's input is not bound and its outputs do not run; every other feed runs"
        );
        FailedFeed {
            name: fc.name.clone(),
            path,
            error: e.to_string(),
        }
    }

    fn start_feed(
        poll: &Poll,
        i: usize,
        fc: &FeedConfig,
        mut ring: Ring,
        instance: &str,
        now: Instant,
    ) -> Result<Feed, String> {
        let path = ring.path().to_path_buf();
        let rec = ring.recovery().clone();
        let st = ring.stats();
        crate::log!(
            Level::Info,
            "ring_opened",
            feed = fc.name,
            path = path.display(),
            created = rec.created,
            records = st.records,
            span_s = format!("{:.0}", st.span_secs()),
            recovered_after_checkpoint = rec.scanned,
            damaged_after_checkpoint = rec.damaged,
            torn_tail = rec.torn,
            damaged_tail_dropped = rec.tail_dropped
        );
        let keep: Vec<&str> = fc.outputs.iter().map(|o| o.name.as_str()).collect();
        for gone in ring.retain_cursors(&keep) {
            crate::log!(
                Level::Warn,
                "cursor_removed",
                feed = fc.name,
                output = gone,
                reason = "output no longer in the configuration"
            );
        }
        let last_checkpoint = if rec.created {
            0
        } else {
            rec.last_checkpoint_ns
        };
        let tls = match fc.input.tls() {
            None => None,
            Some(t) => {
                let (cfg, expired) = crate::tls::server_config(&t.files)
                    .map_err(|e| format!("feed {}: input {}: {}", fc.name, e.key, e.msg))?;
                log_expired(&fc.name, None, &expired);
                Some(cfg)
            }
        };
        let mut outputs = Vec::with_capacity(fc.outputs.len());
        for oc in &fc.outputs {
            outputs.push(Output::new(
                &fc.name,
                instance,
                oc,
                &mut ring,
                last_checkpoint,
                now,
            )?);
        }
        let mut listener = TcpListener::bind(fc.input.listen).map_err(|e| {
            format!(
                "feed {}: cannot listen on {}: {e}",
                fc.name, fc.input.listen
            )
        })?;
        // The backlog holds the connections that wait while the feed is at max_connections
        // (mio listens with 128); the kernel caps it at net.core.somaxconn.
        nix::sys::socket::Backlog::new(LISTEN_BACKLOG)
            .and_then(|b| nix::sys::socket::listen(&listener, b))
            .map_err(|e| format!("feed {}: listen backlog: {e}", fc.name))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| format!("feed {}: listener address: {e}", fc.name))?;
        poll.registry()
            .register(&mut listener, Token(LISTENER_BASE + i), Interest::READABLE)
            .map_err(|e| format!("feed {}: register listener: {e}", fc.name))?;
        crate::log!(Level::Info, "listening", feed = fc.name, addr = local_addr);
        Ok(Feed {
            framer: FramerConfig {
                framing: fc.framing,
                max_record: fc.max_record_bytes,
                oversize: fc.oversize,
            },
            cfg: fc.clone(),
            ring,
            listener: Some(listener),
            tls,
            tls_log: Limiter::new(10, Duration::from_secs(60)),
            logs: ConnLogs::new(),
            local_addr,
            outputs,
            stats: FeedStats::default(),
            conns: 0,
            accept_paused: None,
            accept_due: false,
            accept_retry: None,
            limit_log: Limiter::new(5, Duration::from_secs(60)),
            dirty: true,
            paused: false,
            sync_wait: false,
            helper_ticket: None,
            next_sync: now,
            refuse_log: Limiter::new(5, Duration::from_secs(60)),
            sync_log: Limiter::new(3, Duration::from_secs(60)),
            rate: InputRate {
                last_bytes: 0,
                last_at: now,
                bytes_per_s: None,
            },
            coverage_low: false,
        })
    }

    /// Runs until SIGTERM/SIGINT (then drains and checkpoints), until fenced, or until `until`.
    pub fn run_until(&mut self, until: Option<Instant>) -> Result<Outcome, String> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = clock::now();
            if matches!(self.role, Role::Fenced { .. }) {
                return Ok(Outcome::Fenced);
            }
            if self.stopping {
                return self.finish().map(|()| Outcome::Stopped);
            }
            if until.is_some_and(|u| now >= u) {
                return Ok(Outcome::TimeUp);
            }
            let timeout = if self.ready.is_empty() && self.more.is_empty() {
                let next = self.next_deadline(now);
                let next = until.map_or(next, |u| next.min(u));
                next.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("epoll_wait: {e}"));
            }
            let now = clock::now();
            // Fencing first: a fenced instance must not read, append or deliver another byte.
            self.fence_timer(now);
            if matches!(self.role, Role::Fenced { .. }) {
                continue;
            }
            // The connections whose budget ran out last turn are served once each, after the
            // events, which skip them (`Conn::queued`). The id of one closed meanwhile can
            // reach the next list twice through the connection that took its slot: deduplicated.
            let mut ready = std::mem::take(&mut self.ready);
            ready.sort_unstable();
            ready.dedup();
            for ev in events.iter() {
                self.dispatch(
                    ev.token(),
                    ev.is_readable() || ev.is_read_closed(),
                    ev.is_writable() || ev.is_error(),
                    now,
                );
            }
            for id in ready {
                if let Some(c) = self.conns.get_mut(id).and_then(Option::as_mut) {
                    c.queued = false;
                }
                self.service_conn(id, now, false);
            }
            self.timers(now)?;
            self.write_outputs(now);
            self.raise_alerts();
            self.loop_stats.turns += 1;
            self.loop_stats.turn_max = self.loop_stats.turn_max.max(now.elapsed());
        }
    }

    /// An active's periodic fencing check.
    fn fence_timer(&mut self, now: Instant) {
        let Role::Active { epoch } = self.role else {
            return;
        };
        if now < self.next_fence_check {
            return;
        }
        self.next_fence_check = now + FENCE_CHECK;
        if let Some(why) = self.fence_reason(epoch, now) {
            self.fence(epoch, &why, now);
        }
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.next_checkpoint.min(now + Duration::from_secs(1));
        match self.role {
            Role::Standby { next_try } => next = next.min(next_try),
            Role::Active { .. } => next = next.min(self.next_fence_check),
            Role::Fenced { .. } => {}
        }
        if let Some(w) = self.next_watchdog {
            next = next.min(w);
        }
        if let Some(d) = self.admin.as_ref().and_then(admin::Admin::deadline) {
            next = next.min(d);
        }
        for f in &self.feeds {
            for o in &f.outputs {
                if let Some(d) = o.deadline() {
                    next = next.min(d);
                }
            }
            if f.sync_wait {
                next = next.min(now + SYNC_WAIT_POLL);
            }
            if let Some(r) = f.accept_retry {
                next = next.min(r);
            }
        }
        next
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool, now: Instant) {
        match token.0 {
            0 => self.on_signal(now),
            t if t == SYNC_HELPER.0 => self.on_sync_helper(now),
            t if t == admin::LISTENER.0 => {
                if let Some(a) = self.admin.as_mut() {
                    a.accept(self.poll.registry(), now);
                }
            }
            t if (admin::CONN_BASE..admin::CONN_BASE + admin::MAX_CONNS).contains(&t) => {
                if let Some(a) = self.admin.as_mut() {
                    let summary = admin::Summary {
                        instance: &self.instance,
                        role: self.role.name(),
                        epoch: match self.role {
                            Role::Active { epoch } | Role::Fenced { epoch } => epoch,
                            Role::Standby { .. } => 0,
                        },
                        started_ns: self.started_ns,
                        alerts: &self.alert_stats,
                        event_loop: &self.loop_stats,
                        failed: &self.failed,
                    };
                    a.on_event(
                        self.poll.registry(),
                        t - admin::CONN_BASE,
                        &self.feeds,
                        &summary,
                    );
                }
            }
            t if (LISTENER_BASE..LISTENER_BASE + self.feeds.len()).contains(&t) => {
                self.accept(t - LISTENER_BASE, now);
            }
            t if (OUTPUT_BASE..CONN_BASE).contains(&t) => {
                let (fi, oi) = ((t - OUTPUT_BASE) / 16, (t - OUTPUT_BASE) % 16);
                let registry = self.poll.registry();
                if let Some(feed) = self.feeds.get_mut(fi) {
                    if let Some(out) = feed.outputs.get_mut(oi) {
                        let committed = feed.ring.cursor_pos(out.cursor()).seq;
                        out.on_event(registry, &mut feed.ring, readable, writable, now);
                        // An HTTP output commits when a response (or an ack) arrives, here and
                        // not in `write_outputs`: a `block` feed paused on a full ring may take
                        // records again.
                        if feed.paused && feed.ring.cursor_pos(out.cursor()).seq != committed {
                            feed.dirty = true;
                        }
                        if out.can_write() {
                            self.more.push((fi, oi));
                        }
                    }
                }
            }
            t if t >= CONN_BASE => self.service_conn(t - CONN_BASE, now, false),
            // Sporadic events for tokens we no longer use are harmless.
            _ => {}
        }
    }

    fn on_signal(&mut self, now: Instant) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let sig = Signal::try_from(info.ssi_signo as i32).map_or("?", |s| s.as_str());
            match info.ssi_signo as i32 {
                x if x == Signal::SIGHUP as i32 => {
                    self.reload(now);
                    self.reload_tls();
                }
                _ => {
                    crate::log!(
                        Level::Info,
                        "stopping",
                        signal = sig,
                        role = self.role.name()
                    );
                    if !self.stopping {
                        self.notify("STOPPING=1", now);
                    }
                    self.stopping = true;
                }
            }
        }
    }

    /// SIGHUP: re-reads every TLS input's and output's certificate, key and CA files. New
    /// handshakes use the new files; established connections keep theirs. A file that does not
    /// load is logged and the old configuration stays in use. (The rest of the configuration is
    /// not reloaded here.)
    fn reload_tls(&mut self) {
        let (mut reloaded, mut failed) = (0, 0);
        for feed in &mut self.feeds {
            if let Some(t) = feed.cfg.input.tls() {
                match crate::tls::server_config(&t.files) {
                    Ok((cfg, expired)) => {
                        log_expired(&feed.cfg.name, None, &expired);
                        feed.tls = Some(cfg);
                        reloaded += 1;
                    }
                    Err(e) => {
                        failed += 1;
                        crate::log!(
                            Level::Error,
                            "tls_reload_failed",
                            feed = feed.cfg.name,
                            side = "input",
                            key = e.key,
                            error = e.msg,
                            keeping = "the certificates loaded before"
                        );
                    }
                }
            }
            for out in &mut feed.outputs {
                match out.reload_tls() {
                    None => {}
                    Some(Ok(expired)) => {
                        log_expired(&feed.cfg.name, Some(&out.name), &expired);
                        reloaded += 1;
                    }
                    Some(Err(e)) => {
                        failed += 1;
                        crate::log!(
                            Level::Error,
                            "tls_reload_failed",
                            feed = feed.cfg.name,
                            output = out.name,
                            key = e.key,
                            error = e.msg,
                            keeping = "the certificates loaded before"
                        );
                    }
                }
            }
        }
        crate::log!(
            Level::Info,
            "tls_reloaded",
            signal = "SIGHUP",
            reloaded = reloaded,
            failed = failed,
            note = "only TLS files are reloaded; restart to apply other configuration changes"
        );
    }

    fn timers(&mut self, now: Instant) -> Result<(), String> {
        if let Some(w) = self.next_watchdog.filter(|w| *w <= now) {
            let every = self
                .notify
                .as_ref()
                .and_then(Notifier::watchdog_every)
                .unwrap_or(Duration::from_secs(1));
            // From the current time, not `w`: after a long stall, one ping, not a burst.
            self.next_watchdog = Some(now.max(w) + every);
            self.notify("WATCHDOG=1", now);
        }
        if let Role::Standby { next_try } = self.role {
            if now >= next_try {
                if self.lock.try_lock().map_err(|e| e.to_string())? {
                    self.activate(now)?;
                } else {
                    self.role = Role::Standby {
                        next_try: now + self.cfg.relay.standby_poll,
                    };
                }
            }
        }
        let registry = self.poll.registry();
        for (fi, feed) in self.feeds.iter_mut().enumerate() {
            for (oi, out) in feed.outputs.iter_mut().enumerate() {
                if out.deadline().is_some_and(|d| d <= now) {
                    let token = Token(OUTPUT_BASE + fi * 16 + oi);
                    out.on_timer(registry, token, &mut feed.ring, now);
                    if out.can_write() {
                        feed.dirty = true;
                    }
                }
            }
        }
        if let Some(a) = self.admin.as_mut() {
            a.expire(registry, now);
        }
        if let Some(h) = self.sync_helper.as_mut() {
            h.reap();
        }
        self.resume_after_sync()?;
        self.resume_accepts(now);
        if now >= self.next_checkpoint {
            self.next_checkpoint = now + self.checkpoint_every;
            for feed in &mut self.feeds {
                feed.measure(now, &mut self.pending_alerts);
                for out in &mut feed.outputs {
                    out.tick(&feed.ring, now);
                }
            }
            self.close_idle(now);
            self.expire_requests(now);
            self.checkpoint_all(now, false)?;
        }
        Ok(())
    }

    /// Resumes the inputs of feeds whose background sync has finished.
    fn resume_after_sync(&mut self) -> Result<(), String> {
        for (fi, feed) in self.feeds.iter_mut().enumerate() {
            if !feed.sync_wait {
                continue;
            }
            let done = feed.ring.background_sync_finished().map_err(|e| {
                format!(
                    "feed {}: sync {}: {e}",
                    feed.cfg.name,
                    feed.ring.path().display()
                )
            })?;
            if done {
                feed.sync_wait = false;
                queue_paused(&mut self.conns, &mut self.ready, fi);
            }
        }
        Ok(())
    }

    /// Checkpoints every ring; syncs those whose policy says so now (or all, with `force_sync`).
    fn checkpoint_all(&mut self, now: Instant, force_sync: bool) -> Result<(), String> {
        let wall = clock::wall_ns();
        let helper = &mut self.sync_helper;
        for feed in &mut self.feeds {
            for out in &feed.outputs {
                feed.ring.set_cursor_state(out.cursor(), out.health());
            }
            let sync = force_sync
                || match feed.cfg.sync {
                    SyncPolicy::Always => true,
                    SyncPolicy::Never => false,
                    SyncPolicy::Interval(p) => {
                        let due = now >= feed.next_sync;
                        if due {
                            feed.next_sync = now + p;
                        }
                        due
                    }
                };
            if sync && !matches!(feed.cfg.sync, SyncPolicy::Never) {
                for out in &feed.outputs {
                    if let Err(e) = out.sync() {
                        crate::log!(
                            Level::Error,
                            "output_sync_failed",
                            feed = feed.cfg.name,
                            output = out.name,
                            error = e
                        );
                    }
                }
            }
            let sync = sync && !matches!(feed.cfg.sync, SyncPolicy::Never);
            let res = if sync && !force_sync && matches!(feed.cfg.sync, SyncPolicy::Interval(_)) {
                // The disk works while the loop goes on; `always` and shutdown wait for it.
                feed.checkpoint_in_background(wall, now, helper.as_mut())
            } else {
                feed.ring.checkpoint(wall, sync)
            };
            res.map_err(|e| {
                format!(
                    "feed {}: checkpoint {}: {e}",
                    feed.cfg.name,
                    feed.ring.path().display()
                )
            })?;
        }
        Ok(())
    }

    fn write_outputs(&mut self, now: Instant) {
        let registry = self.poll.registry();
        let more = std::mem::take(&mut self.more);
        for (fi, feed) in self.feeds.iter_mut().enumerate() {
            let dirty = std::mem::take(&mut feed.dirty);
            let mut wrote = false;
            for (oi, out) in feed.outputs.iter_mut().enumerate() {
                if !(dirty || more.contains(&(fi, oi))) || !out.can_write() {
                    continue;
                }
                wrote = true;
                if out.write(registry, &mut feed.ring, now) == Pass::More {
                    self.more.push((fi, oi));
                }
            }
            // A `block` feed whose outputs may have moved on may take records again (a block
            // ring's tail moves only when an append needs the room, so a commit alone does not
            // show there); a ring still full pauses its senders again.
            if feed.paused && (wrote || dirty) {
                feed.paused = false;
                queue_paused(&mut self.conns, &mut self.ready, fi);
            }
        }
    }

    /// Counts the alerts raised this turn and appends them to the alert feed's ring.
    fn raise_alerts(&mut self) {
        let mut alerts = std::mem::take(&mut self.pending_alerts);
        for feed in &mut self.feeds {
            for out in &mut feed.outputs {
                alerts.append(&mut out.alerts);
            }
        }
        if alerts.is_empty() {
            self.pending_alerts = alerts;
            return;
        }
        let now_ns = clock::wall_ns();
        for a in alerts.drain(..) {
            self.alert_stats.raised[a.kind.index()] += 1;
            let Some(feed) = self
                .cfg
                .relay
                .alert_feed
                .as_ref()
                .and_then(|name| self.feeds.iter_mut().find(|f| &f.cfg.name == name))
            else {
                continue;
            };
            let record = a.to_json(&self.instance, now_ns);
            match feed.ring.append(record.as_bytes(), now_ns, false) {
                Ok(_) => {
                    self.alert_stats.written += 1;
                    feed.dirty = true;
                }
                Err(e @ (AppendError::Full | AppendError::TooLarge)) => {
                    self.alert_stats.refused += 1;
                    crate::log!(
                        Level::Error,
                        "alert_record_refused",
                        feed = feed.cfg.name,
                        alert = a.kind.name(),
                        error = match e {
                            AppendError::Full =>
                                "the alert feed's ring is full (when_full = block)",
                            AppendError::TooLarge =>
                                "the alert record is longer than the alert feed's max_record_bytes",
                        }
                    );
                }
            }
        }
        // Keep the allocation for the next turn.
        self.pending_alerts = alerts;
    }

    /// SIGHUP: re-reads the configuration file; applies what can change live (output rate
    /// limits, `tcp` output addresses, `standby_poll`, `checkpoint_interval`) and logs, per
    /// changed key, what needs a restart. A file that no longer validates changes nothing.
    ///
    /// Hook for TLS (inputs and outputs, another issue): reload certificates and keys here,
    /// after the file validated, and log `reload_applied key=...` per reloaded file.
    pub fn reload(&mut self, now: Instant) {
        let path = self.cfg.path.clone();
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    crate::log!(Level::Warn, "reload_config_error", error = e);
                }
                crate::log!(
                    Level::Warn,
                    "reload_failed",
                    config = path.display(),
                    errors = errors.len(),
                    action = "kept the running configuration"
                );
                return;
            }
        };
        let changes = reload::diff(&self.cfg, &new);
        let standby = matches!(self.role, Role::Standby { .. });
        let (mut applied, mut restart) = (0, 0);
        for change in &changes {
            match change {
                reload::Change::RateLimit {
                    feed,
                    output,
                    from,
                    to,
                } => {
                    let name = &self.cfg.feeds[*feed].name;
                    if let Some(out) = self
                        .feeds
                        .iter_mut()
                        .find(|f| &f.cfg.name == name)
                        .and_then(|f| f.outputs.get_mut(*output))
                    {
                        out.set_rate_limit(*to, now);
                    }
                    self.cfg.feeds[*feed].outputs[*output].rate_limit_eps = *to;
                    applied += 1;
                    crate::log!(
                        Level::Info,
                        "reload_applied",
                        feed = self.cfg.feeds[*feed].name,
                        output = self.cfg.feeds[*feed].outputs[*output].name,
                        key = "rate_limit_eps",
                        from = from,
                        to = to
                    );
                }
                reload::Change::Address {
                    feed,
                    output,
                    from,
                    to,
                } => {
                    let name = &self.cfg.feeds[*feed].name;
                    if let Some(f) = self.feeds.iter_mut().find(|f| &f.cfg.name == name) {
                        if let Some(out) = f.outputs.get_mut(*output) {
                            out.set_address(self.poll.registry(), to, now);
                        }
                    }
                    if let crate::config::OutputKind::Tcp(t) =
                        &mut self.cfg.feeds[*feed].outputs[*output].kind
                    {
                        t.address.clone_from(to);
                    }
                    applied += 1;
                    crate::log!(
                        Level::Info,
                        "reload_applied",
                        feed = self.cfg.feeds[*feed].name,
                        output = self.cfg.feeds[*feed].outputs[*output].name,
                        key = "address",
                        from = from,
                        to = to
                    );
                }
                reload::Change::RelayTiming { key } => {
                    self.cfg.relay.standby_poll = new.relay.standby_poll;
                    self.cfg.relay.checkpoint_interval = new.relay.checkpoint_interval;
                    self.checkpoint_every = new.relay.checkpoint_interval;
                    self.next_checkpoint = self.next_checkpoint.min(now + self.checkpoint_every);
                    applied += 1;
                    crate::log!(Level::Info, "reload_applied", key = key);
                }
                reload::Change::FeedNeedsRestart { key } if standby => {
                    applied += 1;
                    crate::log!(
                        Level::Info,
                        "reload_applied",
                        key = key,
                        note = "standby: takes effect when this instance becomes active"
                    );
                }
                reload::Change::FeedNeedsRestart { key }
                | reload::Change::RelayNeedsRestart { key } => {
                    restart += 1;
                    crate::log!(
                        Level::Warn,
                        "reload_needs_restart",
                        key = key,
                        config = path.display()
                    );
                }
            }
        }
        if standby {
            // Nothing is open yet: the feeds as the file now says are what a promotion opens.
            self.cfg.feeds = new.feeds;
        }
        crate::log!(
            Level::Info,
            "reloaded",
            config = path.display(),
            role = self.role.name(),
            changes = changes.len(),
            applied = applied,
            need_restart = restart
        );
    }

    /// Stops accepting, reads what senders already sent, checkpoints every ring with a sync.
    pub fn finish(&mut self) -> Result<(), String> {
        for feed in &mut self.feeds {
            if let Some(mut l) = feed.listener.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        // Read what senders already handed to the kernel before we go: until every connection
        // has been quiet for DRAIN_QUIET (longer than a sender's Nagle delay waiting for our
        // delayed ACK, 40 ms on Linux), or DRAIN_LIMIT.
        let start = clock::now();
        let (mut passes, mut last_data, start_bytes) = (0, start, self.bytes_in);
        while clock::now() < start + DRAIN_LIMIT && clock::now() < last_data + DRAIN_QUIET {
            passes += 1;
            let before = self.bytes_in;
            for id in 0..self.conns.len() {
                self.service_conn(id, clock::now(), true);
            }
            if self.bytes_in == before {
                std::thread::sleep(Duration::from_millis(5));
            } else {
                last_data = clock::now();
            }
        }
        let received: u64 = self.feeds.iter().map(|f| f.stats.records).sum();
        let now = clock::now();
        for feed in &mut self.feeds {
            for out in &mut feed.outputs {
                out.on_shutdown(&mut feed.ring, now);
            }
        }
        self.checkpoint_all(now, true)?;
        crate::log!(
            Level::Info,
            "stopped",
            records_received = received,
            drained_bytes = self.bytes_in - start_bytes,
            drain_passes = passes
        );
        Ok(())
    }

    /// The address feed `i` listens on.
    pub fn listen_addr(&self, i: usize) -> SocketAddr {
        self.feeds[i].local_addr
    }
}
