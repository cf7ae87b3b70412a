//! `ringrelay selftest`: the relay's main job on this machine, end to end, on loopback.
//!
//! Two feeds (an NSS web-log feed and an LSS user-activity feed) receive realistic records from
//! a generator; each delivers to a built-in SIEM receiver over TCP. The SIEM goes down for a
//! while and comes back. The relay is a real relay process: this binary started again as
//! `ringrelay run --config <work dir>/selftest.toml`, with its rings in a work directory under
//! `$TMPDIR`. This process is the test equipment: the generator and the SIEM on their own
//! threads, and the driver, which reads the relay's counters from its admin endpoint. At the end
//! every record id the generator sent is looked up at the SIEM: exit 0 only if none is missing.
//!
//! Every way out stops the relay and removes the work directory: the end of the run, a failure,
//! SIGINT/SIGTERM/SIGHUP (exit 128 + the signal: 130 for Ctrl-C, within a second), a closed
//! stdout (`selftest | head -2`: a quiet exit 0), and a panic (a hook cleans up before the
//! abort).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::Pid;

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

/// The shortest run that has room for a start, an outage and a recovery.
pub const MIN_SECONDS: u64 = 3;
/// The longest run: its rings (sized to hold everything sent) stay near 1 GiB per feed.
pub const MAX_SECONDS: u64 = 120;

/// What one run does, announced at the start and reported at the end with the same numbers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// The generators send for this long.
    pub send_for: Duration,
    /// The SIEM goes down this long after the start...
    pub down_at: Duration,
    /// ...for this long.
    pub down_for: Duration,
    /// Giving up on delivery this long after the start.
    pub give_up_after: Duration,
    /// Each feed's ring, in MiB: holds everything sent, so nothing may be overwritten.
    pub ring_mib: u64,
}

impl Plan {
    /// The plan for `ringrelay selftest --seconds N`: sending for 70% of N, the SIEM down from
    /// 20% to 50%, the rest of N to catch up. `N` outside
    /// [`MIN_SECONDS`]..=[`MAX_SECONDS`] is refused.
    pub fn new(seconds: u64) -> Result<Plan, String> {
        if !(MIN_SECONDS..=MAX_SECONDS).contains(&seconds) {
            return Err(format!(
                "ringrelay selftest: --seconds {seconds}: must be {MIN_SECONDS} to {MAX_SECONDS} \
                 (the run needs time to send, take the SIEM down, bring it back and catch up)"
            ));
        }
        let total = Duration::from_secs(seconds);
        let send_for = total.mul_f64(0.7);
        // Room for every record sent, at up to 1.5 KiB each, rounded up to 64 MiB.
        let bytes = send_for.as_secs_f64() * RATE as f64 * 1536.0;
        let ring_mib = ((bytes / f64::from(1 << 20)) as u64 / 64 + 1) * 64;
        Ok(Plan {
            send_for,
            down_at: total.mul_f64(0.2),
            down_for: total.mul_f64(0.3),
            give_up_after: total + Duration::from_secs(20),
            ring_mib,
        })
    }

    fn siem_up(&self, elapsed: Duration) -> bool {
        elapsed < self.down_at || elapsed >= self.down_at + self.down_for
    }
}

/// Why a run ended early.
enum Quit {
    /// A signal (its number): exit 128 + it.
    Signal(i32),
    /// Nobody reads stdout any more (`selftest | head -2`): a quiet exit 0.
    StdoutClosed,
    /// The selftest could not run (not a loss: that is a FAIL report).
    Failed(String),
}

/// Writes one report line; a closed stdout ends the run quietly.
fn say(line: &str) -> Result<(), Quit> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => Quit::StdoutClosed,
            _ => Quit::Failed(format!("stdout: {e}")),
        })
}

/// The work directory under `$TMPDIR`, removed when dropped.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The relay process's pid, for the panic hook (0: none).
static RELAY_PID: AtomicI32 = AtomicI32::new(0);

/// The relay process: stopped (SIGTERM, then SIGKILL after a second) when dropped.
struct RelayProcess {
    child: Child,
}

