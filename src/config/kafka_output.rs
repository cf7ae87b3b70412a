//! `[[feed.output]]` of kind `kafka`: the brokers, the topic, how records choose a partition,
//! compression, batching, TLS and SASL. The semantics are in [`crate::output::kafka`].

use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::table::{type_name, warn_placeholder, Ctx, Tbl};
use super::tls::{refuse_tls_client_keys, tls_client, TlsClient};

/// The keys of a `kafka` output (besides `name`, `kind` and the keys every output has).
pub(super) const KAFKA_KEYS: &[&str] = &[
    "brokers",
    "topic",
    "key",
    "acks",
    "compression",
    "max_batch_bytes",
    "max_batch_age",
    "request_timeout",
    "client_id",
    "tls",
    "ca",
    "client_cert",
    "client_key",
    "server_name",
    "insecure_skip_verify",
    "sasl",
];

/// Brokers a `kafka` output may name (bootstrap servers; the cluster's others come from
/// Metadata).
pub const MAX_BROKERS: usize = 16;
/// The largest `max_batch_bytes`: Kafka's default `max.message.bytes` is 1,048,588, and a
/// larger batch would be refused whole.
pub const MAX_BATCH_BYTES: u64 = 1 << 20;

/// How a record's partition is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaKey {
    /// No key: the sticky partitioner (a whole batch to one partition, the next batch to the
    /// next partition), as Kafka's own producer does for keyless records since 2.4.
    None,
    /// The feed's name as every record's key: one partition for the feed, chosen as Java and
    /// librdkafka producers choose it (murmur2).
    Feed,
}

/// Compression of record batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaCompression {
    /// None.
    None,
    /// gzip (the pure-Rust backend the HTTP output uses).
    Gzip,
}

/// SASL mechanisms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `PLAIN`: the password in the clear (use it with TLS).
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl SaslMechanism {
    /// The name Kafka knows it by.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// `sasl = { mechanism, username, password }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sasl {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user.
    pub username: String,
    /// The password.
    pub password: String,
}

/// A Kafka output.
#[derive(Clone, Debug)]
pub struct KafkaOutput {
    /// Bootstrap brokers, `host:port`, tried in order.
    pub brokers: Vec<String>,
    /// The topic.
    pub topic: String,
    /// How a record's partition is chosen.
    pub key: KafkaKey,
    /// Compression of record batches.
    pub compression: KafkaCompression,
    /// Largest record batch before compression (a single longer record goes alone).
    pub max_batch_bytes: usize,
    /// A batch below `max_batch_bytes` waits until its oldest record is this old.
    pub max_batch_age: Duration,
    /// Request sent to response read, at most; also the Produce request's broker-side
    /// timeout.
    pub request_timeout: Duration,
    /// The client id the brokers see (their logs and quotas); `ringrelay-<instance>` unless
    /// set.
    pub client_id: String,
    /// TLS towards every broker (`tls = true`): the CA, client certificate and verification
    /// policy; `server_name` when it was set (otherwise each broker's own host name).
    pub tls: Option<TlsClient>,
    /// `server_name` was set (the same name for every broker).
    pub server_name_set: bool,
    /// SASL authentication.
    pub sasl: Option<Sasl>,
}

/// The topic name rules of Kafka: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or `..`.
fn topic_error(s: &str) -> Option<String> {
    if s.is_empty() || s.len() > 249 {
        return Some(format!("topic {s:?}: a topic name has 1 to 249 characters"));
    }
    if s == "." || s == ".." {
        return Some(format!("topic {s:?} is not a valid topic name"));
    }
    s.bytes()
        .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
        .map(|b| {
            format!(
                "topic {s:?}: {:?} is not allowed in a topic name (only A-Z a-z 0-9 . _ -)",
                char::from(b)
            )
        })
}

