//! `GET /health` and `GET /ready`: typed JSON bodies written by serde-json-core.
//!
//! `/health` is the relay, each running feed with its ring and outputs, and each failed feed
//! with its path and error. `/ready` is 200 or 503 with the reason and the failed feeds' names.
//!
//! # Bounds
//! Each body is written into a buffer of its worst case, counted from what goes in: every
//! string at its worst-case escaping ([`json::str_bound`]), every number at [`json::U64`] or
//! [`json::F64`]. A running feed takes at most [`RUNNING_FEED_FIXED`] bytes plus its name and
//! [`OUTPUT_FIXED`] plus a name and a state name per output; with the configuration's limits
//! (feed and output names of 32 bytes, 8 outputs, 64 feeds; names counted at the worst-case
//! escaping, though the names `check` accepts need none) that is under 4 KiB a feed and
//! 240 KiB for the whole body. A failed feed adds its name, path and error. A body over its
//! bound would be a bug: it is answered 500 with the reason, not a panic.

use serde::{Serialize, Serializer};

use crate::feed::{FailedFeed, Feed};
use crate::json::{self, Text, TooLarge};
use crate::output::Output;

use super::Summary;

/// A `block` ring with less room than this (a read's worth) is full for `/ready`.
const READY_ROOM: u64 = 64 << 10;

/// Ready means "send logs here": this relay is active, every running feed's input is bound,
/// and every ring takes records (a `block` ring that is full does not). Outputs do not count: a
/// SIEM outage is what the ring is for, and a load balancer must keep sending during one;
/// output health is on `/health` and in the metrics. A failed feed (its ring could not be
/// opened) is named in the body but does not make the others unready.
pub(super) fn readiness(feeds: &[Feed], summary: &Summary<'_>) -> (bool, String) {
    if summary.role != "active" {
        return (false, format!("role is {}", summary.role));
    }
    for f in feeds {
        if f.input.listener.is_none() {
            return (false, format!("feed {} is not listening", f.cfg.name));
        }
        if f.input.paused || !f.ring.has_room(READY_ROOM) {
            return (
                false,
                format!(
                    "feed {} ring is full (when_full = block): senders wait",
                    f.cfg.name
                ),
            );
        }
    }
    (true, "ok".to_string())
}

/// The `/ready` body: `{"ready":true,"reason":"ok","failed_feeds":["b"]}`.
#[derive(Serialize)]
struct Ready<'a> {
    ready: bool,
    reason: &'a str,
    failed_feeds: FailedNames<'a>,
}

/// The failed feeds' names, as a JSON array.
struct FailedNames<'a>(&'a [FailedFeed]);

impl Serialize for FailedNames<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|f| f.name.as_str()))
    }
}

/// `/ready`: whether it is ready, and its body (LF-terminated).
pub(super) fn ready(feeds: &[Feed], summary: &Summary<'_>) -> (bool, Result<Vec<u8>, TooLarge>) {
    let (ready, reason) = readiness(feeds, summary);
    let failed = summary.failed;
    let bound = 2
        + json::key_bound("ready")
        + json::BOOL
        + json::key_bound("reason")
        + json::str_bound(reason.len())
        + json::key_bound("failed_feeds")
        + 2
        + failed
            .iter()
            .map(|f| json::str_bound(f.name.len()) + 1)
            .sum::<usize>();
    let body = Ready {
        ready,
        reason: &reason,
        failed_feeds: FailedNames(failed),
    };
    (ready, with_lf(&body, bound))
}

/// The `/health` body.
#[derive(Serialize)]
struct Health<'a> {
    instance: &'a str,
    role: &'a str,
    ready: bool,
    feeds: FeedList<'a>,
}

/// Running feeds, then failed ones, as one JSON array.
struct FeedList<'a> {
    running: &'a [Feed],
    failed: &'a [FailedFeed],
}

impl Serialize for FeedList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let running = self.running.iter().map(FeedHealth::running);
        let failed = self.failed.iter().map(FeedHealth::failed);
        s.collect_seq(running.chain(failed))
    }
}

