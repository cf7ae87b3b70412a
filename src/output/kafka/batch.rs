//! A Kafka v2 record batch (magic 2), encoded by hand into buffers kept from batch to batch.
//!
//! The format is "Record Batch" in <https://kafka.apache.org/documentation/#recordbatch>. All
//! integers are big-endian; varints are zigzag LEB128 (protobuf's `sint32`/`sint64`).
//!
//! ```text
//! offset  size  field
//!      0     8  baseOffset            0: the broker assigns the offsets
//!      8     4  batchLength           bytes after this field
//!     12     4  partitionLeaderEpoch  -1 (a producer does not know it)
//!     16     1  magic                 2
//!     17     4  crc                   CRC-32C (Castagnoli) of bytes 21 to the end
//!     21     2  attributes            bits 0-2 codec (0 none, 1 gzip), bit 3 timestamp type
//!                                     (0 CreateTime), bit 4 transactional, bit 5 control: 0
//!     23     4  lastOffsetDelta       records - 1
//!     27     8  baseTimestamp         the first record's timestamp (ms since the epoch)
//!     35     8  maxTimestamp          the largest record timestamp
//!     43     8  producerId            } idempotence: the broker drops a batch whose
//!     51     2  producerEpoch         } sequence it has already written for this
//!     53     4  baseSequence          } producer id and epoch (-1, -1, -1 without)
//!     57     4  recordCount
//!     61        records               with gzip: all records as one gzip stream
//! ```
//!
//! Each record (no headers, attributes 0):
//!
//! ```text
//! length varint | attributes i8 | timestampDelta varlong | offsetDelta varint |
//! keyLength varint (-1: null) | key | valueLength varint | value | headersCount varint (0)
//! ```
//!
//! `length` counts the bytes after itself. `timestampDelta` is relative to `baseTimestamp` and
//! may be negative: records are in arrival order and senders' clocks disagree.
//!
//! ## Allocation
//! kafka-protocol's `RecordBatchEncoder` wants `Record` values (a `Bytes` key and value, an
//! `IndexMap` of headers) and compresses through fresh buffers: per record and per batch
//! allocations on the data path. [`BatchWriter`] writes records straight into one buffer of
//! `max_batch_bytes`, allocated in [`BatchWriter::new`]. With gzip, the compressor's state
//! (miniz_oxide, about 344 KiB, see `memory::GZIP_STATE`) and a second buffer for the
//! compressed batch are allocated at the first gzip batch and kept: a writer that never
//! compresses does not pay for them. Nothing grows unless a batch is larger than
//! `max_batch_bytes`, which happens only when a single record is (the caller stops a batch
//! before the limit with [`BatchWriter::record_len`]).
//!
//! gzip is raw deflate (flate2's `Compress`, which can be reset and reused) wrapped in the
//! 10-byte gzip header and 8-byte trailer (CRC-32 and size) of RFC 1952, written here:
//! flate2's `GzEncoder` allocates a new compressor for every stream.

use std::io;

use flate2::{Compress, FlushCompress, Status};

/// The codec of a batch's records (the low three bits of `attributes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Records as they are (codec 0).
    None,
    /// Records as one gzip stream (codec 1), at flate2's fast level as the HTTP output.
    Gzip,
}

impl Compression {
    /// The codec bits of `attributes`.
    fn attributes(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
        }
    }
}

/// The idempotent producer's fields of a batch: the broker writes a batch at most once per
/// `(id, epoch, base_sequence)`. `Producer::NONE` for a producer without idempotence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Producer {
    /// The producer id from InitProducerId, or -1.
    pub id: i64,
    /// The producer epoch from InitProducerId, or -1.
    pub epoch: i16,
    /// The sequence number of the batch's first record (per partition), or -1.
    pub base_sequence: i32,
}

impl Producer {
    /// No idempotence: the broker checks no sequence.
    pub const NONE: Producer = Producer {
        id: -1,
        epoch: -1,
        base_sequence: -1,
    };
}

