//! `[relay]`: where the data lives, the lock file, the admin endpoint, the instance name and
//! the relay-wide defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::names::instance_name;
use super::table::{Ctx, Tbl};

/// `[relay]`.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Where the ring files live.
    pub data_dir: PathBuf,
    /// Line and column of `data_dir` in the file (for checks made on the machine).
    pub data_dir_at: (usize, usize),
    /// The active-standby lock file (default `data_dir/ringrelay.lock`).
    pub lock_file: PathBuf,
    /// Admin HTTP endpoint (default 127.0.0.1:9600; `"off"` disables).
    pub admin_listen: Option<SocketAddr>,
    /// Instance name, for logs and metrics ([`super::names`] says what it may hold).
    pub instance: String,
    /// Default sync policy of the rings.
    pub sync: SyncPolicy,
    /// How often rings and cursors are checkpointed.
    pub checkpoint_interval: Duration,
    /// How often a standby retries the lock.
    pub standby_poll: Duration,
    /// The feed whose ring receives alert records (`None`: alerts are logged and counted only).
    pub alert_feed: Option<String>,
    /// `lease`: the shared storage's lock lease (the NFSv4 server's lease time). `None` when not
    /// set: the relay then keeps a lease only when `data_dir` is on NFS, of [`DEFAULT_NFS_LEASE`]
    /// ([`crate::ha::lease`]).
    pub lease: Option<Duration>,
}

/// The lease assumed on NFS when `lease` is not set: Linux nfsd's default lease time.
pub const DEFAULT_NFS_LEASE: Duration = Duration::from_secs(90);
/// The shortest `lease`: below it the margin ([`crate::ha::lease::margin`]) leaves no budget
/// for a heartbeat or two.
pub const MIN_LEASE: Duration = Duration::from_secs(3);
/// The longest `lease`: Linux nfsd's own bound on `nfsv4leasetime`.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

/// When ring pages are forced to disk (`buffer-spec.md` §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// After every batch of records read from a connection.
    Always,
    /// Every period.
    Interval(Duration),
    /// Never explicitly: the kernel writes back on its own schedule.
    Never,
}

const SYNC_CHOICES: [(&str, u8); 3] = [("interval", 0), ("always", 1), ("never", 2)];

pub(super) fn sync_policy(t: &Tbl<'_, '_>, default: SyncPolicy, cx: &mut Ctx<'_>) -> SyncPolicy {
    let interval = t.duration("sync_interval", cx);
    match t.choice("sync", &SYNC_CHOICES, cx) {
        Some(1) => SyncPolicy::Always,
        Some(2) => SyncPolicy::Never,
        Some(_) => SyncPolicy::Interval(interval.unwrap_or(Duration::from_secs(1))),
        None => match (interval, default) {
            (Some(d), _) => SyncPolicy::Interval(d),
            (None, d) => d,
        },
    }
}

pub(super) fn relay_config(t: &Tbl<'_, '_>, cx: &mut Ctx<'_>) -> Option<RelayConfig> {
    t.check_keys(
        &[
            "data_dir",
            "lock_file",
            "admin_listen",
            "instance",
            "sync",
            "sync_interval",
            "checkpoint_interval",
            "standby_poll",
            "alert_feed",
            "lease",
        ],
        cx,
    );
    let data_dir = t
        .req_str("data_dir", "a directory path", cx)
        .map(|(s, span)| (cx.resolve(s), cx.at(span.start)));
    let lock_file = t
        .str("lock_file", "a file path", cx)
        .map(|(s, _)| cx.resolve(s));
    let admin_listen = match t.str(
        "admin_listen",
        "an address like \"127.0.0.1:9600\" or \"off\"",
        cx,
    ) {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 9600))),
        Some(("" | "off", _)) => None,
        Some((s, span)) => match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                cx.err(
                    span,
                    format!("admin_listen = {s:?} is not an IP:port address (or \"off\")"),
                );
                None
            }
        },
    };
    let instance = instance_name(t, cx);
    let sync = sync_policy(t, SyncPolicy::Interval(Duration::from_secs(1)), cx);
    let checkpoint_interval = t
        .duration("checkpoint_interval", cx)
        .unwrap_or(Duration::from_secs(1));
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&checkpoint_interval) {
        let span = t
            .get("checkpoint_interval")
            .map_or(t.span.clone(), Spanned::span);
        cx.err(span, "checkpoint_interval must be between 100ms and 60s");
    }
    let standby_poll = t
        .duration("standby_poll", cx)
        .unwrap_or(Duration::from_millis(500));
    let alert_feed = t
        .str("alert_feed", "a feed name", cx)
        .map(|(s, _)| s.to_string());
    let lease = t.duration("lease", cx);
    if lease.is_some_and(|l| !(MIN_LEASE..=MAX_LEASE).contains(&l)) {
        let span = t.get("lease").map_or(t.span.clone(), Spanned::span);
        cx.err(
            span,
            "lease must be between 3s and 3600s: set it to the NFS server's lease time (Linux nfsd: /proc/fs/nfsd/nfsv4leasetime, 90s by default)",
        );
    }
    let (data_dir, data_dir_at) = data_dir?;
    Some(RelayConfig {
        data_dir_at,
        alert_feed,
        lock_file: lock_file.unwrap_or_else(|| data_dir.join("ringrelay.lock")),
        data_dir,
        admin_listen,
        instance,
        sync,
        checkpoint_interval,
        standby_poll,
        lease,
    })
}
