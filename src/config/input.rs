//! A feed's `input`: `tcp`, `tls` or `http` (HTTP/1.1 batches, HTTPS with `cert` and `key`).

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::table::{warn_placeholder, Ctx, Tbl};
use super::tls::{tls_input, TlsInput};

/// A feed's `input`.
#[derive(Clone, Debug)]
pub struct InputConfig {
    /// The protocol.
    pub kind: InputKind,
    /// Listen address.
    pub listen: SocketAddr,
    /// At this many connections the feed evicts a silent one or stops accepting.
    pub max_connections: usize,
    /// Connections from one peer address at most (`0`: no limit).
    pub max_connections_per_source: usize,
    /// Connections silent for longer are closed (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Settings of an `http` input.
    pub http: Option<HttpInputConfig>,
}

/// An `http` input's settings (Cloud NSS-style batches).
#[derive(Clone, Debug)]
pub struct HttpInputConfig {
    /// The path batches are posted to.
    pub path: String,
    /// `(header name, shared secret)` every request must carry.
    pub auth: Option<(String, String)>,
    /// Largest body accepted, as sent.
    pub max_body_bytes: usize,
    /// Largest body accepted after gzip decoding.
    pub max_decoded_bytes: usize,
    /// Time a request may take from its first byte to its last.
    pub request_timeout: Duration,
    /// Time a request head may take to arrive, from the connection's opening or the previous
    /// response.
    pub header_timeout: Duration,
    /// HTTPS: `cert` and `key` (and `client_ca`) are set.
    pub tls: Option<TlsInput>,
}

impl InputConfig {
    /// The TLS settings of a `tls` input or of an `http` input served over HTTPS.
    pub fn tls(&self) -> Option<&TlsInput> {
        match &self.kind {
            InputKind::Tls(t) => Some(t),
            InputKind::Http => self.http.as_ref()?.tls.as_ref(),
            InputKind::Tcp => None,
        }
    }
}

/// Input protocols.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// Plain TCP.
    Tcp,
    /// HTTP/1.1 batches (`POST`).
    Http,
    /// TLS over TCP.
    Tls(TlsInput),
}

/// Keys every input has.
const COMMON_KEYS: [&str; 5] = [
    "kind",
    "listen",
    "max_connections",
    "max_connections_per_source",
    "idle_timeout",
];
/// Keys of a `tls` input, and of an `http` input served over HTTPS.
const TLS_KEYS: [&str; 4] = ["cert", "key", "client_ca", "handshake_timeout"];
/// Keys of an `http` input.
const HTTP_KEYS: [&str; 7] = [
    "path",
    "auth_header",
    "secret",
    "max_body_bytes",
    "max_decoded_bytes",
    "request_timeout",
    "header_timeout",
];

