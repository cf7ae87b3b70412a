//! Record framing on input connections: LF-terminated lines and RFC 6587 octet counting.
//!
//! Sans-I/O and allocation-free: [`Framer::decode`] takes the bytes a connection has not yet had
//! consumed, calls `emit` for each complete record, and says how many bytes it consumed. The
//! caller keeps the rest and presents it again with more bytes appended.
//!
//! ## Contract
//! - The same byte stream gives the same records however it is split into reads. (One choice
//!   depends on time instead: [`Framer::decide_now`], which the caller makes only for a
//!   connection whose `auto` decision has waited about a second for bytes that do not come.)
//! - The unconsumed remainder is never more than `max_record + 16` bytes: an oversize record is
//!   consumed (truncated or dropped) as soon as it is known to be oversize, and the rest of it is
//!   skipped without being buffered. This bounds a connection's memory whatever it sends.
//! - Any bytes are accepted without panicking; work per call is linear in the bytes given.
//!
//! ## Framing
//! - **Newline**: a record is the bytes before an LF; one CR before the LF is removed; empty
//!   records are skipped (counted as `empty_lines`).
//! - **Octet counting** (RFC 6587 §3.4.1): `MSG-LEN SP MSG`, `MSG-LEN` = a non-zero digit and
//!   up to nine more digits. The message may hold any byte, LF included. A message that ends in
//!   LF is stored without that one LF (and without a CR right before it), as rsyslog
//!   (`TCP_Framing="octet-counted"`) and syslog-ng (`syslog()`) put the line's LF inside the
//!   frame; an LF elsewhere in the message stays. A message that is then empty is skipped
//!   (counted as an `empty_line`). LF and CR between frames are skipped. A frame whose header is
//!   invalid counts as a `bad_frame` and is taken as a newline-framed record up to the next LF
//!   (rsyslog does the same), after which octet counting resumes.
//! - **Auto**: decided once per connection on its first non-empty frame, so that a
//!   newline-framed line is never taken for a frame by a wrong guess. Octet counting is chosen
//!   only for a plausible frame: a valid header whose length is within `max_record`, the whole
//!   frame present, and after it (past any CR and LF) another valid header, or the end of the
//!   stream. Anything that does not start with `<digits> ` is newline framing. A stream that
//!   starts with `<digits> ` but is not a plausible frame is newline framing too, and that is a
//!   *fallback* ([`Fallback`]): counted (`auto_fallbacks`) and reported once
//!   ([`Framer::take_fallback`]) for the caller to log. While the first frame or the header
//!   after it is still arriving, nothing is consumed; the decision looks at no more than the
//!   first `max_record + 16` bytes (a stream still undecided there is a fallback), so it does
//!   not depend on how the stream is split into reads. A stream valid under both framings
//!   (`3 ab\n4 xyz\n` is the lines `3 ab`, `4 xyz` or the frames `ab`, `xyz`) is taken as octet
//!   counting, as rsyslog takes it. A sender that sends one whole frame (or an incomplete first
//!   frame with an LF in it) and then waits is decided by the caller's [`Framer::decide_now`].

pub use crate::config::{Framing, Oversize};

/// A decoder's settings.
#[derive(Clone, Copy, Debug)]
pub struct FramerConfig {
    /// The framing to expect.
    pub framing: Framing,
    /// Longest record kept whole.
    pub max_record: usize,
    /// What to do with longer records.
    pub oversize: Oversize,
}

/// Counters a decoder accumulates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FramerStats {
    /// Records emitted, truncated ones included.
    pub records: u64,
    /// Records emitted truncated.
    pub truncated: u64,
    /// Records dropped as oversize.
    pub dropped_oversize: u64,
    /// Empty lines skipped.
    pub empty_lines: u64,
    /// Octet frames with an invalid header.
    pub bad_frames: u64,
    /// Partial octet frames discarded because the sender closed.
    pub incomplete_at_eof: u64,
    /// `auto` connections that started with `<digits> ` but were not a plausible frame, and
    /// were framed by newline ([`Fallback`]).
    pub auto_fallbacks: u64,
}

