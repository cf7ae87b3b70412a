//! Outputs: deliver a feed's ring to a SIEM over TCP or TLS, or to a file, from a durable
//! cursor.
//!
//! Each output walks the ring from its own position and writes frames straight from the mapping
//! with `writev` (no copy into a send buffer). Its cursor advances only past records whose
//! frames the socket (or file) accepted completely. A newline-framed output that adds nothing
//! per record (no syslog header, no rate limit) sends the rest of each entry as one frame:
//! a lines entry's records are already LF-terminated in the ring.
//!
//! ## What "accepted" means with TLS
//! A frame is accepted when rustls has taken its plaintext AND every TLS byte rustls made of it
//! has been written to the socket. Plaintext is only handed to rustls while its send buffer is
//! empty; the bytes it took are `held` until the flush completes, and only then do the frames
//! count as written (and the cursor moves). A connection lost with TLS bytes still queued
//! resends those frames after the reconnect. Like plain TCP, this says nothing about what the
//! receiver read: the replay window covers that.
//!
//! The plaintext goes to rustls as one slice of up to 64 KiB (its send buffer limit), copied
//! from the pass's frames into a buffer the output keeps: given several slices, rustls collects
//! them into a new `Vec` per call. rustls still allocates one buffer per TLS record it encrypts
//! (0.23 has no API that does not).
//!
//! ## Syslog
//! With `syslog` set, each frame is `[LEN SP] HEADER record [LF]`, the header written per
//! record from its receive time and sequence number into a buffer the output keeps.
//!
//! ## States (TCP, TLS)
//! `Backoff { until }` → (deadline) → `Connecting` → (writable, no error) → [TLS:
//! `Handshaking` → (handshake done)] → `Connected` → (error, EOF, reset) → `Backoff`. A failed
//! handshake (unknown CA, wrong name, ...) is a failed connect: logged with the reason, retried
//! with backoff. A file output opens (`Connected`) or fails to.
//!
//! ## Proof
//! A connection that accepted proves nothing: `Connected` starts unproven, and becomes proven
//! ([`Output::prove`]) once it has lasted `settle`, once a file took whole records, or at an
//! HTTP output's first 2xx. Only a proven connection ends the outage (the backoff starts again
//! at its minimum, `output_recovered`); one that fails before is a failed connect: the backoff
//! grows, the outage and its alert go on, and a TCP or TLS output commits nothing it wrote on it,
//! so the next connection resumes where the failing ones began, however long ago (a receiver
//! that accepts and closes, or refuses the client certificate after the handshake).
//!
//! An HTTP output ([`http`]) batches records into requests instead, and commits only on
//! success; see that module.
//!
//! ## Types
//! An [`Output`] is a `Core` (what every kind shares: cursor, send position, the [`Link`],
//! counters, losses, alerts) and a `Sink` enum, each kind with its own state: a stream (TCP
//! with optional TLS), a file, or an HTTP sink. The stream and file write passes are methods
//! of `Output` (`write.rs`); the HTTP sink's are methods of `HttpSink` that take the core as an
//! argument. No method asks a sink to be of a kind it is not.
//!
//! ## Replay
//! On every (re)connect the output resumes at `min(cursor, first record received at or after
//! disconnect_time - replay)`: plain TCP gives no proof of what the SIEM kept.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read as _, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

use crate::clock;
use crate::config::{OutFraming, OutputConfig, OutputKind};
use crate::log::{Level, Limiter};
use crate::ring::{CursorState, Pos, Read, Ring};
use crate::tls::{self, ClientFiles};
pub use link::State;
use link::{Due, Link};
use syslog::{Header, HEADER_MAX};

use crate::alert::{Alert, AlertKind, Value};

mod connect;
mod dead_letter;
mod file;
pub mod http;
pub mod kafka;
pub mod link;
mod losses;
mod scan;
pub mod syslog;
mod transport;
mod write;

use connect::client_tls;
use file::{open_append, untorn};
use http::HttpSink;
pub use http::HttpStats;
use kafka::KafkaSink;
pub use kafka::KafkaStats;

