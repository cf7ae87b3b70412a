//! The HTTP output against scripted HTTP receivers on loopback, with the real binary: retryable
//! statuses (429 with Retry-After, 503), a 413 split, a 400 record dead-lettered, Splunk HEC
//! indexer acknowledgement with a batch that is never acknowledged, and the presets' paths and
//! headers. Every receiver runs on std threads and stops on drop.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// One request as the receiver saw it (body decompressed if it was gzipped).
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    conn: usize,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    gzipped: bool,
    status: u16,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The record numbers of an ndjson body of `rec <n> ...` lines.
    fn records(&self) -> Vec<u64> {
        self.body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| record_number(l).expect("an intact record"))
            .collect()
    }
}

/// The reply to one request.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Send the body chunked.
    chunked: bool,
    /// Close the connection instead of answering.
    hang_up: bool,
    /// Answer after this long (other connections are served meanwhile).
    delay: Duration,
}

impl Reply {
    fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            chunked: false,
            hang_up: false,
            delay: Duration::ZERO,
        }
    }
}

type Plan = Box<dyn FnMut(&Seen) -> Reply + Send>;

/// An HTTP/1.1 receiver with keep-alive; `plan` answers each request in arrival order.
struct HttpSiem {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    conns: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl HttpSiem {
    fn start(plan: Plan) -> HttpSiem {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let conns: Arc<AtomicUsize> = Arc::default();
        let stop: Arc<AtomicBool> = Arc::default();
        let plan = Arc::new(Mutex::new(plan));
        let (s2, c2, st2) = (seen.clone(), conns.clone(), stop.clone());
        let acceptor = thread::spawn(move || {
            let mut workers = Vec::new();
            while !st2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let id = c2.fetch_add(1, Ordering::SeqCst);
                        let (seen, stop, plan) = (s2.clone(), st2.clone(), plan.clone());
                        workers.push(thread::spawn(move || serve(s, id, &seen, &stop, &plan)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        HttpSiem {
            addr,
            seen,
            conns,
            stop,
            threads: vec![acceptor],
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Data requests (not ack polls).
    fn data(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| !s.path.ends_with("/ack"))
            .collect()
    }
}

impl Drop for HttpSiem {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Serves one connection until the peer closes it or the receiver stops.
fn serve(
    mut s: TcpStream,
    conn: usize,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
    plan: &Mutex<Plan>,
) {
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        // Head.
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        };
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        assert!(req.parse(&buf[..head_end]).unwrap().is_complete());
        let path = req.path.unwrap().to_string();
        let headers: HashMap<String, String> = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let len: usize = headers["content-length"].parse().unwrap();
        while buf.len() < head_end + len {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match s.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
        let raw: Vec<u8> = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let gzipped = headers.get("content-encoding").is_some_and(|v| v == "gzip");
        let body = if gzipped {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .expect("a valid gzip body");
            out
        } else {
            raw
        };
        let mut seen_req = Seen {
            at: Instant::now(),
            conn,
            path,
            headers,
            body,
            gzipped,
            status: 0,
        };
        let reply = (plan.lock().unwrap())(&seen_req);
        seen_req.status = reply.status;
        seen.lock().unwrap().push(seen_req);
        thread::sleep(reply.delay);
        if reply.hang_up {
            return;
        }
        let mut out = format!("HTTP/1.1 {} X\r\n", reply.status).into_bytes();
        for (k, v) in &reply.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if reply.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for piece in reply.body.chunks(7) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", reply.body.len()).as_bytes(),
            );
            out.extend_from_slice(&reply.body);
        }
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

/// A config with one feed `f` and one http output `h` with `output` settings.
fn http_config(dir: &Path, output: &str) -> PathBuf {
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "64MiB" }}

[[feed.output]]
name = "h"
kind = "http"
{output}
"#,
        data = dir.join("data").display()
    );
    let p = dir.join("ringrelay.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn metric(m: &HashMap<String, f64>, name: &str, extra: &str) -> f64 {
    let key = if extra.is_empty() {
        format!("{name}{{feed=\"f\",output=\"h\"}}")
    } else {
        format!("{name}{{{extra},feed=\"f\",output=\"h\"}}")
    };
    *m.get(&key).unwrap_or_else(|| panic!("no {key}"))
}

const LEN: usize = 100;

#[test]
fn retryable_statuses_are_retried_413_splits_and_a_400_record_is_dead_lettered() {
    const N: u64 = 3000;
    const POISON: u64 = 777;
    let data_requests = Arc::new(AtomicUsize::new(0));
    let dr = data_requests.clone();
    let siem = HttpSiem::start(Box::new(move |req: &Seen| {
        let k = dr.fetch_add(1, Ordering::SeqCst);
        let poisoned = find(&req.body, format!("rec {POISON} ").as_bytes()).is_some();
        match k {
            2 => {
                let mut r = Reply::new(429, "slow down");
                r.headers.push(("Retry-After", "1".into()));
                r
            }
            4 => Reply::new(503, "{\"text\":\"Server is busy\",\"code\":9}"),
            6 => Reply::new(413, "too large"),
            _ if poisoned => Reply::new(400, "{\"text\":\"Invalid data format\",\"code\":6}"),
            _ => {
                let mut r = Reply::new(200, "{\"text\":\"Success\",\"code\":0}");
                r.chunked = k % 2 == 1;
                r
            }
        }
    }));
    let dir = TempDir::new("http-statuses");
    let cfg = http_config(
        dir.path(),
        &format!(
            "url = \"http://{}/ingest\"\nmax_batch_bytes = \"16KiB\"\nmax_batch_age = \"100ms\"\nrequest_timeout = \"5s\"",
            siem.addr
        ),
    );
    let mut relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    send_records(relay.addr("f"), 0..N, LEN);
    let done = wait_until(Duration::from_secs(60), || {
        metrics(admin)
            .get("ringrelay_output_lag_records{feed=\"f\",output=\"h\"}")
            .is_some_and(|&v| v == 0.0)
    });
    let seen = siem.data();
    assert!(done, "lag never reached 0; log:\n{}", relay.log_text());

    let summary: Vec<String> = seen
        .iter()
        .map(|s| {
            let r = s.records();
            format!("{}:{}+{}", s.status, r[0], r.len())
        })
        .collect();
    eprintln!("requests (status:first+records): {}", summary.join(" "));
    // Every record in exactly one 2xx request, but the poisoned one, in none.
    let mut ok_counts: HashMap<u64, u32> = HashMap::new();
    for s in seen.iter().filter(|s| s.status == 200) {
        for n in s.records() {
            *ok_counts.entry(n).or_default() += 1;
        }
    }
    for n in 0..N {
        let want = u32::from(n != POISON);
        assert_eq!(ok_counts.get(&n).copied().unwrap_or(0), want, "record {n}");
    }
    // Retry-After: 1 was honoured.
    let i429 = seen.iter().position(|s| s.status == 429).expect("a 429");
    let gap = seen[i429 + 1].at - seen[i429].at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    assert_ne!(
        seen[i429 + 1].conn,
        seen[i429].conn,
        "a 429 closes the connection"
    );
    // The 413 batch was retried with half its records, from the same first record.
    let i413 = seen.iter().position(|s| s.status == 413).expect("a 413");
    let (big, next) = (seen[i413].records(), seen[i413 + 1].records());
    assert_eq!(
        next.len(),
        big.len() / 2,
        "413 batch of {} records",
        big.len()
    );
    assert_eq!(next[0], big[0]);
    // The poisoned record was narrowed down to a request of its own.
    assert!(seen
        .iter()
        .any(|s| s.status == 400 && s.records() == [POISON]));
    // Keep-alive: a new connection only after each connection-closing retry.
    let retried_with_close = seen
        .iter()
        .filter(|s| [429, 503].contains(&s.status))
        .count();
    assert_eq!(siem.conns.load(Ordering::SeqCst), 1 + retried_with_close);
    assert!(seen.iter().all(|s| s.path == "/ingest"));

    // The dead-letter file has the record, its status and the response body.
    let dl =
        std::fs::read_to_string(dir.path().join("data/f.h.deadletter")).expect("dead-letter file");
    let lines: Vec<&str> = dl.lines().collect();
    assert_eq!(lines.len(), 1, "{dl}");
    let rec = String::from_utf8(record(POISON, LEN)).unwrap();
    assert!(lines[0].contains("\"status\":400"), "{dl}");
    assert!(lines[0].contains("Invalid data format"), "{dl}");
    assert!(lines[0].contains(&format!("\"seq\":{POISON}")), "{dl}");
    assert!(lines[0].contains(&format!("\"record\":\"{rec}\"")), "{dl}");
    assert!(relay.log_has("event=http_record_dead_lettered"));

    // /metrics agrees with what the receiver saw.
    let m = metrics(admin);
    let class = |c: u16| seen.iter().filter(|s| s.status / 100 == c).count() as f64;
    let req = |c: &str| {
        metric(
            &m,
            "ringrelay_output_http_requests_total",
            &format!("class=\"{c}\""),
        )
    };
    assert_eq!(req("2xx"), class(2));
    assert_eq!(req("4xx"), class(4));
    assert_eq!(req("5xx"), class(5));
    assert_eq!(req("none"), 0.0);
    let refused = seen.iter().filter(|s| s.status != 200).count() as f64;
    assert_eq!(
        metric(&m, "ringrelay_output_records_dead_lettered_total", ""),
        1.0
    );
    assert_eq!(
        metric(&m, "ringrelay_output_batches_retried_total", ""),
        refused - 1.0
    );
    assert_eq!(
        metric(&m, "ringrelay_output_records_delivered_total", ""),
        (N - 1) as f64
    );
    assert_eq!(
        metric(&m, "ringrelay_output_records_replayed_total", ""),
        0.0
    );
    assert_eq!(metric(&m, "ringrelay_output_acks_pending", ""), 0.0);
    assert_eq!(metric(&m, "ringrelay_output_connected", ""), 1.0);
    let sent: usize = seen
        .iter()
        .map(|s| {
            // What the relay wrote: head + body; the receiver saw the body.
            s.body.len()
        })
        .sum();
    assert!(metric(&m, "ringrelay_output_bytes_sent_total", "") > sent as f64);
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn hec_acknowledgement_holds_the_cursor_and_a_never_acked_batch_is_sent_again() {
    const N: u64 = 2000;
    const TOKEN: &str = "hec-token-1";
    const NEVER: u64 = 2;
    // ackId → when it counts as indexed (None: never).
    let acks: Arc<Mutex<Vec<Option<Instant>>>> = Arc::default();
    let a2 = acks.clone();
    let siem = HttpSiem::start(Box::new(move |req: &Seen| {
        if req.header("authorization") != Some(&format!("Splunk {TOKEN}"))
            || req
                .header("x-splunk-request-channel")
                .is_none_or(|c| c.len() != 36)
        {
            return Reply::new(401, "{\"text\":\"Invalid authorization\",\"code\":3}");
        }
        let mut acks = a2.lock().unwrap();
        if req.path == "/services/collector/ack" {
            let body = String::from_utf8_lossy(&req.body).into_owned();
            let ids = body
                .trim_start_matches("{\"acks\":[")
                .trim_end_matches("]}")
                .split(',')
                .filter_map(|i| i.parse::<usize>().ok());
            let now = Instant::now();
            let entries: Vec<String> = ids
                .map(|i| {
                    let done = acks.get(i).copied().flatten().is_some_and(|t| t <= now);
                    format!("\"{i}\":{done}")
                })
                .collect();
            let mut r = Reply::new(200, &format!("{{\"acks\":{{{}}}}}", entries.join(",")));
            r.chunked = true;
            return r;
        }
        let id = acks.len() as u64;
        let ready = match id {
            NEVER => None,
            i if i % 3 == 1 => Some(Instant::now() + Duration::from_millis(700)),
            _ => Some(Instant::now()),
        };
        acks.push(ready);
        let mut r = Reply::new(
            200,
            &format!("{{\"text\":\"Success\",\"code\":0,\"ackId\":{id}}}"),
        );
        // Like a load balancer that closes now and then: ackIds outlive connections.
        if id % 5 == 4 {
            r.headers.push(("Connection", "close".into()));
        }
        r
    }));
    let dir = TempDir::new("http-hec-ack");
    let cfg = http_config(
        dir.path(),
        &format!(
            "preset = \"splunk_hec\"\nurl = \"http://{}\"\ntoken = \"{TOKEN}\"\nack = true\nack_poll = \"200ms\"\nack_timeout = \"2s\"\nmax_batch_bytes = \"8KiB\"\nmax_batch_age = \"50ms\"",
            siem.addr
        ),
    );
    let mut relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    send_records(relay.addr("f"), 0..N, LEN);

    // Until the never-acked batch is sent again, the cursor stays at or before its first record.
    let never_first = || siem.data().get(NEVER as usize).map(|s| s.records()[0]);
    let resent = |first: u64| {
        siem.data()
            .iter()
            .skip(NEVER as usize + 1)
            .any(|s| s.records().contains(&first))
    };
    let start = Instant::now();
    let mut max_pending = 0.0f64;
    let mut samples = 0;
    let mut first = None;
    while start.elapsed() < Duration::from_secs(30) {
        first = first.or_else(never_first);
        let m = metrics(admin);
        if let Some(k) = first {
            if resent(k) {
                break;
            }
            let lag = metric(&m, "ringrelay_output_lag_records", "");
            assert!(
                lag >= (N - k) as f64,
                "cursor passed the unacked batch at record {k}: lag {lag}"
            );
            samples += 1;
        }
        max_pending = max_pending.max(metric(&m, "ringrelay_output_acks_pending", ""));
        thread::sleep(Duration::from_millis(50));
    }
    let k = first.expect("the never-acked batch was sent");
    assert!(
        samples > 10,
        "only {samples} lag samples before the re-send"
    );
    assert!(max_pending >= 1.0, "acks_pending never rose");
    // Sent again after ack_timeout, not before.
    let data = siem.data();
    let original = &data[NEVER as usize];
    let again = data
        .iter()
        .skip(NEVER as usize + 1)
        .find(|s| s.records().contains(&k))
        .expect("re-sent");
    let waited = again.at - original.at;
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "re-sent after {waited:?}"
    );
    assert!(relay.log_has("event=hec_ack_timeout"));
    // Batches answered before a connection closed were not sent again for it: the only records
    // sent twice are those of the timed-out batch and the ones sent after it before the timeout.
    let first_send: HashMap<u64, usize> = data
        .iter()
        .enumerate()
        .rev()
        .flat_map(|(i, s)| s.records().into_iter().map(move |n| (n, i)))
        .collect();
    for (i, s) in data.iter().enumerate() {
        for n in s.records() {
            if first_send[&n] != i {
                assert!(
                    n >= k && first_send[&n] >= NEVER as usize,
                    "record {n} sent again in request {i} (first in {})",
                    first_send[&n]
                );
            }
        }
    }
    assert!(
        siem.conns.load(Ordering::SeqCst) > 1,
        "no connection closed"
    );

    let done = wait_until(Duration::from_secs(30), || {
        let m = metrics(admin);
        metric(&m, "ringrelay_output_lag_records", "") == 0.0
            && metric(&m, "ringrelay_output_acks_pending", "") == 0.0
    });
    assert!(done, "not all acknowledged; log:\n{}", relay.log_text());
    let data = siem.data();
    let polls: Vec<Seen> = siem
        .seen()
        .into_iter()
        .filter(|s| s.path == "/services/collector/ack")
        .collect();
    assert!(!polls.is_empty());
    assert!(
        siem.seen().iter().all(|s| s.status == 200),
        "a request was refused"
    );
    // One channel, stable for the output; every data request on /raw.
    let channel = data[0]
        .header("x-splunk-request-channel")
        .unwrap()
        .to_string();
    assert!(siem
        .seen()
        .iter()
        .all(|s| s.header("x-splunk-request-channel") == Some(&channel)));
    assert!(data.iter().all(|s| s.path == "/services/collector/raw"));
    // Every record arrived; none was lost to the re-send.
    let mut all: Vec<u64> = data.iter().flat_map(Seen::records).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len() as u64, N);
    let m = metrics(admin);
    assert_eq!(
        metric(&m, "ringrelay_output_records_delivered_total", ""),
        N as f64
    );
    assert!(metric(&m, "ringrelay_output_batches_retried_total", "") >= 1.0);
    assert_eq!(
        metric(&m, "ringrelay_output_http_requests_total", "class=\"2xx\""),
        siem.seen().len() as f64
    );
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));
    // The channel survives a restart: derived from instance, feed and output.
    let relay = RelayProc::start(&cfg, 1);
    send_records(relay.addr("f"), N..N + 10, LEN);
    let ok = wait_until(Duration::from_secs(10), || siem.data().len() > data.len());
    assert!(ok);
    assert_eq!(
        siem.data()
            .last()
            .unwrap()
            .header("x-splunk-request-channel"),
        Some(channel.as_str())
    );
}

/// (feed, output settings, path, headers expected) of one preset case.
type Case<'a> = (&'a str, String, &'a str, &'a [(&'a str, &'a str)]);

