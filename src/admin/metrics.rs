//! `GET /metrics`: the relay's counters and gauges in Prometheus text format 0.0.4, one writer
//! a metric family (or a table of families that share their labels), in the order they have
//! always been written. Names, labels and help texts are an interface: dashboards and alerts
//! are built on them.

use std::fmt::Write as _;

use crate::clock;
use crate::feed::Feed;
use crate::output::Output;

use super::Summary;

/// A Prometheus label value: backslash, double quote and line feed escaped.
struct Label<'a>(&'a str);

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => write!(f, "{c}")?,
            }
        }
        Ok(())
    }
}

/// The `process_*` metrics every Prometheus exporter has, from `/proc/self`: resident memory,
/// open file descriptors, CPU seconds, start time.
fn process_metrics(m: &mut Family<'_>, summary: &Summary<'_>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count);
    // utime and stime, fields 14 and 15 of /proc/self/stat, in USER_HZ (100 on Linux) ticks;
    // the fields are counted after the command name's closing parenthesis.
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let ticks: u64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|t| t.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let families: [(&str, &str, &str, String); 4] = [
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes (mapped ring pages the kernel holds in memory included).",
            (rss_kib * 1024).to_string(),
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            fds.to_string(),
        ),
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            format!("{:.2}", ticks as f64 / 100.0),
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            format!("{:.3}", summary.started_ns as f64 / 1e9),
        ),
    ];
    for (name, kind, help, value) in families {
        m.head(name, kind, help);
        let _ = writeln!(m.out, "{name} {value}");
    }
}
/// A metric family's header and samples, in Prometheus text format.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
    }
}
/// The whole `/metrics` body.
pub(super) fn metrics(feeds: &[Feed], summary: &Summary<'_>) -> String {
    let mut out = String::with_capacity(4096 + feeds.len() * 4096);
    let mut m = Family { out: &mut out };
    let now_ns = clock::wall_ns();
    let inst = format!("instance_name=\"{}\"", Label(summary.instance));
    relay_identity(&mut m, summary, &inst);
    process_metrics(&mut m, summary);
    feed_tables(&mut m, feeds);
    feed_failed(&mut m, feeds, summary);
    feed_records_dropped(&mut m, feeds);
    feed_connections_refused(&mut m, feeds);
    feed_http_header_timeouts(&mut m, feeds);
    feed_http_responses(&mut m, feeds);
    feed_tls(&mut m, feeds);
    output_tables(&mut m, feeds, now_ns);
    output_http_requests(&mut m, feeds);
    output_http_tables(&mut m, feeds);
    alerts_total(&mut m, summary);
    relay_counters(&mut m, summary, &inst);
    loop_turn_max(&mut m, summary, &inst);
    out
}

/// `ringrelay_info`, `ringrelay_start_time_seconds`, `ringrelay_epoch`.
fn relay_identity(m: &mut Family<'_>, summary: &Summary<'_>, inst: &str) {
    m.head(
        "ringrelay_info",
        "gauge",
        "Relay instance, role and version.",
    );
    m.sample(
        "ringrelay_info",
        &format!(
            "{inst},role=\"{}\",version=\"{}\"",
            summary.role,
            env!("CARGO_PKG_VERSION")
        ),
        1,
    );
    m.head(
        "ringrelay_start_time_seconds",
        "gauge",
        "Unix time the relay started.",
    );
    m.sample(
        "ringrelay_start_time_seconds",
        inst,
        summary.started_ns / 1_000_000_000,
    );
    m.head(
        "ringrelay_epoch",
        "gauge",
        "The fencing epoch this instance holds as active (0 on a standby); a pair's two instances never hold the same one.",
    );
    m.sample("ringrelay_epoch", inst, summary.epoch);
}

