#!/usr/bin/env bash
# Writes a NoCloud seed for the appliance: a small FAT volume labelled CIDATA holding the relay's
# configuration, without mounting anything (mtools). Attach it to the VM as a second (or third)
# disk or as a USB stick; an ISO 9660 volume with the volume id cidata works as well
# (genisoimage -V cidata -J -r -o seed.iso DIR), and so does a cloud's own NoCloud seed.
#
#   bash image/make-seed.sh SEED.img ringrelay.toml [--tls FILE]... [--verify-at-boot] [OTHER.toml]...
#
# ringrelay.toml becomes /etc/ringrelay/ringrelay.toml in the VM; each --tls FILE goes to
# /etc/ringrelay/tls/ (name it "tls/FILE" in the config); other .toml files go beside
# ringrelay.toml (ringrelay@NAME reads NAME.toml); --verify-at-boot makes the VM run
# `ringrelay inspect /var/lib/ringrelay --verify` before the relay starts at every boot (its
# result on the serial console).
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n 2,15p "$0" >&2; exit 2; }
seed=$1; cfg=$2; shift 2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
export MTOOLS_SKIP_CHECK=1
rm -f "$seed"
mkfs.fat -n CIDATA -C "$seed" 4096 >/dev/null
printf 'instance-id: ringrelay-%s\nlocal-hostname: ringrelay\n' "$(sha256sum "$cfg" | cut -c1-12)" >"$tmp/meta-data"
mcopy -i "$seed" "$tmp/meta-data" ::/meta-data
mcopy -i "$seed" "$cfg" ::/ringrelay.toml
while [[ $# -gt 0 ]]; do
    case $1 in
    --tls) mmd -i "$seed" ::/tls 2>/dev/null || true; mcopy -i "$seed" "$2" "::/tls/$(basename "$2")"; shift 2 ;;
    --verify-at-boot) : >"$tmp/verify-at-boot"; mcopy -i "$seed" "$tmp/verify-at-boot" ::/verify-at-boot; shift ;;
    *.toml) mcopy -i "$seed" "$1" "::/$(basename "$1")"; shift ;;
    *) echo "make-seed: unknown argument $1" >&2; exit 2 ;;
    esac
done
mdir -i "$seed" -/ :: | grep -v '^$' >&2 || true
