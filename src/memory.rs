//! The relay's own memory for a configuration: every heap buffer it holds, by line, sized from
//! the configuration at start (issue 17, "bounded by construction").
//!
//! # The formula
//! ```text
//! total = relay + Σ feeds ( feed + max_connections × connection + Σ outputs output )
//! ```
//! - **relay**, once: the scratch buffer of the inputs (`max(max_record_bytes)` + 64 +
//!   256 KiB: a partial record, one read and a frame header's slack), the connection table
//!   (a slot per connection of every feed, grown by doubling), the admin endpoint
//!   (16 connections × (request + response) + the response being rendered), the largest
//!   one-at-a-time work buffer (a gzip compressor for an HTTP output with `gzip`; a gzip
//!   decompressor and `max_decoded_bytes` for an HTTP input), and the [`RUNTIME`] allowance
//!   (the parsed configuration, the event loop, the log writer).
//! - **feed**: its state ([`FEED_STATE`]) and, for a TLS input, its rustls configuration (the
//!   certificate, key and client CA files twice over, for PEM and parsed forms, and rustls's
//!   TLS 1.2 session cache, [`TLS_SESSION_CACHE`]).
//! - **connection** (allocated at accept, never grown): its partial record (`max_record_bytes` +
//!   16; under `when_full = "block"` also one read that the full ring refused, 256 KiB; an HTTP
//!   connection: the head limit + `max_body_bytes` + one read of 64 KiB), its state, and for
//!   TLS the rustls session ([`rustls_session`]).
//! - **output**: its state; the syslog and octet-count prefixes of one write pass (256 frames ×
//!   (20 + 768) bytes) when it adds any; a TLS output's plaintext buffer (64 KiB) and rustls
//!   session; an HTTP output's request head (computed from its headers), batch body
//!   (`max_batch_bytes`, or one record's worst encoding when that is more), gzipped body,
//!   response reader (16 KiB head + 16 KiB read, 64 KiB body) and its acknowledgement queue.
//!
//! Each line is a bound on bytes allocated, not on bytes resident: a buffer allocated to its
//! bound costs resident memory only where the relay writes into it (an idle connection's
//! 1 MiB partial-record buffer is address space, not RAM). The resident anonymous memory of the
//! process (`RssAnon`) is at most the total plus the code's writable data, the stack and the
//! allocator's own overhead: [`PROCESS_ALLOWANCE`].
//!
//! The rustls numbers are 0.23's own limits: a received TLS message is joined in a buffer of
//! at most 64 KiB (handshake messages; 18 KiB for records), decrypted plaintext waits in a
//! buffer limited to 16 KiB (plus what one read decrypts), and the TLS bytes queued for sending
//! are limited by `set_buffer_limit` ([`crate::tls::BUFFER_LIMIT`], 64 KiB) plus one record's
//! overhead; the handshake's own state (key schedule, transcript, peer certificates) is
//! [`RUSTLS_STATE`].
//!
//! `tests/alloc_count.rs` holds the formula: it runs the relay in-process with a counting
//! allocator and checks that the live heap's high-water mark stays under the total (and is not
//! far below it); `tests/rss.rs` checks the binary's `RssAnon` against the total plus
//! [`PROCESS_ALLOWANCE`].

use std::fmt;
use std::path::Path;

use crate::config::{Config, FeedConfig, InputKind, OutputConfig, OutputKind};