/// Frames per `writev` (two or three iovecs each, under IOV_MAX = 1024).
pub(crate) const FRAMES_PER_WRITE: usize = 256;
const _: () = assert!(
    3 * FRAMES_PER_WRITE <= 1024,
    "a write pass's iovecs exceed IOV_MAX"
);
/// Bytes one output may write per loop turn before others get their turn.
pub const WRITE_BUDGET: usize = 4 << 20;
/// After a restart in the middle of an outage, how long the `output_down` alert waits at least
/// for the first connect attempt (a SIEM that came back meanwhile is not reported down).
const ALERT_AFTER_RESTART: Duration = Duration::from_secs(1);

/// Counters of one output.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutputStats {
    /// Records delivered for the first time.
    pub delivered: u64,
    /// Records sent again by the replay window.
    pub replayed: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Successful connects.
    pub connects: u64,
    /// Failed connects and dropped connections.
    pub failures: u64,
    /// Damaged records skipped.
    pub corrupt_skipped: u64,
    /// Time spent waiting for the rate limiter, ns.
    pub rate_limited_ns: u64,
    /// TLS handshakes that failed.
    pub tls_failures: u64,
}

/// A token bucket for `rate_limit_eps`, refilled from the loop's clock. Records wait in the ring
/// while it is empty; nothing is dropped.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Empty since then: wake at `wake`.
    empty_since: Option<Instant>,
    wake: Instant,
}

