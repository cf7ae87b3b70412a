#!/usr/bin/env bash
# The appliance image's CI test (.ci/run runs it): builds the image (image/build.sh) and boots it
# under QEMU (image/test.py says what is checked). Needs root (Debian packages for the host tools,
# image/install-deps.sh) and Debian's mirrors the first time; then only cached packages.
#   bash image/test.sh                 build into target/image/out, then test
#   RINGRELAY_IMAGE_ACCEL=tcg|kvm      skip the KVM probe boot
# Bounded: the whole run is stopped after RINGRELAY_IMAGE_TEST_TIMEOUT seconds (default 1500),
# and every process it started (QEMU, receivers) is killed on every way out.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/target/image/out"
limit="${RINGRELAY_IMAGE_TEST_TIMEOUT:-1500}"
pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$(date +%s)
timeout --kill-after=20 "$limit" bash "$root/image/build.sh" "$out" &
pid=$!
wait "$pid"
pid=""
left=$((limit - ($(date +%s) - start)))
[[ $left -gt 60 ]] || { echo "image-test: no time left after the build" >&2; exit 1; }
# test.py kills its QEMUs on SIGTERM; timeout sends that first, then SIGKILL 20 s later.
timeout --kill-after=20 "$left" python3 "$root/image/test.py" "$out" &
pid=$!
wait "$pid"
pid=""
