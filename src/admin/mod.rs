//! The admin endpoint on the relay's loop: `GET /metrics` (Prometheus text format 0.0.4),
//! `GET /health` (JSON), `GET /ready` (200 or 503).
//!
//! Small and bounded: at most `MAX_CONNS` connections, a request of at most `MAX_REQUEST` bytes
//! read within `REQUEST_TIMEOUT`, one request per connection (`Connection: close`). A bad
//! request gets 400 and the connection is closed; nothing here touches the data path.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::alert::AlertStats;
use crate::clock;
use crate::feed::{FailedFeed, Feed};
use crate::log::{Level, Limiter};
use crate::output::Output;

/// Token of the admin listener.
pub const LISTENER: Token = Token(999);
/// Tokens of admin connections: `CONN_BASE + slot`.
pub const CONN_BASE: usize = 5_000;
pub const MAX_CONNS: usize = 16;
const MAX_REQUEST: usize = 8 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// What a complete request asks for.
enum Route {
    Metrics,
    Health,
    Ready,
}

/// The admin listener and its connections.
pub struct Admin {
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    log: Limiter,
}

/// What the event loop did, for `/metrics`: a turn is one poll and the work it woke.
#[derive(Default)]
pub struct LoopStats {
    pub turns: u64,
    /// The longest turn: how long every other socket, timer and signal had to wait.
    pub turn_max: Duration,
    /// Reads of input connections that returned data.
    pub input_reads: u64,
}

/// What the endpoint reports about the relay as a whole.
pub struct Summary<'a> {
    pub instance: &'a str,
    pub role: &'a str,
    /// The fencing epoch this instance holds (0 on a standby).
    pub epoch: u64,
    pub started_ns: u64,
    pub alerts: &'a AlertStats,
    pub event_loop: &'a LoopStats,
    /// Feeds whose ring could not be opened.
    pub failed: &'a [FailedFeed],
}

impl Admin {
    /// Binds `addr` and registers it.
    pub fn bind(registry: &Registry, addr: SocketAddr) -> Result<Admin, String> {
        let mut listener = TcpListener::bind(addr)
            .map_err(|e| format!("admin endpoint: cannot listen on {addr}: {e}"))?;
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("admin endpoint: register: {e}"))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("admin endpoint: address: {e}"))?;
        crate::log!(Level::Info, "admin_listening", addr = local);
        Ok(Admin {
            listener,
            conns: (0..MAX_CONNS).map(|_| None).collect(),
            log: Limiter::new(5, Duration::from_secs(60)),
        })
    }

    /// Accepts until `WouldBlock`; beyond `MAX_CONNS` connections are closed at once.
    pub fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if let Some(suppressed) = self.log.allow(now) {
                        crate::log!(
                            Level::Warn,
                            "admin_accept_failed",
                            error = e,
                            suppressed = suppressed
                        );
                    }
                    return;
                }
            };
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                continue; // dropped: closed
            };
            let token = Token(CONN_BASE + slot);
            if registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            self.conns[slot] = Some(Conn {
                stream,
                peer,
                request: Vec::new(),
                response: Vec::new(),
                written: 0,
                deadline: now + REQUEST_TIMEOUT,
            });
        }
    }

    /// The earliest request deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.conns.iter().flatten().map(|c| c.deadline).min()
    }

    /// Closes connections past their deadline.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.deadline <= now) {
                self.close(registry, slot);
            }
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut c) = self.conns[slot].take() {
            let _ = registry.deregister(&mut c.stream);
        }
    }

    /// Serves a readiness event on connection `slot`.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        slot: usize,
        feeds: &[Feed],
        summary: &Summary<'_>,
    ) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        if c.response.is_empty() {
            let mut buf = [0u8; 2048];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => return self.close(registry, slot),
                    Ok(n) => {
                        if c.request.len() + n > MAX_REQUEST {
                            c.response = response(431, "text/plain", "request too large\n");
                            break;
                        }
                        c.request.extend_from_slice(&buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.close(registry, slot),
                }
            }
            if c.response.is_empty() {
                match parse(&c.request) {
                    Ok(None) => return, // incomplete: wait for more
                    Ok(Some((route, head_only))) => {
                        c.response = render(route, feeds, summary);
                        if head_only {
                            // HEAD: the same status and headers, no body.
                            let end = c
                                .response
                                .windows(4)
                                .position(|w| w == b"\r\n\r\n")
                                .map_or(c.response.len(), |i| i + 4);
                            c.response.truncate(end);
                        }
                    }
                    Err((status, why)) => {
                        if let Some(suppressed) = self.log.allow(clock::now()) {
                            crate::log!(
                                Level::Warn,
                                "admin_bad_request",
                                peer = c.peer,
                                status = status,
                                error = why,
                                suppressed = suppressed
                            );
                        }
                        c.response = response(status, "text/plain", &format!("{why}\n"));
                    }
                }
            }
        }
        while c.written < c.response.len() {
            match c.stream.write(&c.response[c.written..]) {
                Ok(0) => return self.close(registry, slot),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(registry, slot),
            }
        }
        self.close(registry, slot);
    }
}

