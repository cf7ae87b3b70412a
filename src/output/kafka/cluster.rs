//! What the output knows of the cluster and of its producer, without I/O: the API versions
//! both sides speak, the topic's partitions and their leaders (from Metadata), the
//! idempotent producer's id, epoch and next sequence per partition, and the partition the next
//! batch goes to.

use kafka_protocol::messages::{ApiVersionsResponse, MetadataResponse};

use super::errors;
use crate::config::KafkaKey;

/// Partitions of one topic the output handles at most (the sequence table's size).
pub const MAX_PARTITIONS: usize = 4096;
/// Brokers of the cluster the output remembers at most.
pub const MAX_NODES: usize = 256;

/// An API this producer uses, with the versions it speaks.
#[derive(Clone, Copy, Debug)]
pub struct Api {
    /// The API key.
    pub key: i16,
    /// Oldest version we speak.
    pub min: i16,
    /// Newest version we speak.
    pub max: i16,
}

/// Produce: from v3 (record batches v2) to v12 (v13 names topics by id).
pub const PRODUCE: Api = Api {
    key: 0,
    min: 3,
    max: 12,
};
/// Metadata: from v4 (`allow_auto_topic_creation`) to v12.
pub const METADATA: Api = Api {
    key: 3,
    min: 4,
    max: 12,
};
/// SaslHandshake.
pub const SASL_HANDSHAKE: Api = Api {
    key: 17,
    min: 1,
    max: 1,
};
/// InitProducerId: an idempotent producer without a transactional id.
pub const INIT_PRODUCER_ID: Api = Api {
    key: 22,
    min: 0,
    max: 5,
};
/// SaslAuthenticate.
pub const SASL_AUTHENTICATE: Api = Api {
    key: 36,
    min: 0,
    max: 2,
};

/// The versions chosen with one broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Versions {
    /// Produce.
    pub produce: i16,
    /// Metadata.
    pub metadata: i16,
    /// InitProducerId.
    pub init_producer_id: i16,
    /// SaslHandshake and SaslAuthenticate, when the broker has them.
    pub sasl: Option<(i16, i16)>,
}

/// The newest version of `api` both sides speak, from an ApiVersions answer.
fn choose(resp: &ApiVersionsResponse, api: Api) -> Option<i16> {
    let theirs = resp.api_keys.iter().find(|k| k.api_key == api.key)?;
    let v = api.max.min(theirs.max_version);
    (v >= api.min && v >= theirs.min_version).then_some(v)
}

impl Versions {
    /// The versions to use with the broker that sent `resp`; an error naming what it lacks.
    pub fn from_response(resp: &ApiVersionsResponse) -> Result<Versions, String> {
        if resp.error_code != 0 {
            return Err(format!(
                "ApiVersions: {}",
                errors::describe(resp.error_code, "")
            ));
        }
        let need = |api: Api, name: &str| {
            choose(resp, api).ok_or_else(|| {
                format!(
                    "the broker does not speak {name} v{}..v{} (Kafka 1.0 or later is needed)",
                    api.min, api.max
                )
            })
        };
        Ok(Versions {
            produce: need(PRODUCE, "Produce")?,
            metadata: need(METADATA, "Metadata")?,
            init_producer_id: need(INIT_PRODUCER_ID, "InitProducerId")?,
            sasl: choose(resp, SASL_HANDSHAKE).zip(choose(resp, SASL_AUTHENTICATE)),
        })
    }
}

/// A broker of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Its id.
    pub id: i32,
    /// The address it advertises, `host:port`.
    pub address: String,
}

/// The topic's partitions and their leaders, from the last Metadata answer.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// The brokers.
    pub nodes: Vec<Node>,
    /// The leader of each partition (index = partition), -1 for none.
    pub leaders: Vec<i32>,
}

