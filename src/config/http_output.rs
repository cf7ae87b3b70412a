//! `[[feed.output]]` of kind `http`: the URL, the presets of known receivers (Splunk HEC,
//! Panther, Sekoia), authentication, headers, batching and HEC acknowledgement.

use std::ops::Range;
use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::table::{type_name, warn_placeholder, Ctx, Tbl};
use super::tls::{refuse_tls_client_keys, tls_client, TlsClient};

/// HTTP output presets: endpoint paths, headers and semantics of known receivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Splunk HTTP Event Collector (`/services/collector/raw` or `/event`).
    SplunkHec,
    /// Panther HTTP source (shared-secret header).
    Panther,
    /// Sekoia HTTPS intake (`/plain/batch`).
    Sekoia,
    /// Nothing implied.
    Generic,
}

impl Preset {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Preset::SplunkHec => "splunk_hec",
            Preset::Panther => "panther",
            Preset::Sekoia => "sekoia",
            Preset::Generic => "generic",
        }
    }
}

/// How records are put in a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// One record per line, each followed by LF.
    Ndjson,
    /// `[rec,rec,...]`: each record as-is (records must be JSON values for the body to be valid).
    JsonArray,
    /// Splunk HEC `/services/collector/event`: `{"event":"<record as a JSON string>"}` per line.
    HecEvent,
}

/// An HTTP output.
#[derive(Clone, Debug)]
pub struct HttpOutput {
    /// Host name or IP, as written in the URL.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Path and query of the data requests.
    pub path: String,
    /// The preset.
    pub preset: Preset,
    /// Every header line of a data request but `Content-Length` (and `Content-Encoding`),
    /// each `Name: value`.
    pub headers: Vec<(String, String)>,
    /// Body format.
    pub body: BodyFormat,
    /// Gzip the body.
    pub gzip: bool,
    /// Largest body before compression (a single longer record goes alone).
    pub max_batch_bytes: usize,
    /// A batch below `max_batch_bytes` waits until its oldest record is this old.
    pub max_batch_age: Duration,
    /// Request sent to response read, at most.
    pub request_timeout: Duration,
    /// Splunk HEC indexer acknowledgement.
    pub ack: bool,
    /// A batch not acknowledged within this is sent again.
    pub ack_timeout: Duration,
    /// How often pending acknowledgements are polled.
    pub ack_poll: Duration,
    /// HEC channel GUID (filled in from instance, feed and output when not configured).
    pub channel: String,
    /// HTTPS (`https://` URL): the name to verify and the TLS files.
    pub tls: Option<TlsClient>,
}

/// The parts of an `http://` URL the HTTP output needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port (default 80).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// `https://`.
    pub https: bool,
}

/// Parses `http[s]://host[:port][/path][?query]`.
pub fn parse_http_url(s: &str) -> Result<HttpUrl, String> {
    let (rest, https) = if let Some(r) = s.strip_prefix("http://") {
        (r, false)
    } else if let Some(r) = s.strip_prefix("https://") {
        (r, true)
    } else {
        return Err(format!("url = {s:?}: expected http[s]://host[:port]/path"));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(format!(
            "url = {s:?}: user:password in the URL is not supported (use headers)"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("url = {s:?}: unclosed [ in the host"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '#') {
        return Err(format!("url = {s:?}: no valid host"));
    }
    let port = match port {
        None if https => 443,
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("url = {s:?}: port must be 1 to 65535")),
        },
    };
    if path.contains(|c: char| c.is_whitespace() || c.is_control() || c == '#') {
        return Err(format!(
            "url = {s:?}: the path may not contain spaces, control characters or a #fragment"
        ));
    }
    Ok(HttpUrl {
        host: host.to_string(),
        port,
        path,
        https,
    })
}

/// A stable HEC channel GUID for an output: the same instance, feed and output give the same
/// channel after every restart (Splunk keeps acknowledgement state per channel).
pub fn default_channel(instance: &str, feed: &str, output: &str) -> String {
    let mut words = [0u32; 4];
    for (i, w) in words.iter_mut().enumerate() {
        let mut h = crc32fast::Hasher::new();
        h.update(&[i as u8]);
        for part in [instance, feed, output] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        *w = h.finalize();
    }
    // RFC 9562 version 8 (custom) UUID, variant 10.
    words[1] = (words[1] & 0xffff_0fff) | 0x0000_8000;
    words[2] = (words[2] & 0x3fff_ffff) | 0x8000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:04x}{:08x}",
        words[0],
        words[1] >> 16,
        words[1] & 0xffff,
        words[2] >> 16,
        words[2] & 0xffff,
        words[3]
    )
}