type FeedValue = fn(&Feed) -> String;
const FEED_FAMILIES: [(&str, &str, &str, FeedValue); 21] = [
    (
        "ringrelay_feed_last_record_timestamp_seconds",
        "gauge",
        "Unix time of the newest record in the ring (0: none yet): a feed whose senders went silent shows here first.",
        |f| {
            f.ring
                .stats()
                .newest_ts
                .map_or("0".to_string(), |ts| format!("{:.3}", ts as f64 / 1e9))
        },
    ),
    (
        "ringrelay_ring_oldest_record_age_seconds",
        "gauge",
        "Age of the oldest record the ring holds (0 when empty): what an outage starting now could still replay.",
        |f| {
            f.ring.stats().oldest_ts.map_or("0".to_string(), |ts| {
                format!("{:.3}", clock::wall_ns().saturating_sub(ts) as f64 / 1e9)
            })
        },
    ),
    (
        "ringrelay_ring_records_evicted_total",
        "counter",
        "Records overwritten to make room since the ring was created (drop_oldest), delivered or not.",
        |f| f.ring.stats().evicted.to_string(),
    ),
    (
        "ringrelay_feed_records_received_total",
        "counter",
        "Records accepted into the ring.",
        |f| f.input.stats.records.to_string(),
    ),
    (
        "ringrelay_feed_bytes_received_total",
        "counter",
        "Payload bytes accepted into the ring.",
        |f| f.input.stats.bytes.to_string(),
    ),
    (
        "ringrelay_feed_records_truncated_total",
        "counter",
        "Records cut at max_record_bytes (and kept).",
        |f| f.input.stats.truncated.to_string(),
    ),
    (
        "ringrelay_feed_bad_frames_total",
        "counter",
        "Octet-counting frames with an invalid header, kept as lines.",
        |f| f.input.stats.bad_frames.to_string(),
    ),
    (
        "ringrelay_feed_framing_fallbacks_total",
        "counter",
        "Connections with framing auto that started with digits and a space but were not a plausible octet frame, so were framed by newline.",
        |f| f.input.stats.framing_fallbacks.to_string(),
    ),
    (
        "ringrelay_feed_connections_total",
        "counter",
        "Input connections accepted.",
        |f| f.input.stats.accepted.to_string(),
    ),
    (
        "ringrelay_feed_connections_open",
        "gauge",
        "Input connections open now.",
        |f| f.input.conns.to_string(),
    ),
    (
        "ringrelay_feed_connections_evicted_total",
        "counter",
        "Silent input connections closed to make room for a new one (max_connections, max_connections_per_source).",
        |f| f.input.stats.evicted.to_string(),
    ),
    (
        "ringrelay_feed_accept_paused_total",
        "counter",
        "Times the feed stopped accepting at max_connections with nothing to evict (new connections wait in the listen backlog).",
        |f| f.input.stats.accept_paused.to_string(),
    ),
    (
        "ringrelay_feed_accept_paused_seconds_total",
        "counter",
        "Time spent not accepting at max_connections, episodes that ended.",
        |f| format!("{:.3}", f.input.stats.accept_paused_ms as f64 / 1000.0),
    ),
    (
        "ringrelay_feed_connections_idle_closed_total",
        "counter",
        "Input connections closed after idle_timeout of silence.",
        |f| f.input.stats.idle_closed.to_string(),
    ),
    (
        "ringrelay_ring_capacity_bytes",
        "gauge",
        "Size of the ring's data area.",
        |f| f.ring.capacity().to_string(),
    ),
    (
        "ringrelay_ring_used_bytes",
        "gauge",
        "Bytes of the ring holding records.",
        |f| f.ring.stats().used.to_string(),
    ),
    (
        "ringrelay_ring_syncs_behind_total",
        "counter",
        "Periodic syncs skipped because the previous one had not finished: the disk is slower than the sync period.",
        |f| f.ring.syncs_behind().to_string(),
    ),
    (
        "ringrelay_ring_records",
        "gauge",
        "Records held in the ring.",
        |f| f.ring.stats().records.to_string(),
    ),
    (
        "ringrelay_ring_span_seconds",
        "gauge",
        "Time between the oldest and the newest record held.",
        |f| format!("{:.3}", f.ring.stats().span_secs()),
    ),
    (
        "ringrelay_ring_coverage_seconds",
        "gauge",
        "How long the ring can hold at the current input rate (+Inf while idle).",
        |f| {
            f.coverage_secs()
                .map_or("+Inf".to_string(), |v| format!("{v:.0}"))
        },
    ),
    (
        "ringrelay_feed_coverage_below_retention",
        "gauge",
        "1 while the ring covers less than the feed's retention at the current input rate.",
        |f| u8::from(f.coverage_low).to_string(),
    ),
];

