//! `ringrelay selftest`: the relay's main job on this machine, end to end, on loopback.
//!
//! Two feeds (an NSS web-log feed and an LSS user-activity feed) receive realistic records from
//! a generator; each delivers to a built-in SIEM receiver over TCP. The SIEM goes down for a
//! third of the run and comes back. The relay runs exactly as `ringrelay run` does, in this
//! thread; the generator and the SIEM are test equipment on their own threads. At the end every
//! record id the generator sent is looked up at the SIEM: exit 0 only if none is missing.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::relay::Relay;

/// Events per second per feed from the generator.
const RATE: u64 = 10_000;
/// Offset of LSS record ids, so the two feeds' ids never collide.
const LSS_ID_BASE: u64 = 1 << 40;

/// What the SIEM received.
#[derive(Default)]
struct Received {
    /// Times each NSS / LSS id arrived.
    nss: Vec<u8>,
    lss: Vec<u8>,
    lines: u64,
    bytes: u64,
    unparsed: u64,
}

impl Received {
    fn note(&mut self, line: &[u8]) {
        self.lines += 1;
        self.bytes += line.len() as u64 + 1;
        let Some(id) = record_id(line) else {
            self.unparsed += 1;
            return;
        };
        let (v, i) = if id >= LSS_ID_BASE {
            (&mut self.lss, id - LSS_ID_BASE)
        } else {
            (&mut self.nss, id)
        };
        let i = i as usize;
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] = v[i].saturating_add(1);
    }
}

fn record_id(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let (marker, base) = if let Some(i) = text.find("\"recordid\":\"") {
        (i + 12, 0)
    } else {
        (text.find("\"ConnectionID\": \"rr-")? + 20, LSS_ID_BASE)
    };
    let digits: String = text[marker..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse::<u64>().ok().map(|n| n + base)
}

fn nss_line(id: u64) -> String {
    format!(
        "<13>Nov 24 09:13:00 zscaler-nss: {{ \"sourcetype\" : \"zscalernss-web\", \"event\" :{{\"datetime\":\"Tue Nov 24 09:13:00 2026\",\"recordid\":\"{id}\",\"login\":\"user{}@example.com\",\"proto\":\"HTTPS\",\"eurl\":\"browser.events.data.msn.com:443\",\"action\":\"Allowed\",\"appname\":\"General Browsing\",\"appclass\":\"General Browsing\",\"reqsize\":\"600\",\"respsize\":\"65\",\"urlclass\":\"Business Use\",\"urlsupercat\":\"Information Technology\",\"urlcat\":\"Web Search\",\"malwarecat\":\"None\",\"threatname\":\"None\",\"riskscore\":\"0\",\"dlpeng\":\"None\",\"location\":\"Branch-{}\",\"dept\":\"Engineering\",\"cip\":\"10.1.{}.{}\",\"sip\":\"81.2.69.145\",\"reqmethod\":\"CONNECT\",\"respcode\":\"200\",\"ua\":\"Windows Microsoft Windows 10 Pro ZTunnel/1.0\",\"ruletype\":\"FwFilter\",\"rulelabel\":\"Zscaler Proxy Traffic\",\"deviceowner\":\"administrator1\",\"devicehostname\":\"TestMachine35\"}}}}",
        id % 5000,
        id % 40,
        (id / 256) % 256,
        id % 256
    )
}

fn lss_line(id: u64) -> String {
    format!(
        "{{\"LogTimestamp\": \"Tue Nov 24 09:13:00 2026\",\"Customer\": \"Customer XYZ\",\"SessionID\": \"LHJdkjmNDf12nclBsvwA\",\"ConnectionID\": \"rr-{id},Q+EjXGdrvbF2lPiBbedm\",\"InternalReason\": \"\",\"ConnectionStatus\": \"active\",\"IPProtocol\": 6,\"DoubleEncryption\": 0,\"Username\": \"user{}@example.com\",\"ServicePort\": 443,\"ClientPublicIP\": \"81.2.69.193\",\"ClientPrivateIP\": \"\",\"ClientLatitude\": 45.000000,\"ClientLongitude\": -119.000000,\"ClientCountryCode\": \"US\",\"ClientZEN\": \"broker2b.pdx\",\"Policy\": \"Lab Apps\",\"Connector\": \"Connector {}\",\"ConnectorZEN\": \"broker2b.pdx\",\"ConnectorIP\": \"67.43.156.12\",\"ConnectorPort\": 60266,\"Host\": \"175.16.199.1\",\"Application\": \"Lab Apps\",\"AppGroup\": \"Lab Apps\",\"Server\": \"0\",\"ServerIP\": \"175.16.199.1\",\"ServerPort\": 443,\"PolicyProcessingTime\": 28,\"CAProcessingTime\": 1330,\"ServerSetupTime\": 465,\"TimestampConnectionStart\": \"2026-11-24T09:12:42.230Z\",\"TimestampConnectionEnd\": \"\",\"ZENTotalBytesRxClient\": 2406926,\"ZENBytesRxClient\": 7115,\"ZENTotalBytesTxConnector\": 2406926,\"ZENBytesTxConnector\": 7115,\"Idp\": \"Example IDP Config\"}}",
        id % 5000,
        id % 8
    )
}

/// A SIEM receiver that can be taken down and brought back on the same port.
struct Siem {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    received: Arc<Mutex<Received>>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Siem {
    fn start() -> std::io::Result<(Siem, thread::JoinHandle<()>)> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let siem = Siem {
            addr,
            up: Arc::new(AtomicBool::new(true)),
            received: Arc::default(),
            conns: Arc::default(),
            stop: Arc::default(),
        };
        let (up, received, conns, stop) = (
            siem.up.clone(),
            siem.received.clone(),
            siem.conns.clone(),
            siem.stop.clone(),
        );
        let handle = thread::spawn(move || {
            let mut listener = Some(listener);
            while !stop.load(Ordering::Relaxed) {
                match (&listener, up.load(Ordering::Relaxed)) {
                    (Some(_), false) => {
                        // Down: refuse connections and cut the live ones.
                        listener = None;
                        for c in conns
                            .lock()
                            .map(|mut v| std::mem::take(&mut *v))
                            .unwrap_or_default()
                        {
                            let _ = c.shutdown(Shutdown::Both);
                        }
                    }
                    (None, true) => listener = TcpListener::bind(addr).ok(),
                    (Some(l), true) => {
                        let _ = l.set_nonblocking(true);
                        if let Ok((s, _)) = l.accept() {
                            let _ = s.set_nonblocking(false);
                            if let Ok(c) = s.try_clone() {
                                if let Ok(mut v) = conns.lock() {
                                    v.push(c);
                                }
                            }
                            let received = received.clone();
                            thread::spawn(move || {
                                let mut r = BufReader::with_capacity(1 << 20, s);
                                let mut line = Vec::with_capacity(4096);
                                while r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                                    if line.last() == Some(&b'\n') {
                                        line.pop();
                                        if let Ok(mut rec) = received.lock() {
                                            rec.note(&line);
                                        }
                                    }
                                    line.clear();
                                }
                            });
                            continue;
                        }
                    }
                    (None, false) => {}
                }
                thread::sleep(Duration::from_millis(5));
            }
        });
        Ok((siem, handle))
    }
}

