//! Configuration: TOML as written ([`toml::de::DeTable`], every value with its byte span) →
//! a validated [`Config`], ready to use. Every problem is reported at once, each with the file,
//! line and column of the key or value at fault, so `ringrelay check` lists them all.
//!
//! Relative paths are resolved against the directory of the configuration file.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::input::framing::{Framing, Oversize};
use crate::output::syslog::{Format, SyslogConfig, APP_NAME_MAX, FACILITIES, SEVERITIES};
use crate::ring::{record_stride, WhenFull, MIN_CAPACITY};
use crate::tls::{ClientFiles, ServerFiles};

/// The relay's whole configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// `[relay]`.
    pub relay: RelayConfig,
    /// `[[feed]]`, in file order.
    pub feeds: Vec<FeedConfig>,
    /// What works but should not be left so (a placeholder secret, a secret in clear text).
    pub warnings: Vec<ConfigError>,
}

/// `[relay]`.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Where the ring files live.
    pub data_dir: PathBuf,
    /// Line and column of `data_dir` in the file (for checks made on the machine).
    pub data_dir_at: (usize, usize),
    /// The active-standby lock file (default `data_dir/ringrelay.lock`).
    pub lock_file: PathBuf,
    /// Admin HTTP endpoint (default 127.0.0.1:9600; `"off"` disables).
    pub admin_listen: Option<SocketAddr>,
    /// Instance name, for logs and metrics.
    pub instance: String,
    /// Default sync policy of the rings.
    pub sync: SyncPolicy,
    /// How often rings and cursors are checkpointed.
    pub checkpoint_interval: Duration,
    /// How often a standby retries the lock.
    pub standby_poll: Duration,
    /// The feed whose ring receives alert records (`None`: alerts are logged and counted only).
    pub alert_feed: Option<String>,
}

/// When ring pages are forced to disk (`buffer-spec.md` §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// After every batch of records read from a connection.
    Always,
    /// Every period.
    Interval(Duration),
    /// Never explicitly: the kernel writes back on its own schedule.
    Never,
}

/// `[[feed]]`.
#[derive(Clone, Debug)]
pub struct FeedConfig {
    /// Name; also the ring file's name.
    pub name: String,
    /// Line and column of its `buffer` in the file (for checks made on the machine).
    pub buffer_at: (usize, usize),
    /// `input`.
    pub input: InputConfig,
    /// Record framing on the input.
    pub framing: Framing,
    /// Longest record kept whole.
    pub max_record_bytes: usize,
    /// What happens to longer records.
    pub oversize: Oversize,
    /// Ring data area bytes.
    pub capacity: u64,
    /// How long the ring should cover.
    pub retention: Duration,
    /// Full-ring policy.
    pub when_full: WhenFull,
    /// This feed's sync policy.
    pub sync: SyncPolicy,
    /// `[[feed.output]]`.
    pub outputs: Vec<OutputConfig>,
}

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

/// A TLS input's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInput {
    /// Certificate, key and client CA files.
    pub files: ServerFiles,
    /// A connection still handshaking after this long is closed.
    pub handshake_timeout: Duration,
}

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
}

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

/// The client side of a TLS connection: what `tls` and `https` outputs verify and present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsClient {
    /// Name for SNI and certificate verification.
    pub server_name: String,
    /// CA, client certificate and verification policy.
    pub files: ClientFiles,
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

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line (0 when the error is about the whole file: it could not be read).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// What is wrong and, where it helps, how to fix it.
    pub msg: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.path.display(), self.msg);
        }
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.col,
            self.msg
        )
    }
}

/// Events per second a sizing may name (`buffer.eps`, `ringrelay size --eps`).
pub const EPS_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000_000;
/// Average event size a sizing may name (`buffer.bytes`, `ringrelay size --bytes`).
pub const EVENT_BYTES_RANGE: std::ops::RangeInclusive<u64> = 1..=16 << 20;
/// Feeds a relay may have.
pub const MAX_FEEDS: usize = 64;

/// A count: digits with optional `_` separators, and an optional `k` (thousand) or `M`
/// (million) suffix: `20000`, `20_000`, `20k`, `1.5k`.
pub fn parse_count(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a number (like 20000, 20_000 or 20k)");
    let t = s.trim().replace('_', "");
    let (num, mult) = match t.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1_000.0),
        None => match t.strip_suffix('M') {
            Some(n) => (n, 1_000_000.0),
            None => (t.as_str(), 1.0),
        },
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult as u64).ok_or_else(bad);
    }
    let f: f64 = num.parse().map_err(|_| bad())?;
    let v = f * mult;
    if !(v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(v as u64)
}

/// Parses `"8GiB"`, `"512MiB"`, `"64KiB"`, `"1TiB"`, `"1GB"` (decimal), `"1024"` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"512MiB\" or \"8GiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `"500ms"`, `"1s"`, `"15m"`, `"1h"`, `"2d"`, `"1h30m"`, `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("{s:?} is not a duration like \"500ms\", \"15m\" or \"1h30m\"");
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            _ => return Err(bad()),
        };
        total = total.saturating_add(unit);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Collects errors with their positions.
struct Ctx<'t> {
    path: PathBuf,
    text: &'t str,
    base: PathBuf,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigError>,
}

