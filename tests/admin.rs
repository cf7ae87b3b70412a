//! The admin endpoint, rate limits and overrun accounting, against the real binary on loopback.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

const LEN: usize = 200;

#[test]
fn metrics_health_and_ready_tell_what_happened() {
    let dir = TempDir::new("admin-metrics");
    let siem = Sink::new(true);
    let cfg = one_feed_config_with_admin(
        dir.path(),
        siem.addr,
        "max_record_bytes = \"1KiB\"\noversize = \"drop\"",
        "",
    );
    let relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    let n = 5_000;
    send_records(relay.addr("f"), 0..n, LEN);
    // Three oversize records, dropped and counted, on a second connection.
    let mut big = Vec::new();
    for i in 0..3 {
        big.extend_from_slice(&record(n + i, 2000));
        big.push(b'\n');
    }
    {
        let mut s = TcpStream::connect(relay.addr("f")).unwrap();
        s.write_all(&big).unwrap();
    }
    // Connected counts once the connection has lasted `settle` (2 s by default).
    let ok = wait_until(Duration::from_secs(20), || {
        metrics(admin).get("ringrelay_output_records_delivered_total{feed=\"f\",output=\"siem\"}")
            == Some(&(n as f64))
            && metrics(admin).get("ringrelay_output_connected{feed=\"f\",output=\"siem\"}")
                == Some(&1.0)
            && metrics(admin)
                .get("ringrelay_feed_records_dropped_total{feed=\"f\",reason=\"oversize\"}")
                == Some(&3.0)
    });
    let m = metrics(admin);
    assert!(ok, "{m:#?}\n{}", relay.log_text());
    let f = |k: &str| m[&format!("{k}{{feed=\"f\"}}")];
    assert_eq!(f("ringrelay_feed_records_received_total"), n as f64);
    assert_eq!(
        f("ringrelay_feed_bytes_received_total"),
        (n * LEN as u64) as f64
    );
    assert_eq!(f("ringrelay_feed_connections_total"), 2.0);
    assert_eq!(f("ringrelay_ring_records"), n as f64);
    assert_eq!(
        m["ringrelay_output_connected{feed=\"f\",output=\"siem\"}"],
        1.0
    );
    assert_eq!(
        m["ringrelay_output_lag_records{feed=\"f\",output=\"siem\"}"],
        0.0
    );
    // Written to the socket is not yet read by the sink.
    assert!(wait_until(Duration::from_secs(10), || siem.count() as u64 == n));

    let (status, body) = get(admin, "/health");
    assert_eq!(status, 200);
    assert!(
        body.contains("\"role\":\"active\"")
            && body.contains("\"name\":\"siem\",\"connected\":true"),
        "{body}"
    );
    assert_eq!(get(admin, "/ready").0, 200);

    // Garbage gets 400; an unknown path 404; the data path is undisturbed.
    assert_eq!(http(admin, b"\x16\x03\x01garbage\r\n\r\n").0, 400);
    assert_eq!(get(admin, "/nope").0, 404);
    // A client that never finishes its request does not block the others.
    let _stalled = TcpStream::connect(admin).unwrap();
    assert_eq!(get(admin, "/ready").0, 200);

    // The SIEM goes down: /health says so; /ready stays 200, because the relay still takes
    // logs (that is what its ring is for), so a load balancer keeps sending.
    siem.set_up(false);
    let ok = wait_until(Duration::from_secs(10), || {
        get(admin, "/health")
            .1
            .contains("\"name\":\"siem\",\"connected\":false")
    });
    assert!(ok, "/health still says connected with the SIEM down");
    assert_eq!(get(admin, "/ready").0, 200);
    send_records(relay.addr("f"), n..n + 100, LEN);
    let m = metrics(admin);
    assert_eq!(
        m["ringrelay_feed_records_received_total{feed=\"f\"}"],
        (n + 100) as f64
    );
    assert_eq!(
        m["ringrelay_output_connected{feed=\"f\",output=\"siem\"}"],
        0.0
    );
    assert_eq!(
        m["ringrelay_output_lag_records{feed=\"f\",output=\"siem\"}"],
        100.0
    );
}