/// The families of [`FEED_FAMILIES`], one sample a running feed.
fn feed_tables(m: &mut Family<'_>, feeds: &[Feed]) {
    for (name, kind, help, value) in FEED_FAMILIES {
        m.head(name, kind, help);
        for f in feeds {
            m.sample(name, &format!("feed=\"{}\"", f.cfg.name), value(f));
        }
    }
}

/// `ringrelay_feed_failed`: 0 for a running feed, 1 for one whose ring could not be opened.
fn feed_failed(m: &mut Family<'_>, feeds: &[Feed], summary: &Summary<'_>) {
    let name = "ringrelay_feed_failed";
    m.head(
        name,
        "gauge",
        "1 when the feed's ring could not be opened: the feed does not run (its input is not bound); see /health and the feed_failed log line.",
    );
    for f in feeds {
        m.sample(name, &format!("feed=\"{}\"", f.cfg.name), 0);
    }
    for f in summary.failed {
        m.sample(name, &format!("feed=\"{}\"", f.name), 1);
    }
}

/// `ringrelay_feed_records_dropped_total`, by reason.
fn feed_records_dropped(m: &mut Family<'_>, feeds: &[Feed]) {
    let name = "ringrelay_feed_records_dropped_total";
    m.head(name, "counter", "Records not accepted, by reason.");
    for f in feeds {
        for (reason, v) in [
            ("oversize", f.input.stats.dropped_oversize),
            ("incomplete_at_close", f.input.stats.incomplete_at_eof),
        ] {
            m.sample(
                name,
                &format!("feed=\"{}\",reason=\"{reason}\"", f.cfg.name),
                v,
            );
        }
    }
}

/// `ringrelay_feed_connections_refused_total`, by reason.
fn feed_connections_refused(m: &mut Family<'_>, feeds: &[Feed]) {
    let name = "ringrelay_feed_connections_refused_total";
    m.head(
        name,
        "counter",
        "Input connections closed at once, by reason (per_source: the source was at max_connections_per_source with nothing to evict).",
    );
    for f in feeds {
        m.sample(
            name,
            &format!("feed=\"{}\",reason=\"per_source\"", f.cfg.name),
            f.input.stats.refused,
        );
    }
}

/// `ringrelay_feed_http_header_timeouts_total`, HTTP inputs only.
fn feed_http_header_timeouts(m: &mut Family<'_>, feeds: &[Feed]) {
    let name = "ringrelay_feed_http_header_timeouts_total";
    m.head(
        name,
        "counter",
        "HTTP input connections closed for a request head not complete within header_timeout.",
    );
    for f in feeds.iter().filter(|f| f.cfg.input.http.is_some()) {
        m.sample(
            name,
            &format!("feed=\"{}\"", f.cfg.name),
            f.input.stats.header_timeouts,
        );
    }
}

/// `ringrelay_feed_http_responses_total`, HTTP inputs only, by status code.
fn feed_http_responses(m: &mut Family<'_>, feeds: &[Feed]) {
    let name = "ringrelay_feed_http_responses_total";
    m.head(name, "counter", "HTTP input responses, by status code.");
    for f in feeds.iter().filter(|f| f.cfg.input.http.is_some()) {
        for (code, v) in crate::input::http::STATUSES
            .iter()
            .zip(f.input.stats.http_responses)
        {
            m.sample(name, &format!("code=\"{code}\",feed=\"{}\"", f.cfg.name), v);
        }
    }
}

/// `ringrelay_feed_tls_handshakes_total` and `…_failures_total` by reason, TLS inputs only.
fn feed_tls(m: &mut Family<'_>, feeds: &[Feed]) {
    let tls_feeds = || feeds.iter().filter(|f| f.cfg.input.tls().is_some());
    let name = "ringrelay_feed_tls_handshakes_total";
    m.head(name, "counter", "TLS input handshakes completed.");
    for f in tls_feeds() {
        m.sample(
            name,
            &format!("feed=\"{}\"", f.cfg.name),
            f.input.stats.tls_handshakes,
        );
    }
    let name = "ringrelay_feed_tls_handshake_failures_total";
    m.head(
        name,
        "counter",
        "TLS input handshakes failed, by reason (unknown_ca, expired, no_client_certificate, not_tls, timeout, ...).",
    );
    for f in tls_feeds() {
        for (reason, v) in crate::tls::FAILURE_REASONS
            .iter()
            .zip(f.input.stats.tls_failures)
        {
            m.sample(
                name,
                &format!("feed=\"{}\",reason=\"{reason}\"", f.cfg.name),
                v,
            );
        }
    }
}

