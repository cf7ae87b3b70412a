//! A Kafka-protocol proxy for failures a single-node broker cannot make. Between the relay and
//! the broker it forwards every frame, and:
//! - while `not_leader` is on, it answers the relay's Produce requests with
//!   NOT_LEADER_OR_FOLLOWER (error 6) **after** the broker appended them: the leader "moved" at
//!   the worst moment, so the relay's resend of the same batch must be dropped by the broker as
//!   a duplicate (the idempotent producer), not appended twice;
//! - with `metadata` set, Metadata answers (flexible versions, 10 and later) name other brokers
//!   and other leaders: a cluster of several nodes, each node an address of a proxy in front of
//!   the one broker;
//! - a Produce request whose bytes hold the `poison` marker is not forwarded: the proxy answers
//!   MESSAGE_TOO_LARGE (error 10) itself, as a broker whose `max.message.bytes` the record
//!   exceeds would (tansu 0.6.0 stores that topic setting but does not enforce it).
//!
//! It reads request headers (api key, version, correlation id) to know which answer is a
//! Produce answer and at which version, and patches a Produce answer for one topic and one
//! partition (what the relay sends) at the byte level: the first partition's error code, and
//! for a made-up answer the correlation id and partition index of an earlier real answer at the
//! same version. Threads per connection; everything stops on drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A proxy on a loopback port in front of `broker`.
pub struct KafkaProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<thread::JoinHandle<()>>,
}

/// The brokers (id, address) and the leader of each partition a rewritten Metadata names.
type Cluster = (Vec<(i32, SocketAddr)>, Vec<i32>);

#[derive(Default)]
struct State {
    stop: AtomicBool,
    /// Answer Produce with NOT_LEADER_OR_FOLLOWER.
    not_leader: AtomicBool,
    /// Produce answers rewritten.
    rewritten: AtomicU64,
    /// Produce answers forwarded as they were.
    produced: AtomicU64,
    /// Produce requests holding this are answered MESSAGE_TOO_LARGE, not forwarded.
    poison: Mutex<Option<Vec<u8>>>,
    /// Produce requests refused for the poison.
    refused: AtomicU64,
    /// Metadata answers name these brokers, and these leaders by partition index.
    metadata: Mutex<Option<Cluster>>,
    /// The last real Produce answer at each version: the template of made-up ones.
    templates: Mutex<HashMap<i16, Vec<u8>>>,
    conns: Mutex<Vec<TcpStream>>,
}

/// Reads one size-prefixed frame; `None` at the end of the stream.
fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).ok()?;
    let n = i32::from_be_bytes(size);
    if !(0..=64 << 20).contains(&n) {
        return None;
    }
    let mut frame = vec![0u8; n as usize];
    s.read_exact(&mut frame).ok()?;
    Some(frame)
}

/// Writes one size-prefixed frame in one write (two would meet Nagle's algorithm and the
/// peer's delayed ACK: 40 ms per frame).
fn write_frame(s: &mut TcpStream, frame: &[u8]) -> bool {
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend_from_slice(&(frame.len() as i32).to_be_bytes());
    out.extend_from_slice(frame);
    s.write_all(&out).is_ok()
}

