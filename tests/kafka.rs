//! The Kafka output (issue 20) against a real Kafka-protocol broker on loopback, with the real
//! binary: tansu 0.6.0 with sqlite storage, started and killed by the tests, and what reached
//! the topic read back by an independent client, confluent-kafka (librdkafka), not by our own
//! decoder. Both are installed by `tests/kafka/install.sh` (the tests run it themselves when a
//! piece is missing). Clean runs with and without gzip, a broker SIGKILLed mid-stream, a relay
//! SIGKILLed mid-batch, a topic that does not exist yet, a broker that is down at start.

mod common;
#[path = "common/kafka_proxy.rs"]
mod kafka_proxy;
#[path = "common/kafka.rs"]
mod kafkakit;
#[path = "common/tls.rs"]
mod tlskit;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use kafkakit::*;

const LEN: usize = 100;
const TOPIC: &str = "ringrelay";

/// Prints, once per run, what the tests ran against.
fn banner(broker: &Broker) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "kafka: tested against {}, verified by {}",
            broker.version(),
            verifier_version()
        );
    });
}

/// The output's settings; each test changes what it is about.
struct Out<'a> {
    topic: &'a str,
    compression: &'a str,
    key: &'a str,
    max_batch_bytes: &'a str,
    request_timeout: &'a str,
    alert_after: &'a str,
    /// More keys of the output (`sasl`, `tls`, ...).
    extra: &'a str,
}

impl Default for Out<'_> {
    fn default() -> Self {
        Out {
            topic: TOPIC,
            compression: "none",
            key: "none",
            max_batch_bytes: "64KiB",
            request_timeout: "10s",
            alert_after: "2s",
            extra: "",
        }
    }
}

/// A config with one feed `f` (tcp input) and one kafka output `kafka` to `broker`; admin on
/// an ephemeral port.
fn relay_config(dir: &Path, broker: SocketAddr, out: &Out) -> PathBuf {
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "128MiB" }}

[[feed.output]]
name = "kafka"
kind = "kafka"
brokers = ["{broker}"]
topic = "{topic}"
compression = "{compression}"
key = "{key}"
max_batch_bytes = "{max_batch_bytes}"
max_batch_age = "100ms"
request_timeout = "{request_timeout}"
alert_after = "{alert_after}"
{extra}
"#,
        data = dir.join("data").display(),
        topic = out.topic,
        compression = out.compression,
        key = out.key,
        max_batch_bytes = out.max_batch_bytes,
        request_timeout = out.request_timeout,
        alert_after = out.alert_after,
        extra = out.extra,
    );
    let p = dir.join("ringrelay.toml");
    std::fs::write(&p, text).expect("write config");
    p
}

/// A broker (printing what the tests run against, once) with topic [`TOPIC`] of 3 partitions.
fn broker_with_topic() -> Broker {
    let broker = Broker::start();
    banner(&broker);
    broker.create_topic(TOPIC, 3);
    broker
}

/// The relay on `cfg` (one feed), and its admin address.
fn start_relay(cfg: &Path) -> (RelayProc, SocketAddr) {
    let relay = RelayProc::start(cfg, 1);
    let admin = admin_addr(&relay);
    (relay, admin)
}

/// A metric of output `kafka` of feed `f`, if /metrics has it.
fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    metrics(admin)
        .get(&format!("{name}{{feed=\"f\",output=\"kafka\"}}"))
        .copied()
}

fn lag(admin: SocketAddr) -> Option<f64> {
    metric(admin, "ringrelay_output_lag_records")
}

fn delivered(admin: SocketAddr) -> f64 {
    metric(admin, "ringrelay_output_records_delivered_total").unwrap_or(0.0)
}

/// Waits (bounded) until the output has nothing left to deliver: records sent with
/// `send_records` are in the ring once it returns, so a lag of 0 means the relay holds them
/// all acknowledged by the broker. The topic is then read to check that.
fn wait_caught_up(relay: &RelayProc, admin: SocketAddr, limit: Duration) {
    let ok = wait_until(limit, || lag(admin) == Some(0.0));
    assert!(
        ok,
        "lag did not reach 0 within {limit:?} (lag {:?}); log:\n{}",
        lag(admin),
        relay.log_text()
    );
}

/// What the verifier read, by record number and by partition.
struct Read {
    /// Copies of each record number.
    counts: HashMap<u64, u32>,
    /// Per partition, `(offset, record number)` in offset order.
    partitions: BTreeMap<i32, Vec<(i64, u64)>>,
    total: usize,
}

impl Read {
    fn of(records: &[(i32, i64, Vec<u8>)]) -> Read {
        let mut r = Read {
            counts: HashMap::new(),
            partitions: BTreeMap::new(),
            total: records.len(),
        };
        for (p, off, value) in records {
            let n = record_number(value).unwrap_or_else(|| {
                panic!(
                    "partition {p} offset {off}: not an intact record: {:?}",
                    String::from_utf8_lossy(value)
                )
            });
            *r.counts.entry(n).or_default() += 1;
            r.partitions.entry(*p).or_default().push((*off, n));
        }
        for recs in r.partitions.values_mut() {
            recs.sort_unstable();
        }
        r
    }

