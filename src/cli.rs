//! Command-line parsing and dispatch. The only place that chooses an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "\
ringrelay: a durable log relay for NSS/LSS feeds

usage:
  ringrelay run      --config FILE      run the relay
  ringrelay check    --config FILE      validate a config; every error with line:column
  ringrelay inspect  PATH [--verify]    a ring file or data dir offline (exit 1: damage found)
  ringrelay inspect  FILE --export [--export-format raw|ndjson]
                                        every intact record of a ring file to stdout, also
                                        from a damaged ring that does not open (exit 1: damage)
  ringrelay size     --eps N --bytes B [--retention 1h] [--feeds N]
                                        ring, disk and VM sizing for a feed
  ringrelay size     --config FILE      a configuration's rings and the relay's own
                                        memory, buffer by buffer
  ringrelay selftest [--seconds N]      relay through a simulated SIEM outage on loopback
                                        (N: 3 to 120, default 20)
  ringrelay --version
";

/// Parsed `--flag value` pairs and positional arguments of one subcommand.
struct Args {
    cmd: String,
    flags: Vec<(String, Option<String>)>,
    positional: Vec<String>,
}

/// Flags that take no value.
const SWITCHES: [&str; 3] = ["--verify", "--export", "--help"];

impl Args {
    fn parse(args: Vec<String>) -> Args {
        let mut it = args.into_iter();
        let cmd = it.next().unwrap_or_default();
        let (mut flags, mut positional) = (Vec::new(), Vec::new());
        while let Some(a) = it.next() {
            if let Some((k, v)) = a.split_once('=').filter(|_| a.starts_with("--")) {
                flags.push((k.to_string(), Some(v.to_string())));
            } else if a.starts_with("--") && !SWITCHES.contains(&a.as_str()) {
                let v = it.next();
                flags.push((a, v));
            } else if a.starts_with("--") {
                flags.push((a, None));
            } else {
                positional.push(a);
            }
        }
        Args {
            cmd,
            flags,
            positional,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(k, _)| k == name)
    }

    fn value(&self, name: &str) -> Result<Option<&str>, String> {
        match self.flags.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, Some(v))) => Ok(Some(v)),
            Some((_, None)) => Err(format!("{name} needs a value")),
        }
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.value(name)?
            .ok_or_else(|| format!("ringrelay {} needs {name}", self.cmd))
    }

    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        self.value(name)?
            .map(|v| {
                v.replace('_', "")
                    .parse::<u64>()
                    .map_err(|_| format!("{name}: {v:?} is not a whole number"))
            })
            .transpose()
    }

    fn check_known(&self, known: &[&str]) -> Result<(), String> {
        for (k, _) in &self.flags {
            if !known.contains(&k.as_str()) {
                return Err(format!(
                    "ringrelay {}: unknown option {k} (known: {})",
                    self.cmd,
                    known.join(" ")
                ));
            }
        }
        Ok(())
    }
}

