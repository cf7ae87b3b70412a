#!/usr/bin/env bash
# The pair test of issue 19: two appliance VMs share rings and lock file on an NFSv4 export of a
# third VM; the active VM is killed and the standby takes over (image/test_pair.py says what is
# checked and measured). Needs root, as image/test.sh (host tools, mmdebstrap).
#   bash image/test-pair.sh            build both images (or reuse them), then test
#   RINGRELAY_IMAGE_ACCEL=tcg|kvm      skip the KVM probe boot
#   RINGRELAY_PAIR_REBUILD=1           build even when target/image/out*/ match this checkout
# Images: the appliance in target/image/out (shared with image/test.sh) and the NFS server
# (RINGRELAY_IMAGE_VARIANT=nfs-server) in target/image/out-nfs-server. Each is rebuilt only when
# its stamp (what goes into the images: image/build.sh, the overlays, the locks, systemd/, and
# the relay binary) changed, so a rerun goes straight to the boots. Bounded: the whole run is stopped after
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

bin="${CARGO_TARGET_DIR:-target}"
[[ "$bin" == /* ]] || bin="$root/$bin"
bin="$bin/release/ringrelay"

# What the images are built from: build.sh and what it lays into them, and the relay binary
# (tests and documents are not in it).
stamp() {
    (cd "$root" && cargo build --release --locked --quiet >&2)
    { cd "$root" && find image/build.sh image/install-deps.sh image/fstab image/packages.lock \
          image/packages-nfs-server.lock image/rootfs image/nfs-server systemd -type f -print0 |
          LC_ALL=C sort -z | xargs -0 sha256sum
      sha256sum "$bin" | cut -d' ' -f1; } | sha256sum | cut -c1-16
}
want=$(stamp)
build() { # OUTDIR [VARIANT]
    local out="$root/target/image/$1"
    if [[ "${RINGRELAY_PAIR_REBUILD:-}" != 1 && -f "$out/stamp" && "$(cat "$out/stamp")" == "$want" ]]; then
        echo "pair-test: $1 is current (stamp $want): not rebuilding"
        return
    fi
    local t0
    t0=$(date +%s)
    rm -f "$out/stamp"
    RINGRELAY_IMAGE_VARIANT="${2:-appliance}" timeout --kill-after=20 "$(left)" \
        bash "$root/image/build.sh" "$out" &
    pid=$!
    wait "$pid"
    pid=""
    echo "$want" >"$out/stamp"
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