impl Ctx<'_> {
    /// Something that works but should not be left so (`check` prints it, `run` logs it).
    fn warn(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let (line, col) = self.at(span.start);
        self.warnings.push(ConfigError {
            path: self.path.clone(),
            line,
            col,
            msg: msg.into(),
        });
    }

    fn err(&mut self, span: Range<usize>, msg: impl Into<String>) {
        let (line, col) = self.at(span.start);
        self.errors.push(ConfigError {
            path: self.path.clone(),
            line,
            col,
            msg: msg.into(),
        });
    }

    /// The 1-based line and column of a byte offset.
    fn at(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

/// A table being read: remembers which keys were used and where it is.
struct Tbl<'a, 'i> {
    t: &'a DeTable<'i>,
    span: Range<usize>,
    what: String,
}

/// Warns about a secret or token that looks like an example's placeholder.
fn warn_placeholder(key: &str, value: &str, span: Range<usize>, cx: &mut Ctx<'_>) {
    let v = value.to_ascii_lowercase();
    let placeholder = [
        "change-me",
        "changeme",
        "change_me",
        "replace-me",
        "example",
        "placeholder",
        "todo",
        "xxxx",
    ]
    .iter()
    .any(|p| v.contains(p))
        || matches!(v.as_str(), "secret" | "password" | "token")
        || (!v.is_empty() && v.chars().all(|c| matches!(c, '0' | '-')));
    if placeholder {
        cx.warn(
            span,
            format!("{key} = {value:?} looks like a placeholder: set the real value before this goes live"),
        );
    }
}

/// How errors name the `i`-th table of `kind`: by its `name` when it has one.
fn named(kind: &str, v: &Value<'_>, i: usize) -> String {
    let name = match v.get_ref() {
        DeValue::Table(t) => t.get("name").and_then(|n| match n.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => None,
        }),
        _ => None,
    };
    match name {
        Some(n) => format!("{kind} {n:?}"),
        None => format!("{kind} #{}", i + 1),
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "string",
        DeValue::Integer(_) => "integer",
        DeValue::Float(_) => "float",
        DeValue::Boolean(_) => "boolean",
        DeValue::Datetime(_) => "datetime",
        DeValue::Array(_) => "array",
        DeValue::Table(_) => "table",
    }
}

impl<'a, 'i> Tbl<'a, 'i> {
    fn new(v: &'a Value<'i>, what: String, cx: &mut Ctx<'_>) -> Option<Tbl<'a, 'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(Tbl {
                t,
                span: v.span(),
                what,
            }),
            other => {
                cx.err(
                    v.span(),
                    format!("{what} must be a table, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn check_keys(&self, allowed: &[&str], cx: &mut Ctx<'_>) {
        for k in self.t.keys() {
            if !allowed.contains(&k.get_ref().as_ref()) {
                cx.err(
                    k.span(),
                    format!(
                        "unknown key {:?} in {} (allowed: {})",
                        k.get_ref(),
                        self.what,
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value<'i>> {
        self.t.get(key)
    }

    fn missing(&self, key: &str, cx: &mut Ctx<'_>) {
        cx.err(self.span.clone(), format!("{} needs {key:?}", self.what));
    }

    fn str(&self, key: &str, hint: &str, cx: &mut Ctx<'_>) -> Option<(&'a str, Range<usize>)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.as_ref(), v.span())),
            other => {
                cx.err(
                    v.span(),
                    format!("{key}: expected {hint}, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn req_str(&self, key: &str, hint: &str, cx: &mut Ctx<'_>) -> Option<(&'a str, Range<usize>)> {
        if self.get(key).is_none() {
            self.missing(key, cx);
        }
        self.str(key, hint, cx)
    }

    /// A string or integer parsed by `parse` (sizes, counts), checked against `range`.
    fn number(
        &self,
        key: &str,
        parse: fn(&str) -> Result<u64, String>,
        range: std::ops::RangeInclusive<u64>,
        cx: &mut Ctx<'_>,
    ) -> Option<u64> {
        let v = self.get(key)?;
        let n = match v.get_ref() {
            DeValue::String(s) => parse(s),
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| format!("{} is not a non-negative integer", i.as_str())),
            other => Err(format!(
                "expected a size or number, found {}",
                type_name(other)
            )),
        };
        match n {
            Ok(n) if range.contains(&n) => Some(n),
            Ok(n) => {
                cx.err(
                    v.span(),
                    format!(
                        "{key} = {n} is out of range ({}..={})",
                        range.start(),
                        range.end()
                    ),
                );
                None
            }
            Err(e) => {
                cx.err(v.span(), format!("{key}: {e}"));
                None
            }
        }
    }

    fn size(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        cx: &mut Ctx<'_>,
    ) -> Option<u64> {
        self.number(key, parse_size, range, cx)
    }

    fn count(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
        cx: &mut Ctx<'_>,
    ) -> Option<u64> {
        self.number(key, parse_count, range, cx)
    }

    fn bool(&self, key: &str, cx: &mut Ctx<'_>) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                cx.err(
                    v.span(),
                    format!("{key}: expected true or false, found {}", type_name(other)),
                );
                None
            }
        }
    }

    fn duration(&self, key: &str, cx: &mut Ctx<'_>) -> Option<Duration> {
        let (s, span) = self.str(key, "a duration string like \"15m\"", cx)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                cx.err(span, format!("{key}: {e}"));
                None
            }
        }
    }

    fn choice<T: Copy>(&self, key: &str, choices: &[(&str, T)], cx: &mut Ctx<'_>) -> Option<T> {
        let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
        let hint = format!("one of {}", names.join(" | "));
        let (s, span) = self.str(key, &hint, cx)?;
        match choices.iter().find(|c| c.0 == s) {
            Some(c) => Some(c.1),
            None => {
                cx.err(span, format!("{key} = {s:?}: expected {hint}"));
                None
            }
        }
    }

    /// The array of tables under `key` (`[[feed]]` or an inline array).
    fn tables(&self, key: &str, cx: &mut Ctx<'_>) -> Vec<&'a Value<'i>> {
        match self.get(key).map(|v| (v, v.get_ref())) {
            None => Vec::new(),
            Some((_, DeValue::Array(a))) => a.iter().collect(),
            Some((v, other)) => {
                cx.err(
                    v.span(),
                    format!(
                        "{key} must be an array of tables ([[{key}]]), found {}",
                        type_name(other)
                    ),
                );
                Vec::new()
            }
        }
    }
}

fn valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

const SYNC_CHOICES: [(&str, u8); 3] = [("interval", 0), ("always", 1), ("never", 2)];

