//! What a response does: the bytes the server sent read into responses, each response's
//! verdict acted on (delivered, retried, split, dead-lettered), HEC acknowledgements committed
//! in order.

use super::*;

impl HttpSink {
    /// Reads what the server sent; handles a complete response.
    pub(in crate::output) fn on_readable(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        now: Instant,
    ) {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return;
            };
            let in_flight = !matches!(self.exchange, Exchange::Idle);
            // A kept-alive connection the server closed as we sent on it: not a failure of the
            // server; send the same request again on a new connection at once (a new
            // connection that does the same fails as usual).
            let stale = in_flight && self.served > 0 && !self.reader.started();
            let (peer, cfg) = (self.peer, &self.cfg);
            let name =
                || peer.map_or_else(|| format!("{}:{}", cfg.host, cfg.port), |p| p.to_string());
            let n = match conn.read_for(core, &name, &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if stale && e.kind() == io::ErrorKind::ConnectionReset => {
                    return self.stale(core, registry, now);
                }
                Err(e) => {
                    let why = format!("read: {e}");
                    return self.fail(core, registry, &why, now);
                }
            };
            if n == 0 && stale {
                return self.stale(core, registry, now);
            }
            if n == 0 {
                return self.on_eof(core, registry, ring, in_flight, now);
            }
            if !in_flight {
                return self.fail(
                    core,
                    registry,
                    "the server sent bytes nobody asked for",
                    now,
                );
            }
            if !self.on_bytes(core, registry, ring, &buf[..n], now) {
                return;
            }
        }
    }

    /// The server closed the connection (not while a reused connection's request was
    /// unanswered: that is [`HttpSink::stale`]).
    fn on_eof(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        in_flight: bool,
        now: Instant,
    ) {
        if !in_flight && !self.reader.started() {
            // An idle keep-alive connection closed by the server: normal.
            return self.reconnect_now(core, registry, now);
        }
        match self.reader.eof() {
            Ok(resp) if in_flight => {
                self.on_response(core, registry, ring, resp, now);
                if matches!(core.link.state(), State::Connected) {
                    self.reconnect_now(core, registry, now);
                }
            }
            Ok(_) => self.reconnect_now(core, registry, now),
            Err(e) => {
                let why = format!("response: {e}");
                self.fail(core, registry, &why, now);
            }
        }
    }

    /// Response bytes read while a request is in flight: acts on each complete response.
    /// Returns whether to read on (false once the connection was closed or replaced).
    fn on_bytes(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        mut data: &[u8],
        now: Instant,
    ) -> bool {
        loop {
            match self.reader.push(data) {
                Ok(Some(resp)) => {
                    let early = matches!(self.exchange, Exchange::Sending { .. });
                    let close = resp.close;
                    if early && (200..300).contains(&resp.status) {
                        // A success for a request not yet sent whole proves nothing.
                        self.stats.requests[class(resp.status)] += 1;
                        self.stats.batches_retried += 1;
                        self.exchange = Exchange::Idle;
                        let why = format!("HTTP {} before the request was sent whole", resp.status);
                        self.fail(core, registry, &why, now);
                        return false;
                    }
                    self.on_response(core, registry, ring, resp, now);
                    if !matches!(core.link.state(), State::Connected) {
                        return false;
                    }
                    if early || close {
                        self.reconnect_now(core, registry, now);
                        return false;
                    }
                    data = b"";
                    if matches!(self.exchange, Exchange::Idle) {
                        // A second response to one request: the stream is out of step.
                        if self.reader.started() {
                            let why = "response bytes past the response";
                            self.fail(core, registry, why, now);
                            return false;
                        }
                        return true;
                    }
                }
                Ok(None) => return true,
                Err(e) => {
                    let why = format!("response: {e}");
                    self.fail(core, registry, &why, now);
                    return false;
                }
            }
        }
    }

    /// Acts on a complete response to the request in flight.
    fn on_response(
        &mut self,
        core: &mut Core,
        registry: &Registry,
        ring: &mut Ring,
        resp: Response,
        now: Instant,
    ) {
        let req = match self.exchange {
            Exchange::Sending { req, .. } | Exchange::Receiving { req, .. } => req,
            Exchange::Idle => return,
        };
        self.exchange = Exchange::Idle;
        self.served += 1;
        self.stats.requests[class(resp.status)] += 1;
        let status = resp.status;
        match req {
            Req::AckPoll => {
                self.next_poll = Some(now + self.cfg.ack_poll);
                if (200..300).contains(&status) {
                    let acks = &mut self.acks;
                    let parsed = protocol::hec_acks(&resp.body, |id, acked| {
                        if acked {
                            acks.acked(id);
                        }
                    });
                    if parsed.is_none() {
                        self.log_status(core, "hec_ack_poll_unreadable", status, &resp, now);
                    }
                    self.commit_acked(core, ring);
                } else {
                    self.log_status(core, "hec_ack_poll_refused", status, &resp, now);
                }
            }
            Req::Data(batch) => match verdict(status, batch.records) {
                Verdict::Delivered => self.success(core, ring, batch, &resp, now),
                Verdict::Retry => {
                    self.stats.batches_retried += 1;
                    core.link.retry_after(resp.retry_after);
                    let snippet = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                        .into_owned();
                    let why = format!("HTTP {status}: {snippet}");
                    self.fail(core, registry, &why, now);
                }
                Verdict::Split { retry_with } => {
                    // The batch is refused as a whole: halve it until the records at fault
                    // stand alone.
                    self.stats.batches_retried += 1;
                    self.limit = retry_with;
                    self.narrow_until = self.narrow_until.max(batch.to.seq);
                    self.scan = None;
                    if let Some(suppressed) = self.status_log.allow(now) {
                        crate::log!(
                            Level::Warn,
                            "http_batch_split",
                            feed = core.feed,
                            output = core.name,
                            status = status,
                            records = batch.records,
                            retry_with = retry_with,
                            first_seq = batch.from.seq,
                            suppressed = suppressed
                        );
                    }
                }
                Verdict::DeadLetter => {
                    self.dead_letter(core, ring, batch.from, batch.to, &resp, now)
                }
            },
        }
    }

    /// A 2xx for records `from..to`.
    fn success(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        batch: Batch,
        resp: &Response,
        now: Instant,
    ) {
        let Batch { from, to, records } = batch;
        core.prove(ring, now, &|| self.peer_name());
        core.send = to;
        self.scan = None;
        self.limit = self.limit.saturating_mul(2);
        if !self.cfg.ack {
            core.count_delivered(from, to);
            core.commit_upto(ring, to);
            return;
        }
        let ack_id = protocol::hec_ack_id(&resp.body);
        self.acks.push(from, to, records, ack_id, now);
        if ack_id.is_none() {
            if let Some(suppressed) = self.status_log.allow(now) {
                crate::log!(
                    Level::Warn,
                    "hec_no_ack_id",
                    feed = core.feed,
                    output = core.name,
                    body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]),
                    hint = "ack = true but the answer has no ackId: is useACK on for this token? The batch counts as delivered at 200",
                    suppressed = suppressed
                );
            }
        }
        if self.next_poll.is_none() {
            self.next_poll = Some(now + self.cfg.ack_poll);
        }
        self.commit_acked(core, ring);
    }

    /// Commits the cursor across acknowledged batches, oldest first, stopping at the first one
    /// still unacknowledged.
    fn commit_acked(&mut self, core: &mut Core, ring: &mut Ring) {
        while let Some(p) = self.acks.pop_committable() {
            if p.records > 0 {
                core.count_delivered(p.from, p.to);
            }
            core.commit_upto(ring, p.to);
        }
        if self.acks.is_empty() {
            self.next_poll = None;
        }
    }

    /// Records `from..to` are done without being delivered (dead-lettered, or skipped as
    /// corrupt): the cursor passes them once everything before them is.
    pub(super) fn settle_skipped(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        from: Pos,
        to: Pos,
        now: Instant,
    ) {
        if self.cfg.ack && !self.acks.is_empty() {
            self.acks.push(from, to, 0, None, now);
            self.commit_acked(core, ring);
        } else {
            core.commit_upto(ring, to);
        }
    }

    /// A single record refused with a status that retrying cannot fix: into the dead-letter
    /// file, counted, logged; the output moves on.
    fn dead_letter(
        &mut self,
        core: &mut Core,
        ring: &mut Ring,
        from: Pos,
        to: Pos,
        resp: &Response,
        now: Instant,
    ) {
        self.dead
            .write(core, ring, from, "http", resp.status, &resp.body, now);
        self.stats.dead_lettered += 1;
        core.send = to;
        self.scan = None;
        self.limit = self.limit.saturating_mul(2);
        self.settle_skipped(core, ring, from, to, now);
    }

    fn log_status(
        &mut self,
        core: &mut Core,
        event: &str,
        status: u16,
        resp: &Response,
        now: Instant,
    ) {
        if let Some(suppressed) = self.status_log.allow(now) {
            crate::log!(
                Level::Warn,
                event,
                feed = core.feed,
                output = core.name,
                status = status,
                body = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]),
                suppressed = suppressed
            );
        }
    }
}
