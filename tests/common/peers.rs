//! Real syslog peers for the tests: rsyslogd and syslog-ng from Debian's packages, unpacked
//! (not installed) into `target/peers/` by `tests/peers/install.sh`, which the first test to
//! need them runs. Each peer runs in the foreground with its own directory, configuration,
//! pid file and state on 127.0.0.1, and is killed and reaped on drop.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use crate::common::wait_until;

/// Where the peers are unpacked (`RINGRELAY_PEERS_DIR` or `target/peers` of this repository),
/// after running the install script once per test binary. Panics, telling how to install,
/// when the script fails: a test that needs a peer never passes without it.
pub fn peers_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = std::env::var_os("RINGRELAY_PEERS_DIR")
            .map_or_else(|| root.join("target/peers"), PathBuf::from);
        let script = root.join("tests/peers/install.sh");
        let how = format!(
            "the tests need rsyslog and syslog-ng unpacked in {}: run `bash {}` as root on \
             Debian 12 with apt and Debian's package mirrors reachable (it downloads rsyslog, \
             rsyslog-gnutls and syslog-ng-core, unpacks them there and installs only their \
             shared libraries)",
            dir.display(),
            script.display()
        );
        let out = Command::new("bash")
            .arg(&script)
            .env("RINGRELAY_PEERS_DIR", &dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}\n{how}", script.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{text}\n{how}",
                script.display(),
                out.status
            ));
        }
        eprintln!("{}", text.trim_end());
        Ok(dir)
    });
    match dir {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    }
}

