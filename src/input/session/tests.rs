//! [`super::Session`] without sockets: its events one by one, and whole turns of a scripted
//! connection through the real framer (`Conn` below stands in for `Inputs::stream_turn`).

use std::collections::VecDeque;
use std::io::ErrorKind;

use super::*;
use crate::input::framing::{Framer, FramerConfig, Framing, Oversize};

const IDLE: Duration = Duration::from_secs(30);
const HANDSHAKE: Duration = Duration::from_secs(10);
const LIMITS: Timeouts = Timeouts {
    handshake: Some(HANDSHAKE),
    idle: Some(IDLE),
};
const MS: Duration = Duration::from_millis(1);

/// What the socket gives, read by read.
enum Sock {
    Bytes(&'static [u8]),
    Eof,
    WouldBlock,
}

/// `Inputs::stream_turn` without sockets: scripted reads, the real framer, and a ring of
/// `room` records.
struct Conn {
    s: Session,
    framer: Framer,
    pending: Vec<u8>,
    sock: VecDeque<Sock>,
    ring: Vec<Vec<u8>>,
    room: usize,
}

impl Conn {
    fn new(framing: Framing, sock: Vec<Sock>, room: usize, now: Instant) -> Conn {
        Conn {
            s: Session::new(false, now),
            framer: Framer::new(FramerConfig {
                framing,
                max_record: 64,
                oversize: Oversize::Truncate,
            }),
            pending: Vec::new(),
            sock: sock.into(),
            ring: Vec::new(),
            room,
        }
    }

    /// Frames `data` into the ring; what is left stays pending. Whether the ring refused.
    fn frame(&mut self, data: &[u8], last: bool) -> bool {
        let (ring, room) = (&mut self.ring, &mut self.room);
        let mut refused = false;
        let consumed = self.framer.decode(data, last, &mut |rec, _| {
            if *room == 0 {
                refused = true;
                return false;
            }
            *room -= 1;
            ring.push(rec.to_vec());
            true
        });
        self.pending = data[consumed..].to_vec();
        refused
    }

    /// One turn, as `Inputs::stream_turn` runs it; how it ended.
    fn turn(&mut self, syncing: bool, drain: bool, now: Instant) -> Next {
        let mut next = self.s.begin(syncing, drain);
        loop {
            next = match next {
                Next::Read => match self.sock.pop_front().unwrap_or(Sock::WouldBlock) {
                    Sock::Bytes(b) => {
                        self.s.heard();
                        let data = [&self.pending[..], b].concat();
                        let refused = self.frame(&data, false);
                        self.s.read(b.len(), refused, now)
                    }
                    Sock::Eof => self.s.eof(),
                    Sock::WouldBlock => self.s.read_failed(ErrorKind::WouldBlock),
                },
                Next::Frame { last } => {
                    let data = std::mem::take(&mut self.pending);
                    let refused = self.frame(&data, last);
                    self.s.framed(refused)
                }
                Next::Yield | Next::Wait | Next::Close(_) => return next,
            };
        }
    }

