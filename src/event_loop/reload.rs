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

use crate::config::{Config, OutputKind};

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
    out
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
