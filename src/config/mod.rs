//! Configuration: TOML as written ([`toml::de::DeTable`], every value with its byte span) →
//! a validated [`Config`], ready to use. Every problem is reported at once, each with the file,
//! line and column of the key or value at fault, so `ringrelay check` lists them all.
//!
//! Relative paths are resolved against the directory of the configuration file.
//!
//! One file per part of the file: `relay.rs` (`[relay]`), `feed.rs` (`[[feed]]` and its
//! `buffer`), `input.rs` (a feed's `input`), `output.rs` (`[[feed.output]]` of kind `tcp`,
//! `tls` and `file`, and the syslog header), `http_output.rs` (kind `http`: URL, presets,
//! headers), `tls.rs` (TLS keys of inputs and outputs, checked by loading the files),
//! `names.rs` (the instance, feed and output names, which end up in JSON, labels, file names
//! and the lock file), `units.rs` (sizes, counts and durations as written) and `table.rs`
//! (reading a TOML table and collecting errors with their positions: the one place that knows
//! TOML's value types).

mod feed;
mod http_output;
mod input;
mod kafka_output;
mod names;
mod output;
mod relay;
mod table;
mod tls;
mod units;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use feed::{FeedConfig, Framing, Oversize};
pub use http_output::{default_channel, parse_http_url, BodyFormat, HttpOutput, HttpUrl, Preset};
pub use input::{HttpInputConfig, InputConfig, InputKind};
pub use kafka_output::{
    KafkaCompression, KafkaKey, KafkaOutput, Sasl, SaslMechanism,
    MAX_BATCH_BYTES as KAFKA_MAX_BATCH_BYTES,
};
pub use names::{FEED_NAME_MAX, NAME_MAX, OUTPUT_NAME_MAX};
pub use output::{
    FileOutput, Format, OutFraming, OutputConfig, OutputKind, SyslogConfig, TcpOutput, TlsOutput,
    APP_NAME_MAX, FACILITIES, SEVERITIES,
};
pub use relay::{RelayConfig, SyncPolicy, DEFAULT_NFS_LEASE, MAX_LEASE, MIN_LEASE};
pub use tls::{TlsClient, TlsInput};
pub use units::{parse_count, parse_duration, parse_size};

use feed::feed_config;
use relay::relay_config;
use table::{named, Ctx, Tbl, Value};

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
/// Outputs a feed may have: a constant of the design (each has its cursor in the ring's
/// metadata, and the feed holds them in a fixed-capacity vector).
pub const MAX_OUTPUTS: usize = 8;

impl Config {
    /// [`Config::load`] for a command that only reports: each error on stderr, one line each,
    /// then their count; `None` when there were any.
    pub fn load_or_report(path: &Path) -> Option<Config> {
        match Config::load(path) {
            Ok(cfg) => Some(cfg),
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                eprintln!("{}: {} error(s)", path.display(), errors.len());
                None
            }
        }
    }

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

/// `[relay]` and `[[feed]]`, then what needs both: the alert feed must exist, and an HTTP
/// output's default HEC channel is derived from the instance, feed and output names.
fn build(root: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<Config> {
    root.check_keys(&["relay", "feed"], cx);
    let relay_v = root.get("relay");
    if relay_v.is_none() {
        root.missing("relay", cx);
    }
    let relay = relay_v
        .and_then(|v| Tbl::new(v, "[relay]".into(), cx))
        .and_then(|t| relay_config(&t, cx));
    let default_sync = relay
        .as_ref()
        .map_or(SyncPolicy::Interval(Duration::from_secs(1)), |r| r.sync);
    let (mut feeds, all_parsed) = feeds(root, default_sync, cx);
    // Checked only when every feed parsed: a broken feed's name is unknown.
    if let Some(r) = relay.as_ref().filter(|_| all_parsed) {
        check_alert_feed(relay_v, r, &feeds, cx);
    }
    let relay = relay?;
    for feed in &mut feeds {
        for out in &mut feed.outputs {
            match &mut out.kind {
                OutputKind::Http(h) if h.channel.is_empty() => {
                    h.channel = default_channel(&relay.instance, &feed.name, &out.name);
                }
                OutputKind::Kafka(k) if k.client_id.is_empty() => {
                    k.client_id = format!("ringrelay-{}", relay.instance);
                }
                _ => {}
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

/// Every `[[feed]]` that parsed, and whether all did. Across feeds, names, listen addresses
/// and output files must differ.
fn feeds(
    root: &Tbl<'_, '_>,
    default_sync: SyncPolicy,
    cx: &mut Ctx<'_>,
) -> (Vec<FeedConfig>, bool) {
    let feeds_v = root.tables("feed", cx);
    if feeds_v.is_empty() {
        cx.err(
            root.span.start..root.span.start,
            "no feeds: add at least one [[feed]]",
        );
    }
    if feeds_v.len() > MAX_FEEDS {
        cx.err(
            feeds_v[MAX_FEEDS].span(),
            format!(
                "{} feeds configured; at most {MAX_FEEDS} are supported",
                feeds_v.len()
            ),
        );
    }
    let mut feeds: Vec<FeedConfig> = Vec::new();
    let mut seen_files: Vec<PathBuf> = Vec::new();
    for (i, fv) in feeds_v.iter().enumerate() {
        let Some(t) = Tbl::new(fv, named("feed", fv, i), cx) else {
            continue;
        };
        let Some(feed) = feed_config(&t, default_sync, cx) else {
            continue;
        };
        if feeds.iter().any(|f| f.name == feed.name) {
            let span = t.get("name").map_or(t.span.clone(), Spanned::span);
            cx.err(span, format!("feed name {:?} is used twice; each feed needs its own name (it names the ring file)", feed.name));
        }
        let listen = feed.input.listen;
        if feeds.iter().any(|f| f.input.listen == listen) && listen.port() != 0 {
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
        feeds.push(feed);
    }
    let all_parsed = feeds.len() == feeds_v.len();
    (feeds, all_parsed)
}

/// `alert_feed` must name one of `feeds`.
fn check_alert_feed(
    relay_v: Option<&Value<'_>>,
    relay: &RelayConfig,
    feeds: &[FeedConfig],
    cx: &mut Ctx<'_>,
) {
    let Some(name) = relay
        .alert_feed
        .as_ref()
        .filter(|n| !feeds.iter().any(|f| &&f.name == n))
    else {
        return;
    };
    let span = relay_v
        .and_then(|v| Tbl::new(v, "[relay]".into(), cx))
        .and_then(|t| t.get("alert_feed").map(Spanned::span))
        .unwrap_or(0..0);
    let names: Vec<&str> = feeds.iter().map(|f| f.name.as_str()).collect();
    cx.err(
        span,
        format!(
            "alert_feed = {name:?} names no feed (feeds: {})",
            names.join(", ")
        ),
    );
}
