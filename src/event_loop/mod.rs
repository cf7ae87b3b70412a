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
//! file's epoch and its rings' epochs every [`ha::FENCE_CHECK`]; a higher one means another instance
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

pub mod reload;
pub mod sd_notify;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::admin;
use crate::admin::LoopStats;
use crate::alert::{Alert, AlertKind, AlertStats, Value};
use crate::clock;
use crate::config::{Config, FeedConfig, InputKind, SyncPolicy};
use crate::feed::{FailedFeed, Feed};
use crate::ha::{self, lock, Ha, Role, EXIT_FENCED};
use crate::input::framing::FramerConfig;
use crate::input::{FeedInput, Inputs};
use crate::log::{Level, Limiter};
use crate::output::{Output, Pass};
use crate::ring::sync_helper;
use crate::ring::{AppendError, OpenError, Ring, RingOptions};
use lock::{LockFile, LockRecord};
use sd_notify::Notifier;

const SIGNALS: Token = Token(0);
/// The sync helper's socket ([`sync_helper`]).
const SYNC_HELPER: Token = Token(998);
const LISTENER_BASE: usize = 1;
const OUTPUT_BASE: usize = 1_000;
const CONN_BASE: usize = 10_000;
/// Listen backlog of an input listener.
const LISTEN_BACKLOG: i32 = 4096;
/// How long a shutdown may spend reading what is already in socket buffers.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long every input must have been silent for the shutdown drain to end early.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// How often a feed whose inputs wait for its ring's background sync asks whether it finished.
const SYNC_WAIT_POLL: Duration = Duration::from_millis(5);
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

