#!/usr/bin/env bash
# sid-binary.sh PACKAGE FILE TARGET: install FILE of Debian sid's PACKAGE at TARGET, unless
# TARGET is there already, without touching the host's apt sources (a private sources list,
# lists and cache in a temp dir). Debian 12 lacks two things the tests drive:
#   docker-cli      usr/bin/docker -> /usr/local/bin/docker: a current docker CLI (28.5;
#                   these machines ship 28.2.2 there) for tests/test_plugin.py, beside
#                   Debian 12's 20.10 at /usr/bin/docker
#   docker-compose  usr/libexec/docker/cli-plugins/docker-compose ->
#                   /usr/local/lib/docker/cli-plugins/docker-compose: Compose v2 (2.40, a
#                   static Go binary) as a docker CLI plugin, the Compose the tests use;
#                   Compose v1 (/usr/bin/docker-compose, 1.29) stays for the one v1 test
set -euo pipefail
(($# == 3)) || { echo "usage: $0 PACKAGE FILE TARGET" >&2; exit 2; }
PACKAGE=$1 FILE=$2 TARGET=$3
[[ -x $TARGET ]] && exit 0
MIRROR=${KEGPACK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb $MIRROR sid main" >"$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
apt-get -qq "${apt_opts[@]}" update
(cd "$work" && apt-get -qq "${apt_opts[@]}" download "$PACKAGE")
dpkg-deb -x "$work/$PACKAGE"_*.deb "$work/root"
[[ -f $work/root/$FILE ]] || { echo "sid-binary: no $FILE in $PACKAGE" >&2; exit 1; }
install -D -m 0755 "$work/root/$FILE" "$TARGET"
echo "sid-binary: installed $PACKAGE's $FILE at $TARGET" >&2
