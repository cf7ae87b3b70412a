//! The relay against real syslog peers (issue 14 item 8): rsyslog 8.2302 and syslog-ng 3.38
//! from Debian's packages, unpacked by `tests/peers/install.sh` (the tests run it themselves).
//! rsyslog's and syslog-ng's octet-counted senders put an LF inside each frame; rsyslog's TLS
//! receiver checks the client certificate after the handshake and closes on a name it does not
//! permit; rsyslog's plain TCP receiver is the baseline.

mod common;
#[path = "common/peers.rs"]
mod peers;
#[path = "common/tls.rs"]
mod tlskit;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use peers::*;
use tlskit::Pki;

const N: u64 = 1000;
const LEN: usize = 120;

/// A relay config: feed `f` with a tcp input (framing `auto`, the default) and one output
/// `siem` given as TOML lines; admin on an ephemeral port.
fn relay_config(dir: &Path, output: &str) -> PathBuf {
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "64MiB" }}

[[feed.output]]
name = "siem"
{output}
"#,
        data = dir.join("data").display()
    );
    let p = dir.join("ringrelay.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

fn file_output(path: &Path) -> String {
    format!("kind = \"file\"\npath = \"{}\"", path.display())
}

/// The test record (`rec <n> ...`, see `common::record`) at the end of a line that a peer
/// wrapped in a syslog header, if it is there intact.
fn record_in(line: &[u8]) -> Option<u64> {
    let at = line.windows(4).position(|w| w == b"rec ")?;
    record_number(&line[at..])
}

/// How many times each record arrived among `lines`.
fn counts(lines: &[Vec<u8>]) -> HashMap<u64, u32> {
    let mut m = HashMap::new();
    for l in lines {
        if let Some(n) = record_in(l) {
            *m.entry(n).or_insert(0) += 1;
        }
    }
    m
}

/// Waits (bounded) until records `0..n` all appear in `path`; its lines then.
fn wait_for_records(
    path: &Path,
    n: u64,
    limit: Duration,
    what: impl Fn() -> String,
) -> Vec<Vec<u8>> {
    let ok = wait_until(limit, || counts(&file_lines(path)).len() as u64 >= n);
    let lines = file_lines(path);
    assert!(
        ok,
        "{} of {n} records in {} after {limit:?}\n{}",
        counts(&lines).len(),
        path.display(),
        what()
    );
    lines
}

/// Every record of `0..n` exactly once, and no other.
fn assert_once_each(lines: &[Vec<u8>], n: u64) {
    let c = counts(lines);
    let missing: Vec<u64> = (0..n).filter(|i| !c.contains_key(i)).take(10).collect();
    assert!(missing.is_empty(), "missing records, first: {missing:?}");
    assert_eq!(c.len() as u64, n, "records outside 0..{n} arrived");
    let dups: Vec<u64> = c
        .iter()
        .filter(|(_, &k)| k > 1)
        .map(|(&r, _)| r)
        .take(10)
        .collect();
    assert!(dups.is_empty(), "records arrived more than once: {dups:?}");
}

/// The LF a sender put inside an octet-counted frame is the frame's, not a record of its own:
/// a file output of newline-framed records must have no empty line.
fn assert_no_blank_lines(lines: &[Vec<u8>], path: &Path) {
    let blank = lines.iter().filter(|l| l.is_empty()).count();
    assert_eq!(
        blank,
        0,
        "{blank} blank lines among {} in {}: the LF inside each octet-counted frame was kept \
         in the record; first lines: {:?}",
        lines.len(),
        path.display(),
        lines
            .iter()
            .take(4)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
    );
}

fn rec(n: u64) -> String {
    String::from_utf8(record(n, LEN)).unwrap()
}

// a. rsyslog as a sender: omfwd, octet-counted, RFC 5424 template (LF at the end of each frame).
#[test]
fn rsyslog_octet_counted_frames_each_arrive_once_without_the_lf_inside_the_frame() {
    let dir = TempDir::new("peers-rsyslog-octet");
    let out = dir.path().join("out.log");
    let relay = RelayProc::start(&relay_config(dir.path(), &file_output(&out)), 1);
    let rsyslog = Rsyslog::start(
        &dir.path().join("rsyslog"),
        &format!(
            r#"module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{{dir}}/in.port")
action(type="omfwd" target="127.0.0.1" port="{}" protocol="tcp"
       TCP_Framing="octet-counted" template="RSYSLOG_SyslogProtocol23Format")
"#,
            relay.addr("f").port()
        ),
    );
    send_lines(
        rsyslog.port("in"),
        (0..N).map(|n| format!("<13>Dec  5 03:00:00 peerhost app: {}", rec(n))),
    );
    let lines = wait_for_records(&out, N, Duration::from_secs(30), || {
        format!(
            "rsyslog:\n{}\nrelay:\n{}",
            rsyslog.proc.log_text(),
            relay.log_text()
        )
    });
    assert_once_each(&lines, N);
    assert_no_blank_lines(&lines, &out);
}

// b. syslog-ng's syslog() destination driver: octet counting, LF inside the frame.
#[test]
fn syslog_ng_syslog_driver_frames_each_arrive_once_without_the_lf_inside_the_frame() {
    let dir = TempDir::new("peers-syslog-ng");
    let out = dir.path().join("out.log");
    let relay = RelayProc::start(&relay_config(dir.path(), &file_output(&out)), 1);
    let sng_dir = dir.path().join("syslog-ng");
    std::fs::create_dir_all(&sng_dir).unwrap();
    // The whole input is in the file before syslog-ng starts: it reads it from the start.
    let input: String = (0..N).map(|n| rec(n) + "\n").collect();
    std::fs::write(sng_dir.join("in.log"), input).unwrap();
    let sng = SyslogNg::start(
        &sng_dir,
        &format!(
            r#"options {{ stats-freq(0); }};
source s_in {{ file("{{dir}}/in.log" follow-freq(0.1) flags(no-parse)); }};
destination d_relay {{ syslog("127.0.0.1" port({}) transport("tcp")); }};
log {{ source(s_in); destination(d_relay); }};
"#,
            relay.addr("f").port()
        ),
    );
    let lines = wait_for_records(&out, N, Duration::from_secs(30), || {
        format!(
            "syslog-ng:\n{}\nrelay:\n{}",
            sng.proc.log_text(),
            relay.log_text()
        )
    });
    assert_once_each(&lines, N);
    assert_no_blank_lines(&lines, &out);
}

/// rsyslog as an RFC 5425 receiver: imtcp with the gnutls driver in TLS-only mode, client
/// certificates checked by name against `permitted`, what arrives written raw to `out.log`.
fn rsyslog_tls_receiver(dir: &Path, pki: &Pki, permitted: &str) -> Rsyslog {
    Rsyslog::start(
        dir,
        &format!(
            r#"module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\n")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{{dir}}/tls.port"
      StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/name"
      PermittedPeer=["{permitted}"]
      streamDriver.CAFile="{ca}" streamDriver.CertFile="{cert}" streamDriver.KeyFile="{key}")
action(type="omfile" file="{{dir}}/out.log" template="raw")
"#,
            ca = pki.path("ca.pem").display(),
            cert = pki.path("server.pem").display(),
            key = pki.path("server.key").display(),
        ),
    )
}