impl RelayProcess {
    fn spawn(config: &Path) -> Result<(RelayProcess, std::process::ChildStderr), String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let mut child = Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(config)
            // Under systemd, the relay must not talk to this unit's notify socket.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {} run: {e}", exe.display()))?;
        RELAY_PID.store(child.id() as i32, Ordering::Relaxed);
        let stderr = child.stderr.take().ok_or("relay stderr")?;
        Ok((RelayProcess { child }, stderr))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then up to `limit` for the relay to drain and exit, then SIGKILL.
    fn stop(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        if let Some(st) = self.exited() {
            return Some(st);
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(1));
        RELAY_PID.store(0, Ordering::Relaxed);
    }
}

/// What the relay says about itself on stderr that the driver needs: its addresses.
enum RelayLine {
    Listening { feed: String, addr: SocketAddr },
    Admin(SocketAddr),
}

/// Reads the relay's log: addresses go to the driver; errors are shown; the rest (the outage's
/// warnings, by design) is not.
fn read_relay_log(stderr: std::process::ChildStderr, tx: mpsc::Sender<RelayLine>) {
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        let addr = || field(&line, "addr").and_then(|a| a.parse().ok());
        if line.contains(" event=listening ") {
            if let (Some(feed), Some(addr)) = (field(&line, "feed"), addr()) {
                let _ = tx.send(RelayLine::Listening {
                    feed: feed.to_string(),
                    addr,
                });
            }
        } else if line.contains(" event=admin_listening ") {
            if let Some(addr) = addr() {
                let _ = tx.send(RelayLine::Admin(addr));
            }
        } else if line.starts_with("level=error") {
            eprintln!("selftest: relay: {line}");
        }
    }
}

/// The unquoted value of `key=` in a relay log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The relay's counters, from its `/metrics`.
#[derive(Clone, Copy, Default)]
struct Counters {
    in_ring: u64,
    delivered: u64,
}

fn scrape(admin: SocketAddr) -> Option<Counters> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: selftest\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (Some(name), Some(value)) = (line.split(['{', ' ']).next(), line.rsplit(' ').next())
        else {
            continue;
        };
        let v = value.parse::<f64>().unwrap_or(0.0) as u64;
        match name {
            "ringrelay_feed_records_received_total" => c.in_ring += v,
            "ringrelay_output_records_delivered_total"
            | "ringrelay_output_records_replayed_total" => c.delivered += v,
            _ => {}
        }
    }
    Some(c)
}

/// SIGINT, SIGTERM and SIGHUP, blocked in every thread of this process and read here.
fn signals() -> Result<SignalFd, String> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| format!("block signals: {e}"))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))
}