/// Keys of an http output besides the common ones.
pub(super) const HTTP_KEYS: &[&str] = &[
    "url",
    "preset",
    "token",
    "secret",
    "auth_header",
    "headers",
    "body",
    "gzip",
    "max_batch_bytes",
    "max_batch_age",
    "request_timeout",
    "ack",
    "ack_timeout",
    "ack_poll",
    "channel",
    // https:// only.
    "ca",
    "client_cert",
    "client_key",
    "server_name",
    "insecure_skip_verify",
];

/// `8-4-4-4-12` hex digits, as Splunk wants a HEC channel.
pub(super) fn is_guid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A header name is an RFC 9110 token.
fn valid_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value has no CR, LF or other control character but TAB.
fn valid_header_value(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && c != '\t')
}

/// An http output's keys besides the common ones. Read in a fixed order (errors at the same
/// position come out in it); a bad `url` stops here, since the preset checks need its path.
pub(super) fn http_output(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<HttpOutput> {
    let url = http_url(t, cx);
    let preset = t
        .choice(
            "preset",
            &[
                ("splunk_hec", Preset::SplunkHec),
                ("panther", Preset::Panther),
                ("sekoia", Preset::Sekoia),
                ("generic", Preset::Generic),
            ],
            cx,
        )
        .unwrap_or(Preset::Generic);
    let body_choice = t.choice(
        "body",
        &[
            ("ndjson", BodyFormat::Ndjson),
            ("json_array", BodyFormat::JsonArray),
        ],
        cx,
    );
    let gzip = t.bool("gzip", cx).unwrap_or(false);
    let max_batch_bytes = t
        .size("max_batch_bytes", 1024..=64 << 20, cx)
        .unwrap_or(512 << 10) as usize;
    let max_batch_age = t
        .duration("max_batch_age", cx)
        .unwrap_or(Duration::from_secs(1));
    let request_timeout = request_timeout(t, cx);
    let ack = t.bool("ack", cx).unwrap_or(false);
    let ack_timeout = t
        .duration("ack_timeout", cx)
        .unwrap_or(Duration::from_secs(300));
    let ack_poll = t
        .duration("ack_poll", cx)
        .unwrap_or(Duration::from_secs(10));
    let channel = channel(t, cx);
    let auth = auth_keys(t, cx);
    let (url, url_span) = url?;
    let mut ep = Endpoint {
        path: url.path.clone(),
        body: body_choice.unwrap_or(BodyFormat::Ndjson),
        headers: Vec::new(),
    };
    match preset {
        Preset::SplunkHec => splunk_hec(t, auth, body_choice.is_some(), url_span, &mut ep, cx),
        Preset::Panther => panther(t, auth, &mut ep, cx),
        Preset::Sekoia => sekoia(t, auth, &mut ep, cx),
        Preset::Generic => generic(auth, &mut ep, cx),
    }
    if ack && preset != Preset::SplunkHec {
        let span = t.get("ack").map_or(t.span.clone(), Spanned::span);
        cx.err(
            span,
            "ack = true is Splunk HEC indexer acknowledgement: only with preset = \"splunk_hec\"",
        );
    }
    extra_headers(t, &mut ep.headers, cx);
    let tls = https_keys(t, &url, cx)?;
    Some(HttpOutput {
        tls,
        host: url.host,
        port: url.port,
        path: ep.path,
        preset,
        headers: ep.headers,
        body: ep.body,
        gzip,
        max_batch_bytes,
        max_batch_age,
        request_timeout: request_timeout?,
        ack,
        ack_timeout,
        ack_poll,
        channel: channel.unwrap_or_default(),
    })
}

/// `url`, parsed, with its span (the preset checks point at it).
fn http_url(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<(HttpUrl, Range<usize>)> {
    t.req_str(
        "url",
        "a URL like \"http://siem:8088/services/collector/raw\"",
        cx,
    )
    .and_then(|(s, span)| match parse_http_url(s) {
        Ok(u) => Some((u, span)),
        Err(e) => {
            cx.err(span, e);
            None
        }
    })
}

/// `request_timeout` (default 30s); `None` when it is 0, which is an error.
fn request_timeout(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<Duration> {
    match t.duration("request_timeout", cx) {
        Some(d) if d.is_zero() => {
            let span = t
                .get("request_timeout")
                .map_or(t.span.clone(), Spanned::span);
            cx.err(span, "request_timeout must be more than 0");
            None
        }
        Some(d) => Some(d),
        None => Some(Duration::from_secs(30)),
    }
}

/// `channel`, a GUID; empty when it is not one (an error), `None` when unset.
fn channel(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<String> {
    t.str("channel", "a GUID", cx).map(|(s, span)| {
        if is_guid(s) {
            s.to_string()
        } else {
            cx.err(
                span,
                format!("channel = {s:?}: expected a GUID like \"0d1c2b3a-....\""),
            );
            String::new()
        }
    })
}

/// A string key as written, with its span.
type Key<'a> = Option<(&'a str, Range<usize>)>;

/// The authentication keys as written; which of them a preset uses is its business.
struct AuthKeys<'a> {
    token: Key<'a>,
    secret: Key<'a>,
    auth_header: Key<'a>,
}

/// Where the data requests go and what they carry, as the preset fills it in.
struct Endpoint {
    path: String,
    body: BodyFormat,
    headers: Vec<(String, String)>,
}

/// `token`, `secret` and `auth_header`, each checked for what makes a bad header.
fn auth_keys<'a>(t: &Tbl<'a, '_>, cx: &mut Ctx<'_>) -> AuthKeys<'a> {
    let token = t.str("token", "a string", cx);
    let secret = t.str("secret", "a string", cx);
    let auth_header = t.str("auth_header", "a header name", cx);
    for (k, v) in [("token", &token), ("secret", &secret)] {
        if let Some((s, span)) = v.clone() {
            warn_placeholder(k, s, span.clone(), cx);
            if s.is_empty() || !valid_header_value(s) {
                cx.err(
                    span,
                    format!("{k} may not be empty or hold control characters"),
                );
            }
        }
    }
    if let Some((s, span)) = auth_header.clone() {
        if !valid_header_name(s) {
            cx.err(
                span,
                format!("auth_header = {s:?} is not a valid header name"),
            );
        }
    }
    AuthKeys {
        token,
        secret,
        auth_header,
    }
}

