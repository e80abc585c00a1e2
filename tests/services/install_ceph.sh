#!/usr/bin/env bash
# Unpack Debian's Ceph (radosgw + one monitor + one OSD) into a private folder
# so that tests/services/ceph_rgw.sh can run a real, signature-checking S3
# server without MinIO and without installing Ceph system-wide.
#
# Usage: install_ceph.sh [DIR]
#   DIR defaults to $CEPH_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/tuner-ceph.
#
# The packages are fetched with `apt-get download` and unpacked with
# `dpkg -x`: nothing is configured, no service or user is created, so no
# systemd is needed and the machine's package database stays untouched.
# Re-running is cheap: an intact install is detected and left alone.
set -euo pipefail

DIR=${1:-${CEPH_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tuner-ceph}}
ROOT=$DIR/root          # the unpacked file tree (usr/bin, usr/lib, ...)
STAMP=$DIR/installed    # written last, so a half-done install is redone

# Packages that ship the binaries and plugins ceph_rgw.sh runs (librados2
# ships libceph-common.so, which every one of them links).
CEPH_PKGS=(ceph-mon ceph-osd radosgw ceph-base ceph-common librados2)

# Libraries the packages above declare but that none of the programs we run
# loads (checked with ldd): they belong to the rbd/cephfs/python tools.
UNNEEDED_LIBS=" librbd1 libcephfs2 libradosstriper1 librgw2 libgoogle-perftools4 "

# What ceph_rgw.sh executes; every one must resolve all its libraries.
BINARIES=(ceph-mon ceph-osd radosgw radosgw-admin monmaptool osdmaptool)

log() { echo "install_ceph: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

lib_path() {
    local r=$1
    echo "$r/usr/lib/x86_64-linux-gnu:$r/usr/lib/x86_64-linux-gnu/ceph:$r/lib/x86_64-linux-gnu"
}

# Succeeds when every binary and every plugin the OSD/monitor may dlopen
# (object classes, erasure-code, compressors) finds all its shared libraries.
check_tree() {
    local r=$1 f missing
    for f in "${BINARIES[@]}"; do
        [[ -x $r/usr/bin/$f ]] || { log "missing $r/usr/bin/$f"; return 1; }
    done
    missing=$(
        export LD_LIBRARY_PATH; LD_LIBRARY_PATH=$(lib_path "$r")
        for f in "${BINARIES[@]/#/$r/usr/bin/}" \
                 $(find "$r/usr/lib/x86_64-linux-gnu/rados-classes" \
                        "$r/usr/lib/x86_64-linux-gnu/ceph" -name '*.so' 2>/dev/null); do
            ldd "$f" 2>/dev/null | grep 'not found' || true
        done | sort -u
    )
    if [[ -n $missing ]]; then
        log "unresolved shared libraries:"$'\n'"$missing"
        return 1
    fi
}

if [[ -f $STAMP ]] && check_tree "$ROOT" 2>/dev/null; then
    log "already installed in $DIR ($(cat "$STAMP"))"
    exit 0
fi

command -v apt-get >/dev/null || die "needs a Debian system with apt-get"

# A fresh machine may have empty package lists; refresh only then, because
# `apt-get update` is slow and needs root.
if ! apt-cache show radosgw >/dev/null 2>&1; then
    [[ $(id -u) == 0 ]] || die "apt package lists are empty; run 'apt-get update' as root first"
    log "apt-get update"
    apt-get update -qq >&2
fi
apt-cache show radosgw >/dev/null 2>&1 || die "no 'radosgw' package in the configured apt sources"

is_installed() {
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# Walk the Depends/Pre-Depends graph from CEPH_PKGS, following only library
# packages (lib*) that this machine lacks. Non-library dependencies (python3,
# lvm2, sudo, ...) are what the packaged scripts and CLIs need, not the C++
# daemons, so they are skipped. Asking apt about a whole level at once keeps
# this to a few apt-cache calls.
declare -A seen=()
wanted=()
level=("${CEPH_PKGS[@]}")
while ((${#level[@]})); do
    next=()
    for p in "${level[@]}"; do
        [[ -z ${seen[$p]:-} ]] || continue
        seen[$p]=1
        wanted+=("$p")
    done
    for d in $(apt-cache depends --no-recommends --no-suggests --no-enhances \
                   --no-conflicts --no-breaks --no-replaces "${level[@]}" \
               | awk '/^ *\|?(Pre)?Depends: [^<]/ {print $2}' | sort -u); do
        [[ $d == lib* && -z ${seen[$d]:-} && $UNNEEDED_LIBS != *" $d "* ]] || continue
        is_installed "$d" || next+=("$d")
    done
    level=("${next[@]+"${next[@]}"}")
done

# The .debs go to a temporary folder in /tmp: apt running as root downloads
# as the _apt user, who must be able to reach it (DIR may sit under a
# private /root). The tree is unpacked next to DIR so that it can be
# renamed into place.
mkdir -p "$DIR"
debs=$(mktemp -d)
stage=$(mktemp -d "$DIR/.tmp.XXXXXX")
trap 'rm -rf "$debs" "$stage"' EXIT
if [[ $(id -u) == 0 ]] && id _apt >/dev/null 2>&1; then
    chown _apt "$debs"
fi

log "downloading ${#wanted[@]} packages: ${wanted[*]}"
(cd "$debs" && apt-get download -q "${wanted[@]}" >&2)

for deb in "$debs"/*.deb; do
    dpkg -x "$deb" "$stage"
done

check_tree "$stage" ||
    die "the unpacked tree is incomplete; add the package shipping the library above to CEPH_PKGS"

# Swap in the new tree only once it is known to be complete.
rm -rf "$ROOT"
mv "$stage" "$ROOT"
chmod 755 "$ROOT"   # mktemp made it private
version=$(dpkg-deb -f "$debs"/radosgw_*.deb Version)
printf 'ceph %s; packages: %s\n' "$version" "${wanted[*]}" >"$STAMP"
log "installed ceph $version into $DIR"
