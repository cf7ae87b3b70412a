//! The admin endpoint on the relay's loop: `GET /metrics` (Prometheus text format 0.0.4,
//! [`metrics`]), `GET /health` (JSON) and `GET /ready` (200 or 503) ([`health`]). This file is
//! the endpoint: connections, request parsing and routing.
//!
//! Small and bounded: at most `MAX_CONNS` connections, a request of at most `MAX_REQUEST` bytes
//! read within `REQUEST_TIMEOUT`, one request per connection (`Connection: close`). A bad
//! request gets 400 and the connection is closed; nothing here touches the data path.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::alert::AlertStats;
use crate::clock;
use crate::feed::{FailedFeed, Feed};
use crate::json::TooLarge;
use crate::log::{Level, Limiter};

mod health;
mod metrics;

/// Token of the admin listener.
pub const LISTENER: Token = Token(999);
/// Tokens of admin connections: `CONN_BASE + slot`.
pub const CONN_BASE: usize = 5_000;
pub const MAX_CONNS: usize = 16;
pub(crate) const MAX_REQUEST: usize = 8 << 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

struct Conn {
    stream: TcpStream,
    peer: SocketAddr,
    request: Vec<u8>,
    response: Vec<u8>,
    written: usize,
    deadline: Instant,
}

/// What a complete request asks for.
enum Route {
    Metrics,
    Health,
    Ready,
}

/// The admin listener and its connections.
pub struct Admin {
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    log: Limiter,
}

/// What the event loop did, for `/metrics`: a turn is one poll and the work it woke.
#[derive(Default)]
pub struct LoopStats {
    pub turns: u64,
    /// The longest turn: how long every other socket, timer and signal had to wait.
    pub turn_max: Duration,
    /// Reads of input connections that returned data.
    pub input_reads: u64,
}

/// What the endpoint reports about the relay as a whole.
pub struct Summary<'a> {
    pub instance: &'a str,
    pub role: &'a str,
    /// The fencing epoch this instance holds (0 on a standby).
    pub epoch: u64,
    pub started_ns: u64,
    pub alerts: &'a AlertStats,
    pub event_loop: &'a LoopStats,
    /// Feeds whose ring could not be opened.
    pub failed: &'a [FailedFeed],
}

impl Admin {
    /// Binds `addr` and registers it.
    pub fn bind(registry: &Registry, addr: SocketAddr) -> Result<Admin, String> {
        let mut listener = TcpListener::bind(addr)
            .map_err(|e| format!("admin endpoint: cannot listen on {addr}: {e}"))?;
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(|e| format!("admin endpoint: register: {e}"))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("admin endpoint: address: {e}"))?;
        crate::log!(Level::Info, "admin_listening", addr = local);
        Ok(Admin {
            listener,
            conns: (0..MAX_CONNS).map(|_| None).collect(),
            log: Limiter::new(5, Duration::from_secs(60)),
        })
    }

    /// Accepts until `WouldBlock`; beyond `MAX_CONNS` connections are closed at once.
    pub fn accept(&mut self, registry: &Registry, now: Instant) {
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if let Some(suppressed) = self.log.allow(now) {
                        crate::log!(
                            Level::Warn,
                            "admin_accept_failed",
                            error = e,
                            suppressed = suppressed
                        );
                    }
                    return;
                }
            };
            let Some(slot) = self.conns.iter().position(Option::is_none) else {
                continue; // dropped: closed
            };
            let token = Token(CONN_BASE + slot);
            if registry
                .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
                .is_err()
            {
                continue;
            }
            self.conns[slot] = Some(Conn {
                stream,
                peer,
                request: Vec::new(),
                response: Vec::new(),
                written: 0,
                deadline: now + REQUEST_TIMEOUT,
            });
        }
    }

    /// The earliest request deadline.
    pub fn deadline(&self) -> Option<Instant> {
        self.conns.iter().flatten().map(|c| c.deadline).min()
    }

    /// Closes connections past their deadline.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.deadline <= now) {
                self.close(registry, slot);
            }
        }
    }

    fn close(&mut self, registry: &Registry, slot: usize) {
        if let Some(mut c) = self.conns[slot].take() {
            let _ = registry.deregister(&mut c.stream);
        }
    }

    /// Serves a readiness event on connection `slot`.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        slot: usize,
        feeds: &[Feed],
        summary: &Summary<'_>,
    ) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        if c.response.is_empty() {
            let mut buf = [0u8; 2048];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => return self.close(registry, slot),
                    Ok(n) => {
                        if c.request.len() + n > MAX_REQUEST {
                            c.response = response(431, "text/plain", b"request too large\n");
                            break;
                        }
                        c.request.extend_from_slice(&buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return self.close(registry, slot),
                }
            }
            if c.response.is_empty() {
                match parse(&c.request) {
                    Ok(None) => return, // incomplete: wait for more
                    Ok(Some((route, head_only))) => {
                        c.response = render(route, feeds, summary);
                        if head_only {
                            // HEAD: the same status and headers, no body.
                            let end = c
                                .response
                                .windows(4)
                                .position(|w| w == b"\r\n\r\n")
                                .map_or(c.response.len(), |i| i + 4);
                            c.response.truncate(end);
                        }
                    }
                    Err((status, why)) => {
                        if let Some(suppressed) = self.log.allow(clock::now()) {
                            crate::log!(
                                Level::Warn,
                                "admin_bad_request",
                                peer = c.peer,
                                status = status,
                                error = why,
                                suppressed = suppressed
                            );
                        }
                        c.response = response(status, "text/plain", format!("{why}\n").as_bytes());
                    }
                }
            }
        }
        while c.written < c.response.len() {
            match c.stream.write(&c.response[c.written..]) {
                Ok(0) => return self.close(registry, slot),
                Ok(n) => c.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.close(registry, slot),
            }
        }
        self.close(registry, slot);
    }
}

