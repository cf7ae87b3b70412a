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

fn auto(chunks: &[&[u8]]) -> (Vec<(Vec<u8>, bool)>, Framer) {
    let mut f = framer(Framing::Auto, 100, Oversize::Truncate);
    let out = run(&mut f, chunks);
    (out, f)
}

#[test]
fn auto_picks_octet_for_a_whole_frame_followed_by_a_frame_header() {
    let (out, f) = auto(&[b"2", b"3 ", &[b'x'; 23], b"3 abc"]);
    assert_eq!(f.detected(), Detected::Octet);
    assert_eq!(recs(&out), [&[b'x'; 23][..], b"abc"]);
    assert_eq!(f.stats().auto_fallbacks, 0);
}

#[test]
fn auto_picks_newline_without_a_fallback_when_no_frame_header_starts_the_stream() {
    for stream in [
        &b"1700000000,\"csv\"\n"[..],
        b"<13>x\n",
        b"0 zero\n",
        b"12345678901 x\n",
    ] {
        let (out, f) = auto(&[stream]);
        assert_eq!(f.detected(), Detected::Newline);
        assert_eq!(recs(&out), [&stream[..stream.len() - 1]]);
        assert_eq!(f.stats().auto_fallbacks, 0, "{stream:?}");
    }
}

#[test]
fn auto_keeps_both_lines_of_the_issue_example_whose_frame_is_incomplete_at_eof() {
    let mut f = framer(Framing::Auto, 100, Oversize::Truncate);
    let out = run(&mut f, &[b"42 apples sold at store 7\nsecond line\n"]);
    assert_eq!(
        recs(&out),
        [&b"42 apples sold at store 7"[..], b"second line"]
    );
    assert_eq!(f.stats().auto_fallbacks, 1);
    assert_eq!(f.take_fallback(), Some(Fallback::FrameIncompleteAtEof));
    assert_eq!(f.take_fallback(), None, "reported once");
}

#[test]
fn auto_keeps_lines_whose_first_frame_is_followed_by_no_frame_header() {
    let mut f = framer(Framing::Auto, 100, Oversize::Truncate);
    let out = run(&mut f, &[b"5 apples sold\nsecond line\n"]);
    assert_eq!(recs(&out), [&b"5 apples sold"[..], b"second line"]);
    assert_eq!(f.take_fallback(), Some(Fallback::NoFrameHeaderAfterFrame));
}

#[test]
fn auto_keeps_epoch_timestamped_lines_whose_length_is_over_max_record() {
    let stream = b"1700000000 user=alice action=allow\n1700000001 user=bob action=block\n";
    let mut f = framer(Framing::Auto, 100, Oversize::Truncate);
    let out = run(&mut f, &[&stream[..3], &stream[3..]]);
    assert_eq!(
        recs(&out),
        [
            &b"1700000000 user=alice action=allow"[..],
            b"1700000001 user=bob action=block"
        ]
    );
    assert_eq!(f.take_fallback(), Some(Fallback::LengthOverMaxRecord));
    assert_eq!(f.stats().auto_fallbacks, 1);
}

#[test]
fn auto_takes_rsyslog_frames_as_octet_and_drops_the_lf_inside_each_frame() {
    let a = b"<13>1 2026-01-02T03:04:05Z host app - - - first\n";
    let b = b"<13>1 2026-01-02T03:04:06Z host app - - - sec\nond\n";
    let stream = [
        format!("{} ", a.len()).into_bytes(),
        a.to_vec(),
        format!("{} ", b.len()).into_bytes(),
        b.to_vec(),
    ]
    .concat();
    for k in 0..stream.len() {
        let (x, y) = stream.split_at(k);
        let (out, f) = auto(&[x, y]);
        assert_eq!(f.detected(), Detected::Octet, "split at {k}");
        assert_eq!(
            recs(&out),
            [&a[..a.len() - 1], &b[..b.len() - 1]],
            "split at {k}"
        );
    }
}

#[test]
fn auto_takes_a_stream_valid_under_both_framings_as_octet() {
    let (out, f) = auto(&[b"3 ab\n4 xyz\n"]);
    assert_eq!(f.detected(), Detected::Octet);
    assert_eq!(recs(&out), [&b"ab"[..], b"xyz"]);
    // One whole frame and the end of the stream: octet too.
    let (out, _) = auto(&[b"3 ab\n"]);
    assert_eq!(recs(&out), [&b"ab"[..]]);
}