/// A sender of `RATE` records per second of one kind, until `stop`.
fn generator(addr: SocketAddr, lss: bool, sent: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        eprintln!("selftest: generator cannot connect to the relay at {addr}");
        return;
    };
    let start = Instant::now();
    let mut n = 0u64;
    let mut batch = Vec::with_capacity(1 << 20);
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * RATE as f64) as u64;
        while n < due && batch.len() < (1 << 20) {
            let line = if lss { lss_line(n) } else { nss_line(n) };
            batch.extend_from_slice(line.as_bytes());
            batch.push(b'\n');
            n += 1;
        }
        if !batch.is_empty() {
            if s.write_all(&batch).is_err() {
                eprintln!("selftest: generator lost its connection to the relay");
                return;
            }
            sent.store(n, Ordering::Relaxed);
            batch.clear();
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn config_text(dir: &std::path::Path, siem: SocketAddr) -> String {
    let feed = |name: &str| {
        format!(
            r#"
[[feed]]
name = "{name}"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "256MiB" }}
[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem}"
replay = "15m"
"#
        )
    };
    format!(
        "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"off\"\ninstance = \"selftest\"\n{}{}",
        dir.display(),
        feed("nss-web"),
        feed("lss-user-activity")
    )
}

/// Runs the selftest for about `total`.
pub fn run(total: Duration) -> ExitCode {
    let dir = std::env::temp_dir().join(format!("ringrelay-selftest-{}", std::process::id()));
    let code = run_in(&dir, total);
    let _ = std::fs::remove_dir_all(&dir);
    code
}