/// Byte ranges of the batch header (see the module documentation).
mod field {
    use std::ops::Range;

    pub const BASE_OFFSET: Range<usize> = 0..8;
    pub const BATCH_LENGTH: Range<usize> = 8..12;
    pub const PARTITION_LEADER_EPOCH: Range<usize> = 12..16;
    pub const MAGIC: usize = 16;
    pub const CRC: Range<usize> = 17..21;
    pub const ATTRIBUTES: Range<usize> = 21..23;
    pub const LAST_OFFSET_DELTA: Range<usize> = 23..27;
    pub const BASE_TIMESTAMP: Range<usize> = 27..35;
    pub const MAX_TIMESTAMP: Range<usize> = 35..43;
    pub const PRODUCER_ID: Range<usize> = 43..51;
    pub const PRODUCER_EPOCH: Range<usize> = 51..53;
    pub const BASE_SEQUENCE: Range<usize> = 53..57;
    pub const RECORD_COUNT: Range<usize> = 57..61;
    /// Where the records start: the header's length.
    pub const RECORDS: usize = 61;
    /// Where the CRC's coverage starts.
    pub const CRC_START: usize = ATTRIBUTES.start;
}

/// The batch header's length: a batch is this plus its records.
pub const HEADER_LEN: usize = field::RECORDS;

/// The gzip header of RFC 1952: magic, deflate, no flags, no time, no extra flags, unknown OS.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// The gzip trailer's length: CRC-32 and size of the uncompressed data, little-endian.
const GZIP_TRAILER_LEN: usize = 8;

/// The compressed batch's most bytes for `max_batch_bytes` uncompressed: deflate at its worst
/// (zlib's conservative `deflateBound`: an eighth and a sixty-fourth more, stored blocks of
/// incompressible data) plus the gzip header and trailer.
pub fn gzip_bound(max_batch_bytes: usize) -> usize {
    max_batch_bytes
        + max_batch_bytes / 8
        + max_batch_bytes / 64
        + 16
        + GZIP_HEADER.len()
        + GZIP_TRAILER_LEN
}

/// A gzip compressor and the buffer the compressed batch goes to, kept from batch to batch.
struct Gzip {
    /// Raw deflate (no zlib header), reset for each batch.
    deflate: Compress,
    /// The compressed batch: header, gzip header, deflate stream, gzip trailer.
    out: Vec<u8>,
}

/// Encodes one v2 record batch into buffers it keeps (the record buffer allocated once in
/// [`new`](BatchWriter::new), the gzip state at the first gzip batch), never grown past their
/// capacity on the data path unless a single record is larger than `max_batch_bytes`.
///
/// Use: [`begin`](BatchWriter::begin), [`push`](BatchWriter::push) while
/// `len() + record_len(..) <= max_batch_bytes`, [`finish`](BatchWriter::finish), send the bytes.
pub struct BatchWriter {
    /// Header (filled by `finish`) and the uncompressed records.
    buf: Vec<u8>,
    /// The batch size the buffers are sized for.
    max_batch_bytes: usize,
    /// Compressor and output buffer, from the first gzip batch on.
    gzip: Option<Gzip>,
    /// This batch's producer fields.
    producer: Producer,
    /// This batch's codec.
    compression: Compression,
    /// Records pushed since `begin`.
    records: u32,
    /// The first record's timestamp.
    base_timestamp: i64,
    /// The largest record timestamp.
    max_timestamp: i64,
}