/// `next seq` of output `name`'s cursor in `ringrelay inspect` output
/// (`  cursor siem  next seq 1200  lag 0 records ...`).
fn cursor_next_seq(inspect: &str, name: &str) -> Option<u64> {
    inspect.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("cursor ")?.trim_start();
        let rest = rest
            .strip_prefix(name)?
            .trim_start()
            .strip_prefix("next seq ")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The relay's records delivered by output `siem` (the admin metric).
fn delivered(admin: SocketAddr) -> u64 {
    metrics(admin)
        .get("ringrelay_output_records_delivered_total{feed=\"f\",output=\"siem\"}")
        .copied()
        .unwrap_or(0.0) as u64
}

// c. rsyslog's TLS receiver refuses the relay's client certificate after the handshake.
#[test]
fn rsyslog_closing_after_the_handshake_counts_as_a_failed_connect_and_loses_nothing() {
    let dir = TempDir::new("peers-rsyslog-tls-reject");
    let pki = Pki::new(dir.path());
    let rs_dir = dir.path().join("rsyslog");
    // The client certificate is `client` (CN connector-1, SAN localhost): not permitted.
    let rsyslog = rsyslog_tls_receiver(&rs_dir, &pki, "some-other-name");
    let proxy = CountingProxy::start(rsyslog.port("tls"));
    let output = format!(
        "kind = \"tls\"\naddress = \"{}\"\nca = \"{}\"\nserver_name = \"localhost\"\n\
         client_cert = \"{}\"\nclient_key = \"{}\"\nalert_after = \"5s\"",
        proxy.addr,
        pki.path("ca.pem").display(),
        pki.path("client.pem").display(),
        pki.path("client.key").display(),
    );
    let cfg = relay_config(dir.path(), &output);
    let relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);

    // Records keep coming in for the whole failing period.
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(12) {
        send_records(relay.addr("f"), sent..sent + 50, LEN);
        sent += 50;
        std::thread::sleep(Duration::from_millis(500));
    }
    let attempts = proxy.connections();
    let out = rs_dir.join("out.log");
    let arrived = counts(&file_lines(&out)).len();
    let delivered_while_refused = delivered(admin);
    let inspect = std::process::Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .arg("inspect")
        .arg(dir.path().join("data"))
        .output()
        .expect("run inspect");
    let inspect = String::from_utf8_lossy(&inspect.stdout).into_owned();
    let cursor = cursor_next_seq(&inspect, "siem");
    // Every requirement is checked, and every one not met is reported together.
    let mut unmet = Vec::new();
    if arrived != 0 {
        unmet.push(format!(
            "rsyslog wrote {arrived} records it should have refused"
        ));
    }
    if attempts < 2 {
        unmet.push(format!(
            "only {attempts} connections: the relay should keep retrying"
        ));
    }
    if attempts >= 15 {
        unmet.push(format!(
            "{attempts} connections in 12 s: a connection the peer closes right after the \
             handshake is a failed connect, and the backoff must grow (fewer than 15)"
        ));
    }
    if !relay.log_has("event=output_down_alert") {
        unmet.push("no output_down_alert line after 12 s with alert_after = 5s".into());
    }
    if delivered_while_refused != 0 && cursor != Some(0) {
        unmet.push(format!(
            "ringrelay_output_records_delivered_total is {delivered_while_refused} and the \
             cursor is at {cursor:?} of {sent} records: the cursor must return to where each \
             refused connection began"
        ));
    }
    assert!(
        unmet.is_empty(),
        "while rsyslog refused the relay's client certificate:\n- {}\ninspect:\n{inspect}\n\
         rsyslog:\n{}\nrelay:\n{}",
        unmet.join("\n- "),
        rsyslog.proc.log_text(),
        relay.log_text()
    );

    // rsyslog comes back permitting the relay's name: everything sent arrives.
    drop(rsyslog);
    let rsyslog = rsyslog_tls_receiver(&rs_dir, &pki, "connector-1");
    proxy.retarget(rsyslog.port("tls"));
    let lines = wait_for_records(&out, sent, Duration::from_secs(60), || {
        format!(
            "after rsyslog permitted the relay\nrsyslog:\n{}\nrelay:\n{}",
            rsyslog.proc.log_text(),
            relay.log_text()
        )
    });
    let c = counts(&lines);
    assert_eq!(c.len() as u64, sent, "records outside 0..{sent} arrived");
}

