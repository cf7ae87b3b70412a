//! The sync helper: a small process of our own binary (`ringrelay sync-helper`) that runs the
//! `sync = "interval"` ring syncs (`fdatasync`) for the relay, so that the event loop never
//! waits for the disk and a relay that is killed dies at once (`buffer-spec.md` §10).
//!
//! ## Why a process
//! The kernel's background sync (Linux AIO, [`crate::ring::Ring::checkpoint_in_background`])
//! keeps the loop free too, but a process that has an AIO context cannot die before the kernel
//! has torn it down, a sync in flight included: `do_exit` waits in `exit_aio` before it closes
//! the process's files. A SIGKILL of the relay then left its sockets open for about 33 ms even
//! when no sync was in flight (0.3 ms without the context; longer with a sync in flight on slow
//! or network storage), and every record the senders wrote into them meanwhile was lost: a
//! median of 675 records per kill at 20,000 records/s of 870 B (`benches/crash_window.rs`;
//! with the helper, 60). A sync in another process holds nothing of the relay.
//!
//! The other ways weighed: `sync_file_range` and then a short `fdatasync` in the loop makes the
//! loop wait for the disk's cache flush every period (35–50 ms here); io_uring needs a new
//! dependency and more `unsafe`, and a process's rings are torn down at its exit too (not
//! measured).
//!
//! ## The lease keeper
//! With a lease (`[relay] lease`), the helper also runs the relay's heartbeats, reads the
//! fencing epochs with `O_DIRECT`, and has a watchdog thread that SIGKILLs a relay whose loop
//! froze past its lease deadline: [`crate::ha::keeper`] has the protocol and the why.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use mio::net::UnixStream;
use mio::{Interest, Registry, Token};

use crate::ha::keeper;
use crate::log::Level;

/// The hidden subcommand that runs the helper.
pub const SUBCOMMAND: &str = "sync-helper";
/// Restarts within [`RESTART_WINDOW`] after which the relay stops restarting the helper.
pub const MAX_RESTARTS: usize = 5;
/// See [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

/// The relay's side of the helper.
pub struct SyncHelper {
    exe: PathBuf,
    child: Child,
    sock: UnixStream,
    token: Token,
    /// Request bytes the socket did not take yet.
    out: Vec<u8>,
    /// Reply bytes without their LF yet.
    replies: Vec<u8>,
    /// Requests handed to the helper and not answered yet, in order.
    pending: VecDeque<Pending>,
    next_ticket: u64,
    /// When the helper was restarted, within [`RESTART_WINDOW`].
    restarts: VecDeque<Instant>,
    /// Helpers that exited and were not reaped yet.
    exited: Vec<Child>,
}

/// A request the helper has not answered yet.
enum Pending {
    /// A ring's sync: its ticket and path.
    Sync(u64, PathBuf),
    /// A heartbeat ([`crate::ha::keeper`]), requested then.
    Heartbeat(Instant),
}

/// What the helper's socket brought.
pub enum Event {
    /// The sync of [`SyncHelper::request`]'s ticket is done (or failed).
    Done(u64, io::Result<()>),
    /// The heartbeat requested at the instant is answered: the lock file's and the rings'
    /// epochs as the storage holds them, or the errno of the heartbeat write.
    Heartbeat(Instant, Result<(u64, u64), i32>),
    /// The helper died; a new one has the pending syncs.
    Restarted,
    /// The helper died and will not be restarted: the rings go back to the kernel's sync.
    Gone,
}

fn spawn(exe: &Path) -> io::Result<(Child, StdUnixStream)> {
    let (ours, theirs) = StdUnixStream::pair()?;
    let out = theirs.try_clone()?;
    let child = Command::new(exe)
        .arg0("ringrelay")
        .arg(SUBCOMMAND)
        .arg(std::process::id().to_string())
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(Stdio::from(OwnedFd::from(out)))
        .spawn()?;
    ours.set_nonblocking(true)?;
    Ok((child, ours))
}

impl SyncHelper {
    /// Starts the helper (the binary `exe`) and registers its socket as `token`.
    pub fn start(exe: PathBuf, registry: &Registry, token: Token) -> io::Result<SyncHelper> {
        let (child, sock) = spawn(&exe)?;
        let mut sock = UnixStream::from_std(sock);
        registry.register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(SyncHelper {
            exe,
            child,
            sock,
            token,
            out: Vec::new(),
            replies: Vec::new(),
            pending: VecDeque::new(),
            next_ticket: 0,
            restarts: VecDeque::new(),
            exited: Vec::new(),
        })
    }

