#!/usr/bin/env bash
# Installs the real syslog peers that tests/peers.rs runs against: rsyslog (with its gnutls
# stream driver) and syslog-ng, from Debian's packages, WITHOUT installing either as a package.
# They conflict with each other (and with whatever logger the machine has) as packages, and
# installing one would start it as the system's logger. So:
#   1. `apt-get download` rsyslog, rsyslog-gnutls and syslog-ng-core (the .deb files only);
#   2. `dpkg -x` them into target/peers/<name>/ (gitignored; no maintainer scripts, no service);
#   3. `apt-get install --no-install-recommends` only the shared libraries their Depends name
#      (lib* packages: libraries do not conflict and start nothing);
#   4. check with ldd that every binary and module the tests load finds its libraries.
# Idempotent: quick (no apt at all) when target/peers/.installed matches this script.
# Needs root, apt and Debian's package mirrors (Debian 12: rsyslog 8.2302, syslog-ng 3.38).
# Usage: bash tests/peers/install.sh      (the tests call it themselves when the peers are missing)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="${RINGRELAY_PEERS_DIR:-$root/target/peers}"
mkdir -p "$dest"
stamp="$dest/.installed"
want="$(sha256sum "$0" | cut -d' ' -f1)"

# One installer at a time (parallel test binaries, CI and a developer).
exec 9>"$dest/.lock"
flock -w 600 9 || { echo "peers: could not take $dest/.lock within 600 s" >&2; exit 1; }

rsyslogd="$dest/rsyslog/usr/sbin/rsyslogd"
syslogng="$dest/syslog-ng/usr/sbin/syslog-ng"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$rsyslogd" && -x "$syslogng" ]]; then
    echo "peers: already installed in $dest"
    exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
    echo "peers: must run as root (apt-get install of the peers' libraries)" >&2
    exit 1
fi
command -v apt-get >/dev/null || { echo "peers: no apt-get: not a Debian machine" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -o DPkg::Lock::Timeout=300)
debs="$dest/debs"
rm -rf "$debs"
mkdir -p "$debs"
# _apt cannot write into a root-only directory: download as root without the sandbox warning.
chmod 0777 "$debs"

download() {
    (cd "$debs" && apt-get "${apt_opts[@]}" download rsyslog rsyslog-gnutls syslog-ng-core)
}
if ! download; then
    echo "peers: apt-get download failed; running apt-get update and trying again"
    apt-get "${apt_opts[@]}" update
    download
fi

# The libraries the three packages depend on (first alternative of each; lib* only: the rest,
# libc6 aside, are rsyslog itself and sysvinit-utils | lsb-base, which the unpacked trees do
# not need).
libs=()
for deb in "$debs"/*.deb; do
    while read -r dep; do
        dep="${dep%%|*}"
        dep="${dep%%(*}"
        dep="${dep// /}"
        [[ "$dep" == lib* ]] && libs+=("$dep")
    done < <(dpkg-deb -f "$deb" Depends | tr ',' '\n')
done
# Only those not installed yet: an installed library is left at its version (no upgrades).
mapfile -t libs < <(printf '%s\n' "${libs[@]}" | sort -u | while read -r lib; do
    dpkg-query -W -f='${Status}\n' "$lib" 2>/dev/null | grep -q '^install ok installed$' ||
        echo "$lib"
done)
if [[ ${#libs[@]} -gt 0 ]]; then
    echo "peers: installing shared libraries: ${libs[*]}"
    if ! apt-get "${apt_opts[@]}" install --no-install-recommends -y "${libs[@]}"; then
        apt-get "${apt_opts[@]}" update
        apt-get "${apt_opts[@]}" install --no-install-recommends -y "${libs[@]}"
    fi
else
    echo "peers: their shared libraries are installed already"
fi

for name in rsyslog syslog-ng; do
    rm -rf "${dest:?}/$name"
    mkdir -p "$dest/$name"
done
dpkg -x "$debs"/rsyslog_*.deb "$dest/rsyslog"
dpkg -x "$debs"/rsyslog-gnutls_*.deb "$dest/rsyslog"
dpkg -x "$debs"/syslog-ng-core_*.deb "$dest/syslog-ng"
for deb in "$debs"/*.deb; do
    echo "peers: unpacked $(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version)"
done

# Every binary and module must find its libraries (syslog-ng's own are under usr/lib/syslog-ng,
# which the tests put on LD_LIBRARY_PATH).
missing=$(
    for f in "$rsyslogd" "$dest"/rsyslog/usr/lib/*/rsyslog/*.so \
        "$syslogng" "$dest"/syslog-ng/usr/lib/syslog-ng/3.*/*.so; do
        LD_LIBRARY_PATH="$dest/syslog-ng/usr/lib/syslog-ng" ldd "$f" 2>/dev/null |
            grep 'not found' | sed "s|^|$f:|" || true
    done
)
if [[ -n "$missing" ]]; then
    echo "peers: libraries still missing:" >&2
    echo "$missing" >&2
    exit 1
fi
"$rsyslogd" -v | head -1
LD_LIBRARY_PATH="$dest/syslog-ng/usr/lib/syslog-ng" "$syslogng" --version | head -2
echo "$want" >"$stamp"
echo "peers: installed in $dest"
