#!/usr/bin/env bash
# Prints the stamp of an image build: a hash of what goes into the image (image/build.sh and
# what it lays into the image, the package locks, systemd/) and of the relay binary, plus the
# variant. image/build.sh writes it to OUTDIR/stamp after a successful build; image/test-pair.sh
# reuses an OUTDIR whose stamp matches instead of building again. Tests and documents are not in it.
#   bash image/stamp.sh [appliance|nfs-server]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${CARGO_TARGET_DIR:-target}"
[[ "$bin" == /* ]] || bin="$root/$bin"
bin="$bin/release/ringrelay"
{ echo "${1:-appliance}"
  cd "$root"
  find image/build.sh image/install-deps.sh image/fstab image/packages.lock \
      image/packages-nfs-server.lock image/rootfs image/nfs-server systemd -type f -print0 |
      LC_ALL=C sort -z | xargs -0 sha256sum
  sha256sum "$bin" | cut -d' ' -f1; } | sha256sum | cut -c1-16
