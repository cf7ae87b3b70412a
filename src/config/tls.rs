//! The TLS keys of inputs (`cert`, `key`, `client_ca`) and outputs (`ca`, `client_cert`,
//! `client_key`, `server_name`, `insecure_skip_verify`), checked by loading the files, so
//! `check` reports a bad certificate at the key that named it.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::table::{type_name, Ctx, Tbl};
use crate::tls::{ClientFiles, ServerFiles};

/// A TLS input's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInput {
    /// Certificate, key and client CA files.
    pub files: ServerFiles,
    /// A connection still handshaking after this long is closed.
    pub handshake_timeout: Duration,
}

/// The client side of a TLS connection: what `tls` and `https` outputs verify and present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsClient {
    /// Name for SNI and certificate verification.
    pub server_name: String,
    /// CA, client certificate and verification policy.
    pub files: ClientFiles,
}

/// A TLS file key: resolved path, and its span for errors.
fn tls_file(t: &Tbl<'_, '_>, key: &str, cx: &mut Ctx<'_>) -> Option<(PathBuf, Range<usize>)> {
    t.str(key, "a PEM file path", cx)
        .map(|(s, span)| (cx.resolve(s), span))
}

/// Reports a [`crate::tls::FileError`] at the key that named the file.
fn tls_error(t: &Tbl<'_, '_>, e: crate::tls::FileError, cx: &mut Ctx<'_>) {
    let span = t.get(e.key).map_or(t.span.clone(), Spanned::span);
    cx.err(span, format!("{}: {}", e.key, e.msg));
}

pub(super) fn tls_input(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<TlsInput> {
    for k in ["cert", "key"] {
        if t.get(k).is_none() {
            t.missing(k, cx);
        }
    }
    let cert = tls_file(t, "cert", cx);
    let key = tls_file(t, "key", cx);
    let client_ca = tls_file(t, "client_ca", cx).map(|(p, _)| p);
    let handshake_timeout = t
        .duration("handshake_timeout", cx)
        .unwrap_or(Duration::from_secs(10));
    if handshake_timeout.is_zero() {
        let span = t
            .get("handshake_timeout")
            .map_or(t.span.clone(), Spanned::span);
        cx.err(span, "handshake_timeout must be more than 0");
    }
    let files = ServerFiles {
        cert: cert?.0,
        key: key?.0,
        client_ca,
    };
    // Load the files now, so `check` reports them; the relay loads them again at start.
    if let Err(e) = crate::tls::server_config(&files) {
        tls_error(t, e, cx);
        return None;
    }
    Some(TlsInput {
        files,
        handshake_timeout,
    })
}

/// The client TLS keys of an output (`ca`, `client_cert`, `client_key`, `server_name`,
/// `insecure_skip_verify`), checked by loading them; `host` (from the key `host_key`) is the
/// default server name.
/// Refuses each client TLS key present (`ca`, `client_cert`, ...) on an output without TLS,
/// saying `why` after the key's name.
pub(super) fn refuse_tls_client_keys(t: &Tbl<'_, '_>, why: &str, cx: &mut Ctx<'_>) {
    for k in [
        "ca",
        "client_cert",
        "client_key",
        "server_name",
        "insecure_skip_verify",
    ] {
        if let Some(v) = t.get(k) {
            cx.err(v.span(), format!("{k} {why}"));
        }
    }
}

pub(super) fn tls_client(
    t: &Tbl<'_, '_>,
    host: &str,
    host_key: &str,
    cx: &mut Ctx<'_>,
) -> Option<TlsClient> {
    let ca = tls_file(t, "ca", cx).map(|(p, _)| p);
    let client_cert = tls_file(t, "client_cert", cx);
    let client_key = tls_file(t, "client_key", cx);
    let client_cert = match (client_cert, client_key) {
        (Some((c, _)), Some((k, _))) => Some((c, k)),
        (None, None) => None,
        (Some((_, span)), None) | (None, Some((_, span))) => {
            cx.err(
                span,
                "client_cert and client_key go together: set both or neither",
            );
            return None;
        }
    };
    let insecure_skip_verify = match t.get("insecure_skip_verify").map(|v| (v, v.get_ref())) {
        None => false,
        Some((_, DeValue::Boolean(b))) => *b,
        Some((v, other)) => {
            cx.err(
                v.span(),
                format!(
                    "insecure_skip_verify: expected true or false, found {}",
                    type_name(other)
                ),
            );
            false
        }
    };
    let server_name = match t.str("server_name", "a DNS name or IP address", cx) {
        Some((s, span)) => {
            if rustls::pki_types::ServerName::try_from(s).is_err() {
                cx.err(
                    span,
                    format!("server_name = {s:?} is not a DNS name or IP address"),
                );
                return None;
            }
            s.to_string()
        }
        None => {
            if rustls::pki_types::ServerName::try_from(host).is_err() {
                let span = t.get(host_key).map_or(t.span.clone(), Spanned::span);
                cx.err(span, format!("the host {host:?} of {host_key} is not a valid TLS server name: set server_name"));
                return None;
            }
            host.to_string()
        }
    };
    let files = ClientFiles {
        ca,
        client_cert,
        insecure_skip_verify,
    };
    if let Err(e) = crate::tls::client_config(&files) {
        tls_error(t, e, cx);
        return None;
    }
    Some(TlsClient { server_name, files })
}