/// Parses a request: `Ok(None)` while incomplete, the route (and whether it is a `HEAD`), or an
/// HTTP status and reason.
fn parse(bytes: &[u8]) -> Result<Option<(Route, bool)>, (u16, &'static str)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let head_only = match req.method {
                Some("GET") => false,
                Some("HEAD") => true,
                _ => return Err((405, "only GET and HEAD are supported")),
            };
            let path = req.path.unwrap_or("");
            let path = path.split('?').next().unwrap_or(path);
            match path {
                "/metrics" => Ok(Some((Route::Metrics, head_only))),
                "/health" => Ok(Some((Route::Health, head_only))),
                "/ready" => Ok(Some((Route::Ready, head_only))),
                _ => Err((404, "not found: try /metrics, /health or /ready")),
            }
        }
        Err(_) => Err((400, "malformed HTTP request")),
    }
}

fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

fn render(route: Route, feeds: &[Feed], summary: &Summary<'_>) -> Vec<u8> {
    match route {
        Route::Metrics => response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &metrics(feeds, summary),
        ),
        Route::Health => response(200, "application/json", &health(feeds, summary)),
        Route::Ready => {
            let (ready, why) = readiness(feeds, summary);
            // A failed feed does not make the others unready; it is named (feed names are
            // [a-z0-9_-], see the config).
            let failed: Vec<String> = summary
                .failed
                .iter()
                .map(|f| format!("\"{}\"", f.name))
                .collect();
            let body = format!(
                "{{\"ready\":{ready},\"reason\":\"{why}\",\"failed_feeds\":[{}]}}\n",
                failed.join(",")
            );
            response(if ready { 200 } else { 503 }, "application/json", &body)
        }
    }
}

/// A `block` ring with less room than this (a read's worth) is full for `/ready`.
const READY_ROOM: u64 = 64 << 10;