/// Sleeps `d`, waking every 50 ms to look for a signal and a relay that died.
fn nap(d: Duration, sigs: &SignalFd, relay: &mut RelayProcess) -> Result<(), Quit> {
    let end = Instant::now() + d;
    loop {
        if let Ok(Some(info)) = sigs.read_signal() {
            return Err(Quit::Signal(info.ssi_signo as i32));
        }
        if let Some(st) = relay.exited() {
            return Err(Quit::Failed(format!("the relay process exited ({st})")));
        }
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Runs the selftest as `plan` says.
pub fn run(plan: Plan) -> ExitCode {
    // Before any thread exists, so that every thread inherits the mask and a signal waits
    // for the driver.
    let sigs = match signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("selftest: {e}");
            return ExitCode::from(1);
        }
    };
    let dir =
        WorkDir(std::env::temp_dir().join(format!("ringrelay-selftest-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let hook_dir = dir.0.clone();
    let previous = std::sync::Arc::new(std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let pid = RELAY_PID.load(Ordering::Relaxed);
        if pid > 0 {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&hook_dir);
    }));
    match run_in(&dir.0, plan, &sigs) {
        Ok(code) => code,
        Err(Quit::StdoutClosed) => ExitCode::SUCCESS,
        Err(Quit::Signal(n)) => {
            drop(dir);
            eprintln!("selftest: interrupted");
            ExitCode::from(128 + n as u8)
        }
        Err(Quit::Failed(why)) => {
            eprintln!("selftest: {why}");
            ExitCode::from(1)
        }
    }
}

/// Runs the selftest in the work directory `dir`: starts the SIEM and the relay, sends, watches
/// the delivery, stops everything and reports.
fn run_in(dir: &Path, plan: Plan, sigs: &SignalFd) -> Result<ExitCode, Quit> {
    let failed = |what: &str, e: &dyn std::fmt::Display| Quit::Failed(format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| failed(&dir.display().to_string(), &e))?;
    let (siem, siem_thread) =
        Siem::start().map_err(|e| failed("cannot start the SIEM receiver on 127.0.0.1", &e))?;
    let config = dir.join("selftest.toml");
    std::fs::write(&config, config_text(dir, siem.addr, plan.ring_mib))
        .map_err(|e| failed(&config.display().to_string(), &e))?;
    let (mut relay, stderr) = RelayProcess::spawn(&config).map_err(Quit::Failed)?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || read_relay_log(stderr, tx));
    let (addrs, admin) = relay_addresses(&rx, sigs, &mut relay)?;

    say(&format!(
        "selftest: relay process {} (ringrelay run --config {}), 2 feeds x {RATE} events/s \
         for {:.1} s, rings of {} MiB; the SIEM goes down at {:.1} s for {:.1} s",
        relay.pid(),
        config.display(),
        plan.send_for.as_secs_f64(),
        plan.ring_mib,
        plan.down_at.as_secs_f64(),
        plan.down_for.as_secs_f64(),
    ))?;
    let mut gens = Generators::start(addrs);
    let (elapsed, peak_rate) = watch(plan, &siem, admin, &gens, sigs, &mut relay)?;
    gens.join();
    match relay.stop(Duration::from_secs(10)) {
        Some(st) if st.success() => {}
        Some(st) => eprintln!("selftest: the relay process ended with {st}"),
        None => eprintln!("selftest: the relay process did not stop within 10 s; killed"),
    }
    // Let the SIEM's readers take in what is still on the wire.
    thread::sleep(Duration::from_millis(300));
    siem.stop.store(true, Ordering::Relaxed);
    let _ = siem_thread.join();
    report(plan, &siem, gens.sent(), elapsed, peak_rate)
}

/// The relay's feed and admin addresses, once it has created its rings and bound its ports
/// (it says so on its log, `rx`).
fn relay_addresses(
    rx: &mpsc::Receiver<RelayLine>,
    sigs: &SignalFd,
    relay: &mut RelayProcess,
) -> Result<([SocketAddr; 2], SocketAddr), Quit> {
    let (mut addrs, mut admin) = ([None, None], None);
    let start_limit = Instant::now() + Duration::from_secs(60);
    loop {
        if let ([Some(a), Some(b)], Some(m)) = (addrs, admin) {
            return Ok(([a, b], m));
        }
        if Instant::now() > start_limit {
            return Err(Quit::Failed("the relay did not start within 60 s".into()));
        }
        nap(Duration::ZERO, sigs, relay)?;
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(RelayLine::Listening { feed, addr }) => {
                addrs[usize::from(feed != FEEDS[0])] = Some(addr);
            }
            Ok(RelayLine::Admin(addr)) => admin = Some(addr),
            Err(_) => {}
        }
    }
}

/// The two generators (NSS to the first feed, LSS to the second), what each has sent, and the
/// flag that stops them. Whatever ends the run, they stop when this is dropped.
struct Generators {
    stop: Arc<AtomicBool>,
    sent: [Arc<AtomicU64>; 2],
    threads: Vec<thread::JoinHandle<()>>,
}

