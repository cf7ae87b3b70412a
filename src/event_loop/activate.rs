//! Becoming active and standing by: the lock, the epoch, the rings opened and recovered, the
//! listeners bound, the outputs set up to resume from their cursors; and the fencing check
//! that stops an active for good once another took over ([`crate::ha`] decides, this does the
//! I/O).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use mio::net::TcpListener;
use mio::{Interest, Poll, Token};

use super::{Relay, LISTENER_BASE, LISTEN_BACKLOG};
use crate::alert::{Alert, AlertKind, Value};
use crate::clock;
use crate::config::FeedConfig;
use crate::feed::{FailedFeed, Feed};
use crate::ha::lock::{self, LockRecord};
use crate::ha::{self, EXIT_FENCED};
use crate::input::framing::FramerConfig;
use crate::input::FeedInput;
use crate::log::Level;
use crate::output::Output;
use crate::ring::{OpenError, Ring, RingOptions};
use crate::tls::log_expired;

impl Relay {
    /// Standby: the lock is held elsewhere; try again every `standby_poll`.
    pub(super) fn enter_standby(&mut self, now: Instant) {
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

    /// Opens (recovers) every feed's ring and starts the feeds whose ring opened; a ring that
    /// did not open fails its feed alone ([`FailedFeed`]), unless another process holds it.
    fn open_feeds(&self, now: Instant) -> Result<(Vec<Feed>, Vec<FailedFeed>), String> {
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
        Ok((feeds, failed))
    }

    /// Becomes active (the lock is held): a new epoch into the lock file, every ring opened and
    /// recovered and stamped with the epoch, every listener bound, every output set up to resume
    /// from its cursor with the replay window. The start of an active and the promotion of a
    /// standby both come here.
    pub(super) fn activate(&mut self, now: Instant) -> Result<(), String> {
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
        let (mut feeds, failed) = self.open_feeds(now)?;
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
                detail: crate::alert::Details::from_array([
                    ("path", Value::Text(f.path.display().to_string())),
                    ("error", Value::Text(f.error.clone())),
                ]),
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

    pub(super) fn feeds_max_record(&self) -> usize {
        self.cfg
            .feeds
            .iter()
            .map(|f| f.max_record_bytes)
            .max()
            .unwrap_or(0)
    }

    pub(super) fn write_lock(&mut self, epoch: u64) -> Result<(), String> {
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

    /// An active's fencing check: tells [`ha::Ha`] the lock file's epoch and every ring's.
    /// Returns why it is fenced now, if it is.
    pub(super) fn check_epochs(&mut self, now: Instant) -> Option<String> {
        let lock_file = self.lock.path().display();
        match self.lock.check() {
            Ok(rec) => {
                let why = self
                    .ha
                    .epoch_seen(rec.epoch, format_args!("lock file {lock_file}"));
                if why.is_some() {
                    return why;
                }
            }
            Err(lock::CheckError::Lost(why)) => {
                let why =
                    format!("lock file {lock_file}: {why}: the lock no longer excludes anyone");
                if self.ha.lock_lost(&why) {
                    return Some(why);
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
        // With a lease (NFS), the mapping would show this instance's own pages, never another
        // VM's: the sync helper reads the rings' epochs past the page cache instead.
        if self.ha.lease_len().is_some() {
            return None;
        }
        for feed in &self.feeds {
            let stored = feed.ring.stored_epoch();
            let path = feed.ring.path().display();
            let why = self.ha.epoch_seen(stored, format_args!("ring {path}"));
            if why.is_some() {
                return why;
            }
        }
        None
    }

    /// Stops delivering at once: nothing more is written to a socket, a file or a ring.
    pub(super) fn fence(&mut self, why: &str, now: Instant) {
        self.notify("STOPPING=1", now);
        self.role_changed(now);
        crate::log!(
            Level::Error,
            "fenced",
            epoch = self.ha.role().epoch(),
            reason = why,
            action = format!(
                "stopped delivering without writing the rings again; exiting with code {EXIT_FENCED}"
            )
        );
    }

    /// Feed `fc` cannot run: its ring at `path` did not open. Logs it once with the fix.
    pub(super) fn feed_failed(fc: &FeedConfig, path: PathBuf, e: &OpenError) -> FailedFeed {
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

    pub(super) fn start_feed(
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
        let mut outputs = crate::feed::Outputs::new();
        for oc in &fc.outputs {
            let out = Output::new(&fc.name, instance, oc, &mut ring, last_checkpoint, now)?;
            if outputs.push(out).is_err() {
                // `check` refuses a feed with more (a bug if it did not).
                return Err(format!(
                    "feed {}: more than {} outputs",
                    fc.name,
                    crate::config::MAX_OUTPUTS
                ));
            }
        }
        let (listener, local_addr) = bind_input(poll, i, fc)?;
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
}

/// Binds feed `fc`'s listener (feed index `i`) with the relay's listen backlog and registers
/// it with `poll`.
fn bind_input(poll: &Poll, i: usize, fc: &FeedConfig) -> Result<(TcpListener, SocketAddr), String> {
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
    Ok((listener, local_addr))
}