    fn records(&self) -> Vec<&[u8]> {
        self.ring.iter().map(Vec::as_slice).collect()
    }
}

#[test]
fn plain_starts_reading_tls_starts_handshaking() {
    let t0 = Instant::now();
    let plain = Session::new(false, t0);
    assert_eq!(plain.state(), State::Reading);
    assert_eq!(plain.handshake(), Handshake::None);
    let tls = Session::new(true, t0);
    assert_eq!(tls.state(), State::Reading);
    assert!(tls.handshaking());
}

#[test]
fn reading_reads_until_would_block() {
    let t0 = Instant::now();
    let mut s = Session::new(false, t0);
    assert_eq!(s.begin(false, false), Next::Read);
    assert_eq!(s.read(100, false, t0 + MS), Next::Read);
    assert_eq!(s.last_active(), t0 + MS);
    assert_eq!(s.read_failed(ErrorKind::WouldBlock), Next::Wait);
    assert_eq!(s.state(), State::Reading);
}

#[test]
fn reading_zero_bytes_is_eof_and_would_block_is_not() {
    let t0 = Instant::now();
    let mut c = Conn::new(Framing::Newline, vec![Sock::WouldBlock], 10, t0);
    assert_eq!(
        c.turn(false, false, t0),
        Next::Wait,
        "WouldBlock: more later"
    );
    assert_eq!(c.s.state(), State::Reading);
    c.sock.push_back(Sock::Eof);
    assert_eq!(
        c.turn(false, false, t0),
        Next::Close(Close::SenderClosed),
        "0 bytes: the sender closed"
    );
}

#[test]
fn reading_interrupted_reads_again_and_other_errors_close() {
    let t0 = Instant::now();
    let mut s = Session::new(false, t0);
    s.begin(false, false);
    assert_eq!(s.read_failed(ErrorKind::Interrupted), Next::Read);
    assert_eq!(
        s.read_failed(ErrorKind::ConnectionReset),
        Next::Close(Close::ReadError)
    );
    assert_eq!(s.close(Close::ReadError, None), Ending::Closed);
    assert_eq!(s.state(), State::Closed(Close::ReadError));
    assert_eq!(
        s.begin(false, false),
        Next::Wait,
        "a stale event does nothing"
    );
}

#[test]
fn reading_budget_yields_after_reads_per_turn_unless_draining() {
    let t0 = Instant::now();
    let mut s = Session::new(false, t0);
    s.begin(false, false);
    for _ in 1..READS_PER_TURN {
        assert_eq!(s.read(10, false, t0), Next::Read);
    }
    assert_eq!(s.read(10, false, t0), Next::Yield);
    assert_eq!(
        s.begin(false, false),
        Next::Read,
        "a new turn, a new budget"
    );
    s.begin(false, true);
    for _ in 0..READS_PER_TURN * 3 {
        assert_eq!(s.read(10, false, t0), Next::Read, "the drain has no budget");
    }
}

#[test]
fn reading_ring_full_pauses_until_resumed_then_frames_pending_first() {
    let t0 = Instant::now();
    let sock = vec![Sock::Bytes(b"a\nb\nc\n"), Sock::Bytes(b"d\n")];
    let mut c = Conn::new(Framing::Newline, sock, 2, t0);
    assert_eq!(c.turn(false, false, t0), Next::Wait);
    assert_eq!(c.s.state(), State::Paused(Pause::RingFull));
    assert!(c.s.waits_for_feed());
    assert_eq!(c.records(), [b"a", b"b"]);
    assert_eq!(c.pending, b"c\n", "the refused record waits");
    assert_eq!(c.sock.len(), 1, "nothing more is read while paused");
    // An event while the ring is still full: the refused record again, and no read.
    assert_eq!(c.turn(false, false, t0), Next::Wait);
    assert_eq!(c.sock.len(), 1);
    // The outputs made room and the feed resumed it: the refused record first, then reads.
    c.room = 10;
    assert_eq!(c.turn(false, false, t0), Next::Wait);
    assert_eq!(c.records(), [b"a", b"b", b"c", b"d"]);
    assert_eq!(c.s.state(), State::Reading);
}

#[test]
fn reading_feed_syncing_pauses_without_reading_and_the_drain_reads_anyway() {
    let t0 = Instant::now();
    let mut c = Conn::new(Framing::Newline, vec![Sock::Bytes(b"a\n")], 10, t0);
    assert_eq!(c.turn(true, false, t0), Next::Wait);
    assert_eq!(c.s.state(), State::Paused(Pause::Sync));
    assert!(c.s.waits_for_feed(), "the feed's resume queues it");
    assert_eq!(c.sock.len(), 1, "nothing read");
    assert_eq!(c.turn(true, false, t0), Next::Wait, "still syncing");
    assert_eq!(c.turn(false, false, t0), Next::Wait, "resumed");
    assert_eq!(c.records(), [b"a"]);
    c.sock.push_back(Sock::Bytes(b"b\n"));
    assert_eq!(c.turn(true, true, t0), Next::Wait);
    assert_eq!(
        c.records(),
        [b"a", b"b"],
        "the shutdown drain does not wait"
    );
}

#[test]
fn closed_mid_line_frames_the_partial_line_as_the_last_record() {
    let t0 = Instant::now();
    let sock = vec![Sock::Bytes(b"one\ntw"), Sock::Eof];
    let mut c = Conn::new(Framing::Newline, sock, 10, t0);
    assert_eq!(c.turn(false, false, t0), Next::Close(Close::SenderClosed));
    assert_eq!(c.records(), [&b"one"[..], b"tw"]);
    assert_eq!(c.framer.stats().incomplete_at_eof, 0);
}

#[test]
fn closed_mid_octet_frame_counts_it_incomplete_and_stores_nothing_of_it() {
    let t0 = Instant::now();
    let sock = vec![Sock::Bytes(b"3 one5 tw"), Sock::Eof];
    let mut c = Conn::new(Framing::Octet, sock, 10, t0);
    assert_eq!(c.turn(false, false, t0), Next::Close(Close::SenderClosed));
    assert_eq!(c.records(), [b"one"]);
    // `connection_closed` adds it to the feed's `incomplete_at_eof`.
    assert_eq!(c.framer.stats().incomplete_at_eof, 1);
}

#[test]
fn closed_mid_first_auto_frame_falls_back_to_lines_and_keeps_them() {
    let t0 = Instant::now();
    let sock = vec![Sock::Bytes(b"42 apples sold\nsecond"), Sock::Eof];
    let mut c = Conn::new(Framing::Auto, sock, 10, t0);
    assert_eq!(c.turn(false, false, t0), Next::Close(Close::SenderClosed));
    assert_eq!(c.records(), [&b"42 apples sold"[..], b"second"]);
    assert_eq!(c.framer.stats().auto_fallbacks, 1);
}

#[test]
fn closed_mid_line_with_a_full_ring_drains_once_resumed_then_closes() {
    let t0 = Instant::now();
    let sock = vec![Sock::Bytes(b"one\ntw"), Sock::Eof];
    let mut c = Conn::new(Framing::Newline, sock, 1, t0);
    assert_eq!(c.turn(false, false, t0), Next::Wait);
    assert_eq!(c.s.state(), State::Draining);
    assert!(c.s.waits_for_feed() && c.s.sender_closed());
    assert_eq!(c.turn(false, false, t0), Next::Wait, "still full");
    c.room = 1;
    assert_eq!(c.turn(false, false, t0), Next::Close(Close::SenderClosed));
    assert_eq!(c.records(), [&b"one"[..], b"tw"]);
}

#[test]
fn idle_timeout_is_due_once_exceeded_from_the_last_read() {
    let t0 = Instant::now();
    let mut s = Session::new(false, t0);
    assert_eq!(s.poll_at(LIMITS), Some(t0 + IDLE));
    let t1 = t0 + Duration::from_secs(20);
    s.begin(false, false);
    s.read(5, false, t1);
    assert_eq!(s.poll_at(LIMITS), Some(t1 + IDLE), "a read starts it again");
    assert_eq!(s.due(t1 + IDLE, LIMITS), Some(Due::DecideFraming));
    assert_eq!(s.due(t1 + IDLE + MS, LIMITS), Some(Due::IdleTimeout));
    let no_idle = Timeouts {
        idle: None,
        ..LIMITS
    };
    assert_eq!(s.poll_at(no_idle), None);
    assert_eq!(s.due(t1 + IDLE * 100, no_idle), Some(Due::DecideFraming));
}

#[test]
fn decide_framing_is_due_after_undecided_wait_only_while_reading() {
    let t0 = Instant::now();
    let mut s = Session::new(false, t0);
    assert_eq!(s.due(t0 + UNDECIDED_WAIT, LIMITS), None);
    assert_eq!(
        s.due(t0 + UNDECIDED_WAIT + MS, LIMITS),
        Some(Due::DecideFraming)
    );
    s.begin(false, false);
    s.ring_full();
    assert_eq!(
        s.due(t0 + UNDECIDED_WAIT + MS, LIMITS),
        None,
        "its pending bytes wait for the ring"
    );
}

#[test]
fn silent_connection_is_evictable_until_it_is_heard() {
    let t0 = Instant::now();
    let mut s = Session::new(true, t0);
    assert_eq!(s.silent_since(), Some(t0));
    s.handshake_done();
    assert_eq!(s.silent_since(), Some(t0), "a handshake is not plaintext");
    s.heard();
    assert_eq!(s.silent_since(), None);
}

#[test]
fn evicted_is_an_eviction_even_mid_handshake() {
    let t0 = Instant::now();
    let mut s = Session::new(false, t0);
    assert_eq!(s.close(Close::Evicted, None), Ending::Closed);
    let mut s = Session::new(true, t0);
    assert_eq!(
        s.close(Close::Evicted, None),
        Ending::Closed,
        "counted as an eviction, not a failed handshake"
    );
    assert_eq!(s.state(), State::Closed(Close::Evicted));
}

#[test]
fn handshaking_done_once_then_its_close_is_a_closed_connection() {
    let t0 = Instant::now();
    let mut s = Session::new(true, t0);
    assert!(s.handshake_done());
    assert!(!s.handshake_done(), "counted and logged once");
    assert_eq!(s.handshake(), Handshake::Established);
    assert_ne!(
        s.due(t0 + HANDSHAKE * 2, LIMITS),
        Some(Due::HandshakeTimeout)
    );
    assert_eq!(s.poll_at(LIMITS), Some(t0 + IDLE), "the idle timeout only");
    assert_eq!(s.close(Close::IdleTimeout, None), Ending::Closed);
}

#[test]
fn handshaking_tls_error_fails_the_handshake_with_its_reason() {
    let t0 = Instant::now();
    let mut s = Session::new(true, t0);
    s.begin(false, false);
    assert_eq!(
        s.read_failed(ErrorKind::InvalidData),
        Next::Close(Close::ReadError)
    );
    assert_eq!(
        s.close(Close::ReadError, Some("unknown_ca")),
        Ending::HandshakeFailed("unknown_ca")
    );
}

#[test]
fn handshaking_sender_closed_fails_the_handshake_as_closed() {
    let t0 = Instant::now();
    let mut s = Session::new(true, t0);
    s.begin(false, false);
    assert_eq!(
        s.eof(),
        Next::Close(Close::SenderClosed),
        "nothing to frame"
    );
    assert_eq!(
        s.close(Close::SenderClosed, None),
        Ending::HandshakeFailed("closed")
    );
}

#[test]
fn handshaking_timeout_is_due_from_opened_whatever_it_read() {
    let t0 = Instant::now();
    let mut s = Session::new(true, t0);
    assert_eq!(s.poll_at(LIMITS), Some(t0 + HANDSHAKE));
    s.begin(false, false);
    s.read(5, false, t0 + HANDSHAKE);
    assert_eq!(s.due(t0 + HANDSHAKE, LIMITS), None);
    assert_eq!(
        s.due(t0 + HANDSHAKE + MS, LIMITS),
        Some(Due::HandshakeTimeout)
    );
    assert_eq!(
        s.close(Close::HandshakeTimeout, None),
        Ending::HandshakeFailed("timeout")
    );
}

#[test]
fn handshaking_paused_is_still_handshaking_when_resumed() {
    // A TLS connection paused mid-handshake (the feed syncs, or newline framing finds no
    // ring room to read into) resumes, times out and fails as a handshake.
    let t0 = Instant::now();
    for pause in [Pause::Sync, Pause::RingFull] {
        let mut s = Session::new(true, t0);
        match pause {
            Pause::Sync => assert_eq!(s.begin(true, false), Next::Wait),
            Pause::RingFull => {
                s.begin(false, false);
                assert_eq!(s.ring_full(), Next::Wait);
            }
        }
        assert_eq!(s.state(), State::Paused(pause));
        assert!(s.handshaking());
        assert_eq!(
            s.due(t0 + HANDSHAKE + MS, LIMITS),
            Some(Due::HandshakeTimeout)
        );
        assert_eq!(s.begin(false, false), Next::Frame { last: false });
        assert_eq!(s.framed(false), Next::Read);
        assert!(s.handshake_done(), "{pause:?}");
    }
}

#[test]
fn http_eof_while_the_feed_syncs_waits_for_the_feed_and_stays_closed() {
    // An HTTP connection stays in `Eof` until its response is out; a sync pause keeps it.
    let t0 = Instant::now();
    let mut s = Session::new(false, t0);
    s.begin(false, false);
    s.eof();
    assert!(s.sender_closed());
    assert_eq!(s.begin(true, false), Next::Wait);
    assert_eq!(s.state(), State::Draining);
    assert!(s.waits_for_feed() && s.sender_closed());
    s.begin(false, false);
    assert_eq!(s.state(), State::Eof);
}
