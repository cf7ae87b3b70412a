//! The HTTP input against the real binary on loopback, driven the way Cloud NSS drives a
//! receiver: JSON-array and LF batches, a shared-secret header, gzip, keep-alive, and the status
//! codes that decide whether the sender drops, retries or is done with a batch.

mod common;
#[path = "common/tls.rs"]
mod tlskit;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use common::*;

const SECRET: &str = "s3cret-zscaler";

/// One feed `h` with an http input on `/nss` behind `x-panther-zscaler`, a tcp output to `siem`.
fn config(dir: &TempDir, siem: SocketAddr, input_extra: &str, feed_extra: &str) -> PathBuf {
    let text = format!(
        r#"[relay]
data_dir = "{data}"
admin_listen = "127.0.0.1:0"

[[feed]]
name = "h"
input = {{ kind = "http", listen = "127.0.0.1:0", path = "/nss", auth_header = "x-panther-zscaler", secret = "{SECRET}"{input_extra} }}
buffer = {{ size = "16MiB" }}
max_record_bytes = "64KiB"
{feed_extra}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem}"
"#,
        data = dir.path().join("data").display()
    );
    let p = dir.path().join("ringrelay.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A response: status, headers (lower-case names), body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (Content-Length framed) from `s`.
fn read_response(s: &mut impl Read) -> Response {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).expect("read response head");
        assert!(n == 1, "connection closed before a response; got {buf:?}");
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    Response {
        status,
        headers,
        body: String::from_utf8(body).unwrap(),
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect to the http input");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// POSTs `body` on `s` with `headers` (each "Name: value") and reads the response.
fn post(s: &mut (impl Read + Write), path: &str, headers: &[&str], body: &[u8]) -> Response {
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).unwrap();
    read_response(s)
}

fn auth() -> String {
    format!("x-panther-zscaler: {SECRET}")
}

/// A JSON-array batch of records `range`, each `{"rec":"rec <n> ..."}`-shaped but matching
/// `common::record` so the sink can check them: the array elements are the records themselves.
fn json_array(range: std::ops::Range<u64>) -> Vec<u8> {
    // Records are made to look like objects whose content is the test record.
    let mut b = b"[".to_vec();
    for (i, n) in range.enumerate() {
        if i > 0 {
            b.extend_from_slice(b",\n ");
        }
        b.extend_from_slice(&object(n));
    }
    b.extend_from_slice(b"]\n");
    b
}

/// Record `n` as a JSON object, with a comma and brackets inside a string to trip naive splitters.
fn object(n: u64) -> Vec<u8> {
    format!(
        "{{\"rec\":{n},\"url\":\"http://x/?a=1,b=[2]\",\"pad\":\"{}\"}}",
        "p".repeat((n % 50) as usize)
    )
    .into_bytes()
}

fn lines(range: std::ops::Range<u64>) -> Vec<u8> {
    let mut b = Vec::new();
    for n in range {
        b.extend_from_slice(&object(n));
        b.extend_from_slice(b"\r\n");
    }
    b
}

/// The `rec` numbers the sink received, from lines that are exactly `object(n)`.
fn received(sink: &Sink) -> Vec<u64> {
    let mut v: Vec<u64> = sink
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| {
            let s = std::str::from_utf8(l).ok()?;
            let n: u64 = s
                .strip_prefix("{\"rec\":")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (object(n) == *l).then_some(n)
        })
        .collect();
    v.sort_unstable();
    v
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn cloud_nss_batches_are_split_per_record_and_refusals_take_nothing() {
    let dir = TempDir::new("http-in");
    let siem = Sink::new(true);
    let relay = RelayProc::start(&config(&dir, siem.addr, "", ""), 1);
    let admin = admin_addr(&relay);
    let addr = relay.addr("h");
    let mut s = connect(addr);
    // JSON Array Notation, LF-separated objects, and gzip, all on one keep-alive connection.
    let r = post(&mut s, "/nss", &[&auth()], &json_array(0..100));
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "{\"status\":200,\"records\":100}")
    );
    let r = post(
        &mut s,
        "/nss?tenant=1",
        &[&auth(), "Content-Type: application/json"],
        &lines(100..200),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &mut s,
        "/nss",
        &[&auth(), "Content-Encoding: gzip"],
        &gzip(&json_array(200..300)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Refused, each with its status; none of their records is taken.
    let refused = [
        (post(&mut s, "/nss", &[], &json_array(1000..1010)), 401),
        (
            post(
                &mut s,
                "/nss",
                &["x-panther-zscaler: wrong"],
                &json_array(1000..1010),
            ),
            401,
        ),
        (
            post(&mut s, "/other", &[&auth()], &json_array(1000..1010)),
            404,
        ),
        (
            post(
                &mut s,
                "/nss",
                &[&auth(), "Content-Encoding: gzip"],
                b"not gzip at all",
            ),
            400,
        ),
        (
            post(&mut s, "/nss", &[&auth(), "Content-Encoding: br"], b"x"),
            415,
        ),
    ];
    for (r, want) in &refused {
        assert_eq!(r.status, *want, "{}", r.body);
        assert!(r.body.contains("\"error\""), "{}", r.body);
    }
    // The connection survived every refusal above.
    let r = post(&mut s, "/nss", &[&auth()], &json_array(300..310));
    assert_eq!(r.status, 200);
    // Over max_body_bytes (default 1 MiB): 413 and the connection closes.
    let big = vec![b'x'; (1 << 20) + 1];
    let r = post(&mut connect(addr), "/nss", &[&auth()], &big);
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    // Not HTTP at all: 400, and the relay carries on.
    let mut g = connect(addr);
    g.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut g).status, 400);

    let ok = wait_until(Duration::from_secs(20), || received(&siem).len() >= 310);
    assert!(ok, "received {}", received(&siem).len());
    assert_eq!(
        received(&siem),
        (0..310).collect::<Vec<_>>(),
        "each record once, none refused"
    );
    let m = metrics(admin);
    let code =
        |c: u16| m[&format!("ringrelay_feed_http_responses_total{{code=\"{c}\",feed=\"h\"}}")];
    assert_eq!(code(200), 4.0);
    assert_eq!(code(401), 2.0);
    assert_eq!(
        (code(400), code(404), code(413), code(415)),
        (2.0, 1.0, 1.0, 1.0)
    );
    assert_eq!(
        m["ringrelay_feed_records_received_total{feed=\"h\"}"],
        310.0
    );
}

