//! The Kafka output: record batches from the ring into one topic through Kafka's idempotent
//! producer, inside the one event loop, the cursor committed only on the partition leader's
//! acknowledgement (`acks = all`).
//!
//! ## One connection, one request at a time
//! The output keeps one connection, to one broker, and has one request in flight on it, like
//! the HTTP output. On a new connection it asks `ApiVersions` (and chooses the newest version
//! of each API both sides speak), authenticates (SASL PLAIN or SCRAM, when configured), asks
//! `Metadata` for its topic (partitions, leaders, brokers' addresses), asks `InitProducerId`
//! once per process, and then sends `Produce` requests, each carrying one record batch (v2,
//! CRC-32C) for one partition. The batch's partition is chosen when it is cut: the sticky
//! partitioner (`key = "none"`) gives each batch the next partition the connected broker
//! leads; `key = "feed"` gives every batch the feed name's partition (murmur2, as Java and
//! librdkafka producers hash keys). A partition led by another broker makes the output
//! reconnect to that broker.
//!
//! ## What moves the cursor
//! Only the broker's answer to a Produce with error code 0 (or 46, DUPLICATE_SEQUENCE_NUMBER:
//! it has that batch already) commits the cursor past the batch. Everything else is decided by
//! [`errors::verdict`]:
//! - a moved leader, a timeout, too few replicas, any unknown code: the connection is closed
//!   and the **same batch** (same producer id, epoch and sequence) goes again after the backoff
//!   and a Metadata refresh. The broker appends it once: that is what the idempotent producer
//!   is for.
//! - too large or refused records (MESSAGE_TOO_LARGE, RECORD_LIST_TOO_LARGE, INVALID_RECORD):
//!   the batch is halved (the broker appended nothing of it, so the sequence stays), down to a
//!   single record, which goes to the dead-letter file (`<feed>.<output>.deadletter`), counted.
//! - a lost producer state (OUT_OF_ORDER_SEQUENCE_NUMBER, UNKNOWN_PRODUCER_ID, a fenced
//!   epoch): a new producer id, sequences from 0, the batch sent again.
//! - authorization, SASL and configuration errors (and a missing topic): `output_down` with the
//!   error and its fix, the alert after `alert_after`, retried with backoff; never
//!   dead-lettered record by record.
//!
//! ## Duplicates
//! Within one process, a batch sent again is appended once, across reconnects and broker
//! restarts. A new process (after a crash or a restart) gets a new producer id and re-sends
//! from the cursor: the batch that was in flight when the old process died, if the broker had
//! appended it, is in the topic twice. At most one batch (`max_batch_bytes`) per crash.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;
use mio::net::TcpStream;
use mio::{Registry, Token};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use crate::config::{KafkaCompression, KafkaOutput};
use crate::log::{Level, Limiter};
use crate::ring::{Pos, Ring};

mod answer;
pub mod batch;
pub mod cluster;
pub mod errors;
mod lengths;
pub mod partition;
pub mod sasl;
mod send;
pub mod wire;

use super::dead_letter::DeadLetters;
use super::link::State;
use super::scan::Scan;
use super::transport::Transport;
use super::{Core, Pass};
use batch::BatchWriter;
use cluster::{Partitioner, Producer, Topology, Versions};
use wire::FrameReader;

/// Counters of a Kafka output.
#[derive(Clone, Copy, Debug, Default)]
pub struct KafkaStats {
    /// Produce requests answered (for every partition in them).
    pub produce_answered: u64,
    /// Batches sent again (after a retryable error, a failed connection, a split or a new
    /// producer id).
    pub batches_retried: u64,
    /// Records written to the dead-letter file.
    pub dead_lettered: u64,
    /// New producer ids after the first (the broker lost or refused the producer's state).
    pub producer_resets: u64,
    /// Batches the broker said it had already (DUPLICATE_SEQUENCE_NUMBER): resends it dropped.
    pub duplicates_dropped: u64,
}

/// Where the connection's session is: what the next request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// ApiVersions (at version 3; at 0 when the broker refused 3).
    Versions { v0: bool },
    /// SaslHandshake.
    SaslHandshake,
    /// SaslAuthenticate, step 0 (client first or PLAIN) or 1 (SCRAM client final).
    SaslAuth { step: u8 },
    /// Metadata for the topic.
    Metadata,
    /// InitProducerId.
    ProducerId,
    /// Produce.
    Ready,
}