/// An error at `key` when it is set but `preset` has no use for it.
fn refuse(key: &str, v: &Key<'_>, preset: Preset, cx: &mut Ctx<'_>) {
    if let Some((_, span)) = v.clone() {
        cx.err(
            span,
            format!("{key} is not used by preset {:?}", preset.name()),
        );
    }
}

/// The span errors about a missing preset key point at: `preset`, or the whole table.
fn preset_span(t: &Tbl<'_, '_>) -> Range<usize> {
    t.get("preset").map_or(t.span.clone(), Spanned::span)
}

/// Splunk HEC: `token` in `Authorization: Splunk …`, `/services/collector/raw` by default, and
/// the `/event` endpoint's envelopes, which the output builds (so `body` may not be set).
fn splunk_hec(
    t: &Tbl<'_, '_>,
    auth: AuthKeys<'_>,
    body_set: bool,
    url_span: Range<usize>,
    ep: &mut Endpoint,
    cx: &mut Ctx<'_>,
) {
    refuse("secret", &auth.secret, Preset::SplunkHec, cx);
    refuse("auth_header", &auth.auth_header, Preset::SplunkHec, cx);
    match auth.token {
        Some((tok, _)) => ep
            .headers
            .push(("Authorization".into(), format!("Splunk {tok}"))),
        None => cx.err(
            preset_span(t),
            "preset \"splunk_hec\" needs token (the HEC token)",
        ),
    }
    if ep.path == "/" {
        ep.path = "/services/collector/raw".into();
    }
    let endpoint = ep.path.split('?').next().unwrap_or("");
    if endpoint == "/services/collector/event"
        || endpoint == "/services/collector"
        || endpoint == "/services/collector/event/1.0"
    {
        if let Some((_, span)) = t.str("body", "", cx).filter(|_| body_set) {
            cx.err(span, "body: the HEC /event endpoint takes {\"event\": ...} envelopes, which the output builds itself; remove body");
        }
        ep.body = BodyFormat::HecEvent;
    } else if !endpoint.starts_with("/services/collector/raw") {
        cx.err(url_span, format!("url: preset \"splunk_hec\" posts to /services/collector/raw or /services/collector/event, not {endpoint:?}"));
    }
}

