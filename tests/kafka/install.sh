#!/usr/bin/env bash
# Installs what tests/kafka.rs runs against:
#   - the broker: tansu 0.6.0 (a Kafka-protocol broker written in Rust, crates.io) with its
#     sqlite storage, built by `cargo install` into a cache in the cargo home, keyed by version
#     and features, so a fresh clone on a machine that built it once reuses it (a cold build is
#     about 9 minutes on 2 cores; Apache Kafka's own distribution is not reachable from here);
#   - the independent verifier: confluent-kafka 2.16.1 from PyPI (it bundles librdkafka
#     2.16.0), as a wheel unpacked into target/kafka/py (about 1 s).
# Idempotent: quick when both are present. Needs the cargo registry and PyPI.
# Usage: bash tests/kafka/install.sh      (the tests call it themselves when a piece is missing)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/target/kafka"
mkdir -p "$dest"
tansu_version=0.6.0
tansu_features=libsql
confluent_version=2.16.1
cache="${CARGO_HOME:-$HOME/.cargo}/ringrelay-cache/tansu-$tansu_version-$tansu_features"

# One installer at a time (parallel test binaries, CI and a developer).
mkdir -p "$(dirname "$cache")"
exec 9>"$(dirname "$cache")/.tansu.lock"
flock -w 1800 9 || { echo "kafka: could not take the install lock within 1800 s" >&2; exit 1; }

if [[ ! -x "$cache/bin/tansu" ]]; then
    echo "kafka: building tansu $tansu_version (--features $tansu_features) into $cache;" \
        "about 9 minutes on 2 cores, once per machine"
    start=$(date +%s)
    cargo install tansu --version "$tansu_version" --locked --features "$tansu_features" \
        --root "$cache.partial" --quiet
    rm -rf "$cache"
    mv "$cache.partial" "$cache"
    echo "kafka: tansu built in $(( $(date +%s) - start )) s"
else
    echo "kafka: tansu $tansu_version already built in $cache"
fi
ln -sfn "$cache/bin/tansu" "$dest/tansu"

py="$dest/py"
stamp="$py/.installed-$confluent_version"
if [[ ! -f "$stamp" ]]; then
    rm -rf "$py"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --no-deps --only-binary=:all: \
        --target "$py" "confluent-kafka==$confluent_version"
    touch "$stamp"
fi
PYTHONPATH="$py" python3 -c 'import confluent_kafka as c; print("kafka: verifier confluent-kafka", c.__version__, "(librdkafka", c.libversion()[0] + ")")'
"$dest/tansu" --version 2>/dev/null | head -1 || true
echo "kafka: installed in $dest"
