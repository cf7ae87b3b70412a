#!/usr/bin/env bash
# The pair test of issue 19: two appliance VMs share rings and lock file on an NFSv4 export of a
# third VM; the active VM is killed and the standby takes over (image/test_pair.py says what is
# checked and measured). Needs root, as image/test.sh (host tools, mmdebstrap).
#   bash image/test-pair.sh            build both images (or reuse them), then test
#   RINGRELAY_IMAGE_ACCEL=tcg|kvm      skip the KVM probe boot
#   RINGRELAY_PAIR_REBUILD=1           build even when target/image/out*/ match this checkout
# Images: the appliance in target/image/out (shared with image/test.sh) and the NFS server
# (RINGRELAY_IMAGE_VARIANT=nfs-server) in target/image/out-nfs-server. Each is rebuilt only when
# its stamp (image/stamp.sh: what goes into the images and the relay binary; build.sh writes it
# to OUTDIR/stamp, test.sh's build of target/image/out included) changed, so a rerun, or a run
# after image/test.sh, goes straight to the boots. Bounded: the whole run is stopped after
# RINGRELAY_PAIR_TEST_TIMEOUT seconds (default 1200); every process it started (QEMUs,
# receivers) is killed on every way out.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
limit="${RINGRELAY_PAIR_TEST_TIMEOUT:-1200}"
pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start=$(date +%s)
left() { echo $((limit - ($(date +%s) - start))); }

# The relay binary first: it is part of the images' stamp.
(cd "$root" && cargo build --release --locked --quiet)
build() { # OUTDIR [VARIANT]
    local out="$root/target/image/$1"
    local want
    want=$(bash "$root/image/stamp.sh" "${2:-appliance}")
    if [[ "${RINGRELAY_PAIR_REBUILD:-}" != 1 && -f "$out/stamp" && "$(cat "$out/stamp")" == "$want" ]]; then
        echo "pair-test: $1 is current (stamp $want): not rebuilding"
        return
    fi
    local t0
    t0=$(date +%s)
    RINGRELAY_IMAGE_VARIANT="${2:-appliance}" timeout --kill-after=20 "$(left)" \
        bash "$root/image/build.sh" "$out" &
    pid=$!
    wait "$pid"
    pid=""
    echo "pair-test: built $1 in $(($(date +%s) - t0)) s"
}
build out
build out-nfs-server nfs-server
[[ $(left) -gt 120 ]] || { echo "pair-test: no time left after the builds" >&2; exit 1; }
# test_pair.py kills its QEMUs on SIGTERM; timeout sends that first, then SIGKILL 20 s later.
timeout --kill-after=20 "$(left)" python3 "$root/image/test_pair.py" \
    "$root/target/image/out" "$root/target/image/out-nfs-server" &
pid=$!
wait "$pid"
pid=""
echo "pair-test: wall time $(($(date +%s) - start)) s (builds included)"