/// One feed in `/health`: a running one with its ring and outputs, or a failed one.
#[derive(Serialize)]
#[serde(untagged)]
enum FeedHealth<'a> {
    Running(RunningFeed<'a>),
    Failed(FailedFeedHealth<'a>),
}

#[derive(Serialize)]
struct RunningFeed<'a> {
    name: &'a str,
    /// `running`.
    state: &'static str,
    /// `ok`.
    ring: &'static str,
    records: u64,
    used_bytes: u64,
    capacity_bytes: u64,
    /// To a tenth of a second.
    span_seconds: f64,
    /// Whole seconds; `null` while the input is idle.
    coverage_seconds: Option<u64>,
    connections: usize,
    outputs: OutputList<'a>,
}

/// A running feed's outputs, as a JSON array.
struct OutputList<'a>(&'a Feed);

impl Serialize for OutputList<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let f = self.0;
        s.collect_seq(f.outputs.iter().map(|o| OutputHealth::of(f, o)))
    }
}

#[derive(Serialize)]
struct OutputHealth<'a> {
    name: &'a str,
    connected: bool,
    state: &'static str,
    lag_records: u64,
    overrun_lost: u64,
}

impl<'a> OutputHealth<'a> {
    fn of(f: &Feed, o: &'a Output) -> OutputHealth<'a> {
        OutputHealth {
            name: o.name(),
            connected: o.connected(),
            state: o.state_name(),
            lag_records: o.lag(&f.ring).0,
            overrun_lost: o.overrun_lost(&f.ring),
        }
    }
}

#[derive(Serialize)]
struct FailedFeedHealth<'a> {
    name: &'a str,
    /// `failed`.
    state: &'static str,
    /// `failed`.
    ring: &'static str,
    /// The ring file's path (bytes that are not UTF-8 as U+FFFD).
    path: Text<'a>,
    error: &'a str,
    /// Always empty: a failed feed runs no output.
    outputs: &'static [&'static str],
}

