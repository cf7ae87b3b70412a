//! `[[feed.output]]`: the keys every output has, the `tcp`, `tls` and `file` kinds, and the
//! syslog header; kind `http` is in [`super::http_output`].

use std::path::PathBuf;
use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::http_output::{http_output, HttpOutput, HTTP_KEYS};
use super::kafka_output::{kafka_output, KafkaOutput, KAFKA_KEYS};
use super::names::output_name;
use super::table::{type_name, Ctx, Tbl};
use super::tls::{tls_client, TlsClient};
use crate::tls::ClientFiles;

/// `[[feed.output]]`.
#[derive(Clone, Debug)]
pub struct OutputConfig {
    /// Name, unique in its feed; also the ring cursor's name.
    pub name: String,
    /// Kind and its settings.
    pub kind: OutputKind,
    /// Replay window after a reconnect.
    pub replay: Duration,
    /// Events per second this output may send; 0 = unlimited.
    pub rate_limit_eps: u64,
    /// Down for longer than this raises an alert (`None`: never).
    pub alert_after: Option<Duration>,
    /// A connection (or file) must stay up this long, or an HTTP output get a 2xx, before it
    /// counts as delivering; one that fails sooner is a failed connect.
    pub settle: Duration,
    /// Syslog header added to each record.
    pub syslog: SyslogConfig,
}

/// Output kinds.
#[derive(Clone, Debug)]
pub enum OutputKind {
    /// A TCP receiver (syslog over TCP).
    Tcp(TcpOutput),
    /// A TLS receiver (syslog over TLS, RFC 5425).
    Tls(TlsOutput),
    /// A local file.
    File(FileOutput),
    /// An HTTP receiver (Splunk HEC, Panther, Sekoia, any HTTP endpoint), in batches.
    Http(Box<HttpOutput>),
    /// A Kafka topic (or a Kafka-compatible service), through the idempotent producer.
    Kafka(Box<KafkaOutput>),
}

/// A TCP output.
#[derive(Clone, Debug)]
pub struct TcpOutput {
    /// `host:port`, resolved at each connect.
    pub address: String,
    /// Frame format.
    pub framing: OutFraming,
}

/// A TLS output.
#[derive(Clone, Debug)]
pub struct TlsOutput {
    /// `host:port`, resolved at each connect.
    pub address: String,
    /// Frame format (default octet counting, RFC 5425).
    pub framing: OutFraming,
    /// Name for SNI and certificate verification (default: the host of `address`).
    pub server_name: String,
    /// CA, client certificate and verification policy.
    pub files: ClientFiles,
}

/// Output frame formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutFraming {
    /// Record + LF.
    Newline,
    /// RFC 6587 octet counting: `LEN SP record`.
    Octet,
}

/// A file output.
#[derive(Clone, Debug)]
pub struct FileOutput {
    /// The file.
    pub path: PathBuf,
    /// Rotate past this size (0: never).
    pub rotate_bytes: u64,
    /// Rotated files kept.
    pub rotate_keep: u32,
    /// Frame format.
    pub framing: OutFraming,
}

/// Keys every output of kind `tcp`, `tls` or `file` has.
const COMMON_KEYS: [&str; 13] = [
    "name",
    "kind",
    "replay",
    "framing",
    "rate_limit_eps",
    "alert_after",
    "settle",
    "syslog",
    "app_name",
    "hostname",
    "facility",
    "severity",
    "syslog_sd",
];

/// Keys every output of kind `http` or `kafka` has: they batch records as they are, without
/// framing or a syslog header.
const BATCH_COMMON_KEYS: [&str; 6] = [
    "name",
    "kind",
    "replay",
    "rate_limit_eps",
    "alert_after",
    "settle",
];