/// The running relay.
pub struct Relay {
    poll: Poll,
    /// The feeds that run, in configuration order (a feed's index here names its listener's
    /// and outputs' tokens).
    pub feeds: Vec<Feed>,
    /// The feeds whose ring could not be opened, in configuration order.
    pub failed: Vec<FailedFeed>,
    /// Every input connection.
    inputs: Inputs,
    /// Outputs (feed, output) with data left after their turn's budget, or made writable by
    /// an event this turn; each at most once.
    more: Vec<(usize, usize)>,
    /// Last turn's `more`, read by [`Relay::write_outputs`] while it fills `more` again: the
    /// two swap, so neither loses its capacity (sized for every output at start).
    more_now: Vec<(usize, usize)>,
    signals: SignalFd,
    checkpoint_every: Duration,
    next_checkpoint: Instant,
    stopping: bool,
    admin: Option<admin::Admin>,
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
    ha: Ha,
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
        let mut inputs = Inputs::new(
            poll.registry()
                .try_clone()
                .map_err(|e| format!("epoll registry: {e}"))?,
            CONN_BASE,
        );
        inputs.size_scratch(
            cfg.feeds
                .iter()
                .map(|f| f.max_record_bytes)
                .max()
                .unwrap_or(0),
        );
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
            instance: cfg.relay.instance.clone(),
            started_ns: clock::wall_ns(),
            poll,
            feeds: Vec::new(),
            failed: Vec::new(),
            inputs,
            more: Vec::new(),
            more_now: Vec::new(),
            signals,
            checkpoint_every: cfg.relay.checkpoint_interval,
            next_checkpoint: now + cfg.relay.checkpoint_interval,
            stopping: false,
            cfg: cfg.clone(),
            lock,
            ha: Ha::new(cfg.relay.standby_poll, &cfg.relay.lock_file, now),
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
        self.ha.role()
    }

    /// One place for role changes: logs `role=A=>B` and tells systemd.
    /// After every role change: systemd hears of it, once `READY=1` was sent.
    fn role_changed(&mut self, now: Instant) {
        if self.announced {
            let status = self.status_line();
            self.notify(&status, now);
        }
    }

    fn status_line(&self) -> String {
        match self.ha.role() {
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
        self.ha.lock_busy(now);
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
        if ha::next_epoch(previous.epoch, ring_max) > epoch {
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
        self.inputs.size_scratch(max_record);
        self.feeds = feeds;
        let outputs = self.feeds.iter().map(|f| f.outputs.len()).sum::<usize>();
        self.more.reserve(outputs);
        self.more_now.reserve(outputs);
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
        self.next_checkpoint = now + self.checkpoint_every;
        let reason = if previous.epoch > 0 {
            "lock acquired; previous active gone"
        } else {
            "lock acquired"
        };
        self.ha.activated(epoch, reason, now);
        self.role_changed(now);
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
                // `check` held the name to `NAME_MAX`, and an RFC 3339 time is 24 bytes.
                instance: self.instance.as_str().try_into().ok(),
                since: clock::rfc3339(clock::wall_ns()).as_str().try_into().ok(),
            })
            .map_err(|e| e.to_string())
    }

    /// An active's fencing check: tells [`Ha`] the lock file's epoch and every ring's. Returns
    /// why it is fenced now, if it is.
    fn check_epochs(&mut self, now: Instant) -> bool {
        let lock_file = self.lock.path().display();
        match self.lock.check() {
            Ok(rec) => {
                if self
                    .ha
                    .epoch_seen(rec.epoch, format_args!("lock file {lock_file}"))
                {
                    return true;
                }
            }
            Err(lock::CheckError::Lost(why)) => {
                let why =
                    format!("lock file {lock_file}: {why}: the lock no longer excludes anyone");
                if self.ha.lock_lost(&why) {
                    return true;
                }
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
            let path = feed.ring.path().display();
            if self.ha.epoch_seen(stored, format_args!("ring {path}")) {
                return true;
            }
        }
        false
    }

    /// Stops delivering at once: nothing more is written to a socket, a file or a ring.
    fn fence(&mut self, now: Instant) {
        self.notify("STOPPING=1", now);
        self.role_changed(now);
        crate::log!(
            Level::Error,
            "fenced",
            epoch = self.ha.role().epoch(),
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
        let framer = FramerConfig {
            framing: fc.framing,
            max_record: fc.max_record_bytes,
            oversize: fc.oversize,
        };
        Ok(Feed::new(
            fc.clone(),
            ring,
            FeedInput::new(Some(listener), local_addr, tls, framer),
            outputs,
            now,
        ))
    }

    /// Runs until SIGTERM/SIGINT (then drains and checkpoints), until fenced, or until `until`.
    pub fn run_until(&mut self, until: Option<Instant>) -> Result<Outcome, String> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = clock::now();
            if matches!(self.ha.role(), Role::Fenced { .. }) {
                return Ok(Outcome::Fenced);
            }
            if self.stopping {
                return self.finish().map(|()| Outcome::Stopped);
            }
            if until.is_some_and(|u| now >= u) {
                return Ok(Outcome::TimeUp);
            }
            let timeout = if !self.inputs.has_ready() && self.more.is_empty() {
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
            // A standby's try of the lock comes here too.
            self.ha_timer(now)?;
            if matches!(self.ha.role(), Role::Fenced { .. }) {
                continue;
            }
            self.inputs.begin_turn();
            for ev in events.iter() {
                self.dispatch(
                    ev.token(),
                    ev.is_readable() || ev.is_read_closed(),
                    ev.is_writable() || ev.is_error(),
                    now,
                );
            }
            self.inputs.serve_ready(&mut self.feeds, now);
            self.timers(now)?;
            self.write_outputs(now);
            self.raise_alerts();
            self.loop_stats.turns += 1;
            self.loop_stats.input_reads = self.inputs.reads;
            self.loop_stats.turn_max = self.loop_stats.turn_max.max(now.elapsed());
        }
    }

    /// What [`Ha`] has due: a standby's try of the lock, an active's fencing check.
    fn ha_timer(&mut self, now: Instant) -> Result<(), String> {
        match self.ha.on_tick(now) {
            Some(ha::Action::TryLock) => {
                if self.lock.try_lock().map_err(|e| e.to_string())? {
                    self.activate(now)?;
                } else {
                    self.ha.lock_busy(now);
                }
            }
            Some(ha::Action::CheckEpochs { .. }) if self.check_epochs(now) => self.fence(now),
            Some(ha::Action::CheckEpochs { .. }) | None => {}
        }
        Ok(())
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.next_checkpoint.min(now + Duration::from_secs(1));
        if let Some(at) = self.ha.poll_at() {
            next = next.min(at);
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
            if f.input.sync_wait {
                next = next.min(now + SYNC_WAIT_POLL);
            }
            if let Some(r) = f.input.accept_retry {
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
                        role: self.ha.role().name(),
                        epoch: self.ha.role().epoch(),
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
                self.inputs.accept(&mut self.feeds, t - LISTENER_BASE, now);
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
                        if feed.input.paused && feed.ring.cursor_pos(out.cursor()).seq != committed
                        {
                            feed.input.dirty = true;
                        }
                        if out.can_write() && !self.more.contains(&(fi, oi)) {
                            self.more.push((fi, oi));
                        }
                    }
                }
            }
            t if t >= CONN_BASE => {
                let id = t - CONN_BASE;
                self.inputs.service_conn(&mut self.feeds, id, now, false)
            }
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
                        role = self.ha.role().name()
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
                        feed.input.tls = Some(cfg);
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
        let registry = self.poll.registry();
        for (fi, feed) in self.feeds.iter_mut().enumerate() {
            for (oi, out) in feed.outputs.iter_mut().enumerate() {
                if out.deadline().is_some_and(|d| d <= now) {
                    let token = Token(OUTPUT_BASE + fi * 16 + oi);
                    out.on_timer(registry, token, &mut feed.ring, now);
                    if out.can_write() {
                        feed.input.dirty = true;
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
        self.inputs.resume_accepts(&mut self.feeds, now);
        if now >= self.next_checkpoint {
            self.next_checkpoint = now + self.checkpoint_every;
            for feed in &mut self.feeds {
                feed.measure(now, &mut self.pending_alerts);
                for out in &mut feed.outputs {
                    out.tick(&feed.ring, now);
                }
            }
            self.inputs.close_idle(&mut self.feeds, now);
            self.inputs.expire_requests(&mut self.feeds, now);
            self.checkpoint_all(now, false)?;
        }
        Ok(())
    }

    /// Resumes the inputs of feeds whose background sync has finished.
    fn resume_after_sync(&mut self) -> Result<(), String> {
        for (fi, feed) in self.feeds.iter_mut().enumerate() {
            if !feed.input.sync_wait {
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
                feed.input.sync_wait = false;
                self.inputs.resume_feed(fi);
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
        std::mem::swap(&mut self.more, &mut self.more_now);
        let more = &self.more_now;
        for (fi, feed) in self.feeds.iter_mut().enumerate() {
            let dirty = std::mem::take(&mut feed.input.dirty);
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
            if feed.input.paused && (wrote || dirty) {
                feed.input.paused = false;
                self.inputs.resume_feed(fi);
            }
        }
        self.more_now.clear();
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
                    feed.input.dirty = true;
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
        let standby = matches!(self.ha.role(), Role::Standby { .. });
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
                    self.ha.set_standby_poll(new.relay.standby_poll);
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
            role = self.ha.role().name(),
            changes = changes.len(),
            applied = applied,
            need_restart = restart
        );
    }

    /// Stops accepting, reads what senders already sent, checkpoints every ring with a sync.
    pub fn finish(&mut self) -> Result<(), String> {
        for feed in &mut self.feeds {
            if let Some(mut l) = feed.input.listener.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
        // Read what senders already handed to the kernel before we go: until every connection
        // has been quiet for DRAIN_QUIET (longer than a sender's Nagle delay waiting for our
        // delayed ACK, 40 ms on Linux), or DRAIN_LIMIT.
        let start = clock::now();
        let (mut passes, mut last_data, start_bytes) = (0, start, self.inputs.bytes_in);
        while clock::now() < start + DRAIN_LIMIT && clock::now() < last_data + DRAIN_QUIET {
            passes += 1;
            let before = self.inputs.bytes_in;
            self.inputs.drain(&mut self.feeds, clock::now());
            if self.inputs.bytes_in == before {
                std::thread::sleep(Duration::from_millis(5));
            } else {
                last_data = clock::now();
            }
        }
        let received: u64 = self.feeds.iter().map(|f| f.input.stats.records).sum();
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
            drained_bytes = self.inputs.bytes_in - start_bytes,
            drain_passes = passes
        );
        Ok(())
    }

    /// The address feed `i` listens on.
    pub fn listen_addr(&self, i: usize) -> SocketAddr {
        self.feeds[i].input.local_addr
    }
}
