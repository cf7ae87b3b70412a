//! Alerts: the conditions an operator must hear about without watching a dashboard.
//!
//! Four conditions; the first three with their way back: a feed's coverage falls below its `retention`
//! (and recovers), an output stays down longer than its `alert_after` (and proves itself again),
//! an output loses records to overrun (as soon as the loss is seen, and once more when the output
//! has caught up and the episode's loss and time range are known); and a feed whose ring cannot be opened (raised once
//! when the relay becomes active; its way back is an operator's restart). An output's outage and
//! overrun episode persist with its cursor, so a restart neither forgets nor repeats them. The component that sees the transition logs it once and
//! queues an [`Alert`]; the relay counts every alert by kind for `/metrics` and, when
//! `[relay] alert_feed` names a feed, appends it to that feed's ring as one JSON line, so the
//! SIEM learns about its own gaps (NSS calls these "feeds for alerts").
//!
//! Alerts are transitions, not ticks: a condition that holds for a day raises one alert.

use serde::ser::SerializeStruct as _;
use serde::{Serialize, Serializer};

use crate::clock;
use crate::json;
use crate::log::Level;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlertKind {
    /// The ring covers less than `retention` at the current input rate.
    CoverageBelowRetention,
    /// Coverage is back at or above `retention`.
    CoverageOk,
    /// An output has been down for longer than its `alert_after`.
    OutputDown,
    /// An output that had raised `OutputDown` is connected again.
    OutputRecovered,
    /// The ring overwrote records an output had not delivered (raised when first seen).
    OutputOverrun,
    /// The output caught up after an overrun: the whole episode's loss and time range.
    OutputOverrunEnded,
    /// The feed's ring could not be opened: the feed does not run (its input is not bound).
    FeedFailed,
}

impl AlertKind {
    /// Every kind, in the order of [`AlertKind::index`].
    pub const ALL: [AlertKind; 7] = [
        AlertKind::CoverageBelowRetention,
        AlertKind::CoverageOk,
        AlertKind::OutputDown,
        AlertKind::OutputRecovered,
        AlertKind::OutputOverrun,
        AlertKind::OutputOverrunEnded,
        AlertKind::FeedFailed,
    ];

    /// The name in log lines, metrics labels and alert records.
    pub fn name(self) -> &'static str {
        match self {
            AlertKind::CoverageBelowRetention => "coverage_below_retention",
            AlertKind::CoverageOk => "coverage_ok",
            AlertKind::OutputDown => "output_down",
            AlertKind::OutputRecovered => "output_recovered",
            AlertKind::OutputOverrun => "output_overrun",
            AlertKind::OutputOverrunEnded => "output_overrun_ended",
            AlertKind::FeedFailed => "feed_failed",
        }
    }

    /// Position in [`AlertKind::ALL`] and in [`AlertStats::raised`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One alert: its kind, where, and its details as JSON members.
#[derive(Clone, Debug)]
pub struct Alert {
    /// What happened.
    pub kind: AlertKind,
    /// The feed it concerns.
    pub feed: String,
    /// The output it concerns, if any.
    pub output: Option<String>,
    /// Details: `(key, value)`; numbers are written as numbers, everything else as strings.
    pub detail: Details,
}

/// Details an alert carries, at most (the most any kind has is four).
pub const MAX_DETAILS: usize = 6;

