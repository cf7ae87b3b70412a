//! The write pass: frames gathered from the ring into iovecs (no copy), written with one
//! `writev` (or through TLS), the cursor moved past what was accepted whole.
//!
//! A pass is three steps: [`Output::gather`] collects up to [`FRAMES_PER_WRITE`] frames from
//! the send position (their prefixes into `prefix_buf`, their payloads as slices of the
//! mapping), [`Output::write_frames`] hands them to the sink as one vectored write, and
//! [`Output::account`] moves the send position past every frame written whole.

use super::*;

/// What a frame moves once it is written whole.
#[derive(Clone, Copy, Default)]
struct Frame {
    /// Its first record.
    pos: Pos,
    /// Its bytes: prefix, payload and LF.
    len: usize,
    /// Where the next frame starts.
    next: Pos,
    /// Records in it (a lines run carries several).
    records: u64,
    /// Receive time of its record.
    ts: u64,
}

/// A frame's bytes: its prefix (a range of `prefix_buf`), its payload straight from the ring
/// (with its LF when the ring has one after it), and whether an LF of its own follows.
#[derive(Clone, Copy, Default)]
struct Part<'r> {
    prefix: (usize, usize),
    payload: &'r [u8],
    lf: bool,
}

/// One pass's frames' bytes, on the stack (what they move is in a `[Frame]` beside them).
struct Frames<'r> {
    n: usize,
    parts: [Part<'r>; FRAMES_PER_WRITE],
    /// What ended the gathering before the head, if anything.
    stop: Option<Stop>,
}