#[test]
fn presets_send_their_paths_headers_and_body_formats() {
    let siem = HttpSiem::start(Box::new(|_req: &Seen| {
        Reply::new(200, "{\"event_ids\":[]}")
    }));
    let dir = TempDir::new("http-presets");
    let a = siem.addr;
    // (feed, output settings, path, headers expected)
    let table: [Case; 4] = [
        (
            "panther",
            format!("preset = \"panther\"\nurl = \"http://{a}/http/abc\"\nsecret = \"s3cret\""),
            "/http/abc",
            &[("x-panther-zscaler", "s3cret")],
        ),
        (
            "sekoia",
            format!("preset = \"sekoia\"\nurl = \"http://{a}\"\ntoken = \"intake-key\""),
            "/plain/batch",
            &[("x-sekoiaio-intake-key", "intake-key")],
        ),
        (
            "hec-event",
            format!("preset = \"splunk_hec\"\nurl = \"http://{a}/services/collector/event\"\ntoken = \"T\""),
            "/services/collector/event",
            &[("authorization", "Splunk T")],
        ),
        (
            "generic",
            format!("url = \"http://{a}/in?tag=x\"\nbody = \"json_array\"\ngzip = true\nheaders = {{ \"X-Foo\" = \"bar\" }}\nauth_header = \"X-Key\"\nsecret = \"k\""),
            "/in?tag=x",
            &[("x-foo", "bar"), ("x-key", "k"), ("content-encoding", "gzip"), ("content-type", "application/json")],
        ),
    ];
    let mut text = format!(
        "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"off\"\n",
        dir.path().join("data").display()
    );
    for (feed, out, _, _) in &table {
        text.push_str(&format!(
            "\n[[feed]]\nname = \"{feed}\"\ninput = {{ kind = \"tcp\", listen = \"127.0.0.1:0\" }}\nbuffer = {{ size = \"8MiB\" }}\n\n[[feed.output]]\nname = \"out\"\nkind = \"http\"\nmax_batch_age = \"20ms\"\n{out}\n"
        ));
    }
    let cfg = dir.path().join("ringrelay.toml");
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, table.len());
    const N: u64 = 40;
    for (feed, ..) in &table {
        let mut s = TcpStream::connect(relay.addr(feed)).unwrap();
        for n in 0..N {
            s.write_all(format!("{{\"n\":{n},\"msg\":\"say \\\"{feed}\\\"\"}}\n").as_bytes())
                .unwrap();
        }
    }
    let want_bodies = |feed: &str| -> Vec<String> {
        (0..N)
            .map(|n| format!("{{\"n\":{n},\"msg\":\"say \\\"{feed}\\\"\"}}"))
            .collect()
    };
    let ok = wait_until(Duration::from_secs(20), || {
        let seen = siem.seen();
        table.iter().all(|(_, _, path, _)| {
            let got: usize = seen
                .iter()
                .filter(|s| s.path == *path)
                .map(|s| s.body.windows(4).filter(|w| w == b"say ").count())
                .sum();
            got >= N as usize
        })
    });
    let seen = siem.seen();
    assert!(
        ok,
        "paths seen: {:?}",
        seen.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    for (feed, _, path, headers) in &table {
        let reqs: Vec<&Seen> = seen.iter().filter(|s| s.path == *path).collect();
        for r in &reqs {
            for (k, v) in *headers {
                assert_eq!(r.header(k), Some(*v), "{feed}: header {k}");
            }
            assert!(
                r.header("host").is_some_and(|h| h == a.to_string()),
                "{feed}"
            );
        }
        // Reassemble the records from the bodies in each preset's format.
        let mut got: Vec<String> = Vec::new();
        for r in &reqs {
            let body = String::from_utf8(r.body.clone()).unwrap();
            match *feed {
                "generic" => {
                    assert!(r.gzipped);
                    let inner = body
                        .strip_prefix('[')
                        .and_then(|b| b.strip_suffix(']'))
                        .expect("a JSON array");
                    got.extend(inner.split("},{").map(|p| {
                        let p = p.trim_start_matches('{').trim_end_matches('}');
                        format!("{{{p}}}")
                    }));
                }
                "hec-event" => {
                    for l in body.lines() {
                        let inner = l
                            .strip_prefix("{\"event\":\"")
                            .and_then(|l| l.strip_suffix("\"}"))
                            .expect("an event envelope");
                        got.push(inner.replace("\\\"", "\"").replace("\\\\", "\\"));
                    }
                }
                _ => got.extend(body.lines().map(str::to_string)),
            }
        }
        assert_eq!(got, want_bodies(feed), "{feed}");
    }
}