/// Why `auto` chose newline framing for a connection that started with `<digits> `.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The header's length is over `max_record`.
    LengthOverMaxRecord,
    /// The sender closed before the first frame was complete.
    FrameIncompleteAtEof,
    /// What follows the first frame is not another frame header.
    NoFrameHeaderAfterFrame,
    /// Still undecidable after `max_record + 16` bytes (a long run of LF after the frame).
    UndecidedOverMaxRecord,
    /// [`Framer::decide_now`]: the first frame was incomplete and its bytes held an LF.
    DecidedByTimeout,
}

impl Fallback {
    /// Its name in logs.
    pub fn reason(self) -> &'static str {
        match self {
            Fallback::LengthOverMaxRecord => "length_over_max_record",
            Fallback::FrameIncompleteAtEof => "frame_incomplete_at_eof",
            Fallback::NoFrameHeaderAfterFrame => "no_frame_header_after_frame",
            Fallback::UndecidedOverMaxRecord => "undecided_over_max_record",
            Fallback::DecidedByTimeout => "decided_by_timeout",
        }
    }
}

/// What `auto` makes of the bytes seen so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decision {
    /// More bytes could change it.
    Wait,
    /// This framing, as expected.
    Is(Detected),
    /// Newline framing, though the stream started with `<digits> `.
    Fallback(Fallback),
}

/// An octet-counting header at the start of some bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Header {
    /// `MSG-LEN SP`: its length in bytes (the space included), and `MSG-LEN`.
    Valid(usize, usize),
    /// Digits only so far: more bytes could make it valid.
    Prefix,
    /// No bytes.
    Empty,
    /// Not a header.
    Not,
}

/// The framing a connection turned out to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// Auto, and no frame seen yet.
    Undecided,
    /// LF-terminated.
    Newline,
    /// Octet counting.
    Octet,
}

/// Skipping the rest of an oversize record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    No,
    UntilLf,
    Bytes(usize),
}

/// One step of decoding.
enum Step {
    /// This many bytes were consumed.
    Took(usize),
    /// More bytes are needed before anything can be consumed.
    NeedMore,
    /// `emit` asked to stop; nothing of this frame was consumed.
    Stop,
}

/// Per-connection decoder state: a few words, no heap.
#[derive(Clone, Copy, Debug)]
pub struct Framer {
    cfg: FramerConfig,
    detected: Detected,
    skip: Skip,
    stats: FramerStats,
    /// `auto` fell back to newline framing, not yet reported.
    fallback: Option<Fallback>,
}

/// What [`Framer::lines_in_place`] made of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InPlace {
    /// The buffer's first `len` bytes are now `records` records, each followed by an LF.
    pub len: usize,
    /// How many.
    pub records: u32,
    /// Bytes of the input they came from (with the CRs and empty lines removed): the rest of
    /// the buffer, from here, is for [`Framer::decode`].
    pub consumed: usize,
}

/// The longest octet-counting header: ten digits and a space.
const MAX_HEADER: usize = 11;

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The octet-counting header at the start of `b`.
fn header(b: &[u8]) -> Header {
    match b.first() {
        None => return Header::Empty,
        Some(b'1'..=b'9') => {}
        Some(_) => return Header::Not,
    }
    let digits = b
        .iter()
        .take(MAX_HEADER)
        .take_while(|b| b.is_ascii_digit())
        .count();
    match b.get(digits) {
        Some(b' ') if digits < MAX_HEADER => {
            // At most ten digits: fits a u64; over `usize` (32-bit) is over any `max_record`.
            let n = b[..digits]
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            Header::Valid(digits + 1, usize::try_from(n).unwrap_or(usize::MAX))
        }
        None if digits < MAX_HEADER => Header::Prefix,
        _ => Header::Not,
    }
}