    /// The helper's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Hands the sync of the ring file at `path` to the helper; the ticket its
    /// [`Event::Done`] will carry.
    pub fn request(&mut self, path: &Path) -> u64 {
        self.next_ticket += 1;
        self.out.extend_from_slice(path.as_os_str().as_bytes());
        self.out.push(0);
        self.pending
            .push_back(Pending::Sync(self.next_ticket, path.to_path_buf()));
        self.flush();
        self.next_ticket
    }

    /// Whether a heartbeat is handed to the helper and not answered yet.
    pub fn heartbeat_pending(&self) -> bool {
        self.pending
            .iter()
            .any(|p| matches!(p, Pending::Heartbeat(_)))
    }

    /// Hands a heartbeat to the helper, requested `now` ([`Event::Heartbeat`] answers it).
    pub fn heartbeat(&mut self, req: &keeper::Request, now: Instant) {
        req.encode(&mut self.out);
        self.pending.push_back(Pending::Heartbeat(now));
        self.flush();
    }

    /// The relay stops cleanly: the helper's watchdog must not kill it for the heartbeats
    /// that stop now.
    pub fn disarm(&mut self) {
        self.out.extend_from_slice(&[keeper::DISARM, 0]);
        self.flush();
    }

    fn flush(&mut self) {
        while !self.out.is_empty() {
            match self.sock.write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: the rest goes at the next writable event. Any other error: the
                // helper is gone, which its read side reports.
                Err(_) => break,
            }
        }
    }

    /// The socket is readable or writable: replies, or the helper's end.
    pub fn on_event(&mut self, registry: &Registry, now: Instant) -> Vec<Event> {
        self.flush();
        let mut events = Vec::new();
        let mut buf = [0u8; 512];
        let closed = loop {
            match self.sock.read(&mut buf) {
                Ok(0) => break Some("closed its end".to_string()),
                Ok(n) => self.replies.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(format!("read: {e}")),
            }
        };
        while let Some(at) = self.replies.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.replies.drain(..=at).collect();
            let text = std::str::from_utf8(&line[..at]).unwrap_or("");
            match self.pending.pop_front() {
                None => {}
                Some(Pending::Heartbeat(requested)) => {
                    events.push(Event::Heartbeat(requested, keeper::parse_reply(text)));
                }
                Some(Pending::Sync(ticket, _)) => {
                    let res = match text.parse() {
                        Ok(0) => Ok(()),
                        Ok(errno) => Err(io::Error::from_raw_os_error(errno)),
                        Err(_) => Err(io::Error::other("sync helper: unreadable reply")),
                    };
                    events.push(Event::Done(ticket, res));
                }
            }
        }
        if let Some(why) = closed {
            events.push(self.restart(registry, &why, now));
        }
        self.reap();
        events
    }

    /// Reaps helpers that exited (without waiting).
    pub fn reap(&mut self) {
        self.exited
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
    }

    fn restart(&mut self, registry: &Registry, why: &str, now: Instant) -> Event {
        let _ = registry.deregister(&mut self.sock);
        let status = match self.child.try_wait() {
            Ok(Some(s)) => s.to_string(),
            _ => "running".to_string(),
        };
        crate::log!(
            Level::Warn,
            "sync_helper_exited",
            pid = self.child.id(),
            status = status,
            reason = why,
            pending = self.pending.len()
        );
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= MAX_RESTARTS {
            crate::log!(
                Level::Error,
                "sync_helper_unavailable",
                reason = format!(
                    "it died {} times within {} s; rings sync in the kernel's background from now on (a SIGKILL of the relay then waits for a sync in flight)",
                    MAX_RESTARTS + 1,
                    RESTART_WINDOW.as_secs()
                )
            );
            return Event::Gone;
        }
        self.restarts.push_back(now);
        let (child, sock) = match spawn(&self.exe) {
            Ok(x) => x,
            Err(e) => {
                crate::log!(
                    Level::Error,
                    "sync_helper_unavailable",
                    error = e,
                    reason =
                        "cannot start it again; rings sync in the kernel's background from now on"
                );
                return Event::Gone;
            }
        };
        let mut sock = UnixStream::from_std(sock);
        if let Err(e) = registry.register(
            &mut sock,
            self.token,
            Interest::READABLE | Interest::WRITABLE,
        ) {
            crate::log!(
                Level::Error,
                "sync_helper_unavailable",
                error = e,
                reason =
                    "cannot register its socket; rings sync in the kernel's background from now on"
            );
            return Event::Gone;
        }
        let old = std::mem::replace(&mut self.child, child);
        self.exited.push(old);
        self.sock = sock;
        self.replies.clear();
        // The syncs the old helper did not report: the new one runs them again. A heartbeat
        // it did not answer is dropped: the next one goes at the next fencing check.
        self.out.clear();
        self.pending.retain(|p| matches!(p, Pending::Sync(..)));
        for p in &self.pending {
            if let Pending::Sync(_, p) = p {
                self.out.extend_from_slice(p.as_os_str().as_bytes());
                self.out.push(0);
            }
        }
        crate::log!(
            Level::Warn,
            "sync_helper_restarted",
            pid = self.child.id(),
            pending = self.pending.len()
        );
        self.flush();
        Event::Restarted
    }
}