#[test]
fn a_200_means_the_records_survive_a_sigkill_right_after_it() {
    let dir = TempDir::new("http-kill");
    let siem = Sink::new(false);
    let cfg = config(&dir, siem.addr, "", "");
    let mut relay = RelayProc::start(&cfg, 1);
    let mut s = connect(relay.addr("h"));
    for batch in 0..20u64 {
        let r = post(
            &mut s,
            "/nss",
            &[&auth()],
            &json_array(batch * 50..batch * 50 + 50),
        );
        assert_eq!(r.status, 200);
    }
    // Killed the moment the last 200 is read: nothing was checkpointed or synced for it.
    relay.kill9();
    assert_eq!(ring_records(&dir.path().join("data")), 1000);
    siem.set_up(true);
    let _relay = RelayProc::start(&cfg, 1);
    let ok = wait_until(Duration::from_secs(20), || received(&siem).len() >= 1000);
    assert!(ok, "received {}", received(&siem).len());
    let mut got = received(&siem);
    got.dedup();
    assert_eq!(got, (0..1000).collect::<Vec<_>>());
}

#[test]
fn a_full_block_ring_answers_503_with_retry_after_and_takes_the_batch_once_there_is_room() {
    let dir = TempDir::new("http-block");
    let siem = Sink::new(false);
    let cfg = config(
        &dir,
        siem.addr,
        ", max_body_bytes = \"256KiB\"",
        "when_full = \"block\"",
    )
    .to_string_lossy()
    .into_owned();
    // A 1 MiB ring: four 250 KiB batches fill it.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("size = \"16MiB\"", "size = \"1MiB\"")
        .replace(
            "max_record_bytes = \"64KiB\"",
            "max_record_bytes = \"4KiB\"",
        );
    std::fs::write(&cfg, text).unwrap();
    let relay = RelayProc::start(std::path::Path::new(&cfg), 1);
    let mut s = connect(relay.addr("h"));
    let mut next = 0u64;
    let mut accepted = 0u64;
    let refused = loop {
        let batch = json_array(next..next + 1000);
        assert!(batch.len() < 256 << 10);
        let r = post(&mut s, "/nss", &[&auth()], &batch);
        if r.status != 200 {
            break r;
        }
        accepted = next + 1000;
        next += 1000;
        assert!(next < 100_000, "the ring never filled");
    };
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert!(accepted > 0);
    // The SIEM comes back, the ring drains, the same batch is taken.
    siem.set_up(true);
    let ok = wait_until(Duration::from_secs(20), || {
        post(&mut s, "/nss", &[&auth()], &json_array(next..next + 1000)).status == 200
    });
    assert!(ok);
    let ok = wait_until(Duration::from_secs(20), || {
        received(&siem).len() as u64 >= next + 1000
    });
    assert!(ok, "received {}", received(&siem).len());
    let got = received(&siem);
    let mut unique = got.clone();
    unique.dedup();
    assert_eq!(
        unique,
        (0..next + 1000).collect::<Vec<_>>(),
        "the refused batch is taken once, complete"
    );
}

