//! Record framing on input connections: LF-terminated lines and RFC 6587 octet counting.
//!
//! Sans-I/O and allocation-free: [`Framer::decode`] takes the bytes a connection has not yet had
//! consumed, calls `emit` for each complete record, and says how many bytes it consumed. The
//! caller keeps the rest and presents it again with more bytes appended.
//!
//! ## Contract
//! - The same byte stream gives the same records however it is split into reads.
//! - The unconsumed remainder is never more than `max_record + 16` bytes: an oversize record is
//!   consumed (truncated or dropped) as soon as it is known to be oversize, and the rest of it is
//!   skipped without being buffered. This bounds a connection's memory whatever it sends.
//! - Any bytes are accepted without panicking; work per call is linear in the bytes given.
//!
//! ## Framing
//! - **Newline**: a record is the bytes before an LF; one CR before the LF is removed; empty
//!   records are skipped (counted as `empty_lines`).
//! - **Octet counting** (RFC 6587 §3.4.1): `MSG-LEN SP MSG`, `MSG-LEN` = a non-zero digit and
//!   up to nine more digits. The message may hold any byte, LF included. LF and CR between frames
//!   are skipped. A frame whose header is invalid counts as a `bad_frame` and is taken as a
//!   newline-framed record up to the next LF (rsyslog does the same), after which octet counting
//!   resumes.
//! - **Auto**: decided once per connection on its first non-empty frame: digits then a space
//!   mean octet counting, anything else newline.

/// How records are delimited on an input connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// LF-terminated lines (NSS, LSS).
    Newline,
    /// RFC 6587 octet counting.
    Octet,
    /// Decided per connection from its first frame.
    Auto,
}