impl std::fmt::Debug for BatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchWriter")
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("producer", &self.producer)
            .field("compression", &self.compression)
            .field("records", &self.records)
            .field("len", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl BatchWriter {
    /// A writer for batches of at most `max_batch_bytes` (uncompressed, header included; at
    /// least [`HEADER_LEN`]), with its record buffer allocated. Starts an empty batch without
    /// producer id or compression.
    pub fn new(max_batch_bytes: usize) -> BatchWriter {
        let max_batch_bytes = max_batch_bytes.max(HEADER_LEN);
        let mut buf = Vec::with_capacity(max_batch_bytes);
        buf.resize(HEADER_LEN, 0);
        BatchWriter {
            buf,
            max_batch_bytes,
            gzip: None,
            producer: Producer::NONE,
            compression: Compression::None,
            records: 0,
            base_timestamp: 0,
            max_timestamp: 0,
        }
    }

    /// Starts a batch: forgets the previous one. The first gzip batch allocates the
    /// compressor and its output buffer, kept for the next ones.
    pub fn begin(&mut self, producer: Producer, compression: Compression) {
        self.buf.clear();
        // Not given back after a lend (a bug): a new buffer, as `new` makes.
        self.buf.reserve(self.max_batch_bytes);
        self.buf.resize(HEADER_LEN, 0);
        self.producer = producer;
        self.compression = compression;
        self.records = 0;
        self.base_timestamp = 0;
        self.max_timestamp = 0;
        if compression == Compression::Gzip && self.gzip.is_none() {
            self.gzip = Some(Gzip {
                deflate: Compress::new(flate2::Compression::fast(), false),
                out: Vec::with_capacity(gzip_bound(self.max_batch_bytes)),
            });
        }
    }

    /// Bytes [`push`](BatchWriter::push) would add for a record (exact, uncompressed), so the
    /// caller can stop before `max_batch_bytes`.
    pub fn record_len(&self, key: Option<&[u8]>, value: &[u8], timestamp_ms: i64) -> usize {
        let body = body_len(key, value, self.timestamp_delta(timestamp_ms), self.records);
        varint_len(body as i64) + body
    }

    /// Appends one record (attributes 0, no headers). The first record's timestamp is the base
    /// timestamp; later ones may be earlier (a negative delta).
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp_ms: i64) {
        let delta = self.timestamp_delta(timestamp_ms);
        if self.records == 0 {
            self.base_timestamp = timestamp_ms;
            self.max_timestamp = timestamp_ms;
        } else {
            self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        }
        let body = body_len(key, value, delta, self.records);
        let buf = &mut self.buf;
        put_varint(buf, body as i64);
        buf.push(0); // attributes
        put_varint(buf, delta);
        put_varint(buf, i64::from(self.records));
        match key {
            Some(key) => {
                put_varint(buf, key.len() as i64);
                buf.extend_from_slice(key);
            }
            None => put_varint(buf, -1),
        }
        put_varint(buf, value.len() as i64);
        buf.extend_from_slice(value);
        put_varint(buf, 0); // headers
        self.records += 1;
    }

    /// Records pushed since [`begin`](BatchWriter::begin).
    pub fn records(&self) -> u32 {
        self.records
    }

    /// Bytes of the batch so far, uncompressed, header included ([`HEADER_LEN`] + records).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the batch has no records yet.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Completes the batch (header, compression, CRC-32C) and returns its bytes: ready to go
    /// into a ProduceRequest's `records` field. Errors only if gzip fails. A batch needs at
    /// least one record for a broker to take it (an empty one has `lastOffsetDelta` -1).
    /// Calling it again returns the same bytes; `push` after `finish` is a caller's bug.
    pub fn finish(&mut self) -> io::Result<&[u8]> {
        self.write_header();
        match (self.compression, &mut self.gzip) {
            (Compression::Gzip, Some(gzip)) => {
                gzip.out.clear();
                gzip.out.extend_from_slice(&self.buf[..HEADER_LEN]);
                gzip.out.extend_from_slice(&GZIP_HEADER);
                let records = &self.buf[HEADER_LEN..];
                deflate(&mut gzip.deflate, records, &mut gzip.out)?;
                gzip.out
                    .extend_from_slice(&crc32fast::hash(records).to_le_bytes());
                // ISIZE is the size modulo 2^32 (RFC 1952).
                gzip.out
                    .extend_from_slice(&(records.len() as u32).to_le_bytes());
                seal(&mut gzip.out);
                Ok(&gzip.out)
            }
            (Compression::Gzip, None) => Err(io::Error::other(
                "gzip batch without a compressor: begin was not called (a bug)",
            )),
            (Compression::None, _) => {
                seal(&mut self.buf);
                Ok(&self.buf)
            }
        }
    }

    /// Lends the finished batch's buffer (after [`finish`](BatchWriter::finish), which it
    /// holds from its start) to a request without a copy; [`restore`](BatchWriter::restore)
    /// gives it back. A batch begun without it back allocates a new one.
    pub fn lend(&mut self) -> Vec<u8> {
        match (self.compression, &mut self.gzip) {
            (Compression::Gzip, Some(gzip)) => std::mem::take(&mut gzip.out),
            _ => std::mem::take(&mut self.buf),
        }
    }

    /// Takes back the buffer [`lend`](BatchWriter::lend) lent (what it holds is dropped).
    pub fn restore(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        match (self.compression, &mut self.gzip) {
            (Compression::Gzip, Some(gzip)) => gzip.out = buf,
            _ => self.buf = buf,
        }
    }

    /// The timestamp delta of a record at `timestamp_ms` (0 for the batch's first record).
    /// Wrapping: a clock decades off must not panic the relay (the broker may refuse it).
    fn timestamp_delta(&self, timestamp_ms: i64) -> i64 {
        if self.records == 0 {
            0
        } else {
            timestamp_ms.wrapping_sub(self.base_timestamp)
        }
    }

    /// Writes every header field but `batchLength` and `crc` (which depend on compression).
    fn write_header(&mut self) {
        let h = &mut self.buf[..HEADER_LEN];
        h[field::BASE_OFFSET].copy_from_slice(&0i64.to_be_bytes());
        h[field::PARTITION_LEADER_EPOCH].copy_from_slice(&(-1i32).to_be_bytes());
        h[field::MAGIC] = 2;
        h[field::ATTRIBUTES].copy_from_slice(&self.compression.attributes().to_be_bytes());
        let last_offset_delta = self.records as i32 - 1;
        h[field::LAST_OFFSET_DELTA].copy_from_slice(&last_offset_delta.to_be_bytes());
        h[field::BASE_TIMESTAMP].copy_from_slice(&self.base_timestamp.to_be_bytes());
        h[field::MAX_TIMESTAMP].copy_from_slice(&self.max_timestamp.to_be_bytes());
        h[field::PRODUCER_ID].copy_from_slice(&self.producer.id.to_be_bytes());
        h[field::PRODUCER_EPOCH].copy_from_slice(&self.producer.epoch.to_be_bytes());
        h[field::BASE_SEQUENCE].copy_from_slice(&self.producer.base_sequence.to_be_bytes());
        h[field::RECORD_COUNT].copy_from_slice(&(self.records as i32).to_be_bytes());
    }
}

