//! What an output lost and must tell: outages (`output_down` after `alert_after`), records
//! overrun before delivery and damaged records skipped, and the health persisted with the
//! cursor so a restart neither forgets nor repeats them.

use super::*;

impl Output {
    /// Raises `output_down` once the output has been down for `alert_after`.
    pub(super) fn check_down_alert(&mut self, now: Instant) {
        let (Some(due), Some(since)) = (self.core.alert_due(), self.core.link.down_since()) else {
            return;
        };
        if now < due {
            return;
        }
        self.core.down_alerted = true;
        let down_s = now.saturating_duration_since(since).as_secs();
        crate::log!(
            Level::Error,
            "output_down_alert",
            feed = self.core.feed,
            output = self.core.name,
            peer = self.peer_name(),
            down_s = down_s,
            since = clock::rfc3339(self.core.down_since_ns),
            error = self.core.last_error
        );
        self.core.alerts.push(Alert {
            kind: AlertKind::OutputDown,
            feed: self.core.feed.clone(),
            output: Some(self.core.name.clone()),
            detail: crate::alert::Details::from_array([
                ("peer", Value::Text(self.peer_name())),
                ("down_s", Value::Num(down_s)),
                (
                    "since",
                    Value::Text(clock::rfc3339(self.core.down_since_ns)),
                ),
                ("error", Value::Text(self.core.last_error.clone())),
            ]),
        });
    }

    /// Records lost to overwriting since this process started, including any the ring counted
    /// since the output last looked.
    pub fn overrun_lost(&self, ring: &Ring) -> u64 {
        ring.cursor_lost(self.core.cursor)
    }

    /// Receive time of the next record this output has to deliver, if any.
    pub fn lag(&self, ring: &Ring) -> (u64, Option<u64>) {
        let pos = ring.cursor_pos(self.core.cursor);
        let records = ring.head().seq.saturating_sub(pos.seq);
        let ts = match ring.read(pos) {
            Read::Record(r) if records > 0 => Some(r.ts),
            _ => None,
        };
        (records, ts)
    }

    /// Raises `output_overrun` once per episode, as soon as the loss is seen (while the output
    /// The output has caught up with the head: one line for the whole overrun episode, with
    /// Once a second: notices records the ring overwrote while the output was not writing (a
    /// long outage) and raises what is due.
    pub fn tick(&mut self, ring: &Ring, now: Instant) {
        self.core.note_overrun(ring);
        self.core.alert_overrun();
        self.check_down_alert(now);
    }

    /// What a restart must know of this output's health: the relay persists it with the
    /// cursor at every checkpoint (`buffer-spec.md` §4).
    pub fn health(&self) -> CursorState {
        let (overrun_base, overrun_after_ns, overrun_alerted) = match &self.core.episode {
            Some(e) => (self.core.lost_seen - e.lost, e.after_ns, e.alerted),
            None => (self.core.lost_seen, 0, false),
        };
        CursorState {
            down_since_ns: if self.core.link.down_since().is_some() {
                self.core.down_since_ns
            } else {
                0
            },
            overrun_base,
            overrun_after_ns,
            down_alerted: self.core.down_alerted,
            overrun_alerted,
        }
    }
}

impl Core {
    /// When the `output_down` alert is due, if it is not raised yet.
    pub(super) fn alert_due(&self) -> Option<Instant> {
        match (self.link.down_since(), self.alert_after) {
            (Some(since), Some(after)) if !self.down_alerted => {
                Some((since + after).max(self.alert_not_before.unwrap_or(since)))
            }
            _ => None,
        }
    }

    /// Counts and logs damaged ring records this output skips, from `at` to `next`.
    pub(super) fn note_damage(&mut self, at: Pos, damage: crate::ring::Damage, next: Pos) {
        self.stats.corrupt_skipped += next.seq - at.seq;
        crate::log!(
            Level::Error,
            "ring_damage_skipped",
            feed = self.feed,
            output = self.name,
            offset = at.off,
            seq = at.seq,
            records = next.seq - at.seq,
            damage = damage
        );
    }

    /// Counts what the ring overwrote under this output's cursor since the last look.
    pub(super) fn note_overrun(&mut self, ring: &Ring) {
        let lost = ring.cursor_lost(self.cursor) - self.lost_seen;
        if lost == 0 {
            return;
        }
        self.lost_seen += lost;
        let after_ns = self.last_sent_ts;
        self.episode
            .get_or_insert(Episode {
                alerted: false,
                lost: 0,
                after_ns,
                before_ns: 0,
            })
            .lost += lost;
        self.alert_overrun();
    }

    /// may still be down), or after a restart that found the episode unreported.
    pub(super) fn alert_overrun(&mut self) {
        let Some(e) = self.episode.as_mut().filter(|e| !e.alerted) else {
            return;
        };
        e.alerted = true;
        let (lost, after) = (e.lost, time_or_unknown(e.after_ns));
        crate::log!(
            Level::Error,
            "output_overrun",
            feed = self.feed,
            output = self.name,
            lost = lost,
            lost_after = after,
            hint = "the ring overwrote records this output had not delivered: a larger buffer.size covers longer outages"
        );
        self.alerts.push(Alert {
            kind: AlertKind::OutputOverrun,
            feed: self.feed.clone(),
            output: Some(self.name.clone()),
            detail: crate::alert::Details::from_array([
                ("lost", Value::Num(lost)),
                ("lost_after", Value::Text(after)),
            ]),
        });
    }

    /// every record it lost and the time range they came from.
    pub(super) fn end_episode(&mut self) {
        let Some(e) = self.episode.take() else {
            return;
        };
        let (after, before) = (time_or_unknown(e.after_ns), time_or_unknown(e.before_ns));
        crate::log!(
            Level::Error,
            "output_overrun_ended",
            feed = self.feed,
            output = self.name,
            lost = e.lost,
            lost_after = after,
            lost_before = before
        );
        self.alerts.push(Alert {
            kind: AlertKind::OutputOverrunEnded,
            feed: self.feed.clone(),
            output: Some(self.name.clone()),
            detail: crate::alert::Details::from_array([
                ("lost", Value::Num(e.lost)),
                ("lost_after", Value::Text(after)),
                ("lost_before", Value::Text(before)),
            ]),
        });
    }
}
