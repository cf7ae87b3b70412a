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
//! An HTTP output (`http_delivery.rs`) batches records into requests instead, and commits only
//! on success; see that module.
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

pub mod http;
pub mod link;
pub mod syslog;
use http::HttpSink;
pub use http::HttpStats;

/// Frames per `writev` (two or three iovecs each, under IOV_MAX = 1024).
const FRAMES_PER_WRITE: usize = 256;
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
const TLS_PLAIN_MAX: usize = 64 << 10;

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
}

/// One output of a feed.
pub struct Output {
    /// Its name (also the ring cursor's name).
    pub name: String,
    feed: String,
    sink: Sink,
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
    pub write_blocked: bool,
    /// The connection's lifecycle: its state, backoff, proof and outage.
    link: Link,
    /// Counters.
    pub stats: OutputStats,
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
    pub down_alerted: bool,
    /// After a restart in the middle of an outage, the alert waits this long for a first
    /// connect attempt.
    alert_not_before: Option<Instant>,
    /// Why the last connect or connection failed.
    last_error: String,
    /// Alerts raised and not yet taken by the relay.
    pub alerts: Vec<Alert>,
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
        let (sink, framing) = match &cfg.kind {
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
        };
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
        Ok(Output {
            name: cfg.name.clone(),
            feed: feed.to_string(),
            sink,
            framing,
            syslog: Header::new(&cfg.syslog, instance),
            prefix_buf: Vec::new(),
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
        })
    }

    /// Sets `rate_limit_eps` (0: unlimited) from a reload; the bucket starts full.
    pub fn set_rate_limit(&mut self, eps: u64, now: Instant) {
        if let Some(b) = self.bucket.as_mut() {
            if let Some(since) = b.empty_since.take() {
                self.stats.rate_limited_ns += now.duration_since(since).as_nanos() as u64;
            }
        }
        self.bucket = (eps > 0).then(|| Bucket::new(eps, now));
    }

    /// Points a `tcp` output at a new address from a reload: a live connection is closed and the
    /// output reconnects there (with its replay window, as after any reconnect).
    pub fn set_address(&mut self, registry: &Registry, address: &str, now: Instant) {
        let Sink::Tcp { address: a, .. } = &mut self.sink else {
            return;
        };
        address.clone_into(a);
        if !matches!(self.link.state(), State::Backoff { .. }) {
            self.fail(registry, "address changed by a configuration reload", now);
        }
        // Reconnect at once rather than after a backoff.
        self.link.reconnect_now(now);
    }

    /// The ring cursor this output commits.
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// When this output wants to be woken up without an event.
    pub fn deadline(&self) -> Option<Instant> {
        let state = match self.link.state() {
            State::Backoff { .. } | State::Connecting { .. } | State::Handshaking { .. } => {
                self.link.poll_at()
            }
            State::Connected => {
                let bucket = self
                    .bucket
                    .as_ref()
                    .and_then(|b| b.empty_since.map(|_| b.wake));
                let http = match &self.sink {
                    Sink::Http(h) => h.deadline(bucket.is_none()),
                    _ => None,
                };
                earliest(earliest(bucket, http), self.link.poll_at())
            }
        };
        earliest(state, self.alert_due())
    }

    /// When the `output_down` alert is due, if it is not raised yet.
    fn alert_due(&self) -> Option<Instant> {
        match (self.link.down_since(), self.alert_after) {
            (Some(since), Some(after)) if !self.down_alerted => {
                Some((since + after).max(self.alert_not_before.unwrap_or(since)))
            }
            _ => None,
        }
    }

    /// Raises `output_down` once the output has been down for `alert_after`.
    fn check_down_alert(&mut self, now: Instant) {
        let (Some(due), Some(since)) = (self.alert_due(), self.link.down_since()) else {
            return;
        };
        if now < due {
            return;
        }
        self.down_alerted = true;
        let down_s = now.saturating_duration_since(since).as_secs();
        crate::log!(
            Level::Error,
            "output_down_alert",
            feed = self.feed,
            output = self.name,
            peer = self.peer_name(),
            down_s = down_s,
            since = clock::rfc3339(self.down_since_ns),
            error = self.last_error
        );
        self.alerts.push(Alert {
            kind: AlertKind::OutputDown,
            feed: self.feed.clone(),
            output: Some(self.name.clone()),
            detail: vec![
                ("peer", Value::Text(self.peer_name())),
                ("down_s", Value::Num(down_s)),
                ("since", Value::Text(clock::rfc3339(self.down_since_ns))),
                ("error", Value::Text(self.last_error.clone())),
            ],
        });
    }

    /// Whether the output is connected and not waiting on its socket.
    pub fn can_write(&self) -> bool {
        matches!(self.link.state(), State::Connected)
            && !self.write_blocked
            && self.bucket.as_ref().is_none_or(|b| b.empty_since.is_none())
            && !matches!(&self.sink, Sink::Http(h) if h.receiving())
    }

    /// An HTTP output's counters (`None` for other kinds).
    pub fn http_stats(&self) -> Option<HttpStats> {
        match &self.sink {
            Sink::Http(h) => Some(h.stats),
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
        self.link.delivering()
    }

    /// Fires an expired deadline: start a connect, or give up on one.
    pub fn on_timer(&mut self, registry: &Registry, token: Token, ring: &mut Ring, now: Instant) {
        self.check_down_alert(now);
        match self.link.due(now) {
            Some(Due::Settled) if self.may_prove_by_time() => self.prove(ring, now),
            Some(Due::Connect) => return self.connect(registry, token, ring, now),
            Some(Due::ConnectTimeout) => return self.fail(registry, "connect timed out", now),
            Some(Due::HandshakeTimeout) => {
                self.stats.tls_failures += 1;
                return self.fail(registry, "TLS handshake timed out (reason=timeout)", now);
            }
            Some(Due::Settled) | None => {}
        }
        if self.link.state() == State::Connected {
            if matches!(self.sink, Sink::Http(_)) {
                self.http_on_timer(registry, now);
            }
            if let Some(b) = self.bucket.as_mut().filter(|b| b.wake <= now) {
                if let Some(since) = b.empty_since.take() {
                    self.stats.rate_limited_ns += now.duration_since(since).as_nanos() as u64;
                }
            }
        }
    }

    fn connect(&mut self, registry: &Registry, token: Token, ring: &mut Ring, now: Instant) {
        match &mut self.sink {
            Sink::Http(_) => self.http_connect(registry, token, now),
            Sink::File {
                path,
                file,
                size,
                torn_from,
                ..
            } => match open_append(path).and_then(|f| untorn(f, torn_from)) {
                Ok(f) => {
                    *size = f.metadata().map_or(0, |m| m.len());
                    *file = Some(f);
                    self.on_connected(ring, now);
                }
                Err(e) => {
                    let why = format!("open {}: {e}", path.display());
                    self.fail(registry, &why, now);
                }
            },
            Sink::Tcp {
                address,
                stream,
                peer,
                ..
            } => {
                // Names are resolved at each connect, as NSS does; a literal address costs no
                // lookup. (A hostname's lookup blocks the loop for as long as the resolver takes.)
                let addr = match address.to_socket_addrs().map(|mut a| a.next()) {
                    Ok(Some(a)) => a,
                    Ok(None) => return self.fail(registry, "address resolved to nothing", now),
                    Err(e) => {
                        let why = format!("resolve {address}: {e}");
                        return self.fail(registry, &why, now);
                    }
                };
                match TcpStream::connect(addr) {
                    Ok(mut s) => {
                        if let Err(e) = registry.register(
                            &mut s,
                            token,
                            Interest::READABLE | Interest::WRITABLE,
                        ) {
                            let why = format!("register socket: {e}");
                            return self.fail(registry, &why, now);
                        }
                        *stream = Some(s);
                        *peer = Some(addr);
                        self.link.connecting(now);
                    }
                    Err(e) => {
                        let why = format!("connect {addr}: {e}");
                        self.fail(registry, &why, now);
                    }
                }
            }
        }
    }

    fn on_connected(&mut self, ring: &mut Ring, now: Instant) {
        let cursor = ring.cursor_pos(self.cursor);
        let mut start = cursor;
        if self.disconnect_ns > 0 && !self.replay.is_zero() {
            let from = self
                .disconnect_ns
                .saturating_sub(u64::try_from(self.replay.as_nanos()).unwrap_or(u64::MAX));
            let p = ring.seek_time(from);
            if p.seq < start.seq {
                start = p;
            }
        }
        self.note_overrun(ring);
        // Whatever was checked of this entry before the outage, it is checked again.
        self.send = start.recheck();
        if matches!(self.sink, Sink::Http(_)) {
            self.http_on_connected();
        }
        self.partial = 0;
        // Records sent before (on a connection that failed, proven or not) count as replayed.
        self.replay_until = cursor.seq.max(self.sent_high);
        self.write_blocked = false;
        self.stats.connects += 1;
        let proven_now = self.link.connected(now);
        let replaying = cursor.seq - start.seq;
        // While connections keep failing, their lines share the output_down lines' limit.
        let suppressed = if self.link.attempts() < 2 {
            Some(0)
        } else {
            self.down_log.allow(now)
        };
        if let Some(suppressed) = suppressed {
            crate::log!(
                Level::Info,
                "output_connected",
                feed = self.feed,
                output = self.name,
                peer = self.peer_name(),
                resume_seq = start.seq,
                replay_records = replaying,
                failed_attempts = self.link.attempts(),
                suppressed = suppressed
            );
        }
        if proven_now {
            self.prove(ring, now);
        }
    }

    /// The connection lasted `settle` (a file took whole records, an HTTP output got a 2xx): the output is
    /// delivering. The backoff starts again from its minimum, the outage ends (with
    /// `output_recovered` if it had raised its alert), and a stream output commits what it
    /// wrote meanwhile.
    fn prove(&mut self, ring: &mut Ring, now: Instant) {
        let Some(outage) = self.link.prove() else {
            return;
        };
        self.alert_not_before = None;
        if let Some(since) = outage {
            if std::mem::take(&mut self.down_alerted) {
                let down_s = now.saturating_duration_since(since).as_secs();
                crate::log!(
                    Level::Info,
                    "output_recovered",
                    feed = self.feed,
                    output = self.name,
                    peer = self.peer_name(),
                    down_s = down_s
                );
                self.alerts.push(Alert {
                    kind: AlertKind::OutputRecovered,
                    feed: self.feed.clone(),
                    output: Some(self.name.clone()),
                    detail: vec![
                        ("peer", Value::Text(self.peer_name())),
                        ("down_s", Value::Num(down_s)),
                    ],
                });
            }
        }
        if self.defers_commits() {
            let send = self.send;
            self.commit_upto(ring, send);
        }
    }

    /// At shutdown: a connection still up has not failed within `settle` so far; it counts as
    /// proven, so what it delivered is committed (a restart still replays its window).
    pub fn on_shutdown(&mut self, ring: &mut Ring, now: Instant) {
        if matches!(self.link.state(), State::Connected) && self.may_prove_by_time() {
            self.prove(ring, now);
        }
    }

    /// Whether the connection may prove itself by lasting `settle`: always, but for an HTTP
    /// output with a request in flight, whose answer decides.
    fn may_prove_by_time(&self) -> bool {
        match &self.sink {
            Sink::Http(h) => h.idle(),
            _ => true,
        }
    }

    /// A stream output (TCP, TLS) commits nothing before its connection proved itself: a
    /// receiver that accepts and closes at once has shown nothing was kept.
    fn defers_commits(&self) -> bool {
        matches!(self.sink, Sink::Tcp { .. })
    }

    fn peer_name(&self) -> String {
        match &self.sink {
            Sink::Tcp { peer: Some(p), .. } => p.to_string(),
            Sink::Tcp { address, .. } => address.clone(),
            Sink::File { path, .. } => path.display().to_string(),
            Sink::Http(h) => h.peer_name(),
        }
    }

    /// Starts the TLS handshake on a connected socket.
    fn start_tls(&mut self, registry: &Registry, ring: &mut Ring, now: Instant) {
        let insecure =
            matches!(&self.sink, Sink::Tcp { tls: Some(t), .. } if t.files.insecure_skip_verify);
        if insecure {
            crate::log!(
                Level::Warn,
                "tls_verification_disabled",
                feed = self.feed,
                output = self.name,
                peer = self.peer_name(),
                reason =
                    "insecure_skip_verify = true: the receiver is not authenticated (labs only)"
            );
        }
        let Sink::Tcp { tls: Some(t), .. } = &mut self.sink else {
            return;
        };
        match ClientConnection::new(t.config.clone(), t.server_name.clone()) {
            Ok(mut c) => {
                c.set_buffer_limit(Some(tls::BUFFER_LIMIT));
                t.conn = Some(c);
                t.held = 0;
                self.link.handshaking(now);
                self.handshake(registry, ring, now);
            }
            Err(e) => {
                let why = format!("TLS session: {e}");
                self.fail(registry, &why, now);
            }
        }
    }

    /// Drives the TLS handshake as far as the socket allows.
    fn handshake(&mut self, registry: &Registry, ring: &mut Ring, now: Instant) {
        let Sink::Tcp {
            stream: Some(s),
            tls: Some(t),
            ..
        } = &mut self.sink
        else {
            return;
        };
        let failure = loop {
            match t.flush(s) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => break format!("TLS handshake: write: {e}"),
            }
            let Some(c) = t.conn.as_mut() else {
                return;
            };
            if !c.is_handshaking() {
                let version = c
                    .protocol_version()
                    .map_or("?".to_string(), |v| format!("{v:?}"));
                crate::log!(
                    Level::Info,
                    "tls_established",
                    feed = self.feed,
                    output = self.name,
                    server_name = t.server_name.to_str(),
                    version = version
                );
                return self.on_connected(ring, now);
            }
            match c.read_tls(s) {
                Ok(0) => break "TLS handshake: the receiver closed the connection".to_string(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break format!("TLS handshake: read: {e}"),
            }
            if let Err(e) = c.process_new_packets() {
                let _ = c.write_tls(s); // the alert, best effort
                break format!(
                    "TLS handshake failed (reason={}): {e}",
                    tls::failure_reason(&e)
                );
            }
        };
        self.stats.tls_failures += 1;
        self.fail(registry, &failure, now);
    }

    /// SIGHUP: re-reads a TLS output's CA and client certificate files. `None` for other
    /// kinds; on error the old configuration stays.
    pub fn reload_tls(&mut self) -> Option<Result<Vec<tls::Expired>, tls::FileError>> {
        if let Sink::Http(h) = &mut self.sink {
            return h.reload_tls();
        }
        let Sink::Tcp { tls: Some(t), .. } = &mut self.sink else {
            return None;
        };
        Some(tls::client_config(&t.files).map(|(config, expired)| {
            t.config = config;
            expired
        }))
    }

    /// Closes the connection and schedules a retry with capped exponential backoff and jitter.
    fn fail(&mut self, registry: &Registry, why: &str, now: Instant) {
        let was_connected = matches!(self.link.state(), State::Connected);
        if let Sink::Tcp { stream, tls, .. } = &mut self.sink {
            if let Some(mut s) = stream.take() {
                let _ = registry.deregister(&mut s);
            }
            if let Some(t) = tls {
                t.conn = None;
                t.held = 0;
            }
        }
        if let Sink::File { file, .. } = &mut self.sink {
            *file = None;
        }
        if matches!(self.sink, Sink::Http(_)) {
            self.http_close(registry, was_connected);
        }
        // A connection that had not proven itself is a failed connect: the outage and the
        // backoff go on, and nothing it wrote was committed.
        let failure = self.link.fail(now);
        if failure.outage_starts {
            self.disconnect_ns = clock::wall_ns();
            self.down_since_ns = self.disconnect_ns;
        }
        self.last_error.clear();
        self.last_error.push_str(why);
        if failure.unproven {
            let settle = self.settle.as_secs_f64();
            let _ = write!(
                self.last_error,
                " (within settle = {settle}s of connecting: a failed connect)"
            );
        }
        self.stats.failures += 1;
        let delay = failure.delay;
        if let Some(suppressed) = self.down_log.allow(now) {
            crate::log!(
                Level::Warn,
                "output_down",
                feed = self.feed,
                output = self.name,
                peer = self.peer_name(),
                error = self.last_error,
                retry_ms = delay.as_millis(),
                suppressed = suppressed
            );
        }
    }

    /// Handles a readiness event on the output's socket.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        ring: &mut Ring,
        readable: bool,
        writable: bool,
        now: Instant,
    ) {
        if let State::Connecting { .. } = self.link.state() {
            if !writable {
                return;
            }
            let s = match &self.sink {
                Sink::Tcp {
                    stream: Some(s), ..
                } => s,
                Sink::Http(h) => match h.stream() {
                    Some(s) => s,
                    None => return,
                },
                _ => return,
            };
            let is_tls = matches!(&self.sink, Sink::Tcp { tls: Some(_), .. });
            match (s.take_error(), s.peer_addr()) {
                (Ok(None), Ok(_)) if is_tls => return self.start_tls(registry, ring, now),
                (Ok(None), Ok(_)) => self.on_connected(ring, now),
                (Ok(Some(e)) | Err(e), _) | (_, Err(e)) => {
                    if e.kind() == io::ErrorKind::NotConnected {
                        return; // spurious: the connect is still under way
                    }
                    let why = format!("connect: {e}");
                    return self.fail(registry, &why, now);
                }
            }
        }
        if let State::Handshaking { .. } = self.link.state() {
            return self.handshake(registry, ring, now);
        }
        if !matches!(self.link.state(), State::Connected) {
            return;
        }
        if matches!(self.sink, Sink::Http(_)) {
            if writable {
                self.write_blocked = false;
            }
            if readable {
                self.http_on_readable(registry, ring, now);
            }
            return;
        }
        if readable {
            if let Sink::Tcp {
                stream: Some(s),
                tls: Some(t),
                ..
            } = &mut self.sink
            {
                // Session tickets, key updates, close_notify, alerts: processed, plaintext
                // discarded.
                if let Some(why) = tls_read(t, s) {
                    return self.fail(registry, &why, now);
                }
            } else if let Sink::Tcp {
                stream: Some(s), ..
            } = &mut self.sink
            {
                // SIEMs do not talk back on syslog connections: read to notice EOF and resets.
                let mut buf = [0u8; 512];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return self.fail(registry, "peer closed the connection", now),
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            let why = format!("read: {e}");
                            return self.fail(registry, &why, now);
                        }
                    }
                }
            }
        }
        if writable {
            self.write_blocked = false;
        }
    }

    /// Writes frames from the ring until the head, a full socket or the budget.
    pub fn write(&mut self, registry: &Registry, ring: &mut Ring, now: Instant) -> Pass {
        if !self.can_write() {
            return Pass::Blocked;
        }
        if matches!(self.sink, Sink::Http(_)) {
            return self.write_http(registry, ring, now);
        }
        let mut budget = WRITE_BUDGET;
        loop {
            // A file that rotates by size takes what is left before it rotates (one frame
            // at least), so that no file grows far past `rotate_bytes`.
            let pass_budget = match &self.sink {
                Sink::File {
                    size, rotate_bytes, ..
                } if *rotate_bytes > 0 => {
                    budget.min(rotate_bytes.saturating_sub(*size).max(1) as usize)
                }
                // rustls takes no more per write: collect no more frames than that.
                Sink::Tcp { tls: Some(_), .. } => budget.min(TLS_PLAIN_MAX),
                _ => budget,
            };
            let allowed = match self.bucket.as_mut() {
                Some(b) => {
                    let n = b.allowance(now, self.partial > 0);
                    if n == 0 {
                        b.exhaust(now);
                        return Pass::Blocked;
                    }
                    n.min(FRAMES_PER_WRITE)
                }
                None => FRAMES_PER_WRITE,
            };
            // (start, len) of each frame's prefix in prefix_buf.
            let mut prefixes = [(0usize, 0usize); FRAMES_PER_WRITE];
            let mut header = [0u8; HEADER_MAX];
            self.prefix_buf.clear();
            // Each frame's payload (with its LF when the ring has it after the payload), and
            // whether an LF of its own follows.
            let mut payloads: [&[u8]; FRAMES_PER_WRITE] = [&[]; FRAMES_PER_WRITE];
            let mut lfs = [false; FRAMES_PER_WRITE];
            // (record position, frame bytes, next position, records) of each frame.
            let mut frames = [(Pos::default(), 0usize, Pos::default(), 1u64); FRAMES_PER_WRITE];
            // Newline frames with nothing added per record: the rest of each entry goes as one
            // frame, straight from the ring (`buffer-spec.md` §5).
            let runs = self.framing == OutFraming::Newline
                && !self.syslog.enabled()
                && self.bucket.is_none();
            let mut stamps = [0u64; FRAMES_PER_WRITE];
            let mut n = 0;
            let mut pos = self.send;
            let mut total = 0usize;
            let mut stop = None;
            // The frames must reach past the bytes of the first one already written (`partial`),
            // whatever the budget, the rate limiter or the mode of the pass that wrote them.
            while n < FRAMES_PER_WRITE
                && ((n < allowed && total < pass_budget)
                    || (self.partial > 0 && total <= self.partial))
            {
                match ring.read(pos) {
                    Read::Record(r) => {
                        // A frame partly on the wire is never cut shorter than what was sent.
                        let room = if self.partial > 0 && total <= self.partial {
                            usize::MAX
                        } else {
                            pass_budget.saturating_sub(total)
                        };
                        let start = self.prefix_buf.len();
                        let (body, lf, records, next) =
                            match runs.then(|| r.lines_within(room)).flatten() {
                                Some(lines) => (lines.bytes, false, lines.records, lines.next),
                                None => {
                                    let hlen = self.syslog.write(r.ts, r.pos.seq, &mut header);
                                    if self.framing == OutFraming::Octet {
                                        let _ =
                                            write!(self.prefix_buf, "{} ", hlen + r.payload.len());
                                    }
                                    self.prefix_buf.extend_from_slice(&header[..hlen]);
                                    let newline = self.framing == OutFraming::Newline;
                                    let (body, lf) = match r.line {
                                        Some(line) if newline => (line, false),
                                        _ => (r.payload, newline),
                                    };
                                    (body, lf, 1, r.next)
                                }
                            };
                        prefixes[n] = (start, self.prefix_buf.len() - start);
                        let frame = prefixes[n].1 + body.len() + usize::from(lf);
                        payloads[n] = body;
                        lfs[n] = lf;
                        stamps[n] = r.ts;
                        frames[n] = (r.pos, frame, next, records);
                        total += frame;
                        n += 1;
                        pos = next;
                    }
                    Read::End => break,
                    Read::Overrun { tail } => {
                        stop = Some(Stop::Overrun(tail));
                        break;
                    }
                    Read::Corrupt { at, damage, next } => {
                        stop = Some(Stop::Corrupt(at, damage, next));
                        break;
                    }
                }
            }
            if n == 0 {
                match stop {
                    Some(Stop::Overrun(_)) if self.partial > 0 => {
                        // Half a frame is on the wire and its record is gone: only closing the
                        // connection keeps the stream well-framed.
                        self.fail(registry, "ring overwrote the record being sent", now);
                        return Pass::Failed;
                    }
                    Some(Stop::Overrun(tail)) => {
                        self.note_overrun(ring);
                        self.send = tail;
                    }
                    Some(Stop::Corrupt(at, damage, next)) => {
                        self.note_damage(at, damage, next);
                        self.send = next;
                        self.partial = 0;
                        self.commit_upto(ring, next);
                    }
                    None => {
                        self.end_episode();
                        return Pass::Done;
                    }
                }
                continue;
            }
            // On the stack: at most three slices per frame (prefix, payload, LF).
            let mut iov: heapless::Vec<IoSlice<'_>, { 3 * FRAMES_PER_WRITE }> =
                heapless::Vec::new();
            let mut skip = self.partial;
            for i in 0..n {
                let (ps, pl) = prefixes[i];
                let lf: &[u8] = if lfs[i] { b"\n" } else { b"" };
                for part in [&self.prefix_buf[ps..ps + pl], payloads[i], lf] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    // Cannot fail: n <= FRAMES_PER_WRITE and three parts per frame.
                    let _ = iov.push(IoSlice::new(&part[skip..]));
                    skip = 0;
                }
            }
            let res = match &mut self.sink {
                Sink::Tcp {
                    stream: Some(s),
                    tls: Some(t),
                    ..
                } => t.write(s, &iov),
                Sink::Tcp {
                    stream: Some(s), ..
                } => s.write_vectored(&iov),
                Sink::File { file: Some(f), .. } => f.write_vectored(&iov),
                _ => return Pass::Failed,
            };
            drop(iov);
            let written = match res {
                Ok(0) => {
                    self.fail(registry, "write returned 0", now);
                    return Pass::Failed;
                }
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write_blocked = true;
                    return Pass::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = format!("write: {e}");
                    self.fail(registry, &why, now);
                    return Pass::Failed;
                }
            };
            self.stats.bytes += written as u64;
            if let Sink::File { size, .. } = &mut self.sink {
                *size += written as u64;
            }
            budget = budget.saturating_sub(written);
            // Advance over every frame written completely.
            let mut left = written + self.partial;
            for (i, &(p, frame, next, records)) in frames[..n].iter().enumerate() {
                if left < frame {
                    self.partial = left;
                    break;
                }
                left -= frame;
                self.partial = 0;
                self.last_sent_ts = stamps[i];
                if let Some(b) = self.bucket.as_mut() {
                    b.tokens -= records as f64;
                }
                if let Some(e) = self.episode.as_mut().filter(|e| e.before_ns == 0) {
                    e.before_ns = stamps[i];
                }
                let replayed = self.replay_until.saturating_sub(p.seq).min(records);
                self.stats.replayed += replayed;
                self.stats.delivered += records - replayed;
                self.send = next;
                self.sent_high = self.sent_high.max(next.seq);
            }
            let send = self.send;
            if send.seq > frames[0].0.seq && matches!(self.sink, Sink::File { .. }) {
                // A file that took whole records is delivering.
                self.prove(ring, now);
            }
            self.commit_upto(ring, send);
            if self.partial > 0 && matches!(self.sink, Sink::File { .. }) {
                // A file takes part of a write only when it is out of room (a full disk, a
                // size limit): cut the torn record off and wait, as for any failed write.
                let why = self.untear().err().unwrap_or_else(|| {
                    "short write: the file system took only part of a record (disk full?); cut back to the last whole record".to_string()
                });
                self.fail(registry, &why, now);
                return Pass::Failed;
            }
            if self.rotate_if_needed(registry, now) {
                return Pass::Failed;
            }
            if budget == 0 {
                return Pass::More;
            }
        }
    }

    /// Records lost to overwriting since this process started, including any the ring counted
    /// since the output last looked.
    pub fn overrun_lost(&self, ring: &Ring) -> u64 {
        ring.cursor_lost(self.cursor)
    }

    /// Receive time of the next record this output has to deliver, if any.
    pub fn lag(&self, ring: &Ring) -> (u64, Option<u64>) {
        let pos = ring.cursor_pos(self.cursor);
        let records = ring.head().seq.saturating_sub(pos.seq);
        let ts = match ring.read(pos) {
            Read::Record(r) if records > 0 => Some(r.ts),
            _ => None,
        };
        (records, ts)
    }

    /// Counts and logs damaged ring records this output skips, from `at` to `next`.
    fn note_damage(&mut self, at: Pos, damage: crate::ring::Damage, next: Pos) {
        self.stats.corrupt_skipped += next.seq - at.seq;
        crate::log!(
            Level::Error,
            "ring_damage_skipped",
            feed = self.feed,
            output = self.name,
            offset = at.off,
            seq = at.seq,
            records = next.seq - at.seq,
            damage = damage
        );
    }

    /// Counts what the ring overwrote under this output's cursor since the last look.
    fn note_overrun(&mut self, ring: &Ring) {
        let lost = ring.cursor_lost(self.cursor) - self.lost_seen;
        if lost == 0 {
            return;
        }
        self.lost_seen += lost;
        let after_ns = self.last_sent_ts;
        self.episode
            .get_or_insert(Episode {
                alerted: false,
                lost: 0,
                after_ns,
                before_ns: 0,
            })
            .lost += lost;
        self.alert_overrun();
    }

    /// Raises `output_overrun` once per episode, as soon as the loss is seen (while the output
    /// may still be down), or after a restart that found the episode unreported.
    fn alert_overrun(&mut self) {
        let Some(e) = self.episode.as_mut().filter(|e| !e.alerted) else {
            return;
        };
        e.alerted = true;
        let (lost, after) = (e.lost, time_or_unknown(e.after_ns));
        crate::log!(
            Level::Error,
            "output_overrun",
            feed = self.feed,
            output = self.name,
            lost = lost,
            lost_after = after,
            hint = "the ring overwrote records this output had not delivered: a larger buffer.size covers longer outages"
        );
        self.alerts.push(Alert {
            kind: AlertKind::OutputOverrun,
            feed: self.feed.clone(),
            output: Some(self.name.clone()),
            detail: vec![
                ("lost", Value::Num(lost)),
                ("lost_after", Value::Text(after)),
            ],
        });
    }

    /// The output has caught up with the head: one line for the whole overrun episode, with
    /// every record it lost and the time range they came from.
    fn end_episode(&mut self) {
        let Some(e) = self.episode.take() else {
            return;
        };
        let (after, before) = (time_or_unknown(e.after_ns), time_or_unknown(e.before_ns));
        crate::log!(
            Level::Error,
            "output_overrun_ended",
            feed = self.feed,
            output = self.name,
            lost = e.lost,
            lost_after = after,
            lost_before = before
        );
        self.alerts.push(Alert {
            kind: AlertKind::OutputOverrunEnded,
            feed: self.feed.clone(),
            output: Some(self.name.clone()),
            detail: vec![
                ("lost", Value::Num(e.lost)),
                ("lost_after", Value::Text(after)),
                ("lost_before", Value::Text(before)),
            ],
        });
    }

    /// Once a second: notices records the ring overwrote while the output was not writing (a
    /// long outage) and raises what is due.
    pub fn tick(&mut self, ring: &Ring, now: Instant) {
        self.note_overrun(ring);
        self.alert_overrun();
        self.check_down_alert(now);
    }

    /// What a restart must know of this output's health: the relay persists it with the
    /// cursor at every checkpoint (`buffer-spec.md` §4).
    pub fn health(&self) -> CursorState {
        let (overrun_base, overrun_after_ns, overrun_alerted) = match &self.episode {
            Some(e) => (self.lost_seen - e.lost, e.after_ns, e.alerted),
            None => (self.lost_seen, 0, false),
        };
        CursorState {
            down_since_ns: if self.link.down_since().is_some() {
                self.down_since_ns
            } else {
                0
            },
            overrun_base,
            overrun_after_ns,
            down_alerted: self.down_alerted,
            overrun_alerted,
        }
    }

    /// Cuts a file output back to its last whole record after a short write (a full disk), so
    /// that a torn record is never followed by the next one. `Err` names what failed; the cut
    /// is then made when the file is opened again, before anything is written to it.
    fn untear(&mut self) -> Result<(), String> {
        let Sink::File {
            path,
            file,
            size,
            torn_from,
            ..
        } = &mut self.sink
        else {
            return Ok(());
        };
        let whole = size.saturating_sub(self.partial as u64);
        self.stats.bytes = self.stats.bytes.saturating_sub(self.partial as u64);
        self.partial = 0;
        *torn_from = Some(whole);
        let res = match file.as_ref() {
            Some(f) => f.set_len(whole),
            None => Ok(()),
        };
        res.map_err(|e| {
            format!(
                "cut {} back to its last whole record at {whole} bytes: {e}",
                path.display()
            )
        })?;
        *size = whole;
        *torn_from = None;
        Ok(())
    }

    /// Commits the cursor forward to `pos` (never backward: a replay re-sends from behind it),
    /// unless the stream it went to has not proven itself yet.
    fn commit_upto(&mut self, ring: &mut Ring, pos: Pos) {
        if self.link.unproven() && self.defers_commits() {
            return;
        }
        if pos.seq > ring.cursor_pos(self.cursor).seq {
            ring.commit(self.cursor, pos);
        }
    }

    /// Rotates a file output past its size limit: `path` → `path.1` → … → `path.N`.
    /// Returns true if the rotation failed (the output is then in backoff).
    fn rotate_if_needed(&mut self, registry: &Registry, now: Instant) -> bool {
        let Sink::File {
            path,
            file,
            size,
            rotate_bytes,
            rotate_keep,
            ..
        } = &mut self.sink
        else {
            return false;
        };
        if *rotate_bytes == 0 || *size < *rotate_bytes || self.partial > 0 {
            return false;
        }
        let name = |i: u32| {
            let mut p = path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if let Some(f) = file.take() {
            let _ = f.sync_data();
        }
        let keep = (*rotate_keep).max(1);
        let _ = std::fs::remove_file(name(keep));
        for i in (1..keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let renamed = std::fs::rename(&*path, name(1));
        let reopened = open_append(path);
        match (renamed, reopened) {
            (Ok(()), Ok(f)) => {
                *file = Some(f);
                *size = 0;
                false
            }
            (Err(e), _) | (_, Err(e)) => {
                let why = format!("rotate {}: {e}", path.display());
                self.fail(registry, &why, now);
                true
            }
        }
    }

    /// Makes a file output's delivered bytes durable before its cursor is checkpointed.
    pub fn sync(&self) -> io::Result<()> {
        match &self.sink {
            Sink::File { file: Some(f), .. } => f.sync_data(),
            _ => Ok(()),
        }
    }

    /// A short description of the state, for progress lines.
    pub fn state_name(&self) -> &'static str {
        self.link.state().name()
    }
}