/// Fills in `batchLength` and `crc` of a complete batch.
fn seal(batch: &mut [u8]) {
    let batch_length = (batch.len() - field::PARTITION_LEADER_EPOCH.start) as i32;
    batch[field::BATCH_LENGTH].copy_from_slice(&batch_length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[field::CRC_START..]);
    batch[field::CRC].copy_from_slice(&crc.to_be_bytes());
}

/// Appends `input` to `out` as one complete raw deflate stream, growing `out` only when its
/// spare capacity is used up (a batch past `max_batch_bytes`).
fn deflate(compress: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    compress.reset();
    loop {
        let (consumed_before, written_before) = (compress.total_in(), compress.total_out());
        let consumed = consumed_before as usize;
        let status = compress
            .compress_vec(&input[consumed..], out, FlushCompress::Finish)
            .map_err(io::Error::other)?;
        if status == Status::StreamEnd {
            return Ok(());
        }
        let stuck =
            compress.total_in() == consumed_before && compress.total_out() == written_before;
        if out.len() == out.capacity() || stuck {
            // More than the bound: only a batch past max_batch_bytes gets here.
            out.reserve(4096.max(input.len() - compress.total_in() as usize));
        }
    }
}

/// The length of a record after its `length` varint.
fn body_len(key: Option<&[u8]>, value: &[u8], timestamp_delta: i64, offset_delta: u32) -> usize {
    let key_len = match key {
        Some(key) => varint_len(key.len() as i64) + key.len(),
        None => varint_len(-1),
    };
    1 // attributes
        + varint_len(timestamp_delta)
        + varint_len(i64::from(offset_delta))
        + key_len
        + varint_len(value.len() as i64)
        + value.len()
        + 1 // headers count 0
}