impl Bucket {
    fn new(eps: u64, now: Instant) -> Bucket {
        let rate = eps as f64;
        // A tenth of a second of burst, so the limit holds over any second.
        let burst = (rate / 10.0).max(1.0);
        Bucket {
            rate,
            burst,
            tokens: burst,
            last: now,
            empty_since: None,
            wake: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Frames that may be sent now (at least one if half a frame is on the wire).
    fn allowance(&mut self, now: Instant, partial: bool) -> usize {
        self.refill(now);
        let n = self.tokens.max(0.0) as usize;
        if partial {
            n.max(1)
        } else {
            n
        }
    }

    /// No tokens: sleep until a batch is worth waking for.
    fn exhaust(&mut self, now: Instant) {
        let want = self.burst.min(64.0) - self.tokens;
        self.wake = now + Duration::from_secs_f64(want.max(1.0) / self.rate);
        self.empty_since.get_or_insert(now);
    }
}

/// Records an output lost to overwriting, from the first jump until it catches up.
struct Episode {
    /// The `output_overrun` alert was raised (when the loss was first seen).
    alerted: bool,
    lost: u64,
    /// Receive time of the last record delivered before the gap, ns (0: unknown).
    after_ns: u64,
    /// Receive time of the first record delivered after the gap, ns (0: not yet).
    before_ns: u64,
}

/// The TLS side of a TLS output.
struct TlsOut {
    files: ClientFiles,
    /// The configuration new connections use (replaced by a reload).
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    conn: Option<ClientConnection>,
    /// Plaintext bytes rustls took whose TLS bytes are not all on the socket yet.
    held: usize,
    /// One write's plaintext, copied from the pass's iovecs ([`TLS_PLAIN_MAX`] bytes, allocated
    /// once): rustls collects several slices into a `Vec` per call, one slice it takes as is.
    plain: Vec<u8>,
}

/// Plaintext handed to rustls per write: its send buffer limit (64 KiB by default), which it
/// would not take more than anyway. Four 16 KiB TLS records.
pub(crate) const TLS_PLAIN_MAX: usize = 64 << 10;

impl TlsOut {
    /// Writes what rustls has queued; `Ok` when all of it is on the socket.
    fn flush(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        match self.conn.as_mut() {
            Some(conn) => tls::flush(conn, stream),
            None => Ok(()),
        }
    }

    /// Hands `iov` to rustls (unless bytes are still held) and flushes; returns the plaintext
    /// bytes now accepted (see the module doc).
    ///
    /// `iov` starts where the held bytes start (the output's send position does not move while
    /// bytes are held) and covers at least as many bytes: the pass that collects it has a fresh
    /// byte budget and at least the rate limiter's earlier allowance.
    fn write(&mut self, stream: &mut TcpStream, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        debug_assert!(iov.iter().map(|b| b.len()).sum::<usize>() >= self.held);
        self.flush(stream)?;
        if self.held == 0 {
            let Some(conn) = self.conn.as_mut() else {
                return Err(io::ErrorKind::NotConnected.into());
            };
            self.plain.clear();
            for b in iov {
                let room = TLS_PLAIN_MAX - self.plain.len();
                self.plain.extend_from_slice(&b[..b.len().min(room)]);
                if b.len() >= room {
                    break;
                }
            }
            self.held = conn.writer().write(&self.plain)?;
            self.flush(stream)?;
        }
        Ok(std::mem::take(&mut self.held))
    }
}

enum Sink {
    Tcp {
        address: String,
        stream: Option<TcpStream>,
        peer: Option<SocketAddr>,
        /// Set for a TLS output.
        tls: Option<Box<TlsOut>>,
    },
    File {
        path: PathBuf,
        file: Option<File>,
        size: u64,
        rotate_bytes: u64,
        rotate_keep: u32,
        /// The length of the file at the end of its last whole record, while bytes of a
        /// record that was cut short (a full disk) may follow it: cut back before writing.
        torn_from: Option<u64>,
    },
    Http(Box<HttpSink>),
    Kafka(Box<KafkaSink>),
}

/// One output of a feed: what every kind shares ([`Core`]) and its sink, the kind's own
/// connection and state. Methods that need both take them apart (`self.core`, `self.sink`);
/// an HTTP sink's methods take the core as an argument.
pub struct Output {
    core: Core,
    sink: Sink,
}

/// What every kind of output shares: its place in the ring, its link's lifecycle, its
/// counters, losses and alerts.
struct Core {
    /// Its name (also the ring cursor's name).
    name: String,
    feed: String,
    /// A stream output (TCP, TLS): commits only what it wrote on a proven connection.
    defers_commits: bool,
    framing: OutFraming,
    syslog: Header,
    /// Frame prefixes (octet count, syslog header) of one write pass.
    prefix_buf: Vec<u8>,
    replay: Duration,
    /// How long a new connection must last before it counts as delivering.
    settle: Duration,
    cursor: usize,
    /// The next record to send.
    send: Pos,
    /// Bytes of `send`'s frame already written.
    partial: usize,
    /// Records below this sequence number are replays.
    replay_until: u64,
    /// One past the highest record written to any connection of this process.
    sent_high: u64,
    /// Wall-clock time of the last disconnect (ns), 0 if none to replay from.
    disconnect_ns: u64,
    /// The socket said `WouldBlock`: wait for a writable event.
    write_blocked: bool,
    /// The connection's lifecycle: its state, backoff, proof and outage.
    link: Link,
    /// Counters.
    stats: OutputStats,
    down_log: Limiter,
    bucket: Option<Bucket>,
    /// The ring's count of records this output's cursor lost, at the last look.
    lost_seen: u64,
    episode: Option<Episode>,
    /// Receive time of the last record written, ns.
    last_sent_ts: u64,
    /// Down for longer than this raises an alert.
    alert_after: Option<Duration>,
    /// Wall-clock time of `down_since`, ns.
    down_since_ns: u64,
    /// The `output_down` alert was raised for this outage.
    down_alerted: bool,
    /// After a restart in the middle of an outage, the alert waits this long for a first
    /// connect attempt.
    alert_not_before: Option<Instant>,
    /// Why the last connect or connection failed.
    last_error: String,
    /// Alerts raised and not yet taken by the relay.
    alerts: Vec<Alert>,
}

/// What stopped collecting frames, without the borrow of the ring.
enum Stop {
    Overrun(Pos),
    Corrupt(Pos, crate::ring::Damage, Pos),
}

/// Why a write pass stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    /// Everything up to the head was written.
    Done,
    /// The socket is full: wait for writable.
    Blocked,
    /// The byte budget ran out with more to write.
    More,
    /// The connection failed and was closed.
    Failed,
}

impl Output {
    /// Sets up an output for `feed`; `last_checkpoint_ns` is the previous run's last checkpoint
    /// (a restart counts as a reconnect for the replay window), 0 for a new ring.
    pub fn new(
        feed: &str,
        instance: &str,
        cfg: &OutputConfig,
        ring: &mut Ring,
        last_checkpoint_ns: u64,
        now: Instant,
    ) -> Result<Output, String> {
        let cursor = ring
            .cursor(&cfg.name)
            .map_err(|e| format!("feed {feed} output {}: no ring cursor: {e:?}", cfg.name))?;
        let (sink, framing) = Sink::new(feed, cfg, ring)?;
        let send = ring.cursor_pos(cursor);
        let lost = ring.cursor_lost(cursor);
        let health = ring.cursor_state(cursor);
        let wall = clock::wall_ns();
        // What the previous run knew of this output's health goes on (`buffer-spec.md` §4): an
        // outage keeps its start and its alert, an overrun episode its loss and its alert. An
        // output that was delivering is down from this start until it proves itself again.
        let (down_since_ns, down_since) = match health.down_since_ns {
            0 => (wall, now),
            ns => {
                let ago = Duration::from_nanos(wall.saturating_sub(ns));
                (ns, now.checked_sub(ago).unwrap_or(now))
            }
        };
        let episode = (lost > health.overrun_base).then_some(Episode {
            alerted: health.overrun_alerted,
            lost: lost - health.overrun_base,
            after_ns: health.overrun_after_ns,
            before_ns: 0,
        });
        let core = Core {
            name: cfg.name.clone(),
            feed: feed.to_string(),
            defers_commits: matches!(sink, Sink::Tcp { .. }),
            framing,
            syslog: Header::new(&cfg.syslog, instance),
            prefix_buf: Vec::with_capacity(prefix_bytes(cfg)),
            replay: cfg.replay,
            settle: cfg.settle,
            cursor,
            send,
            partial: 0,
            replay_until: send.seq,
            sent_high: send.seq,
            disconnect_ns: last_checkpoint_ns,
            write_blocked: false,
            link: Link::new(
                cfg.settle,
                0x9E37_79B9_7F4A_7C15 ^ u64::from(cursor as u32) ^ clock::wall_ns(),
                down_since,
                now,
            ),
            stats: OutputStats::default(),
            down_log: Limiter::new(3, Duration::from_secs(60)),
            bucket: (cfg.rate_limit_eps > 0).then(|| Bucket::new(cfg.rate_limit_eps, now)),
            lost_seen: lost,
            episode,
            last_sent_ts: 0,
            alert_after: cfg.alert_after,
            down_since_ns,
            down_alerted: health.down_since_ns != 0 && health.down_alerted,
            alert_not_before: (health.down_since_ns != 0).then(|| now + ALERT_AFTER_RESTART),
            last_error: "not connected yet".to_string(),
            alerts: Vec::new(),
        };
        Ok(Output { core, sink })
    }

