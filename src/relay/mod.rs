//! The relay: one thread, one `mio::Poll`, every listener, connection, output, timer and signal.
//!
//! ## The loop
//! Each turn: wait for events (or the nearest deadline), handle them, read connections that still
//! have data, run timers that expired, then let outputs write what was appended. mio is
//! edge-triggered, so a connection or output that stopped before `WouldBlock` because its turn's
//! budget ran out is kept on a list and served again next turn with a zero timeout: one busy
//! connection cannot starve the others, and none is forgotten.
//!
//! ## Tokens
//! `SIGNALS` = 0; listeners `1 + feed`; the admin listener 999, admin connections 5000 + slot;
//! outputs `OUTPUT_BASE + feed * 16 + output`; connections
//! `CONN_BASE + slot`. Events for tokens that no longer exist are ignored (a closed connection
//! can still have a queued event).

mod admin;
pub mod alert;
pub mod http;
mod input;
pub mod output;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::clock;
use crate::config::{Config, FeedConfig, SyncPolicy};
use crate::framing::FramerConfig;
use crate::log::{Level, Limiter};
use crate::ring::{AppendError, Ring, RingOptions};
use alert::{Alert, AlertKind, AlertStats, Value};
use input::Conn;
use output::{Output, Pass};

const SIGNALS: Token = Token(0);
const LISTENER_BASE: usize = 1;
const OUTPUT_BASE: usize = 1_000;
const CONN_BASE: usize = 10_000;
/// Bytes read per `read` call, on top of room for one partial record.
const READ_CHUNK: usize = 256 << 10;
/// Reads one connection may do per turn.
const READS_PER_TURN: usize = 4;
/// How long a shutdown may spend reading what is already in socket buffers.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long every input must have been silent for the shutdown drain to end early.
const DRAIN_QUIET: Duration = Duration::from_millis(100);

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
    /// Partial frames lost when the sender closed.
    pub incomplete_at_eof: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused at `max_connections`.
    pub refused: u64,
    /// Connections closed for idling.
    pub idle_closed: u64,
    /// Times the ring was full in `block` mode.
    pub blocked: u64,
}

/// One feed: its ring, listener, outputs.
pub struct Feed {
    /// Its configuration.
    pub cfg: FeedConfig,
    /// Its ring.
    pub ring: Ring,
    listener: Option<TcpListener>,
    /// The address the listener is bound to.
    pub local_addr: SocketAddr,
    /// Its outputs.
    pub outputs: Vec<Output>,
    /// Counters.
    pub stats: FeedStats,
    framer: FramerConfig,
    conns: usize,
    /// Records were appended since the outputs last wrote.
    dirty: bool,
    /// Connections are paused because the ring is full (`block`).
    paused: bool,
    next_sync: Instant,
    refuse_log: Limiter,
    rate: InputRate,
    /// Coverage is below `retention` (logged at the transition).
    coverage_low: bool,
}

/// The feed's input rate in ring bytes per second, smoothed over about half a minute.
#[derive(Clone, Copy, Debug)]
struct InputRate {
    last_bytes: u64,
    last_at: Instant,
    bytes_per_s: Option<f64>,
}

/// Ring bytes per record besides its payload, on average: the header and half the padding.
const RECORD_OVERHEAD: u64 = crate::ring::RECORD_HEADER + 4;
const RATE_SMOOTHING_SECS: f64 = 30.0;

impl Feed {
    /// Seconds of input the ring holds at the current input rate; `None` while idle.
    pub fn coverage_secs(&self) -> Option<f64> {
        self.rate
            .bytes_per_s
            .filter(|r| *r >= 1.0)
            .map(|r| self.ring.capacity() as f64 / r)
    }

    fn ring_bytes_in(&self) -> u64 {
        self.stats.bytes + self.stats.records * RECORD_OVERHEAD
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
        let bytes = self.ring_bytes_in();
        let sample = (bytes - self.rate.last_bytes) as f64 / dt;
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

/// The running relay.
pub struct Relay {
    poll: Poll,
    /// The feeds, in configuration order.
    pub feeds: Vec<Feed>,
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
    conn_log: Limiter,
    admin: Option<admin::Admin>,
    /// Bytes read from input connections, for the shutdown drain.
    bytes_in: u64,
    instance: String,
    started_ns: u64,
    /// Index of `[relay] alert_feed`.
    alert_feed: Option<usize>,
    /// Alerts raised by feeds, waiting to be counted and written.
    pending_alerts: Vec<Alert>,
    /// Alert counters.
    pub alert_stats: AlertStats,
}

/// `ringrelay check --config FILE`.
pub fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(cfg) => {
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
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("{}: {} error(s)", path.display(), errors.len());
            ExitCode::from(2)
        }
    }
}

