//! The dead-letter file of an HTTP or Kafka output (`<data_dir>/<feed>.<output>.deadletter`):
//! a record the receiver refused alone, for what it is, is appended as one JSON line
//! ([`super::http::protocol::dead_letter_line`]), counted and logged, and the output moves on,
//! so that one poisoned record never blocks a feed.

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::http::protocol::dead_letter_line;
use super::Core;
use crate::clock;
use crate::log::{Level, Limiter};
use crate::ring::{Pos, Read, Ring};

/// An output's dead-letter file (the output counts what it writes there).
pub(super) struct DeadLetters {
    path: PathBuf,
    log: Limiter,
}

impl DeadLetters {
    pub fn new(path: PathBuf) -> DeadLetters {
        DeadLetters {
            path,
            log: Limiter::new(10, Duration::from_secs(60)),
        }
    }

    /// Writes record `at` (if the ring still holds it) with the receiver's `status` and
    /// `response` and logs `<kind>_record_dead_lettered` (or, when the file cannot
    /// be written, `<kind>_dead_letter_write_failed`: the record is skipped all the same).
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        core: &Core,
        ring: &Ring,
        at: Pos,
        kind: &str,
        status: u16,
        response: &[u8],
        now: Instant,
    ) {
        let (line, seq) = match ring.read(at) {
            Read::Record(r) => (
                dead_letter_line(
                    &clock::rfc3339(clock::wall_ns()),
                    &core.feed,
                    &core.name,
                    status,
                    response,
                    r.pos.seq,
                    r.payload,
                )
                .map_err(io::Error::other),
                r.pos.seq,
            ),
            // Overwritten meanwhile: nothing left to keep.
            _ => (Ok(Vec::new()), at.seq),
        };
        let written = line.and_then(|line| {
            if line.is_empty() {
                return Ok(());
            }
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .and_then(|mut f| f.write_all(&line))
        });
        let Some(suppressed) = self.log.allow(now) else {
            return;
        };
        let response = String::from_utf8_lossy(&response[..response.len().min(200)]);
        match &written {
            Ok(()) => crate::log!(
                Level::Error,
                &format!("{kind}_record_dead_lettered"),
                feed = core.feed,
                output = core.name,
                status = status,
                seq = seq,
                response = response,
                file = self.path.display(),
                suppressed = suppressed
            ),
            Err(e) => crate::log!(
                Level::Error,
                &format!("{kind}_dead_letter_write_failed"),
                feed = core.feed,
                output = core.name,
                status = status,
                seq = seq,
                file = self.path.display(),
                error = e,
                hint = "the record is skipped all the same, so that it cannot block the feed",
                suppressed = suppressed
            ),
        }
    }
}