impl<'a> FeedHealth<'a> {
    fn running(f: &'a Feed) -> FeedHealth<'a> {
        let st = f.ring.stats();
        FeedHealth::Running(RunningFeed {
            name: &f.cfg.name,
            state: "running",
            ring: "ok",
            records: st.records,
            used_bytes: st.used,
            capacity_bytes: st.capacity,
            span_seconds: (st.span_secs() * 10.0).round_ties_even() / 10.0,
            // Finite and positive: capacity over a rate of at least 1 B/s.
            coverage_seconds: f.coverage_secs().map(|v| v.round_ties_even() as u64),
            connections: f.input.conns,
            outputs: OutputList(f),
        })
    }

    fn failed(f: &'a FailedFeed) -> FeedHealth<'a> {
        FeedHealth::Failed(FailedFeedHealth {
            name: &f.name,
            state: "failed",
            ring: "failed",
            path: Text(f.path.as_os_str().as_encoded_bytes()),
            error: &f.error,
            outputs: &[],
        })
    }
}

/// The most bytes a running feed takes in `/health` but for its name and outputs: the keys,
/// `running`, `ok`, five numbers, the span and the brackets.
pub const RUNNING_FEED_FIXED: usize = 2
    + json::key_bound("name")
    + json::key_bound("state")
    + json::str_bound("running".len())
    + json::key_bound("ring")
    + json::str_bound("ok".len())
    + json::key_bound("records")
    + json::U64
    + json::key_bound("used_bytes")
    + json::U64
    + json::key_bound("capacity_bytes")
    + json::U64
    + json::key_bound("span_seconds")
    + json::F64
    + json::key_bound("coverage_seconds")
    + json::U64
    + json::key_bound("connections")
    + json::U64
    + json::key_bound("outputs")
    + 2
    + 1;

/// The most bytes an output takes in `/health` but for its name and state name.
pub const OUTPUT_FIXED: usize = 2
    + json::key_bound("name")
    + json::key_bound("connected")
    + json::BOOL
    + json::key_bound("state")
    + json::key_bound("lag_records")
    + json::U64
    + json::key_bound("overrun_lost")
    + json::U64
    + 1;

/// The most bytes a failed feed takes in `/health` but for its name, path and error.
const FAILED_FEED_FIXED: usize = 2
    + json::key_bound("name")
    + json::key_bound("state")
    + json::str_bound("failed".len())
    + json::key_bound("ring")
    + json::str_bound("failed".len())
    + json::key_bound("path")
    + json::key_bound("error")
    + json::key_bound("outputs")
    + 2
    + 1;

/// The bound of the `/health` body: see the module's "Bounds".
fn health_bound(feeds: &[Feed], summary: &Summary<'_>) -> usize {
    let head = 2
        + json::key_bound("instance")
        + json::str_bound(summary.instance.len())
        + json::key_bound("role")
        + json::str_bound(summary.role.len())
        + json::key_bound("ready")
        + json::BOOL
        + json::key_bound("feeds")
        + 2;
    let running: usize = feeds
        .iter()
        .map(|f| {
            let outputs: usize = f
                .outputs
                .iter()
                .map(|o| {
                    OUTPUT_FIXED
                        + json::str_bound(o.name().len())
                        + json::str_bound(o.state_name().len())
                })
                .sum();
            RUNNING_FEED_FIXED + json::str_bound(f.cfg.name.len()) + outputs
        })
        .sum();
    let failed: usize = summary
        .failed
        .iter()
        .map(|f| {
            FAILED_FEED_FIXED
                + json::str_bound(f.name.len())
                + json::str_bound(f.path.as_os_str().len())
                + json::str_bound(f.error.len())
        })
        .sum();
    head + running + failed
}

/// `/health`: the body (LF-terminated).
pub(super) fn health(feeds: &[Feed], summary: &Summary<'_>) -> Result<Vec<u8>, TooLarge> {
    let (ready, _) = readiness(feeds, summary);
    let body = Health {
        instance: summary.instance,
        role: summary.role,
        ready,
        feeds: FeedList {
            running: feeds,
            failed: summary.failed,
        },
    };
    with_lf(&body, health_bound(feeds, summary))
}

/// `value` in at most `bound` bytes, and an LF.
fn with_lf<T: Serialize>(value: &T, bound: usize) -> Result<Vec<u8>, TooLarge> {
    let mut out = Vec::with_capacity(bound + 1);
    json::append(&mut out, value, bound)?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::LoopStats;
    use crate::alert::AlertStats;
    use crate::config::{FEED_NAME_MAX, MAX_FEEDS, OUTPUT_NAME_MAX};

    fn summary<'a>(
        failed: &'a [FailedFeed],
        alerts: &'a AlertStats,
        lp: &'a LoopStats,
    ) -> Summary<'a> {
        Summary {
            instance: "relay-1",
            role: "standby",
            epoch: 0,
            started_ns: 0,
            alerts,
            event_loop: lp,
            failed,
        }
    }

    #[test]
    fn a_standby_with_a_failed_feed_says_so_in_both_bodies() {
        let failed = [FailedFeed {
            name: "b".into(),
            path: "/var/lib/ringrelay/b.ring".into(),
            error: "superblock: bad \"magic\"\n".into(),
        }];
        let (alerts, lp) = (AlertStats::default(), LoopStats::default());
        let s = summary(&failed, &alerts, &lp);
        let h = String::from_utf8(health(&[], &s).unwrap()).unwrap();
        assert_eq!(
            h,
            "{\"instance\":\"relay-1\",\"role\":\"standby\",\"ready\":false,\"feeds\":[\
             {\"name\":\"b\",\"state\":\"failed\",\"ring\":\"failed\",\
             \"path\":\"/var/lib/ringrelay/b.ring\",\"error\":\"superblock: bad \\\"magic\\\"\\n\",\
             \"outputs\":[]}]}\n"
        );
        let (ready, body) = ready(&[], &s);
        assert!(!ready);
        assert_eq!(
            String::from_utf8(body.unwrap()).unwrap(),
            "{\"ready\":false,\"reason\":\"role is standby\",\"failed_feeds\":[\"b\"]}\n"
        );
    }

    #[test]
    fn the_documented_per_feed_bound_holds() {
        // Names at their limits, eight outputs with the longest state name ("handshaking").
        let per_feed = RUNNING_FEED_FIXED
            + json::str_bound(FEED_NAME_MAX)
            + 8 * (OUTPUT_FIXED + json::str_bound(OUTPUT_NAME_MAX) + json::str_bound(11));
        assert!(per_feed < 4 << 10, "{per_feed}");
        assert!(MAX_FEEDS * per_feed < 240 << 10);
    }
}