/// Panther: `secret` in `auth_header` (default `x-panther-zscaler`).
fn panther(t: &Tbl<'_, '_>, auth: AuthKeys<'_>, ep: &mut Endpoint, cx: &mut Ctx<'_>) {
    refuse("token", &auth.token, Preset::Panther, cx);
    match auth.secret {
        Some((sec, _)) => {
            let name = auth.auth_header.map_or("x-panther-zscaler", |(n, _)| n);
            ep.headers.push((name.to_string(), sec.to_string()));
        }
        None => cx.err(
            preset_span(t),
            "preset \"panther\" needs secret (the HTTP source's shared secret)",
        ),
    }
}

/// Sekoia: `token` in `X-SEKOIAIO-INTAKE-KEY`, `/plain/batch` by default, LF-separated events.
fn sekoia(t: &Tbl<'_, '_>, auth: AuthKeys<'_>, ep: &mut Endpoint, cx: &mut Ctx<'_>) {
    refuse("secret", &auth.secret, Preset::Sekoia, cx);
    refuse("auth_header", &auth.auth_header, Preset::Sekoia, cx);
    match auth.token {
        Some((tok, _)) => ep
            .headers
            .push(("X-SEKOIAIO-INTAKE-KEY".into(), tok.to_string())),
        None => cx.err(
            preset_span(t),
            "preset \"sekoia\" needs token (the intake key)",
        ),
    }
    if ep.path == "/" {
        ep.path = "/plain/batch".into();
    }
    if ep.body == BodyFormat::JsonArray {
        let span = t.get("body").map_or(t.span.clone(), Spanned::span);
        cx.err(span, "preset \"sekoia\" posts to /plain/batch, which takes LF-separated events: use body = \"ndjson\"");
    }
}

/// Generic: `secret` in `auth_header` when both are set, nothing otherwise.
fn generic(auth: AuthKeys<'_>, ep: &mut Endpoint, cx: &mut Ctx<'_>) {
    refuse("token", &auth.token, Preset::Generic, cx);
    match (auth.secret, auth.auth_header) {
        (Some((sec, _)), Some((name, _))) => ep.headers.push((name.to_string(), sec.to_string())),
        (None, None) => {}
        (Some((_, span)), None) | (None, Some((_, span))) => {
            cx.err(
                span,
                "secret and auth_header go together (the header that carries the secret)",
            );
        }
    }
}

/// The `headers` table, appended to `headers`: valid names and values only, and none of the
/// headers the output sets itself.
fn extra_headers(t: &Tbl<'_, '_>, headers: &mut Vec<(String, String)>, cx: &mut Ctx<'_>) {
    let Some(h) = t
        .get("headers")
        .and_then(|v| Tbl::new(v, "headers".into(), cx))
    else {
        return;
    };
    for (k, v) in h.t.iter() {
        let name = k.get_ref().as_ref();
        let lower = name.to_ascii_lowercase();
        if !valid_header_name(name) {
            cx.err(
                k.span(),
                format!("headers: {name:?} is not a valid header name"),
            );
            continue;
        }
        if [
            "host",
            "content-length",
            "content-encoding",
            "transfer-encoding",
            "connection",
        ]
        .contains(&lower.as_str())
        {
            cx.err(
                k.span(),
                format!("headers: {name} is set by the output itself"),
            );
            continue;
        }
        match v.get_ref() {
            DeValue::String(s) if valid_header_value(s) => {
                headers.push((name.to_string(), s.to_string()))
            }
            DeValue::String(_) => cx.err(
                v.span(),
                format!("headers: the value of {name} holds a control character"),
            ),
            other => cx.err(
                v.span(),
                format!(
                    "headers: the value of {name} must be a string, found {}",
                    type_name(other)
                ),
            ),
        }
    }
}

/// The TLS keys: checked and loaded for an `https://` URL (`None` when they fail), refused
/// one by one for an `http://` one.
fn https_keys(t: &Tbl<'_, '_>, url: &HttpUrl, cx: &mut Ctx<'_>) -> Option<Option<TlsClient>> {
    if url.https {
        return Some(Some(tls_client(t, &url.host, "url", cx)?));
    }
    refuse_tls_client_keys(t, "is for https:// URLs; this url is http://", cx);
    Some(None)
}