type OutValue = fn(&Feed, &Output, u64) -> String;
const OUTPUT_FAMILIES: [(&str, &str, &str, OutValue); 12] = [
    (
        "ringrelay_output_records_delivered_total",
        "counter",
        "Records delivered for the first time.",
        |_, o, _| o.stats().delivered.to_string(),
    ),
    (
        "ringrelay_output_records_replayed_total",
        "counter",
        "Records sent again by the replay window after a reconnect or restart.",
        |_, o, _| o.stats().replayed.to_string(),
    ),
    (
        "ringrelay_output_records_overrun_lost_total",
        "counter",
        "Records overwritten in the ring before this output delivered them.",
        |f, o, _| o.overrun_lost(&f.ring).to_string(),
    ),
    (
        "ringrelay_output_records_corrupt_skipped_total",
        "counter",
        "Damaged ring records skipped.",
        |_, o, _| o.stats().corrupt_skipped.to_string(),
    ),
    (
        "ringrelay_output_bytes_sent_total",
        "counter",
        "Bytes written to the output, framing included.",
        |_, o, _| o.stats().bytes.to_string(),
    ),
    (
        "ringrelay_output_lag_records",
        "gauge",
        "Records in the ring not yet delivered.",
        |f, o, _| o.lag(&f.ring).0.to_string(),
    ),
    (
        "ringrelay_output_lag_seconds",
        "gauge",
        "Age of the oldest record not yet delivered.",
        |f, o, now| {
            o.lag(&f.ring).1.map_or("0".to_string(), |ts| {
                format!("{:.3}", now.saturating_sub(ts) as f64 / 1e9)
            })
        },
    ),
    (
        "ringrelay_output_connected",
        "gauge",
        "1 while connected.",
        |_, o, _| u8::from(o.connected()).to_string(),
    ),
    (
        "ringrelay_output_reconnects_total",
        "counter",
        "Failed connects and dropped connections.",
        |_, o, _| o.stats().failures.to_string(),
    ),
    (
        "ringrelay_output_rate_limited_seconds_total",
        "counter",
        "Time spent waiting for rate_limit_eps.",
        |_, o, _| format!("{:.3}", o.stats().rate_limited_ns as f64 / 1e9),
    ),
    (
        "ringrelay_output_down_alert",
        "gauge",
        "1 while the output has been down for longer than its alert_after.",
        |_, o, _| u8::from(o.down_alerted()).to_string(),
    ),
    (
        "ringrelay_output_tls_handshake_failures_total",
        "counter",
        "TLS handshakes with the receiver that failed (0 for other kinds).",
        |_, o, _| o.stats().tls_failures.to_string(),
    ),
];

/// The families of [`OUTPUT_FAMILIES`], one sample an output.
fn output_tables(m: &mut Family<'_>, feeds: &[Feed], now_ns: u64) {
    for (name, kind, help, value) in OUTPUT_FAMILIES {
        m.head(name, kind, help);
        for f in feeds {
            for o in &f.outputs {
                let labels = format!("feed=\"{}\",output=\"{}\"", f.cfg.name, o.name());
                m.sample(name, &labels, value(f, o, now_ns));
            }
        }
    }
}

/// `ringrelay_output_http_requests_total`, HTTP outputs only, by status class.
fn output_http_requests(m: &mut Family<'_>, feeds: &[Feed]) {
    let name = "ringrelay_output_http_requests_total";
    m.head(
        name,
        "counter",
        "HTTP output requests by response status class; class=\"none\": no response (connection error, timeout, malformed response).",
    );
    for f in feeds {
        for o in &f.outputs {
            if let Some(h) = o.http_stats() {
                for (i, class) in ["none", "1xx", "2xx", "3xx", "4xx", "5xx"]
                    .iter()
                    .enumerate()
                {
                    m.sample(
                        name,
                        &format!(
                            "feed=\"{}\",output=\"{}\",class=\"{class}\"",
                            f.cfg.name,
                            o.name()
                        ),
                        h.requests[i],
                    );
                }
            }
        }
    }
}

