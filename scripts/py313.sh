#!/usr/bin/env bash
# The fast tier on Debian 13's Python 3.13 (make test-py313).
#
#   scripts/py313.sh [PYTEST_ARGS...]    pytest -m "not engine" PYTEST_ARGS, in a trixie root
#
# Python 3.13 and the tools the fast tier runs (promtool, systemd-analyze, openssl) come
# from a minbase trixie root made once by debootstrap (~80 s, 670 MB) and cached in
# $KEGPACK_PY313_ROOTFS (default /var/cache/kegpack-testenv/trixie-python). It is a root of
# its own, not the containerd flavour's: that one is in use, read-only, by running engines
# and was cached without python3. The venv (never the checkout's .venv), pip's cache and
# Hypothesis' database live in $KEGPACK_PY313_DIR (default /tmp/kegpack-py313); the venv is
# made again only when pyproject.toml or the root's Python changes (~20 s; else ~1 s).
#
# The tests run chrooted, in a mount namespace of their own (unshare), so every mount is
# gone when they end, pass or fail, and none is seen on the host: the root read-only, the
# checkout read-only on /mnt/src, the state dir on /mnt/state, an emptied directory of the
# state dir on /tmp, a tmpfs on /run, and the host's /proc, /sys, /dev, resolv.conf and CA
# bundle (pip reaches PyPI through the host's network and trusts what the host's pip
# does). The environment is emptied but for a few variables (CI, TERM, the index, proxies).
# kegpackd is installed editable from a staging copy of pyproject.toml whose kegpackd/ links
# to /mnt/src/kegpackd, so the checkout is never written to and the tests import the code
# as it is now.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOTFS=$(realpath -m -- "${KEGPACK_PY313_ROOTFS:-/var/cache/kegpack-testenv/trixie-python}")
STATE=$(realpath -m -- "${KEGPACK_PY313_DIR:-/tmp/kegpack-py313}")
# procps: the unit's ExecReload runs /bin/kill, which systemd-analyze verify looks for;
# git: tests/test_wheel.py lists the files of the checkout with git ls-files.
PACKAGES=python3,python3-venv,ca-certificates,prometheus,systemd,openssl,procps,git

# What the tests may see of the caller's environment (the index and proxies pip may need).
PASSED_ENV='CI|TERM|PIP_INDEX_URL|PIP_EXTRA_INDEX_URL|PIP_TRUSTED_HOST|(https?|no|all)_proxy'
PASSED_ENV+='|(HTTPS?|NO|ALL)_PROXY'