fn run_in(dir: &std::path::Path, total: Duration) -> ExitCode {
    let _ = std::fs::remove_dir_all(dir);
    let (siem, siem_thread) = match Siem::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("selftest: cannot start the SIEM receiver on 127.0.0.1: {e}");
            return ExitCode::from(1);
        }
    };
    let text = config_text(dir, siem.addr);
    let cfg = match Config::parse(&text, std::path::Path::new("selftest.toml")) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("selftest: built-in config: {e}");
            }
            return ExitCode::from(1);
        }
    };
    let mut relay = match Relay::start(&cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("selftest: relay did not start: {e}");
            return ExitCode::from(1);
        }
    };
    let secs = total.as_secs_f64();
    println!(
        "selftest: 2 feeds x {RATE} events/s for {:.0} s; the SIEM is down from {:.0} s to {:.0} s",
        secs * 0.7,
        secs * 0.2,
        secs * 0.5
    );
    let stop_gen = Arc::new(AtomicBool::new(false));
    let sent = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
    let gens: Vec<_> = (0..2)
        .map(|i| {
            let (addr, sent, stop) = (relay.listen_addr(i), sent[i].clone(), stop_gen.clone());
            thread::spawn(move || generator(addr, i == 1, sent, stop))
        })
        .collect();
    let start = Instant::now();
    let mut last_delivered = 0u64;
    let mut peak_rate = 0u64;
    let drain_deadline = total + Duration::from_secs(20);
    loop {
        let elapsed = start.elapsed();
        let t = elapsed.as_secs_f64() / secs;
        siem.up.store(!(0.2..0.5).contains(&t), Ordering::Relaxed);
        if t >= 0.7 {
            stop_gen.store(true, Ordering::Relaxed);
        }
        if let Err(e) = relay.run_until(Some(Instant::now() + Duration::from_secs(1))) {
            eprintln!("selftest: relay failed: {e}");
            return ExitCode::from(1);
        }
        let total_sent: u64 = sent.iter().map(|s| s.load(Ordering::Relaxed)).sum();
        let in_ring: u64 = relay.feeds.iter().map(|f| f.stats.records).sum();
        let delivered: u64 = relay
            .feeds
            .iter()
            .flat_map(|f| f.outputs.iter())
            .map(|o| o.stats.delivered + o.stats.replayed)
            .sum();
        peak_rate = peak_rate.max(delivered - last_delivered);
        last_delivered = delivered;
        let unique = unique_received(&siem.received);
        println!(
            "t={:>3.0}s sent={total_sent} in_ring={in_ring} delivered={delivered} siem_unique={unique} siem={}",
            start.elapsed().as_secs_f64(),
            if siem.up.load(Ordering::Relaxed) { "up" } else { "DOWN" }
        );
        let done =
            t >= 0.7 && unique >= total_sent && gens.iter().all(thread::JoinHandle::is_finished);
        if done || start.elapsed() > drain_deadline {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop_gen.store(true, Ordering::Relaxed);
    for g in gens {
        let _ = g.join();
    }
    if let Err(e) = relay.finish() {
        eprintln!("selftest: shutdown: {e}");
    }
    // Let the SIEM's readers take in what is still on the wire.
    thread::sleep(Duration::from_millis(300));
    siem.stop.store(true, Ordering::Relaxed);
    let _ = siem_thread.join();
    let sent: [u64; 2] = [
        sent[0].load(Ordering::Relaxed),
        sent[1].load(Ordering::Relaxed),
    ];
    let rec = siem
        .received
        .lock()
        .map(|r| summarize(&r, sent))
        .unwrap_or_default();
    let total_sent = sent[0] + sent[1];
    println!(
        "selftest: sent={total_sent} delivered_unique={} lost={} duplicates={} unparsed={} \
         elapsed={elapsed:.1}s events_per_s={:.0} mib_per_s={:.1} peak_catch_up_events_per_s={peak_rate}",
        rec.unique,
        rec.lost,
        rec.duplicates,
        rec.unparsed,
        rec.unique as f64 / elapsed,
        rec.bytes as f64 / elapsed / (1 << 20) as f64,
    );
    if rec.lost == 0 && total_sent > 0 {
        println!(
            "selftest: PASS: nothing lost through a SIEM outage of {:.0} s",
            secs * 0.3
        );
        ExitCode::SUCCESS
    } else {
        println!("selftest: FAIL: {} record(s) lost", rec.lost);
        ExitCode::from(1)
    }
}

#[derive(Default)]
struct Summary {
    unique: u64,
    lost: u64,
    duplicates: u64,
    unparsed: u64,
    bytes: u64,
}

fn summarize(r: &Received, sent: [u64; 2]) -> Summary {
    let mut s = Summary {
        unparsed: r.unparsed,
        bytes: r.bytes,
        ..Summary::default()
    };
    for (v, n) in [(&r.nss, sent[0]), (&r.lss, sent[1])] {
        for i in 0..n as usize {
            match v.get(i).copied().unwrap_or(0) {
                0 => s.lost += 1,
                k => {
                    s.unique += 1;
                    s.duplicates += u64::from(k) - 1;
                }
            }
        }
    }
    s
}

fn unique_received(r: &Mutex<Received>) -> u64 {
    r.lock()
        .map(|r| r.nss.iter().chain(r.lss.iter()).filter(|&&c| c > 0).count() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_ids_are_found_in_both_kinds_of_line() {
        assert_eq!(record_id(nss_line(42).as_bytes()), Some(42));
        assert_eq!(record_id(lss_line(7).as_bytes()), Some(LSS_ID_BASE + 7));
        assert_eq!(record_id(b"{}"), None);
    }
}