impl Topology {
    /// Reads a Metadata answer for `topic`; an error (the text for `output_down`) when the
    /// topic is missing, not authorized, or has no partitions.
    pub fn from_metadata(resp: &MetadataResponse, topic: &str) -> Result<Topology, String> {
        let Some(t) = resp
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
        else {
            return Err(format!("Metadata does not name topic {topic:?}"));
        };
        if t.error_code != 0 {
            return Err(format!(
                "Metadata: {}",
                errors::describe(t.error_code, topic)
            ));
        }
        if t.partitions.is_empty() || t.partitions.len() > MAX_PARTITIONS {
            return Err(format!(
                "topic {topic:?} has {} partitions (1 to {MAX_PARTITIONS} supported)",
                t.partitions.len()
            ));
        }
        let mut leaders = vec![-1; t.partitions.len()];
        for p in &t.partitions {
            let i = usize::try_from(p.partition_index)
                .ok()
                .filter(|&i| i < leaders.len())
                .ok_or_else(|| {
                    format!(
                        "Metadata: topic {topic:?} names partition {} of {}",
                        p.partition_index,
                        t.partitions.len()
                    )
                })?;
            leaders[i] = if p.error_code == 0 { p.leader_id.0 } else { -1 };
        }
        let nodes = resp
            .brokers
            .iter()
            .take(MAX_NODES)
            .map(|b| Node {
                id: b.node_id.0,
                address: join_host_port(b.host.as_str(), b.port),
            })
            .collect();
        Ok(Topology { nodes, leaders })
    }

    /// The address of node `id`.
    pub fn address(&self, id: i32) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.address.as_str())
    }

    /// The node that advertises `address` (the one a connection dialled), if any.
    pub fn node_at(&self, address: &str) -> Option<i32> {
        self.nodes
            .iter()
            .find(|n| n.address == address)
            .map(|n| n.id)
    }
}

