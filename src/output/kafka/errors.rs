//! What a Kafka error code means for the output: the verdict table.
//!
//! Every error code a broker may answer a Produce, Metadata or InitProducerId request with
//! maps to one [`Verdict`]. The crate's own "retriable" flag (Kafka's `RetriableException`
//! hierarchy) is not our verdict: an authorization error is not retriable in Kafka's sense, but
//! for a relay it is an outage to alert on and retry, never a reason to drop records.

/// What the output does with a partition's answer to a Produce request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The broker has the batch (0; or 46 DUPLICATE_SEQUENCE_NUMBER: it had it already).
    Delivered,
    /// The cluster changed or is busy (a leader moved, a replica lags, a timeout): reconnect
    /// with backoff, refresh the metadata and send the same batch again, with the same
    /// producer id, epoch and sequence (the broker drops it if it had it).
    Retry,
    /// The batch is too large or a record is refused for what it is: halve the batch, down to
    /// single records; a single record refused goes to the dead-letter file, counted.
    Split,
    /// The broker lost or refused the producer's state: a new producer id, sequences from 0,
    /// the same records sent again.
    ResetProducer,
    /// Configuration or permission (authorization, SASL, an unsupported feature): an outage,
    /// alerted, retried with backoff; never dead-lettered record by record.
    Down,
}

/// The verdict for `code` in a Produce response.
pub fn verdict(code: i16) -> Verdict {
    match code {
        0 | 46 => Verdict::Delivered,
        10 | 18 | 87 | 32 => Verdict::Split,
        45 | 59 | 47 | 90 | 49 => Verdict::ResetProducer,
        29 | 31 | 58 | 33 | 34 | 17 | 21 | 35 | 43 | 76 | 44 => Verdict::Down,
        // 6 NOT_LEADER_OR_FOLLOWER and friends, timeouts, replicas, throttling, and any code
        // this table does not know: the same batch again after a backoff.
        _ => Verdict::Retry,
    }
}

/// Kafka's name of an error code (`NOT_LEADER_OR_FOLLOWER`), as brokers' own logs and
/// documentation spell it.
pub fn name(code: i16) -> &'static str {
    match code {
        -1 => "UNKNOWN_SERVER_ERROR",
        0 => "NONE",
        2 => "CORRUPT_MESSAGE",
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        5 => "LEADER_NOT_AVAILABLE",
        6 => "NOT_LEADER_OR_FOLLOWER",
        7 => "REQUEST_TIMED_OUT",
        8 => "BROKER_NOT_AVAILABLE",
        10 => "MESSAGE_TOO_LARGE",
        13 => "NETWORK_EXCEPTION",
        14 => "COORDINATOR_LOAD_IN_PROGRESS",
        15 => "COORDINATOR_NOT_AVAILABLE",
        16 => "NOT_COORDINATOR",
        17 => "INVALID_TOPIC_EXCEPTION",
        18 => "RECORD_LIST_TOO_LARGE",
        19 => "NOT_ENOUGH_REPLICAS",
        20 => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        21 => "INVALID_REQUIRED_ACKS",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        31 => "CLUSTER_AUTHORIZATION_FAILED",
        32 => "INVALID_TIMESTAMP",
        33 => "UNSUPPORTED_SASL_MECHANISM",
        34 => "ILLEGAL_SASL_STATE",
        35 => "UNSUPPORTED_VERSION",
        43 => "UNSUPPORTED_FOR_MESSAGE_FORMAT",
        44 => "POLICY_VIOLATION",
        45 => "OUT_OF_ORDER_SEQUENCE_NUMBER",
        46 => "DUPLICATE_SEQUENCE_NUMBER",
        47 => "INVALID_PRODUCER_EPOCH",
        49 => "INVALID_PRODUCER_ID_MAPPING",
        51 => "CONCURRENT_TRANSACTIONS",
        56 => "KAFKA_STORAGE_ERROR",
        58 => "SASL_AUTHENTICATION_FAILED",
        59 => "UNKNOWN_PRODUCER_ID",
        72 => "LISTENER_NOT_FOUND",
        74 => "FENCED_LEADER_EPOCH",
        75 => "UNKNOWN_LEADER_EPOCH",
        76 => "UNSUPPORTED_COMPRESSION_TYPE",
        87 => "INVALID_RECORD",
        89 => "THROTTLING_QUOTA_EXCEEDED",
        90 => "PRODUCER_FENCED",
        100 => "UNKNOWN_TOPIC_ID",
        103 => "INCONSISTENT_TOPIC_ID",
        _ => "UNKNOWN_ERROR_CODE",
    }
}

/// What to do about `code` (an error), for the operator: the fix for configuration and
/// permission errors, empty for the rest.
pub fn hint(code: i16, topic: &str) -> String {
    match code {
        3 => format!(
            "topic {topic:?} does not exist: create it (this output never asks the broker to \
             create topics)"
        ),
        29 => format!("grant this principal WRITE (and DESCRIBE) on topic {topic:?}"),
        31 => "grant this principal IDEMPOTENT_WRITE on the cluster (brokers before 2.8 need it \
               for the idempotent producer)"
            .to_string(),
        58 => "check sasl.username and sasl.password".to_string(),
        33 => "the broker does not offer this sasl.mechanism".to_string(),
        76 => "the broker does not accept this compression: set compression = \"none\"".to_string(),
        35 | 43 => {
            "the broker is too old for this producer (Kafka 0.11 or later is needed)".to_string()
        }
        _ => String::new(),
    }
}

/// The text of an error for a log line: `NAME (code N)`, and the hint when there is one.
pub fn describe(code: i16, topic: &str) -> String {
    let hint = hint(code, topic);
    if hint.is_empty() {
        format!("{} (code {code})", name(code))
    } else {
        format!("{} (code {code}): {hint}", name(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_a_duplicate_sequence_are_both_delivered() {
        assert_eq!(verdict(0), Verdict::Delivered);
        // The broker already has this sequence: a resend of a batch it appended.
        assert_eq!(verdict(46), Verdict::Delivered);
    }

    #[test]
    fn a_moved_leader_or_a_busy_cluster_is_retried_with_the_same_batch() {
        for code in [
            6, 5, 3, 74, 75, 100, 103, 56, 72, 8, 7, 19, 20, 13, 89, 2, -1,
        ] {
            assert_eq!(verdict(code), Verdict::Retry, "{}", name(code));
        }
        // An unknown code is retried too: never dropped, never dead-lettered.
        assert_eq!(verdict(4242), Verdict::Retry);
    }

    #[test]
    fn a_batch_refused_for_its_size_or_content_is_split() {
        for code in [10, 18, 87, 32] {
            assert_eq!(verdict(code), Verdict::Split, "{}", name(code));
        }
    }

    #[test]
    fn a_lost_producer_state_resets_the_producer() {
        for code in [45, 59, 47, 90, 49] {
            assert_eq!(verdict(code), Verdict::ResetProducer, "{}", name(code));
        }
    }

    #[test]
    fn authorization_and_configuration_errors_are_an_outage_not_a_dead_letter() {
        for code in [29, 31, 58, 33, 34, 17, 21, 35, 43, 76, 44] {
            assert_eq!(verdict(code), Verdict::Down, "{}", name(code));
        }
        assert!(describe(29, "zpa").contains("WRITE"));
        assert!(describe(3, "zpa").contains("\"zpa\" does not exist"));
        assert_eq!(describe(6, "zpa"), "NOT_LEADER_OR_FOLLOWER (code 6)");
    }
}
