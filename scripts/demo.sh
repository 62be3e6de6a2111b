#!/usr/bin/env bash
# End-to-end demo of `kegpackd package` on the private test engine (run by `make demo`).
#
# Brings up the private dockerd and the two local registries (scripts/testenv.sh), starts
# a labelled container with a bind mount, packages it with kegpackd, pushes it to the
# password-protected registry on 127.0.0.1:5001, runs the packaged image without any mount
# to show the files travelled with it, and contrasts that with a plain `docker commit`.
#
# Everything the demo creates (containers, images, the pushed manifest, temp dirs) is removed
# on exit. The engine and registries stay up for the next run; `make down` stops them.
# Needs root, like scripts/testenv.sh. Every container runs with --network none.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_ROOT"
PYTHON=${PYTHON:-python3}

if [[ -t 1 ]]; then
    BOLD=$'\e[1m' RESET=$'\e[0m'
else
    BOLD="" RESET=""
fi

section() { printf '\n%s==== %s%s\n' "$BOLD" "$*" "$RESET"; }
say() { printf '%s\n' "$*"; }
# quoted ARG...: the arguments as a shell would need them typed
quoted() {
    local arg out=()
    for arg; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+=("$arg")
        else
            out+=("'${arg//\'/\'\\\'\'}'")
        fi
    done
    printf '%s' "${out[*]}"
}
# show CMD...: print a command, then run it
show() {
    printf '$ %s\n' "$(quoted "$@")"
    "$@"
}

# ------------------------------------------------------------------ prerequisites