type HttpValue = fn(&Output) -> Option<u64>;
const HTTP_FAMILIES: [(&str, &str, &str, HttpValue); 5] = [
    (
        "ringrelay_output_records_dead_lettered_total",
        "counter",
        "Records an HTTP receiver (4xx) or a Kafka broker (too large, invalid) refused alone, written to the dead-letter file and skipped.",
        |o| {
            o.http_stats()
                .map(|h| h.dead_lettered)
                .or(o.kafka_stats().map(|k| k.dead_lettered))
        },
    ),
    (
        "ringrelay_output_batches_retried_total",
        "counter",
        "HTTP or Kafka batches sent again: after a retryable answer (429/5xx, a moved leader), a timeout or connection error, a split, an ack timeout or a new producer id.",
        |o| {
            o.http_stats()
                .map(|h| h.batches_retried)
                .or(o.kafka_stats().map(|k| k.batches_retried))
        },
    ),
    (
        "ringrelay_output_kafka_producer_resets_total",
        "counter",
        "New producer ids a Kafka output took after its first, because the broker lost or refused the producer's state; a batch appended but unanswered before one may be duplicated.",
        |o| o.kafka_stats().map(|k| k.producer_resets),
    ),
    (
        "ringrelay_output_kafka_duplicates_dropped_total",
        "counter",
        "Batches a Kafka output sent again that the broker already had (DUPLICATE_SEQUENCE_NUMBER): dropped by the idempotent producer, not duplicated.",
        |o| o.kafka_stats().map(|k| k.duplicates_dropped),
    ),
    (
        "ringrelay_output_acks_pending",
        "gauge",
        "Batches answered 200 and waiting for their Splunk HEC indexer acknowledgement.",
        |o| o.acks_pending().map(|n| n as u64),
    ),
];

/// The families of [`HTTP_FAMILIES`], HTTP outputs only.
fn output_http_tables(m: &mut Family<'_>, feeds: &[Feed]) {
    for (name, kind, help, value) in HTTP_FAMILIES {
        m.head(name, kind, help);
        for f in feeds {
            for o in &f.outputs {
                if let Some(v) = value(o) {
                    let labels = format!("feed=\"{}\",output=\"{}\"", f.cfg.name, o.name());
                    m.sample(name, &labels, v);
                }
            }
        }
    }
}

/// `ringrelay_alerts_total`, by kind.
fn alerts_total(m: &mut Family<'_>, summary: &Summary<'_>) {
    let name = "ringrelay_alerts_total";
    m.head(name, "counter", "Alerts raised (transitions), by kind.");
    for kind in crate::alert::AlertKind::ALL {
        m.sample(
            name,
            &format!("kind=\"{}\"", kind.name()),
            summary.alerts.raised[kind.index()],
        );
    }
}

/// The relay-wide counters: alert records written and refused, loop turns, input reads.
fn relay_counters(m: &mut Family<'_>, summary: &Summary<'_>, inst: &str) {
    for (name, help, v) in [
        (
            "ringrelay_alert_records_written_total",
            "Alert records appended to the alert feed.",
            summary.alerts.written,
        ),
        (
            "ringrelay_alert_records_refused_total",
            "Alert records the alert feed's ring refused.",
            summary.alerts.refused,
        ),
        (
            "ringrelay_loop_turns_total",
            "Event-loop turns (one poll and the work it woke).",
            summary.event_loop.turns,
        ),
        (
            "ringrelay_input_reads_total",
            "Reads of input connections that returned data (at most 4 a connection a turn).",
            summary.event_loop.input_reads,
        ),
    ] {
        m.head(name, "counter", help);
        m.sample(name, inst, v);
    }
}

/// `ringrelay_loop_turn_seconds_max`.
fn loop_turn_max(m: &mut Family<'_>, summary: &Summary<'_>, inst: &str) {
    let name = "ringrelay_loop_turn_seconds_max";
    m.head(
        name,
        "gauge",
        "Longest event-loop turn since the start: how long every socket, timer and signal waited.",
    );
    m.sample(
        name,
        inst,
        format!("{:.6}", summary.event_loop.turn_max.as_secs_f64()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_value_is_escaped() {
        assert_eq!(Label("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }
}