impl Framer {
    /// A decoder for one connection.
    pub fn new(cfg: FramerConfig) -> Framer {
        let detected = match cfg.framing {
            Framing::Newline => Detected::Newline,
            Framing::Octet => Detected::Octet,
            Framing::Auto => Detected::Undecided,
        };
        Framer {
            cfg: FramerConfig {
                max_record: cfg.max_record.max(1),
                ..cfg
            },
            detected,
            skip: Skip::No,
            stats: FramerStats::default(),
            fallback: None,
        }
    }

    /// The framing in use.
    pub fn detected(&self) -> Detected {
        self.detected
    }

    /// The counters so far.
    pub fn stats(&self) -> FramerStats {
        self.stats
    }

    /// Decodes complete frames from `buf`; see the module docs. `emit(payload, truncated)`
    /// returns false to stop (the ring is full): that record is then not consumed, and
    /// presenting the same bytes again emits it again. `eof` means no more bytes will come.
    pub fn decode(
        &mut self,
        buf: &[u8],
        eof: bool,
        emit: &mut dyn FnMut(&[u8], bool) -> bool,
    ) -> usize {
        let mut i = 0;
        loop {
            match self.skip {
                Skip::No => {}
                Skip::UntilLf => match memchr::memchr(b'\n', &buf[i..]) {
                    Some(j) => {
                        i += j + 1;
                        self.skip = Skip::No;
                    }
                    None => return buf.len(),
                },
                Skip::Bytes(n) => {
                    let take = n.min(buf.len() - i);
                    i += take;
                    if take < n {
                        self.skip = Skip::Bytes(n - take);
                        return buf.len();
                    }
                    self.skip = Skip::No;
                }
            }
            let rest = &buf[i..];
            if rest.is_empty() {
                return i;
            }
            let step = match self.detected {
                // Blank lines before the first frame are nobody's.
                Detected::Undecided if rest[0] == b'\n' => {
                    self.stats.empty_lines += 1;
                    Step::Took(1)
                }
                Detected::Undecided if rest[0] == b'\r' => Step::Took(1),
                Detected::Undecided => match self.decide(rest, eof) {
                    Decision::Wait => Step::NeedMore,
                    Decision::Is(d) => {
                        self.detected = d;
                        continue;
                    }
                    Decision::Fallback(why) => {
                        self.fall_back(why);
                        continue;
                    }
                },
                Detected::Newline => self.line(rest, eof, emit),
                Detected::Octet => self.octet(rest, eof, emit),
            };
            match step {
                Step::Took(n) => i += n,
                Step::NeedMore => {
                    if eof {
                        return buf.len();
                    }
                    return i;
                }
                Step::Stop => return i,
            }
        }
    }

    /// Whether [`Framer::lines_in_place`] can frame this connection's next bytes: its framing
    /// is newline (configured or detected) and no oversize record is being skipped.
    pub fn in_lines(&self) -> bool {
        self.detected == Detected::Newline && self.skip == Skip::No
    }

    /// Newline framing in place, for bytes read straight into the ring: frames the complete
    /// lines at the start of `buf` as [`Framer::decode`] would, and moves them to the front of
    /// `buf`, each followed by one LF, without the CR before it and without empty lines. Stops
    /// before a record longer than `max_record` and before the partial record at the end: those
    /// bytes (from `consumed` on) are left for `decode`, which gives the same records as if it
    /// had had all of `buf`. `None` unless [`Framer::in_lines`].
    pub fn lines_in_place(&mut self, buf: &mut [u8]) -> Option<InPlace> {
        if !self.in_lines() {
            return None;
        }
        let max = self.cfg.max_record;
        let (mut read, mut len, mut records) = (0usize, 0usize, 0u32);
        while let Some(j) = memchr::memchr(b'\n', &buf[read..]) {
            let lf = read + j;
            let n = strip_cr(&buf[read..lf]).len();
            let end = read + n;
            if n > max || records == u32::MAX {
                break;
            }
            if n == 0 {
                self.stats.empty_lines += 1;
            } else {
                if len != read {
                    buf.copy_within(read..end, len);
                }
                buf[len + n] = b'\n';
                len += n + 1;
                records += 1;
            }
            read = lf + 1;
        }
        self.stats.records += u64::from(records);
        Some(InPlace {
            len,
            records,
            consumed: read,
        })
    }