static_busybox() { [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; }

section "prerequisites"
missing=()
for tool in dockerd docker docker-registry htpasswd; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
static_busybox || missing+=("static /bin/busybox")
if ((${#missing[@]})); then
    say "missing: ${missing[*]} -> scripts/testenv.sh install"
    scripts/testenv.sh install
else
    say "dockerd, docker, docker-registry, htpasswd and a static busybox are installed"
fi
if "$PYTHON" -c 'import kegpackd.cli' 2>/dev/null; then
    say "kegpackd is importable by $PYTHON"
else
    say "kegpackd is not importable -> $PYTHON -m pip install -e ."
    "$PYTHON" -m pip install -q -e .
fi

section "private engine and registries (scripts/testenv.sh up)"
eval "$(scripts/testenv.sh up)"
say "DOCKER_HOST=$DOCKER_HOST"
say "registry with auth: $KEGPACK_TEST_AUTH_REGISTRY (user ci, password in $KEGPACK_TEST_AUTH_PASSWORD_FILE)"
say "base image: $KEGPACK_TEST_BASE_IMAGE"

REGISTRY=$KEGPACK_TEST_AUTH_REGISTRY
PASSWORD_FILE=$KEGPACK_TEST_AUTH_PASSWORD_FILE
SUFFIX=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
CONTAINER=kegpack-demo-$SUFFIX
REPO_PATH=demo/$CONTAINER

# ------------------------------------------------------------------ cleanup

WORKDIR=""
CONTAINER_CREATED=""
COMMITTED_IMAGE=""
DIGESTS=()

# registry METHOD PATH: an authenticated request to the demo registry; prints the body.
# The password goes to curl on stdin (or is read by Python), never on a command line.
registry() {
    local method=$1 path=$2 password
    if command -v curl >/dev/null; then
        password=$(<"$PASSWORD_FILE")
        password=${password//\\/\\\\}
        printf 'user = "ci:%s"\n' "${password//\"/\\\"}" |
            curl -sS -f -K - -X "$method" "http://$REGISTRY$path"
    else
        "$PYTHON" - "$method" "http://$REGISTRY$path" "$PASSWORD_FILE" <<'EOF'
import base64, sys, urllib.request
method, url, password_file = sys.argv[1:]
with open(password_file, encoding="utf-8") as f:
    password = f.read().rstrip("\r\n")
token = base64.b64encode(f"ci:{password}".encode()).decode()
request = urllib.request.Request(url, method=method, headers={"Authorization": f"Basic {token}"})
with urllib.request.urlopen(request, timeout=30) as response:
    sys.stdout.write(response.read().decode())
EOF
    fi
}

cleanup() {
    local status=$? ref digest
    trap - EXIT INT TERM
    set +e
    section "cleanup"
    if [[ -n $CONTAINER_CREATED ]]; then
        if docker container inspect "$CONTAINER" >/dev/null 2>&1; then
            docker rm -f -v "$CONTAINER" >/dev/null && say "removed container $CONTAINER"
        else
            say "container $CONTAINER is already gone"
        fi
    fi
    # Every local tag of the demo repository (all tags kegpackd applied, even after a
    # failed push); removing the last tag also removes the image's untagged parent.
    while read -r ref; do
        [[ -n $ref ]] || continue
        docker rmi "$ref" >/dev/null && say "removed image $ref"
    done < <(docker images --format '{{.Repository}}:{{.Tag}}' | grep -F "$REGISTRY/$REPO_PATH:")
    if [[ -n ${DAEMON_PID:-} ]]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID"
    fi
    if [[ -n ${DAEMON_CONTAINER:-} ]]; then
        docker rm -f -v "$DAEMON_CONTAINER" >/dev/null 2>&1 && say "removed container $DAEMON_CONTAINER"
        while read -r ref; do
            [[ -n $ref ]] && docker rmi "$ref" >/dev/null && say "removed image $ref"
        done < <(docker images --format '{{.Repository}}:{{.Tag}}' "kegpack-demo/$DAEMON_CONTAINER")
    fi
    if [[ -n $COMMITTED_IMAGE ]]; then
        docker rmi "$COMMITTED_IMAGE" >/dev/null && say "removed image ${COMMITTED_IMAGE#sha256:} (docker commit)"
    fi
    for digest in "${DIGESTS[@]}"; do
        if registry DELETE "/v2/$REPO_PATH/manifests/$digest" >/dev/null 2>&1; then
            say "deleted manifest $digest from $REGISTRY/$REPO_PATH"
        fi
    done
    if [[ -n $WORKDIR ]]; then
        rm -rf "$WORKDIR" && say "removed $WORKDIR"
    fi
    say "the private engine and registries are still running; stop them with: make down"
    if ((status == 130 || status == 143)); then
        say "demo interrupted" >&2
    elif ((status != 0)); then
        say "demo FAILED (exit status $status)" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ the source container

section "a container with a bind mount"
WORKDIR=$(mktemp -d /tmp/kegpack-demo.XXXXXX)
mkdir "$WORKDIR/keg"
cat >"$WORKDIR/keg/app.sh" <<'EOF'
#!/bin/sh
echo "app.sh running from the image; data.txt says: $(cat /keg/data.txt)"
EOF
chmod 755 "$WORKDIR/keg/app.sh"
printf 'brewed %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$WORKDIR/keg/data.txt"
say "host directory $WORKDIR/keg:"
ls -l "$WORKDIR/keg"
echo
CONTAINER_CREATED=1
show docker run -d --network none -l kegpack.package=true -v "$WORKDIR/keg:/keg" \
    --name "$CONTAINER" "$KEGPACK_TEST_BASE_IMAGE" sh -c 'sleep 3600'

# ------------------------------------------------------------------ kegpackd

section "kegpackd config"
toml_string() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}
CONFIG=$WORKDIR/kegpackd.toml
cat >"$CONFIG" <<EOF
[packaging]
repository = "$REGISTRY/demo/{name}"
tags = ["{date}-{time}", "latest"]
push = true

[registries]
allowed = ["$REGISTRY"]

[registries.auth."$REGISTRY"]
username = "ci"
password_file = $(toml_string "$PASSWORD_FILE")
EOF
say "$CONFIG:"
sed 's/^/    /' "$CONFIG"

section "kegpackd package"
printf '$ %s\n' "$(quoted "$PYTHON" -m kegpackd package "$CONTAINER" -c "$CONFIG")"
OUTPUT=$("$PYTHON" -m kegpackd package "$CONTAINER" -c "$CONFIG")
say "stdout (reference and pushed digest, one line per tag):"
say "$OUTPUT" | sed 's/^/    /'
REFS=()
while read -r ref digest; do
    REFS+=("$ref")
    [[ -z $digest ]] || DIGESTS+=("$digest")
done <<<"$OUTPUT"
REF=${REFS[0]}
if ((${#DIGESTS[@]})); then
    mapfile -t DIGESTS < <(printf '%s\n' "${DIGESTS[@]}" | sort -u)
fi

section "the packaged image, run without any mount"
show docker run --rm --network none "$REF" ls -l /keg
show docker run --rm --network none "$REF" cat /keg/data.txt
show docker run --rm --network none "$REF" /keg/app.sh
echo
say "its labels (kegpack.package removed, provenance added):"
docker image inspect --format '{{range $k, $v := .Config.Labels}}    {{$k}}={{$v}}{{println}}{{end}}' "$REF" |
    sed '/^$/d'

section "for comparison: plain docker commit"
printf '$ docker commit %s\n' "$CONTAINER"
COMMITTED_IMAGE=$(docker commit "$CONTAINER")
say "$COMMITTED_IMAGE"
printf '$ docker run --rm --network none %s ls -A /keg\n' "${COMMITTED_IMAGE#sha256:}"
listing=$(docker run --rm --network none "$COMMITTED_IMAGE" ls -A /keg)
if [[ -z $listing ]]; then
    say "(empty: docker commit does not include bind mounts or volumes)"
else
    say "$listing"
    say "unexpected: /keg is not empty in the committed image" >&2
    exit 1
fi

section "the registry's tag list"
say "GET http://$REGISTRY/v2/$REPO_PATH/tags/list"
TAGS=$(registry GET "/v2/$REPO_PATH/tags/list")
say "$TAGS"

# ------------------------------------------------------------------ the daemon

section "the daemon: kegpackd run packages a labelled container as it starts"
DAEMON_CONFIG=$WORKDIR/daemon.toml
DAEMON_PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$DAEMON_CONFIG" <<EOF2
[packaging]
repository = "kegpack-demo/{name}"
tags = ["{date}-{time}"]
[http]
listen = "127.0.0.1:$DAEMON_PORT"
EOF2
sed 's/^/    /' "$DAEMON_CONFIG"
printf '$ %s &\n' "$(quoted "$PYTHON" -m kegpackd run -c "$DAEMON_CONFIG")"
"$PYTHON" -m kegpackd run -c "$DAEMON_CONFIG" 2>"$WORKDIR/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do
    grep -q "ready" "$WORKDIR/daemon.log" && break
    sleep 0.1
done
DAEMON_CONTAINER=$CONTAINER-daemon
show docker run -d --network none -l kegpack.package=true -v "$WORKDIR/keg:/keg" \
    --name "$DAEMON_CONTAINER" "$KEGPACK_TEST_BASE_IMAGE" sh -c 'sleep 3600'
for _ in $(seq 300); do
    grep -q "job succeeded" "$WORKDIR/daemon.log" && break
    sleep 0.1
done
show "$PYTHON" -m kegpackd jobs -c "$DAEMON_CONFIG"
DAEMON_REF=$(docker images --format '{{.Repository}}:{{.Tag}}' "kegpack-demo/$DAEMON_CONTAINER" | head -1)
if [[ -z $DAEMON_REF ]]; then
    say "the daemon produced no image:" >&2
    cat "$WORKDIR/daemon.log" >&2
    exit 1
fi
show docker run --rm --network none "$DAEMON_REF" cat /keg/data.txt
kill -TERM "$DAEMON_PID"
wait "$DAEMON_PID" && say "daemon stopped on SIGTERM with exit status 0; its log:"
DAEMON_PID=
sed 's/^/    /' "$WORKDIR/daemon.log"

section "done"
say "packaged $CONTAINER into:"
printf '    %s\n' "${REFS[@]}"