/// Zigzag: small magnitudes, negative or not, become small unsigned numbers. For a value that
/// fits in an `i32`, the same as Kafka's 32-bit varint zigzag, so one function serves both.
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Bytes of `v` as a zigzag LEB128 varint (1 to 10).
fn varint_len(v: i64) -> usize {
    let bits = 64 - zigzag(v).leading_zeros() as usize;
    bits.div_ceil(7).max(1)
}

/// Appends `v` as a zigzag LEB128 varint.
fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut u = zigzag(v);
    while u >= 0x80 {
        out.push(u as u8 | 0x80);
        u >>= 7;
    }
    out.push(u as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::records::{self as kp, RecordBatchDecoder};
    use proptest::prelude::*;
    use std::io::Read;

    /// One record as the tests give it.
    #[derive(Clone, Debug)]
    struct In {
        key: Option<Vec<u8>>,
        value: Vec<u8>,
        timestamp: i64,
    }

    fn arb_record() -> impl Strategy<Value = In> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            prop_oneof![
                Just(Vec::new()),
                proptest::collection::vec(any::<u8>(), 0..2000),
                // Compressible: log lines repeat.
                (0usize..2000).prop_map(|n| b"src=10.0.0.1 act=allow ".repeat(n / 23)),
            ],
            // 1970 to about 2100, in any order: clocks go backwards within a batch too.
            0i64..4_102_444_800_000,
        )
            .prop_map(|(key, value, timestamp)| In {
                key,
                value,
                timestamp,
            })
    }

    fn arb_producer() -> impl Strategy<Value = Producer> {
        prop_oneof![
            Just(Producer::NONE),
            (0i64..i64::MAX, 0i16..i16::MAX, 0i32..i32::MAX).prop_map(|(id, epoch, seq)| {
                Producer {
                    id,
                    epoch,
                    base_sequence: seq,
                }
            }),
        ]
    }

    fn arb_compression() -> impl Strategy<Value = Compression> {
        prop_oneof![Just(Compression::None), Just(Compression::Gzip)]
    }

    fn encode(
        writer: &mut BatchWriter,
        producer: Producer,
        compression: Compression,
        records: &[In],
    ) -> Vec<u8> {
        writer.begin(producer, compression);
        for r in records {
            writer.push(r.key.as_deref(), &r.value, r.timestamp);
        }
        writer.finish().expect("gzip").to_vec()
    }

    fn be<const N: usize>(batch: &[u8], range: std::ops::Range<usize>) -> [u8; N] {
        batch[range].try_into().expect("field width")
    }

    /// Reads a zigzag varint, strictly: what Java's `ByteUtils.readVarlong` accepts.
    fn read_varint(buf: &mut &[u8]) -> i64 {
        let mut u = 0u64;
        for shift in (0..70).step_by(7) {
            let (&b, rest) = buf.split_first().expect("varint truncated");
            *buf = rest;
            u |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return (u >> 1) as i64 ^ -((u & 1) as i64);
            }
        }
        panic!("varint longer than 10 bytes");
    }

    /// Checks what kafka-protocol's decoder does not: batchLength, lastOffsetDelta,
    /// maxTimestamp, the attributes, and each record's `length` against its fields, with no
    /// byte left over (the decoder reads `recordCount` records and ignores the rest).
    fn check_strictly(batch: &[u8], compression: Compression, records: &[In]) {
        let n = records.len();
        assert_eq!(
            i32::from_be_bytes(be(batch, field::BATCH_LENGTH)) as usize,
            batch.len() - 12
        );
        assert_eq!(
            i16::from_be_bytes(be(batch, field::ATTRIBUTES)),
            compression.attributes()
        );
        assert_eq!(
            i32::from_be_bytes(be(batch, field::LAST_OFFSET_DELTA)),
            n as i32 - 1
        );
        let max = records.iter().map(|r| r.timestamp).max().unwrap_or(0);
        assert_eq!(i64::from_be_bytes(be(batch, field::MAX_TIMESTAMP)), max);
        assert_eq!(
            u32::from_be_bytes(be(batch, field::CRC)),
            crc32c::crc32c(&batch[field::CRC_START..])
        );
        let mut plain = Vec::new();
        let mut rest: &[u8] = match compression {
            Compression::None => &batch[HEADER_LEN..],
            Compression::Gzip => {
                flate2::read::GzDecoder::new(&batch[HEADER_LEN..])
                    .read_to_end(&mut plain)
                    .expect("gunzip");
                &plain
            }
        };
        for (i, r) in records.iter().enumerate() {
            let length = read_varint(&mut rest) as usize;
            let (mut body, after) = rest.split_at(length);
            rest = after;
            assert_eq!(body[0], 0, "record attributes");
            body = &body[1..];
            let delta = read_varint(&mut body);
            assert_eq!(delta, r.timestamp - records[0].timestamp);
            assert_eq!(read_varint(&mut body), i as i64);
            let key_len = read_varint(&mut body);
            match &r.key {
                None => assert_eq!(key_len, -1),
                Some(k) => {
                    assert_eq!(&body[..key_len as usize], &k[..]);
                    body = &body[key_len as usize..];
                }
            }
            let value_len = read_varint(&mut body) as usize;
            assert_eq!(&body[..value_len], &r.value[..]);
            body = &body[value_len..];
            assert_eq!(read_varint(&mut body), 0, "headers");
            assert!(
                body.is_empty(),
                "record {i}: length covers more than its fields"
            );
        }
        assert!(rest.is_empty(), "bytes after the last record");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn batches_decode_with_kafka_protocol_to_the_records_pushed(
            records in proptest::collection::vec(arb_record(), 1..40),
            producer in arb_producer(),
            compression in arb_compression(),
        ) {
            let mut writer = BatchWriter::new(1 << 20);
            let batch = encode(&mut writer, producer, compression, &records);
            check_strictly(&batch, compression, &records);

            // The decoder checks the CRC-32C itself ("Cyclic redundancy check failed").
            let mut bytes = Bytes::from(batch);
            let set = RecordBatchDecoder::decode(&mut bytes).expect("decode");
            prop_assert!(bytes.is_empty());
            prop_assert_eq!(set.version, 2);
            prop_assert_eq!(set.compression, match compression {
                Compression::None => kp::Compression::None,
                Compression::Gzip => kp::Compression::Gzip,
            });
            prop_assert_eq!(set.records.len(), records.len());
            for (i, (got, want)) in set.records.iter().zip(&records).enumerate() {
                prop_assert_eq!(got.offset, i as i64);
                prop_assert_eq!(got.timestamp, want.timestamp);
                prop_assert_eq!(got.timestamp_type, kp::TimestampType::Creation);
                prop_assert_eq!(got.key.as_deref(), want.key.as_deref());
                prop_assert_eq!(got.value.as_deref(), Some(&want.value[..]));
                prop_assert!(got.headers.is_empty());
                prop_assert!(!got.transactional && !got.control);
                prop_assert_eq!(got.producer_id, producer.id);
                prop_assert_eq!(got.producer_epoch, producer.epoch);
                prop_assert_eq!(got.sequence, producer.base_sequence.wrapping_add(i as i32));
                prop_assert_eq!(got.partition_leader_epoch, -1);
            }
        }

        #[test]
        fn record_len_sums_to_the_batch_length_past_the_header(
            records in proptest::collection::vec(arb_record(), 1..40),
        ) {
            let mut writer = BatchWriter::new(1 << 16);
            writer.begin(Producer::NONE, Compression::None);
            let mut sum = 0;
            for r in &records {
                let predicted = writer.record_len(r.key.as_deref(), &r.value, r.timestamp);
                let before = writer.len();
                writer.push(r.key.as_deref(), &r.value, r.timestamp);
                prop_assert_eq!(writer.len() - before, predicted);
                sum += predicted;
            }
            prop_assert_eq!(writer.len() - HEADER_LEN, sum);
            prop_assert_eq!(writer.records() as usize, records.len());
        }

        #[test]
        fn varints_are_zigzag_leb128_of_the_predicted_length(v in any::<i64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            let mut slice = &out[..];
            prop_assert_eq!(read_varint(&mut slice), v);
        }
    }

    #[test]
    fn varints_match_the_kafka_protocol_examples() {
        for (v, bytes) in [
            (0i64, &[0x00][..]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (i64::from(i32::MAX), &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i64::from(i32::MIN), &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, bytes, "{v}");
        }
    }

    #[test]
    fn timestamps_going_backwards_give_negative_deltas_and_the_max_timestamp() {
        let records = [
            In {
                key: None,
                value: b"b".to_vec(),
                timestamp: 2_000,
            },
            In {
                key: None,
                value: b"a".to_vec(),
                timestamp: 1_000,
            },
            In {
                key: Some(b"k".to_vec()),
                value: b"c".to_vec(),
                timestamp: 3_000,
            },
        ];
        let mut writer = BatchWriter::new(4096);
        let batch = encode(&mut writer, Producer::NONE, Compression::None, &records);
        check_strictly(&batch, Compression::None, &records);
        assert_eq!(i64::from_be_bytes(be(&batch, field::BASE_TIMESTAMP)), 2_000);
        assert_eq!(i64::from_be_bytes(be(&batch, field::MAX_TIMESTAMP)), 3_000);
        let set = RecordBatchDecoder::decode(&mut Bytes::from(batch)).expect("decode");
        let times: Vec<i64> = set.records.iter().map(|r| r.timestamp).collect();
        assert_eq!(times, [2_000, 1_000, 3_000]);
    }

    #[test]
    fn a_flipped_bit_fails_the_decoders_crc_check() {
        let records = [In {
            key: None,
            value: b"hello".to_vec(),
            timestamp: 1,
        }];
        let mut writer = BatchWriter::new(4096);
        let mut batch = encode(&mut writer, Producer::NONE, Compression::None, &records);
        let last = batch.len() - 2;
        batch[last] ^= 1;
        let err = RecordBatchDecoder::decode(&mut Bytes::from(batch)).expect_err("corrupt");
        assert!(
            err.to_string().contains("Cyclic redundancy check failed"),
            "{err}"
        );
    }

    #[test]
    fn begin_forgets_the_previous_batch() {
        let mut writer = BatchWriter::new(4096);
        let first = [In {
            key: None,
            value: b"one".to_vec(),
            timestamp: 5,
        }];
        encode(&mut writer, Producer::NONE, Compression::Gzip, &first);
        let second = [In {
            key: Some(b"k".to_vec()),
            value: b"two".to_vec(),
            timestamp: 9,
        }];
        let batch = encode(&mut writer, Producer::NONE, Compression::None, &second);
        check_strictly(&batch, Compression::None, &second);
        assert_eq!(writer.records(), 1);
    }

    /// Pointer and capacity of each buffer the writer keeps.
    fn buffers(writer: &BatchWriter) -> Vec<(*const u8, usize)> {
        let mut v = vec![(writer.buf.as_ptr(), writer.buf.capacity())];
        if let Some(gzip) = &writer.gzip {
            v.push((gzip.out.as_ptr(), gzip.out.capacity()));
        }
        v
    }

    /// xorshift64*: its top byte is incompressible for deflate.
    fn next(seed: &mut u64) -> u64 {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills a batch up to `max` with records of pseudo-random (incompressible) bytes.
    fn fill(writer: &mut BatchWriter, max: usize, seed: &mut u64) {
        loop {
            let len = (next(seed) % 1500) as usize;
            let value: Vec<u8> = (0..len).map(|_| (next(seed) >> 56) as u8).collect();
            let ts = 1_700_000_000_000 + (next(seed) % 10_000) as i64;
            if writer.len() + writer.record_len(None, &value, ts) > max {
                return;
            }
            writer.push(None, &value, ts);
        }
    }

    #[test]
    fn buffers_do_not_grow_for_batches_within_max_batch_bytes() {
        const MAX: usize = 64 << 10;
        let mut writer = BatchWriter::new(MAX);
        // The gzip state comes with the first gzip batch.
        writer.begin(Producer::NONE, Compression::Gzip);
        let kept = buffers(&writer);
        assert_eq!(kept.len(), 2);
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for round in 0..20 {
            let compression = if round % 2 == 0 {
                Compression::Gzip
            } else {
                Compression::None
            };
            writer.begin(Producer::NONE, compression);
            fill(&mut writer, MAX, &mut seed);
            assert!(writer.len() > MAX - 1600, "the batch is nearly full");
            let len = writer.finish().expect("gzip").len();
            if compression == Compression::Gzip {
                // Random bytes do not compress: the worst case of the bound.
                assert!(len > MAX - 1600, "{len}");
            }
            assert_eq!(buffers(&writer), kept, "round {round}");
        }
    }

    #[test]
    fn a_record_larger_than_max_batch_bytes_grows_the_buffers_and_still_encodes() {
        let mut writer = BatchWriter::new(256);
        let big = [In {
            key: None,
            value: vec![7; 10_000],
            timestamp: 3,
        }];
        for compression in [Compression::None, Compression::Gzip] {
            let batch = encode(&mut writer, Producer::NONE, compression, &big);
            check_strictly(&batch, compression, &big);
        }
    }

    #[test]
    fn the_header_carries_magic_2_and_no_leader_epoch() {
        let mut writer = BatchWriter::new(4096);
        let producer = Producer {
            id: 42,
            epoch: 3,
            base_sequence: 100,
        };
        let records = [In {
            key: None,
            value: b"x".to_vec(),
            timestamp: 7,
        }];
        let batch = encode(&mut writer, producer, Compression::None, &records);
        assert_eq!(i64::from_be_bytes(be(&batch, field::BASE_OFFSET)), 0);
        assert_eq!(
            i32::from_be_bytes(be(&batch, field::PARTITION_LEADER_EPOCH)),
            -1
        );
        assert_eq!(batch[field::MAGIC], 2);
        assert_eq!(i64::from_be_bytes(be(&batch, field::PRODUCER_ID)), 42);
        assert_eq!(i16::from_be_bytes(be(&batch, field::PRODUCER_EPOCH)), 3);
        assert_eq!(i32::from_be_bytes(be(&batch, field::BASE_SEQUENCE)), 100);
        assert_eq!(i32::from_be_bytes(be(&batch, field::RECORD_COUNT)), 1);
        assert_eq!(batch.len(), writer.len());
    }
}