#[test]
fn a_slow_or_silent_client_costs_one_connection_and_times_out() {
    let dir = TempDir::new("http-slow");
    let siem = Sink::new(true);
    let cfg = config(&dir, siem.addr, ", request_timeout = \"1s\"", "");
    let relay = RelayProc::start(&cfg, 1);
    let addr = relay.addr("h");
    // Half a request, then silence.
    let mut slow = connect(addr);
    slow.write_all(
        format!(
            "POST /nss HTTP/1.1\r\n{}\r\nContent-Length: 100\r\n\r\n{{\"rec\"",
            auth()
        )
        .as_bytes(),
    )
    .unwrap();
    // Others are served meanwhile.
    let good = thread::spawn(move || {
        let mut s = connect(addr);
        for b in 0..10u64 {
            assert_eq!(
                post(&mut s, "/nss", &[&auth()], &json_array(b * 10..b * 10 + 10)).status,
                200
            );
        }
    });
    good.join().unwrap();
    let r = read_response(&mut slow);
    assert_eq!(r.status, 408);
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the connection closes after the 408");
    assert!(wait_until(Duration::from_secs(10), || received(&siem)
        .len()
        >= 100));
}

#[test]
fn https_batches_with_a_client_certificate_are_taken_and_a_client_without_one_is_refused() {
    let dir = TempDir::new("https-in");
    let pki = tlskit::Pki::new(dir.path());
    let siem = Sink::new(true);
    let tls = format!(
        ", cert = \"{}\", key = \"{}\", client_ca = \"{}\"",
        pki.path("server.pem").display(),
        pki.path("server.key").display(),
        pki.path("ca.pem").display()
    );
    let relay = RelayProc::start(&config(&dir, siem.addr, &tls, ""), 1);
    let admin = admin_addr(&relay);
    let addr = relay.addr("h");
    // Keep-alive over TLS, a gzip batch among them.
    let mut s = tlskit::connect(addr, pki.client_config(Some("client"))).expect("TLS connect");
    let r = post(&mut s, "/nss", &[&auth()], &json_array(0..500));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(
        &mut s,
        "/nss",
        &[&auth(), "Content-Encoding: gzip"],
        &gzip(&lines(500..1000)),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Closing after Connection: close: the response arrives before the close_notify.
    let r = post(
        &mut s,
        "/nss",
        &[&auth(), "Connection: close"],
        &json_array(1000..1010),
    );
    assert_eq!((r.status, r.header("connection")), (200, Some("close")));
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    // Without a client certificate the handshake fails; plain HTTP on the port gets nothing.
    let refused = tlskit::connect(addr, pki.client_config(None)).and_then(|mut s| {
        s.write_all(b"POST /nss HTTP/1.1\r\nContent-Length: 0\r\n\r\n")?;
        let mut b = [0u8; 16];
        s.read(&mut b)
    });
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(|n| *n == 0),
        "{refused:?}"
    );
    let mut plain = connect(addr);
    plain
        .write_all(b"POST /nss HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    let mut b = Vec::new();
    let _ = plain.read_to_end(&mut b);
    assert!(
        !b.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer on the HTTPS port"
    );
    let ok = wait_until(Duration::from_secs(20), || received(&siem).len() >= 1010);
    assert!(ok, "received {}", received(&siem).len());
    assert_eq!(received(&siem), (0..1010).collect::<Vec<_>>());
    let m = metrics(admin);
    assert_eq!(
        m["ringrelay_feed_http_responses_total{code=\"200\",feed=\"h\"}"],
        3.0
    );
    assert_eq!(m["ringrelay_feed_tls_handshakes_total{feed=\"h\"}"], 1.0);
    let failed = |reason: &str| {
        m[&format!("ringrelay_feed_tls_handshake_failures_total{{feed=\"h\",reason=\"{reason}\"}}")]
    };
    assert_eq!(
        (failed("no_client_certificate"), failed("not_tls")),
        (1.0, 1.0)
    );
}

/// Sends a request head with `Expect: 100-continue` and waits, as curl does (for a second; here
/// up to 2 s), for the relay's word before the body. Returns the interim or final response
/// head's status and how long it took; `None` if nothing came within 2 s.
fn head_expecting_continue(
    s: &mut TcpStream,
    secret: &str,
    body_len: usize,
) -> Option<(u16, Duration)> {
    let head = format!(
        "POST /nss HTTP/1.1\r\nHost: relay\r\nContent-Length: {body_len}\r\n\
         x-panther-zscaler: {secret}\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let t = std::time::Instant::now();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let status = String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()?;
    // A final response has a body to read; the 100 has none.
    if status != 100 {
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let len: usize = text
            .split("content-length:")
            .nth(1)
            .and_then(|v| v.split("\r\n").next())
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
    }
    Some((status, t.elapsed()))
}

#[test]
fn expect_100_continue_is_answered_at_once_and_a_refused_head_gets_its_status_without_the_body() {
    let dir = TempDir::new("http-in-continue");
    let siem = Sink::new(true);
    let relay = RelayProc::start(&config(&dir, siem.addr, "", ""), 1);
    let addr = relay.addr("h");
    let body = json_array(0..50);

    // Twice on one keep-alive connection: 100 Continue in well under a second, then the body,
    // then 200.
    let mut s = connect(addr);
    for _ in 0..2 {
        let (status, took) =
            head_expecting_continue(&mut s, SECRET, body.len()).expect("no 100 Continue in 2 s");
        println!("100-continue: {status} after {took:?}");
        assert_eq!(status, 100);
        assert!(took < Duration::from_millis(300), "{took:?}");
        s.write_all(&body).unwrap();
        let r = read_response(&mut s);
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "{\"status\":200,\"records\":50}")
        );
    }

    // A wrong secret: 401 at once, the body never sent; the relay closes the connection.
    let mut s = connect(addr);
    let (status, took) =
        head_expecting_continue(&mut s, "wrong", body.len()).expect("no answer in 2 s");
    println!("wrong secret: {status} after {took:?}");
    assert_eq!(status, 401);
    assert!(took < Duration::from_millis(300), "{took:?}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{rest:?}");

    // A body over max_body_bytes: 413 at once, nothing else sent.
    let mut s = connect(addr);
    let (status, _) = head_expecting_continue(&mut s, SECRET, 1 << 30).expect("no answer in 2 s");
    assert_eq!(status, 413);

    assert!(wait_until(Duration::from_secs(10), || received(&siem)
        .len()
        == 100));
    let mut want: Vec<u64> = (0..50).chain(0..50).collect();
    want.sort_unstable();
    assert_eq!(received(&siem), want);
}