/// Reads what a TLS receiver sent after the handshake; `Some(why)` when the connection is over.
fn tls_read(t: &mut TlsOut, s: &mut TcpStream) -> Option<String> {
    let c = t.conn.as_mut()?;
    let mut buf = [0u8; 512];
    loop {
        match c.read_tls(s) {
            Ok(0) => return Some("peer closed the connection".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(format!("read: {e}")),
        }
        if let Err(e) = c.process_new_packets() {
            let _ = c.write_tls(s);
            return Some(format!("TLS: {e}"));
        }
        loop {
            match c.reader().read(&mut buf) {
                Ok(0) => return Some("peer closed the connection (close_notify)".into()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    None
}

/// Loads a TLS output's (or an https output's) client configuration; warns about expired
/// certificates.
fn client_tls(
    feed: &str,
    output: &str,
    server_name: &str,
    files: &ClientFiles,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), String> {
    let (config, expired) = tls::client_config(files)
        .map_err(|e| format!("feed {feed} output {output}: {}: {}", e.key, e.msg))?;
    tls::log_expired(feed, Some(output), &expired);
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("feed {feed} output {output}: server_name {server_name:?}: {e}"))?;
    Ok((config, name))
}

/// Opens a file output for appending, creating it and its directory (mode 0750) if needed.
fn open_append(path: &std::path::Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
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

/// A file output opened again after a short write: cut back to its last whole record first.
fn untorn(f: File, torn_from: &mut Option<u64>) -> io::Result<File> {
    if let Some(len) = *torn_from {
        if f.metadata()?.len() > len {
            f.set_len(len)?;
        }
        *torn_from = None;
    }
    Ok(f)
}