    /// Decides `auto` now, for a connection whose first frame has waited long enough (about a
    /// second) for more bytes: `pending` is what [`Framer::decode`] left. A complete first frame
    /// followed by nothing (or CR, LF and the start of a header) is octet counting; an
    /// incomplete one whose bytes hold an LF is newline framing (a [`Fallback`]); anything else
    /// stays undecided. The one choice of this module that depends on time, not only on bytes:
    /// a sender that sends a first line such as `5 apples\n` and then pauses gets `apple`.
    /// Returns the framing in use afterwards.
    pub fn decide_now(&mut self, pending: &[u8]) -> Detected {
        if self.detected != Detected::Undecided {
            return self.detected;
        }
        let start = pending
            .iter()
            .position(|b| !matches!(b, b'\n' | b'\r'))
            .unwrap_or(pending.len());
        let rest = &pending[start..];
        if rest.is_empty() {
            return self.detected;
        }
        match self.decide(rest, false) {
            Decision::Is(d) => self.detected = d,
            Decision::Fallback(why) => self.fall_back(why),
            Decision::Wait => match header(rest) {
                Header::Valid(h, len) if rest.len() >= h + len => self.detected = Detected::Octet,
                _ if memchr::memchr(b'\n', rest).is_some() => {
                    self.fall_back(Fallback::DecidedByTimeout);
                }
                _ => {}
            },
        }
        self.detected
    }

    /// Why `auto` fell back to newline framing, once: `Some` the first time it is asked after
    /// the fallback, for the caller to log.
    pub fn take_fallback(&mut self) -> Option<Fallback> {
        self.fallback.take()
    }

    fn fall_back(&mut self, why: Fallback) {
        self.detected = Detected::Newline;
        self.stats.auto_fallbacks += 1;
        self.fallback = Some(why);
    }

    /// Auto-detection from the first frame on (`rest` starts with neither CR nor LF): looks at
    /// no more than `max_record + 16` bytes, and waits only while it has fewer, so the
    /// remainder stays bounded and the decision does not depend on how reads split the stream.
    fn decide(&self, rest: &[u8], eof: bool) -> Decision {
        let window = self.cfg.max_record.saturating_add(16);
        if rest.len() < window {
            return self.decide_on(rest, eof);
        }
        match self.decide_on(&rest[..window], false) {
            Decision::Wait => Decision::Fallback(Fallback::UndecidedOverMaxRecord),
            d => d,
        }
    }

    /// The rules of `auto` (module docs) on the bytes seen so far. Monotone: once it decides,
    /// more bytes decide the same.
    fn decide_on(&self, rest: &[u8], eof: bool) -> Decision {
        let (h, len) = match header(rest) {
            Header::Valid(h, len) => (h, len),
            Header::Prefix if !eof => return Decision::Wait,
            _ => return Decision::Is(Detected::Newline),
        };
        if len > self.cfg.max_record {
            return Decision::Fallback(Fallback::LengthOverMaxRecord);
        }
        let Some(after) = rest.get(h + len..) else {
            if eof {
                return Decision::Fallback(Fallback::FrameIncompleteAtEof);
            }
            return Decision::Wait;
        };
        let gap = after
            .iter()
            .take_while(|b| matches!(b, b'\n' | b'\r'))
            .count();
        match header(&after[gap..]) {
            Header::Valid(..) => Decision::Is(Detected::Octet),
            // Valid under both framings: octet counting, as rsyslog decides.
            Header::Empty if eof => Decision::Is(Detected::Octet),
            Header::Empty | Header::Prefix if !eof => Decision::Wait,
            _ => Decision::Fallback(Fallback::NoFrameHeaderAfterFrame),
        }
    }