#[test]
fn an_unanswered_request_is_sent_again_after_request_timeout_and_closed_keepalives_reopen_quietly()
{
    const N: u64 = 1000;
    let data_requests = Arc::new(AtomicUsize::new(0));
    let dr = data_requests.clone();
    let siem = HttpSiem::start(Box::new(move |_req: &Seen| {
        let k = dr.fetch_add(1, Ordering::SeqCst);
        let mut r = Reply::new(200, "ok");
        match k {
            // Too slow: the relay gives up after request_timeout and sends the batch again.
            1 => r.delay = Duration::from_millis(1000),
            // The server asks to close after answering.
            3 => r.headers.push(("Connection", "close".into())),
            // The server drops a kept-alive connection without answering.
            6 => r.hang_up = true,
            _ => {}
        }
        r
    }));
    let dir = TempDir::new("http-timeout");
    let cfg = http_config(
        dir.path(),
        &format!(
            "url = \"http://{}/\"\nmax_batch_bytes = \"8KiB\"\nmax_batch_age = \"50ms\"\nrequest_timeout = \"300ms\"",
            siem.addr
        ),
    );
    let mut relay = RelayProc::start(&cfg, 1);
    let admin = admin_addr(&relay);
    send_records(relay.addr("f"), 0..N, LEN);
    let done = wait_until(Duration::from_secs(30), || {
        metrics(admin)
            .get("ringrelay_output_lag_records{feed=\"f\",output=\"h\"}")
            .is_some_and(|&v| v == 0.0)
    });
    assert!(done, "lag never reached 0; log:\n{}", relay.log_text());
    let seen = siem.data();
    // The timed-out batch came again on a new connection, after request_timeout.
    let slow = &seen[1];
    let again = seen[2..]
        .iter()
        .find(|s| s.records()[0] == slow.records()[0])
        .expect("the timed-out batch, again");
    assert!(again.at - slow.at >= Duration::from_millis(250));
    assert_ne!(again.conn, slow.conn);
    // The hung-up batch came again right away on a new connection.
    let dropped = &seen[6];
    let retry = &seen[7];
    assert_eq!(retry.records()[0], dropped.records()[0]);
    assert_ne!(retry.conn, dropped.conn);
    assert!(retry.at - dropped.at < Duration::from_millis(250));
    // Everything arrived; only the timeout counts as the output going down.
    let mut all: Vec<u64> = seen.iter().flat_map(Seen::records).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len() as u64, N);
    let log = relay.log_text();
    assert_eq!(log.matches("event=output_down ").count(), 1, "{log}");
    assert!(log.contains("request_timeout"), "{log}");
    let m = metrics(admin);
    assert_eq!(
        metric(&m, "ringrelay_output_http_requests_total", "class=\"none\""),
        2.0
    );
    assert_eq!(
        metric(&m, "ringrelay_output_batches_retried_total", ""),
        2.0
    );
    assert_eq!(
        metric(&m, "ringrelay_output_records_delivered_total", ""),
        N as f64
    );
    // One connection, and one more after each close: timeout, Connection: close, hang-up.
    assert_eq!(siem.conns.load(Ordering::SeqCst), 4);
    let (code, _) = relay.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn rate_limit_eps_paces_http_batches() {
    const N: u64 = 600;
    const EPS: u64 = 1000;
    let siem = HttpSiem::start(Box::new(|_req: &Seen| Reply::new(200, "ok")));
    let dir = TempDir::new("http-rate");
    let cfg = http_config(
        dir.path(),
        &format!(
            "url = \"http://{}/\"\nrate_limit_eps = {EPS}\nmax_batch_age = \"10ms\"",
            siem.addr
        ),
    );
    let relay = RelayProc::start(&cfg, 1);
    send_records(relay.addr("f"), 0..N, LEN);
    let count = || siem.data().iter().map(|s| s.records().len()).sum::<usize>();
    let ok = wait_until(Duration::from_secs(20), || count() >= N as usize);
    assert!(ok, "{} of {N}; log:\n{}", count(), relay.log_text());
    let data = siem.data();
    let span = data.last().unwrap().at - data[0].at;
    // N records at EPS per second, less the first burst (a tenth of a second's worth).
    let least = Duration::from_secs_f64((N - EPS / 10) as f64 / EPS as f64 * 0.9);
    assert!(span >= least, "{N} records in {span:?} at {EPS}/s");
    assert!(data.iter().all(|s| s.records().len() as u64 <= EPS / 10));
    assert_eq!(count(), N as usize, "a record was sent twice");
}

