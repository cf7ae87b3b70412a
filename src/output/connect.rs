//! A stream output's connection: connecting (name resolution at each connect, as NSS does),
//! the TLS handshake, proof by lasting `settle`, failures and their backoff, readiness events.
//! The decisions are [`super::link::Link`]'s; this file does the sockets and the logging.

use super::*;

impl Output {
    /// Fires an expired deadline: start a connect, or give up on one.
    pub fn on_timer(&mut self, registry: &Registry, token: Token, ring: &mut Ring, now: Instant) {
        self.check_down_alert(now);
        match self.core.link.due(now) {
            Some(Due::Settled) if self.may_prove_by_time() => self.prove(ring, now),
            Some(Due::Connect) => return self.connect(registry, token, ring, now),
            Some(Due::ConnectTimeout) => return self.fail(registry, "connect timed out", now),
            Some(Due::HandshakeTimeout) => {
                self.core.stats.tls_failures += 1;
                return self.fail(registry, "TLS handshake timed out (reason=timeout)", now);
            }
            Some(Due::Settled) | None => {}
        }
        if self.core.link.state() == State::Connected {
            match &mut self.sink {
                Sink::Http(h) => h.on_timer(&mut self.core, registry, now),
                Sink::Kafka(k) => k.on_timer(&mut self.core, registry, now),
                _ => {}
            }
            if let Some(b) = self.core.bucket.as_mut().filter(|b| b.wake <= now) {
                if let Some(since) = b.empty_since.take() {
                    self.core.stats.rate_limited_ns += now.duration_since(since).as_nanos() as u64;
                }
            }
        }
    }

