//! One sender's connection: its socket, the TLS session between the socket and the framer
//! (`read_tls` → `process_new_packets` → `reader` → `write_tls`), its partial record, and what
//! makes it evictable.

use super::*;

/// What carries a connection's bytes.
pub(super) enum Transport {
    Plain,
    Tls(Box<TlsIn>),
}

/// A TLS connection's rustls session (its handshake's progress is the [`Session`]'s).
pub(super) struct TlsIn {
    pub(super) conn: ServerConnection,
    /// rustls reported this error (the alert was sent): the connection closes.
    pub(super) error: Option<rustls::Error>,
    /// The socket reached EOF.
    pub(super) sock_eof: bool,
    /// Our `close_notify` is queued.
    pub(super) closing: bool,
}

impl TlsIn {
    /// Reads plaintext into `buf`: as `Read::read` (0 = the sender closed, `WouldBlock` = no
    /// plaintext yet), decrypting as many TLS records as fit.
    pub(super) fn read(&mut self, stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
        let failed = |e: &rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e.clone());
        if let Some(e) = &self.error {
            return Err(failed(e));
        }
        match tls::flush(&mut self.conn, stream) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        let mut n = 0;
        loop {
            if n == buf.len() {
                return Ok(n);
            }
            match self.conn.reader().read(&mut buf[n..]) {
                // close_notify: the sender closed cleanly.
                Ok(0) => return Ok(n),
                Ok(k) => {
                    n += k;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without close_notify: EOF all the same for a log sender.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(n),
                Err(e) => return Err(e),
            }
            if self.sock_eof {
                return Ok(n);
            }
            match self.conn.read_tls(stream) {
                Ok(0) => self.sock_eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Deliver what was decrypted; the error comes back on the next call.
                Err(_) if n > 0 => return Ok(n),
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                // Send the alert, best effort.
                let _ = self.conn.write_tls(stream);
                let err = failed(&e);
                self.error = Some(e);
                return if n > 0 { Ok(n) } else { Err(err) };
            }
            match tls::flush(&mut self.conn, stream) {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
    }
}

/// One sender's connection.
pub struct Conn {
    pub(super) stream: TcpStream,
    pub(super) transport: Transport,
    /// Where it is in its life: reading, paused, draining after EOF, closed; its handshake,
    /// its timeouts.
    pub(super) session: Session,
    /// Index of its feed.
    pub feed: usize,
    pub(super) peer: SocketAddr,
    pub(super) framer: Framer,
    /// Bytes read but not yet framed (a partial record, or records the ring refused); on an
    /// HTTP connection, the request being read.
    pub(super) pending: Vec<u8>,
    /// The HTTP state of a connection to an `http` input.
    pub(super) http: Option<Box<HttpConn>>,
    /// On the relay's ready list: served from it, once, next turn, and not by its events
    /// meanwhile, so a busy connection gets one budget of reads per turn.
    pub(super) queued: bool,
}

impl Conn {
    /// Puts connection `id` (this one) on the ready list unless it is there already.
    pub(super) fn queue(&mut self, ready: &mut Vec<usize>, id: usize) {
        if !self.queued {
            self.queued = true;
            ready.push(id);
        }
    }
}

impl Conn {
    /// The TLS error rustls reported (its alert was sent), if any.
    pub(super) fn tls_error(&self) -> Option<&rustls::Error> {
        match &self.transport {
            Transport::Tls(t) => t.error.as_ref(),
            Transport::Plain => None,
        }
    }

    /// `(class, since)` if it may be evicted, lowest first: a TCP/TLS connection that has not
    /// delivered plaintext, since it opened; an HTTP connection waiting for a request head,
    /// since it opened or its previous response.
    pub(super) fn evict_rank(&self) -> Option<(u8, Instant)> {
        match &self.http {
            None => self.session.silent_since().map(|s| (0, s)),
            Some(h) => h.head_wait_since(self.session.opened()).map(|s| (1, s)),
        }
    }
}

impl Conn {
    /// Reads plaintext, as `Read::read`: from the socket, or through TLS (counting and logging
    /// a handshake that completed).
    pub(super) fn read_plain(
        &mut self,
        buf: &mut [u8],
        feed: (&str, &mut FeedStats),
        conn_log: &mut Limiter,
        now: Instant,
    ) -> io::Result<usize> {
        let (feed_name, feed_stats) = feed;
        let t = match &mut self.transport {
            Transport::Plain => {
                let r = self.stream.read(buf);
                if matches!(r, Ok(n) if n > 0) {
                    self.session.heard();
                }
                return r;
            }
            Transport::Tls(t) => t,
        };
        let r = t.read(&mut self.stream, buf);
        if matches!(r, Ok(n) if n > 0) {
            self.session.heard();
        }
        if !t.conn.is_handshaking() && self.session.handshake_done() {
            feed_stats.tls_handshakes += 1;
            if let Some(suppressed) = conn_log.allow(now) {
                let info = t
                    .conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| tls::cert_info(c));
                crate::log!(
                    Level::Info,
                    "tls_established",
                    feed = feed_name,
                    peer = self.peer,
                    subject = info.map_or("-".to_string(), |i| i.subject),
                    version = t
                        .conn
                        .protocol_version()
                        .map_or("?".to_string(), |v| format!("{v:?}")),
                    cipher = t
                        .conn
                        .negotiated_cipher_suite()
                        .map_or("?".to_string(), |c| format!("{:?}", c.suite())),
                    suppressed = suppressed
                );
            }
        }
        r
    }

    /// Writes plaintext, as `Write::write`. Through TLS, what rustls takes (up to its buffer
    /// limit) is encrypted and sent as far as the socket allows; the rest goes out with the
    /// next read or `close_write`.
    pub(super) fn write_plain(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = match &mut self.transport {
            Transport::Plain => return self.stream.write(buf),
            Transport::Tls(t) => t,
        };
        let n = t.conn.writer().write(buf)?;
        match tls::flush(&mut t.conn, &mut self.stream) {
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
            _ => {}
        }
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// Ends our side of the connection once everything written is sent (TLS: after a
    /// `close_notify`). `Ok(false)`: the socket is full, call again when writable.
    pub(super) fn close_write(&mut self) -> io::Result<bool> {
        if let Transport::Tls(t) = &mut self.transport {
            if !t.closing {
                t.conn.send_close_notify();
                t.closing = true;
            }
            match tls::flush(&mut t.conn, &mut self.stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        Ok(true)
    }
}
