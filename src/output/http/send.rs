//! Sending: the next request chosen (an ack poll, or a batch gathered from the ring once it is
//! full or old enough), built from the ring and written until the socket is full.

use super::*;

impl HttpSink {
    /// Sends batches (and ack polls) until the socket is full, a response is awaited, or there is
    /// nothing to send yet.
    pub(in crate::output) fn write(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        now: Instant,
    ) -> Pass {
        loop {
            match self.exchange {
                Exchange::Receiving { .. } => return Pass::Blocked,
                Exchange::Sending { req, deadline } => match self.send_bytes(core, registry, now) {
                    Some(true) => {
                        self.exchange = Exchange::Receiving { req, deadline };
                    }
                    Some(false) => return Pass::Blocked,
                    None => return Pass::Failed,
                },
                Exchange::Idle => {
                    if let Some(pass) = self.start_request(core, ring, now) {
                        return pass;
                    }
                }
            }
        }
    }

    /// Writes request bytes: `Some(true)` when all are written, `Some(false)` when the socket is
    /// full, `None` after a failure.
    fn send_bytes(&mut self, core: &mut Core, registry: &Registry, now: Instant) -> Option<bool> {
        let payload: &[u8] = match self.exchange {
            Exchange::Sending {
                req: Req::Data(_), ..
            } if self.cfg.gzip => &self.gz,
            Exchange::Sending {
                req: Req::Data(_), ..
            } => &self.body,
            _ => &[],
        };
        let conn = self.conn.as_mut()?;
        match conn.write_out(core, &self.head, payload, &mut self.sent) {
            Ok(done) => Some(done),
            Err(why) => {
                self.fail(core, registry, &why, now);
                None
            }
        }
    }

    /// With no request in flight: starts an ack poll or a batch. Returns how the pass ends when
    /// there is nothing to start.
    fn start_request(&mut self, core: &mut Core, ring: &mut Ring, now: Instant) -> Option<Pass> {
        if self.cfg.ack {
            // The oldest unacknowledged batch timed out: send it, and all after it, again.
            if let Some(p) = self.acks.timed_out(self.cfg.ack_timeout, now) {
                let n = self.acks.clear() as u64;
                self.stats.batches_retried += n;
                self.next_poll = None;
                self.scan = None;
                let ack_timeout_s = self.cfg.ack_timeout.as_secs();
                crate::log!(
                    Level::Warn,
                    "hec_ack_timeout",
                    feed = core.feed,
                    output = core.name,
                    ack_id = p.ack_id.map_or("none".to_string(), |i| i.to_string()),
                    first_seq = p.from.seq,
                    batches_resent = n,
                    ack_timeout_s = ack_timeout_s
                );
                core.send = p.from;
            }
            let due = self.next_poll.is_some_and(|t| t <= now);
            if due && self.acks.poll_ids().next().is_some() {
                let HttpSink {
                    head, cfg, acks, ..
                } = &mut *self;
                if let Err(e) = protocol::ack_request(head, cfg, acks.poll_ids()) {
                    return self.request_failed(core, "hec_ack_poll_failed", &e);
                }
                self.sent = 0;
                self.exchange = Exchange::Sending {
                    req: Req::AckPoll,
                    deadline: now + self.cfg.request_timeout,
                };
                return None;
            }
            if self.acks.is_full() {
                return Some(Pass::Blocked);
            }
        }
        self.start_batch(core, ring, now)
    }

    /// Gathers the next batch; starts it when it is full or old enough.
    fn start_batch(&mut self, core: &mut Core, ring: &mut Ring, now: Instant) -> Option<Pass> {
        let Some(limit) = self.batch_limit(core, now) else {
            return Some(Pass::Blocked);
        };
        let scan = self.scan(core, ring, limit, now);
        if scan.records == 0 {
            self.scan = None;
            self.wait = None;
            core.end_episode();
            return Some(Pass::Done);
        }
        if let Some(at) = scan.wait_until(limit, self.cfg.max_batch_age, now) {
            self.scan = Some(scan);
            self.wait = Some(at);
            return Some(Pass::Blocked);
        }
        self.scan = None;
        self.wait = None;
        self.send_batch(core, ring, scan, now)
    }

    /// Records the next batch may hold: the narrowing limit while a refused batch is split,
    /// and the rate limiter's allowance. `None` when the bucket is empty: the pass ends
    /// blocked.
    fn batch_limit(&mut self, core: &mut Core, now: Instant) -> Option<u32> {
        if core.send.seq >= self.narrow_until {
            self.limit = u32::MAX;
        }
        let mut limit = self.limit;
        if let Some(b) = core.bucket.as_mut() {
            let n = b.allowance(now, false);
            if n == 0 {
                b.exhaust(now);
                // The bucket's wake-up comes first now; the batch is looked at again then.
                self.wait = None;
                return None;
            }
            limit = limit.min(u32::try_from(n).unwrap_or(u32::MAX));
        }
        Some(limit)
    }

    /// Walks the ring from the send position (or from where the last look stopped) until the
    /// batch is full, holds `limit` records or reaches the head ([`Core::scan`]).
    fn scan(&mut self, core: &mut Core, ring: &mut Ring, limit: u32, now: Instant) -> Scan {
        let (format, max) = (self.cfg.body, self.cfg.max_batch_bytes);
        let mut scan = Scan::resume(self.scan, core.send, ring.tail(), limit, 0);
        core.scan(
            ring,
            &mut scan,
            limit,
            max,
            |payload, i| protocol::record_cost(format, payload, i),
            |core, ring, at, next| self.settle_skipped(core, ring, at, next, now),
        );
        scan
    }

    /// Builds the request for the scanned records (body from the ring, gzip, head) and starts
    /// sending it.
    fn send_batch(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        scan: Scan,
        now: Instant,
    ) -> Option<Pass> {
        // Build the body from the ring (nothing was appended since the scan: one loop turn).
        let (format, max) = (self.cfg.body, self.cfg.max_batch_bytes);
        self.body.clear();
        self.body.reserve_exact(scan.bytes.max(max) + 1);
        let mut pos = scan.from;
        let mut records = 0;
        let mut last_ts = 0;
        while records < scan.records {
            let Read::Record(r) = ring.read(pos) else {
                break;
            };
            if let Err(e) = protocol::push_record(&mut self.body, format, r.payload) {
                return self.request_failed(core, "http_body_failed", &e);
            }
            last_ts = r.ts;
            records += 1;
            pos = r.next;
        }
        protocol::finish_body(&mut self.body, format);
        if self.cfg.gzip {
            let HttpSink { body, gz, .. } = &mut *self;
            gz.reserve_exact(protocol::gzip_bound(body.len()));
            if let Err(e) = protocol::gzip_into(body, gz) {
                return self.request_failed(core, "http_gzip_failed", &e);
            }
        }
        let len = if self.cfg.gzip {
            self.gz.len()
        } else {
            self.body.len()
        };
        let HttpSink { head, cfg, .. } = &mut *self;
        protocol::data_head(head, cfg, len, cfg.gzip);
        self.sent = 0;
        self.exchange = Exchange::Sending {
            req: Req::Data(Batch {
                from: scan.from,
                to: pos,
                records,
            }),
            deadline: now + self.cfg.request_timeout,
        };
        if let Some(b) = core.bucket.as_mut() {
            b.tokens -= f64::from(records);
        }
        core.last_sent_ts = last_ts;
        if let Some(e) = core.episode.as_mut().filter(|e| e.before_ns == 0) {
            e.before_ns = last_ts;
        }
        None
    }
}