/// A request on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Req {
    Versions { version: i16 },
    SaslHandshake,
    SaslAuth { step: u8 },
    Metadata,
    ProducerId,
    Produce,
}

/// Where the one request in flight is.
#[derive(Clone, Copy, Debug)]
enum Exchange {
    Idle,
    Sending {
        req: Req,
        id: i32,
        deadline: Instant,
    },
    Receiving {
        req: Req,
        id: i32,
        deadline: Instant,
    },
}

/// The batch being produced: kept across reconnects, so that it is sent again exactly as it
/// was (same records, partition and sequence) until the broker answers it.
#[derive(Clone, Copy, Debug)]
struct Pending {
    from: Pos,
    to: Pos,
    records: u32,
    partition: i32,
    base_seq: i32,
    /// Sent at least once (a resend counts as a retry).
    sent: bool,
}

/// A Kafka output's sink: its settings, its connection and session, the cluster and producer
/// state, and the batch in flight.
pub(super) struct KafkaSink {
    cfg: KafkaOutput,
    conn: Option<Transport>,
    peer: Option<SocketAddr>,
    /// The address the connection dialled (a bootstrap broker or a leader), `host:port`.
    target: String,
    /// The next bootstrap broker to try.
    next_bootstrap: usize,
    /// A leader to connect to next, from Metadata.
    leader: Option<String>,
    /// Moved to another broker since the last delivery (a second move before one is a
    /// failed connect).
    moved_unproven: bool,
    phase: Phase,
    exchange: Exchange,
    correlation: i32,
    /// The request being written.
    out: Vec<u8>,
    sent: usize,
    reader: FrameReader,
    versions: Option<Versions>,
    topology: Option<Topology>,
    /// The node the connection reached, when Metadata names it.
    node: Option<i32>,
    producer: Producer,
    partitioner: Partitioner,
    batch: BatchWriter,
    pending: Option<Pending>,
    scan: Option<Scan>,
    /// A batch younger than `max_batch_age` waits until then.
    wait: Option<Instant>,
    /// Records per batch at most, while narrowing down a batch the broker refused.
    limit: u32,
    /// The limit holds until the output reaches this sequence number (the refused batch's
    /// end).
    narrow_until: u64,
    client_id: StrBytes,
    topic: TopicName,
    /// SASL SCRAM exchange in progress.
    scram: Option<sasl::Scram>,
    /// SCRAM's client final message, made from the server's first.
    scram_final: Option<Vec<u8>>,
    /// TLS: the client configuration (replaced by a reload).
    tls: Option<Arc<ClientConfig>>,
    pub(super) stats: KafkaStats,
    dead: DeadLetters,
    error_log: Limiter,
}

impl KafkaSink {
    pub(super) fn new(
        cfg: &KafkaOutput,
        dead_path: PathBuf,
        tls: Option<Arc<ClientConfig>>,
    ) -> KafkaSink {
        KafkaSink {
            target: cfg.brokers[0].clone(),
            next_bootstrap: 0,
            leader: None,
            moved_unproven: false,
            conn: None,
            peer: None,
            phase: Phase::Versions { v0: false },
            exchange: Exchange::Idle,
            correlation: 0,
            out: Vec::with_capacity(request_bytes(cfg)),
            sent: 0,
            reader: FrameReader::new(),
            versions: None,
            topology: None,
            node: None,
            producer: Producer::default(),
            partitioner: Partitioner::default(),
            batch: BatchWriter::new(cfg.max_batch_bytes),
            pending: None,
            scan: None,
            wait: None,
            limit: u32::MAX,
            narrow_until: 0,
            client_id: StrBytes::from_string(cfg.client_id.clone()),
            topic: TopicName(StrBytes::from_string(cfg.topic.clone())),
            scram: None,
            scram_final: None,
            tls,
            stats: KafkaStats::default(),
            dead: DeadLetters::new(dead_path),
            error_log: Limiter::new(10, Duration::from_secs(60)),
            cfg: cfg.clone(),
        }
    }

