#!/usr/bin/env bash
# Compose v2 as a docker CLI plugin, for tests/test_compose_deploy.py (deploy/compose.yaml
# needs Compose v2.23.1 or newer: inline configs). Debian 12 ships only Compose v1 (1.29,
# /usr/bin/docker-compose, which the other tests use and which stays). Where the plugin is
# missing, this takes the binary of Debian sid's `docker-compose` package (2.40, a static Go
# binary that runs on bookworm) without touching the host's apt sources: a private sources
# list, lists and cache in a temp dir, as scripts/docker-cli.sh does.
set -euo pipefail
TARGET=/usr/local/lib/docker/cli-plugins/docker-compose
[[ -x $TARGET ]] && exit 0
MIRROR=${KEGPACK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb $MIRROR sid main" >"$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache")
apt-get -qq "${apt_opts[@]}" update
(cd "$work" && apt-get -qq "${apt_opts[@]}" download docker-compose)
dpkg-deb -x "$work"/docker-compose_*.deb "$work/root"
# The package puts the plugin under /usr/libexec/docker/cli-plugins (and a v1-style
# /usr/bin/docker-compose link to it, which is left out here).
plugin=$(find "$work/root" -type f -name docker-compose -path '*cli-plugins*' | head -n 1)
[[ -n $plugin ]] || { echo "compose-v2: no cli-plugins/docker-compose in the package" >&2; exit 1; }
install -D -m 0755 "$plugin" "$TARGET"
echo "compose-v2: installed $("$TARGET" version) at $TARGET" >&2