fn sync_policy(t: &Tbl<'_, '_>, default: SyncPolicy, cx: &mut Ctx<'_>) -> SyncPolicy {
    let interval = t.duration("sync_interval", cx);
    match t.choice("sync", &SYNC_CHOICES, cx) {
        Some(1) => SyncPolicy::Always,
        Some(2) => SyncPolicy::Never,
        Some(_) => SyncPolicy::Interval(interval.unwrap_or(Duration::from_secs(1))),
        None => match (interval, default) {
            (Some(d), _) => SyncPolicy::Interval(d),
            (None, d) => d,
        },
    }
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) => Err(vec![ConfigError {
                path: path.to_path_buf(),
                line: 0,
                col: 0,
                msg: match e.kind() {
                    std::io::ErrorKind::NotFound => "no such file".to_string(),
                    _ => format!("cannot read the configuration: {e}"),
                },
            }]),
        }
    }

    /// Validates `text`, which came from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut cx = Ctx {
            path: path.to_path_buf(),
            text,
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let (root, syntax) = DeTable::parse_recoverable(text);
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            cx.err(span, format!("TOML syntax: {}", e.message().trim()));
        }
        let root_value = Spanned::new(root.span(), DeValue::Table(root.into_inner()));
        let cfg = Tbl::new(&root_value, "the configuration".into(), &mut cx)
            .and_then(|root| build(&root, &mut cx));
        let mut errors = cx.errors;
        if errors.is_empty() {
            if let Some(mut cfg) = cfg {
                cfg.warnings = cx.warnings;
                return Ok(cfg);
            }
        }
        // A syntax error first: what follows from it may be noise.
        errors.sort_by_key(|e| (!e.msg.starts_with("TOML syntax"), e.line, e.col));
        errors.dedup();
        Err(errors)
    }
}

fn build(root: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<Config> {
    root.check_keys(&["relay", "feed"], cx);
    let relay_v = root.get("relay");
    if relay_v.is_none() {
        root.missing("relay", cx);
    }
    let relay = relay_v
        .and_then(|v| Tbl::new(v, "[relay]".into(), cx))
        .and_then(|t| relay_config(&t, cx));
    let feeds_v = root.tables("feed", cx);
    if feeds_v.is_empty() {
        cx.err(
            root.span.start..root.span.start,
            "no feeds: add at least one [[feed]]",
        );
    }
    if feeds_v.len() > MAX_FEEDS {
        cx.err(
            feeds_v[64].span(),
            format!(
                "{} feeds configured; at most 64 are supported",
                feeds_v.len()
            ),
        );
    }
    let default_sync = relay
        .as_ref()
        .map_or(SyncPolicy::Interval(Duration::from_secs(1)), |r| r.sync);
    let mut feeds = Vec::new();
    let mut seen_names: Vec<String> = Vec::new();
    let mut seen_listen: Vec<SocketAddr> = Vec::new();
    let mut seen_files: Vec<PathBuf> = Vec::new();
    for (i, fv) in feeds_v.iter().enumerate() {
        let Some(t) = Tbl::new(fv, named("feed", fv, i), cx) else {
            continue;
        };
        let Some(feed) = feed_config(&t, default_sync, cx) else {
            continue;
        };
        if seen_names.contains(&feed.name) {
            let span = t.get("name").map_or(t.span.clone(), Spanned::span);
            cx.err(span, format!("feed name {:?} is used twice; each feed needs its own name (it names the ring file)", feed.name));
        }
        if seen_listen.contains(&feed.input.listen) && feed.input.listen.port() != 0 {
            let span = t.get("input").map_or(t.span.clone(), Spanned::span);
            cx.err(
                span,
                format!(
                    "feed {:?} listens on {}, which another feed already uses",
                    feed.name, feed.input.listen
                ),
            );
        }
        for o in &feed.outputs {
            if let OutputKind::File(f) = &o.kind {
                if seen_files.contains(&f.path) {
                    cx.err(t.span.clone(), format!("feed {:?} output {:?} writes to {}, which another output already writes", feed.name, o.name, f.path.display()));
                }
                seen_files.push(f.path.clone());
            }
        }
        seen_names.push(feed.name.clone());
        seen_listen.push(feed.input.listen);
        feeds.push(feed);
    }
    // Checked only when every feed parsed: a broken feed's name is unknown.
    if let Some(r) = relay.as_ref().filter(|_| feeds.len() == feeds_v.len()) {
        if let Some(name) = r.alert_feed.as_ref().filter(|n| !seen_names.contains(n)) {
            let span = relay_v
                .and_then(|v| Tbl::new(v, "[relay]".into(), cx))
                .and_then(|t| t.get("alert_feed").map(Spanned::span))
                .unwrap_or(0..0);
            cx.err(
                span,
                format!(
                    "alert_feed = {name:?} names no feed (feeds: {})",
                    seen_names.join(", ")
                ),
            );
        }
    }
    let relay = relay?;
    for feed in &mut feeds {
        for out in &mut feed.outputs {
            if let OutputKind::Http(h) = &mut out.kind {
                if h.channel.is_empty() {
                    h.channel = default_channel(&relay.instance, &feed.name, &out.name);
                }
            }
        }
    }
    Some(Config {
        path: cx.path.clone(),
        relay,
        feeds,
        warnings: Vec::new(),
    })
}

fn relay_config(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<RelayConfig> {
    t.check_keys(
        &[
            "data_dir",
            "lock_file",
            "admin_listen",
            "instance",
            "sync",
            "sync_interval",
            "checkpoint_interval",
            "standby_poll",
            "alert_feed",
        ],
        cx,
    );
    let data_dir = t
        .req_str("data_dir", "a directory path", cx)
        .map(|(s, span)| (cx.resolve(s), cx.at(span.start)));
    let lock_file = t
        .str("lock_file", "a file path", cx)
        .map(|(s, _)| cx.resolve(s));
    let admin_listen = match t.str(
        "admin_listen",
        "an address like \"127.0.0.1:9600\" or \"off\"",
        cx,
    ) {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9600))),
        Some(("" | "off", _)) => None,
        Some((s, span)) => match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                cx.err(
                    span,
                    format!("admin_listen = {s:?} is not an IP:port address (or \"off\")"),
                );
                None
            }
        },
    };
    let instance = t
        .str("instance", "a name", cx)
        .map_or("ringrelay".to_string(), |(s, _)| s.to_string());
    let sync = sync_policy(t, SyncPolicy::Interval(Duration::from_secs(1)), cx);
    let checkpoint_interval = t
        .duration("checkpoint_interval", cx)
        .unwrap_or(Duration::from_secs(1));
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&checkpoint_interval) {
        let span = t
            .get("checkpoint_interval")
            .map_or(t.span.clone(), Spanned::span);
        cx.err(span, "checkpoint_interval must be between 100ms and 60s");
    }
    let standby_poll = t
        .duration("standby_poll", cx)
        .unwrap_or(Duration::from_millis(500));
    let alert_feed = t
        .str("alert_feed", "a feed name", cx)
        .map(|(s, _)| s.to_string());
    let (data_dir, data_dir_at) = data_dir?;
    Some(RelayConfig {
        data_dir_at,
        alert_feed,
        lock_file: lock_file.unwrap_or_else(|| data_dir.join("ringrelay.lock")),
        data_dir,
        admin_listen,
        instance,
        sync,
        checkpoint_interval,
        standby_poll,
    })
}

