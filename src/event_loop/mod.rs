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
//! [`crate::ha::Ha`] decides the role, sans I/O; the loop asks it what is due at the start of
//! every turn (a standby's try of the lock, an active's fencing check) and does the file I/O:
//! taking the lock, opening and recovering the rings, binding the listeners
//! (`activate.rs`: a promotion is a start), reading the epochs back. A fenced instance
//! stops at once ([`Outcome::Fenced`], exit code 3) without writing to its rings again.
//!
//! With a lease (`[relay] lease`, on NFS by default; [`crate::ha::lease`]) the loop checks the
//! lease's deadline first on every wake, before it applies any reply, and again before reading
//! connections and before writing outputs: one clock read each, no I/O. The sync helper does
//! the I/O that proves the lease (a heartbeat write) and reads the epochs past the page cache
//! ([`crate::ha::keeper`]); the loop never waits for it.
//!
//! ## Files
//! `mod.rs`: the loop, its tokens and dispatch; `activate.rs`: becoming active, standing by,
//! the fencing check; `timers.rs`: timers, checkpoints, output write passes, alerts;
//! `reload.rs`: SIGHUP; `sd_notify.rs`: systemd's notification socket.
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
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::admin;
use crate::admin::LoopStats;
use crate::alert::{Alert, AlertStats};
use crate::clock;
use crate::config::Config;
use crate::feed::{FailedFeed, Feed};
use crate::ha::{lock, Ha, Role, EXIT_FENCED};
use crate::input::Inputs;
use crate::log::{Level, Limiter};
use crate::sync_helper;
use lock::LockFile;
use sd_notify::Notifier;

mod activate;
mod timers;

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
    /// Last turn's `more`, read by `write_outputs` while it fills `more` again: the two swap,
    /// so neither loses its capacity (sized for every output at start).
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
    /// The heartbeat file the sync helper writes while a lease is kept
    /// (`<data_dir>/.heartbeat-<host>`; [`crate::ha::keeper`]).
    heartbeat_path: std::path::PathBuf,
    /// `data_dir` or the lock file is on NFS: a ring sync's `EIO` is a lost lock, not a disk.
    on_nfs: bool,
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
    for w in crate::preflight::warnings(&cfg) {
        crate::log!(Level::Warn, "storage_warning", warning = w.msg);
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

/// The event loop's poll, and the signalfd registered on it: signals arrive as readable
/// events, never in a handler.
fn poll_with_signals() -> Result<(Poll, SignalFd), String> {
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
    Ok((poll, signals))
}

/// This host's heartbeat file in `data_dir` (the lease keeper's, [`crate::ha::keeper`]): one
/// per host, its name from the host name with anything but `[A-Za-z0-9._-]` made `_`.
fn heartbeat_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    data_dir.join(format!(".heartbeat-{host}"))
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
        let (poll, signals) = poll_with_signals()?;
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
        // A lease: as configured, or on NFS the server's default (design §3.2).
        let on_nfs = crate::nfs::on_nfs(data_dir) || crate::nfs::on_nfs(&cfg.relay.lock_file);
        let lease = cfg
            .relay
            .lease
            .or(on_nfs.then_some(crate::config::DEFAULT_NFS_LEASE));
        let mut ha = Ha::new(cfg.relay.standby_poll, &cfg.relay.lock_file, now);
        ha.set_lease(lease);
        let heartbeat_path = heartbeat_path(data_dir);
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
            ha,
            fence_log: Limiter::new(3, Duration::from_secs(60)),
            notify,
            announced: false,
            next_watchdog,
            sync_helper: None,
            heartbeat_path,
            on_nfs,
        };
        crate::log!(
            Level::Info,
            "started",
            instance = cfg.relay.instance,
            feeds = cfg.feeds.len(),
            data_dir = data_dir.display(),
            lock_file = cfg.relay.lock_file.display(),
            storage = if on_nfs { "nfs" } else { "local" },
            lease_s = lease.map_or("off".to_string(), |l| format!("{:.1}", l.as_secs_f64())),
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
            // The lease's deadline before anything else, replies from the helper included: a
            // reply that arrives after a stall cannot revive a lease that ran out meanwhile.
            if self.lease_gate() {
                continue;
            }
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
            // Accepting, appending and answering 200 above; reading and appending below; sending
            // after: each only while the lease holds (one clock read, no I/O).
            if self.lease_gate() {
                continue;
            }
            self.inputs.serve_ready(&mut self.feeds, now);
            self.timers(now)?;
            if self.lease_gate() {
                continue;
            }
            self.write_outputs(now);
            self.raise_alerts();
            self.loop_stats.turns += 1;
            self.loop_stats.input_reads = self.inputs.reads;
            self.loop_stats.turn_max = self.loop_stats.turn_max.max(now.elapsed());
        }
    }

    /// With a lease: fences (and returns true) once it ran out. Without, or while it holds:
    /// false, at the cost of one clock read.
    fn lease_gate(&mut self) -> bool {
        if self.ha.lease_len().is_none() {
            return false;
        }
        let now = clock::now();
        match self.ha.lease_check(now) {
            Some(why) => {
                self.fence(&why, now);
                true
            }
            None => false,
        }
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

    /// Stops accepting, reads what senders already sent, checkpoints every ring with a sync.
    pub fn finish(&mut self) -> Result<(), String> {
        // No heartbeats from here on: the helper's watchdog must not take that for a frozen
        // loop. The drain below stops at the lease's deadline.
        if let Some(h) = self.sync_helper.as_mut() {
            h.disarm();
        }
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
        while clock::now() < start + DRAIN_LIMIT
            && clock::now() < last_data + DRAIN_QUIET
            && (self.ha.lease_len().is_none() || self.ha.may_write(clock::now()))
        {
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