    /// Sets `rate_limit_eps` (0: unlimited) from a reload; the bucket starts full.
    pub fn set_rate_limit(&mut self, eps: u64, now: Instant) {
        if let Some(b) = self.core.bucket.as_mut() {
            if let Some(since) = b.empty_since.take() {
                self.core.stats.rate_limited_ns += now.duration_since(since).as_nanos() as u64;
            }
        }
        self.core.bucket = (eps > 0).then(|| Bucket::new(eps, now));
    }

    /// Points a `tcp` output at a new address from a reload: a live connection is closed and the
    /// output reconnects there (with its replay window, as after any reconnect).
    pub fn set_address(&mut self, registry: &Registry, address: &str, now: Instant) {
        let Sink::Tcp { address: a, .. } = &mut self.sink else {
            return;
        };
        address.clone_into(a);
        if !matches!(self.core.link.state(), State::Backoff { .. }) {
            self.fail(registry, "address changed by a configuration reload", now);
        }
        // Reconnect at once rather than after a backoff.
        self.core.link.reconnect_now(now);
    }

    /// Its name (also the ring cursor's name).
    pub fn name(&self) -> &str {
        &self.core.name
    }

    /// Its counters.
    pub fn stats(&self) -> &OutputStats {
        &self.core.stats
    }