fn feed_config(t: &Tbl<'_, '_>, default_sync: SyncPolicy, cx: &mut Ctx<'_>) -> Option<FeedConfig> {
    t.check_keys(
        &[
            "name",
            "input",
            "framing",
            "max_record_bytes",
            "oversize",
            "buffer",
            "retention",
            "when_full",
            "sync",
            "sync_interval",
            "output",
        ],
        cx,
    );
    let name = t.req_str("name", "a feed name", cx).and_then(|(s, span)| {
        if valid_name(s) {
            Some(s.to_string())
        } else {
            cx.err(span, format!("feed name {s:?}: use 1 to 32 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"));
            None
        }
    });
    let input_v = t.get("input");
    if input_v.is_none() {
        t.missing("input", cx);
    }
    let input = input_v
        .and_then(|v| Tbl::new(v, "input".into(), cx))
        .and_then(|it| input_config(&it, cx));
    let framing = t
        .choice(
            "framing",
            &[
                ("auto", Framing::Auto),
                ("newline", Framing::Newline),
                ("octet", Framing::Octet),
            ],
            cx,
        )
        .unwrap_or(Framing::Auto);
    let max_record_bytes = t
        .size("max_record_bytes", 1024..=16 << 20, cx)
        .unwrap_or(1 << 20) as usize;
    let oversize = t
        .choice(
            "oversize",
            &[("truncate", Oversize::Truncate), ("drop", Oversize::Drop)],
            cx,
        )
        .unwrap_or(Oversize::Truncate);
    let when_full = t
        .choice(
            "when_full",
            &[
                ("drop_oldest", WhenFull::DropOldest),
                ("block", WhenFull::Block),
            ],
            cx,
        )
        .unwrap_or(WhenFull::DropOldest);
    let sync = sync_policy(t, default_sync, cx);
    let mut retention = t
        .duration("retention", cx)
        .unwrap_or(Duration::from_secs(3600));
    let buffer_v = t.get("buffer");
    if buffer_v.is_none() {
        t.missing("buffer", cx);
    }
    let capacity = buffer_v
        .and_then(|v| Tbl::new(v, "buffer".into(), cx))
        .and_then(|b| buffer_capacity(&b, &mut retention, max_record_bytes, cx));
    let mut outputs = Vec::new();
    let outs = t.tables("output", cx);
    if outs.is_empty() {
        t.missing("output", cx);
    }
    if outs.len() > 8 {
        cx.err(
            outs[8].span(),
            format!(
                "{} outputs in one feed; at most 8 are supported",
                outs.len()
            ),
        );
    }
    for (j, ov) in outs.iter().enumerate() {
        let Some(ot) = Tbl::new(ov, format!("{} {}", t.what, named("output", ov, j)), cx) else {
            continue;
        };
        if let Some(o) = output_config(&ot, cx) {
            if outputs.iter().any(|x: &OutputConfig| x.name == o.name) {
                let span = ot.get("name").map_or(ot.span.clone(), Spanned::span);
                cx.err(
                    span,
                    format!("output name {:?} is used twice in this feed", o.name),
                );
            }
            outputs.push(o);
        }
    }
    Some(FeedConfig {
        buffer_at: cx.at(buffer_v.map_or(t.span.start, |v| v.span().start)),
        name: name?,
        input: input?,
        framing,
        max_record_bytes,
        oversize,
        capacity: capacity?,
        retention,
        when_full,
        sync,
        outputs,
    })
}

fn buffer_capacity(
    b: &Tbl<'_, '_>,
    retention: &mut Duration,
    max_record: usize,
    cx: &mut Ctx<'_>,
) -> Option<u64> {
    b.check_keys(&["size", "retention", "eps", "bytes"], cx);
    let mut asked = String::from("the buffer this sizing asks for");
    let by_rate = ["retention", "eps", "bytes"]
        .iter()
        .any(|k| b.get(k).is_some());
    let capacity = match (b.get("size"), by_rate) {
        (Some(v), true) => {
            cx.err(
                v.span(),
                "buffer: give either size, or retention + eps + bytes, not both",
            );
            return None;
        }
        (Some(_), false) => {
            let n = b.size("size", 0..=u64::MAX, cx)?;
            asked = format!("buffer size {n}");
            n.div_ceil(4096) * 4096
        }
        (None, true) => {
            if let Some(r) = b.duration("retention", cx) {
                *retention = r;
            }
            let eps = b.count("eps", EPS_RANGE, cx);
            let bytes = b.size("bytes", EVENT_BYTES_RANGE, cx);
            for k in ["eps", "bytes"] {
                if b.get(k).is_none() {
                    b.missing(k, cx);
                }
            }
            crate::size::ring_bytes(eps?, bytes?, *retention)
        }
        (None, false) => {
            b.missing("size", cx);
            return None;
        }
    };
    let need = (4 * record_stride(max_record as u64)).max(MIN_CAPACITY);
    if capacity < need {
        cx.err(
            b.span.clone(),
            format!(
                "{asked} ({capacity} bytes) is too small: the minimum is {need} bytes ({}: 1 MiB, and room for 4 records of max_record_bytes = {max_record}); raise the buffer or lower max_record_bytes",
                crate::ring::human_bytes(need)
            ),
        );
        return None;
    }
    Some(capacity)
}