/// The event loop, the parsed configuration, the log writer, the signal and lock state: what
/// the relay holds whatever its feeds. An allowance, not a sum of buffers: `tests/alloc_count.rs`
/// holds it together with every other line (the high-water mark there leaves about 0.9 MiB of a
/// 4.1 MiB total unused, most of it in these allowances and the rustls lines).
pub const RUNTIME: u64 = 192 << 10;
/// A feed's own state beside its buffers: the ring's bookkeeping, its input side, its
/// configuration and names (an allowance, held by the same test).
pub const FEED_STATE: u64 = 16 << 10;
/// An output's own state beside its buffers: the `Output`, its link, names, address, syslog
/// header, alerts waiting to be taken.
pub const OUTPUT_STATE: u64 = 8 << 10;
/// rustls's TLS 1.2 session cache of a TLS input: 256 sessions (its default) of a few hundred
/// bytes each (a mutual-TLS session also keeps the client's certificate: its size is counted
/// with the input's files).
pub const TLS_SESSION_CACHE: u64 = 128 << 10;
/// A rustls session's own state beside its buffers: handshake state, key schedule, transcript,
/// the peer's certificates while they are verified.
pub const RUSTLS_STATE: u64 = 24 << 10;
/// rustls joins a received TLS message in one buffer: at most 64 KiB (a handshake message;
/// records are at most 18 KiB), grown by doubling from 4 KiB reads.
pub const RUSTLS_RECEIVE: u64 = 64 << 10;
/// Decrypted plaintext waiting to be read: rustls stops reading at 16 KiB; one read of up to
/// 18 KiB of records decrypts on top of that.
pub const RUSTLS_PLAINTEXT: u64 = 36 << 10;
/// TLS bytes a session may queue for sending: [`crate::tls::BUFFER_LIMIT`] of records, the
/// overhead of the records that carry it (4 records of 16 KiB, 22 bytes each) and the queue's
/// own slots.
pub const RUSTLS_SEND: u64 = crate::tls::BUFFER_LIMIT as u64 + (1 << 10);
/// A gzip compressor's state (flate2's rust backend, `Compression::fast`: miniz_oxide's
/// dictionary, hash chains and code buffers, 344 KiB measured), allocated per batch.
pub const GZIP_STATE: u64 = 384 << 10;
/// A gzip decompressor's state (flate2's `MultiGzDecoder`: miniz_oxide's 32 KiB window and
/// tables and a 32 KiB read buffer, 75 KiB measured), allocated per request.
pub const GUNZIP_STATE: u64 = 96 << 10;
/// What the process holds beside the heap the formula counts, in `RssAnon`: the stack, the
/// code's writable data and relocations, the C library's and the allocator's own overhead
/// (measured with the debug binary relaying TCP to TCP, from `/proc/PID/smaps`: 324 KiB of
/// the binary's relocated data, 288 KiB of stack, about 60 KiB of the C library's; the release
/// binary has less of both).
pub const PROCESS_ALLOWANCE: u64 = 1 << 20;

/// `/metrics` text, at most: the families' headers and the relay's samples.
pub const METRICS_FIXED: u64 = 24 << 10;
/// `/metrics` text per feed (about 40 samples labelled with a name of up to 32 characters).
pub const METRICS_PER_FEED: u64 = 8 << 10;
/// `/metrics` text per output (about 40 samples with two names).
pub const METRICS_PER_OUTPUT: u64 = 8 << 10;

/// One line of a budget: what, and its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// What the bytes are for.
    pub what: &'static str,
    /// Bytes, at most.
    pub bytes: u64,
}

fn line(what: &'static str, bytes: usize) -> Line {
    Line {
        what,
        bytes: bytes as u64,
    }
}

fn sum(lines: &[Line]) -> u64 {
    lines.iter().map(|l| l.bytes).sum()
}

/// One output's lines.
#[derive(Clone, Debug)]
pub struct OutputBudget {
    /// The output's name.
    pub name: String,
    /// Its buffers.
    pub lines: Vec<Line>,
}

impl OutputBudget {
    /// The output's bytes.
    pub fn total(&self) -> u64 {
        sum(&self.lines)
    }
}

/// One feed's lines.
#[derive(Clone, Debug)]
pub struct FeedBudget {
    /// The feed's name.
    pub name: String,
    /// The feed's own lines (once).
    pub feed: Vec<Line>,
    /// One connection's lines.
    pub connection: Vec<Line>,
    /// `max_connections`.
    pub max_connections: u64,
    /// Its outputs.
    pub outputs: Vec<OutputBudget>,
}

impl FeedBudget {
    /// One connection's bytes.
    pub fn per_connection(&self) -> u64 {
        sum(&self.connection)
    }

    /// The feed's bytes: its own, its connections', its outputs'.
    pub fn total(&self) -> u64 {
        sum(&self.feed)
            + self.max_connections * self.per_connection()
            + self.outputs.iter().map(OutputBudget::total).sum::<u64>()
    }
}