/// Runs the command line `args` (without the program name).
pub fn main(args: Vec<String>) -> ExitCode {
    let args = Args::parse(args);
    if !matches!(args.cmd.as_str(), "run" | "selftest") {
        default_sigpipe();
    }
    if args.has("--help") || matches!(args.cmd.as_str(), "" | "help" | "-h" | "--help") {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match dispatch(&args) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("{msg}");
            eprint!("\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// A closed stdout ends the printing commands (`check`, `inspect`, `size`, `--version`, the
/// usage) the way it ends `cat`: killed by SIGPIPE, quietly (a shell shows status 141). Without
/// this, Rust ignores SIGPIPE, `println!` panics on EPIPE and the release build aborts (134)
/// with a message. Not for `run`, whose sockets must see EPIPE as an error, nor for
/// `selftest`, which must stop its relay process and remove its work directory first: it
/// handles EPIPE itself and exits 0.
#[allow(unsafe_code)]
fn default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_DFL installs no handler, so no code of ours runs in signal context; this
    // runs in `main` before any thread is started.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

fn dispatch(args: &Args) -> Result<ExitCode, String> {
    match args.cmd.as_str() {
        "--version" | "version" => {
            println!("ringrelay {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        "inspect" => inspect(args),
        "size" => size(args),
        "check" => {
            args.check_known(&["--config"])?;
            let path = PathBuf::from(args.required("--config")?);
            Ok(crate::preflight::check(&path))
        }
        "run" => {
            args.check_known(&["--config"])?;
            let path = PathBuf::from(args.required("--config")?);
            Ok(crate::event_loop::run(&path))
        }
        "selftest" => {
            args.check_known(&["--seconds"])?;
            let secs = args.number("--seconds")?.unwrap_or(20);
            Ok(crate::selftest::run(crate::selftest::Plan::new(secs)?))
        }
        // Hidden: the relay's sync helper process (`sync_helper`), started by `run`.
        crate::sync_helper::SUBCOMMAND => {
            let [parent] = args.positional.as_slice() else {
                return Err("ringrelay sync-helper is started by ringrelay run".into());
            };
            Ok(crate::sync_helper::run(parent))
        }
        other => Err(format!("ringrelay: unknown command {other:?}")),
    }
}

/// `ringrelay inspect PATH [--verify]` or `ringrelay inspect FILE --export [--export-format F]`.
fn inspect(args: &Args) -> Result<ExitCode, String> {
    args.check_known(&["--verify", "--export", "--export-format"])?;
    let [path] = args.positional.as_slice() else {
        return Err("ringrelay inspect needs one PATH (a ring file or a data dir)".into());
    };
    let format = args.value("--export-format")?;
    if args.has("--export") || format.is_some() {
        if args.has("--verify") {
            return Err("ringrelay inspect: --export and --verify do not go together".into());
        }
        let format = match format {
            None => crate::inspect::ExportFormat::Raw,
            Some(f) => crate::inspect::ExportFormat::parse(f).ok_or_else(|| {
                format!("ringrelay inspect: --export-format {f:?}: raw or ndjson")
            })?,
        };
        let path = PathBuf::from(path);
        if path.is_dir() {
            return Err("ringrelay inspect --export needs one ring FILE, not a directory".into());
        }
        return Ok(crate::inspect::export(&path, format));
    }
    Ok(crate::inspect::run(
        &PathBuf::from(path),
        args.has("--verify"),
    ))
}

/// `ringrelay size --eps N --bytes B [--retention D] [--feeds N]`.
fn size(args: &Args) -> Result<ExitCode, String> {
    args.check_known(&["--eps", "--bytes", "--retention", "--feeds", "--config"])?;
    if let Some(path) = args.value("--config")? {
        if ["--eps", "--bytes", "--retention", "--feeds"]
            .iter()
            .any(|f| args.has(f))
        {
            return Err(
                "ringrelay size: --config sizes a configuration; --eps, --bytes, --retention and --feeds size from a rate: one or the other".into(),
            );
        }
        return Ok(crate::size::run_config(&PathBuf::from(path)));
    }
    // The units and limits of the configuration's `buffer = { eps, bytes, retention }`.
    use crate::config::{parse_count, parse_size, EPS_RANGE, EVENT_BYTES_RANGE};
    let within = |flag: &str, n: u64, range: std::ops::RangeInclusive<u64>| {
        if range.contains(&n) {
            Ok(n)
        } else {
            Err(format!(
                "ringrelay size: {flag} {n} is out of range ({}..={})",
                range.start(),
                range.end()
            ))
        }
    };
    let eps = args
        .value("--eps")?
        .ok_or("ringrelay size needs --eps N (events/s: 20000, 20_000 or 20k)")?;
    let eps = parse_count(eps).map_err(|e| format!("--eps: {e}"))?;
    let eps = within("--eps", eps, EPS_RANGE)?;
    let bytes = args
        .value("--bytes")?
        .ok_or("ringrelay size needs --bytes B (average event size: 900 or 1KiB)")?;
    let bytes = parse_size(bytes).map_err(|e| format!("--bytes: {e}"))?;
    let bytes = within("--bytes", bytes, EVENT_BYTES_RANGE)?;
    let retention = match args.value("--retention")? {
        Some(v) => crate::config::parse_duration(v).map_err(|e| format!("--retention: {e}"))?,
        None => Duration::from_secs(3600),
    };
    let feeds = args.number("--feeds")?.unwrap_or(1);
    let feeds = within("--feeds", feeds, 1..=crate::config::MAX_FEEDS as u64)?;
    if retention.is_zero() {
        return Err("ringrelay size: --retention must be above zero".into());
    }
    Ok(crate::size::run(crate::size::Sizing {
        eps,
        bytes,
        retention,
        feeds,
    }))
}