    /// Whether the `output_down` alert is raised for the outage under way.
    pub fn down_alerted(&self) -> bool {
        self.core.down_alerted
    }

    /// Alerts raised since the last call, for the relay to write.
    pub fn take_alerts(&mut self, into: &mut Vec<Alert>) {
        into.append(&mut self.core.alerts);
    }

    /// The ring cursor this output commits.
    pub fn cursor(&self) -> usize {
        self.core.cursor
    }

    /// When this output wants to be woken up without an event.
    pub fn deadline(&self) -> Option<Instant> {
        let state = match self.core.link.state() {
            State::Backoff { .. } | State::Connecting { .. } | State::Handshaking { .. } => {
                self.core.link.poll_at()
            }
            State::Connected => {
                let bucket = self
                    .core
                    .bucket
                    .as_ref()
                    .and_then(|b| b.empty_since.map(|_| b.wake));
                let http = match &self.sink {
                    Sink::Http(h) => h.deadline(bucket.is_none()),
                    Sink::Kafka(k) => k.deadline(bucket.is_none()),
                    _ => None,
                };
                earliest(earliest(bucket, http), self.core.link.poll_at())
            }
        };
        earliest(state, self.core.alert_due())
    }

    /// Whether the output is connected and not waiting on its socket.
    pub fn can_write(&self) -> bool {
        matches!(self.core.link.state(), State::Connected)
            && !self.core.write_blocked
            && self
                .core
                .bucket
                .as_ref()
                .is_none_or(|b| b.empty_since.is_none())
            && !matches!(&self.sink, Sink::Http(h) if h.receiving())
            && !matches!(&self.sink, Sink::Kafka(k) if k.receiving())
    }

    /// An HTTP output's counters (`None` for other kinds).
    pub fn http_stats(&self) -> Option<HttpStats> {
        match &self.sink {
            Sink::Http(h) => Some(h.stats),
            _ => None,
        }
    }

    /// A Kafka output's counters (`None` for other kinds).
    pub fn kafka_stats(&self) -> Option<KafkaStats> {
        match &self.sink {
            Sink::Kafka(k) => Some(k.stats),
            _ => None,
        }
    }

    /// Batches of an HTTP output waiting for their Splunk HEC acknowledgement.
    pub fn acks_pending(&self) -> Option<usize> {
        match &self.sink {
            Sink::Http(h) => Some(h.acks_pending()),
            _ => None,
        }
    }

    /// Whether the output is connected and has proven it (lasted `settle`, or got a 2xx).
    pub fn connected(&self) -> bool {
        self.core.link.delivering()
    }

    fn peer_name(&self) -> String {
        self.sink.peer_name()
    }

    /// SIGHUP: re-reads a TLS output's CA and client certificate files. `None` for other
    /// kinds; on error the old configuration stays.
    pub fn reload_tls(&mut self) -> Option<Result<Vec<tls::Expired>, tls::FileError>> {
        if let Sink::Http(h) = &mut self.sink {
            return h.reload_tls();
        }
        if let Sink::Kafka(k) = &mut self.sink {
            return k.reload_tls();
        }
        let Sink::Tcp { tls: Some(t), .. } = &mut self.sink else {
            return None;
        };
        Some(tls::client_config(&t.files).map(|(config, expired)| {
            t.config = config;
            expired
        }))
    }

    /// A short description of the state, for progress lines.
    pub fn state_name(&self) -> &'static str {
        self.core.link.state().name()
    }
}