/// Parses a request: `Ok(None)` while incomplete, the route (and whether it is a `HEAD`), or an
/// HTTP status and reason.
fn parse(bytes: &[u8]) -> Result<Option<(Route, bool)>, (u16, &'static str)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(_)) => {
            let head_only = match req.method {
                Some("GET") => false,
                Some("HEAD") => true,
                _ => return Err((405, "only GET and HEAD are supported")),
            };
            let path = req.path.unwrap_or("");
            let path = path.split('?').next().unwrap_or(path);
            match path {
                "/metrics" => Ok(Some((Route::Metrics, head_only))),
                "/health" => Ok(Some((Route::Health, head_only))),
                "/ready" => Ok(Some((Route::Ready, head_only))),
                _ => Err((404, "not found: try /metrics, /health or /ready")),
            }
        }
        Err(_) => Err((400, "malformed HTTP request")),
    }
}

fn response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

fn render(route: Route, feeds: &[Feed], summary: &Summary<'_>) -> Vec<u8> {
    const JSON: &str = "application/json";
    match route {
        Route::Metrics => response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::metrics(feeds, summary).as_bytes(),
        ),
        Route::Health => match health::health(feeds, summary) {
            Ok(body) => response(200, JSON, &body),
            Err(e) => too_large(e),
        },
        Route::Ready => match health::ready(feeds, summary) {
            (ready, Ok(body)) => response(if ready { 200 } else { 503 }, JSON, &body),
            (_, Err(e)) => too_large(e),
        },
    }
}

/// A JSON body over its bound (a bug): 500, and the reason.
fn too_large(e: TooLarge) -> Vec<u8> {
    response(500, "text/plain", format!("{e}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_or_refused_with_a_status() {
        assert!(matches!(
            parse(b"GET /metrics HTTP/1.1\r\n\r\n"),
            Ok(Some((Route::Metrics, false)))
        ));
        assert!(matches!(
            parse(b"GET /ready?x=1 HTTP/1.0\r\nHost: a\r\n\r\n"),
            Ok(Some((Route::Ready, false)))
        ));
        assert!(matches!(
            parse(b"HEAD /health HTTP/1.1\r\n\r\n"),
            Ok(Some((Route::Health, true)))
        ));
        assert!(matches!(parse(b"GET /health HTTP/1.1\r\nHo"), Ok(None)));
        assert!(matches!(
            parse(b"GET /nope HTTP/1.1\r\n\r\n"),
            Err((404, _))
        ));
        assert!(matches!(
            parse(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Err((405, _))
        ));
        assert!(matches!(parse(b"\x00\x01garbage\r\n\r\n"), Err((400, _))));
    }
}
