//! The write pass: frames gathered from the ring into iovecs (no copy), written with one
//! `writev` (or through TLS), the cursor moved past what was accepted whole.

use super::*;

impl Output {
    /// Writes frames from the ring until the head, a full socket or the budget.
    pub fn write(&mut self, registry: &Registry, ring: &mut Ring, now: Instant) -> Pass {
        if !self.can_write() {
            return Pass::Blocked;
        }
        if let Sink::Http(h) = &mut self.sink {
            return h.write(&mut self.core, registry, ring, now);
        }
        let mut budget = WRITE_BUDGET;
        loop {
            // A file that rotates by size takes what is left before it rotates (one frame
            // at least), so that no file grows far past `rotate_bytes`.
            let pass_budget = match &self.sink {
                Sink::File {
                    size, rotate_bytes, ..
                } if *rotate_bytes > 0 => {
                    budget.min(rotate_bytes.saturating_sub(*size).max(1) as usize)
                }
                // rustls takes no more per write: collect no more frames than that.
                Sink::Tcp { tls: Some(_), .. } => budget.min(TLS_PLAIN_MAX),
                _ => budget,
            };
            let allowed = match self.core.bucket.as_mut() {
                Some(b) => {
                    let n = b.allowance(now, self.core.partial > 0);
                    if n == 0 {
                        b.exhaust(now);
                        return Pass::Blocked;
                    }
                    n.min(FRAMES_PER_WRITE)
                }
                None => FRAMES_PER_WRITE,
            };
            // (start, len) of each frame's prefix in prefix_buf.
            let mut prefixes = [(0usize, 0usize); FRAMES_PER_WRITE];
            let mut header = [0u8; HEADER_MAX];
            self.core.prefix_buf.clear();
            // Each frame's payload (with its LF when the ring has it after the payload), and
            // whether an LF of its own follows.
            let mut payloads: [&[u8]; FRAMES_PER_WRITE] = [&[]; FRAMES_PER_WRITE];
            let mut lfs = [false; FRAMES_PER_WRITE];
            // (record position, frame bytes, next position, records) of each frame.
            let mut frames = [(Pos::default(), 0usize, Pos::default(), 1u64); FRAMES_PER_WRITE];
            // Newline frames with nothing added per record: the rest of each entry goes as one
            // frame, straight from the ring (`buffer-spec.md` §5).
            let runs = self.core.framing == OutFraming::Newline
                && !self.core.syslog.enabled()
                && self.core.bucket.is_none();
            let mut stamps = [0u64; FRAMES_PER_WRITE];
            let mut n = 0;
            let mut pos = self.core.send;
            let mut total = 0usize;
            let mut stop = None;
            // The frames must reach past the bytes of the first one already written (`partial`),
            // whatever the budget, the rate limiter or the mode of the pass that wrote them.
            while n < FRAMES_PER_WRITE
                && ((n < allowed && total < pass_budget)
                    || (self.core.partial > 0 && total <= self.core.partial))
            {
                match ring.read(pos) {
                    Read::Record(r) => {
                        // A frame partly on the wire is never cut shorter than what was sent.
                        let room = if self.core.partial > 0 && total <= self.core.partial {
                            usize::MAX
                        } else {
                            pass_budget.saturating_sub(total)
                        };
                        let start = self.core.prefix_buf.len();
                        let (body, lf, records, next) = match runs
                            .then(|| r.lines_within(room))
                            .flatten()
                        {
                            Some(lines) => (lines.bytes, false, lines.records, lines.next),
                            None => {
                                let hlen = self.core.syslog.write(r.ts, r.pos.seq, &mut header);
                                if self.core.framing == OutFraming::Octet {
                                    let _ =
                                        write!(self.core.prefix_buf, "{} ", hlen + r.payload.len());
                                }
                                self.core.prefix_buf.extend_from_slice(&header[..hlen]);
                                let newline = self.core.framing == OutFraming::Newline;
                                let (body, lf) = match r.line {
                                    Some(line) if newline => (line, false),
                                    _ => (r.payload, newline),
                                };
                                (body, lf, 1, r.next)
                            }
                        };
                        prefixes[n] = (start, self.core.prefix_buf.len() - start);
                        let frame = prefixes[n].1 + body.len() + usize::from(lf);
                        payloads[n] = body;
                        lfs[n] = lf;
                        stamps[n] = r.ts;
                        frames[n] = (r.pos, frame, next, records);
                        total += frame;
                        n += 1;
                        pos = next;
                    }
                    Read::End => break,
                    Read::Overrun { tail } => {
                        stop = Some(Stop::Overrun(tail));
                        break;
                    }
                    Read::Corrupt { at, damage, next } => {
                        stop = Some(Stop::Corrupt(at, damage, next));
                        break;
                    }
                }
            }
            if n == 0 {
                match stop {
                    Some(Stop::Overrun(_)) if self.core.partial > 0 => {
                        // Half a frame is on the wire and its record is gone: only closing the
                        // connection keeps the stream well-framed.
                        self.fail(registry, "ring overwrote the record being sent", now);
                        return Pass::Failed;
                    }
                    Some(Stop::Overrun(tail)) => {
                        self.core.note_overrun(ring);
                        self.core.send = tail;
                    }
                    Some(Stop::Corrupt(at, damage, next)) => {
                        self.core.note_damage(at, damage, next);
                        self.core.send = next;
                        self.core.partial = 0;
                        self.core.commit_upto(ring, next);
                    }
                    None => {
                        self.core.end_episode();
                        return Pass::Done;
                    }
                }
                continue;
            }
            // On the stack: at most three slices per frame (prefix, payload, LF).
            let mut iov: heapless::Vec<IoSlice<'_>, { 3 * FRAMES_PER_WRITE }> =
                heapless::Vec::new();
            let mut skip = self.core.partial;
            for i in 0..n {
                let (ps, pl) = prefixes[i];
                let lf: &[u8] = if lfs[i] { b"\n" } else { b"" };
                for part in [&self.core.prefix_buf[ps..ps + pl], payloads[i], lf] {
                    if skip >= part.len() {
                        skip -= part.len();
                        continue;
                    }
                    // Cannot fail: n <= FRAMES_PER_WRITE and three parts per frame.
                    let _ = iov.push(IoSlice::new(&part[skip..]));
                    skip = 0;
                }
            }
            let res = match &mut self.sink {
                Sink::Tcp {
                    stream: Some(s),
                    tls: Some(t),
                    ..
                } => t.write(s, &iov),
                Sink::Tcp {
                    stream: Some(s), ..
                } => s.write_vectored(&iov),
                Sink::File { file: Some(f), .. } => f.write_vectored(&iov),
                _ => return Pass::Failed,
            };
            drop(iov);
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
            self.core.stats.bytes += written as u64;
            if let Sink::File { size, .. } = &mut self.sink {
                *size += written as u64;
            }
            budget = budget.saturating_sub(written);
            // Advance over every frame written completely.
            let mut left = written + self.core.partial;
            for (i, &(p, frame, next, records)) in frames[..n].iter().enumerate() {
                if left < frame {
                    self.core.partial = left;
                    break;
                }
                left -= frame;
                self.core.partial = 0;
                self.core.last_sent_ts = stamps[i];
                if let Some(b) = self.core.bucket.as_mut() {
                    b.tokens -= records as f64;
                }
                if let Some(e) = self.core.episode.as_mut().filter(|e| e.before_ns == 0) {
                    e.before_ns = stamps[i];
                }
                let replayed = self.core.replay_until.saturating_sub(p.seq).min(records);
                self.core.stats.replayed += replayed;
                self.core.stats.delivered += records - replayed;
                self.core.send = next;
                self.core.sent_high = self.core.sent_high.max(next.seq);
            }
            let send = self.core.send;
            if send.seq > frames[0].0.seq && matches!(self.sink, Sink::File { .. }) {
                // A file that took whole records is delivering.
                self.prove(ring, now);
            }
            self.core.commit_upto(ring, send);
            if self.core.partial > 0 && matches!(self.sink, Sink::File { .. }) {
                // A file takes part of a write only when it is out of room (a full disk, a
                // size limit): cut the torn record off and wait, as for any failed write.
                let why = self.untear().err().unwrap_or_else(|| {
                    "short write: the file system took only part of a record (disk full?); cut back to the last whole record".to_string()
                });
                self.fail(registry, &why, now);
                return Pass::Failed;
            }
            if self.rotate_if_needed(registry, now) {
                return Pass::Failed;
            }
            if budget == 0 {
                return Pass::More;
            }
        }
    }
}
