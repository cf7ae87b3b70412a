"""Reads a Kafka topic from the beginning with confluent-kafka (librdkafka), the verifier of
tests/kafka.rs: an independent client, not the relay's own decoder.

Usage: PYTHONPATH=target/kafka/py python3 consume.py BOOTSTRAP TOPIC TIMEOUT_S
(with VERIFIER_SASL_SCRAM512=user:password for a broker that requires SASL)

Assigns every partition at its low watermark (no group membership, no rebalance, nothing
committed), reads until each partition reaches the high watermark taken at the start, and prints
one line per record: `partition offset hex(value) hex(key)` (`-` for a null key), ordered as read (by offset within a
partition). librdkafka checks each batch's CRC-32C (`check.crcs`). Exits 2 with a message on
stderr on a timeout or an error.
"""

import os
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition


def fail(why):
    print(f"consume.py: {why}", file=sys.stderr, flush=True)
    sys.exit(2)


def main():
    bootstrap, topic, timeout_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
    deadline = time.monotonic() + timeout_s

    def left():
        return max(0.1, deadline - time.monotonic())

    errors = []
    auth = {}
    # VERIFIER_SASL_SCRAM512=user:password: a broker that requires SASL.
    if os.environ.get("VERIFIER_SASL_SCRAM512"):
        user, password = os.environ["VERIFIER_SASL_SCRAM512"].split(":", 1)
        auth = {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password,
        }
    c = Consumer(
        {
            **auth,
            "bootstrap.servers": bootstrap,
            "group.id": "ringrelay-verifier",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "error",
            "check.crcs": True,
            "isolation.level": "read_uncommitted",
            "error_cb": lambda e: errors.append(e),
        }
    )
    try:
        try:
            md = c.list_topics(topic, timeout=left())
        except KafkaException as e:
            fail(f"metadata for {topic}: {e}")
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            fail(f"topic {topic}: {t.error if t else 'absent'}")
        todo = {}
        assign = []
        for p in sorted(t.partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=left())
            if high > low:
                todo[p] = high
            assign.append(TopicPartition(topic, p, low))
        c.assign(assign)
        while todo:
            if time.monotonic() > deadline:
                fatal = "; ".join(str(e) for e in errors[-3:])
                fail(f"timed out with partitions {todo} (partition: high) not read to the end {fatal}")
            m = c.poll(min(0.5, left()))
            if m is None:
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if m.partition() in todo and m.offset() >= todo[m.partition()]:
                        del todo[m.partition()]
                    continue
                fail(f"partition {m.partition()}: {err}")
            p, off = m.partition(), m.offset()
            if p not in todo or off >= todo[p]:
                continue  # beyond the high watermark taken at the start
            value, key = m.value() or b"", m.key()
            sys.stdout.write(f"{p} {off} {value.hex()} {'-' if key is None else key.hex()}\n")
            if off + 1 >= todo[p]:
                del todo[p]
    finally:
        c.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