/// An unsigned varint at `at`; returns (value, bytes).
fn uvarint(b: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for i in 0..10 {
        let byte = *b.get(at + i)?;
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Where the first partition's error code is in a Produce answer (the frame after its size)
/// at `version`: correlation id, [tagged fields], topics array, topic name, partitions array,
/// partition index, then the error code.
fn produce_error_at(frame: &[u8], version: i16) -> Option<usize> {
    let mut at = 4; // correlation id
    if version >= 9 {
        // Flexible: response header v1 (tagged fields), compact arrays and strings.
        let (_, n) = uvarint(frame, at)?;
        at += n;
        let (_, n) = uvarint(frame, at)?; // topics + 1
        at += n;
        let (len, n) = uvarint(frame, at)?; // name length + 1
        at += n + (len as usize).checked_sub(1)?;
        let (_, n) = uvarint(frame, at)?; // partitions + 1
        at += n;
    } else {
        at += 4; // topics
        let len = i16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        at += 2 + usize::try_from(len).ok()?;
        at += 4; // partitions
    }
    at += 4; // partition index
    (at + 2 <= frame.len()).then_some(at)
}

impl KafkaProxy {
    pub fn start(broker: SocketAddr) -> KafkaProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy port");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let state = Arc::new(State::default());
        let st = state.clone();
        let accept = thread::spawn(move || {
            while !st.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(upstream) = TcpStream::connect(broker) else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        pair(client, upstream, st.clone());
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        KafkaProxy {
            addr,
            state,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Turns the NOT_LEADER_OR_FOLLOWER fault on or off.
    pub fn set_not_leader(&self, on: bool) {
        self.state.not_leader.store(on, Ordering::SeqCst);
    }

    /// Produce requests holding `marker` are answered MESSAGE_TOO_LARGE from now on (once a
    /// real Produce answer was seen at the version in use: the relay must have delivered a
    /// batch through the proxy first).
    pub fn set_poison(&self, marker: &[u8]) {
        *self.state.poison.lock().unwrap() = Some(marker.to_vec());
    }

    /// Produce requests answered MESSAGE_TOO_LARGE so far.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// From now on, Metadata answers name `nodes` (id, address) as the cluster's brokers and
    /// `leaders[p]` as the leader of partition `p`.
    pub fn set_metadata(&self, nodes: &[(i32, SocketAddr)], leaders: &[i32]) {
        *self.state.metadata.lock().unwrap() = Some((nodes.to_vec(), leaders.to_vec()));
    }

    /// Produce answers rewritten to NOT_LEADER_OR_FOLLOWER so far.
    pub fn rewritten(&self) -> u64 {
        self.state.rewritten.load(Ordering::SeqCst)
    }

    /// Produce answers forwarded unchanged so far.
    pub fn produced(&self) -> u64 {
        self.state.produced.load(Ordering::SeqCst)
    }
}

impl Drop for KafkaProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// The partition index of a Produce request for one topic and one partition (the frame after
/// its size), at `version`.
fn produce_request_partition(frame: &[u8], version: i16) -> Option<i32> {
    let i16_at = |at: usize| Some(i16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]));
    // Header: api key, version, correlation id, client id (a nullable string in every
    // request header version).
    let mut at = 8;
    at += 2 + usize::try_from(i16_at(at)?).unwrap_or(0);
    if version >= 9 {
        let (_, n) = uvarint(frame, at)?; // header tagged fields
        at += n;
        let (len, n) = uvarint(frame, at)?; // transactional id + 1 (0: null)
        at += n + (len as usize).saturating_sub(1);
        at += 2 + 4; // acks, timeout
        let (_, n) = uvarint(frame, at)?; // topics + 1
        at += n;
        let (len, n) = uvarint(frame, at)?; // name + 1
        at += n + (len as usize).checked_sub(1)?;
        let (_, n) = uvarint(frame, at)?; // partitions + 1
        at += n;
    } else {
        at += 2 + usize::try_from(i16_at(at)?).unwrap_or(0); // transactional id
        at += 2 + 4 + 4; // acks, timeout, topics
        at += 2 + usize::try_from(i16_at(at)?).ok()?; // name
        at += 4; // partitions
    }
    let b = frame.get(at..at + 4)?;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Forwards both ways between `client` and `upstream`.
fn pair(client: TcpStream, upstream: TcpStream, st: Arc<State>) {
    {
        let mut conns = st.conns.lock().unwrap();
        conns.push(client.try_clone().unwrap());
        conns.push(upstream.try_clone().unwrap());
    }
    // Correlation id -> (api key, version) of the requests in flight.
    let inflight: Arc<Mutex<HashMap<i32, (i16, i16)>>> = Arc::default();
    // Both directions write to the client: answers forwarded, and answers made up.
    let to_client = Arc::new(Mutex::new(client.try_clone().unwrap()));
    let (mut c_in, mut u_out) = (client, upstream.try_clone().unwrap());
    let (fl, tc, st2) = (inflight.clone(), to_client.clone(), st.clone());
    thread::spawn(move || {
        while let Some(frame) = read_frame(&mut c_in) {
            if frame.len() >= 8 {
                let key = i16::from_be_bytes([frame[0], frame[1]]);
                let version = i16::from_be_bytes([frame[2], frame[3]]);
                let id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                if key == 0 {
                    if let Some(answer) = refuse_poisoned(&st2, &frame, version, id) {
                        if !write_frame(&mut tc.lock().unwrap(), &answer) {
                            break;
                        }
                        continue;
                    }
                }
                fl.lock().unwrap().insert(id, (key, version));
            }
            if !write_frame(&mut u_out, &frame) {
                break;
            }
        }
        let _ = u_out.shutdown(Shutdown::Both);
    });
    let mut u_in = upstream;
    thread::spawn(move || {
        while let Some(mut frame) = read_frame(&mut u_in) {
            if frame.len() >= 4 {
                let id = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
                let req = inflight.lock().unwrap().remove(&id);
                if let Some((3, version)) = req {
                    let rewrite = st.metadata.lock().unwrap().clone();
                    if let Some((nodes, leaders)) = rewrite {
                        frame = rewrite_metadata(&frame, version, &nodes, &leaders)
                            .unwrap_or_else(|| panic!("proxy: Metadata v{version} not rewritten"));
                    }
                }
                if let Some((0, version)) = req {
                    let fault = st.not_leader.load(Ordering::SeqCst);
                    match produce_error_at(&frame, version) {
                        Some(at) if fault => {
                            frame[at..at + 2].copy_from_slice(&6i16.to_be_bytes());
                            st.rewritten.fetch_add(1, Ordering::SeqCst);
                        }
                        Some(_) => {
                            st.templates.lock().unwrap().insert(version, frame.clone());
                            st.produced.fetch_add(1, Ordering::SeqCst);
                        }
                        None => {
                            st.produced.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
            if !write_frame(&mut to_client.lock().unwrap(), &frame) {
                break;
            }
        }
        let _ = to_client.lock().unwrap().shutdown(Shutdown::Both);
    });
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Where the tagged fields at `at` end.
fn skip_tags(b: &[u8], mut at: usize) -> Option<usize> {
    let (count, n) = uvarint(b, at)?;
    at += n;
    for _ in 0..count {
        let (_, n) = uvarint(b, at)?; // tag
        at += n;
        let (size, n) = uvarint(b, at)?;
        at += n + size as usize;
    }
    Some(at)
}

/// Where the compact (nullable) string or array of `width`-byte items at `at` ends.
fn skip_compact(b: &[u8], at: usize, width: usize) -> Option<usize> {
    let (len, n) = uvarint(b, at)?;
    Some(at + n + width * (len as usize).saturating_sub(1))
}

/// A Metadata answer (flexible, v10 to v12: the frame after its size) with its brokers
/// replaced by `nodes` and each partition's leader by `leaders[partition]`.
fn rewrite_metadata(
    frame: &[u8],
    version: i16,
    nodes: &[(i32, SocketAddr)],
    leaders: &[i32],
) -> Option<Vec<u8>> {
    if !(10..=12).contains(&version) {
        return None;
    }
    let header_end = skip_tags(frame, 4)?; // correlation id, header tags
    let brokers_at = header_end + 4; // throttle_time_ms
    let (count, n) = uvarint(frame, brokers_at)?;
    let mut at = brokers_at + n;
    for _ in 0..count.checked_sub(1)? {
        at += 4; // node id
        at = skip_compact(frame, at, 1)?; // host
        at += 4; // port
        at = skip_compact(frame, at, 1)?; // rack
        at = skip_tags(frame, at)?;
    }
    let mut out = frame[..brokers_at].to_vec();
    put_uvarint(&mut out, nodes.len() as u64 + 1);
    for (id, addr) in nodes {
        let host = addr.ip().to_string();
        out.extend_from_slice(&id.to_be_bytes());
        put_uvarint(&mut out, host.len() as u64 + 1);
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(&i32::from(addr.port()).to_be_bytes());
        out.push(0); // rack: null
        out.push(0); // no tags
    }
    let rest = out.len();
    out.extend_from_slice(&frame[at..]);
    let mut at = skip_compact(&out, rest, 1)?; // cluster id
    at += 4; // controller id
    let (topics, n) = uvarint(&out, at)?;
    at += n;
    for _ in 0..topics.checked_sub(1)? {
        at += 2; // error code
        at = skip_compact(&out, at, 1)?; // name
        at += 16 + 1; // topic id, is_internal
        let (partitions, n) = uvarint(&out, at)?;
        at += n;
        for _ in 0..partitions.checked_sub(1)? {
            at += 2; // error code
            let b = out.get(at..at + 4)?;
            let index = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            at += 4;
            if let Some(leader) = usize::try_from(index).ok().and_then(|i| leaders.get(i)) {
                out[at..at + 4].copy_from_slice(&leader.to_be_bytes());
            }
            at += 4 + 4; // leader id, leader epoch
            for _ in 0..3 {
                at = skip_compact(&out, at, 4)?; // replicas, in-sync replicas, offline
            }
            at = skip_tags(&out, at)?;
        }
        at += 4; // topic authorized operations
        at = skip_tags(&out, at)?;
    }
    (skip_tags(&out, at)? == out.len()).then_some(out)
}

/// The MESSAGE_TOO_LARGE answer to a Produce request holding the poison marker, made from an
/// earlier real answer at the same version; `None` to forward the request.
fn refuse_poisoned(st: &State, frame: &[u8], version: i16, id: i32) -> Option<Vec<u8>> {
    let poison = st.poison.lock().unwrap().clone()?;
    if !frame.windows(poison.len()).any(|w| w == poison.as_slice()) {
        return None;
    }
    let mut answer = st.templates.lock().unwrap().get(&version)?.clone();
    let partition = produce_request_partition(frame, version)?;
    let at = produce_error_at(&answer, version)?;
    answer[..4].copy_from_slice(&id.to_be_bytes());
    answer[at - 4..at].copy_from_slice(&partition.to_be_bytes());
    answer[at..at + 2].copy_from_slice(&10i16.to_be_bytes());
    st.refused.fetch_add(1, Ordering::SeqCst);
    Some(answer)
}

/// A TLS terminator in front of `broker` (tansu 0.6.0 takes `--cert` and `--key` but does not
/// serve TLS): accepts TLS with `config`, forwards the plaintext both ways. One thread per
/// connection, polling both sides with short read timeouts. Stops on drop.
pub struct TlsFront {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<thread::JoinHandle<()>>,
}

impl TlsFront {
    pub fn start(broker: SocketAddr, config: Arc<rustls::ServerConfig>) -> TlsFront {
        let listener = TcpListener::bind("127.0.0.1:0").expect("TLS front port");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let accept = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (config, st) = (config.clone(), st.clone());
                        thread::spawn(move || terminate(client, broker, config, st));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TlsFront {
            addr,
            stop,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn terminate(
    client: TcpStream,
    broker: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    stop: Arc<AtomicBool>,
) {
    let Ok(mut upstream) = TcpStream::connect(broker) else {
        return;
    };
    let tick = Some(Duration::from_millis(2));
    client.set_nonblocking(false).unwrap();
    client.set_read_timeout(tick).unwrap();
    upstream.set_read_timeout(tick).unwrap();
    let conn = rustls::ServerConnection::new(config).expect("TLS session");
    let mut tls = rustls::StreamOwned::new(conn, client);
    let mut buf = vec![0u8; 64 << 10];
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    while !stop.load(Ordering::SeqCst) {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if upstream.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if timed_out(&e) => {}
            Err(_) => break,
        }
        match upstream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if tls.write_all(&buf[..n]).and_then(|()| tls.flush()).is_err() {
                    break;
                }
            }
            Err(e) if timed_out(&e) => {}
            Err(_) => break,
        }
    }
    let _ = upstream.shutdown(Shutdown::Both);
    let _ = tls.sock.shutdown(Shutdown::Both);
}
