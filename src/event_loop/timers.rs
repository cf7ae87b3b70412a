//! The loop's timers and its end of turn: the watchdog, the role's timer, output deadlines,
//! checkpoints and syncs, the outputs' write passes, and the alerts raised meanwhile.

use std::time::{Duration, Instant};

use mio::Token;

use super::sd_notify::Notifier;
use super::{Relay, OUTPUT_BASE};
use crate::clock;
use crate::config::SyncPolicy;
use crate::ha;
use crate::log::Level;
use crate::output::Pass;
use crate::ring::AppendError;
use crate::sync_helper;

impl Relay {
    /// The sync helper's socket: syncs done, or the helper gone.
    pub(super) fn on_sync_helper(&mut self, now: Instant) {
        let Some(h) = self.sync_helper.as_mut() else {
            return;
        };
        for ev in h.on_event(self.poll.registry(), now) {
            match ev {
                sync_helper::Event::Done(ticket, res) => {
                    // On NFS, EIO from a sync is a lost lock (the server expired this client
                    // and another instance may hold the lock): fenced, not a disk error.
                    if self.on_nfs
                        && res
                            .as_ref()
                            .is_err_and(|e| e.raw_os_error() == Some(libc::EIO))
                    {
                        let why = "a ring sync failed with EIO on NFS: the lock was lost to a lease expiry and another instance may hold it";
                        if self.ha.lock_lost(why) {
                            self.fence(why, now);
                            return;
                        }
                    }
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
                sync_helper::Event::Heartbeat(requested, res) => {
                    let why = self
                        .ha
                        .heartbeat(requested, res.map(|_| ()), now)
                        .or_else(|| {
                            // The epochs as the storage holds them, past the page cache.
                            let (lock_epoch, ring_epoch) = res.ok()?;
                            let lock_file = self.lock.path().display();
                            self.ha
                                .epoch_seen(lock_epoch, format_args!("lock file {lock_file}"))
                                .or_else(|| {
                                    self.ha.epoch_seen(
                                        ring_epoch,
                                        format_args!(
                                            "a ring in {}",
                                            self.cfg.relay.data_dir.display()
                                        ),
                                    )
                                })
                        });
                    if let Some(why) = why {
                        self.fence(&why, now);
                        return;
                    }
                    if let Err(errno) = res {
                        if let Some(suppressed) = self.fence_log.allow(now) {
                            crate::log!(
                                Level::Warn,
                                "heartbeat_failed",
                                path = self.heartbeat_path.display(),
                                error = std::io::Error::from_raw_os_error(errno),
                                suppressed = suppressed,
                                action = "no lease renewal; fenced at the deadline unless a heartbeat succeeds"
                            );
                        }
                    }
                }
                sync_helper::Event::Restarted => {}
                // The rings go back to the kernel's sync at their next checkpoint, syncing
                // there what the helper did not report.
                sync_helper::Event::Gone => {
                    self.sync_helper = None;
                    if let Some(lease) = self.ha.lease_len() {
                        crate::log!(
                            Level::Error,
                            "lease_unrenewable",
                            lease_s = lease.as_secs(),
                            reason =
                                "the sync helper, which heartbeats the lease, is gone for good",
                            action = "fenced at the lease deadline; systemd restarts the relay"
                        );
                    }
                }
            }
        }
    }

    /// With a lease, hands the sync helper a heartbeat (one at a time) with the files whose
    /// epochs it reads past the page cache ([`crate::ha::keeper`]).
    fn request_heartbeat(&mut self, now: Instant) {
        let Some(lease) = self.ha.lease_len() else {
            return;
        };
        let Some(h) = self.sync_helper.as_mut() else {
            return;
        };
        if h.heartbeat_pending() {
            return;
        }
        let req = crate::ha::keeper::Request {
            budget: crate::ha::lease::budget(lease),
            heartbeat: self.heartbeat_path.clone(),
            lock_file: self.lock.path().to_path_buf(),
            rings: self
                .feeds
                .iter()
                .map(|f| f.ring.path().to_path_buf())
                .collect(),
        };
        h.heartbeat(&req, now);
    }

    /// What [`Ha`] has due: a standby's try of the lock, an active's fencing check.
    pub(super) fn ha_timer(&mut self, now: Instant) -> Result<(), String> {
        match self.ha.on_tick(now) {
            Some(ha::Action::TryLock) => {
                if self.lock.try_lock().map_err(|e| e.to_string())? {
                    self.activate(now)?;
                } else {
                    self.ha.lock_busy(now);
                }
            }
            Some(ha::Action::CheckEpochs { .. }) => {
                self.request_heartbeat(now);
                if let Some(why) = self.check_epochs(now) {
                    self.fence(&why, now);
                }
            }
            None => {}
        }
        Ok(())
    }

    pub(super) fn timers(&mut self, now: Instant) -> Result<(), String> {
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
    pub(super) fn resume_after_sync(&mut self) -> Result<(), String> {
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
    pub(super) fn checkpoint_all(&mut self, now: Instant, force_sync: bool) -> Result<(), String> {
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
                            output = out.name(),
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

    pub(super) fn write_outputs(&mut self, now: Instant) {
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
    pub(super) fn raise_alerts(&mut self) {
        let mut alerts = std::mem::take(&mut self.pending_alerts);
        for feed in &mut self.feeds {
            for out in &mut feed.outputs {
                out.take_alerts(&mut alerts);
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
}