    /// `partition:records` for each partition.
    fn spread(&self) -> String {
        let v: Vec<String> = self
            .partitions
            .iter()
            .map(|(p, r)| format!("{p}:{}", r.len()))
            .collect();
        v.join(" ")
    }

    /// Records `0..n` each exactly once and nothing else.
    fn assert_exactly_once(&self, n: u64) {
        let missing: Vec<u64> = (0..n).filter(|i| !self.counts.contains_key(i)).collect();
        let twice: Vec<(u64, u32)> = {
            let mut v: Vec<(u64, u32)> = self
                .counts
                .iter()
                .filter(|(_, &c)| c > 1)
                .map(|(&k, &c)| (k, c))
                .collect();
            v.sort_unstable();
            v
        };
        let extra: Vec<u64> = self.counts.keys().filter(|&&k| k >= n).copied().collect();
        assert!(
            missing.is_empty() && twice.is_empty() && extra.is_empty(),
            "{} missing (first {:?}), {} duplicated (first {:?}), {} unexpected (first {:?})",
            missing.len(),
            &missing[..missing.len().min(10)],
            twice.len(),
            &twice[..twice.len().min(10)],
            extra.len(),
            &extra[..extra.len().min(10)]
        );
        assert_eq!(self.total as u64, n);
    }

    /// Within each partition the record numbers increase with the offset (ring order).
    fn assert_ring_order(&self) {
        for (p, recs) in &self.partitions {
            if let Some(w) = recs.windows(2).find(|w| w[1].1 <= w[0].1) {
                panic!(
                    "partition {p}: record {} at offset {} follows record {} at offset {}",
                    w[1].1, w[1].0, w[0].1, w[0].0
                );
            }
        }
    }
}

fn triples(records: Vec<Consumed>) -> Vec<(i32, i64, Vec<u8>)> {
    records
        .into_iter()
        .map(|r| (r.partition, r.offset, r.value))
        .collect()
}

/// The `producer_id=` of each `event=kafka_producer` line of `relay`.
fn producer_ids(relay: &RelayProc) -> Vec<String> {
    relay
        .log_text()
        .lines()
        .filter(|l| l.contains("event=kafka_producer"))
        .map(|l| field(l, "producer_id"))
        .collect()
}

/// The harness itself, before any relay: what confluent-kafka produces to tansu, the verifier
/// reads back, per partition in order; it is still there after a SIGKILL and a restart on the
/// same sqlite file; and a topic that does not exist is an error, not an empty read.
#[test]
fn the_verifier_reads_back_what_confluent_kafka_produced_also_after_a_broker_restart() {
    let mut broker = Broker::start();
    banner(&broker);
    broker.create_topic("harness", 3);
    let n = 3000u64;
    let values: Vec<Vec<u8>> = (0..n).map(|i| record(i, LEN)).collect();
    let t = Instant::now();
    produce(broker.addr(), "harness", &values, &[0, 1, 2]);
    let produced = t.elapsed();
    let t = Instant::now();
    let read = Read::of(&consume(broker.addr(), "harness"));
    eprintln!(
        "harness: {n} records produced in {produced:?}, read back in {:?}; partitions {}",
        t.elapsed(),
        read.spread()
    );
    read.assert_exactly_once(n);
    read.assert_ring_order();
    for (p, recs) in &read.partitions {
        assert_eq!(recs.len() as u64, n / 3, "partition {p}");
        assert!(
            recs.iter().all(|&(_, i)| i % 3 == *p as u64),
            "partition {p}"
        );
        let offsets: Vec<i64> = recs.iter().map(|&(o, _)| o).collect();
        assert_eq!(
            offsets,
            (0..(n / 3) as i64).collect::<Vec<_>>(),
            "partition {p}"
        );
    }

    let t = Instant::now();
    broker.restart();
    eprintln!("harness: tansu restarted (SIGKILL) in {:?}", t.elapsed());
    assert_eq!(broker.starts, 2);
    let again = Read::of(&consume(broker.addr(), "harness"));
    again.assert_exactly_once(n);
    assert_eq!(again.partitions, read.partitions);

    let absent = try_consume(broker.addr(), "absent", Duration::from_secs(10));
    assert!(absent.is_err(), "a topic never created read as {absent:?}");
    eprintln!(
        "harness: reading a topic never created: {}",
        absent.unwrap_err()
    );
}