#[test]
fn auto_waits_while_the_bytes_after_the_first_frame_could_still_be_a_header() {
    let mut f = framer(Framing::Auto, 100, Oversize::Truncate);
    let emit = &mut |_: &[u8], _| panic!("nothing yet");
    assert_eq!(f.decode(b"\n3 ab\n", false, emit), 1);
    assert_eq!(f.decode(b"3 ab\n\r\n12", false, emit), 0);
    assert_eq!(f.detected(), Detected::Undecided);
    let n = f.decode(b"3 ab\n\r\n12x", false, &mut |_, _| true);
    // `3 ab`, an empty line, and `12x` waits for its LF.
    assert_eq!((n, f.detected()), (7, Detected::Newline));
    assert_eq!(f.take_fallback(), Some(Fallback::NoFrameHeaderAfterFrame));
}

#[test]
fn auto_undecided_after_max_record_and_16_bytes_falls_back_to_newline() {
    let mut f = framer(Framing::Auto, 8, Oversize::Truncate);
    let mut stream = b"3 ab".to_vec();
    stream.resize(100, b'\n');
    stream.extend_from_slice(b"3 xyz\n");
    let whole = run(&mut f, &[&stream]);
    assert_eq!(f.take_fallback(), Some(Fallback::UndecidedOverMaxRecord));
    assert_eq!(recs(&whole), [&b"3 ab"[..], b"3 xyz"]);
    for k in 0..stream.len() {
        let (x, y) = stream.split_at(k);
        let mut f = framer(Framing::Auto, 8, Oversize::Truncate);
        let n = f.decode(x, false, &mut |_, _| true);
        assert!(
            x.len() - n <= 8 + 16,
            "split at {k}: retained {}",
            x.len() - n
        );
        let mut f = framer(Framing::Auto, 8, Oversize::Truncate);
        assert_eq!(run(&mut f, &[x, y]), whole, "split at {k}");
    }
}

#[test]
fn decide_now_takes_one_whole_frame_and_nothing_after_it_as_octet() {
    let mut f = framer(Framing::Auto, 100, Oversize::Truncate);
    let pending = b"<13>1 2026-01-02T03:04:05Z h a - - - m\n";
    let pending = [format!("{} ", pending.len()).as_bytes(), pending].concat();
    assert_eq!(f.decode(&pending, false, &mut |_, _| true), 0);
    assert_eq!(f.decide_now(&pending), Detected::Octet);
    assert_eq!(f.take_fallback(), None);
    let mut got = Vec::new();
    let n = f.decode(&pending, false, &mut |r, _| {
        got.push(r.to_vec());
        true
    });
    assert_eq!(
        (n, got),
        (
            pending.len(),
            vec![b"<13>1 2026-01-02T03:04:05Z h a - - - m".to_vec()]
        )
    );
}

#[test]
fn decide_now_takes_an_incomplete_frame_holding_an_lf_as_newline() {
    let mut f = framer(Framing::Auto, 100, Oversize::Truncate);
    let pending = b"42 apples sold at store 7\nsecond line\n";
    assert_eq!(f.decode(pending, false, &mut |_, _| true), 0);
    assert_eq!(f.decide_now(pending), Detected::Newline);
    assert_eq!(f.take_fallback(), Some(Fallback::DecidedByTimeout));
    assert_eq!(f.stats().auto_fallbacks, 1);
    let out = run(&mut f, &[pending]);
    assert_eq!(
        recs(&out),
        [&b"42 apples sold at store 7"[..], b"second line"]
    );
}

#[test]
fn decide_now_leaves_a_bare_header_or_a_partial_frame_without_lf_undecided() {
    for pending in [&b"1234"[..], b"42 apples sold", b""] {
        let mut f = framer(Framing::Auto, 100, Oversize::Truncate);
        assert_eq!(f.decide_now(pending), Detected::Undecided, "{pending:?}");
        assert_eq!(f.stats().auto_fallbacks, 0);
    }
}

#[test]
fn octet_frame_ending_in_lf_or_crlf_is_stored_without_it_and_an_inner_lf_stays() {
    let mut f = framer(Framing::Octet, 100, Oversize::Truncate);
    let out = run(&mut f, &[b"4 ab\n\n5 a\nb\r\n1 \n2 \r\n2 \n\n"]);
    assert_eq!(recs(&out), [&b"ab\n"[..], b"a\nb", b"\n"]);
    assert_eq!(
        f.stats().empty_lines,
        2,
        "frames left empty are skipped, counted"
    );
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
