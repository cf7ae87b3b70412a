//! A feed as the relay runs it: its ring, its input side, its outputs, and what the event
//! loop keeps for it between turns (its ring's sync, its input rate and coverage).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::alert::{Alert, AlertKind, Value};
use crate::config::{FeedConfig, MAX_OUTPUTS};
use crate::input::{FeedIn, FeedInput, Feeds};
use crate::log::{Level, Limiter};
use crate::output::Output;
use crate::ring::{BackgroundCheckpoint, Ring};
use crate::sync_helper;

/// A feed's outputs, held in place.
pub type Outputs = heapless::Vec<Output, MAX_OUTPUTS>;

/// One feed: its ring, its input side, its outputs.
pub struct Feed {
    /// Its configuration.
    pub cfg: FeedConfig,
    /// Its ring.
    pub ring: Ring,
    /// Its listener, connection state and input counters.
    pub input: FeedInput,
    /// Its outputs: at most [`MAX_OUTPUTS`], which `check` holds.
    pub outputs: Outputs,
    /// The sync helper's ticket for this ring's sync in flight: only its report completes it
    /// (not that of an earlier ring at the same path, removed by a reload).
    pub helper_ticket: Option<u64>,
    /// When the next `interval` sync is due.
    pub next_sync: Instant,
    /// `ring_sync_behind` lines: a disk slower than the sync period.
    sync_log: Limiter,
    rate: InputRate,
    /// Coverage is below `retention` (logged at the transition).
    pub coverage_low: bool,
}

impl Feed {
    /// A feed that starts at `now` with its ring open and its listener bound.
    pub fn new(
        cfg: FeedConfig,
        ring: Ring,
        input: FeedInput,
        outputs: Outputs,
        now: Instant,
    ) -> Feed {
        Feed {
            cfg,
            ring,
            input,
            outputs,
            helper_ticket: None,
            next_sync: now,
            sync_log: Limiter::new(3, Duration::from_secs(60)),
            rate: InputRate {
                last_bytes: 0,
                last_at: now,
                bytes_per_s: None,
            },
            coverage_low: false,
        }
    }

    /// The feed as its inputs see it.
    pub fn as_input(&mut self) -> FeedIn<'_> {
        FeedIn {
            cfg: &self.cfg,
            ring: &mut self.ring,
            input: &mut self.input,
        }
    }
}

impl Feeds for Vec<Feed> {
    fn feed(&mut self, i: usize) -> FeedIn<'_> {
        self[i].as_input()
    }

    fn count(&self) -> usize {
        self.len()
    }
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
    pub fn checkpoint_in_background(
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
                self.input.sync_wait = true;
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

    /// Seconds of input the ring holds at the current input rate; `None` while idle.
    pub fn coverage_secs(&self) -> Option<f64> {
        self.rate
            .bytes_per_s
            .filter(|r| *r >= 1.0)
            .map(|r| self.ring.capacity() as f64 / r)
    }

    /// Updates the input rate; logs and raises an alert when coverage crosses the configured
    /// retention.
    pub fn measure(&mut self, now: Instant, alerts: &mut Vec<Alert>) {
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
                detail: crate::alert::Details::from_array([
                    (
                        "coverage_s",
                        Value::Num(coverage.min(u64::MAX as f64) as u64),
                    ),
                    ("retention_s", Value::Num(self.cfg.retention.as_secs())),
                    ("input_bytes_per_s", Value::Num(rate as u64)),
                    ("capacity_bytes", Value::Num(self.ring.capacity())),
                ]),
            });
        }
    }
}
