//! The command line as an operator meets it, against the real binary: `selftest` ending
//! quietly on a closed pipe and on Ctrl-C, and always removing its work directory; bad
//! arguments; the printing commands on a closed stdout; the systemd units and the exit code
//! `run` gives a bad config.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_ringrelay");

/// `ringrelay selftest ARGS` with `$TMPDIR` set to `tmp`, stdout and stderr piped.
fn selftest(tmp: &Path, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("selftest")
        .args(args)
        .env("TMPDIR", tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringrelay selftest")
}

/// Waits up to `limit` for `child` to exit.
fn wait(child: &mut Child, limit: Duration) -> Option<(ExitStatus, Duration)> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if let Ok(Some(st)) = child.try_wait() {
            return Some((st, t.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn read_all(r: Option<impl Read>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

/// The selftest work directories left in `tmp`.
fn leftovers(tmp: &Path) -> Vec<String> {
    std::fs::read_dir(tmp)
        .expect("read tmp")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("ringrelay-selftest"))
        .collect()
}

/// No relay process of this selftest is left: its config path names the work dir in `tmp`.
fn relay_processes(tmp: &Path) -> Vec<String> {
    let needle = tmp.display().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(" run ") && c.contains(&needle))
        .collect()
}

#[test]
fn selftest_through_head_2_exits_0_quietly_and_removes_its_work_dir() {
    // `ringrelay selftest --seconds 3 | head -2`
    let tmp = TempDir::new("cli-head");
    let mut child = selftest(tmp.path(), &["--seconds", "3"]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = String::new();
    for _ in 0..2 {
        out.read_line(&mut lines).expect("read a line");
    }
    drop(out);
    let (st, took) = wait(&mut child, Duration::from_secs(10)).expect("selftest did not exit");
    let err = read_all(child.stderr.take());
    println!("{lines}{err}exit {st:?} after {took:?}");
    assert!(lines.starts_with("selftest: relay process"), "{lines}");
    assert_eq!(st.code(), Some(0), "{st:?}; stderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
    assert!(relay_processes(tmp.path()).is_empty());
}

#[test]
fn selftest_sigint_stops_everything_within_a_second_with_exit_130() {
    let tmp = TempDir::new("cli-sigint");
    let mut child = selftest(tmp.path(), &["--seconds", "20"]);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).expect("the plan line");
    assert!(
        leftovers(tmp.path()).len() == 1,
        "the work dir exists while it runs"
    );
    std::thread::sleep(Duration::from_secs(1));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let (st, took) = wait(&mut child, Duration::from_secs(2)).expect("no exit within 2 s");
    let rest = read_all(Some(out));
    let err = read_all(child.stderr.take());
    println!("{first}{rest}{err}exit {st:?} {took:?} after SIGINT");
    assert_eq!(st.code(), Some(130), "{st:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(err.contains("selftest: interrupted"), "{err}");
    assert!(
        !rest.contains("FAIL") && !err.contains("event=stopped"),
        "{rest}{err}"
    );
    assert!(
        leftovers(tmp.path()).is_empty(),
        "{:?}",
        leftovers(tmp.path())
    );
    assert!(relay_processes(tmp.path()).is_empty());
}

#[test]
fn selftest_seconds_0_is_refused_with_exit_2() {
    let tmp = TempDir::new("cli-zero");
    let mut child = selftest(tmp.path(), &["--seconds", "0"]);
    let (st, _) = wait(&mut child, Duration::from_secs(5)).expect("exit");
    let err = read_all(child.stderr.take());
    assert_eq!(st.code(), Some(2), "{err}");
    assert!(err.contains("--seconds 0: must be 3 to 120"), "{err}");
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn selftest_reports_the_outage_it_announced_and_passes() {
    let tmp = TempDir::new("cli-run");
    let mut child = selftest(tmp.path(), &["--seconds", "3"]);
    let (st, took) = wait(&mut child, Duration::from_secs(30)).expect("exit");
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    println!("{out}{err}{took:?}");
    assert_eq!(st.code(), Some(0), "{out}{err}");
    let first = out.lines().next().unwrap();
    assert!(
        first.ends_with("the SIEM goes down at 0.6 s for 0.9 s"),
        "{first}"
    );
    let last = out.lines().last().unwrap();
    assert_eq!(
        last,
        "selftest: PASS: nothing lost through a SIEM outage of 0.9 s (down at 0.6 s)"
    );
    assert!(out.contains(" lost=0 "), "{out}");
    assert!(leftovers(tmp.path()).is_empty());
}

#[test]
fn printing_commands_end_quietly_on_a_closed_stdout() {
    for args in [
        &["size", "--eps", "1000", "--bytes", "1500"][..],
        &["--version"][..],
        &["help"][..],
    ] {
        // A pipe whose reader is gone before the first write.
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::from(writer))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (st, _) = wait(&mut child, Duration::from_secs(5)).expect("exit");
        let err = read_all(child.stderr.take());
        // Killed by SIGPIPE as `cat` is (a shell shows 141), without a word; never an abort.
        assert_eq!(st.signal(), Some(13), "{args:?}: {st:?} {err}");
        assert!(err.is_empty(), "{args:?}: {err}");
    }
}

/// The two units' text.
fn units() -> Vec<(&'static str, String)> {
    ["ringrelay.service", "ringrelay@.service"]
        .into_iter()
        .map(|u| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("systemd")
                .join(u);
            (u, std::fs::read_to_string(p).expect("read unit"))
        })
        .collect()
}

/// The values of `key=` lines (not comments) in a unit.
fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn units_stop_on_a_bad_config_instead_of_restarting_it() {
    for (name, text) in units() {
        // RestartPreventExitStatus= does not apply to ExecStartPre= (systemd #11868): a check
        // there that fails would be restarted every RestartSec.
        let pre = directive(&text, "ExecStartPre");
        assert!(pre.is_empty(), "{name}: ExecStartPre={pre:?}");
        assert_eq!(directive(&text, "Restart"), ["on-failure"], "{name}");
        let prevent: Vec<&str> = directive(&text, "RestartPreventExitStatus")
            .iter()
            .flat_map(|v| v.split_whitespace())
            .collect();
        assert!(prevent.contains(&"2"), "{name}: {prevent:?}");
        assert!(
            !prevent.contains(&"1"),
            "{name}: transient failures must be retried"
        );
        let start = directive(&text, "ExecStart");
        assert!(
            start.len() == 1 && start[0].starts_with("/usr/bin/ringrelay run --config "),
            "{name}: {start:?}"
        );
    }
}

#[test]
fn run_on_a_bad_config_exits_with_the_code_the_units_do_not_restart() {
    let dir = TempDir::new("cli-badconfig");
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[relay]\ndata_dir = \"/nonexistent\"\n[[feed]]\nname = \"x\"\nbogus = 1\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    let (_, text) = &units()[0];
    let code: i32 = directive(text, "RestartPreventExitStatus")[0]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(out.status.code(), Some(code), "{err}");
    // The check's message, with its place in the file, is what the journal gets.
    assert!(err.contains("bad.toml:"), "{err}");
    assert!(err.contains("event=config_invalid"), "{err}");
}

/// `systemd-analyze verify` on both units, the binary's path pointed at this build (verify
/// checks that `ExecStart=`'s program exists). Skipped, saying so, where systemd is not
/// installed.
#[test]
fn units_pass_systemd_analyze_verify() {
    let Ok(v) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("systemd-analyze is not installed: skipped");
        return;
    };
    println!(
        "{}",
        String::from_utf8_lossy(&v.stdout)
            .lines()
            .next()
            .unwrap_or("")
    );
    // A plain directory name: systemd-analyze rejects paths with `{`, `:` or `,` in them.
    let dir = TempDir(std::env::temp_dir().join(format!("ringrelay-units-{}", std::process::id())));
    std::fs::create_dir_all(dir.path()).unwrap();
    for (name, text) in units() {
        // The template is verified as an instance of it.
        let file = dir.path().join(name.replace("@.", "@a."));
        std::fs::write(&file, text.replace("/usr/bin/ringrelay", BIN)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert!(err.trim().is_empty(), "{name}: {err}");
    }
}
