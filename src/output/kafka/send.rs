//! Sending: the session's next request (ApiVersions, SASL, Metadata, InitProducerId), or the
//! next Produce: the batch in flight again, or a new one gathered from the ring once it is
//! full or old enough.

use bytes::Bytes;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, InitProducerIdRequest, MetadataRequest, ProduceRequest, ProducerId,
    SaslAuthenticateRequest, SaslHandshakeRequest,
};

use super::batch::{self, Compression};
use super::*;
use crate::config::{KafkaKey, SaslMechanism};
use crate::ring::Read;

/// A record batch's header (v2): 61 bytes.
const BATCH_HEADER: usize = 61;

/// A record's bytes in a batch, at most: its key and value, and the varints around them at
/// their longest (length 5, attributes 1, timestamp delta 10, offset delta 5, key and value
/// lengths 5 each, header count 1).
fn record_bound(key: Option<usize>, value: usize) -> usize {
    32 + key.unwrap_or(0) + value
}

impl KafkaSink {
    /// With nothing in flight: starts the session's next request, or a Produce. Returns how
    /// the pass ends when there is nothing to start.
    pub(super) fn start_request(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        now: Instant,
    ) -> Option<Pass> {
        let id = self.next_id();
        self.out.clear();
        self.sent = 0;
        let versions = self.versions;
        let (req, built) = match (self.phase, versions) {
            (Phase::Versions { v0 }, _) => {
                let version = if v0 { 0 } else { 3 };
                let body = ApiVersionsRequest::default()
                    .with_client_software_name(StrBytes::from_static_str("ringrelay"))
                    .with_client_software_version(StrBytes::from_static_str(env!(
                        "CARGO_PKG_VERSION"
                    )));
                (
                    Req::Versions { version },
                    self.put(ApiKey::ApiVersions, version, id, &body),
                )
            }
            (Phase::SaslHandshake, Some(v)) => {
                let Some(s) = &self.cfg.sasl else {
                    self.phase = Phase::Metadata;
                    return None;
                };
                let body = SaslHandshakeRequest::default()
                    .with_mechanism(StrBytes::from_static_str(s.mechanism.name()));
                let version = v.sasl.map_or(1, |(h, _)| h);
                (
                    Req::SaslHandshake,
                    self.put(ApiKey::SaslHandshake, version, id, &body),
                )
            }
            (Phase::SaslAuth { step }, Some(v)) => {
                let bytes = match self.sasl_bytes(step) {
                    Ok(b) => b,
                    Err(why) => {
                        self.fail(core, registry, &why, now);
                        return Some(Pass::Failed);
                    }
                };
                let body = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(bytes));
                let version = v.sasl.map_or(0, |(_, a)| a);
                (
                    Req::SaslAuth { step },
                    self.put(ApiKey::SaslAuthenticate, version, id, &body),
                )
            }
            (Phase::Metadata, Some(v)) => {
                let body = MetadataRequest::default()
                    .with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(self.topic.clone()))
                    ]))
                    .with_allow_auto_topic_creation(false);
                (
                    Req::Metadata,
                    self.put(ApiKey::Metadata, v.metadata, id, &body),
                )
            }
            (Phase::ProducerId, Some(v)) => {
                let body = InitProducerIdRequest::default()
                    .with_transactional_id(None)
                    .with_transaction_timeout_ms(60_000)
                    .with_producer_id(ProducerId(-1))
                    .with_producer_epoch(-1);
                (
                    Req::ProducerId,
                    self.put(ApiKey::InitProducerId, v.init_producer_id, id, &body),
                )
            }
            (Phase::Ready, Some(v)) => {
                if let Some(pass) = self.next_batch(core, registry, ring, now) {
                    return Some(pass);
                }
                (Req::Produce, self.put_produce(v.produce, id))
            }
            // A phase past Versions without versions: cannot happen; start the session over.
            (_, None) => {
                self.phase = Phase::Versions { v0: false };
                return None;
            }
        };
        if let Err(e) = built {
            crate::log!(
                Level::Error,
                "kafka_request_failed",
                feed = core.feed,
                output = core.name,
                request = format!("{req:?}"),
                error = e
            );
            self.fail(core, registry, &e, now);
            return Some(Pass::Failed);
        }
        self.exchange = Exchange::Sending {
            req,
            id,
            deadline: now + self.cfg.request_timeout,
        };
        None
    }

    fn put<T: kafka_protocol::protocol::Encodable + kafka_protocol::protocol::HeaderVersion>(
        &mut self,
        key: ApiKey,
        version: i16,
        id: i32,
        body: &T,
    ) -> Result<(), String> {
        wire::put_request(&mut self.out, key, version, id, &self.client_id, body)
    }

    /// The SASL bytes of `step`: PLAIN's one message, or SCRAM's client first (0) and client
    /// final (1, from the server's first message, kept in `scram`).
    fn sasl_bytes(&mut self, step: u8) -> Result<Vec<u8>, String> {
        let Some(s) = &self.cfg.sasl else {
            return Err("SASL step without sasl settings".to_string());
        };
        let hash = match s.mechanism {
            SaslMechanism::Plain => {
                let mut out = Vec::new();
                sasl::plain(&s.username, &s.password, &mut out);
                return Ok(out);
            }
            SaslMechanism::ScramSha256 => sasl::ScramHash::Sha256,
            SaslMechanism::ScramSha512 => sasl::ScramHash::Sha512,
        };
        if step == 0 {
            let nonce = sasl::nonce().map_err(|e| format!("SASL SCRAM: {e}"))?;
            let scram = sasl::Scram::new(hash, &s.username, &s.password, &nonce);
            let first = scram.client_first();
            self.scram = Some(scram);
            return Ok(first);
        }
        self.scram_final
            .take()
            .ok_or_else(|| "SCRAM final step without its first".to_string())
    }

    /// Makes sure a batch is ready to produce: the one in flight (sent again), or a new one
    /// cut from the ring. `Some(pass)` when there is nothing to send now.
    fn next_batch(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        now: Instant,
    ) -> Option<Pass> {
        let Some(topology) = self.topology.as_ref() else {
            self.phase = Phase::Metadata;
            return Some(Pass::More);
        };
        if let Some(p) = self.pending {
            // Sent again as it was: same records, partition, producer and sequence.
            if p.sent {
                self.stats.batches_retried += 1;
            }
            let leader = topology
                .leaders
                .get(p.partition as usize)
                .copied()
                .unwrap_or(-1);
            if let Some(pass) = self.leader_here(core, registry, leader, p.partition, now) {
                return Some(pass);
            }
            return self.encode(core, ring, p).err();
        }
        let scan = match self.gather(core, ring, now) {
            Ok(scan) => scan,
            Err(pass) => return Some(pass),
        };
        let Some(topology) = self.topology.as_ref() else {
            return Some(Pass::Blocked);
        };
        let Some(partition) = self
            .partitioner
            .next(self.cfg.key, &core.feed, topology, self.node)
        else {
            self.fail(
                core,
                registry,
                "no partition of the topic has a leader",
                now,
            );
            return Some(Pass::Failed);
        };
        let leader = topology.leaders[partition as usize];
        if let Some(pass) = self.leader_here(core, registry, leader, partition, now) {
            return Some(pass);
        }
        let base_seq = self.producer.take(partition, scan.records);
        let p = Pending {
            from: scan.from,
            to: scan.to,
            records: scan.records,
            partition,
            base_seq,
            sent: false,
        };
        self.pending = Some(p);
        self.encode(core, ring, p).err()
    }

    /// Whether this connection reaches `leader`: `None` when it does (or cannot tell: the
    /// broker's answer names no node at our address, as behind a load balancer); otherwise the
    /// connection moves to the leader and the pass ends.
    fn leader_here(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        leader: i32,
        partition: i32,
        now: Instant,
    ) -> Option<Pass> {
        if leader < 0 {
            let why = format!(
                "partition {partition} of {:?} has no leader",
                self.cfg.topic
            );
            self.fail(core, registry, &why, now);
            return Some(Pass::Failed);
        }
        if self.node.is_none_or(|n| n == leader) {
            return None;
        }
        let address = self
            .topology
            .as_ref()
            .and_then(|t| t.address(leader))
            .map(str::to_string);
        let Some(address) = address else {
            let why = format!(
                "Metadata names leader {leader} of partition {partition} but not its address"
            );
            self.fail(core, registry, &why, now);
            return Some(Pass::Failed);
        };
        self.move_to(core, registry, address, now);
        Some(Pass::Failed)
    }

    /// Walks the ring from the send position until the batch is full or reaches the head
    /// ([`Core::scan`]). `Err(pass)` when there is nothing to send yet (nothing at all, or a
    /// batch younger than `max_batch_age`).
    fn gather(&mut self, core: &mut Core, ring: &mut Ring, now: Instant) -> Result<Scan, Pass> {
        if core.send.seq >= self.narrow_until {
            self.limit = u32::MAX;
        }
        let (limit, key_len) = (self.limit, self.key_len(core));
        let mut scan = Scan::resume(self.scan, core.send, ring.tail(), limit, BATCH_HEADER);
        core.scan(
            ring,
            &mut scan,
            limit,
            self.cfg.max_batch_bytes,
            |payload, _| record_bound(key_len, payload.len()),
            |core, ring, _, next| core.commit_upto(ring, next),
        );
        if scan.records == 0 {
            self.scan = None;
            self.wait = None;
            core.end_episode();
            return Err(Pass::Done);
        }
        if let Some(at) = scan.wait_until(limit, self.cfg.max_batch_age, now) {
            self.scan = Some(scan);
            self.wait = Some(at);
            return Err(Pass::Blocked);
        }
        self.scan = None;
        self.wait = None;
        Ok(scan)
    }

    /// The key of every record: the feed's name with `key = "feed"`.
    fn key_len(&self, core: &Core) -> Option<usize> {
        (self.cfg.key == KafkaKey::Feed).then_some(core.feed.len())
    }

    /// Encodes batch `p` from the ring into the batch writer. `Err(pass)` when it cannot be
    /// built (its records were overwritten meanwhile: the producer starts over).
    fn encode(&mut self, core: &mut Core, ring: &mut Ring, p: Pending) -> Result<(), Pass> {
        let Some((id, epoch)) = self.producer.id else {
            self.phase = Phase::ProducerId;
            return Err(Pass::More);
        };
        let compression = match self.cfg.compression {
            KafkaCompression::None => Compression::None,
            KafkaCompression::Gzip => Compression::Gzip,
        };
        self.batch.begin(
            batch::Producer {
                id,
                epoch,
                base_sequence: p.base_seq,
            },
            compression,
        );
        let key = (self.cfg.key == KafkaKey::Feed).then_some(core.feed.as_bytes());
        let mut pos = p.from;
        let mut last_ts = 0;
        for _ in 0..p.records {
            let Read::Record(r) = ring.read(pos) else {
                // Overwritten (or damaged) since it was cut: these sequence numbers can never
                // be sent; a new producer id starts the partitions' sequences over.
                crate::log!(
                    Level::Warn,
                    "kafka_batch_overwritten",
                    feed = core.feed,
                    output = core.name,
                    first_seq = p.from.seq,
                    hint = "the ring overwrote records of the batch in flight; a new producer id follows"
                );
                self.pending = None;
                self.producer.reset();
                self.stats.producer_resets += 1;
                self.phase = Phase::ProducerId;
                return Err(Pass::More);
            };
            self.batch.push(key, r.payload, (r.ts / 1_000_000) as i64);
            last_ts = r.ts;
            pos = r.next;
        }
        core.last_sent_ts = last_ts;
        if let Some(e) = core.episode.as_mut().filter(|e| e.before_ns == 0) {
            e.before_ns = last_ts;
        }
        if let Some(b) = core.bucket.as_mut() {
            b.tokens -= f64::from(p.records);
        }
        Ok(())
    }

    /// The Produce request of the batch in the batch writer.
    fn put_produce(&mut self, version: i16, id: i32) -> Result<(), String> {
        let Some(p) = self.pending.as_mut() else {
            return Err("Produce without a batch".to_string());
        };
        p.sent = true;
        let partition = p.partition;
        self.batch
            .finish()
            .map_err(|e| format!("gzip of the record batch: {e}"))?;
        // The batch's buffer goes into the request as it is (no copy) and comes back below.
        let records = Bytes::from(self.batch.lend());
        let mut body = ProduceRequest::default()
            .with_transactional_id(None)
            .with_acks(-1)
            .with_timeout_ms(
                i32::try_from(self.cfg.request_timeout.as_millis()).unwrap_or(i32::MAX),
            )
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(self.topic.clone())
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(records))])]);
        let put = wire::put_request(
            &mut self.out,
            ApiKey::Produce,
            version,
            id,
            &self.client_id,
            &body,
        );
        // The request (now encoded) was the buffer's only owner: back to the batch writer,
        // emptied, with its capacity.
        let lent = body
            .topic_data
            .pop()
            .and_then(|mut t| t.partition_data.pop())
            .and_then(|mut p| p.records.take());
        if let Some(Ok(mut buf)) = lent.map(Bytes::try_into_mut) {
            buf.clear();
            self.batch.restore(Vec::from(buf));
        }
        put
    }
}