/// `ringrelay sync-helper PARENT_PID`: the helper's side; reads NUL-terminated ring paths from
/// stdin, syncs each, answers on stdout; runs heartbeats and arms its watchdog with them
/// ([`keeper`]). Exits 0 at EOF.
pub fn run(parent: &str) -> ExitCode {
    // SIGTERM when the relay dies (an `fdatasync` in progress finishes first); and if it died
    // before that was set, now.
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        crate::log!(Level::Warn, "sync_helper_pdeathsig", error = e);
    }
    if nix::unistd::getppid().as_raw().to_string() != parent {
        return ExitCode::SUCCESS;
    }
    let mut input = io::stdin().lock();
    let mut output = io::stdout().lock();
    let mut path = Vec::new();
    let mut keeper = keeper::Keeper::new();
    let mut rings = OpenRings::default();
    let mut watchdog: Option<keeper::Watchdog> = None;
    let relay: i32 = parent.parse().unwrap_or(0);
    loop {
        path.clear();
        match input.read_until(0, &mut path) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return ExitCode::FAILURE,
        }
        if path.pop() != Some(0) {
            // EOF in the middle of a path: the relay is gone.
            return ExitCode::SUCCESS;
        }
        if path.first() == Some(&keeper::DISARM) {
            if let Some(w) = &watchdog {
                w.disarm();
            }
            continue;
        }
        let reply = if let Some(req) = keeper::Request::decode(&path) {
            if watchdog.is_none() && relay > 0 {
                match keeper::Watchdog::start(relay) {
                    Ok(w) => watchdog = Some(w),
                    Err(e) => crate::log!(Level::Error, "sync_helper_watchdog", error = e),
                }
            }
            // The relay's deadline is at most a budget from now: it asked for this heartbeat.
            if let Some(w) = &watchdog {
                w.arm(req.budget);
            }
            keeper.run(&req)
        } else {
            let res = rings.sync(Path::new(OsStr::from_bytes(&path)));
            match &res {
                Ok(()) => "0".to_string(),
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO).to_string(),
            }
        };
        if writeln!(output, "{reply}")
            .and_then(|()| output.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
    }
}

/// The rings' files in the helper, kept open between syncs: on NFS every `open` is a round
/// trip and, by close-to-open consistency, may drop the relay's cached pages of the file (its
/// next appends would then fault them back in over the network). A path whose file was
/// replaced (a new inode) is opened again.
#[derive(Default)]
struct OpenRings(Vec<(PathBuf, std::fs::File)>);

impl OpenRings {
    fn sync(&mut self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let now = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => {
                // Gone: let its space go.
                self.0.retain(|(p, _)| p != path);
                return Err(e);
            }
        };
        self.0.retain(|(p, f)| {
            p != path
                || f.metadata()
                    .is_ok_and(|m| (m.dev(), m.ino()) == (now.dev(), now.ino()))
        });
        let at = match self.0.iter().position(|(p, _)| p == path) {
            Some(i) => i,
            None => {
                self.0
                    .push((path.to_path_buf(), std::fs::File::open(path)?));
                self.0.len() - 1
            }
        };
        self.0[at].1.sync_data()
    }
}