/// An alert's details, held in place: `Details::from_array([..])` refuses more than
/// [`MAX_DETAILS`] at compile time.
pub type Details = heapless::Vec<(&'static str, Value), MAX_DETAILS>;

/// A detail value.
#[derive(Clone, Debug)]
pub enum Value {
    /// An unsigned number.
    Num(u64),
    /// Text.
    Text(String),
}

/// Counters of the alerts this process raised.
#[derive(Clone, Copy, Debug, Default)]
pub struct AlertStats {
    /// Alerts raised, by [`AlertKind::index`].
    pub raised: [u64; AlertKind::ALL.len()],
    /// Alert records appended to the alert feed.
    pub written: u64,
    /// Alert records the alert feed's ring refused (full in `block` mode).
    pub refused: u64,
}

impl Alert {
    /// The alert as one JSON object (the alert feed's record), e.g.
    /// `{"ringrelay_alert":"output_down","instance":"r1","time":"2026-…Z","feed":"zia","output":"splunk","down_s":300}`.
    ///
    /// Written by serde-json-core into a buffer of [`AlertRecord::bound`], counted from the
    /// lengths of what goes in; a record over it would be a bug, and is replaced by one that
    /// names the alert's kind and says so (logged as `alert_record_failed`).
    pub fn to_json(&self, instance: &str, now_ns: u64) -> String {
        let time = clock::rfc3339(now_ns);
        let record = AlertRecord {
            alert: self,
            instance,
            time: &time,
        };
        let bytes = json::to_vec(&record, record.bound()).or_else(|e| {
            crate::log!(
                Level::Error,
                "alert_record_failed",
                alert = self.kind.name(),
                error = e
            );
            let failed = Failed {
                ringrelay_alert: self.kind.name(),
                error: "the alert record is larger than its bound (a bug)",
            };
            json::to_vec(&failed, FAILED_MAX)
        });
        // serde-json-core writes `str`s as they are or escaped: always UTF-8.
        bytes
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

/// An alert as the alert feed's record: the fixed members, then the details in their order.
struct AlertRecord<'a> {
    alert: &'a Alert,
    instance: &'a str,
    time: &'a str,
}

impl AlertRecord<'_> {
    /// The most bytes the record takes: every member at its worst case.
    fn bound(&self) -> usize {
        let a = self.alert;
        let details: usize = a
            .detail
            .iter()
            .map(|(k, v)| {
                json::key_bound(k)
                    + match v {
                        Value::Num(_) => json::U64,
                        Value::Text(t) => json::str_bound(t.len()),
                    }
            })
            .sum();
        2 + json::key_bound("ringrelay_alert")
            + json::str_bound(a.kind.name().len())
            + json::key_bound("instance")
            + json::str_bound(self.instance.len())
            + json::key_bound("time")
            + json::str_bound(self.time.len())
            + json::key_bound("feed")
            + json::str_bound(a.feed.len())
            + a.output
                .as_ref()
                .map_or(0, |o| json::key_bound("output") + json::str_bound(o.len()))
            + details
    }
}

impl Serialize for AlertRecord<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let a = self.alert;
        let members = 4 + usize::from(a.output.is_some()) + a.detail.len();
        let mut m = s.serialize_struct("AlertRecord", members)?;
        m.serialize_field("ringrelay_alert", a.kind.name())?;
        m.serialize_field("instance", self.instance)?;
        m.serialize_field("time", self.time)?;
        m.serialize_field("feed", a.feed.as_str())?;
        if let Some(o) = &a.output {
            m.serialize_field("output", o.as_str())?;
        }
        for (k, v) in &a.detail {
            m.serialize_field(k, v)?;
        }
        m.end()
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Num(n) => s.serialize_u64(*n),
            Value::Text(t) => s.serialize_str(t.as_str()),
        }
    }
}

/// The record in place of one over its bound.
#[derive(Serialize)]
struct Failed {
    ringrelay_alert: &'static str,
    error: &'static str,
}

/// The bound of [`Failed`]: the longest kind name and the error are short, fixed texts.
const FAILED_MAX: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_is_one_json_line_with_escaped_text() {
        let a = Alert {
            kind: AlertKind::OutputDown,
            feed: "zia-web".into(),
            output: Some("splunk".into()),
            detail: crate::alert::Details::from_array([
                ("down_s", Value::Num(301)),
                ("error", Value::Text("connect: \"refused\"\n\u{1}".into())),
            ]),
        };
        let j = a.to_json("relay \"1\"", 0);
        assert_eq!(
            j,
            "{\"ringrelay_alert\":\"output_down\",\"instance\":\"relay \\\"1\\\"\",\
             \"time\":\"1970-01-01T00:00:00.000Z\",\"feed\":\"zia-web\",\"output\":\"splunk\",\
             \"down_s\":301,\"error\":\"connect: \\\"refused\\\"\\n\\u0001\"}"
        );
        assert!(!j.contains('\n'));
    }

    #[test]
    fn the_worst_case_alert_fits_its_bound() {
        let a = Alert {
            kind: AlertKind::OutputOverrunEnded,
            feed: "f".repeat(32),
            output: Some("o".repeat(32)),
            detail: crate::alert::Details::from_array([
                ("lost", Value::Num(u64::MAX)),
                ("error", Value::Text("\u{1}".repeat(500))),
            ]),
        };
        let j = a.to_json(&"i".repeat(64), u64::MAX);
        assert!(
            j.starts_with("{\"ringrelay_alert\":\"output_overrun_ended\""),
            "{j}"
        );
        assert!(j.ends_with(&format!(
            "\"lost\":{},\"error\":\"{}\"}}",
            u64::MAX,
            "\\u0001".repeat(500)
        )));
    }

    #[test]
    fn kinds_index_their_own_slot() {
        for (i, k) in AlertKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
