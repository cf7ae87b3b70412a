//! What an answer does: the bytes the broker sent read into frames, each frame decoded as the
//! answer to the request in flight, and acted on: the session moves on, or the batch is
//! delivered, sent again, split, dead-lettered, or the connection fails.

use std::io;

use kafka_protocol::messages::{
    ApiVersionsResponse, InitProducerIdResponse, MetadataResponse, ProduceResponse,
    SaslAuthenticateResponse, SaslHandshakeResponse,
};

use super::errors::{self, Verdict};
use super::wire::Frame;
use super::*;
use crate::ring::Read;

impl KafkaSink {
    /// Reads what the broker sent; handles each whole frame.
    pub(in crate::output) fn on_readable(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        now: Instant,
    ) {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let space = match self.reader.space() {
                Ok(s) => s,
                Err(why) => return self.fail(core, registry, &why, now),
            };
            let len = space.len();
            let (peer, target) = (self.peer, &self.target);
            let name = || peer.map_or_else(|| target.clone(), |p| p.to_string());
            let n = match conn.read_for(core, &name, space) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.reader.filled(0, len);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.reader.filled(0, len);
                    continue;
                }
                Err(e) => {
                    let why = format!("read: {e}");
                    return self.fail(core, registry, &why, now);
                }
            };
            self.reader.filled(n, len);
            if n == 0 && len > 0 {
                let idle = matches!(self.exchange, Exchange::Idle) && !self.reader.started();
                if idle && !core.link.unproven() {
                    // Brokers close idle connections (`connections.max.idle.ms`, 10 minutes
                    // by default): reconnect when there is something to send, quietly.
                    self.close(registry);
                    core.link.reopen(now);
                    return;
                }
                return self.fail(core, registry, "the broker closed the connection", now);
            }
            match self.reader.frame() {
                Ok(Frame::Partial) => continue,
                Ok(Frame::Whole(_)) => {}
                Err(why) => return self.fail(core, registry, &why, now),
            }
            let Exchange::Receiving { req, id, .. } = self.exchange else {
                return self.fail(
                    core,
                    registry,
                    "the broker sent bytes nobody asked for",
                    now,
                );
            };
            self.exchange = Exchange::Idle;
            let buf = self.reader.take();
            let result = self.on_frame(core, ring, req, id, &buf[4..], now);
            self.reader.restore(buf);
            if let Err(why) = result {
                return self.fail(core, registry, &why, now);
            }
            if self.conn.is_none() || !matches!(core.link.state(), State::Connected) {
                return;
            }
        }
    }

    /// Acts on the answer to `req`; `Err(why)` fails the connection.
    fn on_frame(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        req: Req,
        id: i32,
        frame: &[u8],
        now: Instant,
    ) -> Result<(), String> {
        match req {
            Req::Versions { version } => {
                let resp = wire::get_response::<ApiVersionsResponse>(frame, version, id);
                match resp {
                    // Not v3: the broker answers an unsupported version at v0 with
                    // UNSUPPORTED_VERSION; ask again at v0.
                    Ok(r) if r.error_code == 35 && version > 0 => {
                        self.phase = Phase::Versions { v0: true };
                    }
                    Err(_) if version > 0 => self.phase = Phase::Versions { v0: true },
                    Ok(r) => {
                        let versions = Versions::from_response(&r)?;
                        if self.cfg.sasl.is_some() && versions.sasl.is_none() {
                            return Err("sasl is set, but the broker does not speak SaslHandshake \
                                        and SaslAuthenticate v1 or later (a listener without SASL?)"
                                .to_string());
                        }
                        self.versions = Some(versions);
                        self.phase = if self.cfg.sasl.is_some() {
                            Phase::SaslHandshake
                        } else {
                            Phase::Metadata
                        };
                    }
                    Err(e) => return Err(e),
                }
            }
            Req::SaslHandshake => {
                let v = self.versions.and_then(|v| v.sasl).map_or(1, |(h, _)| h);
                let r = wire::get_response::<SaslHandshakeResponse>(frame, v, id)?;
                if r.error_code != 0 {
                    let offered: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
                    return Err(format!(
                        "SASL handshake: {}; the broker offers {}",
                        errors::describe(r.error_code, &self.cfg.topic),
                        offered.join(", ")
                    ));
                }
                self.phase = Phase::SaslAuth { step: 0 };
            }
            Req::SaslAuth { step } => {
                let v = self.versions.and_then(|v| v.sasl).map_or(0, |(_, a)| a);
                let r = wire::get_response::<SaslAuthenticateResponse>(frame, v, id)?;
                if r.error_code != 0 {
                    let msg = r.error_message.as_ref().map_or("", |m| m.as_str());
                    return Err(format!(
                        "SASL authentication failed: {} {msg}",
                        errors::describe(r.error_code, &self.cfg.topic)
                    ));
                }
                self.phase = match (self.scram.as_mut(), step) {
                    (None, _) => Phase::Metadata,
                    (Some(scram), 0) => {
                        let fin = scram
                            .client_final(&r.auth_bytes)
                            .map_err(|e| format!("SASL SCRAM: {e}"))?;
                        self.scram_final = Some(fin);
                        Phase::SaslAuth { step: 1 }
                    }
                    (Some(scram), _) => {
                        scram
                            .verify_server_final(&r.auth_bytes)
                            .map_err(|e| format!("SASL SCRAM: {e}"))?;
                        self.scram = None;
                        Phase::Metadata
                    }
                };
            }
            Req::Metadata => {
                let v = self.versions.map_or(4, |v| v.metadata);
                let r = wire::get_response::<MetadataResponse>(frame, v, id)?;
                let t = Topology::from_metadata(&r, &self.cfg.topic)?;
                self.node = t.node_at(&self.target);
                self.producer.partitions(t.leaders.len());
                self.topology = Some(t);
                self.phase = if self.producer.id.is_some() {
                    Phase::Ready
                } else {
                    Phase::ProducerId
                };
            }
            Req::ProducerId => {
                let v = self.versions.map_or(0, |v| v.init_producer_id);
                let r = wire::get_response::<InitProducerIdResponse>(frame, v, id)?;
                if r.error_code != 0 {
                    return Err(format!(
                        "InitProducerId: {}",
                        errors::describe(r.error_code, &self.cfg.topic)
                    ));
                }
                self.producer.set_id(r.producer_id.0, r.producer_epoch);
                if let Some(p) = self.pending.as_mut() {
                    // Sequences start over with the new producer id.
                    p.base_seq = self.producer.take(p.partition, p.records);
                }
                crate::log!(
                    Level::Info,
                    "kafka_producer",
                    feed = core.feed,
                    output = core.name,
                    peer = self.peer_name(),
                    producer_id = r.producer_id.0,
                    epoch = r.producer_epoch
                );
                self.phase = Phase::Ready;
            }
            Req::Produce => {
                let v = self.versions.map_or(3, |v| v.produce);
                let r = wire::get_response::<ProduceResponse>(frame, v, id)?;
                self.stats.produce_answered += 1;
                return self.on_produced(core, ring, &r, now);
            }
        }
        Ok(())
    }

    /// Acts on the answer to the batch in flight.
    fn on_produced(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        r: &ProduceResponse,
        now: Instant,
    ) -> Result<(), String> {
        let Some(p) = self.pending else {
            return Err("a Produce answer without a batch in flight".to_string());
        };
        let part = r
            .responses
            .iter()
            .filter(|t| t.name.as_str() == self.cfg.topic.as_str())
            .flat_map(|t| t.partition_responses.iter())
            .find(|pr| pr.index == p.partition)
            .ok_or_else(|| {
                format!(
                    "the Produce answer does not name partition {} of {:?}",
                    p.partition, self.cfg.topic
                )
            })?;
        let code = part.error_code;
        match errors::verdict(code) {
            Verdict::Delivered => {
                if code == 46 {
                    self.stats.duplicates_dropped += 1;
                }
                self.pending = None;
                self.moved_unproven = false;
                self.limit = self.limit.saturating_mul(2);
                core.count_delivered(p.from, p.to);
                core.send = p.to;
                core.prove(ring, now, &|| self.peer_name());
                core.commit_upto(ring, p.to);
                Ok(())
            }
            Verdict::Split if p.records > 1 => {
                let keep = p.records / 2;
                let mut to = p.from;
                for _ in 0..keep {
                    match ring.read(to) {
                        Read::Record(rec) => to = rec.next,
                        _ => break,
                    }
                }
                self.producer.cut(p.partition, p.base_seq, keep);
                // Later batches stay this small until the output is past the refused one:
                // about log2(records) refusals find the record to blame.
                self.limit = keep;
                self.narrow_until = self.narrow_until.max(p.to.seq);
                self.pending = Some(Pending {
                    to,
                    records: keep,
                    ..p
                });
                core.send = p.from;
                self.log_refused(core, code, p, now);
                Ok(())
            }
            Verdict::Split => {
                self.producer.cut(p.partition, p.base_seq, 0);
                self.pending = None;
                let message = part.error_message.as_ref().map_or("", |m| m.as_str());
                self.dead_letter(core, ring, p, code, message, now);
                Ok(())
            }
            Verdict::ResetProducer => {
                self.stats.producer_resets += 1;
                self.producer.reset();
                self.phase = Phase::ProducerId;
                if let Some(p) = self.pending.as_mut() {
                    p.sent = true;
                }
                crate::log!(
                    Level::Warn,
                    "kafka_producer_reset",
                    feed = core.feed,
                    output = core.name,
                    peer = self.peer_name(),
                    partition = p.partition,
                    error = errors::describe(code, &self.cfg.topic),
                    hint = "a new producer id; a batch the broker appended without answering may be duplicated"
                );
                Ok(())
            }
            Verdict::Retry | Verdict::Down => Err(format!(
                "Produce to partition {}: {}",
                p.partition,
                errors::describe(code, &self.cfg.topic)
            )),
        }
    }

    fn log_refused(&mut self, core: &Core, code: i16, p: Pending, now: Instant) {
        if let Some(suppressed) = self.error_log.allow(now) {
            crate::log!(
                Level::Warn,
                "kafka_batch_split",
                feed = core.feed,
                output = core.name,
                partition = p.partition,
                records = p.records,
                error = errors::describe(code, &self.cfg.topic),
                suppressed = suppressed
            );
        }
    }

    /// A single record the broker refuses for what it is: into the dead-letter file, counted,
    /// logged; the output moves on.
    fn dead_letter(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        p: Pending,
        code: i16,
        message: &str,
        now: Instant,
    ) {
        let why = if message.is_empty() {
            errors::name(code).to_string()
        } else {
            format!("{}: {message}", errors::name(code))
        };
        let status = code.unsigned_abs();
        self.dead
            .write(core, ring, p.from, "kafka", status, why.as_bytes(), now);
        self.stats.dead_lettered += 1;
        self.limit = self.limit.saturating_mul(2);
        core.send = p.to;
        core.commit_upto(ring, p.to);
    }
}