    /// SIGHUP: re-reads the CA and client certificate files (`None` without TLS).
    pub(super) fn reload_tls(
        &mut self,
    ) -> Option<Result<Vec<crate::tls::Expired>, crate::tls::FileError>> {
        let files = &self.cfg.tls.as_ref()?.files;
        Some(crate::tls::client_config(files).map(|(config, expired)| {
            self.tls = Some(config);
            expired
        }))
    }

    pub(super) fn stream(&self) -> Option<&TcpStream> {
        self.conn.as_ref().map(Transport::stream_ref)
    }

    pub(super) fn peer_name(&self) -> String {
        match self.peer {
            Some(p) => p.to_string(),
            None => self.target.clone(),
        }
    }

    /// Ready, nothing in flight and no batch waiting for an answer: a connection that lasted
    /// `settle` like this proves itself (there was nothing to produce).
    pub(super) fn idle(&self) -> bool {
        self.phase == Phase::Ready
            && matches!(self.exchange, Exchange::Idle)
            && self.pending.is_none()
    }

    /// Whether a response is awaited (nothing to write meanwhile).
    pub(super) fn receiving(&self) -> bool {
        matches!(self.exchange, Exchange::Receiving { .. })
    }

    fn close(&mut self, registry: &Registry) {
        if let Some(mut c) = self.conn.take() {
            let _ = registry.deregister(c.stream());
        }
        self.exchange = Exchange::Idle;
        self.reader.reset();
        self.scan = None;
        self.wait = None;
        self.node = None;
        self.scram = None;
        self.scram_final = None;
    }

    /// When the sink wants the loop back while connected; with `idle_work` false (the rate
    /// limiter holds the output) only the request timeout counts.
    pub(super) fn deadline(&self, idle_work: bool) -> Option<Instant> {
        match self.exchange {
            Exchange::Sending { deadline, .. } | Exchange::Receiving { deadline, .. } => {
                Some(deadline)
            }
            Exchange::Idle if idle_work => self.wait,
            Exchange::Idle => None,
        }
    }

    /// Closes the connection after a failure (from `Output::fail`); the batch in flight stays,
    /// to be sent again as it was.
    pub(super) fn close_failed(&mut self, registry: &Registry) {
        self.close(registry);
        // The next connection starts from the next bootstrap broker, unless Metadata named a
        // leader to go to.
        self.target = match self.leader.take() {
            Some(l) => l,
            None => {
                let i = self.next_bootstrap % self.cfg.brokers.len();
                self.next_bootstrap = i + 1;
                self.cfg.brokers[i].clone()
            }
        };
    }

    /// Closes the connection and schedules a retry (as `Output::fail`).
    fn fail(&mut self, core: &mut Core, registry: &Registry, why: &str, now: Instant) {
        self.close_failed(registry);
        core.failed(why, now, &|| self.peer_name());
    }

    /// Goes to `leader` (the broker that leads the next batch's partition): the connection is
    /// closed quietly and the next one dials it at once.
    fn move_to(&mut self, core: &mut Core, registry: &Registry, leader: String, now: Instant) {
        crate::log!(
            Level::Info,
            "kafka_leader_elsewhere",
            feed = core.feed,
            output = core.name,
            peer = self.peer_name(),
            leader = leader
        );
        if core.link.unproven() && self.moved_unproven {
            // Moved before, and still nothing delivered: a failed connect, with its backoff
            // (no busy loop between brokers that each name another).
            self.leader = Some(leader);
            return self.fail(
                core,
                registry,
                "the partition's leader is another broker",
                now,
            );
        }
        self.moved_unproven = core.link.unproven();
        self.close(registry);
        self.target = leader;
        core.link.reopen(now);
    }

    /// Starts a non-blocking connect to the target broker.
    pub(super) fn connect(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        token: Token,
        now: Instant,
    ) {
        let session = match &self.tls {
            None => None,
            Some(config) => match self
                .server_name()
                .and_then(|name| Transport::tls_session(config, name))
            {
                Ok(c) => Some(c),
                Err(why) => return self.fail(core, registry, &why, now),
            },
        };
        match Transport::connect(self.target.as_str(), &self.target, registry, token, session) {
            Ok((conn, addr)) => {
                let insecure = self.cfg.tls.as_ref();
                if insecure.is_some_and(|t| t.files.insecure_skip_verify) {
                    super::connect::warn_insecure(core, &addr);
                }
                self.conn = Some(conn);
                self.peer = Some(addr);
                self.reader.reset();
                core.link.connecting(now);
            }
            Err(why) => self.fail(core, registry, &why, now),
        }
    }

