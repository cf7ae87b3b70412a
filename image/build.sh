#!/usr/bin/env bash
# Builds the ringrelay appliance disk from this checkout, with Debian's packages only, without
# loop devices, mounts or systemd-nspawn (none of them work on our build machines: no vfat in the
# host kernel, host PID 1 is not systemd); a plain chroot runs useradd and systemctl enable/mask.
#
#   bash image/build.sh OUTDIR
#
# OUTDIR then holds
#   ringrelay-appliance.qcow2   the bootable disk, compressed (UEFI: GPT, an EFI system partition
#                               with systemd-boot, kernel and initrd; an ext4 root mounted read-only)
#   ringrelay-appliance.raw     the same disk, raw (sparse)
#   vmlinuz, initrd.img, cmdline  the same kernel, initrd and command line, for QEMU's direct
#                               kernel boot of the same disk (the CI test uses both ways)
#   packages.txt                the packages in the image, name=version
#   build-info.txt              build time, sizes, versions
# Steps: image/install-deps.sh (host tools), cargo build --release, mmdebstrap (minbase, the
# versions of image/packages.lock), image/rootfs/ laid over it, apt removed, mkfs.ext4 -d (root),
# mkfs.fat + mtools (ESP), sfdisk + dd (the GPT disk), qemu-img convert -c (qcow2).
#
# Environment:
#   RINGRELAY_IMAGE_LOCK=strict   fail when the mirror no longer has a locked version (default:
#                                 say so loudly and build with the mirror's current versions)
#   RINGRELAY_IMAGE_UPDATE_LOCK=1 write the versions this build used into image/packages.lock
#   RINGRELAY_IMAGE_MIRROR        Debian mirror (default http://deb.debian.org)
#   RINGRELAY_IMAGE_VARIANT=nfs-server  the NFS server of the pair test (image/test-pair.sh)
#                                 instead of the appliance: the same image plus nfs-kernel-server
#                                 (versions in image/packages-nfs-server.lock) and
#                                 image/nfs-server/rootfs/ (NFSv4.1+ only, a 10 s lease, the export
#                                 /var/lib/ringrelay/export on the data disk), the relay not enabled
#   CARGO_TARGET_DIR              where cargo builds the relay (default: target/ of this checkout)
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: bash image/build.sh OUTDIR" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
rm -f "$out/stamp"  # written again at the end of a successful build (image/stamp.sh)
variant="${RINGRELAY_IMAGE_VARIANT:-appliance}"
case $variant in
appliance) work="$root/target/image/build" ;;
nfs-server) work="$root/target/image/build-$variant" ;;
*) echo "image: RINGRELAY_IMAGE_VARIANT=$variant: appliance or nfs-server" >&2; exit 2 ;;
esac
bin="${CARGO_TARGET_DIR:-target}"
[[ "$bin" == /* ]] || bin="$root/$bin"
bin="$bin/release/ringrelay"
cache="$root/target/image/debs"
mirror="${RINGRELAY_IMAGE_MIRROR:-http://deb.debian.org}"
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step() { echo "image: [$(elapsed)s] $*"; }

# Fixed identities: the same inputs give the same partition table and file system UUIDs.
DISK_GUID=5a1d0c6e-7e1a-4c1b-9d7e-72696e677265
ESP_PARTUUID=5a1d0c6e-7e1a-4c1b-9d7e-000000000001
ROOT_PARTUUID=5a1d0c6e-7e1a-4c1b-9d7e-000000000002
ROOT_FSUUID=5a1d0c6e-7e1a-4c1b-9d7e-000000000003
HASH_SEED=5a1d0c6e-7e1a-4c1b-9d7e-000000000004
CMDLINE="root=PARTUUID=$ROOT_PARTUUID ro rootfstype=ext4 console=tty0 console=ttyS0,115200n8 quiet loglevel=4 systemd.firstboot=off systemd.gpt_auto=0 systemd.show_status=auto panic=10"

bash "$here/install-deps.sh"
step "host tools ready"

# Before SOURCE_DATE_EPOCH is set: a build script that watches it would rebuild everything.
(cd "$root" && cargo build --release --locked --quiet)
step "cargo build --release done"

# SOURCE_DATE_EPOCH: the commit's time, so that file times in the image do not depend on when
# it was built (mmdebstrap, mkfs.ext4 via E2FSPROGS_FAKE_TIME and mkfs.fat honour it).
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}"


rm -rf "$work"
mkdir -p "$work" "$cache"
rootfs="$work/rootfs"

# The package set: what the relay needs to boot and run, nothing else. The versions come from
# image/packages.lock (every package of the image, essential ones included).
include=(systemd systemd-sysv udev systemd-resolved systemd-timesyncd
    linux-image-cloud-amd64 initramfs-tools kmod e2fsprogs ca-certificates)
lock="$here/packages.lock"
if [[ $variant == nfs-server ]]; then
    include+=(nfs-kernel-server)
    lock="$here/packages-nfs-server.lock"
fi
pinned=()
if [[ -f "$lock" ]]; then
    mapfile -t pinned < <(grep -v '^#' "$lock" | grep .)
fi
mm() {
    mmdebstrap --variant=minbase --mode=root --format=directory \
        --include="$(IFS=,; echo "$*")" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --skip=download/empty --skip=essential/unlink \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
        --setup-hook="sync-in $cache /var/cache/apt/archives/" \
        --customize-hook="sync-out /var/cache/apt/archives $cache" \
        bookworm "$rootfs" \
        "deb $mirror/debian bookworm main" \
        "deb $mirror/debian bookworm-updates main" \
        "deb $mirror/debian-security bookworm-security main" >"$work/mmdebstrap.log" 2>&1
}
drift=""
if [[ ${#pinned[@]} -gt 0 ]] && mm "${include[@]}" "${pinned[@]}"; then
    step "mmdebstrap: root file system from the ${#pinned[@]} locked versions"
else
    if [[ ${#pinned[@]} -gt 0 ]]; then
        grep -E '^E: (Version|Unable|Package)' "$work/mmdebstrap.log" | head -10 >&2 || true
        if [[ "${RINGRELAY_IMAGE_LOCK:-}" == strict ]]; then
            echo "image: the mirror no longer has every version of image/packages.lock (above); RINGRELAY_IMAGE_LOCK=strict" >&2
            exit 1
        fi
        drift="yes"
        echo "image: WARNING: the mirror no longer has every locked version (above): building with its current versions; the differences are listed below" >&2
    fi
    rm -rf "$rootfs"
    mm "${include[@]}" || { tail -30 "$work/mmdebstrap.log" >&2; exit 1; }
    step "mmdebstrap: root file system from the mirror's current versions"
fi
find "$rootfs/var/cache/apt/archives" -name '*.deb' -delete
chroot "$rootfs" dpkg-query -W -f='${Package}=${Version}\n' | LC_ALL=C sort >"$work/packages.txt"
if [[ -f "$lock" ]]; then
    if ! diff <(grep -v '^#' "$lock" | grep .) "$work/packages.txt" >"$work/lock.diff"; then
        echo "image: WARNING: the image's packages differ from image/packages.lock (< lock, > image):" >&2
        cat "$work/lock.diff" >&2
        drift="yes"
    fi
fi
if [[ ! -f "$lock" || "${RINGRELAY_IMAGE_UPDATE_LOCK:-}" == 1 ]]; then
    { if [[ $variant == appliance ]]; then
          echo "# The appliance image's packages (Debian 12), name=version: image/build.sh installs exactly"
          echo "# these. Rewritten by RINGRELAY_IMAGE_UPDATE_LOCK=1 bash image/build.sh OUTDIR."
      else
          echo "# The $variant test image's packages (Debian 12), name=version: image/build.sh installs exactly"
          echo "# these. Rewritten by RINGRELAY_IMAGE_VARIANT=$variant RINGRELAY_IMAGE_UPDATE_LOCK=1 bash image/build.sh OUTDIR."
      fi
      cat "$work/packages.txt"; } >"$lock"
    step "wrote $(basename "$lock")"
fi

# --- the appliance -------------------------------------------------------------------------
kver=$(basename "$(ls -d "$rootfs"/lib/modules/*)")
cp "$rootfs/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$rootfs/boot/initrd.img-$kver" "$out/initrd.img"
echo "$CMDLINE" >"$out/cmdline"
rm -f "$rootfs"/boot/* "$rootfs"/vmlinuz* "$rootfs"/initrd.img*

objcopy --strip-all "$bin" "$rootfs/usr/bin/ringrelay"
chmod 0755 "$rootfs/usr/bin/ringrelay"
install -m 0644 "$root/systemd/ringrelay.service" "$root/systemd/ringrelay@.service" "$rootfs/etc/systemd/system/"
cp -r --no-preserve=ownership "$here/rootfs/." "$rootfs/"
sed "s/@ROOT_PARTUUID@/$ROOT_PARTUUID/" "$here/fstab" >"$rootfs/etc/fstab"
hostname=ringrelay
if [[ $variant == nfs-server ]]; then
    hostname=nfs-server
    cp -r --no-preserve=ownership "$here/nfs-server/rootfs/." "$rootfs/"
    # nfsd's state (/var/lib/nfs: etab, the client-tracking database) must be writable: a tmpfs,
    # filled at boot from the package's own tree by ringrelay-nfs-export.service, so a rebooted
    # server forgets its clients (fine for the test, which never reboots it).
    mv "$rootfs/var/lib/nfs" "$rootfs/usr/share/ringrelay-image-var-lib-nfs"
    mkdir "$rootfs/var/lib/nfs"
    echo 'tmpfs                     /var/lib/nfs      tmpfs  mode=0755,nosuid,nodev,size=8m    0 0' >>"$rootfs/etc/fstab"
fi
echo "$hostname" >"$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' "$hostname" >"$rootfs/etc/hosts"
# An empty machine-id: systemd makes one at every boot (the root is read-only) and masks the file.
: >"$rootfs/etc/machine-id"
ln -sf /etc/machine-id "$rootfs/var/lib/dbus/machine-id"

chroot "$rootfs" /usr/bin/env VARIANT="$variant" /bin/sh -eu <<'CHROOT'
groupadd --system --gid 470 ringrelay
useradd --system --uid 470 --gid 470 --home-dir /var/lib/ringrelay --no-create-home \
    --shell /usr/sbin/nologin --comment "ringrelay relay" ringrelay
mkdir -p /var/lib/ringrelay /etc/ringrelay
# No login anywhere: no password for root, no getty on any console, no SSH (none installed).
passwd -l root >/dev/null
systemctl -q mask getty@.service serial-getty@.service autovt@.service console-getty.service \
    container-getty@.service getty.target systemd-firstboot.service systemd-logind.service
# Jobs that write to the read-only root or that an appliance has no use for.
systemctl -q mask e2scrub_all.timer e2scrub_reap.service dpkg-db-backup.timer
systemctl -q enable systemd-networkd.service systemd-resolved.service systemd-timesyncd.service
if [ "$VARIANT" = nfs-server ]; then
    # The NFS server of the pair test: the relay's unit is not enabled; NFSv4 only, so no
    # rpcbind or statd.
    systemctl -q mask rpcbind.service rpcbind.socket rpc-statd.service rpc-statd-notify.service
    systemctl -q enable nfs-server.service ringrelay-nfs-export.service
else
    systemctl -q enable ringrelay.service
fi
# No package manager: apt goes (dpkg is essential to Debian and cannot leave cleanly; without
# apt it fetches nothing).
dpkg --purge --force-remove-protected --force-depends apt libapt-pkg6.0 gpgv debian-archive-keyring >/dev/null 2>&1
rm -rf /var/lib/apt /var/cache/apt /etc/apt /var/cache/debconf/*-old /var/lib/dpkg/*-old \
    /var/log/* /tmp/* /var/tmp/*
CHROOT
chroot "$rootfs" dpkg-query -W -f='${Package}=${Version}\n' | LC_ALL=C sort >"$out/packages.txt"

# What the image promises, checked on what was built: the units as shipped, no login, no SSH,
# no compilers, no apt.
bad=()
for u in ringrelay.service ringrelay@.service; do
    cmp -s "$root/systemd/$u" "$rootfs/etc/systemd/system/$u" || bad+=("$u differs from systemd/$u")
done
for u in getty@.service serial-getty@.service autovt@.service console-getty.service getty.target systemd-logind.service; do
    [[ "$(readlink "$rootfs/etc/systemd/system/$u")" == /dev/null ]] || bad+=("$u is not masked")
done
grep -q '^root:[!*]' "$rootfs/etc/shadow" || bad+=("root has a password")
for f in usr/sbin/sshd usr/bin/apt usr/bin/apt-get usr/bin/cc usr/bin/gcc usr/bin/c++ usr/bin/rustc usr/bin/clang usr/bin/as usr/bin/ld; do
    [[ ! -e "$rootfs/$f" ]] || bad+=("/$f is in the image")
done
if [[ $variant == appliance ]]; then
    [[ -L "$rootfs/etc/systemd/system/multi-user.target.wants/ringrelay.service" ]] || bad+=("ringrelay.service is not enabled")
else
    [[ ! -e "$rootfs/etc/systemd/system/multi-user.target.wants/ringrelay.service" ]] || bad+=("ringrelay.service is enabled on the NFS server")
    [[ -L "$rootfs/etc/systemd/system/multi-user.target.wants/nfs-server.service" ]] || bad+=("nfs-server.service is not enabled")
    for f in /etc/nfs.conf /etc/exports; do
        cmp -s "$here/nfs-server/rootfs$f" "$rootfs$f" || bad+=("$f is not image/nfs-server/rootfs$f")
    done
fi
if [[ ${#bad[@]} -gt 0 ]]; then
    printf 'image: FAIL: %s\n' "${bad[@]}" >&2
    exit 1
fi
step "checked ($variant): units as shipped, ringrelay.service $([[ $variant == appliance ]] && echo enabled || echo "not enabled, nfs-server enabled"), no getty, no logind, root locked, no sshd, apt, cc, gcc, rustc, as, ld"
step "root file system customised ($(du -sm "$rootfs" | cut -f1) MiB)"

# --- the disk --------------------------------------------------------------------------------
mib=$((1024 * 1024))
used=$(du -sm "$rootfs" | cut -f1)
root_mib=$(((used * 115 / 100 + 64 + 15) / 16 * 16))
esp_mib=64
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -F -L ringrelay-root -U "$ROOT_FSUUID" \
    -E "hash_seed=$HASH_SEED,root_owner=0:0" -O ^has_journal -m 0 \
    -d "$rootfs" "$work/root.ext4" "${root_mib}M"
step "root file system: ext4, ${root_mib} MiB, read-only at run time (no journal)"

mkfs.fat -F 32 -n ESP -i 5a1d0c6e -S 512 -C "$work/esp.fat" $((esp_mib * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$work/esp.fat" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/ringrelay
mcopy -i "$work/esp.fat" /usr/lib/systemd/boot/efi/systemd-bootx64.efi ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$work/esp.fat" "$out/vmlinuz" ::/ringrelay/vmlinuz
mcopy -i "$work/esp.fat" "$out/initrd.img" ::/ringrelay/initrd.img
# editor no: nobody at the console can change the kernel command line (init=/bin/sh would be a
# login); timeout 0: no menu; random-seed-mode off: the loader writes nothing to the ESP.
printf 'default ringrelay.conf\ntimeout 0\neditor no\nrandom-seed-mode off\n' >"$work/loader.conf"
printf 'title ringrelay appliance\nlinux /ringrelay/vmlinuz\ninitrd /ringrelay/initrd.img\noptions %s\n' \
    "$CMDLINE" >"$work/ringrelay.conf"
mcopy -i "$work/esp.fat" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$work/esp.fat" "$work/ringrelay.conf" ::/loader/entries/ringrelay.conf
step "EFI system partition: FAT32, ${esp_mib} MiB (systemd-boot, kernel $kver, initrd)"

raw="$out/ringrelay-appliance.raw"
total_mib=$((1 + esp_mib + root_mib + 1))
rm -f "$raw"
truncate -s "${total_mib}M" "$raw"
sfdisk -q "$raw" <<SFDISK
label: gpt
label-id: $DISK_GUID
unit: sectors
first-lba: 2048
start=2048, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$ESP_PARTUUID, name="ESP"
start=$((2048 + esp_mib * 2048)), size=$((root_mib * 2048)), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$ROOT_PARTUUID, name="ringrelay-root"
SFDISK
dd if="$work/esp.fat" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$raw" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
step "raw disk: GPT, ${total_mib} MiB"
qemu-img convert -f raw -O qcow2 -c "$raw" "$out/ringrelay-appliance.qcow2"
step "qcow2 (compressed) written"

raw_b=$(stat -c %s "$raw")
raw_alloc=$(($(stat -c %b "$raw") * $(stat -c %B "$raw")))
q_b=$(stat -c %s "$out/ringrelay-appliance.qcow2")
{
    echo "variant: $variant"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$root" diff --quiet 2>/dev/null || echo '+changes')"
    echo "build_seconds: $(elapsed)"
    echo "raw_bytes: $raw_b ($((raw_b / mib)) MiB; $((raw_alloc / mib)) MiB allocated)"
    echo "qcow2_bytes: $q_b ($((q_b / mib)) MiB)"
    echo "root_fs_mib: $root_mib (used $used)"
    echo "kernel: $kver"
    echo "packages: $(wc -l <"$out/packages.txt")"
    echo "ringrelay: $("$rootfs/usr/bin/ringrelay" --version 2>/dev/null || echo '?') ($(stat -c %s "$rootfs/usr/bin/ringrelay") bytes, stripped)"
    echo "lock: $([[ -n "$drift" ]] && echo 'DRIFTED from image/packages.lock (see the build log)' || echo 'as image/packages.lock')"
} >"$out/build-info.txt"
sed 's/^/image: /' "$out/build-info.txt"
bash "$here/stamp.sh" "$variant" >"$out/stamp"