/// `kind`, and the keys it allows; a `tls` input's files are loaded here.
fn input_kind(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<InputKind> {
    match t.req_str("kind", "\"tcp\", \"tls\" or \"http\"", cx) {
        Some(("tcp", _)) => {
            t.check_keys(&COMMON_KEYS, cx);
            Some(InputKind::Tcp)
        }
        Some(("http", _)) => {
            t.check_keys(
                &[&COMMON_KEYS[..], &HTTP_KEYS[..], &TLS_KEYS[..]].concat(),
                cx,
            );
            Some(InputKind::Http)
        }
        Some(("tls", _)) => {
            t.check_keys(&[&COMMON_KEYS[..], &TLS_KEYS[..]].concat(), cx);
            tls_input(t, cx).map(InputKind::Tls)
        }
        Some((k, span)) => {
            cx.err(
                span,
                format!("input kind {k:?} is unknown (supported: tcp, tls, http)"),
            );
            None
        }
        None => None,
    }
}

pub(super) fn input_config(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<InputConfig> {
    let kind = input_kind(t, cx);
    let http = (kind == Some(InputKind::Http)).then(|| http_input_config(t, cx));
    let listen = t.req_str("listen", "an address like \"0.0.0.0:9514\"", cx).and_then(|(s, span)| match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.err(span, format!("listen = {s:?} is not an IP:port address (host names are not allowed here)"));
            None
        }
    });
    if let (Some(Some(h)), Some(addr)) = (&http, &listen) {
        let addr: &SocketAddr = addr;
        if h.auth.is_some() && h.tls.is_none() && !addr.ip().is_loopback() {
            let span = t.get("secret").map_or(t.span.clone(), Spanned::span);
            cx.warn(
                span,
                format!("the shared secret travels in clear text: this http input listens on {addr} without cert and key; give it cert and key (HTTPS), or listen on loopback behind a TLS proxy"),
            );
        }
    }
    let max_connections = t.count("max_connections", 1..=65_536, cx).unwrap_or(256) as usize;
    // Unset, it is 64 or max_connections, whichever is lower.
    let max_connections_per_source = match t.count("max_connections_per_source", 0..=65_536, cx) {
        None => 64.min(max_connections),
        Some(n) if n as usize > max_connections => {
            let span = t
                .get("max_connections_per_source")
                .map_or(t.span.clone(), Spanned::span);
            cx.err(
                span,
                format!("max_connections_per_source = {n} is more than max_connections = {max_connections}; lower it, or 0 for no per-source limit"),
            );
            0
        }
        Some(n) => n as usize,
    };
    let idle_timeout = match t.duration("idle_timeout", cx) {
        None => Some(Duration::from_secs(600)),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    Some(InputConfig {
        kind: kind?,
        listen: listen?,
        max_connections,
        max_connections_per_source,
        idle_timeout,
        http: match http {
            Some(h) => Some(h?),
            None => None,
        },
    })
}

fn http_input_config(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<HttpInputConfig> {
    let path = match t.str("path", "a path like \"/nss\"", cx) {
        None => "/".to_string(),
        Some((p, _)) if p.starts_with('/') && !p.contains(['?', ' ']) => p.to_string(),
        Some((p, span)) => {
            cx.err(
                span,
                format!("path = {p:?}: expected an absolute path like \"/nss\", without a query"),
            );
            return None;
        }
    };
    let header = t.str("auth_header", "a header name", cx);
    let secret = t.str("secret", "the shared secret", cx);
    let auth = match (header, secret) {
        (Some((h, _)), Some((s, span))) => {
            warn_placeholder("secret", s, span.clone(), cx);
            if s.is_empty() {
                cx.err(
                    span,
                    "secret is empty; set a shared secret or remove auth_header",
                );
                return None;
            }
            Some((h.to_string(), s.to_string()))
        }
        (None, None) => None,
        (Some((_, span)), None) | (None, Some((_, span))) => {
            cx.err(
                span,
                "auth_header and secret go together: set both, or neither for no authentication",
            );
            return None;
        }
    };
    let max_body_bytes = t
        .size("max_body_bytes", 1024..=(64 << 20), cx)
        .unwrap_or(1 << 20) as usize;
    let max_decoded_bytes = t
        .size("max_decoded_bytes", 1024..=(256 << 20), cx)
        .unwrap_or(16 << 20) as usize;
    let request_timeout = t
        .duration("request_timeout", cx)
        .unwrap_or(Duration::from_secs(30));
    // HTTPS when a certificate is configured (Cloud NSS requires it).
    let https = ["cert", "key", "client_ca"]
        .iter()
        .any(|k| t.get(k).is_some());
    let tls = if https { Some(tls_input(t, cx)?) } else { None };
    if request_timeout.is_zero() {
        let span = t
            .get("request_timeout")
            .map_or(t.span.clone(), Spanned::span);
        cx.err(span, "request_timeout must be more than 0");
    }
    let header_timeout = t
        .duration("header_timeout", cx)
        .unwrap_or(Duration::from_secs(10));
    if header_timeout.is_zero() {
        let span = t
            .get("header_timeout")
            .map_or(t.span.clone(), Spanned::span);
        cx.err(span, "header_timeout must be more than 0");
    }
    Some(HttpInputConfig {
        path,
        auth,
        max_body_bytes,
        max_decoded_bytes,
        request_timeout,
        header_timeout,
        tls,
    })
}