// d. rsyslog as a plain TCP receiver of the relay's tcp output.
#[test]
fn rsyslog_tcp_receiver_gets_every_record_once_in_order() {
    let dir = TempDir::new("peers-rsyslog-tcp");
    let rs_dir = dir.path().join("rsyslog");
    let rsyslog = Rsyslog::start(
        &rs_dir,
        r#"module(load="imtcp")
template(name="raw" type="string" string="%rawmsg%\n")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{dir}/in.port")
action(type="omfile" file="{dir}/out.log" template="raw")
"#,
    );
    let output = format!("kind = \"tcp\"\naddress = \"{}\"", rsyslog.port("in"));
    let relay = RelayProc::start(&relay_config(dir.path(), &output), 1);
    send_records(relay.addr("f"), 0..N, LEN);
    let out = rs_dir.join("out.log");
    let lines = wait_for_records(&out, N, Duration::from_secs(30), || {
        format!(
            "rsyslog:\n{}\nrelay:\n{}",
            rsyslog.proc.log_text(),
            relay.log_text()
        )
    });
    assert_once_each(&lines, N);
    let order: Vec<u64> = lines.iter().filter_map(|l| record_number(l)).collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "records out of order");
    assert_eq!(
        lines.len() as u64,
        N,
        "lines other than the records arrived"
    );
}