fn input_config(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<InputConfig> {
    let common = [
        "kind",
        "listen",
        "max_connections",
        "max_connections_per_source",
        "idle_timeout",
    ];
    let tls_keys = ["cert", "key", "client_ca", "handshake_timeout"];
    let http_keys = [
        "path",
        "auth_header",
        "secret",
        "max_body_bytes",
        "max_decoded_bytes",
        "request_timeout",
        "header_timeout",
    ];
    let kind = match t.req_str("kind", "\"tcp\", \"tls\" or \"http\"", cx) {
        Some(("tcp", _)) => {
            t.check_keys(&common, cx);
            Some(InputKind::Tcp)
        }
        Some(("http", _)) => {
            t.check_keys(&[&common[..], &http_keys[..], &tls_keys[..]].concat(), cx);
            Some(InputKind::Http)
        }
        Some(("tls", _)) => {
            t.check_keys(&[&common[..], &tls_keys[..]].concat(), cx);
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
    };
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

fn output_config(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<OutputConfig> {
    let (kind, kind_span) = t.req_str("kind", "\"tcp\", \"tls\", \"file\" or \"http\"", cx)?;
    let common = [
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
    let framing_choices = [
        ("newline", OutFraming::Newline),
        ("octet", OutFraming::Octet),
    ];
    let name = t
        .req_str("name", "an output name", cx)
        .and_then(|(s, span)| {
            if valid_name(s) {
                Some(s.to_string())
            } else {
                cx.err(
                    span,
                    format!("output name {s:?}: use 1 to 32 characters of a-z, 0-9, '-' and '_'"),
                );
                None
            }
        });
    let framing = t.choice("framing", &framing_choices, cx);
    let syslog = syslog_config(t, cx);
    let (kind, default_replay) = match kind {
        "tcp" => {
            t.check_keys(&[&common[..], &["address"]].concat(), cx);
            let address = host_port(t, cx);
            let framing = framing.unwrap_or(OutFraming::Newline);
            (
                address.map(|address| OutputKind::Tcp(TcpOutput { address, framing })),
                Duration::from_secs(900),
            )
        }
        "tls" => {
            t.check_keys(
                &[
                    &common[..],
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
            (
                address.and_then(|address| tls_output(t, address, framing, cx)),
                Duration::from_secs(900),
            )
        }
        "file" => {
            t.check_keys(
                &[&common[..], &["path", "rotate_bytes", "rotate_keep"]].concat(),
                cx,
            );
            let path = t
                .req_str("path", "a file path", cx)
                .map(|(s, _)| cx.resolve(s));
            let rotate_bytes = t.size("rotate_bytes", 0..=u64::MAX, cx).unwrap_or(1 << 30);
            let rotate_keep = t.count("rotate_keep", 1..=1000, cx).unwrap_or(5) as u32;
            let framing = framing.unwrap_or(OutFraming::Newline);
            let kind = path.map(|path| {
                OutputKind::File(FileOutput {
                    path,
                    rotate_bytes,
                    rotate_keep,
                    framing,
                })
            });
            (kind, Duration::ZERO)
        }
        "http" => {
            // No framing and no syslog header: records go into request bodies as they are.
            let common_http = [
                "name",
                "kind",
                "replay",
                "rate_limit_eps",
                "alert_after",
                "settle",
            ];
            t.check_keys(&[&common_http[..], HTTP_KEYS].concat(), cx);
            (
                http_output(t, cx).map(|h| OutputKind::Http(Box::new(h))),
                Duration::ZERO,
            )
        }
        k => {
            cx.err(
                kind_span,
                format!("output kind {k:?} is unknown (supported: tcp, tls, file, http)"),
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

/// Keys of an http output besides the common ones.
const HTTP_KEYS: &[&str] = &[
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
fn is_guid(s: &str) -> bool {
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

fn http_output(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<HttpOutput> {
    let url = t
        .req_str(
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
        });
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
    let request_timeout = match t.duration("request_timeout", cx) {
        Some(d) if d.is_zero() => {
            let span = t
                .get("request_timeout")
                .map_or(t.span.clone(), Spanned::span);
            cx.err(span, "request_timeout must be more than 0");
            None
        }
        Some(d) => Some(d),
        None => Some(Duration::from_secs(30)),
    };
    let ack = t.bool("ack", cx).unwrap_or(false);
    let ack_timeout = t
        .duration("ack_timeout", cx)
        .unwrap_or(Duration::from_secs(300));
    let ack_poll = t
        .duration("ack_poll", cx)
        .unwrap_or(Duration::from_secs(10));
    let channel = t.str("channel", "a GUID", cx).map(|(s, span)| {
        if is_guid(s) {
            s.to_string()
        } else {
            cx.err(
                span,
                format!("channel = {s:?}: expected a GUID like \"0d1c2b3a-....\""),
            );
            String::new()
        }
    });
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
    let mut headers: Vec<(String, String)> = Vec::new();
    let preset_span = t.get("preset").map_or(t.span.clone(), Spanned::span);
    let refuse = |key: &str, v: &Option<(&str, Range<usize>)>, cx: &mut Ctx<'_>| {
        if let Some((_, span)) = v.clone() {
            cx.err(
                span,
                format!("{key} is not used by preset {:?}", preset.name()),
            );
        }
    };
    let (url, url_span) = url?;
    let mut path = url.path.clone();
    let mut body = body_choice.unwrap_or(BodyFormat::Ndjson);
    match preset {
        Preset::SplunkHec => {
            refuse("secret", &secret, cx);
            refuse("auth_header", &auth_header, cx);
            match token {
                Some((tok, _)) => headers.push(("Authorization".into(), format!("Splunk {tok}"))),
                None => cx.err(
                    preset_span.clone(),
                    "preset \"splunk_hec\" needs token (the HEC token)",
                ),
            }
            if path == "/" {
                path = "/services/collector/raw".into();
            }
            let endpoint = path.split('?').next().unwrap_or("");
            if endpoint == "/services/collector/event"
                || endpoint == "/services/collector"
                || endpoint == "/services/collector/event/1.0"
            {
                if let Some((_, span)) = t.str("body", "", cx).filter(|_| body_choice.is_some()) {
                    cx.err(span, "body: the HEC /event endpoint takes {\"event\": ...} envelopes, which the output builds itself; remove body");
                }
                body = BodyFormat::HecEvent;
            } else if !endpoint.starts_with("/services/collector/raw") {
                cx.err(url_span.clone(), format!("url: preset \"splunk_hec\" posts to /services/collector/raw or /services/collector/event, not {endpoint:?}"));
            }
        }
        Preset::Panther => {
            refuse("token", &token, cx);
            match secret {
                Some((sec, _)) => {
                    let name = auth_header.map_or("x-panther-zscaler", |(n, _)| n);
                    headers.push((name.to_string(), sec.to_string()));
                }
                None => cx.err(
                    preset_span.clone(),
                    "preset \"panther\" needs secret (the HTTP source's shared secret)",
                ),
            }
        }
        Preset::Sekoia => {
            refuse("secret", &secret, cx);
            refuse("auth_header", &auth_header, cx);
            match token {
                Some((tok, _)) => headers.push(("X-SEKOIAIO-INTAKE-KEY".into(), tok.to_string())),
                None => cx.err(
                    preset_span.clone(),
                    "preset \"sekoia\" needs token (the intake key)",
                ),
            }
            if path == "/" {
                path = "/plain/batch".into();
            }
            if body == BodyFormat::JsonArray {
                let span = t.get("body").map_or(t.span.clone(), Spanned::span);
                cx.err(span, "preset \"sekoia\" posts to /plain/batch, which takes LF-separated events: use body = \"ndjson\"");
            }
        }
        Preset::Generic => {
            refuse("token", &token, cx);
            match (secret, auth_header) {
                (Some((sec, _)), Some((name, _))) => {
                    headers.push((name.to_string(), sec.to_string()))
                }
                (None, None) => {}
                (Some((_, span)), None) | (None, Some((_, span))) => {
                    cx.err(
                        span,
                        "secret and auth_header go together (the header that carries the secret)",
                    );
                }
            }
        }
    }
    if ack && preset != Preset::SplunkHec {
        let span = t.get("ack").map_or(t.span.clone(), Spanned::span);
        cx.err(
            span,
            "ack = true is Splunk HEC indexer acknowledgement: only with preset = \"splunk_hec\"",
        );
    }
    if let Some(v) = t.get("headers") {
        if let Some(h) = Tbl::new(v, "headers".into(), cx) {
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
    }
    let tls = match url.https {
        true => Some(tls_client(t, &url.host, "url", cx)?),
        false => {
            for k in [
                "ca",
                "client_cert",
                "client_key",
                "server_name",
                "insecure_skip_verify",
            ] {
                if let Some(v) = t.get(k) {
                    cx.err(
                        v.span(),
                        format!("{k} is for https:// URLs; this url is http://"),
                    );
                }
            }
            None
        }
    };
    Some(HttpOutput {
        tls,
        host: url.host,
        port: url.port,
        path,
        preset,
        headers,
        body,
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

fn tls_input(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<TlsInput> {
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

/// The client TLS keys of an output (`ca`, `client_cert`, `client_key`, `server_name`,
/// `insecure_skip_verify`), checked by loading them; `host` (from the key `host_key`) is the
/// default server name.
fn tls_client(t: &Tbl<'_, '_>, host: &str, host_key: &str, cx: &mut Ctx<'_>) -> Option<TlsClient> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[relay]
data_dir = "/var/lib/ringrelay"

[[feed]]
name = "zia-web"
input = { kind = "tcp", listen = "0.0.0.0:9514", max_connections = 64 }
framing = "newline"
buffer = { size = "1GiB" }
when_full = "block"

[[feed.output]]
name = "siem"
kind = "tcp"
address = "siem.example.net:514"
framing = "octet"

[[feed]]
name = "zpa"
input = { kind = "tcp", listen = "0.0.0.0:9515", idle_timeout = "0" }
buffer = { retention = "1h", eps = 1000, bytes = 1500 }
sync = "always"

[[feed.output]]
name = "archive"
kind = "file"
path = "out/zpa.log"
"#;

    fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
        Config::parse(text, Path::new("/etc/ringrelay/test.toml"))
    }

    #[test]
    fn a_full_config_parses_with_defaults_filled_in() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(
            c.relay.lock_file,
            PathBuf::from("/var/lib/ringrelay/ringrelay.lock")
        );
        assert_eq!(
            c.relay.admin_listen,
            Some("127.0.0.1:9600".parse().unwrap())
        );
        let [web, zpa] = &c.feeds[..] else {
            panic!("two feeds")
        };
        assert_eq!(web.capacity, 1 << 30);
        assert_eq!(web.when_full, WhenFull::Block);
        assert_eq!(web.input.max_connections, 64);
        assert_eq!(web.input.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(web.outputs[0].replay, Duration::from_secs(900));
        assert!(
            matches!(&web.outputs[0].kind, OutputKind::Tcp(t) if t.framing == OutFraming::Octet)
        );
        assert_eq!(
            zpa.capacity,
            crate::size::ring_bytes(1000, 1500, Duration::from_secs(3600))
        );
        assert_eq!(zpa.sync, SyncPolicy::Always);
        assert_eq!(zpa.input.idle_timeout, None);
        assert_eq!(zpa.framing, Framing::Auto);
        assert!(
            matches!(&zpa.outputs[0].kind, OutputKind::File(f) if f.path == Path::new("/etc/ringrelay/out/zpa.log"))
        );
        assert_eq!(zpa.outputs[0].replay, Duration::ZERO);
    }

    #[test]
    fn the_per_source_limit_defaults_below_max_connections_and_is_checked_against_it() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.feeds[0].input.max_connections_per_source, 64);
        let text = GOOD.replace(
            "max_connections = 64",
            "max_connections = 16, max_connections_per_source = 0",
        );
        assert_eq!(
            parse(&text).expect("valid").feeds[0]
                .input
                .max_connections_per_source,
            0
        );
        let text = GOOD.replace(
            "max_connections = 64",
            "max_connections = 16, max_connections_per_source = 17",
        );
        let msgs: Vec<String> = parse(&text)
            .expect_err("over max_connections")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(msgs.len(), 1, "{msgs:?}");
        assert!(
            msgs[0].contains("max_connections_per_source = 17 is more than max_connections = 16"),
            "{msgs:?}"
        );
    }

    #[test]
    fn every_error_is_reported_with_its_line_and_column() {
        let text = GOOD
            .replace("framing = \"newline\"", "framing = \"lines\"")
            .replace("max_connections = 64", "max_connections = 0")
            .replace(
                "address = \"siem.example.net:514\"",
                "address = \"siem.example.net\"\ncolour = 1",
            );
        let errs = parse(&text).expect_err("invalid");
        let msgs: Vec<String> = errs.iter().map(ToString::to_string).collect();
        assert_eq!(errs.len(), 4, "{msgs:#?}");
        assert!(
            msgs[0].starts_with("/etc/ringrelay/test.toml:7:"),
            "{msgs:?}"
        );
        assert!(msgs[0].contains("max_connections = 0 is out of range"));
        assert!(
            msgs[1].starts_with("/etc/ringrelay/test.toml:8:11: framing = \"lines\""),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.contains("unknown key \"colour\"")));
        assert!(msgs.iter().any(|m| m.contains("expected \"host:port\"")));
    }

    #[test]
    fn syntax_errors_come_with_a_position() {
        let errs = parse("[relay]\ndata_dir = \"/x\n").expect_err("bad syntax");
        let syntax = errs
            .iter()
            .find(|e| e.msg.starts_with("TOML syntax"))
            .expect("a syntax error");
        assert_eq!((syntax.line, syntax.col), (2, 15), "{errs:?}");
    }

    #[test]
    fn duplicates_and_unsupported_kinds_are_named() {
        let text = GOOD
            .replace("name = \"zpa\"", "name = \"zia-web\"")
            .replace("0.0.0.0:9515", "0.0.0.0:9514")
            .replace("kind = \"file\"", "kind = \"kafka\"");
        let msgs: Vec<String> = parse(&text)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            msgs.iter().any(|m| m.contains("is used twice")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m.contains("another feed already uses")),
            "{msgs:#?}"
        );
        assert!(
            msgs.iter().any(|m| m
                .contains("output kind \"kafka\" is unknown (supported: tcp, tls, file, http)")),
            "{msgs:#?}"
        );
    }

    #[test]
    fn syslog_keys_take_names_or_numbers_and_bad_ones_are_pointed_at() {
        let text = GOOD.replace(
            "framing = \"octet\"",
            "framing = \"octet\"\nsyslog = \"rfc5424\"\nsyslog_sd = true\nfacility = \"local4\"\nseverity = 5\napp_name = \"zia\"",
        );
        let c = parse(&text).expect("valid");
        let s = &c.feeds[0].outputs[0].syslog;
        assert_eq!(
            (s.format, s.facility, s.severity, s.sd, s.app_name.as_str()),
            (Format::Rfc5424, 20, 5, true, "zia")
        );
        assert_eq!(s.hostname, None);
        assert_eq!(c.feeds[1].outputs[0].syslog, SyslogConfig::default());
        let bad = GOOD.replace(
            "framing = \"octet\"",
            "syslog = \"rfc3164\"\nsyslog_sd = true\nfacility = \"local9\"\nseverity = 8\napp_name = \"a b\"",
        );
        let msgs: Vec<String> = parse(&bad)
            .expect_err("invalid")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(msgs.len(), 4, "{msgs:#?}");
        assert!(msgs.iter().any(|m| m.contains(":17:13: syslog_sd needs")));
        assert!(msgs.iter().any(|m| m.contains(":18:12: facility")));
        assert!(msgs.iter().any(|m| m.contains(":19:12: severity")));
        assert!(msgs.iter().any(|m| m.contains(":20:12: app_name")));
    }

    #[test]
    fn a_buffer_too_small_for_the_record_limit_says_both_numbers() {
        let text = GOOD.replace("size = \"1GiB\"", "size = \"1MiB\"");
        let errs = parse(&text).expect_err("too small");
        assert!(
            errs[0].msg.contains("buffer size 1048576")
                && errs[0].msg.contains("the minimum is 4194496 bytes"),
            "{errs:?}"
        );
    }

    #[test]
    fn alert_settings_default_and_alert_feed_must_name_a_feed() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.relay.alert_feed, None);
        assert_eq!(
            c.feeds[0].outputs[0].alert_after,
            Some(Duration::from_secs(300))
        );
        let text = GOOD
            .replace("data_dir = ", "alert_feed = \"zpa\"\ndata_dir = ")
            .replace(
                "framing = \"octet\"",
                "framing = \"octet\"\nalert_after = \"0\"",
            );
        let c = parse(&text).unwrap();
        assert_eq!(c.relay.alert_feed.as_deref(), Some("zpa"));
        assert_eq!(c.feeds[0].outputs[0].alert_after, None);
        let errs =
            parse(&GOOD.replace("data_dir = ", "alert_feed = \"nope\"\ndata_dir = ")).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!((errs[0].line, errs[0].col), (3, 14));
        assert!(errs[0]
            .msg
            .contains("\"nope\" names no feed (feeds: zia-web, zpa)"));
    }

    fn http_output_of(extra: &str) -> Result<Config, Vec<ConfigError>> {
        let text = GOOD.replace(
            "[[feed.output]]\nname = \"archive\"",
            &format!("[[feed.output]]\nname = \"hec\"\nkind = \"http\"\n{extra}\n\n[[feed.output]]\nname = \"archive\""),
        );
        parse(&text)
    }

    #[test]
    fn http_outputs_take_their_preset_defaults() {
        let c = http_output_of(
            "preset = \"splunk_hec\"\nurl = \"http://splunk:8088\"\ntoken = \"T\"\nack = true",
        )
        .unwrap();
        let o = &c.feeds[1].outputs[0];
        assert_eq!(o.replay, Duration::ZERO);
        let OutputKind::Http(h) = &o.kind else {
            panic!("http")
        };
        assert_eq!((h.host.as_str(), h.port), ("splunk", 8088));
        assert_eq!(h.path, "/services/collector/raw");
        assert_eq!(h.body, BodyFormat::Ndjson);
        assert_eq!(h.max_batch_bytes, 512 << 10);
        assert_eq!(h.max_batch_age, Duration::from_secs(1));
        assert_eq!(h.ack_poll, Duration::from_secs(10));
        assert_eq!(h.ack_timeout, Duration::from_secs(300));
        assert!(h.ack);
        assert_eq!(
            h.headers,
            [("Authorization".to_string(), "Splunk T".to_string())]
        );
        assert_eq!(h.channel, default_channel("ringrelay", "zpa", "hec"));
        assert!(is_guid(&h.channel), "{}", h.channel);
        assert_ne!(h.channel, default_channel("ringrelay", "zpa", "hec2"));

        let c = http_output_of("preset = \"splunk_hec\"\nurl = \"http://s/services/collector/event?index=x\"\ntoken = \"T\"").unwrap();
        let OutputKind::Http(h) = &c.feeds[1].outputs[0].kind else {
            panic!("http")
        };
        assert_eq!(h.body, BodyFormat::HecEvent);
        assert_eq!(
            (h.port, h.path.as_str()),
            (80, "/services/collector/event?index=x")
        );

        let c = http_output_of("preset = \"sekoia\"\nurl = \"http://intake\"\ntoken = \"K\"\nheaders = { \"X-Foo\" = \"bar\" }").unwrap();
        let OutputKind::Http(h) = &c.feeds[1].outputs[0].kind else {
            panic!("http")
        };
        assert_eq!(h.path, "/plain/batch");
        assert_eq!(
            h.headers,
            [
                ("X-SEKOIAIO-INTAKE-KEY".to_string(), "K".to_string()),
                ("X-Foo".to_string(), "bar".to_string())
            ]
        );
        let c = http_output_of("preset = \"panther\"\nurl = \"http://p/in\"\nsecret = \"S\"\nbody = \"json_array\"\ngzip = true").unwrap();
        let OutputKind::Http(h) = &c.feeds[1].outputs[0].kind else {
            panic!("http")
        };
        assert_eq!(
            h.headers,
            [("x-panther-zscaler".to_string(), "S".to_string())]
        );
        assert_eq!((h.body, h.gzip), (BodyFormat::JsonArray, true));
    }

    #[test]
    fn http_output_mistakes_are_named_with_their_position() {
        let msgs = |extra: &str| -> Vec<String> {
            http_output_of(extra)
                .expect_err("invalid")
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let m = msgs("url = \"http://splunk:8088\"\npreset = \"splunk_hec\"\ntoken = \"T\"\nca = \"/ca.pem\"");
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].contains(":30:6: ca is for https:// URLs; this url is http://"),
            "{m:?}"
        );
        let m = msgs("url = \"http://splunk\"\npreset = \"splunk_hec\"\nchannel = \"abc\"");
        assert!(m.iter().any(|e| e.contains("needs token")), "{m:?}");
        assert!(
            m.iter()
                .any(|e| e.contains("channel = \"abc\": expected a GUID")),
            "{m:?}"
        );
        let m = msgs(
            "url = \"http://x:0/\"\nack = true\nheaders = { Host = \"y\" }\nframing = \"octet\"",
        );
        assert!(
            m.iter().any(|e| e.contains("port must be 1 to 65535")),
            "{m:?}"
        );
        let m = msgs(
            "url = \"http://x/\"\nack = true\nheaders = { Host = \"y\" }\nframing = \"octet\"",
        );
        assert!(
            m.iter()
                .any(|e| e.contains("only with preset = \"splunk_hec\"")),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|e| e.contains("Host is set by the output itself")),
            "{m:?}"
        );
        assert!(
            m.iter().any(|e| e.contains("unknown key \"framing\"")),
            "{m:?}"
        );
    }

    #[test]
    fn http_urls_parse_minimally() {
        let u = parse_http_url("http://[::1]:9000/a/b?c=d").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/a/b?c=d")
        );
        let u = parse_http_url("http://h?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("h", 80, "/?x=1")
        );
        let u = parse_http_url("https://splunk.example.net/services/collector").unwrap();
        assert_eq!((u.port, u.https), (443, true));
        assert!(!parse_http_url("http://h/").unwrap().https);
        assert!(parse_http_url("ftp://h/").is_err());
        assert!(parse_http_url("http://u:p@h/").is_err());
        assert!(parse_http_url("http:///x").is_err());
        assert!(parse_http_url("http://h/a b").is_err());
    }

    #[test]
    fn sizes_and_durations_parse_and_reject() {
        assert_eq!(parse_size("8GiB"), Ok(8 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("8 gigs").is_err());
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn the_example_configs_are_valid() {
        for f in ["quickstart.toml", "production.toml"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("examples")
                .join(f);
            if let Err(errs) = Config::load(&p) {
                panic!("{f}: {errs:#?}");
            }
        }
    }
}