#[test]
fn overrun_counts_exactly_what_the_output_never_received() {
    let dir = TempDir::new("admin-overrun");
    let siem = Sink::new(false);
    let cfg = one_feed_config_with_admin(dir.path(), siem.addr, "max_record_bytes = \"4KiB\"", "");
    // The smallest ring the config allows, 1 MiB: ~4,000 records of 200 B.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("128MiB", "1MiB");
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    let n = 15_000;
    send_records(relay.addr("f"), 0..n, LEN);
    siem.set_up(true);
    let key = "ringrelay_output_records_overrun_lost_total{feed=\"f\",output=\"siem\"}";
    let ok = wait_until(Duration::from_secs(30), || {
        let m = metrics(admin);
        m["ringrelay_output_lag_records{feed=\"f\",output=\"siem\"}"] == 0.0 && m[key] > 0.0
    });
    assert!(ok, "{}", relay.log_text());
    let lost = metrics(admin)[key] as u64;
    // Written to the socket is not yet read by the sink.
    wait_until(Duration::from_secs(10), || siem.count() as u64 + lost >= n);
    let counts = siem.counts();
    assert!(counts.values().all(|&c| c == 1), "a record arrived twice");
    assert_eq!(
        counts.len() as u64 + lost,
        n,
        "received + lost must be all that was sent"
    );
    // What arrived is the newest records, contiguous up to the last one.
    assert!((n - counts.len() as u64..n).all(|i| counts.contains_key(&i)));
    let log = relay.log_text();
    assert_eq!(log.matches("event=output_overrun ").count(), 1, "{log}");
    assert_eq!(
        log.matches("event=output_overrun_ended ").count(),
        1,
        "{log}"
    );
    let ended = log
        .lines()
        .find(|l| l.contains("event=output_overrun_ended "))
        .unwrap_or_default();
    assert!(ended.contains(&format!("lost={lost} ")), "{ended}");
}

