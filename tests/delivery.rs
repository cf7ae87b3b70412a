//! Delivery semantics at scale, against the real binary on loopback: many feeds with fan-out,
//! the replay window's exact duplicates, outages in a row, alerts, and `inspect` over a data dir
//! of many feeds.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

const LEN: usize = 200;

/// A config of `feeds` feeds `f0..`, each with outputs `up` → `ups[i]` and `down` → `downs[i]`.
fn fanout_config(dir: &TempDir, ups: &[SocketAddr], downs: &[SocketAddr]) -> std::path::PathBuf {
    let mut text = format!(
        "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\n",
        dir.path().join("data").display()
    );
    for (i, (up, down)) in ups.iter().zip(downs).enumerate() {
        let _ = write!(
            text,
            r#"
[[feed]]
name = "f{i}"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "32MiB" }}

[[feed.output]]
name = "up"
kind = "tcp"
address = "{up}"

[[feed.output]]
name = "down"
kind = "tcp"
address = "{down}"
"#
        );
    }
    let p = dir.path().join("ringrelay.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn eight_feeds_deliver_everything_to_their_up_outputs_while_one_output_of_each_is_down() {
    const FEEDS: usize = 8;
    const N: u64 = 20_000;
    let dir = TempDir::new("fanout");
    let ups: Vec<Sink> = (0..FEEDS).map(|_| Sink::new(true)).collect();
    let dead: Vec<DeadPort> = (0..FEEDS).map(|_| DeadPort::new()).collect();
    let downs: Vec<SocketAddr> = dead.iter().map(|d| d.addr).collect();
    let up_addrs: Vec<SocketAddr> = ups.iter().map(|s| s.addr).collect();
    let cfg = fanout_config(&dir, &up_addrs, &downs);
    let mut relay = RelayProc::start(&cfg, FEEDS);
    let admin = admin_addr(&relay);
    let senders: Vec<_> = (0..FEEDS)
        .map(|i| {
            let addr = relay.addr(&format!("f{i}"));
            thread::spawn(move || send_records(addr, 0..N, LEN))
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let all_in = wait_until(Duration::from_secs(60), || {
        ups.iter().all(|s| s.count() >= N as usize)
    });
    assert!(
        all_in,
        "counts {:?}",
        ups.iter().map(Sink::count).collect::<Vec<_>>()
    );
    let m = metrics(admin);
    for (i, sink) in ups.iter().enumerate() {
        let counts = sink.counts();
        assert_eq!(counts.len() as u64, N, "feed f{i}: distinct records");
        assert!(
            counts.values().all(|&c| c == 1),
            "feed f{i}: duplicates without a reconnect"
        );
        let key = |name: &str, out: &str| format!("{name}{{feed=\"f{i}\",output=\"{out}\"}}");
        assert_eq!(
            m[&key("ringrelay_output_records_delivered_total", "up")],
            N as f64
        );
        assert_eq!(
            m[&key("ringrelay_output_records_delivered_total", "down")],
            0.0
        );
        assert_eq!(m[&key("ringrelay_output_lag_records", "down")], N as f64);
        assert_eq!(m[&key("ringrelay_output_connected", "down")], 0.0);
        assert_eq!(
            m[&format!("ringrelay_feed_records_received_total{{feed=\"f{i}\"}}")],
            N as f64
        );
    }
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));

    // inspect on the data dir: every feed's ring, every output's cursor with its lag.
    let out = Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .arg("inspect")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 0..FEEDS {
        let section = text
            .split("ring ")
            .find(|s| s.contains(&format!("feed            f{i}\n")))
            .unwrap_or_else(|| panic!("no ring for feed f{i} in:\n{text}"));
        assert!(
            section.contains(&format!("records         {N}")),
            "{section}"
        );
        let cursor = |name: &str| {
            section
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("cursor {name} ")))
                .unwrap_or_else(|| panic!("no cursor {name} in:\n{section}"))
                .to_string()
        };
        assert!(cursor("up").contains("lag 0 records"), "{}", cursor("up"));
        assert!(
            cursor("down").contains(&format!("lag {N} records")),
            "{}",
            cursor("down")
        );
    }
}