impl Generators {
    fn start(addrs: [SocketAddr; 2]) -> Generators {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let threads = (0..2)
            .map(|i| {
                let (addr, sent, stop) = (addrs[i], sent[i].clone(), stop.clone());
                thread::spawn(move || generator(addr, i == 1, sent, stop))
            })
            .collect();
        Generators {
            stop,
            sent,
            threads,
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Records sent so far by each generator.
    fn sent(&self) -> [u64; 2] {
        [
            self.sent[0].load(Ordering::Relaxed),
            self.sent[1].load(Ordering::Relaxed),
        ]
    }

    fn finished(&self) -> bool {
        self.threads.iter().all(thread::JoinHandle::is_finished)
    }

    /// Stops the generators and waits for them.
    fn join(&mut self) {
        self.stop();
        for g in self.threads.drain(..) {
            let _ = g.join();
        }
    }
}

impl Drop for Generators {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Drives the run as `plan` says: takes the SIEM down and back, stops the generators, and
/// reports the counters each second until everything sent has arrived (or the plan gives up).
/// Returns the seconds it took and the peak delivery rate seen.
fn watch(
    plan: Plan,
    siem: &Siem,
    admin: SocketAddr,
    gens: &Generators,
    sigs: &SignalFd,
    relay: &mut RelayProcess,
) -> Result<(f64, u64), Quit> {
    let start = Instant::now();
    let (mut counters, mut last_delivered, mut peak_rate) = (Counters::default(), 0u64, 0u64);
    let mut next_report = start + Duration::from_secs(1);
    loop {
        let elapsed = start.elapsed();
        siem.up.store(plan.siem_up(elapsed), Ordering::Relaxed);
        if elapsed >= plan.send_for {
            gens.stop();
        }
        let now = Instant::now();
        if now < next_report {
            nap(
                (next_report - now).min(Duration::from_millis(50)),
                sigs,
                relay,
            )?;
            continue;
        }
        next_report += Duration::from_secs(1);
        counters = scrape(admin).unwrap_or(counters);
        peak_rate = peak_rate.max(counters.delivered.saturating_sub(last_delivered));
        last_delivered = counters.delivered;
        let total_sent: u64 = gens.sent().iter().sum();
        let unique = unique_received(&siem.received);
        say(&format!(
            "t={:>3.0}s sent={total_sent} in_ring={} delivered={} siem_unique={unique} siem={}",
            elapsed.as_secs_f64(),
            counters.in_ring,
            counters.delivered,
            if siem.up.load(Ordering::Relaxed) {
                "up"
            } else {
                "DOWN"
            }
        ))?;
        let done = elapsed >= plan.send_for && unique >= total_sent && gens.finished();
        if done || elapsed > plan.give_up_after {
            return Ok((start.elapsed().as_secs_f64(), peak_rate));
        }
    }
}

/// The last lines: what the SIEM received of the `sent` records, and PASS (exit 0) only if
/// none is missing.
fn report(
    plan: Plan,
    siem: &Siem,
    sent: [u64; 2],
    elapsed: f64,
    peak_rate: u64,
) -> Result<ExitCode, Quit> {
    let rec = siem
        .received
        .lock()
        .map(|r| summarize(&r, sent))
        .unwrap_or_default();
    let total_sent = sent[0] + sent[1];
    say(&format!(
        "selftest: sent={total_sent} delivered_unique={} lost={} duplicates={} unparsed={} \
         elapsed={elapsed:.1}s events_per_s={:.0} mib_per_s={:.1} peak_catch_up_events_per_s={peak_rate}",
        rec.unique,
        rec.lost,
        rec.duplicates,
        rec.unparsed,
        rec.unique as f64 / elapsed,
        rec.bytes as f64 / elapsed / (1 << 20) as f64,
    ))?;
    if rec.lost == 0 && total_sent > 0 {
        say(&format!(
            "selftest: PASS: nothing lost through a SIEM outage of {:.1} s (down at {:.1} s)",
            plan.down_for.as_secs_f64(),
            plan.down_at.as_secs_f64()
        ))?;
        Ok(ExitCode::SUCCESS)
    } else {
        say(&format!("selftest: FAIL: {} record(s) lost", rec.lost))?;
        Ok(ExitCode::from(1))
    }
}

/// The feeds' names, in the order of the generators (NSS, LSS).
const FEEDS: [&str; 2] = ["nss-web", "lss-user-activity"];

fn config_text(dir: &Path, siem: SocketAddr, ring_mib: u64) -> String {
    let feed = |name: &str| {
        format!(
            r#"
[[feed]]
name = "{name}"
input = {{ kind = "tcp", listen = "127.0.0.1:0" }}
buffer = {{ size = "{ring_mib}MiB" }}
[[feed.output]]
name = "siem"
kind = "tcp"
address = "{siem}"
replay = "15m"
"#
        )
    };
    format!(
        "[relay]\ndata_dir = \"{}\"\nadmin_listen = \"127.0.0.1:0\"\ninstance = \"selftest\"\n{}{}",
        dir.join("data").display(),
        feed(FEEDS[0]),
        feed(FEEDS[1])
    )
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