/// A `block` feed pauses its senders when the ring is full; an HTTP output frees room only when
/// a response arrives (not while writing, as a TCP output does). The paused senders must be
/// woken then: without that, a full ring with everything sent stalled the feed for good.
#[test]
fn a_block_feed_resumes_when_http_responses_free_the_ring() {
    const N: u64 = 30_000;
    const LEN_BIG: usize = 300;
    let siem = HttpSiem::start(Box::new(|_req: &Seen| {
        let mut r = Reply::new(200, "ok");
        r.delay = Duration::from_millis(5);
        r
    }));
    let dir = TempDir::new("http-block");
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "off"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "1MiB" }}
max_record_bytes = "4KiB"
when_full = "block"

[[feed.output]]
name = "h"
kind = "http"
url = "http://{addr}/"
max_batch_bytes = "64KiB"
max_batch_age = "10ms"
"#,
        data = dir.path().join("data").display(),
        addr = siem.addr
    );
    let cfg = dir.path().join("ringrelay.toml");
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(&cfg, 1);
    let addr = relay.addr("f");
    let sender = thread::spawn(move || send_records(addr, 0..N, LEN_BIG));
    let count = || siem.data().iter().map(|s| s.records().len()).sum::<usize>();
    let ok = wait_until(Duration::from_secs(60), || count() >= N as usize);
    assert!(ok, "{} of {N} records; log:\n{}", count(), relay.log_text());
    sender.join().unwrap();
    let mut all: Vec<u64> = siem.data().iter().flat_map(Seen::records).collect();
    all.sort_unstable();
    assert_eq!(all, (0..N).collect::<Vec<_>>());
}