/// `ringrelay run --config FILE`: exit 0 after SIGTERM/SIGINT, 2 for a bad config, 1 when the
/// relay cannot start or fails.
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
    match relay.run_until(None) {
        Ok(()) => ExitCode::SUCCESS,
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

impl Relay {
    /// Opens every ring (recovering it), binds every listener, sets up outputs and signals.
    pub fn start(cfg: &Config) -> Result<Relay, String> {
        let data_dir = &cfg.relay.data_dir;
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("create data_dir {}: {e}", data_dir.display()))?;
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
        let mut feeds = Vec::with_capacity(cfg.feeds.len());
        let mut max_record = 0;
        for (i, fc) in cfg.feeds.iter().enumerate() {
            let feed = Self::start_feed(&poll, data_dir, i, fc, now)?;
            max_record = max_record.max(fc.max_record_bytes);
            feeds.push(feed);
        }
        crate::log!(
            Level::Info,
            "started",
            instance = cfg.relay.instance,
            feeds = feeds.len(),
            data_dir = data_dir.display(),
            pid = std::process::id()
        );
        let admin = match cfg.relay.admin_listen {
            Some(addr) => Some(admin::Admin::bind(poll.registry(), addr)?),
            None => None,
        };
        let alert_feed = cfg
            .relay
            .alert_feed
            .as_ref()
            .and_then(|n| cfg.feeds.iter().position(|f| &f.name == n));
        Ok(Relay {
            alert_feed,
            pending_alerts: Vec::new(),
            alert_stats: AlertStats::default(),
            admin,
            bytes_in: 0,
            instance: cfg.relay.instance.clone(),
            started_ns: clock::wall_ns(),
            poll,
            feeds,
            conns: Vec::new(),
            free_slots: Vec::new(),
            ready: Vec::new(),
            more: Vec::new(),
            signals,
            scratch: vec![0u8; max_record + 64 + READ_CHUNK],
            checkpoint_every: cfg.relay.checkpoint_interval,
            next_checkpoint: now + cfg.relay.checkpoint_interval,
            stopping: false,
            conn_log: Limiter::new(20, Duration::from_secs(60)),
        })
    }

    fn start_feed(
        poll: &Poll,
        data_dir: &Path,
        i: usize,
        fc: &FeedConfig,
        now: Instant,
    ) -> Result<Feed, String> {
        let path = data_dir.join(format!("{}.ring", fc.name));
        let opts = RingOptions {
            capacity: fc.capacity,
            max_record: u32::try_from(fc.max_record_bytes).unwrap_or(u32::MAX),
            when_full: fc.when_full,
            name: fc.name.clone(),
        };
        let mut ring = Ring::open(&path, &opts).map_err(|e| format!("feed {}: {e}", fc.name))?;
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
        let mut outputs = Vec::with_capacity(fc.outputs.len());
        for oc in &fc.outputs {
            outputs.push(Output::new(&fc.name, oc, &mut ring, last_checkpoint, now)?);
        }
        let mut listener = TcpListener::bind(fc.input.listen).map_err(|e| {
            format!(
                "feed {}: cannot listen on {}: {e}",
                fc.name, fc.input.listen
            )
        })?;
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
            local_addr,
            outputs,
            stats: FeedStats::default(),
            conns: 0,
            dirty: true,
            paused: false,
            next_sync: now,
            refuse_log: Limiter::new(5, Duration::from_secs(60)),
            rate: InputRate {
                last_bytes: 0,
                last_at: now,
                bytes_per_s: None,
            },
            coverage_low: false,
        })
    }

    /// Runs until SIGTERM/SIGINT (then drains and checkpoints) or until `until`.
    pub fn run_until(&mut self, until: Option<Instant>) -> Result<(), String> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = clock::now();
            if self.stopping {
                return self.finish();
            }
            if until.is_some_and(|u| now >= u) {
                return Ok(());
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
            for ev in events.iter() {
                self.dispatch(
                    ev.token(),
                    ev.is_readable() || ev.is_read_closed(),
                    ev.is_writable() || ev.is_error(),
                    now,
                );
            }
            let ready = std::mem::take(&mut self.ready);
            for id in ready {
                self.service_conn(id, now, false);
            }
            self.timers(now)?;
            self.write_outputs(now);
            self.raise_alerts();
        }
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.next_checkpoint.min(now + Duration::from_secs(1));
        if let Some(d) = self.admin.as_ref().and_then(admin::Admin::deadline) {
            next = next.min(d);
        }
        for f in &self.feeds {
            for o in &f.outputs {
                if let Some(d) = o.deadline() {
                    next = next.min(d);
                }
            }
        }
        next
    }

    fn dispatch(&mut self, token: Token, readable: bool, writable: bool, now: Instant) {
        match token.0 {
            0 => self.on_signal(),
            t if t == admin::LISTENER.0 => {
                if let Some(a) = self.admin.as_mut() {
                    a.accept(self.poll.registry(), now);
                }
            }
            t if (admin::CONN_BASE..admin::CONN_BASE + admin::MAX_CONNS).contains(&t) => {
                if let Some(a) = self.admin.as_mut() {
                    let summary = admin::Summary {
                        instance: &self.instance,
                        role: "active",
                        started_ns: self.started_ns,
                        alerts: &self.alert_stats,
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
                        out.on_event(registry, &mut feed.ring, readable, writable, now);
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

    fn on_signal(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let sig = Signal::try_from(info.ssi_signo as i32).map_or("?", |s| s.as_str());
            match info.ssi_signo as i32 {
                x if x == Signal::SIGHUP as i32 => crate::log!(
                    Level::Warn,
                    "sighup_ignored",
                    reason = "this version reloads nothing; restart to apply configuration changes"
                ),
                _ => {
                    crate::log!(Level::Info, "stopping", signal = sig);
                    self.stopping = true;
                }
            }
        }
    }

    fn timers(&mut self, now: Instant) -> Result<(), String> {
        let registry = self.poll.registry();
        for (fi, feed) in self.feeds.iter_mut().enumerate() {
            for (oi, out) in feed.outputs.iter_mut().enumerate() {
                if out.deadline().is_some_and(|d| d <= now) {
                    let token = Token(OUTPUT_BASE + fi * 16 + oi);
                    out.on_timer(registry, token, &feed.ring, now);
                    if out.can_write() {
                        feed.dirty = true;
                    }
                }
            }
        }
        if let Some(a) = self.admin.as_mut() {
            a.expire(registry, now);
        }
        if now >= self.next_checkpoint {
            self.next_checkpoint = now + self.checkpoint_every;
            for feed in &mut self.feeds {
                feed.measure(now, &mut self.pending_alerts);
            }
            self.close_idle(now);
            self.checkpoint_all(now, false)?;
        }
        Ok(())
    }

    /// Checkpoints every ring; syncs those whose policy says so now (or all, with `force_sync`).
    fn checkpoint_all(&mut self, now: Instant, force_sync: bool) -> Result<(), String> {
        let wall = clock::wall_ns();
        for feed in &mut self.feeds {
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
            feed.ring
                .checkpoint(wall, sync && !matches!(feed.cfg.sync, SyncPolicy::Never))
                .map_err(|e| {
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
            let before = feed.ring.tail();
            for (oi, out) in feed.outputs.iter_mut().enumerate() {
                if !(dirty || more.contains(&(fi, oi))) || !out.can_write() {
                    continue;
                }
                if out.write(registry, &mut feed.ring, now) == Pass::More {
                    self.more.push((fi, oi));
                }
            }
            // A `block` feed whose outputs moved on may take records again.
            if feed.paused && (feed.ring.tail() != before || !self.more.is_empty() || dirty) {
                feed.paused = false;
                for (id, c) in self.conns.iter().enumerate() {
                    if c.as_ref().is_some_and(|c| c.feed == fi && c.paused) {
                        self.ready.push(id);
                    }
                }
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
            let Some(feed) = self.alert_feed.and_then(|i| self.feeds.get_mut(i)) else {
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
        self.checkpoint_all(clock::now(), true)?;
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