/// The relay's own heap for a configuration, by line.
#[derive(Clone, Debug)]
pub struct Budget {
    /// Lines held once per relay.
    pub relay: Vec<Line>,
    /// Per feed.
    pub feeds: Vec<FeedBudget>,
}

impl Budget {
    /// Every line's bytes: the relay's heap at most.
    pub fn total(&self) -> u64 {
        sum(&self.relay) + self.feeds.iter().map(FeedBudget::total).sum::<u64>()
    }
}

/// The budget of `cfg` (files it names, TLS certificates and CA bundles, are looked at for
/// their sizes; a file that cannot be read counts as empty: `check` reports it).
pub fn budget(cfg: &Config) -> Budget {
    let feeds: Vec<FeedBudget> = cfg.feeds.iter().map(feed_budget).collect();
    let max_record = cfg
        .feeds
        .iter()
        .map(|f| f.max_record_bytes)
        .max()
        .unwrap_or(0);
    let connections: usize = cfg.feeds.iter().map(|f| f.input.max_connections).sum();
    let outputs: usize = cfg.feeds.iter().map(|f| f.outputs.len()).sum();
    let mut relay = vec![
        line("runtime (event loop, configuration, log)", RUNTIME as usize),
        line(
            "input scratch buffer",
            crate::input::scratch_bytes(max_record),
        ),
        line(
            "connection table (doubling)",
            2 * connections * (size_of::<Option<crate::input::Conn>>() + 3 * size_of::<usize>()),
        ),
    ];
    if cfg.relay.admin_listen.is_some() {
        relay.push(line(
            "admin endpoint",
            admin_bytes(cfg.feeds.len(), outputs) as usize,
        ));
    }
    let work = cfg
        .feeds
        .iter()
        .map(|f| {
            let gunzip = f
                .input
                .http
                .as_ref()
                .map_or(0, |h| GUNZIP_STATE as usize + h.max_decoded_bytes + 1);
            let gzip = f
                .outputs
                .iter()
                .any(|o| matches!(&o.kind, OutputKind::Http(h) if h.gzip));
            gunzip.max(if gzip { GZIP_STATE as usize } else { 0 })
        })
        .max()
        .unwrap_or(0);
    if work > 0 {
        relay.push(line("gzip work state (one at a time)", work));
    }
    Budget { relay, feeds }
}

fn feed_budget(f: &FeedConfig) -> FeedBudget {
    let mut feed = vec![line("feed state", FEED_STATE as usize)];
    if let Some(t) = f.input.tls() {
        let files = file_len(&t.files.cert)
            + file_len(&t.files.key)
            + t.files.client_ca.as_deref().map_or(0, file_len);
        feed.push(line(
            "TLS input configuration",
            2 * files + TLS_SESSION_CACHE as usize,
        ));
    }
    let mut connection = vec![
        line("partial record", crate::input::pending_bytes(f)),
        line("connection state", size_of::<crate::input::Conn>()),
    ];
    if f.input.kind == InputKind::Http {
        connection.push(line("HTTP request state and response", 1 << 10));
    }
    if let Some(t) = f.input.tls() {
        // The server's first flight carries its certificate chain.
        let send = file_len(&t.files.cert) + (4 << 10);
        connection.push(line(
            "TLS session (rustls)",
            size_of::<rustls::ServerConnection>() + rustls_session(send),
        ));
    }
    FeedBudget {
        name: f.name.clone(),
        feed,
        connection,
        max_connections: f.input.max_connections as u64,
        outputs: f.outputs.iter().map(|o| output_budget(f, o)).collect(),
    }
}

