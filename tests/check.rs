//! `ringrelay check` accepts exactly what `run` can start on this machine (issue 16 item 2): the
//! file's errors by name and position with a syntax error first, and what only the machine can
//! tell (a data directory that cannot exist, rings that do not fit the disk, a ring whose size
//! differs from the configuration), each at its line and column.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{wait_until, RelayProc, TempDir};

fn ringrelay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .args(args)
        .output()
        .expect("run ringrelay")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn config(dir: &Path, data_dir: &str, buffer: &str, output: &str) -> String {
    let text = format!(
        r#"[relay]
data_dir = "{data_dir}"
admin_listen = "off"

[[feed]]
name = "zia-web"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {buffer}
max_record_bytes = "4KiB"

[[feed.output]]
{output}
"#
    );
    let p = dir.join("ringrelay.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

const OUTPUT: &str = "name = \"splunk\"\nkind = \"tcp\"\naddress = \"127.0.0.1:9\"";

#[test]
fn a_missing_file_is_named_without_a_position() {
    let o = ringrelay(&["check", "--config", "/nonexistent/nope.toml"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(e.contains("/nonexistent/nope.toml: no such file"), "{e}");
    assert!(!e.contains(":0:0:"), "{e}");
}

#[test]
fn errors_name_feeds_and_outputs_and_a_syntax_error_comes_first() {
    let dir = TempDir::new("check-names");
    let data = dir.path().join("data").display().to_string();
    let cfg = config(
        dir.path(),
        &data,
        "{ size = 16 }",
        "name = \"splunk\"\nkind = \"tcp\"\naddres = \"x\"\n= broken",
    );
    let o = ringrelay(&["check", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    let first = e.lines().next().unwrap_or_default();
    assert!(first.contains("TOML syntax"), "{e}");
    assert!(e.contains("feed \"zia-web\" output \"splunk\""), "{e}");
    assert!(!e.contains("feed #1") && !e.contains("output #1"), "{e}");
    // The minimum, in bytes and in words.
    assert!(
        e.contains("buffer size 16") && e.contains("the minimum is 1048576 bytes"),
        "{e}"
    );
}

#[test]
fn a_data_dir_that_cannot_exist_fails_check_and_run_alike() {
    let dir = TempDir::new("check-proc");
    let cfg = config(
        dir.path(),
        "/proc/ringrelay-nope",
        "{ size = \"4MiB\" }",
        OUTPUT,
    );
    let o = ringrelay(&["check", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains(":2:12: data_dir /proc/ringrelay-nope"), "{e}");
    let o = ringrelay(&["run", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("data_dir /proc/ringrelay-nope"));
}

#[test]
fn rings_that_do_not_fit_the_disk_fail_check_and_leave_no_temporary_file() {
    let dir = TempDir::new("check-space");
    let data = dir.path().join("data");
    let cfg = config(
        dir.path(),
        &data.display().to_string(),
        "{ size = \"100TiB\" }",
        OUTPUT,
    );
    let o = ringrelay(&["check", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains(":8:10: the rings to create") && e.contains("free"),
        "{e}"
    );
    // run: the feed's ring cannot be created; whatever run does then, no .ring.tmp stays.
    let mut relay = RelayProc::spawn(Path::new(&cfg), &[]);
    wait_until(Duration::from_secs(10), || {
        relay.log_has("posix_fallocate") || !relay.running()
    });
    relay.kill9();
    let left: Vec<_> = std::fs::read_dir(&data)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !left.iter().any(|n| n.to_string_lossy().ends_with(".tmp")),
        "{left:?}\n{}",
        relay.log_text()
    );
}

#[test]
fn an_existing_ring_of_another_size_fails_check_at_its_buffer() {
    let dir = TempDir::new("check-resize");
    let data = dir.path().join("data").display().to_string();
    let cfg = config(dir.path(), &data, "{ size = \"4MiB\" }", OUTPUT);
    let mut relay = RelayProc::start(Path::new(&cfg), 1);
    relay.terminate();
    assert_eq!(
        ringrelay(&["check", "--config", &cfg]).status.code(),
        Some(0)
    );
    // The same ring, now sized from a rate that asks for more.
    let cfg = config(
        dir.path(),
        &data,
        "{ retention = \"1h\", eps = 10, bytes = 500 }",
        OUTPUT,
    );
    let o = ringrelay(&["check", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains(":8:10: feed \"zia-web\": the ring")
            && e.contains("4.0 MiB (4194304 bytes)")
            && e.contains("size = \"4194304\""),
        "{e}"
    );
}

#[test]
fn size_takes_the_units_and_limits_of_the_configuration() {
    let o = ringrelay(&["size", "--eps", "10k", "--bytes", "1KiB"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("10000 events/s x 1024 bytes"), "{out}");
    let o = ringrelay(&["size", "--eps", "0", "--bytes", "900"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--eps 0 is out of range (1..=10000000)"));
    let o = ringrelay(&["size", "--eps", "100", "--bytes", "20MiB"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--bytes 20971520 is out of range"));
}

#[test]
fn check_warns_about_placeholder_secrets_and_a_secret_over_plain_http() {
    let dir = TempDir::new("check-warnings");
    let data = dir.path().join("data").display().to_string();
    let text = format!(
        r#"[relay]
data_dir = "{data}"

[[feed]]
name = "cloud-nss"
input = {{ kind = "http", listen = "0.0.0.0:0", auth_header = "x-key", secret = "change-me" }}
buffer = {{ size = "4MiB" }}
max_record_bytes = "4KiB"

[[feed.output]]
name = "hec"
kind = "http"
preset = "splunk_hec"
url = "http://127.0.0.1:8088/services/collector/raw"
token = "00000000-0000-0000-0000-000000000000"
"#
    );
    let cfg = dir.path().join("ringrelay.toml");
    std::fs::write(&cfg, text).unwrap();
    let o = ringrelay(&["check", "--config", &cfg.display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(":6:")
            && out.contains("warning: secret = \"change-me\" looks like a placeholder"),
        "{out}"
    );
    assert!(
        out.contains("warning: the shared secret travels in clear text"),
        "{out}"
    );
    assert!(out.contains(":15:9: warning: token = "), "{out}");
}

/// A config whose names are `instance` (a whole TOML line, or empty for the default), `feed`
/// and `output` (TOML literal strings' contents); the instance is on line 4, the feed's name
/// on line 7 and the output's on line 13, each value at column 8 or 12.
fn names_config(dir: &Path, instance: &str, feed: &str, output: &str) -> String {
    let data = dir.join("data").display().to_string();
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "off"
{instance}

[[feed]]
name = '{feed}'
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "4MiB" }}
max_record_bytes = "4KiB"

[[feed.output]]
name = '{output}'
kind = "tcp"
address = "127.0.0.1:9"
"#
    );
    let p = dir.join("ringrelay.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// `check` with the names given: its exit code and what it printed on stderr.
fn check_names(instance: &str, feed: &str, output: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("check-names-rule");
    let cfg = names_config(dir.path(), instance, feed, output);
    let o = ringrelay(&["check", "--config", &cfg]);
    (o.status.code(), stderr(&o))
}

/// Issue 17: the instance name went into `/health`'s JSON, the Prometheus labels and the lock
/// file as written, so a quote broke the JSON and a newline added a line to the lock file.
/// Names are now checked where they are read, and `check` says which one and where.
#[test]
fn names_that_would_break_json_labels_or_the_lock_file_are_refused_at_their_position() {
    let instance_rule = "use 1 to 64 characters of A-Z, a-z, 0-9, '.', '-' and '_' (the name goes into JSON, metric labels and the lock file)";
    let (code, e) = check_names("instance = 'relay \"a\"'", "zia-web", "siem");
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains(&format!(
            ":4:12: instance = \"relay \\\"a\\\"\": {instance_rule}"
        )),
        "{e}"
    );

    let (code, e) = check_names("instance = \"relay\\nb\"", "zia-web", "siem");
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains(&format!(":4:12: instance = \"relay\\nb\": {instance_rule}")),
        "{e}"
    );

    let (code, e) = check_names("", "zia web", "siem");
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains(":7:8: feed name \"zia web\": use 1 to 32 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"),
        "{e}"
    );

    let long = "o".repeat(33);
    let (code, e) = check_names("", "zia-web", &long);
    assert_eq!(code, Some(2), "{e}");
    assert!(
        e.contains(&format!(
            ":13:8: output name \"{long}\": use 1 to 32 characters of a-z, 0-9, '-' and '_'"
        )),
        "{e}"
    );
}

#[test]
fn names_within_the_rules_pass_check() {
    let longest_output = "o".repeat(32);
    for (instance, feed, output) in [
        ("", "zia-web", "siem"),
        (
            "instance = \"Relay_A.eu-west-1\"",
            "zia_web-2",
            &longest_output[..],
        ),
        (
            &format!("instance = \"{}\"", "i".repeat(64)),
            &"f".repeat(32),
            "s",
        ),
    ] {
        let (code, e) = check_names(instance, feed, output);
        assert_eq!(code, Some(0), "{instance} {feed} {output}: {e}");
    }
}

#[test]
fn a_ninth_output_is_refused_at_its_position() {
    let dir = TempDir::new("check-outputs");
    let data = dir.path().join("data").display().to_string();
    let mut outputs = String::new();
    for i in 0..9 {
        outputs.push_str(&format!(
            "[[feed.output]]\nname = \"o{i}\"\nkind = \"tcp\"\naddress = \"127.0.0.1:9\"\n\n"
        ));
    }
    let text = format!(
        "[relay]\ndata_dir = \"{data}\"\nadmin_listen = \"off\"\n\n[[feed]]\nname = \"zia-web\"\ninput = {{ kind = \"tcp\", listen = \"127.0.0.1:0\" }}\nbuffer = {{ size = \"16MiB\" }}\n\n{outputs}"
    );
    // The ninth output's `[[feed.output]]`: the line above its name (1-based: its index).
    let ninth = text.lines().position(|l| l == "name = \"o8\"").unwrap();
    let p = dir.path().join("ringrelay.toml");
    std::fs::write(&p, &text).unwrap();
    let o = ringrelay(&["check", "--config", &p.display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            ":{ninth}:1: 9 outputs in feed \"zia-web\"; at most 8 are supported"
        )),
        "{e}"
    );
    // Eight pass.
    let eight = text[..text.find("[[feed.output]]\nname = \"o8\"").unwrap()].to_string();
    std::fs::write(&p, eight).unwrap();
    let o = ringrelay(&["check", "--config", &p.display().to_string()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn size_prints_the_relay_memory_of_a_config_line_by_line() {
    let dir = TempDir::new("size-config");
    let data = dir.path().join("data").display().to_string();
    let cfg = config(
        dir.path(),
        &data,
        "{ size = \"16MiB\" }",
        "name = \"hec\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/services/collector/raw\"\nmax_batch_bytes = \"512KiB\"",
    );
    let o = ringrelay(&["size", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let budget = ringrelay::memory::budget(
        &ringrelay::config::Config::load(Path::new(&cfg)).expect("a valid config"),
    );
    for want in [
        "feed \"zia-web\"".to_string(),
        "ring 16.0 MiB (16777216 bytes)".to_string(),
        "per connection (x 256 max_connections)".to_string(),
        // 4 KiB + 16 bytes: the configuration's max_record_bytes and a frame header.
        "partial record".to_string(),
        "input scratch buffer".to_string(),
        "output \"hec\"".to_string(),
        "HTTP batch body".to_string(),
        format!("({} bytes)", budget.total()),
        "process RssAnon at most".to_string(),
    ] {
        assert!(out.contains(&want), "{want:?} not in:\n{out}");
    }
    // One or the other.
    let o = ringrelay(&["size", "--config", &cfg, "--eps", "10"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("one or the other"), "{}", stderr(&o));
}