    pub(super) fn connect(
        &mut self,
        registry: &Registry,
        token: Token,
        ring: &mut Ring,
        now: Instant,
    ) {
        match &mut self.sink {
            Sink::Http(h) => h.connect(&mut self.core, registry, token, now),
            Sink::Kafka(k) => k.connect(&mut self.core, registry, token, now),
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
                        self.core.link.connecting(now);
                    }
                    Err(e) => {
                        let why = format!("connect {addr}: {e}");
                        self.fail(registry, &why, now);
                    }
                }
            }
        }
    }

    pub(super) fn on_connected(&mut self, ring: &mut Ring, now: Instant) {
        let cursor = ring.cursor_pos(self.core.cursor);
        let mut start = cursor;
        if self.core.disconnect_ns > 0 && !self.core.replay.is_zero() {
            let from = self
                .core
                .disconnect_ns
                .saturating_sub(u64::try_from(self.core.replay.as_nanos()).unwrap_or(u64::MAX));
            let p = ring.seek_time(from);
            if p.seq < start.seq {
                start = p;
            }
        }
        self.core.note_overrun(ring);
        // Whatever was checked of this entry before the outage, it is checked again.
        self.core.send = start.recheck();
        match &mut self.sink {
            Sink::Http(h) => h.on_connected(&mut self.core),
            Sink::Kafka(k) => k.on_connected(&mut self.core),
            _ => {}
        }
        self.core.partial = 0;
        // Records sent before (on a connection that failed, proven or not) count as replayed.
        self.core.replay_until = cursor.seq.max(self.core.sent_high);
        self.core.write_blocked = false;
        self.core.stats.connects += 1;
        let proven_now = self.core.link.connected(now);
        let replaying = cursor.seq - start.seq;
        // While connections keep failing, their lines share the output_down lines' limit.
        let suppressed = if self.core.link.attempts() < 2 {
            Some(0)
        } else {
            self.core.down_log.allow(now)
        };
        if let Some(suppressed) = suppressed {
            crate::log!(
                Level::Info,
                "output_connected",
                feed = self.core.feed,
                output = self.core.name,
                peer = self.peer_name(),
                resume_seq = start.seq,
                replay_records = replaying,
                failed_attempts = self.core.link.attempts(),
                suppressed = suppressed
            );
        }
        if proven_now {
            self.prove(ring, now);
        }
    }

    /// The connection proved itself ([`Core::prove`]).
    pub(super) fn prove(&mut self, ring: &mut Ring, now: Instant) {
        self.core.prove(ring, now, &|| self.sink.peer_name());
    }

    /// At shutdown: a connection still up has not failed within `settle` so far; it counts as
    /// proven, so what it delivered is committed (a restart still replays its window).
    pub fn on_shutdown(&mut self, ring: &mut Ring, now: Instant) {
        if matches!(self.core.link.state(), State::Connected) && self.may_prove_by_time() {
            self.prove(ring, now);
        }
    }

    /// Whether the connection may prove itself by lasting `settle`: always, but for an HTTP
    /// output with a request in flight, whose answer decides.
    pub(super) fn may_prove_by_time(&self) -> bool {
        match &self.sink {
            Sink::Http(h) => h.idle(),
            Sink::Kafka(k) => k.idle(),
            _ => true,
        }
    }

    /// Starts the TLS handshake on a connected socket.
    pub(super) fn start_tls(&mut self, registry: &Registry, ring: &mut Ring, now: Instant) {
        let insecure =
            matches!(&self.sink, Sink::Tcp { tls: Some(t), .. } if t.files.insecure_skip_verify);
        if insecure {
            warn_insecure(&self.core, &self.peer_name());
        }
        let Sink::Tcp { tls: Some(t), .. } = &mut self.sink else {
            return;
        };
        match ClientConnection::new(t.config.clone(), t.server_name.clone()) {
            Ok(mut c) => {
                c.set_buffer_limit(Some(tls::BUFFER_LIMIT));
                t.conn = Some(c);
                t.held = 0;
                self.core.link.handshaking(now);
                self.handshake(registry, ring, now);
            }
            Err(e) => {
                let why = format!("TLS session: {e}");
                self.fail(registry, &why, now);
            }
        }
    }

    /// Drives the TLS handshake as far as the socket allows.
    pub(super) fn handshake(&mut self, registry: &Registry, ring: &mut Ring, now: Instant) {
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
                    feed = self.core.feed,
                    output = self.core.name,
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
        self.core.stats.tls_failures += 1;
        self.fail(registry, &failure, now);
    }

    /// Closes the connection and schedules a retry with capped exponential backoff and jitter.
    pub(super) fn fail(&mut self, registry: &Registry, why: &str, now: Instant) {
        let was_connected = matches!(self.core.link.state(), State::Connected);
        match &mut self.sink {
            Sink::Tcp { stream, tls, .. } => {
                if let Some(mut s) = stream.take() {
                    let _ = registry.deregister(&mut s);
                }
                if let Some(t) = tls {
                    t.conn = None;
                    t.held = 0;
                }
            }
            Sink::File { file, .. } => *file = None,
            Sink::Http(h) => h.close_failed(registry, was_connected),
            Sink::Kafka(k) => k.close_failed(registry),
        }
        self.core.failed(why, now, &|| self.sink.peer_name());
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
        if let State::Connecting { .. } = self.core.link.state() {
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
                Sink::Kafka(k) => match k.stream() {
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
        if let State::Handshaking { .. } = self.core.link.state() {
            return self.handshake(registry, ring, now);
        }
        if !matches!(self.core.link.state(), State::Connected) {
            return;
        }
        if let Sink::Http(h) = &mut self.sink {
            if writable {
                self.core.write_blocked = false;
            }
            if readable {
                h.on_readable(&mut self.core, registry, ring, now);
            }
            return;
        }
        if let Sink::Kafka(k) = &mut self.sink {
            if writable {
                self.core.write_blocked = false;
            }
            if readable {
                k.on_readable(&mut self.core, registry, ring, now);
            }
            return;
        }
        if readable {
            if let Some(why) = stream_read(&mut self.sink) {
                return self.fail(registry, &why, now);
            }
        }
        if writable {
            self.core.write_blocked = false;
        }
    }
}

impl Core {
    /// The connection lasted `settle` (a file took whole records, an HTTP output got a
    /// 2xx): the output is delivering. The backoff starts again from its minimum, the outage ends (with
    /// `output_recovered` if it had raised its alert), and a stream output commits what it
    /// wrote meanwhile.
    pub(super) fn prove(&mut self, ring: &mut Ring, now: Instant, peer: &dyn Fn() -> String) {
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
                    peer = peer(),
                    down_s = down_s
                );
                self.alerts.push(Alert {
                    kind: AlertKind::OutputRecovered,
                    feed: self.feed.clone(),
                    output: Some(self.name.clone()),
                    detail: crate::alert::Details::from_array([
                        ("peer", Value::Text(peer())),
                        ("down_s", Value::Num(down_s)),
                    ]),
                });
            }
        }
        if self.defers_commits {
            let send = self.send;
            self.commit_upto(ring, send);
        }
    }

    /// The connection failed (its sink is closed): a retry after the backoff; the outage
    /// starts, or goes on if the connection had not proven itself.
    pub(super) fn failed(&mut self, why: &str, now: Instant, peer: &dyn Fn() -> String) {
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
                peer = peer(),
                error = self.last_error,
                retry_ms = delay.as_millis(),
                suppressed = suppressed
            );
        }
    }
}

/// Reads what a stream receiver sent: `Some(why)` when the connection is over. SIEMs do not
/// talk back on syslog connections: a plain one is read to notice EOF and resets; a TLS one
/// for session tickets, key updates, close_notify and alerts (plaintext discarded).
fn stream_read(sink: &mut Sink) -> Option<String> {
    let Sink::Tcp {
        stream: Some(s),
        tls,
        ..
    } = sink
    else {
        return None;
    };
    if let Some(t) = tls {
        return tls_read(t, s);
    }
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some("peer closed the connection".into()),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Some(format!("read: {e}")),
        }
    }
}

/// Reads what a TLS receiver sent after the handshake; `Some(why)` when the connection is over.
pub(super) fn tls_read(t: &mut TlsOut, s: &mut TcpStream) -> Option<String> {
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
pub(super) fn client_tls(
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

/// Logs, at every connect, that a TLS output does not authenticate its receiver.
pub(super) fn warn_insecure(core: &Core, peer: &dyn std::fmt::Display) {
    crate::log!(
        Level::Warn,
        "tls_verification_disabled",
        feed = core.feed,
        output = core.name,
        peer = peer,
        reason = "insecure_skip_verify = true: the receiver is not authenticated (labs only)"
    );
}
