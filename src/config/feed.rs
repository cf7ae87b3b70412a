//! `[[feed]]`: its name, framing, record limits, `buffer` (the ring's size), full-ring policy
//! and outputs.

use std::time::Duration;

use toml::Spanned;

use super::input::{input_config, InputConfig};
use super::names::feed_name;
use super::output::{output_config, OutputConfig};
use super::relay::{sync_policy, SyncPolicy};
use super::table::{named, Ctx, Tbl};
use super::{EPS_RANGE, EVENT_BYTES_RANGE, MAX_OUTPUTS};
use crate::ring::{record_stride, WhenFull, MIN_CAPACITY};

/// `[[feed]]`.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// Name; also the ring file's name.
    pub name: String,
    /// Line and column of its `buffer` in the file (for checks made on the machine).
    pub buffer_at: (usize, usize),
    /// `input`.
    pub input: InputConfig,
    /// Record framing on the input.
    pub framing: Framing,
    /// Longest record kept whole.
    pub max_record_bytes: usize,
    /// What happens to longer records.
    pub oversize: Oversize,
    /// Ring data area bytes.
    pub capacity: u64,
    /// How long the ring should cover.
    pub retention: Duration,
    /// Full-ring policy.
    pub when_full: WhenFull,
    /// This feed's sync policy.
    pub sync: SyncPolicy,
    /// `[[feed.output]]`.
    pub outputs: Vec<OutputConfig>,
}

/// The keys of a `[[feed]]`.
const FEED_KEYS: [&str; 11] = [
    "name",
    "input",
    "framing",
    "max_record_bytes",
    "oversize",
    "buffer",
    "retention",
    "when_full",
    "sync",
    "sync_interval",
    "output",
];

pub(super) fn feed_config(
    t: &Tbl<'_, '_>,
    default_sync: SyncPolicy,
    cx: &mut Ctx<'_>,
) -> Option<FeedConfig> {
    t.check_keys(&FEED_KEYS, cx);
    let name = feed_name(t, cx);
    let input_v = t.get("input");
    if input_v.is_none() {
        t.missing("input", cx);
    }
    let input = input_v
        .and_then(|v| Tbl::new(v, "input".into(), cx))
        .and_then(|it| input_config(&it, cx));
    let framing = t
        .choice(
            "framing",
            &[
                ("auto", Framing::Auto),
                ("newline", Framing::Newline),
                ("octet", Framing::Octet),
            ],
            cx,
        )
        .unwrap_or(Framing::Auto);
    let max_record_bytes = t
        .size("max_record_bytes", 1024..=16 << 20, cx)
        .unwrap_or(1 << 20) as usize;
    let oversize = t
        .choice(
            "oversize",
            &[("truncate", Oversize::Truncate), ("drop", Oversize::Drop)],
            cx,
        )
        .unwrap_or(Oversize::Truncate);
    let when_full = t
        .choice(
            "when_full",
            &[
                ("drop_oldest", WhenFull::DropOldest),
                ("block", WhenFull::Block),
            ],
            cx,
        )
        .unwrap_or(WhenFull::DropOldest);
    let sync = sync_policy(t, default_sync, cx);
    let mut retention = t
        .duration("retention", cx)
        .unwrap_or(Duration::from_secs(3600));
    let buffer_v = t.get("buffer");
    if buffer_v.is_none() {
        t.missing("buffer", cx);
    }
    let capacity = buffer_v
        .and_then(|v| Tbl::new(v, "buffer".into(), cx))
        .and_then(|b| buffer_capacity(&b, &mut retention, max_record_bytes, cx));
    let outputs = feed_outputs(t, cx);
    Some(FeedConfig {
        buffer_at: cx.at(buffer_v.map_or(t.span.start, |v| v.span().start)),
        name: name?,
        input: input?,
        framing,
        max_record_bytes,
        oversize,
        capacity: capacity?,
        retention,
        when_full,
        sync,
        outputs,
    })
}

/// `[[feed.output]]`: 1 to [`MAX_OUTPUTS`] outputs, each name used once in the feed.
fn feed_outputs(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Vec<OutputConfig> {
    let mut outputs = Vec::new();
    let outs = t.tables("output", cx);
    if outs.is_empty() {
        t.missing("output", cx);
    }
    if outs.len() > MAX_OUTPUTS {
        cx.err(
            outs[MAX_OUTPUTS].span(),
            format!(
                "{} outputs in {}; at most {MAX_OUTPUTS} are supported (for more receivers, let one output feed a second relay)",
                outs.len(),
                t.what
            ),
        );
    }
    for (j, ov) in outs.iter().enumerate() {
        let Some(ot) = Tbl::new(ov, format!("{} {}", t.what, named("output", ov, j)), cx) else {
            continue;
        };
        if let Some(o) = output_config(&ot, cx) {
            if outputs.iter().any(|x: &OutputConfig| x.name == o.name) {
                let span = ot.get("name").map_or(ot.span.clone(), Spanned::span);
                cx.err(
                    span,
                    format!("output name {:?} is used twice in this feed", o.name),
                );
            }
            outputs.push(o);
        }
    }
    outputs
}

fn buffer_capacity(
    b: &Tbl<'_, '_>,
    retention: &mut Duration,
    max_record: usize,
    cx: &mut Ctx<'_>,
) -> Option<u64> {
    b.check_keys(&["size", "retention", "eps", "bytes"], cx);
    let mut asked = String::from("the buffer this sizing asks for");
    let by_rate = ["retention", "eps", "bytes"]
        .iter()
        .any(|k| b.get(k).is_some());
    let capacity = match (b.get("size"), by_rate) {
        (Some(v), true) => {
            cx.err(
                v.span(),
                "buffer: give either size, or retention + eps + bytes, not both",
            );
            return None;
        }
        (Some(_), false) => {
            let n = b.size("size", 0..=u64::MAX, cx)?;
            asked = format!("buffer size {n}");
            n.div_ceil(4096) * 4096
        }
        (None, true) => {
            if let Some(r) = b.duration("retention", cx) {
                *retention = r;
            }
            let eps = b.count("eps", EPS_RANGE, cx);
            let bytes = b.size("bytes", EVENT_BYTES_RANGE, cx);
            for k in ["eps", "bytes"] {
                if b.get(k).is_none() {
                    b.missing(k, cx);
                }
            }
            crate::ring::ring_bytes(eps?, bytes?, *retention)
        }
        (None, false) => {
            b.missing("size", cx);
            return None;
        }
    };
    let need = (4 * record_stride(max_record as u64)).max(MIN_CAPACITY);
    if capacity < need {
        cx.err(
            b.span.clone(),
            format!(
                "{asked} ({capacity} bytes) is too small: the minimum is {need} bytes ({}: 1 MiB, and room for 4 records of max_record_bytes = {max_record}); raise the buffer or lower max_record_bytes",
                crate::ring::human_bytes(need)
            ),
        );
        return None;
    }
    Some(capacity)
}

/// How records are delimited on an input connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// LF-terminated lines (NSS, LSS).
    Newline,
    /// RFC 6587 octet counting.
    Octet,
    /// Decided per connection from its first frame.
    Auto,
}

/// What happens to a record longer than `max_record`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oversize {
    /// Keep its first `max_record` bytes, flagged truncated.
    Truncate,
    /// Drop it (counted).
    Drop,
}