/// What happens to a record longer than `max_record`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Oversize {
    /// Keep its first `max_record` bytes, flagged truncated.
    Truncate,
    /// Drop it (counted).
    Drop,
}

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
                Detected::Undecided => match self.decide(rest, eof) {
                    Some(d) => {
                        self.detected = d;
                        continue;
                    }
                    None if rest[0] == b'\n' => {
                        self.stats.empty_lines += 1;
                        Step::Took(1)
                    }
                    None if rest[0] == b'\r' => Step::Took(1),
                    None => Step::NeedMore,
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

    /// Auto-detection on the first bytes of the first frame; `None` while undecidable (or for
    /// leading blank lines, which the caller skips).
    fn decide(&self, rest: &[u8], eof: bool) -> Option<Detected> {
        match rest[0] {
            b'\n' | b'\r' => None,
            b'1'..=b'9' => {
                let digits = rest
                    .iter()
                    .take(MAX_HEADER)
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                match rest.get(digits) {
                    Some(b' ') if digits < MAX_HEADER => Some(Detected::Octet),
                    Some(_) => Some(Detected::Newline),
                    None if digits >= MAX_HEADER || eof => Some(Detected::Newline),
                    None => None,
                }
            }
            _ => Some(Detected::Newline),
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
        let digits = rest
            .iter()
            .take(MAX_HEADER)
            .take_while(|b| b.is_ascii_digit())
            .count();
        let header_ok = rest[0] != b'0' && digits > 0 && digits < MAX_HEADER;
        let len = match rest.get(digits) {
            None if header_ok => {
                if eof {
                    self.stats.incomplete_at_eof += 1;
                }
                return Step::NeedMore;
            }
            Some(b' ') if header_ok => std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|d| d.parse::<usize>().ok()),
            _ => None,
        };
        let Some(len) = len else {
            // Not a frame header: take the bytes up to the next LF as a line.
            let step = self.line(rest, eof, emit);
            if matches!(step, Step::Took(_)) {
                self.stats.bad_frames += 1;
            }
            return step;
        };
        let h = digits + 1;
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
        if self.record(&rest[h..h + len], emit) {
            Step::Took(h + len)
        } else {
            Step::Stop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer(framing: Framing, max: usize, oversize: Oversize) -> Framer {
        Framer::new(FramerConfig {
            framing,
            max_record: max,
            oversize,
        })
    }

    /// Feeds `chunks` one after another as a connection would, returns the records.
    fn run(f: &mut Framer, chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for (k, c) in chunks.iter().enumerate() {
            pending.extend_from_slice(c);
            let eof = k + 1 == chunks.len();
            let n = f.decode(&pending, eof, &mut |r, t| {
                out.push((r.to_vec(), t));
                true
            });
            pending.drain(..n);
        }
        out
    }

    fn recs(v: &[(Vec<u8>, bool)]) -> Vec<&[u8]> {
        v.iter().map(|(r, _)| r.as_slice()).collect()
    }

    #[test]
    fn newline_records_split_anywhere_come_out_whole_without_cr() {
        let mut f = framer(Framing::Newline, 100, Oversize::Truncate);
        let out = run(&mut f, &[b"ab", b"c\r\n\n de", b"f\nlast"]);
        assert_eq!(recs(&out), [&b"abc"[..], b" def", b"last"]);
        assert_eq!(f.stats().empty_lines, 1);
    }

    #[test]
    fn octet_frame_split_across_reads_is_reassembled() {
        let mut f = framer(Framing::Octet, 100, Oversize::Truncate);
        let out = run(&mut f, &[b"1", b"1 hello\nworl", b"d5 abcde\n3 x"]);
        assert_eq!(recs(&out), [&b"hello\nworld"[..], b"abcde"]);
        assert_eq!(f.stats().incomplete_at_eof, 1);
    }

    #[test]
    fn auto_picks_octet_for_digits_then_space_and_newline_otherwise() {
        let mut f = framer(Framing::Auto, 100, Oversize::Truncate);
        run(&mut f, &[b"12", b"3 "]);
        assert_eq!(f.detected(), Detected::Octet);
        let mut f = framer(Framing::Auto, 100, Oversize::Truncate);
        let out = run(&mut f, &[b"1700000000,\"csv\"\n"]);
        assert_eq!(f.detected(), Detected::Newline);
        assert_eq!(recs(&out), [&b"1700000000,\"csv\""[..]]);
    }

    #[test]
    fn oversize_line_is_truncated_once_and_the_next_line_is_intact() {
        let mut f = framer(Framing::Newline, 4, Oversize::Truncate);
        let out = run(&mut f, &[b"abcdefgh", b"ijk\nok\n"]);
        assert_eq!(out, vec![(b"abcd".to_vec(), true), (b"ok".to_vec(), false)]);
    }

    #[test]
    fn oversize_octet_frame_is_dropped_and_skipped_without_buffering() {
        let mut f = framer(Framing::Octet, 4, Oversize::Drop);
        let mut pending = b"10 0123".to_vec();
        let n = f.decode(&pending, false, &mut |_, _| panic!("nothing to emit"));
        pending.drain(..n);
        assert!(pending.is_empty(), "oversize frame must not be retained");
        let out = run(&mut f, &[b"456789", b"2 ok"]);
        assert_eq!(recs(&out), [&b"ok"[..]]);
        assert_eq!(f.stats().dropped_oversize, 1);
    }

    #[test]
    fn oversize_octet_frame_is_flagged_however_it_is_split() {
        // Exactly `MSG-LEN SP` + max bytes present, then the rest.
        let mut f = framer(Framing::Octet, 4, Oversize::Truncate);
        let out = run(&mut f, &[b"6 abcd", b"ef2 ok"]);
        assert_eq!(out, [(b"abcd".to_vec(), true), (b"ok".to_vec(), false)]);
        assert_eq!(f.stats().truncated, 1);
    }

    #[test]
    fn auto_detection_does_not_depend_on_where_the_header_is_split() {
        // Ten digits is still a valid MSG-LEN: the space may be in the next read.
        let stream = b"1234567890 abc";
        let whole = run(
            &mut framer(Framing::Auto, 100, Oversize::Truncate),
            &[stream],
        );
        for k in 1..stream.len() {
            let (a, b) = stream.split_at(k);
            let parts = run(&mut framer(Framing::Auto, 100, Oversize::Truncate), &[a, b]);
            assert_eq!(parts, whole, "split at {k}");
        }
    }

    #[test]
    fn invalid_octet_header_falls_back_to_a_line_and_resumes() {
        let mut f = framer(Framing::Octet, 100, Oversize::Truncate);
        let out = run(&mut f, &[b"<13>hello\n3 abc"]);
        assert_eq!(recs(&out), [&b"<13>hello"[..], b"abc"]);
        assert_eq!(f.stats().bad_frames, 1);
    }

    #[test]
    fn lines_in_place_strips_cr_and_empty_lines_and_leaves_the_rest_to_decode() {
        let mut f = framer(Framing::Newline, 8, Oversize::Truncate);
        let mut buf = b"ab\r\n\ncd\n\r\nlonger than8\nef\ng".to_vec();
        let got = f.lines_in_place(&mut buf).unwrap();
        assert_eq!(
            got,
            InPlace {
                len: 6,
                records: 2,
                consumed: 10
            }
        );
        assert_eq!(&buf[..6], b"ab\ncd\n");
        assert_eq!(f.stats().empty_lines, 2);
        // The oversize record and what follows are decode's (the last chunk ends the stream).
        let rest = buf[got.consumed..].to_vec();
        let want = [(&b"longer t"[..], true), (b"ef", false), (b"g", false)];
        let want: Vec<_> = want.iter().map(|(r, t)| (r.to_vec(), *t)).collect();
        assert_eq!(run(&mut f, &[&rest]), want);
        assert_eq!(f.stats().records, 5);
        // Auto, before a frame decided it, is decode's too.
        let mut auto = framer(Framing::Auto, 8, Oversize::Truncate);
        assert_eq!(auto.lines_in_place(&mut b"12 ab".to_vec()), None);
    }

    #[test]
    fn emit_refusal_leaves_the_record_unconsumed() {
        let mut f = framer(Framing::Newline, 100, Oversize::Truncate);
        let n = f.decode(b"a\nb\n", false, &mut |r, _| r == b"a");
        assert_eq!(n, 2);
        let mut got = Vec::new();
        let n = f.decode(b"b\n", false, &mut |r, _| {
            got.push(r.to_vec());
            true
        });
        assert_eq!((n, got), (2, vec![b"b".to_vec()]));
    }
}