fn output_budget(f: &FeedConfig, o: &OutputConfig) -> OutputBudget {
    let mut lines = vec![line("output state", OUTPUT_STATE as usize)];
    let prefix = crate::output::prefix_bytes(o);
    if prefix > 0 {
        lines.push(line("frame prefixes (syslog, octet count)", prefix));
    }
    let client = |files: &crate::tls::ClientFiles| {
        let ca = match &files.ca {
            Some(p) => file_len(p),
            None => system_ca_len(),
        };
        let cert = files
            .client_cert
            .as_ref()
            .map_or(0, |(c, k)| file_len(c) + file_len(k));
        2 * (ca + cert)
    };
    match &o.kind {
        OutputKind::Tcp(_) | OutputKind::File(_) => {}
        OutputKind::Tls(t) => {
            lines.push(line("TLS configuration", client(&t.files)));
            lines.push(line("TLS plaintext buffer", crate::output::TLS_PLAIN_MAX));
            lines.push(line(
                "TLS session (rustls)",
                size_of::<rustls::ClientConnection>() + rustls_session(RUSTLS_SEND as usize),
            ));
        }
        OutputKind::Http(h) => {
            lines.push(line(
                "HTTP request head",
                crate::output::http::head_bytes(h),
            ));
            let body = crate::output::http::body_bytes(h, f.max_record_bytes);
            lines.push(line("HTTP batch body", body));
            if h.gzip {
                lines.push(line(
                    "HTTP gzipped body",
                    crate::output::http::protocol::gzip_bound(body),
                ));
            }
            lines.push(line(
                "HTTP response reader",
                crate::output::http::response::MAX_RESPONSE_HEAD
                    + crate::output::http::READ_CHUNK
                    + crate::output::http::response::MAX_RESPONSE_BODY,
            ));
            lines.push(line(
                "HTTP acknowledgement queue",
                crate::output::http::acks::MAX_PENDING
                    * size_of::<crate::output::http::acks::Pending>(),
            ));
            if let Some(t) = &h.tls {
                lines.push(line("TLS configuration", client(&t.files)));
                lines.push(line(
                    "TLS session (rustls)",
                    size_of::<rustls::ClientConnection>() + rustls_session(RUSTLS_SEND as usize),
                ));
            }
        }
        OutputKind::Kafka(k) => {
            use crate::output::kafka;
            lines.push(line("Kafka record batch", kafka::batch_bytes(k)));
            lines.push(line("Kafka request", kafka::request_bytes(k)));
            if k.compression == crate::config::KafkaCompression::Gzip {
                // Kept from the first gzip batch on, unlike the HTTP output's per batch.
                lines.push(line("Kafka gzip compressor", GZIP_STATE as usize));
            }
            lines.push(line("Kafka response frame", kafka::response_bytes()));
            // The largest Metadata answer's decoded brokers and partitions, and the producer's
            // sequence table.
            lines.push(line(
                "Kafka cluster state",
                kafka::cluster::MAX_NODES * 96 + kafka::cluster::MAX_PARTITIONS * 12,
            ));
            if let Some(t) = &k.tls {
                lines.push(line("TLS configuration", client(&t.files)));
                lines.push(line(
                    "TLS session (rustls)",
                    size_of::<rustls::ClientConnection>() + rustls_session(RUSTLS_SEND as usize),
                ));
            }
        }
    }
    OutputBudget {
        name: o.name.clone(),
        lines,
    }
}

/// A rustls session's buffers that queue up to `send` bytes for sending: the joined received
/// message, the plaintext waiting to be read, the send queue and the handshake state.
pub fn rustls_session(send: usize) -> usize {
    (RUSTLS_RECEIVE + RUSTLS_PLAINTEXT + RUSTLS_STATE) as usize + send
}

/// The admin endpoint: [`crate::admin::MAX_CONNS`] connections, each with a request (grown by
/// doubling to at most twice its limit) and a response, and the `/metrics` text being rendered
/// (a `String` grown by doubling) beside its response.
pub fn admin_bytes(feeds: usize, outputs: usize) -> u64 {
    let metrics =
        METRICS_FIXED + feeds as u64 * METRICS_PER_FEED + outputs as u64 * METRICS_PER_OUTPUT;
    let response = metrics + 256;
    crate::admin::MAX_CONNS as u64 * (2 * crate::admin::MAX_REQUEST as u64 + response) + 2 * metrics
}

fn file_len(p: &Path) -> usize {
    std::fs::metadata(p).map_or(0, |m| m.len() as usize)
}

/// The size of the CA bundle an output without `ca` trusts (as [`crate::tls`] finds it).
fn system_ca_len() -> usize {
    std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            crate::tls::SYSTEM_CA_FILES
                .iter()
                .map(std::path::PathBuf::from),
        )
        .map(|p| file_len(&p))
        .find(|&n| n > 0)
        .unwrap_or(0)
}

