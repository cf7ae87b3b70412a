#!/usr/bin/env bash
# Host tools for image/build.sh and image/test.sh, from Debian's packages only (Debian 12 host):
#   mmdebstrap        the root file system
#   e2fsprogs, fdisk  mkfs.ext4 -d (a file system image without mounting), sfdisk (GPT)
#   mtools, dosfstools the EFI system partition and the cidata seed, written without mounting
#                     (the host kernel has no vfat)
#   systemd-boot-efi  systemd-bootx64.efi, the UEFI boot loader on the disk's EFI partition
#   binutils          objcopy, which strips the relay's binary
#   ovmf              UEFI firmware for QEMU, to boot the shipped disk in the test
#   qemu-system-x86   from bookworm-backports: Debian 12's own (7.2) conflicts with the
#                     qemu-utils 10.0 from bookworm-backports that our machines already have
#   qemu-utils        qemu-img (qcow2)
#   python3, openssl  the boot test (image/test.py) and its TLS certificate
#   xorriso           ISO 9660 seeds (image/make-seed.sh SEED.iso)
# bookworm-backports is reached through apt's own sources list and lists directory under
# target/image/apt/, so /etc/apt is never touched. Idempotent: quick when everything is there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
state="$root/target/image/apt"
need=()
have() { dpkg-query -W -f='${Status}\n' "$1" 2>/dev/null | grep -q '^install ok installed$'; }
for p in mmdebstrap e2fsprogs fdisk mtools dosfstools systemd-boot-efi binutils ovmf \
    qemu-utils qemu-system-x86 python3 openssl xorriso; do
    have "$p" || need+=("$p")
done
if [[ ${#need[@]} -eq 0 ]]; then
    echo "image deps: installed"
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "image deps: missing ${need[*]}; run this script as root (apt-get install)" >&2
    exit 1
fi
echo "image deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$state/lists/partial" "$state/archives/partial"
cat >"$state/sources.list" <<SRC
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
deb http://deb.debian.org/debian bookworm-backports main
SRC
apt_opts=(-q -o DPkg::Lock::Timeout=300
    -o Dir::Etc::SourceList="$state/sources.list" -o Dir::Etc::SourceParts=/nonexistent
    -o Dir::State::Lists="$state/lists" -o Dir::Cache::Archives="$state/archives"
    -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update
# qemu from backports (it must match qemu-utils 10.0 where that is installed); the rest from
# bookworm as usual.
apt-get "${apt_opts[@]}" install -y --no-install-recommends -t bookworm-backports \
    qemu-system-x86 qemu-utils
rest=()
for p in "${need[@]}"; do
    [[ "$p" == qemu-* ]] || rest+=("$p")
done
if [[ ${#rest[@]} -gt 0 ]]; then
    apt-get "${apt_opts[@]}" install -y --no-install-recommends "${rest[@]}"
fi
echo "image deps: installed"
