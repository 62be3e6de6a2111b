#!/usr/bin/env bash
# A current docker CLI at /usr/local/bin/docker for the tests that drive the real CLI
# (tests/test_plugin.py runs `docker kegpack` under it and under Debian 12's 20.10 at
# /usr/bin/docker). These machines ship 28.2.2 there; where it is missing, this takes the
# docker CLI of Debian sid's `docker-cli` package (28.5, static but for libc) without
# touching the host's apt sources: a private sources list, lists and cache in a temp dir.
set -euo pipefail
TARGET=/usr/local/bin/docker
[[ -x $TARGET ]] && exit 0
MIRROR=${KEGPACK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb $MIRROR sid main" >"$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
apt-get -qq "${apt_opts[@]}" update
(cd "$work" && apt-get -qq "${apt_opts[@]}" download docker-cli)
dpkg-deb -x "$work"/docker-cli_*.deb "$work/root"
install -m 0755 "$work/root/usr/bin/docker" "$TARGET"
echo "docker-cli: installed $("$TARGET" --version) at $TARGET" >&2