    /// Emits one record, or handles it as oversize.
    fn record(&mut self, payload: &[u8], emit: &mut dyn FnMut(&[u8], bool) -> bool) -> bool {
        if payload.len() <= self.cfg.max_record {
            if !emit(payload, false) {
                return false;
            }
            self.stats.records += 1;
            return true;
        }
        match self.cfg.oversize {
            Oversize::Truncate => {
                if !emit(&payload[..self.cfg.max_record], true) {
                    return false;
                }
                self.stats.records += 1;
                self.stats.truncated += 1;
            }
            Oversize::Drop => self.stats.dropped_oversize += 1,
        }
        true
    }

    /// One LF-framed record at the start of `rest`.
    fn line(&mut self, rest: &[u8], eof: bool, emit: &mut dyn FnMut(&[u8], bool) -> bool) -> Step {
        let max = self.cfg.max_record;
        match memchr::memchr(b'\n', rest) {
            Some(j) => {
                let rec = strip_cr(&rest[..j]);
                if rec.is_empty() {
                    self.stats.empty_lines += 1;
                    return Step::Took(j + 1);
                }
                if self.record(rec, emit) {
                    Step::Took(j + 1)
                } else {
                    Step::Stop
                }
            }
            // Oversize and still no LF: keep the head (or nothing), skip the rest unbuffered.
            None if rest.len() > max + 1 => {
                if !self.record(rest, emit) {
                    return Step::Stop;
                }
                self.skip = Skip::UntilLf;
                Step::Took(rest.len())
            }
            None if eof => {
                let rec = strip_cr(rest);
                if !rec.is_empty() && !self.record(rec, emit) {
                    return Step::Stop;
                }
                Step::Took(rest.len())
            }
            None => Step::NeedMore,
        }
    }

    /// One octet-counted frame at the start of `rest`.
    fn octet(&mut self, rest: &[u8], eof: bool, emit: &mut dyn FnMut(&[u8], bool) -> bool) -> Step {
        if rest[0] == b'\n' || rest[0] == b'\r' {
            return Step::Took(1);
        }
        let (h, len) = match header(rest) {
            Header::Valid(h, len) => (h, len),
            Header::Prefix => {
                if eof {
                    self.stats.incomplete_at_eof += 1;
                }
                return Step::NeedMore;
            }
            Header::Empty | Header::Not => {
                // Not a frame header: take the bytes up to the next LF as a line.
                let step = self.line(rest, eof, emit);
                if matches!(step, Step::Took(_)) {
                    self.stats.bad_frames += 1;
                }
                return step;
            }
        };
        let max = self.cfg.max_record;
        if len > max {
            match self.cfg.oversize {
                Oversize::Truncate => {
                    if rest.len() < h + max {
                        if eof {
                            self.stats.incomplete_at_eof += 1;
                        }
                        return Step::NeedMore;
                    }
                    // The header already says it is oversize: keep its head, flagged.
                    if !emit(&rest[h..h + max], true) {
                        return Step::Stop;
                    }
                    self.stats.records += 1;
                    self.stats.truncated += 1;
                    self.skip = Skip::Bytes(len - max);
                    return Step::Took(h + max);
                }
                Oversize::Drop => {
                    self.stats.dropped_oversize += 1;
                    self.skip = Skip::Bytes(len);
                    return Step::Took(h);
                }
            }
        }
        if rest.len() < h + len {
            if eof {
                self.stats.incomplete_at_eof += 1;
            }
            return Step::NeedMore;
        }
        // The line's LF inside the frame (rsyslog, syslog-ng) is not the record's.
        let payload = &rest[h..h + len];
        let rec = payload.strip_suffix(b"\n").map_or(payload, strip_cr);
        if rec.is_empty() {
            self.stats.empty_lines += 1;
            return Step::Took(h + len);
        }
        if self.record(rec, emit) {
            Step::Took(h + len)
        } else {
            Step::Stop
        }
    }
}

#[cfg(test)]
mod tests;