#[test]
fn a_cut_siem_receives_exactly_the_replay_window_again_and_everything_after() {
    let dir = TempDir::new("replay-window");
    let siem = Sink::new(true);
    let p = one_feed_config_with_admin(dir.path(), siem.addr, "", "replay = \"2s\"");
    let relay = RelayProc::start(&p, 1);
    let admin = admin_addr(&relay);
    // A: older than the window when the cut comes.
    send_records(relay.addr("f"), 0..1000, LEN);
    assert!(wait_until(Duration::from_secs(20), || siem.count() >= 1000));
    thread::sleep(Duration::from_millis(3500));
    // B: inside the window.
    send_records(relay.addr("f"), 1000..2000, LEN);
    assert!(wait_until(Duration::from_secs(20), || siem.count() >= 2000));
    thread::sleep(Duration::from_millis(300));
    siem.set_up(false);
    let noticed = wait_until(Duration::from_secs(10), || {
        relay.log_has("event=output_down")
    });
    assert!(noticed, "{}", relay.log_text());
    // C: while the SIEM is away.
    send_records(relay.addr("f"), 2000..3000, LEN);
    siem.set_up(true);
    let all = wait_until(Duration::from_secs(30), || siem.counts().len() >= 3000);
    assert!(all, "distinct {}", siem.counts().len());
    let ok = wait_until(Duration::from_secs(10), || {
        metrics(admin)["ringrelay_output_lag_records{feed=\"f\",output=\"siem\"}"] == 0.0
    });
    assert!(ok);
    let counts = siem.counts();
    let twice: Vec<u64> = {
        let mut v: Vec<u64> = counts
            .iter()
            .filter(|(_, &c)| c > 1)
            .map(|(&n, _)| n)
            .collect();
        v.sort_unstable();
        v
    };
    assert!(
        counts.values().all(|&c| c <= 2),
        "a record arrived three times"
    );
    assert_eq!(
        twice,
        (1000..2000).collect::<Vec<_>>(),
        "the duplicates are exactly B"
    );
    let m = metrics(admin);
    assert_eq!(
        m["ringrelay_output_records_replayed_total{feed=\"f\",output=\"siem\"}"],
        1000.0
    );
    assert_eq!(
        m["ringrelay_output_records_delivered_total{feed=\"f\",output=\"siem\"}"],
        3000.0
    );
}

#[test]
fn two_outages_in_a_row_before_the_backlog_drains_lose_nothing() {
    let dir = TempDir::new("two-outages");
    let siem = Sink::new(true);
    // Slow enough that the backlog is still draining when the second outage starts.
    let cfg = one_feed_config(dir.path(), siem.addr, "", "rate_limit_eps = 10000");
    let relay = RelayProc::start(&cfg, 1);
    send_records(relay.addr("f"), 0..2000, LEN);
    assert!(wait_until(Duration::from_secs(20), || siem.count() >= 2000));
    siem.set_up(false);
    assert!(wait_until(Duration::from_secs(10), || relay
        .log_has("event=output_down")));
    send_records(relay.addr("f"), 2000..30_000, LEN);
    siem.set_up(true);
    // Part of the backlog arrives, then the SIEM goes again.
    assert!(wait_until(Duration::from_secs(20), || siem.count() >= 12_000));
    siem.set_up(false);
    let draining = siem.counts().len();
    assert!(
        draining < 30_000,
        "the backlog drained before the second outage"
    );
    send_records(relay.addr("f"), 30_000..40_000, LEN);
    thread::sleep(Duration::from_millis(500));
    siem.set_up(true);
    let all = wait_until(Duration::from_secs(60), || siem.counts().len() >= 40_000);
    let counts: HashMap<u64, u32> = siem.counts();
    let missing: Vec<u64> = (0..40_000)
        .filter(|n| !counts.contains_key(n))
        .take(10)
        .collect();
    assert!(all && missing.is_empty(), "missing (first 10): {missing:?}");
}