fn clean_run(compression: &str) {
    const N: u64 = 20_000;
    let broker = broker_with_topic();
    let dir = TempDir::new(&format!("kafka-clean-{compression}"));
    let cfg = relay_config(
        dir.path(),
        broker.addr(),
        &Out {
            compression,
            ..Out::default()
        },
    );
    let (mut relay, admin) = start_relay(&cfg);
    let t = Instant::now();
    send_records(relay.addr("f"), 0..N, LEN);
    wait_caught_up(&relay, admin, Duration::from_secs(60));
    let took = t.elapsed();
    let keyed = consume_keyed(broker.addr(), TOPIC);
    let keys = keyed.iter().filter(|r| r.key.is_some()).count();
    assert_eq!(keys, 0, "key = \"none\", but {keys} records have a key");
    let read = Read::of(&triples(keyed));
    let sent = metric(admin, "ringrelay_output_bytes_sent_total").unwrap_or(0.0);
    eprintln!(
        "clean run, compression {compression}: {N} records delivered in {took:?}; partitions {}; \
         {sent} bytes sent; producer ids {:?}",
        read.spread(),
        producer_ids(&relay)
    );
    read.assert_exactly_once(N);
    read.assert_ring_order();
    assert!(
        read.partitions.len() > 1,
        "key = \"none\" is a sticky partitioner over the 3 partitions, but only {} was used",
        read.spread()
    );
    assert_eq!(delivered(admin), N as f64);
    assert!(relay.log_has("event=output_connected") && relay.log_has("output=kafka"));
    assert_eq!(producer_ids(&relay).len(), 1, "{}", relay.log_text());
    // The records are 100 bytes of a repeating pattern: gzip shrinks them many times over.
    let raw = (N as usize * LEN) as f64;
    match compression {
        "gzip" => assert!(sent < raw / 3.0, "gzip: {sent} bytes sent for {raw}"),
        _ => assert!(sent > raw, "none: {sent} bytes sent for {raw}"),
    }
    assert!(!relay.log_has("event=output_down"), "{}", relay.log_text());
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn a_clean_run_delivers_every_record_exactly_once_in_order_per_partition() {
    clean_run("none");
}

#[test]
fn a_clean_run_with_gzip_delivers_every_record_exactly_once_in_order_per_partition() {
    clean_run("gzip");
}

#[test]
fn a_broker_restarted_mid_stream_loses_nothing_and_duplicates_nothing() {
    const N: u64 = 100_000;
    let mut broker = broker_with_topic();
    let dir = TempDir::new("kafka-broker-restart");
    let cfg = relay_config(
        dir.path(),
        broker.addr(),
        &Out {
            max_batch_bytes: "16KiB",
            ..Out::default()
        },
    );
    let (relay, admin) = start_relay(&cfg);
    let input = relay.addr("f");
    let sender = thread::spawn(move || send_records(input, 0..N, LEN));
    // Mid-stream: some delivered, more to go.
    let started = wait_until(Duration::from_secs(30), || delivered(admin) >= 2000.0);
    assert!(started, "no delivery; log:\n{}", relay.log_text());
    broker.kill();
    let at_kill = delivered(admin);
    eprintln!("broker restart: tansu SIGKILLed with {at_kill} records delivered");
    assert!(
        at_kill < N as f64,
        "everything was delivered before the broker was killed: not mid-stream"
    );
    let down = relay.wait_log("event=output_down", Duration::from_secs(15));
    assert!(down, "no output_down; log:\n{}", relay.log_text());
    // The outage itself: a second without the broker.
    thread::sleep(Duration::from_secs(1));
    broker.start_again();
    sender.join().expect("sender");
    wait_caught_up(&relay, admin, Duration::from_secs(90));
    let read = Read::of(&consume(broker.addr(), TOPIC));
    let dropped = metric(admin, "ringrelay_output_kafka_duplicates_dropped_total");
    let resets = metric(admin, "ringrelay_output_kafka_producer_resets_total");
    eprintln!(
        "broker restart: {} records read; partitions {}; producer ids {:?}; batches the broker \
         dropped as duplicates {dropped:?}, producer resets {resets:?}",
        read.total,
        read.spread(),
        producer_ids(&relay)
    );
    read.assert_exactly_once(N);
    read.assert_ring_order();
    assert!(relay.log_has("event=output_connected"));
}

#[test]
fn a_relay_killed_mid_batch_resends_from_its_persisted_cursor_and_duplicates_only_what_followed_it()
{
    let r = stop_relay_mid_delivery("kill", |relay| relay.kill9());
    // The second copies are exactly the records the broker held at the kill from the persisted
    // cursor on: the answered batches since the last checkpoint, and the one in flight if the
    // broker had appended it (README, Kafka output, "Duplicates").
    let expected: Vec<u64> = {
        let mut v: Vec<u64> = r
            .originals
            .counts
            .keys()
            .filter(|&&n| n >= r.cursor)
            .copied()
            .collect();
        v.sort_unstable();
        v
    };
    assert_eq!(
        r.duplicated, expected,
        "the duplicates are not the records from the persisted cursor {} to the kill",
        r.cursor
    );
    // The checkpoint is at most one checkpoint_interval (1 s) old: what the relay had
    // acknowledged when the test began waiting for it was persisted before the kill.
    assert!(
        r.cursor as f64 >= r.acked_before_checkpoint,
        "persisted cursor {} behind {} acknowledged a checkpoint earlier",
        r.cursor,
        r.acked_before_checkpoint
    );
}

#[test]
fn a_relay_stopped_mid_batch_duplicates_at_most_the_batch_in_flight() {
    let r = stop_relay_mid_delivery("term", |relay| {
        let (code, took) = relay.terminate();
        eprintln!("relay stop: SIGTERM exit {code:?} in {took:?}");
        assert_eq!(code, Some(0), "log:\n{}", relay.log_text());
    });
    // A clean stop checkpoints first: only the batch in flight can come twice.
    let bound = (BATCH_BYTES / LEN + 1) as u64;
    assert!(
        r.duplicated.len() as u64 <= bound,
        "{} duplicates, more than one batch of {BATCH_BYTES} bytes ({bound} records)",
        r.duplicated.len()
    );
    assert!(
        r.duplicated.iter().all(|&n| n >= r.cursor),
        "a record below the cursor persisted at the stop was sent again"
    );
}

/// `max_batch_bytes` of the relay-stop tests: small batches, so that delivery takes seconds
/// (one request at a time) and a stop lands in the middle of it.
const BATCH_BYTES: usize = 1 << 10;

/// What [`stop_relay_mid_delivery`] measured.
struct Stopped {
    /// The relay's own count of acknowledged records when the test began waiting for a
    /// checkpoint to persist it.
    acked_before_checkpoint: f64,
    /// The output's cursor persisted in the ring at the stop (`ringrelay inspect`).
    cursor: u64,
    /// The topic at the stop.
    originals: Read,
    /// The record numbers that are twice in the topic in the end, sorted.
    duplicated: Vec<u64>,
}

/// Sends N records into the ring, stops the relay with `stop` in the middle of their delivery
/// (after a checkpoint has persisted some progress), starts it again on the same config and
/// data, and checks what holds for any stop: every record at least once and at most twice,
/// each second copy appended after its original (above the partition's high watermark at the
/// stop), in ring order, under a new producer id.
fn stop_relay_mid_delivery(what: &str, stop: impl FnOnce(&mut RelayProc)) -> Stopped {
    const N: u64 = 100_000;
    let broker = broker_with_topic();
    let dir = TempDir::new(&format!("kafka-relay-{what}"));
    let data = dir.path().join("data");
    let cfg = relay_config(
        dir.path(),
        broker.addr(),
        &Out {
            max_batch_bytes: "1KiB",
            ..Out::default()
        },
    );
    let (mut relay, admin) = start_relay(&cfg);
    // Everything into the ring first (the ring survives a SIGKILL; a record the input had
    // not taken would not), delivery going on meanwhile.
    send_records(relay.addr("f"), 0..N, LEN);
    let started = wait_until(Duration::from_secs(30), || delivered(admin) >= 1000.0);
    assert!(started, "no delivery; log:\n{}", relay.log_text());
    // Wait for a checkpoint to persist what was acknowledged by now (checkpoint_interval: 1 s).
    let acked_before_checkpoint = delivered(admin);
    let t = Instant::now();
    let persisted = wait_until(Duration::from_secs(5), || {
        persisted_cursor(&data) as f64 >= acked_before_checkpoint
    });
    assert!(
        persisted,
        "the cursor persisted in the ring stayed at {} with {acked_before_checkpoint} acknowledged",
        persisted_cursor(&data)
    );
    let checkpoint_wait = t.elapsed();
    let acked_at_stop = delivered(admin);
    stop(&mut relay);
    let first_pids = producer_ids(&relay);
    let cursor = persisted_cursor(&data);
    // What the topic holds at the stop: the originals.
    let before = consume(broker.addr(), TOPIC);
    let mut high: HashMap<i32, i64> = HashMap::new();
    for (p, off, _) in &before {
        let h = high.entry(*p).or_default();
        *h = (*h).max(off + 1);
    }
    let originals = Read::of(&before);
    eprintln!(
        "relay {what}: stopped with {acked_at_stop} acknowledged by its count ({acked_before_checkpoint} \
         persisted by a checkpoint {checkpoint_wait:?} later); persisted cursor {cursor}; {} in the \
         topic ({})",
        originals.total,
        originals.spread()
    );
    assert!(
        (originals.total as u64) < N,
        "everything was delivered before the stop: not mid-delivery"
    );
    originals.assert_ring_order();
    let below: Vec<u64> = (0..cursor)
        .filter(|n| !originals.counts.contains_key(n))
        .collect();
    assert!(
        below.is_empty(),
        "{} records below the persisted cursor {cursor} are not in the topic (first {:?})",
        below.len(),
        &below[..below.len().min(10)]
    );

    let (relay, admin) = start_relay(&cfg);
    wait_caught_up(&relay, admin, Duration::from_secs(120));
    let all = consume(broker.addr(), TOPIC);
    let read = Read::of(&all);
    let missing = (0..N).filter(|i| !read.counts.contains_key(i)).count();
    let mut duplicated: Vec<u64> = read
        .counts
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&n, _)| n)
        .collect();
    duplicated.sort_unstable();
    let second_pids = producer_ids(&relay);
    eprintln!(
        "relay {what}: {} records read ({}), {missing} missing, {} duplicates ({:?}..={:?}); \
         one batch of {BATCH_BYTES} bytes = {} records; producer ids {first_pids:?} then \
         {second_pids:?}",
        read.total,
        read.spread(),
        duplicated.len(),
        duplicated.first(),
        duplicated.last(),
        BATCH_BYTES / LEN + 1
    );
    assert_eq!(missing, 0, "records lost across the stop");
    assert!(read.counts.keys().all(|&k| k < N));
    assert!(
        read.counts.values().all(|&c| c <= 2),
        "a record three times"
    );
    assert_eq!(read.total as u64, N + duplicated.len() as u64);
    // The second copies came from the restarted relay: each duplicate has one copy below the
    // high watermark of its partition at the stop and one above.
    let mut copies: HashMap<u64, (u32, u32)> = HashMap::new();
    for (p, off, v) in &all {
        let n = record_number(v).unwrap();
        let e = copies.entry(n).or_default();
        if *off < high.get(p).copied().unwrap_or(0) {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    for (n, (old, new)) in &copies {
        assert!(
            *old <= 1 && *new <= 1,
            "record {n}: {old} copies before the stop, {new} after"
        );
    }
    // Within each partition, the records the restarted relay appended are in ring order too.
    for (p, recs) in &read.partitions {
        let h = high.get(p).copied().unwrap_or(0);
        let after: Vec<u64> = recs.iter().filter(|r| r.0 >= h).map(|r| r.1).collect();
        assert!(
            after.windows(2).all(|w| w[0] < w[1]),
            "partition {p}: the records sent after the restart are not in ring order"
        );
    }
    assert!(
        !second_pids.is_empty() && second_pids.iter().all(|p| !first_pids.contains(p)),
        "the restarted relay should produce under a new producer id: {first_pids:?} then \
         {second_pids:?}"
    );
    Stopped {
        acked_before_checkpoint,
        cursor,
        originals,
        duplicated,
    }
}

/// The `next seq` of output `kafka`'s cursor persisted in the ring under `data`, per
/// `ringrelay inspect` (the metadata of the last checkpoint; readable while the relay runs).
fn persisted_cursor(data: &Path) -> u64 {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringrelay"))
        .arg("inspect")
        .arg(data)
        .output()
        .expect("run inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("cursor kafka "))
        .filter_map(|r| r.split("next seq ").nth(1)?.split_whitespace().next())
        .find_map(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cursor kafka in ringrelay inspect:\n{text}"))
}

#[test]
fn an_unknown_topic_is_an_output_down_with_an_alert_and_delivery_resumes_once_it_exists() {
    const N: u64 = 2000;
    const ABSENT: &str = "not-yet";
    let broker = Broker::start();
    banner(&broker);
    let dir = TempDir::new("kafka-unknown-topic");
    let cfg = relay_config(
        dir.path(),
        broker.addr(),
        &Out {
            topic: ABSENT,
            ..Out::default()
        },
    );
    let (relay, admin) = start_relay(&cfg);
    send_records(relay.addr("f"), 0..N, LEN);
    let down = relay.wait_log("event=output_down", Duration::from_secs(15));
    assert!(down, "no output_down; log:\n{}", relay.log_text());
    let log = relay.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("event=output_down"))
        .unwrap();
    eprintln!("unknown topic: {line}");
    assert!(line.contains("output=kafka"), "{line}");
    assert!(
        line.contains(ABSENT),
        "the error does not name the topic: {line}"
    );
    let alerted = relay.wait_log("event=output_down_alert", Duration::from_secs(10));
    assert!(
        alerted,
        "no alert after alert_after; log:\n{}",
        relay.log_text()
    );
    // The relay's Metadata requests did not create it (tansu would, if asked to).
    let absent = try_consume(broker.addr(), ABSENT, Duration::from_secs(10));
    assert!(absent.is_err(), "the topic exists: {absent:?}");
    assert_eq!(lag(admin), Some(N as f64));
    assert!(!dir.path().join("data/f.kafka.deadletter").exists());

    broker.create_topic(ABSENT, 3);
    let t = Instant::now();
    wait_caught_up(&relay, admin, Duration::from_secs(60));
    let took = t.elapsed();
    let read = Read::of(&consume(broker.addr(), ABSENT));
    eprintln!(
        "unknown topic: {} records read ({}), delivered {took:?} after the topic was created",
        read.total,
        read.spread()
    );
    read.assert_exactly_once(N);
    read.assert_ring_order();
    assert!(relay.wait_log("event=output_recovered", Duration::from_secs(10)));
    assert!(!dir.path().join("data/f.kafka.deadletter").exists());
    assert_eq!(
        metric(admin, "ringrelay_output_records_dead_lettered_total"),
        Some(0.0)
    );
}

#[test]
fn a_broker_that_is_down_at_start_is_waited_for() {
    const N: u64 = 5000;
    let mut broker = broker_with_topic();
    broker.kill();
    let dir = TempDir::new("kafka-down-at-start");
    let cfg = relay_config(dir.path(), broker.addr(), &Out::default());
    let (relay, admin) = start_relay(&cfg);
    send_records(relay.addr("f"), 0..N, LEN);
    let down = relay.wait_log("event=output_down", Duration::from_secs(15));
    assert!(down, "no output_down; log:\n{}", relay.log_text());
    assert_eq!(lag(admin), Some(N as f64), "the records wait in the ring");
    broker.start_again();
    let t = Instant::now();
    wait_caught_up(&relay, admin, Duration::from_secs(60));
    let took = t.elapsed();
    let read = Read::of(&consume(broker.addr(), TOPIC));
    eprintln!(
        "down at start: {} records read ({}), delivered {took:?} after the broker started",
        read.total,
        read.spread()
    );
    read.assert_exactly_once(N);
    read.assert_ring_order();
    assert!(relay.log_has("event=output_connected"));
}

#[test]
fn key_feed_puts_the_whole_feed_in_the_partition_librdkafkas_murmur2_picks_for_its_name() {
    const N: u64 = 5000;
    let broker = Broker::start();
    banner(&broker);
    // 7 partitions: murmur2("f") % 7 is 4 (% 3 would be 0, which a relay that always picked
    // the first partition would also hit).
    broker.create_topic(TOPIC, 7);
    broker.create_topic("probe", 7);
    let dir = TempDir::new("kafka-key-feed");
    let cfg = relay_config(
        dir.path(),
        broker.addr(),
        &Out {
            key: "feed",
            max_batch_bytes: "16KiB",
            ..Out::default()
        },
    );
    let (relay, admin) = start_relay(&cfg);
    send_records(relay.addr("f"), 0..N, LEN);
    wait_caught_up(&relay, admin, Duration::from_secs(60));
    let keyed = consume_keyed(broker.addr(), TOPIC);
    let want = librdkafka_partition(broker.addr(), "probe", b"f");
    assert_ne!(
        want, 0,
        "the probe should tell the partitioner from a default of 0"
    );
    let read = Read::of(&triples(keyed.clone()));
    eprintln!(
        "key = feed: {} records in partitions {}; librdkafka's murmur2 puts key \"f\" in {want}",
        read.total,
        read.spread()
    );
    read.assert_exactly_once(N);
    read.assert_ring_order();
    let wrong_key = keyed
        .iter()
        .find(|r| r.key.as_deref() != Some(b"f".as_slice()));
    assert!(
        wrong_key.is_none(),
        "a record not keyed \"f\": {wrong_key:?}"
    );
    assert_eq!(
        read.partitions.keys().copied().collect::<Vec<_>>(),
        [want],
        "the feed's records are not all in murmur2(\"f\") % 7"
    );
}

/// A batch the broker appended but did not answer in time (SIGSTOP with the Produce request
/// in its socket: it is processed at SIGCONT, after the relay gave up on that connection) is
/// sent again with the same producer id and sequence, and the broker drops the second copy
/// (DUPLICATE_SEQUENCE_NUMBER): exactly once, within one process.
#[test]
fn a_batch_appended_but_unanswered_is_sent_again_and_dropped_by_the_broker_as_a_duplicate() {
    const N: u64 = 50_000;
    let broker = broker_with_topic();
    let dir = TempDir::new("kafka-unanswered");
    let cfg = relay_config(
        dir.path(),
        broker.addr(),
        &Out {
            max_batch_bytes: "16KiB",
            request_timeout: "2s",
            ..Out::default()
        },
    );
    let (relay, admin) = start_relay(&cfg);
    let input = relay.addr("f");
    let sender = thread::spawn(move || send_records(input, 0..N, LEN));
    let started = wait_until(Duration::from_secs(30), || delivered(admin) >= 2000.0);
    assert!(started, "no delivery; log:\n{}", relay.log_text());
    broker.pause();
    let at_pause = delivered(admin);
    let t = Instant::now();
    let timed_out = relay.wait_log("event=output_down", Duration::from_secs(15));
    let noticed = t.elapsed();
    assert!(
        timed_out,
        "no output_down while tansu was stopped; log:\n{}",
        relay.log_text()
    );
    broker.resume();
    sender.join().expect("sender");
    wait_caught_up(&relay, admin, Duration::from_secs(90));
    let read = Read::of(&consume(broker.addr(), TOPIC));
    let dropped = metric(admin, "ringrelay_output_kafka_duplicates_dropped_total");
    let resets = metric(admin, "ringrelay_output_kafka_producer_resets_total");
    let log = relay.log_text();
    let down = log
        .lines()
        .find(|l| l.contains("event=output_down"))
        .unwrap_or("");
    eprintln!(
        "unanswered: tansu SIGSTOPped with {at_pause} delivered; output_down after {noticed:?}: \
         {down}\nunanswered: {} records read ({}); batches dropped by the broker as duplicates \
         {dropped:?}, producer resets {resets:?}, producer ids {:?}",
        read.total,
        read.spread(),
        producer_ids(&relay)
    );
    assert!(
        at_pause < N as f64,
        "everything was delivered before the pause"
    );
    read.assert_exactly_once(N);
    read.assert_ring_order();
    assert!(
        dropped.is_some_and(|d| d >= 1.0),
        "the batch in flight at the pause was not answered as a duplicate: dropped {dropped:?}"
    );
    assert_eq!(producer_ids(&relay).len(), 1, "{log}");
}

/// Sends records `range` and waits until the output has delivered them all.
fn deliver(relay: &RelayProc, admin: SocketAddr, range: std::ops::Range<u64>) {
    send_records(relay.addr("f"), range, LEN);
    wait_caught_up(relay, admin, Duration::from_secs(60));
}

#[test]
fn a_leader_unavailable_for_a_while_pauses_delivery_and_its_resends_are_dropped_as_duplicates() {
    const N: u64 = 20_000;
    let broker = broker_with_topic();
    // Between the relay and tansu: Produce answered NOT_LEADER_OR_FOLLOWER after the broker
    // appended the batch, for 1.5 s.
    let proxy = kafka_proxy::KafkaProxy::start(broker.addr());
    let dir = TempDir::new("kafka-not-leader");
    let cfg = relay_config(
        dir.path(),
        proxy.addr(),
        &Out {
            max_batch_bytes: "16KiB",
            alert_after: "30s",
            ..Out::default()
        },
    );
    let (mut relay, admin) = start_relay(&cfg);
    deliver(&relay, admin, 0..N / 2);
    proxy.set_not_leader(true);
    let input = relay.addr("f");
    let sender = thread::spawn(move || send_records(input, N / 2..N, LEN));
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || proxy.rewritten() >= 3),
        "the proxy answered NOT_LEADER_OR_FOLLOWER {} times",
        proxy.rewritten()
    );
    thread::sleep(Duration::from_millis(1500).saturating_sub(t.elapsed()));
    let lag_during = lag(admin).unwrap_or(0.0);
    proxy.set_not_leader(false);
    let window = t.elapsed();
    sender.join().unwrap();
    wait_caught_up(&relay, admin, Duration::from_secs(60));
    let caught_up = t.elapsed() - window;
    let dropped = metric(admin, "ringrelay_output_kafka_duplicates_dropped_total").unwrap_or(0.0);
    let read = Read::of(&consume(broker.addr(), TOPIC));
    eprintln!(
        "leader unavailable for {window:?}: {} Produce answers made NOT_LEADER_OR_FOLLOWER, lag \
         {lag_during} during it, {dropped} resends dropped by the broker as duplicates, all \
         delivered {:?} after it ended; partitions {}",
        proxy.rewritten(),
        caught_up,
        read.spread()
    );
    read.assert_exactly_once(N);
    read.assert_ring_order();
    assert!(
        lag_during > 0.0,
        "nothing waited while the leader was unavailable"
    );
    assert!(
        relay.log_has("NOT_LEADER_OR_FOLLOWER (code 6)"),
        "{}",
        relay.log_text()
    );
    // Each answer that said NOT_LEADER came for a batch the broker had appended: its resend
    // was a duplicate the broker dropped, not a second copy in the topic.
    assert!(dropped >= 1.0, "no resend was dropped as a duplicate");
    // Shorter than alert_after: an outage in the log, no alert.
    assert!(
        !relay.log_has("event=output_down_alert"),
        "{}",
        relay.log_text()
    );
    assert_eq!(producer_ids(&relay).len(), 1, "{}", relay.log_text());
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn a_record_the_broker_refuses_as_too_large_is_dead_lettered_and_the_rest_delivered() {
    const N: u64 = 2_000;
    let broker = broker_with_topic();
    let proxy = kafka_proxy::KafkaProxy::start(broker.addr());
    let dir = TempDir::new("kafka-dead-letter");
    let cfg = relay_config(dir.path(), proxy.addr(), &Out::default());
    let (mut relay, admin) = start_relay(&cfg);
    deliver(&relay, admin, 0..N / 2);
    // One record among the rest that the broker "refuses for its size".
    proxy.set_poison(b"POISON");
    let mut s = std::net::TcpStream::connect(relay.addr("f")).expect("connect");
    let mut bytes = Vec::new();
    for n in N / 2..N {
        bytes.extend_from_slice(&record(n, LEN));
        bytes.push(b'\n');
        if n == N / 2 + 500 {
            bytes.extend_from_slice(b"POISON a record the broker refuses\n");
        }
    }
    std::io::Write::write_all(&mut s, &bytes).expect("send");
    drop(s);
    wait_caught_up(&relay, admin, Duration::from_secs(60));
    let read = Read::of(&consume(broker.addr(), TOPIC));
    read.assert_exactly_once(N);
    read.assert_ring_order();
    let dead = std::fs::read_to_string(dir.path().join("data/f.kafka.deadletter"))
        .expect("the dead-letter file");
    let lines: Vec<&str> = dead.lines().collect();
    eprintln!(
        "dead letter: {} Produce requests refused (the batch halved down to the record), \
         file: {dead}",
        proxy.refused()
    );
    assert_eq!(lines.len(), 1, "{dead}");
    assert!(
        lines[0].contains("POISON a record the broker refuses")
            && lines[0].contains("MESSAGE_TOO_LARGE")
            && lines[0].contains("\"status\":10"),
        "{dead}"
    );
    assert_eq!(
        metric(admin, "ringrelay_output_records_dead_lettered_total"),
        Some(1.0)
    );
    // A batch of about 590 records is halved down to the one record: about log2(590) = 10
    // refusals, not one per record, nor log2 for every batch that follows.
    assert!(
        (2..=20).contains(&proxy.refused()),
        "{} refusals to find one record",
        proxy.refused()
    );
    assert!(relay.log_has("event=kafka_record_dead_lettered"));
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn scram_authenticates_and_a_wrong_password_is_an_output_down_with_an_alert_not_a_dead_letter() {
    const N: u64 = 3_000;
    let mut broker = broker_with_topic();
    let made = broker.tansu_cli(&[
        "user",
        "create",
        "relay",
        "s3cret",
        "--mechanism",
        "scram512",
    ]);
    assert!(made.status.success(), "tansu user create: {made:?}");
    broker.authentication = true;
    broker.restart();
    let sasl = |password: &str| {
        format!("sasl = {{ mechanism = \"scram-sha-512\", username = \"relay\", password = \"{password}\" }}")
    };

    // A wrong password: an outage with its reason and its alert; nothing dead-lettered.
    let dir = TempDir::new("kafka-scram");
    let wrong = sasl("wrong");
    let cfg = relay_config(
        dir.path(),
        broker.addr(),
        &Out {
            extra: &wrong,
            ..Out::default()
        },
    );
    let (mut relay, admin) = start_relay(&cfg);
    send_records(relay.addr("f"), 0..N, LEN);
    assert!(
        relay.wait_log("event=output_down_alert", Duration::from_secs(20)),
        "{}",
        relay.log_text()
    );
    assert!(relay.log_has("SASL SCRAM"), "{}", relay.log_text());
    assert_eq!(lag(admin), Some(N as f64));
    assert!(!dir.path().join("data/f.kafka.deadletter").exists());
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));

    // The right one: the records waiting in the ring are delivered.
    let right = sasl("s3cret");
    let cfg = relay_config(
        dir.path(),
        broker.addr(),
        &Out {
            extra: &right,
            ..Out::default()
        },
    );
    let (mut relay, admin) = start_relay(&cfg);
    wait_caught_up(&relay, admin, Duration::from_secs(60));
    let read = Read::of(&consume_as(broker.addr(), TOPIC, Some(("relay", "s3cret"))));
    read.assert_exactly_once(N);
    read.assert_ring_order();
    assert!(
        relay.log_has("event=output_recovered"),
        "{}",
        relay.log_text()
    );
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn tls_to_the_broker_is_verified_and_delivers_and_an_unknown_ca_is_a_failed_connect() {
    const N: u64 = 5_000;
    let broker = broker_with_topic();
    let dir = TempDir::new("kafka-tls");
    let pki = tlskit::Pki::new(dir.path());
    // tansu 0.6.0 takes --cert and --key but serves plaintext only: TLS ends in front of it.
    let front = kafka_proxy::TlsFront::start(broker.addr(), pki.server_config("server"));

    // A CA that did not sign the broker's certificate.
    let other = TempDir::new("kafka-tls-other");
    let other_pki = tlskit::Pki::new(other.path());
    let untrusted = format!(
        "tls = true\nca = \"{}\"",
        other_pki.path("ca.pem").display()
    );
    let cfg = relay_config(
        dir.path(),
        front.addr(),
        &Out {
            extra: &untrusted,
            ..Out::default()
        },
    );
    let (mut relay, admin) = start_relay(&cfg);
    send_records(relay.addr("f"), 0..N, LEN);
    assert!(
        relay.wait_log("TLS handshake failed", Duration::from_secs(10)),
        "{}",
        relay.log_text()
    );
    assert_eq!(lag(admin), Some(N as f64));
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));

    let trusted = format!("tls = true\nca = \"{}\"", pki.path("ca.pem").display());
    let cfg = relay_config(
        dir.path(),
        front.addr(),
        &Out {
            extra: &trusted,
            ..Out::default()
        },
    );
    let (mut relay, admin) = start_relay(&cfg);
    wait_caught_up(&relay, admin, Duration::from_secs(60));
    let read = Read::of(&consume(broker.addr(), TOPIC));
    read.assert_exactly_once(N);
    read.assert_ring_order();
    assert!(
        relay.log_has("event=tls_established"),
        "{}",
        relay.log_text()
    );
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn a_partition_led_by_another_broker_makes_the_output_move_to_that_broker() {
    const N: u64 = 5_000;
    let broker = broker_with_topic();
    // A cluster of two nodes in front of the one broker: node 1 at proxy `a` (the bootstrap
    // broker), node 2 at proxy `b`. `key = "feed"` puts feed "f" in partition 0 of 3 (murmur2),
    // and node 2 leads partition 0.
    let (a, b) = (
        kafka_proxy::KafkaProxy::start(broker.addr()),
        kafka_proxy::KafkaProxy::start(broker.addr()),
    );
    let nodes = [(1, a.addr()), (2, b.addr())];
    for p in [&a, &b] {
        p.set_metadata(&nodes, &[2, 1, 1]);
    }
    let dir = TempDir::new("kafka-leader-elsewhere");
    let cfg = relay_config(
        dir.path(),
        a.addr(),
        &Out {
            key: "feed",
            ..Out::default()
        },
    );
    let (mut relay, admin) = start_relay(&cfg);
    deliver(&relay, admin, 0..N);
    let read = Read::of(&consume(broker.addr(), TOPIC));
    eprintln!(
        "leader elsewhere: Produce answers through the bootstrap node {}, through the leader {}; \
         partitions {}",
        a.produced(),
        b.produced(),
        read.spread()
    );
    read.assert_exactly_once(N);
    read.assert_ring_order();
    assert_eq!(read.spread(), format!("0:{N}"));
    assert!(
        relay.log_has("event=kafka_leader_elsewhere"),
        "{}",
        relay.log_text()
    );
    assert_eq!(
        a.produced(),
        0,
        "a batch went to the node that does not lead"
    );
    assert!(b.produced() > 0);
    // A move at the start is no outage: a quiet reconnect to the leader.
    assert!(!relay.log_has("event=output_down"), "{}", relay.log_text());
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));
}