/// Bytes for people: `1.3 MiB (1363968 bytes)`.
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 {
            write!(f, "{:.1} GiB", n as f64 / (1u64 << 30) as f64)
        } else if n >= 1 << 20 {
            write!(f, "{:.1} MiB", n as f64 / (1u64 << 20) as f64)
        } else {
            write!(f, "{:.1} KiB", n as f64 / 1024.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn parse(feeds: &str) -> Config {
        let text = format!("[relay]\ndata_dir = \"/var/lib/ringrelay\"\n{feeds}");
        Config::parse(&text, &PathBuf::from("/etc/ringrelay/ringrelay.toml"))
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    const TCP_FEED: &str = r#"
[[feed]]
name = "f"
input = { kind = "tcp", listen = "127.0.0.1:0" }
buffer = { size = "16MiB" }

[[feed.output]]
name = "o"
kind = "tcp"
address = "127.0.0.1:1"
"#;

    #[test]
    fn a_default_tcp_feed_costs_its_connections_partial_records() {
        let b = budget(&parse(TCP_FEED));
        let f = &b.feeds[0];
        // 256 connections of 1 MiB + 16 and their state; drop_oldest refuses nothing.
        assert_eq!(f.max_connections, 256);
        assert_eq!(f.connection[0].bytes, (1 << 20) + 16);
        // A plain TCP output adds no buffer to its state.
        assert_eq!(f.outputs[0].lines.len(), 1);
        // The admin endpoint listens by default.
        assert!(b.relay.iter().any(|l| l.what == "admin endpoint"));
        assert_eq!(
            b.total(),
            sum(&b.relay) + FEED_STATE + 256 * f.per_connection() + OUTPUT_STATE
        );
    }

    #[test]
    fn block_mode_keeps_room_for_one_refused_read() {
        let cfg = parse(&TCP_FEED.replace(
            "buffer = { size = \"16MiB\" }",
            "buffer = { size = \"16MiB\" }\nwhen_full = \"block\"\nmax_record_bytes = \"4KiB\"",
        ));
        let f = &budget(&cfg).feeds[0];
        assert_eq!(f.connection[0].bytes, 4096 + 16 + (256 << 10));
    }

    #[test]
    fn octet_and_syslog_outputs_keep_a_prefix_per_frame_of_a_pass() {
        let cfg = parse(&format!(
            "{TCP_FEED}framing = \"octet\"\nsyslog = \"rfc5424\"\n"
        ));
        let o = &budget(&cfg).feeds[0].outputs[0];
        assert_eq!(o.lines[1].bytes, (256 * (21 + 768)) as u64);
    }

    #[test]
    fn an_http_output_costs_its_batch_its_head_and_its_reader() {
        let cfg = parse(&TCP_FEED.replace(
            "kind = \"tcp\"\naddress = \"127.0.0.1:1\"",
            "kind = \"http\"\nurl = \"http://127.0.0.1:1/in\"\nmax_batch_bytes = \"2MiB\"\ngzip = true",
        ));
        let o = &budget(&cfg).feeds[0].outputs[0];
        let get = |w: &str| o.lines.iter().find(|l| l.what == w).map(|l| l.bytes);
        assert_eq!(get("HTTP batch body"), Some((2 << 20) + 1));
        assert_eq!(
            get("HTTP gzipped body"),
            Some(crate::output::http::protocol::gzip_bound((2 << 20) + 1) as u64)
        );
        let head = get("HTTP request head").unwrap_or(0);
        assert!(head > 100 && head < 4096, "{head}");
        assert_eq!(get("HTTP response reader"), Some(96 << 10));
    }

    #[test]
    fn gzip_bound_holds_for_incompressible_bytes() {
        use std::io::Write as _;
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let body: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut out = Vec::new();
        let mut enc = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
        enc.write_all(&body).expect("gzip");
        enc.finish().expect("gzip");
        assert!(
            out.len() <= crate::output::http::protocol::gzip_bound(body.len()),
            "{}",
            out.len()
        );
    }
}
