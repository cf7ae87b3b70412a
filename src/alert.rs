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

use std::fmt::Write as _;

use crate::clock;

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
    pub detail: Vec<(&'static str, Value)>,
}

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
    pub fn to_json(&self, instance: &str, now_ns: u64) -> String {
        let mut s = String::with_capacity(160);
        s.push_str("{\"ringrelay_alert\":");
        json_str(&mut s, self.kind.name());
        s.push_str(",\"instance\":");
        json_str(&mut s, instance);
        s.push_str(",\"time\":");
        json_str(&mut s, &clock::rfc3339(now_ns));
        s.push_str(",\"feed\":");
        json_str(&mut s, &self.feed);
        if let Some(o) = &self.output {
            s.push_str(",\"output\":");
            json_str(&mut s, o);
        }
        for (k, v) in &self.detail {
            s.push(',');
            json_str(&mut s, k);
            s.push(':');
            match v {
                Value::Num(n) => {
                    let _ = write!(s, "{n}");
                }
                Value::Text(t) => json_str(&mut s, t),
            }
        }
        s.push('}');
        s
    }
}

/// Appends `v` as a JSON string literal.
pub(crate) fn json_str(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alert_is_one_json_line_with_escaped_text() {
        let a = Alert {
            kind: AlertKind::OutputDown,
            feed: "zia-web".into(),
            output: Some("splunk".into()),
            detail: vec![
                ("down_s", Value::Num(301)),
                ("error", Value::Text("connect: \"refused\"\n\u{1}".into())),
            ],
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
    fn kinds_index_their_own_slot() {
        for (i, k) in AlertKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }
}
