//! SIGHUP: what changed between the configuration in force and the file as it is now, and which
//! changes the running relay can take.
//!
//! [`diff`] is pure: it compares two validated [`Config`]s and lists [`Change`]s. The relay
//! ([`super::Relay::reload`]) applies the live ones and logs, per key, what needs a restart.
//!
//! Applied live: an output's `rate_limit_eps`; a `tcp` output's `address` (the output
//! reconnects, with its replay window, to the new address); `[relay] standby_poll` and
//! `checkpoint_interval`. Everything else (listen addresses, rings, framing, outputs added or
//! removed, the lock file, the admin endpoint) needs a restart; in a standby, feed settings take
//! effect when it becomes active. TLS certificates, once there are TLS inputs and outputs, are
//! to be reloaded from [`super::Relay::reload`] as well (see the hook there).

use std::fmt::Debug;
use std::time::Instant;

use super::Relay;
use crate::config::{Config, FeedConfig, OutputKind};
use crate::feed::Feed;
use crate::ha::Role;
use crate::log::Level;
use crate::output::Output;
use crate::tls::log_expired;

/// One difference between the running configuration and the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An output's `rate_limit_eps` (0 = unlimited).
    RateLimit {
        /// Index of the feed in both configurations.
        feed: usize,
        /// Index of the output in both.
        output: usize,
        /// Before.
        from: u64,
        /// After.
        to: u64,
    },
    /// A `tcp` output's `address`.
    Address {
        /// Index of the feed in both configurations.
        feed: usize,
        /// Index of the output in both.
        output: usize,
        /// Before.
        from: String,
        /// After.
        to: String,
    },
    /// `[relay] standby_poll` or `checkpoint_interval`, applied at once.
    RelayTiming {
        /// The key.
        key: &'static str,
    },
    /// A change under `[[feed]]` or `[[feed.output]]` this version cannot apply without a
    /// restart (a standby applies it when it becomes active).
    FeedNeedsRestart {
        /// `feed NAME key` or `feed NAME output NAME key`.
        key: String,
    },
    /// A `[relay]` change that needs a restart in any role.
    RelayNeedsRestart {
        /// `relay.key`.
        key: String,
    },
}

impl Change {
    /// The key it concerns, as the log lines name it.
    pub fn key(&self) -> &str {
        match self {
            Change::RateLimit { .. } => "rate_limit_eps",
            Change::Address { .. } => "address",
            Change::RelayTiming { key } => key,
            Change::FeedNeedsRestart { key } | Change::RelayNeedsRestart { key } => key,
        }
    }
}

fn differs<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") != format!("{b:?}")
}

/// What changed from `old` to `new`, in configuration order.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    let (o, n) = (&old.relay, &new.relay);
    let mut relay_key = |key: &str, changed: bool| {
        if changed {
            out.push(Change::RelayNeedsRestart {
                key: format!("relay.{key}"),
            });
        }
    };
    relay_key("data_dir", differs(&o.data_dir, &n.data_dir));
    relay_key("lock_file", differs(&o.lock_file, &n.lock_file));
    relay_key("admin_listen", differs(&o.admin_listen, &n.admin_listen));
    relay_key("instance", o.instance != n.instance);
    relay_key("sync", differs(&o.sync, &n.sync));
    relay_key("lease", o.lease != n.lease);
    if o.standby_poll != n.standby_poll {
        out.push(Change::RelayTiming {
            key: "standby_poll",
        });
    }
    if o.checkpoint_interval != n.checkpoint_interval {
        out.push(Change::RelayTiming {
            key: "checkpoint_interval",
        });
    }
    let old_names: Vec<&str> = old.feeds.iter().map(|f| f.name.as_str()).collect();
    let new_names: Vec<&str> = new.feeds.iter().map(|f| f.name.as_str()).collect();
    if old_names != new_names {
        // Feeds added, removed or reordered: listeners, rings and tokens all move.
        out.push(Change::FeedNeedsRestart {
            key: format!(
                "feeds [{}] => [{}]",
                old_names.join(","),
                new_names.join(",")
            ),
        });
        return out;
    }
    for (fi, (of, nf)) in old.feeds.iter().zip(&new.feeds).enumerate() {
        let mut feed_key = |key: &str, changed: bool| {
            if changed {
                out.push(Change::FeedNeedsRestart {
                    key: format!("feed {} {key}", of.name),
                });
            }
        };
        feed_key("input", differs(&of.input, &nf.input));
        feed_key("framing", differs(&of.framing, &nf.framing));
        feed_key(
            "max_record_bytes",
            of.max_record_bytes != nf.max_record_bytes,
        );
        feed_key("oversize", differs(&of.oversize, &nf.oversize));
        feed_key(
            "buffer",
            of.capacity != nf.capacity || of.retention != nf.retention,
        );
        feed_key("when_full", differs(&of.when_full, &nf.when_full));
        feed_key("sync", differs(&of.sync, &nf.sync));
        let on: Vec<&str> = of.outputs.iter().map(|o| o.name.as_str()).collect();
        let nn: Vec<&str> = nf.outputs.iter().map(|o| o.name.as_str()).collect();
        if on != nn {
            out.push(Change::FeedNeedsRestart {
                key: format!(
                    "feed {} outputs [{}] => [{}]",
                    of.name,
                    on.join(","),
                    nn.join(",")
                ),
            });
            continue;
        }
        diff_outputs(fi, of, nf, &mut out);
    }
    out
}

