use super::http_output::is_guid;
use super::Framing;
use super::*;
use super::{Format, SyslogConfig};
use crate::ring::WhenFull;

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
    assert!(matches!(&web.outputs[0].kind, OutputKind::Tcp(t) if t.framing == OutFraming::Octet));
    assert_eq!(
        zpa.capacity,
        crate::ring::ring_bytes(1000, 1500, Duration::from_secs(3600))
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
        .replace("kind = \"file\"", "kind = \"kinesis\"");
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
        msgs.iter().any(|m| m.contains(
            "output kind \"kinesis\" is unknown (supported: tcp, tls, file, http, kafka)"
        )),
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
    let m = msgs(
        "url = \"http://splunk:8088\"\npreset = \"splunk_hec\"\ntoken = \"T\"\nca = \"/ca.pem\"",
    );
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
    let m =
        msgs("url = \"http://x:0/\"\nack = true\nheaders = { Host = \"y\" }\nframing = \"octet\"");
    assert!(
        m.iter().any(|e| e.contains("port must be 1 to 65535")),
        "{m:?}"
    );
    let m =
        msgs("url = \"http://x/\"\nack = true\nheaders = { Host = \"y\" }\nframing = \"octet\"");
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

fn kafka_output_of(extra: &str) -> Result<Config, Vec<ConfigError>> {
    let text = GOOD.replace(
        "[[feed.output]]\nname = \"archive\"",
        &format!("[[feed.output]]\nname = \"bus\"\nkind = \"kafka\"\n{extra}\n\n[[feed.output]]\nname = \"archive\""),
    );
    parse(&text)
}

fn kafka_errors(extra: &str) -> String {
    match kafka_output_of(extra) {
        Ok(_) => String::new(),
        Err(errors) => errors
            .iter()
            .map(|e| e.msg.clone())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[test]
fn kafka_outputs_take_their_defaults() {
    let c = kafka_output_of("brokers = [\"k1:9092\", \"k2:9092\"]\ntopic = \"zpa.user-activity\"")
        .unwrap();
    let o = &c.feeds[1].outputs[0];
    assert_eq!(o.replay, Duration::ZERO);
    let OutputKind::Kafka(k) = &o.kind else {
        panic!("kafka")
    };
    assert_eq!(k.brokers, ["k1:9092", "k2:9092"]);
    assert_eq!(k.topic, "zpa.user-activity");
    assert_eq!(k.key, KafkaKey::None);
    assert_eq!(k.compression, KafkaCompression::None);
    assert_eq!(k.max_batch_bytes, 512 << 10);
    assert_eq!(k.max_batch_age, Duration::from_secs(1));
    assert_eq!(k.request_timeout, Duration::from_secs(30));
    assert_eq!(k.client_id, "ringrelay-ringrelay");
    assert!(k.tls.is_none() && k.sasl.is_none());
}

#[test]
fn kafka_settings_that_cannot_work_are_refused_with_the_reason() {
    let base = "brokers = [\"k1:9092\"]\ntopic = \"t\"";
    for (extra, want) in [
        ("brokers = []\ntopic = \"t\"", "1 to 16 bootstrap brokers"),
        (
            "brokers = [\"k1\"]\ntopic = \"t\"",
            "\"k1\": expected \"host:port\"",
        ),
        (
            "brokers = [\"k:1\"]\ntopic = \"a b\"",
            "not allowed in a topic name",
        ),
        ("brokers = [\"k:1\"]", "needs \"topic\""),
        ("compression = \"zstd\"", "C libraries"),
        ("compression = \"lz4\"", "C libraries"),
        ("acks = \"1\"", "only \"all\""),
        ("max_batch_bytes = \"2MiB\"", "out of range"),
        ("key = \"field\"", "expected one of none | feed"),
        ("ca = \"/x.pem\"", "ca is for tls = true"),
        ("framing = \"octet\"", "unknown key \"framing\""),
        (
            "sasl = { mechanism = \"gssapi\", username = \"u\", password = \"p\" }",
            "mechanism = \"gssapi\"",
        ),
        (
            "sasl = { mechanism = \"plain\", username = \"u\" }",
            "needs \"password\"",
        ),
    ] {
        let text = if extra.starts_with("brokers") {
            extra.to_string()
        } else {
            format!("{base}\n{extra}")
        };
        let errors = kafka_errors(&text);
        assert!(errors.contains(want), "{text}: want {want:?} in {errors:?}");
    }
    assert_eq!(kafka_errors(&format!("{base}\ncompression = \"gzip\"\nkey = \"feed\"\nsasl = {{ mechanism = \"scram-sha-512\", username = \"u\", password = \"p\" }}")), "");
}