    /// The name to verify: `server_name` when set, or the target broker's host.
    fn server_name(&self) -> Result<ServerName<'static>, String> {
        let name = match &self.cfg.tls {
            Some(t) if self.cfg.server_name_set => t.server_name.clone(),
            _ => self
                .target
                .rsplit_once(':')
                .map_or(self.target.as_str(), |(h, _)| h)
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
        };
        ServerName::try_from(name.clone())
            .map_err(|e| format!("TLS server name {name:?} of broker {}: {e}", self.target))
    }

    /// A new connection: its session starts with ApiVersions. The batch in flight on the last
    /// connection (if any) is sent again once the session is ready.
    pub(super) fn on_connected(&mut self, core: &mut Core) {
        self.exchange = Exchange::Idle;
        self.phase = Phase::Versions { v0: false };
        self.versions = None;
        self.scan = None;
        self.wait = None;
        if let Some(p) = &self.pending {
            core.send = p.from;
        }
    }

    /// Fires the request timeout while connected.
    pub(super) fn on_timer(&mut self, core: &mut Core, registry: &Registry, now: Instant) {
        if let Exchange::Sending { deadline, req, .. } | Exchange::Receiving { deadline, req, .. } =
            self.exchange
        {
            if deadline <= now {
                let why = format!(
                    "no answer to {req:?} within request_timeout ({}s)",
                    self.cfg.request_timeout.as_secs_f64()
                );
                self.fail(core, registry, &why, now);
            }
        }
    }

    /// The next correlation id.
    fn next_id(&mut self) -> i32 {
        self.correlation = self.correlation.wrapping_add(1) & i32::MAX;
        self.correlation
    }
}

/// A Kafka output's request buffer: the largest Produce request (a batch of
/// `max_batch_bytes`, gzip's worst case, and the request's own fields).
pub fn request_bytes(k: &KafkaOutput) -> usize {
    let batch = match k.compression {
        KafkaCompression::None => k.max_batch_bytes,
        KafkaCompression::Gzip => batch::gzip_bound(k.max_batch_bytes),
    };
    batch + 512 + k.client_id.len() + k.topic.len()
}

/// What the batch writer keeps: the batch and, with gzip, its compressed copy.
pub fn batch_bytes(k: &KafkaOutput) -> usize {
    match k.compression {
        KafkaCompression::None => k.max_batch_bytes,
        KafkaCompression::Gzip => k.max_batch_bytes + batch::gzip_bound(k.max_batch_bytes),
    }
}

/// The response buffer.
pub fn response_bytes() -> usize {
    4 + wire::MAX_RESPONSE
}

impl KafkaSink {
    /// Writes what the request buffer holds; `Some(true)` when all of it is written,
    /// `Some(false)` when the socket is full, `None` after a failure.
    fn flush(&mut self, core: &mut Core, registry: &Registry, now: Instant) -> Option<bool> {
        let conn = self.conn.as_mut()?;
        match conn.write_out(core, &self.out, &[], &mut self.sent) {
            Ok(done) => Some(done),
            Err(why) => {
                self.fail(core, registry, &why, now);
                None
            }
        }
    }

    /// Sends requests until the socket is full, an answer is awaited, or there is nothing to
    /// send yet.
    pub(super) fn write(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        now: Instant,
    ) -> Pass {
        loop {
            match self.exchange {
                Exchange::Receiving { .. } => return Pass::Blocked,
                Exchange::Sending { req, id, deadline } => match self.flush(core, registry, now) {
                    Some(true) => self.exchange = Exchange::Receiving { req, id, deadline },
                    Some(false) => return Pass::Blocked,
                    None => return Pass::Failed,
                },
                Exchange::Idle => {
                    if let Some(pass) = self.start_request(core, registry, ring, now) {
                        return pass;
                    }
                }
            }
        }
    }
}