log() { printf 'py313: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The Debian mirror the host's apt uses, else deb.debian.org (as scripts/testenv.sh).
debian_mirror() {
    local url=${KEGPACK_DEBIAN_MIRROR:-}
    if [[ -z $url ]]; then
        url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            /etc/apt/sources.list.d/*.sources 2>/dev/null |
            sed -nE -e 's/^URIs:[[:space:]]+//p' \
                -e 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' |
            tr ' ' '\n' | grep -E '^https?://[^[:space:]]*/debian/?$' | head -n 1 || true)
    fi
    echo "${url:-http://deb.debian.org/debian}"
}

# A root made for another package list is made again.
rootfs_ready() {
    [[ -x $ROOTFS/usr/bin/python3 &&
        $(cat "$ROOTFS/.kegpack-packages" 2>/dev/null) == "$PACKAGES" ]]
}

# Built under a lock into a .partial directory that only a whole build replaces the cache
# with; no daemon a maintainer script started (prometheus) may stay running in there.
ensure_rootfs() {
    rootfs_ready && return 0
    command -v debootstrap >/dev/null || die "debootstrap not found: run scripts/testenv.sh install"
    local parent tmp mirror pid
    parent=$(dirname "$ROOTFS")
    mkdir -p "$parent"
    exec 7>>"$parent/.py313-lock"
    flock -w 600 7 || die "another scripts/py313.sh holds $parent/.py313-lock"
    if ! rootfs_ready; then
        mirror=$(debian_mirror)
        tmp=$ROOTFS.partial
        rm -rf --one-file-system "$tmp"
        log "debootstrapping Debian 13 with $PACKAGES into $ROOTFS (from $mirror)"
        debootstrap --variant=minbase --include="$PACKAGES" trixie "$tmp" "$mirror" \
            >"$parent/debootstrap-py313.log" 2>&1 || {
            tail -n 20 "$parent/debootstrap-py313.log" >&2
            die "debootstrap failed; the whole log is $parent/debootstrap-py313.log"
        }
        for pid in /proc/[0-9]*; do
            if [[ $(readlink "$pid/root" 2>/dev/null) == "$tmp" ]]; then
                kill -KILL "${pid#/proc/}" 2>/dev/null || true
            fi
        done
        echo "$PACKAGES" >"$tmp/.kegpack-packages"
        rm -rf --one-file-system "$ROOTFS"
        mv "$tmp" "$ROOTFS"
    fi
    exec 7>&-
}

# Run inside the new mount namespace: $1 rootfs, $2 mount point, $3 checkout, $4 state
# dir, then the command to run chrooted.
# shellcheck disable=SC2016 # expanded by the inner shell
NS_SCRIPT='set -eu
rootfs=$1 root=$2 src=$3 state=$4; shift 4
mount --bind "$rootfs" "$root"
mount -o remount,bind,ro "$root"
mount --rbind /proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
mount -t tmpfs -o mode=755 tmpfs "$root/mnt"
mkdir "$root/mnt/src" "$root/mnt/state"
mount --bind "$src" "$root/mnt/src"
mount -o remount,bind,ro "$root/mnt/src"
mount --bind "$state" "$root/mnt/state"
mount --bind "$state/tmp" "$root/tmp"
for file in /etc/resolv.conf /etc/ssl/certs/ca-certificates.crt; do
    if [ -e "$file" ] && [ -f "$root$file" ]; then
        mount --bind "$(realpath "$file")" "$root$file"
    fi
done
exec chroot "$root" "$@"'

# Run chrooted: the venv made again if its stamp is stale, then pytest.
# shellcheck disable=SC2016 # expanded by the inner shell
INNER_SCRIPT='set -eu
venv=/mnt/state/venv project=/mnt/state/project
stamp="$(sha256sum /mnt/src/pyproject.toml | cut -d" " -f1) $(python3 -V)"
if [ "$(cat "$venv/.kegpack-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "py313: making $venv with $(python3 -V)" >&2
    rm -rf "$venv" "$project"
    mkdir -p "$project"
    cp /mnt/src/pyproject.toml /mnt/src/README.md "$project/"
    ln -s /mnt/src/kegpackd "$project/kegpackd"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q -e "$project[test]"
    echo "$stamp" >"$venv/.kegpack-stamp"
fi
cd /mnt/src
exec "$venv/bin/python" -m pytest -p no:cacheprovider -m "not engine" "$@"'

main() {
    ((EUID == 0)) || die "must run as root (mounts and chroot)"
    ensure_rootfs
    mkdir -p "$STATE/root" "$STATE/pip-cache"
    exec 6>>"$STATE/.lock"
    flock -w 600 6 || die "another scripts/py313.sh holds $STATE/.lock"
    rm -rf --one-file-system "$STATE/tmp"
    mkdir -m 1777 "$STATE/tmp"
    local -a keep=(PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin
        HOME=/tmp LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1
        PIP_CACHE_DIR=/mnt/state/pip-cache PIP_DISABLE_PIP_VERSION_CHECK=1
        PIP_CERT=/etc/ssl/certs/ca-certificates.crt
        HYPOTHESIS_STORAGE_DIRECTORY=/mnt/state/hypothesis)
    local name
    while IFS= read -r name; do
        keep+=("$name=${!name}")
    done < <(compgen -e | grep -E "^($PASSED_ENV)\$" || true)
    local status=0
    unshare --mount --propagation private -- \
        sh -c "$NS_SCRIPT" ns "$ROOTFS" "$STATE/root" "$REPO_ROOT" "$STATE" \
        /usr/bin/env -i "${keep[@]}" /bin/sh -c "$INNER_SCRIPT" inner "$@" || status=$?
    rm -rf --one-file-system "$STATE/tmp"
    return "$status"
}

main "$@"