/// `host:port`, with brackets around an IPv6 host.
fn join_host_port(host: &str, port: i32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The idempotent producer: its id and epoch (from InitProducerId) and the next sequence
/// number of each partition. Kept across reconnects, so that a batch sent again carries the
/// sequence it had, and the broker appends it once.
#[derive(Clone, Debug, Default)]
pub struct Producer {
    /// Id and epoch, once the broker gave them.
    pub id: Option<(i64, i16)>,
    /// The next sequence number per partition.
    seqs: Vec<i32>,
}

impl Producer {
    /// A new id and epoch: every sequence starts again at 0.
    pub fn set_id(&mut self, id: i64, epoch: i16) {
        self.id = Some((id, epoch));
        self.seqs.iter_mut().for_each(|s| *s = 0);
    }

    /// Forgets the id (the broker refused it): the next batch waits for a new one.
    pub fn reset(&mut self) {
        self.id = None;
        self.seqs.iter_mut().for_each(|s| *s = 0);
    }

    /// The topic has `n` partitions (more after a repartition; never fewer).
    pub fn partitions(&mut self, n: usize) {
        if n > self.seqs.len() {
            self.seqs.resize(n, 0);
        }
    }

    /// Takes `records` sequence numbers of `partition`; returns the first. Sequences wrap
    /// from `i32::MAX` to 0, as Kafka's do.
    pub fn take(&mut self, partition: i32, records: u32) -> i32 {
        let s = &mut self.seqs[partition as usize];
        let base = *s;
        *s = wrap_add(base, records);
        base
    }

    /// A batch starting at `base` was cut to `records` before the broker appended anything of
    /// it: the partition's next sequence follows the shorter batch.
    pub fn cut(&mut self, partition: i32, base: i32, records: u32) {
        self.seqs[partition as usize] = wrap_add(base, records);
    }
}

fn wrap_add(base: i32, n: u32) -> i32 {
    ((i64::from(base) + i64::from(n)) % (i64::from(i32::MAX) + 1)) as i32
}

/// Chooses the partition of each batch.
#[derive(Clone, Debug, Default)]
pub struct Partitioner {
    /// The sticky partitioner's last choice.
    last: Option<usize>,
}

impl Partitioner {
    /// The partition of the next batch: with `key = "feed"`, the feed name's partition (as
    /// Java's and librdkafka's producers hash keys); without a key, the next partition after
    /// the last one whose leader is `node` (the broker this output is connected to), or the
    /// next one with any leader when `node` leads none. `None` when no partition has a leader.
    pub fn next(
        &mut self,
        key: KafkaKey,
        feed: &str,
        t: &Topology,
        node: Option<i32>,
    ) -> Option<i32> {
        let n = t.leaders.len();
        if n == 0 {
            return None;
        }
        if key == KafkaKey::Feed {
            let p = super::partition::partition_for_key(feed.as_bytes(), n as u32) as i32;
            return Some(p);
        }
        let start = self.last.map_or(0, |l| l + 1);
        let pick = |want: &dyn Fn(i32) -> bool| {
            (0..n)
                .map(|i| (start + i) % n)
                .find(|&p| want(t.leaders[p]))
        };
        let p = node
            .and_then(|node| pick(&|leader| leader == node))
            .or_else(|| pick(&|leader| leader >= 0))?;
        self.last = Some(p);
        Some(p as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn versions(list: &[(i16, i16, i16)]) -> ApiVersionsResponse {
        ApiVersionsResponse::default().with_api_keys(
            list.iter()
                .map(|&(k, min, max)| {
                    ApiVersion::default()
                        .with_api_key(k)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
    }

    fn metadata(topic: &str, leaders: &[(i32, i16)]) -> MetadataResponse {
        MetadataResponse::default()
            .with_brokers(vec![
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("127.0.0.1"))
                    .with_port(9092),
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("127.0.0.2"))
                    .with_port(9092),
            ])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))
                .with_partitions(
                    leaders
                        .iter()
                        .enumerate()
                        .map(|(i, &(leader, code))| {
                            MetadataResponsePartition::default()
                                .with_partition_index(i as i32)
                                .with_leader_id(BrokerId(leader))
                                .with_error_code(code)
                        })
                        .collect(),
                )])
    }

    #[test]
    fn versions_are_the_newest_both_sides_speak_and_a_missing_api_is_named() {
        let v = Versions::from_response(&versions(&[
            (0, 0, 9),
            (3, 0, 13),
            (22, 0, 4),
            (17, 0, 1),
            (36, 0, 2),
        ]))
        .unwrap();
        assert_eq!((v.produce, v.metadata, v.init_producer_id), (9, 12, 4));
        assert_eq!(v.sasl, Some((1, 2)));
        let e =
            Versions::from_response(&versions(&[(0, 0, 2), (3, 0, 13), (22, 0, 4)])).unwrap_err();
        assert!(e.contains("Produce v3..v12"), "{e}");
        let e = Versions::from_response(&versions(&[(0, 0, 9), (3, 0, 13)])).unwrap_err();
        assert!(e.contains("InitProducerId"), "{e}");
    }

    #[test]
    fn metadata_gives_leaders_and_a_missing_topic_is_an_error_that_says_to_create_it() {
        let t =
            Topology::from_metadata(&metadata("zpa", &[(1, 0), (2, 0), (-1, 5)]), "zpa").unwrap();
        assert_eq!(t.leaders, vec![1, 2, -1]);
        assert_eq!(t.address(2), Some("127.0.0.2:9092"));
        assert_eq!(t.node_at("127.0.0.1:9092"), Some(1));
        let mut m = metadata("zpa", &[]);
        m.topics[0].error_code = 3;
        let e = Topology::from_metadata(&m, "zpa").unwrap_err();
        assert!(
            e.contains("UNKNOWN_TOPIC_OR_PARTITION") && e.contains("create it"),
            "{e}"
        );
    }

    #[test]
    fn sticky_without_a_key_rotates_over_the_connected_brokers_partitions_with_leaders() {
        let t =
            Topology::from_metadata(&metadata("zpa", &[(1, 0), (2, 0), (1, 0), (-1, 5)]), "zpa")
                .unwrap();
        let mut p = Partitioner::default();
        let picks: Vec<_> = (0..4)
            .map(|_| p.next(KafkaKey::None, "f", &t, Some(1)).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 2, 0, 2]);
        let mut p = Partitioner::default();
        let picks: Vec<_> = (0..3)
            .map(|_| p.next(KafkaKey::None, "f", &t, None).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 1, 2]);
        let none = Topology::from_metadata(&metadata("zpa", &[(-1, 5)]), "zpa").unwrap();
        assert_eq!(
            Partitioner::default().next(KafkaKey::None, "f", &none, Some(1)),
            None
        );
    }

    #[test]
    fn sequences_are_kept_per_partition_wrap_and_restart_with_a_new_producer() {
        let mut p = Producer::default();
        p.partitions(2);
        p.set_id(7, 0);
        assert_eq!(p.take(0, 10), 0);
        assert_eq!(p.take(0, 5), 10);
        assert_eq!(p.take(1, 3), 0);
        // A batch of 5 from 10 halved to 2 before anything was appended.
        p.cut(0, 10, 2);
        assert_eq!(p.take(0, 1), 12);
        p.seqs[1] = i32::MAX - 1;
        assert_eq!(p.take(1, 3), i32::MAX - 1);
        assert_eq!(p.take(1, 1), 1);
        p.set_id(8, 0);
        assert_eq!(p.take(0, 1), 0);
    }
}
