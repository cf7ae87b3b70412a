use super::*;

#[test]
fn superblock_round_trips_and_rejects_a_flipped_bit() {
    let sbk = Superblock {
        version: VERSION,
        capacity: 1 << 30,
        max_record: 1 << 20,
        created_ns: 42,
        name: "zia-web".into(),
    };
    let mut page = vec![0u8; PAGE as usize];
    sbk.write(&mut page);
    assert_eq!(Superblock::parse(&page), Ok(sbk));
    page[30] ^= 4;
    assert_eq!(Superblock::parse(&page), Err(SuperblockError::Crc));
    page[0] = b'{';
    assert_eq!(Superblock::parse(&page), Err(SuperblockError::Magic));
}

#[test]
fn record_header_round_trips_and_detects_damage() {
    let h = RecordHeader {
        len: 1000,
        kind: KIND_DATA,
        flags: FLAG_TRUNCATED,
        seq: u64::MAX - 3,
        ts: 1_700_000_000_000_000_000,
        tail: 4096,
        run: 7,
        pcrc: 0xdead_beef,
        count: 0,
    };
    let mut b = [0u8; RECORD_HEADER as usize];
    h.write(&mut b);
    assert_eq!(RecordHeader::parse(&b), Some(h));
    for bit in 0..(RECORD_HEADER as usize * 8) {
        let mut d = b;
        d[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(RecordHeader::parse(&d), None, "bit {bit} flip undetected");
    }
}

#[test]
fn lines_headers_need_a_count_and_room_for_their_lfs() {
    let lines = RecordHeader {
        len: 10,
        kind: KIND_DATA,
        flags: FLAG_LINES,
        seq: 5,
        ts: 1,
        tail: 0,
        run: 1,
        pcrc: 0,
        count: 3,
    };
    let parse = |h: RecordHeader| {
        let mut b = [0u8; RECORD_HEADER as usize];
        h.write(&mut b);
        RecordHeader::parse(&b)
    };
    assert_eq!(parse(lines).map(|h| h.records()), Some(3));
    assert_eq!(parse(RecordHeader { count: 0, ..lines }), None);
    assert_eq!(parse(RecordHeader { count: 11, ..lines }), None);
    let truncated = RecordHeader {
        flags: FLAG_LINES | FLAG_TRUNCATED,
        ..lines
    };
    assert_eq!(parse(truncated), None);
    // A plain entry holds one record and no count (version 1 wrote 0 there).
    let plain = RecordHeader {
        flags: 0,
        count: 0,
        ..lines
    };
    assert_eq!(parse(plain).map(|h| h.records()), Some(1));
    assert_eq!(parse(RecordHeader { count: 1, ..plain }), None);
    // Chunked (version 3): lines entries only; the chunk table follows the body.
    let chunked = RecordHeader {
        len: 10_000,
        flags: FLAG_LINES | FLAG_CHUNKED,
        ..lines
    };
    let h = parse(chunked).expect("a chunked lines entry");
    assert!(h.is_chunked());
    assert_eq!(h.extent(), 10_000 + 3 * CHUNK_ENTRY);
    assert_eq!(h.stride(), record_stride(10_024));
    let plain_chunked = RecordHeader {
        flags: FLAG_CHUNKED,
        ..plain
    };
    assert_eq!(parse(plain_chunked), None);
}

#[test]
fn count_lfs_counts_every_lf_at_every_length_and_density() {
    for len in [0, 1, 31, 32, 33, 4096, 8160, 8161, 20_000] {
        for every in [1, 2, 7, 100, 5000] {
            let b: Vec<u8> = (0..len)
                .map(|i| if i % every == 0 { b'\n' } else { b'x' })
                .collect();
            let want = b.iter().filter(|&&c| c == b'\n').count() as u32;
            assert_eq!(count_lfs(&b), want, "len {len} every {every}");
        }
    }
}

#[test]
fn the_longest_chunked_body_that_fits_fits_and_one_more_byte_does_not() {
    for bytes in [0, 7, 8, 9, 4103, 4104, 4105, 4112, 4113, 262_096, 1 << 20] {
        let body = chunked_body_fitting(bytes);
        assert!(body + chunk_table_len(body) <= bytes, "{bytes}");
        assert!(body + 1 + chunk_table_len(body + 1) > bytes, "{bytes}");
    }
}

#[test]
fn meta_round_trips_with_cursors() {
    let mut m = Meta {
        generation: 9,
        run: 3,
        epoch: 2,
        tail: Pos::at(64, 10),
        head: Pos::at(4096, 20),
        last_ts: 5,
        checkpoint_ns: 6,
        evicted: 7,
        ..Meta::default()
    };
    m.cursors[3].name[..4].copy_from_slice(b"siem");
    m.cursors[3].pos = Pos::at(128, 12);
    m.cursors[3].lost = 9;
    m.cursors[3].state = CursorState {
        down_since_ns: 11,
        overrun_base: 4,
        overrun_after_ns: 12,
        down_alerted: true,
        overrun_alerted: false,
    };
    let mut page = vec![0u8; PAGE as usize];
    m.write(&mut page);
    let back = Meta::parse(&page, 1 << 20).expect("valid slot");
    assert_eq!(back, m);
    assert_eq!(back.cursors[3].name_str(), "siem");
    page[200] ^= 1;
    assert_eq!(Meta::parse(&page, 1 << 20), None);
}

#[test]
fn cursor_state_table_of_another_generation_or_damaged_reads_as_nothing_to_report() {
    let mut m = Meta {
        generation: 5,
        ..Meta::default()
    };
    m.cursors[0].name[..1].copy_from_slice(b"a");
    m.cursors[0].lost = 30;
    m.cursors[0].state = CursorState {
        down_since_ns: 1,
        overrun_base: 10,
        overrun_after_ns: 0,
        down_alerted: true,
        overrun_alerted: true,
    };
    let quiet = CursorState {
        overrun_base: 30,
        ..CursorState::default()
    };
    let mut page = vec![0u8; PAGE as usize];
    m.write(&mut page);
    // A writer that knows only the main part rewrote the slot as generation 7.
    let mut older = m.clone();
    older.generation = 7;
    let mut other = vec![0u8; PAGE as usize];
    older.write(&mut other);
    page[..meta::CRC + 4].copy_from_slice(&other[..meta::CRC + 4]);
    let back = Meta::parse(&page, 1 << 20).expect("main part valid");
    assert_eq!(back.cursors[0].state, quiet);
    // A damaged table.
    m.write(&mut page);
    page[meta::STATES + 3] ^= 1;
    let back = Meta::parse(&page, 1 << 20).expect("main part valid");
    assert_eq!(back.cursors[0].state, quiet);
    // A slot written before the table existed (zeros there).
    m.write(&mut page);
    page[meta::CRC + 4..meta::LEN].fill(0);
    let back = Meta::parse(&page, 1 << 20).expect("main part valid");
    assert_eq!(back.cursors[0].state, quiet);
}

/// A slot whose main part checks out but counts more run starts than the table holds (a
/// forged or foreign file; no writer does it) is no slot: it used to be read past the
/// table's end, a panic on hostile bytes.
#[test]
fn a_slot_counting_more_run_starts_than_the_table_holds_is_no_slot() {
    let m = Meta {
        generation: 3,
        run: 2,
        ..Meta::default()
    };
    let mut page = vec![0u8; PAGE as usize];
    m.write(&mut page);
    for more in [meta::MORE_RUN_STARTS as u32 + 1, u32::MAX] {
        page[meta::MORE..meta::MORE + 4].copy_from_slice(&more.to_le_bytes());
        let crc = crc32fast::hash(&page[..meta::CRC]);
        page[meta::CRC..meta::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Meta::parse(&page, 1 << 20), None, "more = {more}");
    }
}

#[test]
fn meta_round_trips_with_more_run_starts_than_the_main_part_holds_and_a_torn_table_is_no_slot() {
    let mut m = Meta {
        generation: 12,
        run: 40,
        head: Pos::at(0, 1000),
        ..Meta::default()
    };
    m.run_starts = (0..10)
        .map(|i| (40 - i, 1000 - 10 * u64::from(i)))
        .collect();
    let mut page = vec![0u8; PAGE as usize];
    m.write(&mut page);
    assert_eq!(u32_at(&page, meta::MORE), 6);
    assert_eq!(Meta::parse(&page, 1 << 20), Some(m.clone()));
    // Torn: the main part new, the table's sectors as an older generation left them.
    let mut older = m.clone();
    older.generation = 10;
    let mut torn = vec![0u8; PAGE as usize];
    older.write(&mut torn);
    torn[..1536].copy_from_slice(&page[..1536]);
    assert_eq!(Meta::parse(&torn, 1 << 20), None, "run starts lost");
    page[meta::MORE_RUN_STARTS_AT + 5] ^= 1;
    assert_eq!(Meta::parse(&page, 1 << 20), None, "a damaged table");
    // Four or fewer: the table is not read, whatever it holds.
    m.run_starts.truncate(4);
    m.write(&mut page);
    assert_eq!(u32_at(&page, meta::MORE), 0);
    page[meta::MORE_GENERATION..meta::LEN].fill(0xA5);
    assert_eq!(Meta::parse(&page, 1 << 20), Some(m));
}

#[test]
fn run_starts_are_kept_while_a_reader_may_need_them_and_only_then() {
    let mut m = Meta {
        tail: Pos::at(0, 100),
        head: Pos::at(0, 500),
        ..Meta::default()
    };
    m.run_starts =
        heapless::Vec::from_slice(&[(5, 400), (4, 300), (3, 200), (2, 50), (1, 0)]).unwrap();
    m.start_run(6);
    // (2, 50) guards records from 50 up to 200, some of them from the tail on: kept; (1, 0)
    // guards records below 50, all of them evicted: dropped.
    assert_eq!(
        m.run_starts,
        [(6, 500), (5, 400), (4, 300), (3, 200), (2, 50)]
    );
    // A recovery that went back past earlier starts covers them.
    m.head.seq = 250;
    m.start_run(7);
    assert_eq!(m.run_starts, [(7, 250), (3, 200), (2, 50)]);
    // The tail passes 200: (2, 50) no longer guards a record.
    m.tail.seq = 200;
    m.prune_run_starts();
    assert_eq!(m.run_starts, [(7, 250), (3, 200)]);
    // However many runs follow, each with records of its own, every start stays; beyond
    // RUN_STARTS the oldest goes.
    for run in 8..8 + RUN_STARTS as u32 {
        m.head.seq += 1;
        m.start_run(run);
    }
    assert_eq!(m.run_starts.len(), RUN_STARTS);
    assert_eq!(
        m.run_starts[0],
        (7 + RUN_STARTS as u32, 250 + RUN_STARTS as u64)
    );
    assert_eq!(m.run_starts[RUN_STARTS - 1], (8, 251));
}

#[test]
fn stride_is_aligned_and_includes_the_header() {
    assert_eq!(record_stride(0), 48);
    assert_eq!(record_stride(1), 56);
    assert_eq!(record_stride(8), 56);
    assert_eq!(record_stride(1024), 1072);
}