/// Ready means "send logs here": this relay is active, every running feed's input is bound,
/// and every ring takes records (a `block` ring that is full does not). Outputs do not count: a
/// SIEM outage is what the ring is for, and a load balancer must keep sending during one;
/// output health is on `/health` and in the metrics. A failed feed (its ring could not be
/// opened) is named in the body but does not make the others unready.
fn readiness(feeds: &[Feed], summary: &Summary<'_>) -> (bool, String) {
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

fn health(feeds: &[Feed], summary: &Summary<'_>) -> String {
    let (ready, _) = readiness(feeds, summary);
    let mut s = String::from("{\"instance\":");
    crate::alert::json_str(&mut s, summary.instance);
    let _ = write!(
        s,
        ",\"role\":\"{}\",\"ready\":{ready},\"feeds\":[",
        summary.role
    );
    for (i, f) in feeds.iter().enumerate() {
        let st = f.ring.stats();
        let _ = write!(
            s,
            "{}{{\"name\":\"{}\",\"state\":\"running\",\"ring\":\"ok\",\"records\":{},\"used_bytes\":{},\"capacity_bytes\":{},\"span_seconds\":{:.1},\"coverage_seconds\":{},\"connections\":{},\"outputs\":[",
            if i > 0 { "," } else { "" },
            f.cfg.name,
            st.records,
            st.used,
            st.capacity,
            st.span_secs(),
            json_seconds(f.coverage_secs()),
            f.input.conns,
        );
        for (j, o) in f.outputs.iter().enumerate() {
            let (lag, _) = o.lag(&f.ring);
            let _ = write!(
                s,
                "{}{{\"name\":\"{}\",\"connected\":{},\"state\":\"{}\",\"lag_records\":{lag},\"overrun_lost\":{}}}",
                if j > 0 { "," } else { "" },
                o.name,
                o.connected(),
                o.state_name(),
                o.overrun_lost(&f.ring),
            );
        }
        s.push_str("]}");
    }
    for (i, f) in summary.failed.iter().enumerate() {
        let _ = write!(
            s,
            "{}{{\"name\":\"{}\",\"state\":\"failed\",\"ring\":\"failed\",\"path\":",
            if i + feeds.len() > 0 { "," } else { "" },
            f.name
        );
        crate::alert::json_str(&mut s, &f.path.display().to_string());
        s.push_str(",\"error\":");
        crate::alert::json_str(&mut s, &f.error);
        s.push_str(",\"outputs\":[]}");
    }
    s.push_str("]}\n");
    s
}

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

fn json_seconds(v: Option<f64>) -> String {
    v.map_or("null".to_string(), |v| format!("{v:.0}"))
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

fn metrics(feeds: &[Feed], summary: &Summary<'_>) -> String {
    let mut out = String::with_capacity(4096 + feeds.len() * 4096);
    let mut m = Family { out: &mut out };
    let now_ns = clock::wall_ns();
    let inst = format!("instance_name=\"{}\"", Label(summary.instance));
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
        &inst,
        summary.started_ns / 1_000_000_000,
    );
    m.head(
        "ringrelay_epoch",
        "gauge",
        "The fencing epoch this instance holds as active (0 on a standby); a pair's two instances never hold the same one.",
    );
    m.sample("ringrelay_epoch", &inst, summary.epoch);
    process_metrics(&mut m, summary);

    type FeedValue = fn(&Feed) -> String;
    let feed_families: [(&str, &str, &str, FeedValue); 21] = [
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
    for (name, kind, help, value) in feed_families {
        m.head(name, kind, help);
        for f in feeds {
            m.sample(name, &format!("feed=\"{}\"", f.cfg.name), value(f));
        }
    }
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

    type OutValue = fn(&Feed, &Output, u64) -> String;
    let out_families: [(&str, &str, &str, OutValue); 12] = [
        (
            "ringrelay_output_records_delivered_total",
            "counter",
            "Records delivered for the first time.",
            |_, o, _| o.stats.delivered.to_string(),
        ),
        (
            "ringrelay_output_records_replayed_total",
            "counter",
            "Records sent again by the replay window after a reconnect or restart.",
            |_, o, _| o.stats.replayed.to_string(),
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
            |_, o, _| o.stats.corrupt_skipped.to_string(),
        ),
        (
            "ringrelay_output_bytes_sent_total",
            "counter",
            "Bytes written to the output, framing included.",
            |_, o, _| o.stats.bytes.to_string(),
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
            |_, o, _| o.stats.failures.to_string(),
        ),
        (
            "ringrelay_output_rate_limited_seconds_total",
            "counter",
            "Time spent waiting for rate_limit_eps.",
            |_, o, _| format!("{:.3}", o.stats.rate_limited_ns as f64 / 1e9),
        ),
        (
            "ringrelay_output_down_alert",
            "gauge",
            "1 while the output has been down for longer than its alert_after.",
            |_, o, _| u8::from(o.down_alerted).to_string(),
        ),
        (
            "ringrelay_output_tls_handshake_failures_total",
            "counter",
            "TLS handshakes with the receiver that failed (0 for other kinds).",
            |_, o, _| o.stats.tls_failures.to_string(),
        ),
    ];
    for (name, kind, help, value) in out_families {
        m.head(name, kind, help);
        for f in feeds {
            for o in &f.outputs {
                let labels = format!("feed=\"{}\",output=\"{}\"", f.cfg.name, o.name);
                m.sample(name, &labels, value(f, o, now_ns));
            }
        }
    }
    // HTTP outputs only.
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
                            f.cfg.name, o.name
                        ),
                        h.requests[i],
                    );
                }
            }
        }
    }
    type HttpValue = fn(&Output) -> Option<u64>;
    let http_families: [(&str, &str, &str, HttpValue); 3] = [
        (
            "ringrelay_output_records_dead_lettered_total",
            "counter",
            "Records an HTTP receiver refused alone with a 4xx, written to the dead-letter file and skipped.",
            |o| o.http_stats().map(|h| h.dead_lettered),
        ),
        (
            "ringrelay_output_batches_retried_total",
            "counter",
            "HTTP batches sent again: after 429/5xx, a timeout or connection error, a split (413 or other 4xx), or an ack timeout.",
            |o| o.http_stats().map(|h| h.batches_retried),
        ),
        (
            "ringrelay_output_acks_pending",
            "gauge",
            "Batches answered 200 and waiting for their Splunk HEC indexer acknowledgement.",
            |o| o.acks_pending().map(|n| n as u64),
        ),
    ];
    for (name, kind, help, value) in http_families {
        m.head(name, kind, help);
        for f in feeds {
            for o in &f.outputs {
                if let Some(v) = value(o) {
                    let labels = format!("feed=\"{}\",output=\"{}\"", f.cfg.name, o.name);
                    m.sample(name, &labels, v);
                }
            }
        }
    }
    let name = "ringrelay_alerts_total";
    m.head(name, "counter", "Alerts raised (transitions), by kind.");
    for kind in crate::alert::AlertKind::ALL {
        m.sample(
            name,
            &format!("kind=\"{}\"", kind.name()),
            summary.alerts.raised[kind.index()],
        );
    }
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
        m.sample(name, &inst, v);
    }
    let name = "ringrelay_loop_turn_seconds_max";
    m.head(
        name,
        "gauge",
        "Longest event-loop turn since the start: how long every socket, timer and signal waited.",
    );
    m.sample(
        name,
        &inst,
        format!("{:.6}", summary.event_loop.turn_max.as_secs_f64()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_value_is_escaped() {
        assert_eq!(Label("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn requests_are_routed_or_refused_with_a_status() {
        assert!(matches!(
            parse(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Ok(Some((Route::Metrics, false)))
        ));
        assert!(matches!(
            parse(b"GET /ready?x=1 HTTP/1.0\r\nHost: a\r\n\r\n"),
            Ok(Some((Route::Ready, false)))
        ));
        assert!(matches!(
            parse(b"HEAD /health HTTP/1.1\r\n\r\n"),
            Ok(Some((Route::Health, true)))
        ));
        assert!(matches!(parse(b"GET /health HTTP/1.1\r\nHo"), Ok(None)));
        assert!(matches!(
            parse(b"GET /nope HTTP/1.1\r\n\r\n"),
            Err((404, _))
        ));
        assert!(matches!(
            parse(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Err((405, _))
        ));
        assert!(matches!(parse(b"\x00\x01garbage\r\n\r\n"), Err((400, _))));
    }
}