#[test]
fn alerts_are_logged_once_counted_and_written_into_the_alert_feed() {
    let dir = TempDir::new("alerts");
    let siem = Sink::new(false);
    let alerts_log = dir.path().join("alerts.log");
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"
alert_feed = "alerts"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "1MiB" }}
max_record_bytes = "4KiB"
retention = "1h"

[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem}"
replay = "0"
alert_after = "1s"

[[feed]]
name = "alerts"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "1MiB" }}
max_record_bytes = "4KiB"

[[feed.output]]
name = "file"
kind = "file"
path = "{alerts}"
"#,
        data = dir.path().join("data").display(),
        siem = siem.addr,
        alerts = alerts_log.display()
    );
    let cfg = dir.path().join("ringrelay.toml");
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, 2);
    let admin = admin_addr(&relay);
    let alert_lines = |kind: &str| -> Vec<String> {
        std::fs::read_to_string(&alerts_log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&format!("\"ringrelay_alert\":\"{kind}\"")))
            .map(str::to_string)
            .collect()
    };
    // Down for longer than alert_after: one log line, one record, a gauge.
    assert!(wait_until(Duration::from_secs(10), || alert_lines(
        "output_down"
    )
    .len()
        == 1));
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        relay.log_text().matches("event=output_down_alert").count(),
        1
    );
    let down = &alert_lines("output_down")[0];
    assert!(
        down.contains("\"feed\":\"f\"") && down.contains("\"output\":\"siem\""),
        "{down}"
    );
    assert!(down.starts_with('{') && down.ends_with('}'), "{down}");
    let m = metrics(admin);
    assert_eq!(
        m["ringrelay_output_down_alert{feed=\"f\",output=\"siem\"}"],
        1.0
    );
    assert_eq!(m["ringrelay_alerts_total{kind=\"output_down\"}"], 1.0);

    // Three rings' worth while the SIEM is down: coverage falls below retention, and the
    // output loses records to overrun.
    let n = 3 * (1 << 20) / (LEN as u64 + 56);
    send_records(relay.addr("f"), 0..n, LEN);
    assert!(wait_until(Duration::from_secs(10), || {
        alert_lines("coverage_below_retention").len() == 1
    }));
    assert_eq!(
        relay
            .log_text()
            .matches("event=coverage_below_retention")
            .count(),
        1
    );

    // The loss is reported while the SIEM is still down, once.
    assert!(wait_until(Duration::from_secs(10), || alert_lines(
        "output_overrun"
    )
    .len()
        == 1));

    // The SIEM returns: recovered, and once caught up, one alert with the episode's exact count.
    siem.set_up(true);
    assert!(wait_until(Duration::from_secs(20), || {
        alert_lines("output_recovered").len() == 1 && alert_lines("output_overrun_ended").len() == 1
    }));
    assert_eq!(alert_lines("output_overrun").len(), 1);
    let m = metrics(admin);
    let lost = m["ringrelay_output_records_overrun_lost_total{feed=\"f\",output=\"siem\"}"];
    assert!(lost > 0.0);
    assert_eq!(
        lost as u64 + siem.counts().len() as u64,
        n,
        "lost + received = sent"
    );
    let overrun = &alert_lines("output_overrun_ended")[0];
    assert!(
        overrun.contains(&format!("\"lost\":{lost}")),
        "{overrun} vs {lost}"
    );
    assert_eq!(
        m["ringrelay_output_down_alert{feed=\"f\",output=\"siem\"}"],
        0.0
    );
    assert_eq!(
        m["ringrelay_feed_coverage_below_retention{feed=\"f\"}"],
        1.0
    );
    for kind in [
        "output_down",
        "output_recovered",
        "output_overrun",
        "output_overrun_ended",
        "coverage_below_retention",
    ] {
        assert_eq!(
            m[&format!("ringrelay_alerts_total{{kind=\"{kind}\"}}")],
            1.0,
            "{kind}"
        );
    }
    assert_eq!(
        m["ringrelay_alert_records_written_total{instance_name=\"ringrelay\"}"],
        5.0
    );
}
