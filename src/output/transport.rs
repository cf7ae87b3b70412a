//! The HTTP output's connection: the one place where its bytes meet the network, plain or
//! through TLS (`https://`).

use std::io::{self, IoSlice, Read as _, Write as _};

use mio::net::TcpStream;
use rustls::ClientConnection;

/// The HTTP output's connection: all its byte I/O goes through here.
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
    /// Wraps a connected (or connecting) stream.
    pub fn new(stream: TcpStream, tls: Option<ClientConnection>) -> Transport {
        Transport {
            stream,
            tls: tls.map(Box::new),
            tls_failed: false,
        }
    }

    /// A TLS handshake is under way.
    pub fn handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|c| c.is_handshaking())
    }

    /// The TLS session failed (counted as a handshake failure when it was handshaking).
    pub fn tls_failed(&self) -> bool {
        self.tls_failed
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