/// `host:port` with a port from 1 to 65535.
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// `brokers`: 1 to [`MAX_BROKERS`] `host:port` strings.
fn brokers(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<Vec<String>> {
    let Some(v) = t.get("brokers") else {
        t.missing("brokers", cx);
        return None;
    };
    let DeValue::Array(a) = v.get_ref() else {
        cx.err(
            v.span(),
            format!(
                "brokers: expected an array of \"host:port\" strings, found {}",
                type_name(v.get_ref())
            ),
        );
        return None;
    };
    if a.is_empty() || a.len() > MAX_BROKERS {
        cx.err(
            v.span(),
            format!(
                "brokers: 1 to {MAX_BROKERS} bootstrap brokers, found {}",
                a.len()
            ),
        );
        return None;
    }
    let mut out = Vec::with_capacity(a.len());
    for b in a.iter() {
        match b.get_ref() {
            DeValue::String(s) if is_host_port(s) => out.push(s.to_string()),
            DeValue::String(s) => cx.err(
                b.span(),
                format!("brokers: {s:?}: expected \"host:port\" with a port from 1 to 65535"),
            ),
            other => cx.err(
                b.span(),
                format!(
                    "brokers: expected \"host:port\", found {}",
                    type_name(other)
                ),
            ),
        }
    }
    (out.len() == a.len()).then_some(out)
}

/// `sasl = { mechanism = "...", username = "...", password = "..." }`.
fn sasl(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<Option<Sasl>> {
    let Some(v) = t.get("sasl") else {
        return Some(None);
    };
    let s = Tbl::new(v, "sasl".to_string(), cx)?;
    s.check_keys(&["mechanism", "username", "password"], cx);
    if s.get("mechanism").is_none() {
        s.missing("mechanism", cx);
    }
    let mechanism = s.choice(
        "mechanism",
        &[
            ("plain", SaslMechanism::Plain),
            ("scram-sha-256", SaslMechanism::ScramSha256),
            ("scram-sha-512", SaslMechanism::ScramSha512),
        ],
        cx,
    );
    let username = s.req_str("username", "a user name", cx);
    let password = s.req_str("password", "a password", cx);
    if let Some((p, span)) = &password {
        warn_placeholder("sasl.password", p, span.clone(), cx);
    }
    Some(Some(Sasl {
        mechanism: mechanism?,
        username: username?.0.to_string(),
        password: password?.0.to_string(),
    }))
}

pub(super) fn kafka_output(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<KafkaOutput> {
    let brokers = brokers(t, cx);
    let topic = t
        .req_str("topic", "a topic name", cx)
        .and_then(|(s, span)| match topic_error(s) {
            Some(e) => {
                cx.err(span, e);
                None
            }
            None => Some(s.to_string()),
        });
    let key = t
        .choice(
            "key",
            &[("none", KafkaKey::None), ("feed", KafkaKey::Feed)],
            cx,
        )
        .unwrap_or(KafkaKey::None);
    if let Some((s, span)) = t.str("acks", "\"all\"", cx) {
        if s != "all" {
            cx.err(
                span,
                format!(
                    "acks = {s:?}: only \"all\" (the idempotent producer needs every in-sync \
                     replica's acknowledgement, and the cursor moves only on it)"
                ),
            );
        }
    }
    let compression = match t.str("compression", "\"none\" or \"gzip\"", cx) {
        None => Some(KafkaCompression::None),
        Some(("none", _)) => Some(KafkaCompression::None),
        Some(("gzip", _)) => Some(KafkaCompression::Gzip),
        Some((c @ ("lz4" | "zstd" | "snappy"), span)) => {
            cx.err(
                span,
                format!(
                    "compression = {c:?} is not available: lz4 and zstd would bring C libraries \
                     into the appliance, snappy is not built yet; use \"gzip\" or \"none\""
                ),
            );
            None
        }
        Some((c, span)) => {
            cx.err(
                span,
                format!("compression = {c:?}: expected \"none\" or \"gzip\""),
            );
            None
        }
    };
    let max_batch_bytes = t
        .size("max_batch_bytes", 1024..=MAX_BATCH_BYTES, cx)
        .unwrap_or(512 << 10) as usize;
    let max_batch_age = t
        .duration("max_batch_age", cx)
        .unwrap_or(Duration::from_secs(1));
    let request_timeout = match t.duration("request_timeout", cx) {
        Some(d) if d.is_zero() || d > Duration::from_secs(600) => {
            let span = t
                .get("request_timeout")
                .map_or(t.span.clone(), Spanned::span);
            cx.err(span, "request_timeout must be more than 0 and at most 10m");
            None
        }
        Some(d) => Some(d),
        None => Some(Duration::from_secs(30)),
    };
    let client_id = match t.str("client_id", "a client id", cx) {
        Some((s, span))
            if s.is_empty() || s.len() > 255 || s.bytes().any(|b| b.is_ascii_control()) =>
        {
            cx.err(span, "client_id: 1 to 255 printable characters");
            None
        }
        Some((s, _)) => Some(s.to_string()),
        // Filled in as `ringrelay-<instance>` once the instance is known.
        None => Some(String::new()),
    };
    let tls_on = t.bool("tls", cx).unwrap_or(false);
    let first_host = brokers
        .as_ref()
        .and_then(|b| b.first())
        .and_then(|b| b.rsplit_once(':'))
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string());
    let tls = if tls_on {
        let host = first_host.unwrap_or_default();
        Some(Some(tls_client(t, &host, "brokers", cx)?))
    } else {
        refuse_tls_client_keys(t, "is for tls = true; this output has no TLS", cx);
        Some(None)
    };
    let sasl = sasl(t, cx);
    if let (Some(Some(s)), Some(None)) = (&sasl, &tls) {
        if s.mechanism == SaslMechanism::Plain {
            let span = t.get("sasl").map_or(t.span.clone(), Spanned::span);
            cx.warn(
                span,
                "sasl mechanism \"plain\" without tls = true sends the password in the clear",
            );
        }
    }
    Some(KafkaOutput {
        brokers: brokers?,
        topic: topic?,
        key,
        compression: compression?,
        max_batch_bytes,
        max_batch_age,
        request_timeout: request_timeout?,
        client_id: client_id?,
        server_name_set: t.get("server_name").is_some(),
        tls: tls?,
        sasl: sasl?,
    })
}

#[cfg(test)]
mod tests {
    use super::topic_error;

    #[test]
    fn topic_names_follow_kafkas_rules() {
        assert!(topic_error("zpa.user-activity_1").is_none());
        assert!(topic_error("").is_some());
        assert!(topic_error(".").is_some());
        assert!(topic_error("..").is_some());
        assert!(topic_error("a b").unwrap().contains("' '"));
        assert!(topic_error(&"x".repeat(250)).is_some());
        assert!(topic_error(&"x".repeat(249)).is_none());
    }
}