#[test]
fn rate_limited_output_delivers_within_five_percent_of_its_rate() {
    let dir = TempDir::new("admin-rate");
    let siem = Sink::new(true);
    let cfg = one_feed_config_with_admin(dir.path(), siem.addr, "", "rate_limit_eps = 2000");
    let relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    send_records(relay.addr("f"), 0..20_000, LEN);
    // Measure in the middle of the run, away from the initial burst.
    assert!(wait_until(Duration::from_secs(10), || siem.count() >= 1000));
    let (c0, t0) = (siem.count(), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let (c1, t1) = (siem.count(), Instant::now());
    let rate = (c1 - c0) as f64 / (t1 - t0).as_secs_f64();
    assert!(
        (1900.0..=2100.0).contains(&rate),
        "rate {rate:.0}/s, limit 2000/s"
    );
    let m = metrics(admin);
    assert!(m["ringrelay_output_rate_limited_seconds_total{feed=\"f\",output=\"siem\"}"] > 1.0);
    assert_eq!(
        m["ringrelay_feed_records_received_total{feed=\"f\"}"],
        20_000.0
    );
}

#[test]
fn ready_turns_503_only_when_a_block_ring_is_full_and_back_when_it_drains() {
    let dir = TempDir::new("admin-ready-block");
    let siem = Sink::new(false);
    let cfg = one_feed_config_with_admin(
        dir.path(),
        siem.addr,
        "max_record_bytes = \"4KiB\"\nwhen_full = \"block\"",
        "",
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("128MiB", "1MiB");
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    // SIEM down, ring empty: ready (the ring takes records).
    assert_eq!(get(admin, "/ready").0, 200);
    // More than the ring holds, sent while the SIEM is down: the block ring fills.
    let addr = relay.addr("f");
    let sender = std::thread::spawn(move || send_records(addr, 0..8_000, LEN));
    let ok = wait_until(Duration::from_secs(15), || get(admin, "/ready").0 == 503);
    assert!(ok, "/ready stayed 200 with a full block ring");
    assert!(get(admin, "/ready").1.contains("ring is full"));
    // The SIEM returns, the ring drains: ready again, and nothing was lost.
    siem.set_up(true);
    let ok = wait_until(Duration::from_secs(20), || siem.count() >= 8_000);
    assert!(ok, "{} of 8000 arrived", siem.count());
    sender.join().unwrap();
    assert!(wait_until(Duration::from_secs(5), || get(admin, "/ready")
        .0
        == 200));
}

#[test]
fn metrics_tell_a_silent_feed_the_oldest_record_evictions_epoch_and_process_basics() {
    let dir = TempDir::new("admin-operator-metrics");
    let siem = Sink::new(true);
    let cfg = one_feed_config_with_admin(dir.path(), siem.addr, "max_record_bytes = \"4KiB\"", "");
    // An instance name with every character `check` allows besides letters and digits: the
    // label carries it as is (a quote or a backslash is refused by the config, tests/check.rs).
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("128MiB", "1MiB")
        .replace("[relay]\n", "[relay]\ninstance = 'relay-a.b_1'\n");
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // More than the 1 MiB ring holds: some records are evicted (after delivery).
    send_records(relay.addr("f"), 0..8_000, LEN);
    assert!(wait_until(Duration::from_secs(20), || siem.count() >= 8_000));
    let m = metrics(admin);
    let f = |k: &str| m[&format!("{k}{{feed=\"f\"}}")];
    let last = f("ringrelay_feed_last_record_timestamp_seconds");
    assert!(last >= before - 1.0 && last <= before + 60.0, "{last}");
    assert!(f("ringrelay_ring_oldest_record_age_seconds") >= 0.0);
    assert!(f("ringrelay_ring_records_evicted_total") > 0.0);
    assert_eq!(m["ringrelay_epoch{instance_name=\"relay-a.b_1\"}"], 1.0);
    assert!(m["process_resident_memory_bytes{}"] > 0.0);
    assert!(m["process_open_fds{}"] >= 5.0);
    assert!(m["process_cpu_seconds_total{}"] >= 0.0);
    assert!(m["process_start_time_seconds{}"] >= before - 60.0);
    // HEAD: the status and headers of GET, no body.
    let (status, body) = http(admin, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(
        http(admin, b"HEAD /ready HTTP/1.1\r\nHost: x\r\n\r\n").0,
        200
    );
}

#[test]
fn one_feeds_connection_churn_does_not_hide_another_feeds_connection_lines() {
    let dir = TempDir::new("admin-log-limits");
    let siem = Sink::new(true);
    let cfg = one_feed_config(dir.path(), siem.addr, "", "");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "\n[[feed]]\nname = \"quiet\"\ninput = { kind = \"tcp\", listen = \"127.0.0.1:0\" }\nbuffer = { size = \"128MiB\" }\n\n[[feed.output]]\nname = \"file\"\nkind = \"file\"\npath = \"out.log\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, 2);
    // 100 short connections on feed f: its own log limit is spent.
    for _ in 0..100 {
        drop(TcpStream::connect(relay.addr("f")).unwrap());
    }
    wait_until(Duration::from_secs(5), || {
        relay
            .log_text()
            .matches("event=connection_closed feed=f ")
            .count()
            >= 20
    });
    // One connection on the other feed is still logged, open and closed.
    send_records(relay.addr("quiet"), 0..10, LEN);
    assert!(
        relay.wait_log("event=connection_open feed=quiet", Duration::from_secs(5)),
        "{}",
        relay.log_text()
    );
    assert!(relay.wait_log("event=connection_closed feed=quiet", Duration::from_secs(5)));
}

#[test]
fn an_http_connection_closed_line_counts_the_records_its_200s_accepted() {
    let dir = TempDir::new("admin-http-closed");
    let siem = Sink::new(true);
    let cfg = one_feed_config(dir.path(), siem.addr, "", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "input = { kind = \"tcp\", listen = \"127.0.0.1:0\" }",
        "input = { kind = \"http\", listen = \"127.0.0.1:0\" }",
    );
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, 1);
    let body = "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n";
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, _) = http(relay.addr("f"), req.as_bytes());
    assert_eq!(status, 200);
    assert!(relay.wait_log("event=connection_closed", Duration::from_secs(5)));
    let log = relay.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("event=connection_closed"))
        .unwrap();
    assert!(line.contains(" records=3 "), "{line}");
}