/// A peer process: stdout and stderr collected line by line, killed and reaped on drop.
pub struct PeerProc {
    pub name: String,
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl PeerProc {
    fn spawn(name: &str, mut cmd: Command) -> PeerProc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for pipe in [out, err] {
            let (log, tag) = (log.clone(), format!("{name} {}", child.id()));
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if std::env::var_os("RINGRELAY_TEST_LOG").is_some() {
                        eprintln!("{tag}: {line}");
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        PeerProc {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Panics with the peer's output if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("{} exited ({st}):\n{}", self.name, self.log_text());
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// rsyslogd 8.2302 in the foreground (`-n`) on `DIR/rsyslog.conf`, with its own pid file,
/// work directory and module directory (the unpacked tree's).
pub struct Rsyslog {
    pub proc: PeerProc,
    pub dir: PathBuf,
}

impl Rsyslog {
    /// Starts rsyslogd in `dir` (created) with `config` after a `global(workDirectory=...)`
    /// line. `{dir}` in `config` stands for `dir`. Waits until every `listenPortFileName` that
    /// the config names exists (see [`Rsyslog::port`]).
    pub fn start(dir: &Path, config: &str) -> Rsyslog {
        let peers = peers_dir();
        std::fs::create_dir_all(dir.join("work")).unwrap();
        for f in std::fs::read_dir(dir).unwrap().map_while(Result::ok) {
            if f.file_name().to_string_lossy().ends_with(".port") {
                std::fs::remove_file(f.path()).unwrap();
            }
        }
        let config = config.replace("{dir}", &dir.display().to_string());
        let text = format!(
            "global(workDirectory=\"{}\")\n{config}",
            dir.join("work").display()
        );
        std::fs::write(dir.join("rsyslog.conf"), &text).unwrap();
        let mut cmd = Command::new(peers.join("rsyslog/usr/sbin/rsyslogd"));
        cmd.arg("-n")
            .arg("-f")
            .arg(dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .arg("-M")
            .arg(rsyslog_modules(peers))
            .current_dir(dir);
        let mut r = Rsyslog {
            proc: PeerProc::spawn("rsyslogd", cmd),
            dir: dir.to_path_buf(),
        };
        let ports: Vec<PathBuf> = text
            .split("listenPortFileName=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next().map(PathBuf::from))
            .collect();
        let ok = wait_until(Duration::from_secs(20), || {
            ports.iter().all(|p| port_in(p).is_some())
        });
        r.proc.assert_running();
        assert!(ok, "rsyslogd wrote no port file:\n{}", r.proc.log_text());
        r
    }

    /// The port rsyslog bound for the input with `listenPortFileName="{dir}/NAME.port"`.
    pub fn port(&self, name: &str) -> SocketAddr {
        let p = port_in(&self.dir.join(format!("{name}.port")))
            .unwrap_or_else(|| panic!("no {name}.port:\n{}", self.proc.log_text()));
        SocketAddr::from(([127, 0, 0, 1], p))
    }
}

fn port_in(file: &Path) -> Option<u16> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The unpacked tree's module directory (`usr/lib/<triplet>/rsyslog`).
fn rsyslog_modules(peers: &Path) -> PathBuf {
    std::fs::read_dir(peers.join("rsyslog/usr/lib"))
        .unwrap()
        .map_while(Result::ok)
        .map(|e| e.path().join("rsyslog"))
        .find(|p| p.join("imtcp.so").exists())
        .expect("rsyslog modules in the unpacked tree")
}

/// syslog-ng 3.38 in the foreground (`-F`) on `DIR/syslog-ng.conf`, with its own persist file,
/// pid file and control socket, modules and libraries from the unpacked tree.
pub struct SyslogNg {
    pub proc: PeerProc,
    pub dir: PathBuf,
}

impl SyslogNg {
    /// Starts syslog-ng in `dir` (created) with `config` after the `@version` line. `{dir}`
    /// in `config` stands for `dir`.
    pub fn start(dir: &Path, config: &str) -> SyslogNg {
        let peers = peers_dir();
        std::fs::create_dir_all(dir).unwrap();
        let config = config.replace("{dir}", &dir.display().to_string());
        let text = format!("@version: 3.38\n{config}");
        std::fs::write(dir.join("syslog-ng.conf"), text).unwrap();
        let tree = peers.join("syslog-ng");
        let mut cmd = Command::new(tree.join("usr/sbin/syslog-ng"));
        cmd.arg("-F")
            .arg("-e")
            .arg("--no-caps")
            .arg("-f")
            .arg(dir.join("syslog-ng.conf"))
            .arg(format!(
                "--module-path={}",
                tree.join("usr/lib/syslog-ng/3.38").display()
            ))
            .arg(format!(
                "--persist-file={}",
                dir.join("syslog-ng.persist").display()
            ))
            .arg(format!("--pidfile={}", dir.join("syslog-ng.pid").display()))
            .arg(format!("--control={}", dir.join("syslog-ng.ctl").display()))
            .env("LD_LIBRARY_PATH", tree.join("usr/lib/syslog-ng"))
            .current_dir(dir);
        let mut s = SyslogNg {
            proc: PeerProc::spawn("syslog-ng", cmd),
            dir: dir.to_path_buf(),
        };
        let up = wait_until(Duration::from_secs(20), || {
            s.proc.log_text().contains("syslog-ng starting up")
        });
        s.proc.assert_running();
        assert!(up, "syslog-ng did not start:\n{}", s.proc.log_text());
        s
    }
}

/// Sends `lines` newline-framed to `addr` on one connection and closes it.
pub fn send_lines(addr: SocketAddr, lines: impl IntoIterator<Item = String>) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut buf = Vec::new();
    for l in lines {
        buf.extend_from_slice(l.as_bytes());
        buf.push(b'\n');
    }
    s.write_all(&buf).expect("send lines");
    s.shutdown(Shutdown::Write).ok();
}

/// The lines of a file (empty if it does not exist yet); a last line without LF is left out
/// (it may be half written).
pub fn file_lines(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap_or_default();
    let mut lines: Vec<Vec<u8>> = data.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    lines.pop();
    lines
}

/// A TCP forwarder on a port of its own to a target that can change: counts the connections
/// made to it and passes bytes and closes both ways, so a test sees how often a sender
/// connects to a receiver that keeps closing on it.
pub struct CountingProxy {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicU64>,
    target: Arc<Mutex<SocketAddr>>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl CountingProxy {
    pub fn start(target: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let target = Arc::new(Mutex::new(target));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (accepted2, target2, stop2, conns2) = (
            accepted.clone(),
            target.clone(),
            stop.clone(),
            conns.clone(),
        );
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((down, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                };
                accepted2.fetch_add(1, Ordering::Relaxed);
                down.set_nonblocking(false).unwrap();
                let to = *target2.lock().unwrap();
                let Ok(up) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
                    let _ = down.shutdown(Shutdown::Both);
                    continue;
                };
                let mut c = conns2.lock().unwrap();
                c.push(down.try_clone().unwrap());
                c.push(up.try_clone().unwrap());
                for (mut from, to) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    thread::spawn(move || {
                        let mut to_w = to.try_clone().unwrap();
                        let copied = std::io::copy(&mut from, &mut to_w);
                        // EOF: pass the FIN on; an error (a reset): close both ways.
                        match copied {
                            Ok(_) => {
                                let _ = to.shutdown(Shutdown::Write);
                            }
                            Err(_) => {
                                let _ = to.shutdown(Shutdown::Both);
                                let _ = from.shutdown(Shutdown::Both);
                            }
                        }
                    });
                }
            }
        });
        CountingProxy {
            addr,
            accepted,
            target,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    /// Where new connections go from now on.
    pub fn retarget(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
    }

    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}