impl Sink {
    /// The sink of a new output for `feed`, closed, and the framing its kind writes; a TLS or
    /// https output's client configuration is loaded here (an error names the file).
    fn new(feed: &str, cfg: &OutputConfig, ring: &Ring) -> Result<(Sink, OutFraming), String> {
        Ok(match &cfg.kind {
            OutputKind::Tcp(t) => (
                Sink::Tcp {
                    address: t.address.clone(),
                    stream: None,
                    peer: None,
                    tls: None,
                },
                t.framing,
            ),
            OutputKind::Tls(t) => {
                let (config, server_name) = client_tls(feed, &cfg.name, &t.server_name, &t.files)?;
                (
                    Sink::Tcp {
                        address: t.address.clone(),
                        stream: None,
                        peer: None,
                        tls: Some(Box::new(TlsOut {
                            files: t.files.clone(),
                            config,
                            server_name,
                            conn: None,
                            held: 0,
                            plain: Vec::with_capacity(TLS_PLAIN_MAX),
                        })),
                    },
                    t.framing,
                )
            }
            OutputKind::File(f) => (
                Sink::File {
                    path: f.path.clone(),
                    file: None,
                    size: 0,
                    rotate_bytes: f.rotate_bytes,
                    rotate_keep: f.rotate_keep,
                    torn_from: None,
                },
                f.framing,
            ),
            OutputKind::Http(h) => {
                let dir = ring.path().parent().unwrap_or(std::path::Path::new("."));
                let dead = dir.join(format!("{feed}.{}.deadletter", cfg.name));
                let tls = match &h.tls {
                    Some(t) => Some(client_tls(feed, &cfg.name, &t.server_name, &t.files)?),
                    None => None,
                };
                (
                    Sink::Http(Box::new(HttpSink::new(h, dead, tls))),
                    OutFraming::Newline,
                )
            }
            OutputKind::Kafka(k) => {
                let dir = ring.path().parent().unwrap_or(std::path::Path::new("."));
                let dead = dir.join(format!("{feed}.{}.deadletter", cfg.name));
                let tls = match &k.tls {
                    Some(t) => Some(client_tls(feed, &cfg.name, &t.server_name, &t.files)?.0),
                    None => None,
                };
                (
                    Sink::Kafka(Box::new(KafkaSink::new(k, dead, tls))),
                    OutFraming::Newline,
                )
            }
        })
    }

    /// The receiver, for log lines and alerts: its address once connected.
    fn peer_name(&self) -> String {
        match self {
            Sink::Tcp { peer: Some(p), .. } => p.to_string(),
            Sink::Tcp { address, .. } => address.clone(),
            Sink::File { path, .. } => path.display().to_string(),
            Sink::Http(h) => h.peer_name(),
            Sink::Kafka(k) => k.peer_name(),
        }
    }
}

impl Core {
    /// Counts records `from..to` as delivered or replayed.
    fn count_delivered(&mut self, from: Pos, to: Pos) {
        let replayed = self.replay_until.clamp(from.seq, to.seq) - from.seq;
        self.stats.replayed += replayed;
        self.stats.delivered += to.seq - from.seq - replayed;
    }

    /// Commits the cursor forward to `pos` (never backward: a replay re-sends from behind it),
    /// unless the stream it went to has not proven itself yet.
    fn commit_upto(&mut self, ring: &mut Ring, pos: Pos) {
        if self.link.unproven() && self.defers_commits {
            return;
        }
        if pos.seq > ring.cursor_pos(self.cursor).seq {
            ring.commit(self.cursor, pos);
        }
    }
}

/// An output's frame-prefix buffer: per frame of a write pass, an octet count (`LEN SP`, 21
/// bytes at most) and a syslog header; nothing when it adds neither.
pub fn prefix_bytes(o: &OutputConfig) -> usize {
    let framing = match &o.kind {
        OutputKind::Tcp(t) => t.framing,
        OutputKind::Tls(t) => t.framing,
        OutputKind::File(f) => f.framing,
        OutputKind::Http(_) | OutputKind::Kafka(_) => return 0,
    };
    let count = if framing == OutFraming::Octet { 21 } else { 0 };
    let header = if o.syslog.format == crate::config::Format::None {
        0
    } else {
        HEADER_MAX
    };
    FRAMES_PER_WRITE * (count + header)
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An RFC 3339 time, or "unknown" for 0.
fn time_or_unknown(ns: u64) -> String {
    if ns == 0 {
        "unknown".to_string()
    } else {
        clock::rfc3339(ns)
    }
}