pub(super) fn output_config(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<OutputConfig> {
    let (kind, kind_span) = t.req_str(
        "kind",
        "\"tcp\", \"tls\", \"file\", \"http\" or \"kafka\"",
        cx,
    )?;
    let framing_choices = [
        ("newline", OutFraming::Newline),
        ("octet", OutFraming::Octet),
    ];
    let name = output_name(t, cx);
    let framing = t.choice("framing", &framing_choices, cx);
    let syslog = syslog_config(t, cx);
    let (kind, default_replay) = match kind {
        "tcp" => (tcp_kind(t, framing, cx), Duration::from_secs(900)),
        "tls" => (tls_kind(t, framing, cx), Duration::from_secs(900)),
        "file" => (file_kind(t, framing, cx), Duration::ZERO),
        "http" => {
            // No framing and no syslog header: records go into request bodies as they are.
            t.check_keys(&[&BATCH_COMMON_KEYS[..], HTTP_KEYS].concat(), cx);
            (
                http_output(t, cx).map(|h| OutputKind::Http(Box::new(h))),
                Duration::ZERO,
            )
        }
        "kafka" => {
            // Records go into record batches as they are: no framing, no syslog header; the
            // broker acknowledges, so no replay window by default.
            t.check_keys(&[&BATCH_COMMON_KEYS[..], KAFKA_KEYS].concat(), cx);
            (
                kafka_output(t, cx).map(|k| OutputKind::Kafka(Box::new(k))),
                Duration::ZERO,
            )
        }
        k => {
            cx.err(
                kind_span,
                format!("output kind {k:?} is unknown (supported: tcp, tls, file, http, kafka)"),
            );
            return None;
        }
    };
    let replay = t.duration("replay", cx).unwrap_or(default_replay);
    let rate_limit_eps = t.count("rate_limit_eps", 0..=10_000_000, cx).unwrap_or(0);
    // 0 turns the alert off.
    let alert_after = match t.duration("alert_after", cx) {
        None => Some(Duration::from_secs(300)),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let settle = t.duration("settle", cx).unwrap_or(Duration::from_secs(2));
    Some(OutputConfig {
        alert_after,
        settle,
        name: name?,
        kind: kind?,
        replay,
        rate_limit_eps,
        syslog: syslog?,
    })
}

/// Kind `tcp`: `address`, newline framing by default.
fn tcp_kind(t: &Tbl<'_, '_>, framing: Option<OutFraming>, cx: &mut Ctx<'_>) -> Option<OutputKind> {
    t.check_keys(&[&COMMON_KEYS[..], &["address"]].concat(), cx);
    let address = host_port(t, cx);
    let framing = framing.unwrap_or(OutFraming::Newline);
    address.map(|address| OutputKind::Tcp(TcpOutput { address, framing }))
}

/// Kind `tls`: `address` and the client TLS keys, octet counting by default (RFC 5425).
fn tls_kind(t: &Tbl<'_, '_>, framing: Option<OutFraming>, cx: &mut Ctx<'_>) -> Option<OutputKind> {
    t.check_keys(
        &[
            &COMMON_KEYS[..],
            &[
                "address",
                "ca",
                "client_cert",
                "client_key",
                "server_name",
                "insecure_skip_verify",
            ],
        ]
        .concat(),
        cx,
    );
    let address = host_port(t, cx);
    let framing = framing.unwrap_or(OutFraming::Octet);
    address.and_then(|address| tls_output(t, address, framing, cx))
}

/// Kind `file`: `path` (relative to the configuration's directory) and rotation.
fn file_kind(t: &Tbl<'_, '_>, framing: Option<OutFraming>, cx: &mut Ctx<'_>) -> Option<OutputKind> {
    t.check_keys(
        &[&COMMON_KEYS[..], &["path", "rotate_bytes", "rotate_keep"]].concat(),
        cx,
    );
    let path = t
        .req_str("path", "a file path", cx)
        .map(|(s, _)| cx.resolve(s));
    let rotate_bytes = t.size("rotate_bytes", 0..=u64::MAX, cx).unwrap_or(1 << 30);
    let rotate_keep = t.count("rotate_keep", 1..=1000, cx).unwrap_or(5) as u32;
    let framing = framing.unwrap_or(OutFraming::Newline);
    path.map(|path| {
        OutputKind::File(FileOutput {
            path,
            rotate_bytes,
            rotate_keep,
            framing,
        })
    })
}

fn host_port(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<String> {
    t.req_str("address", "\"host:port\"", cx)
        .and_then(|(s, span)| {
            let port_ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if port_ok {
                Some(s.to_string())
            } else {
                cx.err(
                    span,
                    format!("address = {s:?}: expected \"host:port\" with a port from 1 to 65535"),
                );
                None
            }
        })
}

fn tls_output(
    t: &Tbl<'_, '_>,
    address: String,
    framing: OutFraming,
    cx: &mut Ctx<'_>,
) -> Option<OutputKind> {
    let host = address
        .rsplit_once(':')
        .map_or(address.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let TlsClient { server_name, files } = tls_client(t, host, "address", cx)?;
    Some(OutputKind::Tls(TlsOutput {
        address,
        framing,
        server_name,
        files,
    }))
}

/// A facility or severity: a name from `names` or its number.
fn syslog_code(t: &Tbl<'_, '_>, key: &str, names: &[&str], cx: &mut Ctx<'_>) -> Option<u8> {
    let v = t.get(key)?;
    let code = match v.get_ref() {
        DeValue::String(s) => names.iter().position(|n| *n == s.as_ref()),
        DeValue::Integer(i) => u8::from_str_radix(i.as_str(), i.radix())
            .ok()
            .filter(|n| usize::from(*n) < names.len())
            .map(usize::from),
        _ => None,
    };
    if code.is_none() {
        cx.err(
            v.span(),
            format!(
                "{key}: expected 0..={} or one of {}",
                names.len() - 1,
                names.join(" | ")
            ),
        );
    }
    code.and_then(|c| u8::try_from(c).ok())
}

fn syslog_config(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<SyslogConfig> {
    let format = t
        .choice(
            "syslog",
            &[
                ("none", Format::None),
                ("rfc5424", Format::Rfc5424),
                ("rfc3164", Format::Rfc3164),
            ],
            cx,
        )
        .unwrap_or(Format::None);
    let mut c = SyslogConfig {
        format,
        ..SyslogConfig::default()
    };
    let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic());
    if let Some((s, span)) = t.str("app_name", "a name", cx) {
        if printable(s) && s.len() <= APP_NAME_MAX {
            c.app_name = s.to_string();
        } else {
            cx.err(span, format!("app_name = {s:?}: use 1 to {APP_NAME_MAX} printable ASCII characters without spaces"));
        }
    }
    if let Some((s, span)) = t.str("hostname", "a host name", cx) {
        if printable(s) && s.len() <= 255 {
            c.hostname = Some(s.to_string());
        } else {
            cx.err(
                span,
                format!("hostname = {s:?}: use 1 to 255 printable ASCII characters without spaces"),
            );
        }
    }
    if let Some(f) = syslog_code(t, "facility", &FACILITIES, cx) {
        c.facility = f;
    }
    if let Some(s) = syslog_code(t, "severity", &SEVERITIES, cx) {
        c.severity = s;
    }
    match t.get("syslog_sd").map(|v| (v, v.get_ref())) {
        None => {}
        Some((_, DeValue::Boolean(b))) => c.sd = *b,
        Some((v, other)) => cx.err(
            v.span(),
            format!(
                "syslog_sd: expected true or false, found {}",
                type_name(other)
            ),
        ),
    }
    if c.sd && c.format != Format::Rfc5424 {
        let span = t.get("syslog_sd").map_or(t.span.clone(), Spanned::span);
        cx.err(
            span,
            "syslog_sd needs syslog = \"rfc5424\" (RFC 3164 has no structured data)",
        );
    }
    Some(c)
}

/// RFC 5424's APP-NAME limit.
pub const APP_NAME_MAX: usize = 48;

/// Which header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Records as received.
    None,
    /// RFC 5424.
    Rfc5424,
    /// RFC 3164 (BSD).
    Rfc3164,
}

/// An output's syslog settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyslogConfig {
    /// The header format.
    pub format: Format,
    /// APP-NAME / TAG.
    pub app_name: String,
    /// HOSTNAME; `None`: the machine's.
    pub hostname: Option<String>,
    /// Facility 0..=23.
    pub facility: u8,
    /// Severity 0..=7.
    pub severity: u8,
    /// RFC 5424 structured data with instance and sequence number.
    pub sd: bool,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        SyslogConfig {
            format: Format::None,
            app_name: "ringrelay".into(),
            hostname: None,
            facility: 16,
            severity: 6,
            sd: false,
        }
    }
}

/// Facility names (RFC 5424 table 1, with the usual names), index = code.
pub const FACILITIES: [&str; 24] = [
    "kern",
    "user",
    "mail",
    "daemon",
    "auth",
    "syslog",
    "lpr",
    "news",
    "uucp",
    "cron",
    "authpriv",
    "ftp",
    "ntp",
    "security",
    "console",
    "solaris-cron",
    "local0",
    "local1",
    "local2",
    "local3",
    "local4",
    "local5",
    "local6",
    "local7",
];

/// Severity names, index = code.
pub const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];