/// What changed in feed `fi`'s outputs (same names, same order) from `of` to `nf`.
fn diff_outputs(fi: usize, of: &FeedConfig, nf: &FeedConfig, out: &mut Vec<Change>) {
    for (oi, (oo, no)) in of.outputs.iter().zip(&nf.outputs).enumerate() {
        let key = |k: &str| Change::FeedNeedsRestart {
            key: format!("feed {} output {} {k}", of.name, oo.name),
        };
        if oo.rate_limit_eps != no.rate_limit_eps {
            out.push(Change::RateLimit {
                feed: fi,
                output: oi,
                from: oo.rate_limit_eps,
                to: no.rate_limit_eps,
            });
        }
        if oo.replay != no.replay {
            out.push(key("replay"));
        }
        match (&oo.kind, &no.kind) {
            (OutputKind::Tcp(a), OutputKind::Tcp(b)) => {
                if a.address != b.address {
                    out.push(Change::Address {
                        feed: fi,
                        output: oi,
                        from: a.address.clone(),
                        to: b.address.clone(),
                    });
                }
                if a.framing != b.framing {
                    out.push(key("framing"));
                }
            }
            (a, b) if differs(a, b) => out.push(key("kind/path/rotation")),
            _ => {}
        }
    }
}

impl Relay {
    /// SIGHUP: re-reads every TLS input's and output's certificate, key and CA files. New
    /// handshakes use the new files; established connections keep theirs. A file that does not
    /// load is logged and the old configuration stays in use. (The rest of the configuration is
    /// not reloaded here.)
    pub(super) fn reload_tls(&mut self) {
        let (mut reloaded, mut failed) = (0, 0);
        for feed in &mut self.feeds {
            if let Some(t) = feed.cfg.input.tls() {
                match crate::tls::server_config(&t.files) {
                    Ok((cfg, expired)) => {
                        log_expired(&feed.cfg.name, None, &expired);
                        feed.input.tls = Some(cfg);
                        reloaded += 1;
                    }
                    Err(e) => {
                        failed += 1;
                        crate::log!(
                            Level::Error,
                            "tls_reload_failed",
                            feed = feed.cfg.name,
                            side = "input",
                            key = e.key,
                            error = e.msg,
                            keeping = "the certificates loaded before"
                        );
                    }
                }
            }
            for out in &mut feed.outputs {
                match out.reload_tls() {
                    None => {}
                    Some(Ok(expired)) => {
                        log_expired(&feed.cfg.name, Some(out.name()), &expired);
                        reloaded += 1;
                    }
                    Some(Err(e)) => {
                        failed += 1;
                        crate::log!(
                            Level::Error,
                            "tls_reload_failed",
                            feed = feed.cfg.name,
                            output = out.name(),
                            key = e.key,
                            error = e.msg,
                            keeping = "the certificates loaded before"
                        );
                    }
                }
            }
        }
        crate::log!(
            Level::Info,
            "tls_reloaded",
            signal = "SIGHUP",
            reloaded = reloaded,
            failed = failed,
            note = "only TLS files are reloaded; restart to apply other configuration changes"
        );
    }

