#!/usr/bin/env bash
# Writes a NoCloud seed for the appliance without mounting anything: a small FAT volume labelled
# CIDATA (mtools), or, for a SEED named *.iso, an ISO 9660 volume labelled cidata (xorriso), for a
# hypervisor that attaches seeds as CD-ROMs. Attach it to the VM as another disk, a USB stick or
# a CD-ROM; a cloud's own NoCloud seed with these files works as well.
#
#   bash image/make-seed.sh SEED.img|SEED.iso ringrelay.toml [--tls FILE]... [--verify-at-boot]
#        [--storage-nfs FILE] [--network FILE.network]... [OTHER.toml]...
#
# ringrelay.toml becomes /etc/ringrelay/ringrelay.toml in the VM; each --tls FILE goes to
# /etc/ringrelay/tls/ (name it "tls/FILE" in the config); other .toml files go beside
# ringrelay.toml (ringrelay@NAME reads NAME.toml); --verify-at-boot makes the VM run
# `ringrelay inspect /var/lib/ringrelay --verify` before the relay starts at every boot (its
# result on the serial console); --storage-nfs FILE puts the rings on an NFSv4 export instead of
# a data disk (FILE: server=, export=, options=, client_id= lines; see image/README.md) and
# each --network FILE (systemd.network) configures the storage network before the mount.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n 2,16p "$0" >&2; exit 2; }
seed=$1; cfg=$2; shift 2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dir="$tmp/seed"
mkdir -p "$dir"
printf 'instance-id: ringrelay-%s\nlocal-hostname: ringrelay\n' "$(sha256sum "$cfg" | cut -c1-12)" >"$dir/meta-data"
cp "$cfg" "$dir/ringrelay.toml"
while [[ $# -gt 0 ]]; do
    case $1 in
    --tls) mkdir -p "$dir/tls"; cp "$2" "$dir/tls/"; shift 2 ;;
    --verify-at-boot) : >"$dir/verify-at-boot"; shift ;;
    --storage-nfs) cp "$2" "$dir/storage-nfs"; shift 2 ;;
    --network) mkdir -p "$dir/network"; cp "$2" "$dir/network/"; shift 2 ;;
    *.toml) cp "$1" "$dir/"; shift ;;
    *) echo "make-seed: unknown argument $1" >&2; exit 2 ;;
    esac
done
rm -f "$seed"
if [[ "$seed" == *.iso ]]; then
    xorriso -as mkisofs -quiet -V cidata -J -r -o "$seed" "$dir" >"$tmp/xorriso.log" 2>&1 ||
        { cat "$tmp/xorriso.log" >&2; exit 1; }
else
    export MTOOLS_SKIP_CHECK=1
    mkfs.fat -n CIDATA -C "$seed" 4096 >/dev/null
    mcopy -s -i "$seed" "$dir"/* ::/
fi
echo "make-seed: $seed: $(cd "$dir" && find . -type f | sed 's|^\./||' | sort | tr '\n' ' ')" >&2