impl Output {
    /// Writes frames from the ring until the head, a full socket or the budget.
    pub fn write(&mut self, registry: &Registry, ring: &mut Ring, now: Instant) -> Pass {
        if !self.can_write() {
            return Pass::Blocked;
        }
        if let Sink::Http(h) = &mut self.sink {
            return h.write(&mut self.core, registry, ring, now);
        }
        if let Sink::Kafka(k) = &mut self.sink {
            return k.write(&mut self.core, registry, ring, now);
        }
        let mut budget = WRITE_BUDGET;
        loop {
            let Some(allowed) = self.allowance(now) else {
                return Pass::Blocked;
            };
            let mut marks = [Frame::default(); FRAMES_PER_WRITE];
            let frames = self.gather(ring, self.pass_budget(budget), allowed, &mut marks);
            if frames.n == 0 {
                if let Some(pass) = self.skip_gap(registry, ring, frames.stop, now) {
                    return pass;
                }
                continue;
            }
            let n = frames.n;
            let Some(res) = self.write_frames(&frames) else {
                return Pass::Failed;
            };
            let written = match res {
                Ok(0) => {
                    self.fail(registry, "write returned 0", now);
                    return Pass::Failed;
                }
                Ok(w) => w,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.core.write_blocked = true;
                    return Pass::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let why = format!("write: {e}");
                    self.fail(registry, &why, now);
                    return Pass::Failed;
                }
            };
            budget = budget.saturating_sub(written);
            if let Some(pass) = self.account(registry, ring, &marks[..n], written, now) {
                return pass;
            }
            if budget == 0 {
                return Pass::More;
            }
        }
    }

    /// Bytes this pass may gather: a file that rotates by size takes what is left before it
    /// rotates (one frame at least), so that no file grows far past `rotate_bytes`; rustls
    /// takes no more than [`TLS_PLAIN_MAX`] per write.
    fn pass_budget(&self, budget: usize) -> usize {
        match &self.sink {
            Sink::File {
                size, rotate_bytes, ..
            } if *rotate_bytes > 0 => {
                budget.min(rotate_bytes.saturating_sub(*size).max(1) as usize)
            }
            Sink::Tcp { tls: Some(_), .. } => budget.min(TLS_PLAIN_MAX),
            _ => budget,
        }
    }

    /// Frames the rate limiter allows now (`None`: none, the bucket is empty).
    fn allowance(&mut self, now: Instant) -> Option<usize> {
        let partial = self.core.partial > 0;
        let Some(b) = self.core.bucket.as_mut() else {
            return Some(FRAMES_PER_WRITE);
        };
        let n = b.allowance(now, partial);
        if n == 0 {
            b.exhaust(now);
            return None;
        }
        Some(n.min(FRAMES_PER_WRITE))
    }

    /// Collects frames from the send position: up to `allowed` frames and `pass_budget` bytes,
    /// and always past the bytes of the first frame already written (`partial`), whatever the
    /// budget, the rate limiter or the mode of the pass that wrote them.
    fn gather<'r>(
        &mut self,
        ring: &'r Ring,
        pass_budget: usize,
        allowed: usize,
        marks: &mut [Frame; FRAMES_PER_WRITE],
    ) -> Frames<'r> {
        let core = &mut self.core;
        let mut frames = Frames {
            n: 0,
            parts: [Part::default(); FRAMES_PER_WRITE],
            stop: None,
        };
        let mut header = [0u8; HEADER_MAX];
        core.prefix_buf.clear();
        // Newline frames with nothing added per record: the rest of each entry goes as one
        // frame, straight from the ring (`buffer-spec.md` §5).
        let runs =
            core.framing == OutFraming::Newline && !core.syslog.enabled() && core.bucket.is_none();
        let mut pos = core.send;
        let mut total = 0usize;
        while frames.n < FRAMES_PER_WRITE
            && ((frames.n < allowed && total < pass_budget)
                || (core.partial > 0 && total <= core.partial))
        {
            let r = match ring.read(pos) {
                Read::Record(r) => r,
                Read::End => break,
                Read::Overrun { tail } => {
                    frames.stop = Some(Stop::Overrun(tail));
                    break;
                }
                Read::Corrupt { at, damage, next } => {
                    frames.stop = Some(Stop::Corrupt(at, damage, next));
                    break;
                }
            };
            // A frame partly on the wire is never cut shorter than what was sent.
            let room = if core.partial > 0 && total <= core.partial {
                usize::MAX
            } else {
                pass_budget.saturating_sub(total)
            };
            let start = core.prefix_buf.len();
            let (payload, lf, records, next) = match runs.then(|| r.lines_within(room)).flatten() {
                Some(lines) => (lines.bytes, false, lines.records, lines.next),
                None => {
                    let hlen = core.syslog.write(r.ts, r.pos.seq, &mut header);
                    if core.framing == OutFraming::Octet {
                        let _ = write!(core.prefix_buf, "{} ", hlen + r.payload.len());
                    }
                    core.prefix_buf.extend_from_slice(&header[..hlen]);
                    let newline = core.framing == OutFraming::Newline;
                    match r.line {
                        Some(line) if newline => (line, false, 1, r.next),
                        _ => (r.payload, newline, 1, r.next),
                    }
                }
            };
            let prefix = (start, core.prefix_buf.len() - start);
            let len = prefix.1 + payload.len() + usize::from(lf);
            frames.parts[frames.n] = Part {
                prefix,
                payload,
                lf,
            };
            marks[frames.n] = Frame {
                pos: r.pos,
                len,
                next,
                records,
                ts: r.ts,
            };
            total += len;
            frames.n += 1;
            pos = next;
        }
        frames
    }

    /// Nothing gathered: steps over what stopped the pass (records overwritten, or damaged),
    /// or ends the pass at the head (`Some`).
    fn skip_gap(
        &mut self,
        registry: &Registry,
        ring: &mut Ring,
        stop: Option<Stop>,
        now: Instant,
    ) -> Option<Pass> {
        match stop {
            Some(Stop::Overrun(_)) if self.core.partial > 0 => {
                // Half a frame is on the wire and its record is gone: only closing the
                // connection keeps the stream well-framed.
                self.fail(registry, "ring overwrote the record being sent", now);
                Some(Pass::Failed)
            }
            Some(Stop::Overrun(tail)) => {
                self.core.note_overrun(ring);
                self.core.send = tail;
                None
            }
            Some(Stop::Corrupt(at, damage, next)) => {
                self.core.note_damage(at, damage, next);
                self.core.send = next;
                self.core.partial = 0;
                self.core.commit_upto(ring, next);
                None
            }
            None => {
                self.core.end_episode();
                Some(Pass::Done)
            }
        }
    }

    /// Hands the frames to the sink as one vectored write, minus the bytes of the first one
    /// already written (`partial`); `None` if the sink has nothing open to write to.
    fn write_frames(&mut self, frames: &Frames<'_>) -> Option<io::Result<usize>> {
        let core = &self.core;
        // On the stack: at most three slices per frame (prefix, payload, LF).
        let mut iov: heapless::Vec<IoSlice<'_>, { 3 * FRAMES_PER_WRITE }> = heapless::Vec::new();
        let mut skip = core.partial;
        for part in &frames.parts[..frames.n] {
            let (ps, pl) = part.prefix;
            let lf: &[u8] = if part.lf { b"\n" } else { b"" };
            for bytes in [&core.prefix_buf[ps..ps + pl], part.payload, lf] {
                if skip >= bytes.len() {
                    skip -= bytes.len();
                    continue;
                }
                // Cannot fail: n <= FRAMES_PER_WRITE and three parts per frame.
                let _ = iov.push(IoSlice::new(&bytes[skip..]));
                skip = 0;
            }
        }
        Some(match &mut self.sink {
            Sink::Tcp {
                stream: Some(s),
                tls: Some(t),
                ..
            } => t.write(s, &iov),
            Sink::Tcp {
                stream: Some(s), ..
            } => s.write_vectored(&iov),
            Sink::File { file: Some(f), .. } => f.write_vectored(&iov),
            _ => return None,
        })
    }

    /// `written` bytes of the pass's frames went out: moves the send position past every frame
    /// written whole, counts them and commits. `Some` ends the pass (a torn file record, a
    /// failed rotation).
    fn account(
        &mut self,
        registry: &Registry,
        ring: &mut Ring,
        marks: &[Frame],
        written: usize,
        now: Instant,
    ) -> Option<Pass> {
        let core = &mut self.core;
        core.stats.bytes += written as u64;
        if let Sink::File { size, .. } = &mut self.sink {
            *size += written as u64;
        }
        let mut left = written + core.partial;
        for f in marks {
            if left < f.len {
                core.partial = left;
                break;
            }
            left -= f.len;
            core.partial = 0;
            core.last_sent_ts = f.ts;
            if let Some(b) = core.bucket.as_mut() {
                b.tokens -= f.records as f64;
            }
            if let Some(e) = core.episode.as_mut().filter(|e| e.before_ns == 0) {
                e.before_ns = f.ts;
            }
            let replayed = core.replay_until.saturating_sub(f.pos.seq).min(f.records);
            core.stats.replayed += replayed;
            core.stats.delivered += f.records - replayed;
            core.send = f.next;
            core.sent_high = core.sent_high.max(f.next.seq);
        }
        let send = core.send;
        let is_file = matches!(self.sink, Sink::File { .. });
        if is_file && marks.first().is_some_and(|f| send.seq > f.pos.seq) {
            // A file that took whole records is delivering.
            self.prove(ring, now);
        }
        self.core.commit_upto(ring, send);
        if self.core.partial > 0 && is_file {
            // A file takes part of a write only when it is out of room (a full disk, a
            // size limit): cut the torn record off and wait, as for any failed write.
            let why = self.untear().err().unwrap_or_else(|| {
                "short write: the file system took only part of a record (disk full?); cut back to the last whole record".to_string()
            });
            self.fail(registry, &why, now);
            return Some(Pass::Failed);
        }
        if self.rotate_if_needed(registry, now) {
            return Some(Pass::Failed);
        }
        None
    }
}