    /// SIGHUP: re-reads the configuration file; applies what can change live (output rate
    /// limits, `tcp` output addresses, `standby_poll`, `checkpoint_interval`) and logs, per
    /// changed key, what needs a restart. A file that no longer validates changes nothing.
    ///
    /// Hook for TLS (inputs and outputs, another issue): reload certificates and keys here,
    /// after the file validated, and log `reload_applied key=...` per reloaded file.
    pub fn reload(&mut self, now: Instant) {
        let path = self.cfg.path.clone();
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors {
                    crate::log!(Level::Warn, "reload_config_error", error = e);
                }
                crate::log!(
                    Level::Warn,
                    "reload_failed",
                    config = path.display(),
                    errors = errors.len(),
                    action = "kept the running configuration"
                );
                return;
            }
        };
        let changes = self::diff(&self.cfg, &new);
        let standby = matches!(self.ha.role(), Role::Standby { .. });
        let (mut applied, mut restart) = (0, 0);
        for change in &changes {
            if self.apply(change, &new, standby, now) {
                applied += 1;
            } else {
                restart += 1;
                crate::log!(
                    Level::Warn,
                    "reload_needs_restart",
                    key = change.key(),
                    config = path.display()
                );
            }
        }
        if standby {
            // Nothing is open yet: the feeds as the file now says are what a promotion opens.
            self.cfg.feeds = new.feeds;
        }
        crate::log!(
            Level::Info,
            "reloaded",
            config = path.display(),
            role = self.ha.role().name(),
            changes = changes.len(),
            applied = applied,
            need_restart = restart
        );
    }

    /// Applies one change live and logs it; `false` when it needs a restart.
    fn apply(&mut self, change: &Change, new: &Config, standby: bool, now: Instant) -> bool {
        match change {
            self::Change::RateLimit {
                feed,
                output,
                from,
                to,
            } => {
                let name = &self.cfg.feeds[*feed].name;
                if let Some(out) = running_output(&mut self.feeds, name, *output) {
                    out.set_rate_limit(*to, now);
                }
                self.cfg.feeds[*feed].outputs[*output].rate_limit_eps = *to;
                self.log_output_applied(*feed, *output, change.key(), from, to);
            }
            self::Change::Address {
                feed,
                output,
                from,
                to,
            } => {
                let name = &self.cfg.feeds[*feed].name;
                if let Some(out) = running_output(&mut self.feeds, name, *output) {
                    out.set_address(self.poll.registry(), to, now);
                }
                if let crate::config::OutputKind::Tcp(t) =
                    &mut self.cfg.feeds[*feed].outputs[*output].kind
                {
                    t.address.clone_from(to);
                }
                self.log_output_applied(*feed, *output, change.key(), from, to);
            }
            self::Change::RelayTiming { key } => {
                self.cfg.relay.standby_poll = new.relay.standby_poll;
                self.ha.set_standby_poll(new.relay.standby_poll);
                self.cfg.relay.checkpoint_interval = new.relay.checkpoint_interval;
                self.checkpoint_every = new.relay.checkpoint_interval;
                self.next_checkpoint = self.next_checkpoint.min(now + self.checkpoint_every);
                crate::log!(Level::Info, "reload_applied", key = key);
            }
            self::Change::FeedNeedsRestart { key } if standby => {
                crate::log!(
                    Level::Info,
                    "reload_applied",
                    key = key,
                    note = "standby: takes effect when this instance becomes active"
                );
            }
            self::Change::FeedNeedsRestart { .. } | self::Change::RelayNeedsRestart { .. } => {
                return false;
            }
        }
        true
    }

    /// `reload_applied` for a key of output `output` of feed `feed` (configuration indices).
    fn log_output_applied(
        &self,
        feed: usize,
        output: usize,
        key: &str,
        from: &dyn std::fmt::Display,
        to: &dyn std::fmt::Display,
    ) {
        let fc = &self.cfg.feeds[feed];
        crate::log!(
            Level::Info,
            "reload_applied",
            feed = fc.name,
            output = fc.outputs[output].name,
            key = key,
            from = from,
            to = to
        );
    }
}

/// Output `output` of the running feed named `name`, if it runs (a standby runs none).
fn running_output<'a>(feeds: &'a mut [Feed], name: &str, output: usize) -> Option<&'a mut Output> {
    feeds
        .iter_mut()
        .find(|f| f.cfg.name == name)
        .and_then(|f| f.outputs.get_mut(output))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(eps: u64, addr: &str, listen: &str, poll: &str) -> Config {
        let text = format!(
            r#"[relay]
data_dir = "/tmp/x"
standby_poll = "{poll}"

[[feed]]
name = "f"
input = {{ kind = "tcp", listen = "{listen}" }}
buffer = {{ size = "16MiB" }}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "{addr}"
rate_limit_eps = {eps}
"#
        );
        Config::parse(&text, Path::new("t.toml")).expect("valid config")
    }

    #[test]
    fn nothing_changed_is_no_change() {
        let a = cfg(0, "127.0.0.1:1", "127.0.0.1:2", "500ms");
        assert_eq!(diff(&a, &a.clone()), vec![]);
    }

    #[test]
    fn rate_limit_and_address_are_live_and_the_listen_address_needs_a_restart() {
        let a = cfg(0, "127.0.0.1:1", "127.0.0.1:2", "500ms");
        let b = cfg(500, "127.0.0.1:9", "127.0.0.1:3", "1s");
        assert_eq!(
            diff(&a, &b),
            vec![
                Change::RelayTiming {
                    key: "standby_poll"
                },
                Change::FeedNeedsRestart {
                    key: "feed f input".into()
                },
                Change::RateLimit {
                    feed: 0,
                    output: 0,
                    from: 0,
                    to: 500
                },
                Change::Address {
                    feed: 0,
                    output: 0,
                    from: "127.0.0.1:1".into(),
                    to: "127.0.0.1:9".into()
                },
            ]
        );
    }
}
