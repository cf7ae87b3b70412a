//! Choosing a record's partition from its key, as Kafka's Java producer does.
//!
//! Kafka's default partitioner sends a keyed record to partition
//! `toPositive(murmur2(key)) % partitions`, where `murmur2` is Apache Kafka's
//! `org.apache.kafka.common.utils.Utils.murmur2`: 32-bit MurmurHash2 with seed `0x9747b28c`,
//! reading the key as little-endian 4-byte words, the tail mixed in as MurmurHash2 does, and
//! `toPositive` is `hash & 0x7fffffff` (not `abs`, which overflows on `i32::MIN`). Using the same
//! function keeps a key on the partition every other Kafka client picks, so a consumer that
//! relies on per-key order sees our records in the same partition as the rest.
//!
//! See the producer configuration `partitioner.class` in
//! <https://kafka.apache.org/documentation/#producerconfigs> and `Utils.murmur2` in
//! <https://github.com/apache/kafka/blob/trunk/clients/src/main/java/org/apache/kafka/common/utils/Utils.java>.

/// The seed of Kafka's `Utils.murmur2`.
const SEED: u32 = 0x9747_b28c;
/// MurmurHash2's multiplier.
const M: u32 = 0x5bd1_e995;
/// MurmurHash2's shift.
const R: u32 = 24;

/// Kafka's `Utils.murmur2` of `data`: the same `int` the Java client computes, bit for bit.
pub fn murmur2(data: &[u8]) -> i32 {
    // Java computes in `int` with wrapping arithmetic and `>>>`: u32 with wrapping_mul is the
    // same bits. The length is an `int` in Java: keys are far below 2 GiB.
    let mut h = SEED ^ data.len() as u32;
    let mut words = data.chunks_exact(4);
    for word in &mut words {
        let mut k = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = words.remainder();
    // Java's `switch` falls through from 3 to 2 to 1.
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner gives a record with `key`:
/// `(murmur2(key) & 0x7fffffff) % partitions`. `partitions` must not be 0 (a topic has at
/// least one partition; the caller takes the count from the metadata).
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) as u32 % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_utils_test_vectors() {
        // Apache Kafka's clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java,
        // `testMurmur2`: every tail length (0 to 3 bytes) is covered.
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
            ("string-f-24-chars-length", 124_730_809),
            ("string-fo-25-chars-length", 1_269_511_650),
            ("string-foo-26-chars-length", 119_165_628),
            ("string-last-27-chars-length", 1_089_971_754),
        ];
        for &(key, expected) in cases {
            assert_eq!(murmur2(key.as_bytes()), expected, "murmur2({key:?})");
        }
    }

    #[test]
    fn murmur2_matches_java_for_short_numeric_keys() {
        // Single-tail keys as the Java client hashes them (the values other Kafka clients test
        // against Utils.murmur2).
        for (key, expected) in [
            ("1", -1_993_445_489),
            ("12", 126_087_238),
            ("123", -267_702_483),
            ("1234", -1_614_185_708),
            ("12345", -1_188_365_604),
        ] {
            assert_eq!(murmur2(key.as_bytes()), expected, "murmur2({key:?})");
        }
    }

    #[test]
    fn partition_for_key_masks_the_sign_bit_then_takes_the_remainder() {
        // murmur2("21") is negative: masking, not abs, as Java's Utils.toPositive.
        let positive = (-973_932_308i32 & 0x7fff_ffff) as u32;
        assert_eq!(partition_for_key(b"21", 7), positive % 7);
        assert_eq!(partition_for_key(b"abc", 10), 479_470_107 % 10);
        assert_eq!(partition_for_key(b"anything", 1), 0);
    }

    #[test]
    fn partition_for_key_stays_below_the_partition_count() {
        for i in 0..1000u32 {
            let key = i.to_string();
            assert!(partition_for_key(key.as_bytes(), 12) < 12);
        }
    }
}
