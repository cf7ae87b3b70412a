//! The connection of an HTTP or Kafka output: the one place where their bytes meet the
//! network, plain or through TLS.

use std::io::{self, IoSlice, Read as _, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ClientConnection;

/// An HTTP or Kafka output's connection: all its byte I/O goes through here.
///
/// With TLS the handshake runs inside `read` and `write`: `write` takes no request bytes until
/// the handshake is done (it sends what the handshake needs and says `WouldBlock`), and `read`
/// drives the handshake on; the caller retries its write after a read (`handshaking` tells it
/// when that is worth it).
pub struct Transport {
    stream: TcpStream,
    tls: Option<Box<ClientConnection>>,
    /// The TLS session failed (a handshake error or an alert); `read` said why.
    tls_failed: bool,
}

/// `WouldBlock` is no error here: the rest goes out on a later call.
fn soft(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        r => r,
    }
}

impl Transport {
    /// Resolves `target` (named `name` in errors) at each connect, as NSS does (a literal
    /// address costs no lookup; a host name's lookup blocks the loop for as long as the
    /// resolver takes), starts a non-blocking connect and registers the socket for both
    /// readiness events. A TLS session's handshake runs inside the reads and writes.
    pub fn connect(
        target: impl ToSocketAddrs,
        name: &str,
        registry: &Registry,
        token: Token,
        tls: Option<ClientConnection>,
    ) -> Result<(Transport, SocketAddr), String> {
        let addr = match target.to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(a)) => a,
            Ok(None) => return Err(format!("resolve {name}: no address")),
            Err(e) => return Err(format!("resolve {name}: {e}")),
        };
        let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
        // A request goes in one write and the next waits for the answer: Nagle's algorithm
        // could only hold back the tail of one the socket cut short.
        let _ = stream.set_nodelay(true);
        registry
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("register socket: {e}"))?;
        let transport = Transport {
            stream,
            tls: tls.map(Box::new),
            tls_failed: false,
        };
        Ok((transport, addr))
    }

    /// A client TLS session for `name`, with the relay's send buffer limit.
    pub fn tls_session(
        config: &std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<ClientConnection, String> {
        let mut c =
            ClientConnection::new(config.clone(), name).map_err(|e| format!("TLS session: {e}"))?;
        c.set_buffer_limit(Some(crate::tls::BUFFER_LIMIT));
        Ok(c)
    }

    /// A TLS handshake is under way.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.is_handshaking())
    }

    /// The stream, for registration and connect checks.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// The stream, for error checks.
    pub fn stream_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// Writes what the socket (or rustls, up to its buffer limit) takes of `bufs` (through
    /// TLS: of its first non-empty slice).
    pub fn write(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let Some(conn) = self.tls.as_deref_mut() else {
            return self.stream.write_vectored(bufs);
        };
        crate::tls::flush(conn, &mut self.stream)?;
        if conn.is_handshaking() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // One slice per call: rustls collects several into a new `Vec` per call, one it
        // encrypts as is. The next call takes the next slice.
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &b[..]);
        let n = conn.writer().write(first)?;
        soft(crate::tls::flush(conn, &mut self.stream))?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    /// [`Transport::read`], noting on `core` a TLS handshake that ends with this read:
    /// established (logged with `peer`; a request that waited for it may go now) or failed
    /// (counted).
    pub(super) fn read_for(
        &mut self,
        core: &mut super::Core,
        peer: &dyn Fn() -> String,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        let handshaking = self.handshaking();
        let res = self.read(buf);
        if handshaking && !self.handshaking() {
            core.write_blocked = false;
            crate::log!(
                crate::log::Level::Info,
                "tls_established",
                feed = core.feed,
                output = core.name,
                peer = peer()
            );
        }
        if handshaking && self.tls_failed {
            core.stats.tls_failures += 1;
        }
        res
    }

    /// Writes `head` then `body` from byte `sent` of the two on (counted in `core`'s bytes)
    /// until both are written (`Ok(true)`) or the socket is full (`Ok(false)`, and `core`
    /// waits for writable); `Err(why)` when the connection failed.
    pub(super) fn write_out(
        &mut self,
        core: &mut super::Core,
        head: &[u8],
        body: &[u8],
        sent: &mut usize,
    ) -> Result<bool, String> {
        loop {
            if *sent >= head.len() + body.len() {
                return Ok(true);
            }
            let (a, b) = if *sent < head.len() {
                (&head[*sent..], body)
            } else {
                (&[][..], &body[*sent - head.len()..])
            };
            match self.write(&[IoSlice::new(a), IoSlice::new(b)]) {
                Ok(0) => return Err("write returned 0".to_string()),
                Ok(n) => {
                    *sent += n;
                    core.stats.bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    core.write_blocked = true;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
    }

    /// Reads what the socket has (through TLS: the plaintext; 0 at the end of the stream).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(conn) = self.tls.as_deref_mut() else {
            return self.stream.read(buf);
        };
        loop {
            match conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The server closed without close_notify: the end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            soft(crate::tls::flush(conn, &mut self.stream))?;
            match conn.read_tls(&mut self.stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = conn.process_new_packets() {
                let _ = conn.write_tls(&mut self.stream); // the alert, best effort
                self.tls_failed = true;
                let stage = if conn.is_handshaking() {
                    "TLS handshake failed"
                } else {
                    "TLS error"
                };
                let why = format!("{stage} (reason={}): {e}", crate::tls::failure_reason(&e));
                return Err(io::Error::new(io::ErrorKind::InvalidData, why));
            }
            soft(crate::tls::flush(conn, &mut self.stream))?;
        }
    }
}
