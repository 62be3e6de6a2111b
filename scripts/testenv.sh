#!/usr/bin/env bash
# A private Docker engine and two local registries for the kegpackd test suite.
#
#   scripts/testenv.sh install           install the Debian packages it needs
#   scripts/testenv.sh up                start what is not running, print env lines
#   scripts/testenv.sh env               print the env lines: eval "$(scripts/testenv.sh env)"
#   scripts/testenv.sh status            say what runs
#   scripts/testenv.sh restart-engine    stop and start dockerd only
#   scripts/testenv.sh down [--purge]    stop everything; --purge also deletes the state dir
#   scripts/testenv.sh app-image         build kegpack-test/redis:latest (Debian 12's
#                                        redis-server, from a cached debootstrap root)
#   scripts/testenv.sh python-image      build kegpack-test/python:3.11 (Debian 12's python3,
#                                        the same way), the base deploy/Dockerfile's test uses
#   scripts/testenv.sh pg-image          build kegpack-test/postgres:latest (Debian 12's PostgreSQL 15)
#
# Everything lives in ${KEGPACK_TESTENV_DIR:-<repo>/.testenv}. Registry ports come from
# KEGPACK_REGISTRY_PORT / KEGPACK_AUTH_REGISTRY_PORT, else the port this state dir used
# last, else 5000 / 5001; so two clones can run side by side on different ports.
#
# Storage driver: overlay2, verified working in the Debian 12 sandbox (ext4 root, kernel
# 6.18). vfs is used only when a test overlay mount fails on the state dir's filesystem
# (e.g. a state dir on overlayfs), or when KEGPACK_STORAGE_DRIVER says so.
#
# Engine flavour, KEGPACK_ENGINE (recorded in the state dir on first `up`):
#   graph (default)  the host's dockerd (Debian 12, 20.10) with a graph driver (overlay2)
#   containerd       Debian 13's dockerd 26 with the containerd image store, run in a
#                    mount namespace of its own pivoted onto a debootstrapped trixie rootfs
#                    (cached in $KEGPACK_ROOTFS_CACHE, default
#                    /var/cache/kegpack-testenv/trixie-docker, shared read-only by every
#                    containerd-flavour state dir; see ENGINE_NS_SCRIPT). Its registries
#                    default to ports 5010 / 5011 and its TLS listener to 2386, so it can
#                    run beside a graph env. The engine sees the state dir as /kegpack, /tmp
#                    (where tests keep bind mount sources) as /tmp, and the host's /proc,
#                    /sys and /dev; those mounts exist only in its namespace.
#   docker28         Debian sid's dockerd 28.5 with the containerd image store, run the same
#                    way on a debootstrapped sid rootfs (default cache
#                    /var/cache/kegpack-testenv/sid-docker); registries on 5020 / 5021, TLS
#                    on 2396.
#   docker28-graph   the same sid rootfs and dockerd 28.5 with the overlay2 graph driver
#                    (the containerd store off); registries on 5030 / 5031, TLS on 2406.
#   podman           Debian sid's Podman 5.8 and its Docker-compatible API
#                    (`podman system service`), rootful, on a sid rootfs of its own (default
#                    cache /var/cache/kegpack-testenv/sid-podman) run the same way, with runc
#                    and cgroupfs (crun refuses the sandbox's hybrid cgroups), overlay
#                    storage in the state dir and its own containers.conf, storage.conf and
#                    registries.conf there; registries on 5040 / 5041. No TLS listener.
# The last three are the "namespaced" flavours below: only the rootfs (suite) and the image
# store differ between them.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=$(realpath -m -- "${KEGPACK_TESTENV_DIR:-$REPO_ROOT/.testenv}")

log() { printf 'testenv: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The flavour this state dir was made with wins over the default; a different explicit
# KEGPACK_ENGINE is an error (its images and data would not be the other flavour's).
RECORDED_ENGINE=$(cat "$STATE/engine" 2>/dev/null || true)
ENGINE=${KEGPACK_ENGINE:-${RECORDED_ENGINE:-graph}}
case $ENGINE in
    graph | containerd | docker28 | docker28-graph | podman) ;;
    *) die "KEGPACK_ENGINE must be graph, containerd, docker28, docker28-graph or podman," \
        "not '$ENGINE'" ;;
esac
if [[ -n $RECORDED_ENGINE && $RECORDED_ENGINE != "$ENGINE" ]]; then
    die "$STATE was made for the $RECORDED_ENGINE engine, not $ENGINE; use another" \
        "KEGPACK_TESTENV_DIR (or down --purge it first)"
fi

# Containerd flavour: the chroot's mount point, the read-only rootfs bound onto it, and
# where the state dir appears inside it. The engine's own paths (flags, argv, socket
# addresses) are the in-chroot ones, ENGINE_STATE; the host reaches them under $STATE.
# NAMESPACED is 1 for every flavour but graph; SUITE is the Debian suite of its rootfs and
# IMAGE_STORE the engine's image store (containerd, or graph for a graph driver).
CHROOT=$STATE/root
CHROOT_STATE=/kegpack
NAMESPACED=1 SUITE="" IMAGE_STORE=containerd
case $ENGINE in
    graph) NAMESPACED=0 IMAGE_STORE=graph DEFAULT_PORTS=(5000 5001 2376) ;;
    containerd) SUITE=trixie DEFAULT_PORTS=(5010 5011 2386) ;;
    docker28) SUITE=sid DEFAULT_PORTS=(5020 5021 2396) ;;
    docker28-graph) SUITE=sid IMAGE_STORE=graph DEFAULT_PORTS=(5030 5031 2406) ;;
    podman) SUITE=sid IMAGE_STORE=podman DEFAULT_PORTS=(5040 5041 2416) ;;
esac
# The engine's binary in the rootfs, and the packages debootstrap puts there.
ENGINE_BINARY=/usr/sbin/dockerd ROOTFS_PACKAGES=docker.io,ca-certificates ROOTFS_KIND=docker
if [[ $ENGINE == podman ]]; then
    ENGINE_BINARY=/usr/bin/podman ROOTFS_PACKAGES=podman,runc,conmon,ca-certificates
    ROOTFS_KIND=podman
fi
ROOTFS_CACHE=$(realpath -m -- "${KEGPACK_ROOTFS_CACHE:-/var/cache/kegpack-testenv/${SUITE:-trixie}-$ROOTFS_KIND}")
if ((NAMESPACED)); then
    ENGINE_STATE=$CHROOT_STATE
    ENGINE_MNTNS=$STATE/engine-mntns
else
    ENGINE_STATE=$STATE
    ENGINE_MNTNS=""
fi

SOCK=$STATE/docker.sock
DATA=$STATE/data
EXEC=$STATE/exec
ENGINE_EXEC=$ENGINE_STATE/exec
CONTAINERD_SOCK=$ENGINE_EXEC/containerd/containerd.sock
DOCKERD_PIDFILE=$STATE/dockerd.pid
DOCKERD_LOG=$STATE/dockerd.log
HTPASSWD=$STATE/auth-registry.htpasswd
PASSWORD_FILE=$STATE/auth-registry.password

BASE_IMAGE=kegpack-test/busybox:latest
AUTH_USER=ci
AUTH_PASSWORD=kegpack-test-password
SYSTEM_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENGINE_TIMEOUT=60
REGISTRY_TIMEOUT=30
STOP_TIMEOUT=30
# The longest sockets under the state dir are $EXEC/containerd/containerd-debug.sock and
# containerd.sock.ttrpc (state dir + 38 bytes); sun_path holds 107 bytes plus the NUL.
MAX_STATE_LEN=64

TLS=$STATE/tls
TLS_PORT=${KEGPACK_TLS_PORT:-${DEFAULT_PORTS[2]}}

# Paths as the engine sees them: the same as the host's for graph, under /kegpack in the
# containerd flavour's chroot (where the socket is /kegpack/docker.sock = $SOCK).
DOCKERD_FLAGS=(
    "--host=unix://$ENGINE_STATE/docker.sock"
    # A TLS listener on loopback, for the tests of kegpackd against a remote engine.
    "--host=tcp://127.0.0.1:$TLS_PORT" --tlsverify
    "--tlscacert=$ENGINE_STATE/tls/ca.pem" "--tlscert=$ENGINE_STATE/tls/server-cert.pem"
    "--tlskey=$ENGINE_STATE/tls/server-key.pem"
    "--data-root=$ENGINE_STATE/data"
    "--exec-root=$ENGINE_EXEC"
    "--pidfile=$ENGINE_STATE/dockerd.pid"
    # Our own config, so /etc/docker/daemon.json cannot leak in (see write_daemon_json).
    "--config-file=$ENGINE_STATE/daemon.json"
    --bridge=none --iptables=false --ip-forward=false --ip-masq=false
)

# The script's own docker calls must reach our engine only, whatever the caller's env says.
unset DOCKER_CONTEXT DOCKER_TLS_VERIFY DOCKER_CERT_PATH DOCKER_API_VERSION
export DOCKER_HOST=unix://$SOCK
DOCKER=docker

die_with_log() {
    local logfile=$1; shift
    log "error: $*"
    if [[ -s $logfile ]]; then
        log "last lines of $logfile:"
        tail -n 25 "$logfile" | sed 's/^/    /' >&2
    fi
    exit 1
}

dk() { "$DOCKER" "$@"; }

# ---------------------------------------------------------------- processes

# alive PID: the process exists and is not a zombie
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# find_pids EXE [ARG]: pids of processes named EXE (that have ARG as one exact argument)
find_pids() {
    local exe=$1 dir
    local -a args
    for dir in /proc/[0-9]*; do
        mapfile -d '' -t args 2>/dev/null <"$dir/cmdline" || continue
        [[ ${#args[@]} -gt 0 && ${args[0]##*/} == "$exe" ]] || continue
        if (($# == 1)) || has_arg "$2" "${args[@]:1}"; then
            echo "${dir#/proc/}"
        fi
    done
}

# find_our_pids EXE ARG: find_pids, and in the containerd flavour only the processes in
# our engine's mount namespace (every such env's engine has the same in-namespace argv).
find_our_pids() {
    local pid ns=""
    if [[ -n $ENGINE_MNTNS ]]; then
        ns=$(cat "$ENGINE_MNTNS" 2>/dev/null) || return 0
        [[ -n $ns ]] || return 0
    fi
    for pid in $(find_pids "$@"); do
        if [[ -z $ns || $(readlink "/proc/$pid/ns/mnt" 2>/dev/null) == "$ns" ]]; then
            echo "$pid"
        fi
    done
    return 0
}

has_arg() {
    local want=$1 arg; shift
    for arg; do [[ $arg == "$want" ]] && return 0; done
    return 1
}

# stop_pids NAME PID...: SIGTERM, bounded wait, then SIGKILL
stop_pids() {
    local name=$1 pid deadline=$((SECONDS + STOP_TIMEOUT)); shift
    (($#)) || return 0
    log "stopping $name (pid $*)"
    kill -TERM "$@" 2>/dev/null || true
    for pid in "$@"; do
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.2; done
        if alive "$pid"; then
            log "$name (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT}s: sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while alive "$pid"; do sleep 0.1; done
        fi
    done
}

# launch LOG CMD...: start a daemon in its own session, detached from our stdio, so that
# `eval "$(testenv.sh up)"` does not wait on it and it has no fd of ours (the lock).
launch() {
    local logfile=$1; shift
    printf '\n==== %s testenv: %s\n' "$(date -Is)" "$*" >>"$logfile"
    env -i PATH="$SYSTEM_PATH" HOME=/root setsid "$@" </dev/null >>"$logfile" 2>&1 9>&- &
    LAUNCHED_PID=$!
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# http_status PORT PATH: the status code a plain GET on 127.0.0.1:PORT answers
http_status() {
    # shellcheck disable=SC2016 # the inner script expands its own $0 $1
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\n\r\n" "$1" "$0" >&3
        read -r _ code _ <&3 && printf %s "$code"' "$1" "$2" 2>/dev/null
}

# ---------------------------------------------------------------- state dir

check_state_path() {
    [[ $STATE != *[[:space:]]* ]] || die "state dir '$STATE' contains whitespace"
    ((${#STATE} <= MAX_STATE_LEN)) || die "state dir $STATE is ${#STATE} bytes long;" \
        "unix sockets under it would exceed the 108-byte limit. Set KEGPACK_TESTENV_DIR" \
        "to a path of at most $MAX_STATE_LEN bytes (e.g. /tmp/kegpack-testenv)."
    [[ $STATE != / && $STATE != "$REPO_ROOT" ]] || die "refusing to use $STATE as state dir"
}

# Serialises concurrent up/down/restart calls on one state dir.
prepare_state() {
    ((EUID == 0)) || die "must run as root (dockerd needs it)"
    check_state_path
    mkdir -p "$STATE"
    exec 9>>"$STATE/.lock"
    flock -w 300 9 || die "another testenv.sh holds $STATE/.lock"
}

require_tools() {
    local tool
    for tool in dockerd docker-registry htpasswd busybox openssl "$DOCKER"; do
        command -v "$tool" >/dev/null || die "$tool not found: run scripts/testenv.sh install"
    done
}

# mounts_under_state: mount points at or under the state dir, deepest first
mounts_under_state() {
    awk -v s="$STATE" '$5 == s || index($5, s "/") == 1 { print $5 }' /proc/self/mountinfo |
        sort -r
}

unmount_state() {
    local mnt
    # Were a copy of the host's /proc, /sys, /dev or /tmp under the chroot still a peer of
    # the original, unmounting it would unmount the host's: make them slaves first.
    if ((NAMESPACED)) && mountpoint -q "$CHROOT"; then
        mount --make-rslave "$CHROOT"
    fi
    while read -r mnt; do
        [[ -n $mnt ]] || continue
        log "unmounting $mnt"
        umount "$mnt" 2>/dev/null || umount -l "$mnt"
    done < <(mounts_under_state)
}

# ---------------------------------------------------------------- engine

engine_pids() {
    if [[ $ENGINE == podman ]]; then
        find_our_pids podman "unix://$ENGINE_STATE/docker.sock"
    else
        find_our_pids dockerd "--exec-root=$ENGINE_EXEC"
    fi
}

overlay_works() {
    local dir ok=1
    dir=$(mktemp -d "$STATE/overlay-probe.XXXXXX")
    mkdir "$dir"/{lower,upper,work,merged}
    if mount -t overlay overlay \
        -o "lowerdir=$dir/lower,upperdir=$dir/upper,workdir=$dir/work" "$dir/merged" 2>/dev/null; then
        touch "$dir/merged/probe" && ok=0
        umount "$dir/merged"
    fi
    rm -rf "$dir"
    return "$ok"
}

# The choice is recorded so that later runs find their images in the same driver.
storage_driver() {
    local recorded=$STATE/storage-driver
    if [[ -n ${KEGPACK_STORAGE_DRIVER:-} ]]; then
        echo "$KEGPACK_STORAGE_DRIVER"
    elif [[ -s $recorded ]]; then
        cat "$recorded"
    elif overlay_works; then
        echo overlay2 | tee "$recorded"
    else
        log "overlay mounts fail on $(stat -f -c %T "$STATE") here: falling back to the" \
            "vfs storage driver (slower, full copy per layer)"
        echo vfs | tee "$recorded"
    fi
}

# Remove what a killed dockerd leaves behind: its containers, their shims, its managed
# containerd, and their mounts. Everything is matched by this instance's own paths.
kill_engine_leftovers() {
    [[ $ENGINE != podman ]] || kill_podman_containers
    local runc_root=$EXEC/runtime-runc/moby id pid
    local -a runc=(runc --root "$runc_root")
    if [[ -d $runc_root ]]; then
        for id in $("${runc[@]}" list -q 2>/dev/null); do
            log "killing leftover container $id"
            "${runc[@]}" delete --force "$id" 2>/dev/null || true
        done
    fi
    for pid in $(find_our_pids containerd-shim-runc-v2 "$CONTAINERD_SOCK"); do
        remove_shim_socket "$pid"
        kill -KILL "$pid" 2>/dev/null || true
    done
    # shellcheck disable=SC2046 # pids are words
    stop_pids "managed containerd" \
        $(find_our_pids containerd "$ENGINE_EXEC/containerd/containerd.toml")
    # pid 1 of this sandbox does not reap orphans: a killed containerd stays a zombie, and
    # dockerd, seeing its pid "exist", would wait for it instead of starting a new one.
    rm -f "$EXEC/containerd/containerd.pid"
    unmount_state
}

# Podman's containers outlive its API service: each runs under a conmon (in the engine's
# mount namespace) whose children are the container's processes.
kill_podman_containers() {
    local conmon child
    for conmon in $(find_our_pids conmon); do
        for child in $(awk -v p="$conmon" '$4 == p { print $1 }' /proc/[0-9]*/stat 2>/dev/null); do
            kill -KILL "$child" 2>/dev/null || true
        done
        kill -KILL "$conmon" 2>/dev/null || true
    done
}

# A SIGKILLed shim leaves its socket in /run/containerd/s/, named by
# sha256(<containerd socket>/<namespace>/<id>) (containerd 1.6 and 1.7). In the
# containerd flavour that is the chroot's /run, a tmpfs that goes with the chroot anyway.
remove_shim_socket() {
    local -a args
    local i ns=moby id=""
    mapfile -d '' -t args 2>/dev/null <"/proc/$1/cmdline" || return 0
    for ((i = 0; i < ${#args[@]} - 1; i++)); do
        case ${args[i]} in
            -namespace) ns=${args[i + 1]} ;;
            -id) id=${args[i + 1]} ;;
        esac
    done
    # The containerd flavour's /run is a tmpfs in the engine's mount namespace: it goes
    # with the namespace.
    [[ -n $id && $ENGINE == graph ]] || return 0
    rm -f "/run/containerd/s/$(printf %s "$CONTAINERD_SOCK/$ns/$id" |
        sha256sum | cut -d' ' -f1)"
}

engine_answers() { dk version >/dev/null 2>&1; }

# The docker on PATH may be a newer client than this dockerd (API 1.41); it negotiates
# down, but if it ever cannot, fall back to Debian's own client.
pick_client() {
    engine_answers && return 0
    if [[ -x /usr/bin/docker && $(command -v docker) != /usr/bin/docker ]]; then
        DOCKER=/usr/bin/docker
        if engine_answers; then
            log "$(command -v docker) cannot talk to this engine: using /usr/bin/docker"
            return 0
        fi
        DOCKER=docker
    fi
    return 1
}

# dockerd 20.10 would otherwise create its identity key as /etc/docker/key.json, shared
# by every instance; the setting exists only in the config file. dockerd 26 no longer
# makes that key but still accepts the setting (dockerd --validate).
write_daemon_json() {
    if [[ $ENGINE == podman ]]; then
        load_ports
        write_podman_conf
    elif ((NAMESPACED)); then
        # Said either way: dockerd 29 would otherwise default to the containerd store.
        local snapshotter=false
        [[ $IMAGE_STORE == containerd ]] && snapshotter=true
        printf '{"deprecated-key-path": "%s", "features": {"containerd-snapshotter": %s}}\n' \
            "$ENGINE_STATE/key.json" "$snapshotter" >"$STATE/daemon.json"
    else
        printf '{"deprecated-key-path": "%s"}\n' "$STATE/key.json" >"$STATE/daemon.json"
    fi
}

# ---------------------------------------------------------------- containerd flavour

# The Debian mirror the host's apt uses (for debootstrap), else deb.debian.org.
debian_mirror() {
    local url
    url=${KEGPACK_DEBIAN_MIRROR:-}
    if [[ -z $url ]]; then
        url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            /etc/apt/sources.list.d/*.sources 2>/dev/null |
            sed -nE -e 's/^URIs:[[:space:]]+//p' \
                -e 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' |
            tr ' ' '\n' | grep -E '^https?://[^[:space:]]*/debian/?$' | head -n 1 || true)
    fi
    echo "${url:-http://deb.debian.org/debian}"
}

# A $SUITE rootfs with docker.io (trixie: dockerd 26, containerd 1.7; sid: dockerd 28.5,
# containerd 2.1; and runc), built once by debootstrap (~40 s each here)
# and then shared read-only by every state dir of that suite; a partial build never takes
# its place.
ensure_rootfs() {
    if [[ -x $ROOTFS_CACHE$ENGINE_BINARY && -d $ROOTFS_CACHE$CHROOT_STATE ]]; then
        mkdir -p "$ROOTFS_CACHE/.oldroot"
        return 0
    fi
    command -v debootstrap >/dev/null || die "debootstrap not found: run scripts/testenv.sh install"
    local parent tmp mirror pid
    parent=$(dirname "$ROOTFS_CACHE")
    mkdir -p "$parent"
    exec 8>>"$parent/.lock"
    flock -w 600 8 || die "another testenv.sh holds $parent/.lock"
    if [[ ! -x $ROOTFS_CACHE$ENGINE_BINARY || ! -d $ROOTFS_CACHE$CHROOT_STATE ]]; then
        mirror=$(debian_mirror)
        tmp=$ROOTFS_CACHE.partial
        rm -rf --one-file-system "$tmp"
        log "debootstrapping Debian $SUITE with $ROOTFS_PACKAGES into $ROOTFS_CACHE (from $mirror)"
        # The log keeps its old name for trixie (scripts elsewhere may read it).
        local dlog=$parent/debootstrap.log
        [[ $SUITE == trixie ]] || dlog=$parent/debootstrap-$SUITE-$ROOTFS_KIND.log
        debootstrap --variant=minbase "--include=$ROOTFS_PACKAGES" \
            "$SUITE" "$tmp" "$mirror" >"$dlog" 2>&1 || die_with_log "$dlog" "debootstrap failed"
        # No maintainer script may leave a daemon running in there.
        for pid in /proc/[0-9]*; do
            if [[ $(readlink "$pid/root" 2>/dev/null) == "$tmp" ]]; then
                kill -KILL "${pid#/proc/}" 2>/dev/null || true
            fi
        done
        mkdir -p "$tmp$CHROOT_STATE" "$tmp/.oldroot"
        rm -rf --one-file-system "$ROOTFS_CACHE"
        mv "$tmp" "$ROOTFS_CACHE"
    fi
    mkdir -p "$ROOTFS_CACHE/.oldroot"
    exec 8>&-
}

# The containerd flavour's engine runs in a mount namespace of its own (so none of its
# mounts is on the host, and none propagates either way), whose root is pivoted (not
# chrooted) onto the cached rootfs, bound read-only: runc's containers then get their
# rootfs as their namespace's root, so `docker exec` joins them in it (under a mere
# chroot, setns lands an exec'd process at the host's real root). In there: a tmpfs on
# /run (shim sockets, dockerd's run files), the state dir on /kegpack, the host's /tmp
# (tests' bind mount sources), /proc, /sys and /dev. Arguments: rootfs, mount point,
# state dir, then the engine's command line.
# shellcheck disable=SC2016 # expanded by the inner shell
ENGINE_NS_SCRIPT='set -eu
rootfs=$1 root=$2 state=$3; shift 3
mount --bind "$rootfs" "$root"
mount -o remount,bind,ro "$root"
mount -t tmpfs -o mode=0755 kegpack-run "$root/run"
mount --bind "$state" "$root/kegpack"
# Podman keeps a load'"'"'s upload in /var/tmp: the state dir'"'"'s, not the read-only rootfs.
if [ -d "$state/vartmp" ]; then mount --bind "$state/vartmp" "$root/var/tmp"; fi
for dir in proc sys dev; do mount --rbind "/$dir" "$root/$dir"; done
mount --bind /tmp "$root/tmp"
cd "$root"
pivot_root . .oldroot
cd /
umount -l /.oldroot
exec "$@"'

# A private CA, a server certificate for 127.0.0.1 and a client certificate, laid out
# as DOCKER_CERT_PATH expects (ca.pem, cert.pem, key.pem in $TLS/client).
make_certificates() {
    [[ -f $TLS/client/key.pem ]] && return 0
    mkdir -p "$TLS/client"
    (
        cd "$TLS"
        openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=kegpack test CA" \
            -keyout ca-key.pem -out ca.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
            -keyout server-key.pem -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 365 -extfile server.ext -out server-cert.pem 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -subj "/CN=kegpackd" \
            -keyout client/key.pem -out client.csr 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\n' >client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
            -days 365 -extfile client.ext -out client/cert.pem 2>/dev/null
        cp ca.pem client/ca.pem
        chmod 0600 ca-key.pem server-key.pem client/key.pem
    ) || die "could not make the TLS certificates in $TLS"
}

start_engine() {
    local pid
    pid=$(engine_pids)
    if [[ -n $pid ]]; then
        pick_client && return 0
    else
        kill_engine_leftovers
        rm -f "$DOCKERD_PIDFILE" "$SOCK"
        mkdir -p "$DATA" "$EXEC"
        write_daemon_json
        make_certificates
        if ((NAMESPACED)); then
            ensure_rootfs
            mkdir -p "$CHROOT"
            rm -f "$ENGINE_MNTNS"
            if [[ $ENGINE == podman ]]; then
                launch_podman
            else
            local -a driver_flag=()
            # The snapshotter's default is overlayfs; KEGPACK_STORAGE_DRIVER overrides it.
            # A graph-driver store gets storage_driver's choice (overlay2 where it works).
            if [[ $IMAGE_STORE == graph ]]; then
                driver_flag=("--storage-driver=$(storage_driver)")
            elif [[ -n ${KEGPACK_STORAGE_DRIVER:-} ]]; then
                driver_flag=("--storage-driver=$KEGPACK_STORAGE_DRIVER")
            fi
            log "starting dockerd $(chroot "$ROOTFS_CACHE" /usr/sbin/dockerd --version |
                sed -n 's/^Docker version \([^,]*\),.*/\1/p') ($IMAGE_STORE image store," \
                "${driver_flag[*]:+${driver_flag[*]}, }Debian $SUITE root, own mount namespace)"
            launch "$DOCKERD_LOG" unshare --mount --propagation private -- \
                bash -c "$ENGINE_NS_SCRIPT" kegpack-engine "$ROOTFS_CACHE" "$CHROOT" "$STATE" \
                /usr/sbin/dockerd "${DOCKERD_FLAGS[@]}" ${driver_flag[@]+"${driver_flag[@]}"}
            fi
            record_mntns "$LAUNCHED_PID"
        else
            local driver
            driver=$(storage_driver)
            log "starting dockerd (storage driver $driver)"
            launch "$DOCKERD_LOG" dockerd "${DOCKERD_FLAGS[@]}" "--storage-driver=$driver"
        fi
        pid=$LAUNCHED_PID
    fi
    wait_engine "$pid"
}

# Podman's API service in its own namespace, like dockerd above; its settings come from
# the state dir's containers.conf, storage.conf and registries.conf (write_podman_conf),
# named by environment variables, so nothing of the host's or the rootfs's /etc applies.
launch_podman() {
    mkdir -p "$STATE/vartmp"
    log "starting podman $(dpkg-query --admindir="$ROOTFS_CACHE/var/lib/dpkg" -W -f '${Version}' podman) (Debian $SUITE root," \
        "own mount namespace, API service on unix://$SOCK)"
    launch "$DOCKERD_LOG" unshare --mount --propagation private -- \
        bash -c "$ENGINE_NS_SCRIPT" kegpack-engine "$ROOTFS_CACHE" "$CHROOT" "$STATE" \
        env CONTAINERS_CONF="$CHROOT_STATE/containers.conf" \
        CONTAINERS_STORAGE_CONF="$CHROOT_STATE/storage.conf" \
        CONTAINERS_REGISTRIES_CONF="$CHROOT_STATE/registries.conf" \
        PODMAN_IGNORE_CGROUPSV1_WARNING=1 \
        podman system service --time 0 "unix://$ENGINE_STATE/docker.sock"
}

# runc and cgroupfs: crun refuses this sandbox's hybrid cgroup layout. Containers get no
# network unless they ask (and the tests ask for none); events go to a file (no journald).
# The registries on loopback are plain HTTP.
write_podman_conf() {
    local driver
    driver=$(storage_driver)
    [[ $driver == overlay2 ]] && driver=overlay
    cat >"$STATE/containers.conf" <<EOF
[containers]
netns = "none"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$CHROOT_STATE/events.log"
EOF
    cat >"$STATE/storage.conf" <<EOF
[storage]
driver = "$driver"
graphroot = "$CHROOT_STATE/data"
runroot = "/run/containers/storage"
EOF
    cat >"$STATE/registries.conf" <<EOF
unqualified-search-registries = []
[[registry]]
location = "127.0.0.1:$OPEN_PORT"
insecure = true
[[registry]]
location = "127.0.0.1:$AUTH_PORT"
insecure = true
EOF
}

# Note the engine's mount namespace once unshare has made it: find_our_pids goes by it.
record_mntns() {
    local pid=$1 ours ns deadline=$((SECONDS + 10))
    ours=$(readlink /proc/self/ns/mnt)
    while ns=$(readlink "/proc/$pid/ns/mnt" 2>/dev/null) && [[ $ns == "$ours" ]]; do
        ((SECONDS < deadline)) || die_with_log "$DOCKERD_LOG" "no mount namespace for dockerd"
        sleep 0.05
    done
    [[ -n $ns ]] || die_with_log "$DOCKERD_LOG" "dockerd exited during startup"
    echo "$ns" >"$ENGINE_MNTNS"
}

wait_engine() {
    local pid=$1 deadline=$((SECONDS + ENGINE_TIMEOUT))
    until pick_client; do
        alive "$pid" || die_with_log "$DOCKERD_LOG" "dockerd exited during startup" \
            "(if the log blames the storage driver, try KEGPACK_STORAGE_DRIVER=vfs)"
        ((SECONDS < deadline)) || die_with_log "$DOCKERD_LOG" \
            "dockerd did not answer on unix://$SOCK within ${ENGINE_TIMEOUT}s"
        sleep 0.2
    done
}

stop_engine() {
    # dockerd stops its containers itself on SIGTERM (shutdown timeout 15 s).
    # shellcheck disable=SC2046
    stop_pids dockerd $(engine_pids)
    kill_engine_leftovers
    rm -f "$DOCKERD_PIDFILE" "$SOCK"
    # A mount namespace's id is reused once it is gone: a stale one could name another
    # state dir's engine as ours.
    [[ -z $ENGINE_MNTNS ]] || rm -f "$ENGINE_MNTNS"
}

# Teardown need not wait out each container's 10 s stop grace period.
kill_containers() {
    local ids
    engine_answers && ids=$(dk ps -q) && [[ -n $ids ]] || return 0
    # shellcheck disable=SC2086
    dk kill $ids >/dev/null 2>&1 || true
}

base_image_present() { dk image inspect "$BASE_IMAGE" >/dev/null 2>&1; }

# A dynamically linked busybox (Debian's "busybox" package) would not run in the image.
static_busybox() { [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; }

make_rootfs() {
    local root=$1 applet
    mkdir -p "$root"/{bin,etc,root,tmp,home/app}
    cp /bin/busybox "$root/bin/busybox"
    while read -r applet; do
        [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
    done < <(/bin/busybox --list)
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
app:x:1000:
nobody:x:65534:
EOF
    chmod 1777 "$root/tmp"
    chmod 700 "$root/root"
    chown 1000:1000 "$root/home/app"
}

build_base_image() {
    base_image_present && return 0
    static_busybox || die "/bin/busybox is not statically linked: run scripts/testenv.sh install"
    log "building $BASE_IMAGE from /bin/busybox"
    local root
    root=$(mktemp -d "$STATE/rootfs.XXXXXX")
    make_rootfs "$root"
    tar --numeric-owner -C "$root" -cf - . |
        dk import --change "ENV PATH=$SYSTEM_PATH" --change 'CMD ["sh"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$root"
}

# ---------------------------------------------------------------- registries

registry_config() { echo "$STATE/registry-$1.yml"; }
registry_log() { echo "$STATE/registry-$1.log"; }
registry_pids() { find_pids docker-registry "$(registry_config "$1")"; }

# port_of NAME DEFAULT ENV_VALUE: the env var, else the port in this state dir's config
port_of() {
    local port=$3 config
    config=$(registry_config "$1")
    if [[ -z $port && -r $config ]]; then
        port=$(sed -n 's/^  addr: "127\.0\.0\.1:\([0-9]*\)"$/\1/p' "$config")
    fi
    port=${port:-$2}
    if [[ ! $port =~ ^[0-9]+$ ]] || ((port < 1 || port > 65535)); then
        die "bad $1 registry port '$port'"
    fi
    echo "$port"
}

load_ports() {
    OPEN_PORT=$(port_of open "${DEFAULT_PORTS[0]}" "${KEGPACK_REGISTRY_PORT:-}")
    AUTH_PORT=$(port_of auth "${DEFAULT_PORTS[1]}" "${KEGPACK_AUTH_REGISTRY_PORT:-}")
    ((OPEN_PORT != AUTH_PORT)) || die "both registries are set to port $OPEN_PORT"
}

# render_config NAME PORT [AUTH]: a registry config; `secret` only signs upload state
render_config() {
    cat <<EOF
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: "$STATE/registry-$1"
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: "127.0.0.1:$2"
  secret: "kegpack-testenv-$1"
  headers:
    X-Content-Type-Options: [nosniff]
EOF
    if [[ ${3:-} == auth ]]; then
        cat <<EOF
auth:
  htpasswd:
    realm: kegpack-test
    path: "$HTPASSWD"
EOF
    fi
}

write_credentials() {
    if [[ $(cat "$PASSWORD_FILE" 2>/dev/null) != "$AUTH_PASSWORD" ]]; then
        (umask 077 && printf %s "$AUTH_PASSWORD" >"$PASSWORD_FILE")
        rm -f "$HTPASSWD"
    fi
    chmod 600 "$PASSWORD_FILE"
    [[ -s $HTPASSWD ]] || htpasswd -Bbn "$AUTH_USER" "$AUTH_PASSWORD" >"$HTPASSWD"
}

# start_registry NAME PORT EXPECTED_STATUS [auth]
start_registry() {
    local name=$1 port=$2 expect=$3 config new pids
    config=$(registry_config "$name")
    new=$(render_config "$name" "$port" "${4:-}")
    pids=$(registry_pids "$name")
    if [[ -n $pids && $new != "$(cat "$config")" ]]; then
        # shellcheck disable=SC2086
        stop_pids "$name registry (config changed)" $pids
        pids=
    fi
    if [[ -z $pids ]]; then
        port_in_use "$port" && die "127.0.0.1:$port is taken by another process; set" \
            "KEGPACK_REGISTRY_PORT / KEGPACK_AUTH_REGISTRY_PORT to free ports"
        mkdir -p "$STATE/registry-$name"
        printf '%s\n' "$new" >"$config"
        log "starting $name registry on 127.0.0.1:$port"
        launch "$(registry_log "$name")" docker-registry serve "$config"
        pids=$LAUNCHED_PID
    fi
    wait_registry "$name" "$port" "$expect" "${pids%%$'\n'*}"
}

# wait_registry NAME PORT EXPECTED_STATUS PID
wait_registry() {
    local name=$1 port=$2 expect=$3 pid=$4 deadline=$((SECONDS + REGISTRY_TIMEOUT)) code=""
    until code=$(http_status "$port" /v2/) && [[ $code == "$expect" ]]; do
        alive "$pid" ||
            die_with_log "$(registry_log "$name")" "$name registry exited during startup"
        ((SECONDS < deadline)) || die_with_log "$(registry_log "$name")" "$name registry on" \
            "127.0.0.1:$port did not answer GET /v2/ with $expect within ${REGISTRY_TIMEOUT}s" \
            "(last answer: ${code:-none})"
        sleep 0.2
    done
}

start_registries() {
    load_ports
    write_credentials
    start_registry open "$OPEN_PORT" 200
    start_registry auth "$AUTH_PORT" 401 auth
}

stop_registries() {
    local name
    for name in open auth; do
        # shellcheck disable=SC2046
        stop_pids "$name registry" $(registry_pids "$name")
    done
}

# ---------------------------------------------------------------- subcommands

cmd_install() {
    ((EUID == 0)) || die "must run as root"
    local packages=(docker.io docker-registry busybox-static apache2-utils docker-compose)
    if command -v dockerd >/dev/null && command -v docker-registry >/dev/null &&
        command -v htpasswd >/dev/null && command -v docker-compose >/dev/null &&
        static_busybox; then
        log "all of ${packages[*]} are installed"
    else
        apt_install "${packages[@]}"
    fi
    command -v promtool >/dev/null || apt_install prometheus # for tests/test_deploy.py
    command -v openssl >/dev/null || apt_install openssl # the TLS listener's certificates
    command -v systemd-analyze >/dev/null || apt_install systemd # for tests/test_deploy.py
    command -v debootstrap >/dev/null || apt_install debootstrap # KEGPACK_ENGINE=containerd
    command -v setcap >/dev/null || apt_install libcap2-bin # file capabilities, tests/test_layer.py
    command -v chromium >/dev/null || apt_install chromium # headless, tests/test_status_page.py
    [[ -x /usr/sbin/sshd ]] || apt_install openssh-server # ssh:// contexts, tests/test_contexts_engine.py
    { command -v skopeo && command -v umoci; } >/dev/null ||
        apt_install skopeo umoci # a second reader of pushed images, tests/test_second_opinion.py
    # A current docker CLI (tests/test_plugin.py) and Compose v2 (the Compose tests), from sid.
    "$REPO_ROOT/scripts/sid-binary.sh" docker-cli usr/bin/docker /usr/local/bin/docker
    "$REPO_ROOT/scripts/sid-binary.sh" docker-compose \
        usr/libexec/docker/cli-plugins/docker-compose \
        /usr/local/lib/docker/cli-plugins/docker-compose
    [[ -x /usr/bin/tini-static ]] || apt_install tini # PID 1 of the image, copied into its context
    note_system_docker
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-cache show "$@" >/dev/null 2>&1 || apt-get update -qq
    log "apt-get install $*"
    with_services_blocked apt-get install -y -qq --no-install-recommends "$@" ||
        { apt-get update -qq && with_services_blocked apt-get install -y -qq --no-install-recommends "$@"; }
}

# Keep the packages' postinst scripts from starting a system dockerd or a system registry
# on :5000 (a policy-rc.d exiting 101 is how Debian says "start no services").
with_services_blocked() {
    local policy=${POLICY_RC_D:-/usr/sbin/policy-rc.d} status=0
    if [[ -e $policy ]]; then
        "$@" || status=$?
    else
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        "$@" || status=$?
        rm -f "$policy"
    fi
    return "$status"
}

note_system_docker() {
    local pid ours others=()
    ours=" $(engine_pids | tr '\n' ' ') "
    for pid in $(find_pids dockerd); do
        [[ $ours == *" $pid "* ]] || others+=("$pid")
    done
    if ((${#others[@]})) || [[ -S /var/run/docker.sock ]]; then
        log "note: a system dockerd (pid ${others[*]:-?}, /var/run/docker.sock) is present;" \
            "it is left alone and never used: the test env talks to unix://$SOCK only"
    fi
}

cmd_env() {
    load_ports
    printf 'export %s=%q\n' \
        DOCKER_HOST "unix://$SOCK" \
        KEGPACK_TEST_REGISTRY "127.0.0.1:$OPEN_PORT" \
        KEGPACK_TEST_AUTH_REGISTRY "127.0.0.1:$AUTH_PORT" \
        KEGPACK_TEST_AUTH_USER "$AUTH_USER" \
        KEGPACK_TEST_AUTH_PASSWORD_FILE "$PASSWORD_FILE" \
        KEGPACK_TEST_BASE_IMAGE "$BASE_IMAGE" \
        KEGPACK_TEST_TLS_HOST "tcp://127.0.0.1:$TLS_PORT" \
        KEGPACK_TEST_TLS_CERTS "$TLS/client" \
        KEGPACK_TESTENV_DIR "$STATE" \
        KEGPACK_ENGINE "$ENGINE"
}

cmd_up() {
    require_tools
    prepare_state
    [[ -n $RECORDED_ENGINE ]] || echo "$ENGINE" >"$STATE/engine"
    start_registries
    start_engine
    build_base_image
    cmd_env
}

cmd_restart_engine() {
    require_tools
    prepare_state
    stop_engine
    start_engine
    log "engine restarted"
}

cmd_down() {
    local purge=${1:-}
    [[ -z $purge || $purge == --purge ]] || die "usage: testenv.sh down [--purge]"
    check_state_path
    if [[ ! -d $STATE ]]; then
        log "nothing to stop: $STATE does not exist"
        return 0
    fi
    prepare_state
    kill_containers
    stop_engine
    stop_registries
    if [[ $purge == --purge ]]; then
        [[ -z $(mounts_under_state) ]] || die "mounts remain under $STATE; not deleting it"
        rm -rf "$STATE"
        log "removed $STATE"
    else
        log "stopped; state kept in $STATE"
    fi
}

cmd_status() {
    local pids all=0 name port expect code
    pids=$(engine_pids)
    if [[ -n $pids ]] && pick_client; then
        local driver image=missing version store
        driver=$(dk info --format '{{.Driver}}' 2>/dev/null || echo '?')
        version=$(dk version --format '{{.Server.Version}}' 2>/dev/null || echo '?')
        if dk info --format '{{.DriverStatus}}' 2>/dev/null | grep -q 'io.containerd.snapshotter'
        then
            store="containerd image store"
        else
            store="graph driver image store"
        fi
        base_image_present && image=present
        echo "engine: running (pid $pids), dockerd $version ($ENGINE flavour, $store)," \
            "unix://$SOCK, storage driver $driver, $BASE_IMAGE $image"
    elif [[ -n $pids ]]; then
        echo "engine: process $pids exists but does not answer on unix://$SOCK"; all=1
    else
        echo "engine: stopped"; all=1
    fi
    load_ports
    for name in open auth; do
        port=$OPEN_PORT expect=200
        [[ $name == auth ]] && port=$AUTH_PORT expect=401
        pids=$(registry_pids "$name")
        code=$(http_status "$port" /v2/ || true)
        if [[ -n $pids && $code == "$expect" ]]; then
            echo "$name registry: running (pid $pids), 127.0.0.1:$port, GET /v2/ -> $code"
        elif [[ -n $pids ]]; then
            echo "$name registry: process $pids exists, GET /v2/ -> ${code:-no answer}"; all=1
        else
            echo "$name registry: stopped (127.0.0.1:$port)"; all=1
        fi
    done
    echo "state dir: $STATE"
    return "$all"
}

# A real application for the tests: Debian 12's redis-server in a minbase root, made once
# with debootstrap (cached beside the containerd flavour's root) and imported as an image.
APP_IMAGE=kegpack-test/redis:latest
APP_ROOTFS=$(realpath -m -- "${KEGPACK_APP_ROOTFS:-/var/cache/kegpack-testenv/bookworm-redis}")

cmd_app_image() {
    pick_client || die "the engine does not answer on unix://$SOCK: run scripts/testenv.sh up"
    dk image inspect "$APP_IMAGE" >/dev/null 2>&1 && return 0
    if [[ ! -x $APP_ROOTFS/usr/bin/redis-server ]]; then
        command -v debootstrap >/dev/null || die "debootstrap not found: run scripts/testenv.sh install"
        local parent tmp mirror
        parent=$(dirname "$APP_ROOTFS")
        mkdir -p "$parent"
        exec 9>>"$parent/.app-lock"
        flock -w 600 9 || die "another testenv.sh holds $parent/.app-lock"
        if [[ ! -x $APP_ROOTFS/usr/bin/redis-server ]]; then
            mirror=$(debian_mirror)
            tmp=$APP_ROOTFS.partial
            rm -rf --one-file-system "$tmp"
            log "debootstrapping Debian 12 with redis-server into $APP_ROOTFS (from $mirror)"
            with_services_blocked debootstrap --variant=minbase --include=redis-server bookworm \
                "$tmp" "$mirror" >"$parent/debootstrap-app.log" 2>&1 ||
                die_with_log "$parent/debootstrap-app.log" "debootstrap failed"
            # redis-server's postinst may have started it in there: no daemon may stay.
            local pid
            for pid in /proc/[0-9]*; do
                if [[ $(readlink "$pid/root" 2>/dev/null) == "$tmp" ]]; then
                    kill -KILL "${pid#/proc/}" 2>/dev/null || true
                fi
            done
            rm -rf --one-file-system "$APP_ROOTFS"
            mv "$tmp" "$APP_ROOTFS"
        fi
        exec 9>&-
    fi
    log "importing $APP_IMAGE"
    tar --numeric-owner -C "$APP_ROOTFS" --exclude=./proc --exclude=./sys --exclude=./dev \
        -cf - . | dk import --change "ENV PATH=$SYSTEM_PATH" \
        --change 'CMD ["redis-server", "--bind", "127.0.0.1", "--dir", "/var/lib/redis"]' \
        --change 'USER redis' - "$APP_IMAGE" >/dev/null
}

# A Python base for deploy/Dockerfile, made without pulling: Debian 12's python3 in a
# minbase root (debootstrap, cached beside the others) imported as $PYTHON_IMAGE. It has
# the venv module but no ensurepip or pip; the Dockerfile needs neither.
PYTHON_IMAGE=${KEGPACK_PYTHON_IMAGE:-kegpack-test/python:3.11}
PYTHON_ROOTFS=$(realpath -m -- "${KEGPACK_PYTHON_ROOTFS:-/var/cache/kegpack-testenv/bookworm-python}")

cmd_python_image() {
    pick_client || die "the engine does not answer on unix://$SOCK: run scripts/testenv.sh up"
    dk image inspect "$PYTHON_IMAGE" >/dev/null 2>&1 && return 0
    if [[ ! -x $PYTHON_ROOTFS/usr/bin/python3 ]]; then
        command -v debootstrap >/dev/null || die "debootstrap not found: run scripts/testenv.sh install"
        local parent tmp mirror
        parent=$(dirname "$PYTHON_ROOTFS")
        mkdir -p "$parent"
        exec 9>>"$parent/.python-lock"
        flock -w 600 9 || die "another testenv.sh holds $parent/.python-lock"
        if [[ ! -x $PYTHON_ROOTFS/usr/bin/python3 ]]; then
            mirror=$(debian_mirror)
            tmp=$PYTHON_ROOTFS.partial
            rm -rf --one-file-system "$tmp"
            log "debootstrapping Debian 12 with python3 into $PYTHON_ROOTFS (from $mirror)"
            with_services_blocked debootstrap --variant=minbase --include=python3 bookworm \
                "$tmp" "$mirror" >"$parent/debootstrap-python.log" 2>&1 ||
                die_with_log "$parent/debootstrap-python.log" "debootstrap failed"
            # What the image does not need: apt's lists and caches, docs.
            rm -rf --one-file-system "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* \
                "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/*
            rm -rf --one-file-system "$PYTHON_ROOTFS"
            mv "$tmp" "$PYTHON_ROOTFS"
        fi
        exec 9>&-
    fi
    log "importing $PYTHON_IMAGE"
    tar --numeric-owner -C "$PYTHON_ROOTFS" --exclude=./proc --exclude=./sys --exclude=./dev \
        -cf - . | dk import --change "ENV PATH=$SYSTEM_PATH" --change 'CMD ["python3"]' \
        - "$PYTHON_IMAGE" >/dev/null
}

# A second real application for the tests: Debian 12's PostgreSQL 15, the same way, in a
# root of its own. It runs as user postgres; its entrypoint (kegpack-postgres, added to the
# imported tree, not to the cached root) initialises $PGDATA when it is empty and serves
# on 127.0.0.1 and /run/postgresql only, logging to stderr (docker logs). `docker import`
# cannot set STOPSIGNAL: run it with --stop-signal SIGINT for PostgreSQL's fast shutdown.
PG_IMAGE=kegpack-test/postgres:latest
PG_ROOTFS=$(realpath -m -- "${KEGPACK_PG_ROOTFS:-/var/cache/kegpack-testenv/bookworm-postgres}")
PG_BIN=/usr/lib/postgresql/15/bin

cmd_pg_image() {
    pick_client || die "the engine does not answer on unix://$SOCK: run scripts/testenv.sh up"
    dk image inspect "$PG_IMAGE" >/dev/null 2>&1 && return 0
    [[ -x $PG_ROOTFS$PG_BIN/postgres ]] || pg_rootfs
    local extra
    extra=$(mktemp -d "$STATE/pg-entrypoint.XXXXXX")
    cat >"$extra/kegpack-postgres" <<'EOF'
#!/bin/sh
# kegpack-test/postgres: initialise $PGDATA when empty, then serve on loopback only.
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb --auth=trust --username=postgres --encoding=UTF8 --locale=C >&2
fi
exec postgres -c listen_addresses=127.0.0.1 -c unix_socket_directories=/run/postgresql "$@"
EOF
    chmod 755 "$extra/kegpack-postgres"
    log "importing $PG_IMAGE"
    tar --numeric-owner --exclude=./proc --exclude=./sys --exclude=./dev -cf - \
        -C "$PG_ROOTFS" . -C "$extra" --transform 's,^\./kegpack-postgres$,./usr/local/bin/&,' \
        ./kegpack-postgres |
        dk import --change "ENV PATH=$PG_BIN:$SYSTEM_PATH" \
            --change 'ENV PGDATA=/var/lib/postgresql/data' --change 'USER postgres' \
            --change 'CMD ["kegpack-postgres"]' - "$PG_IMAGE" >/dev/null
    rm -rf "$extra"
}

# pg_rootfs: debootstrap the cached root with postgresql (once, under a lock), without the
# cluster its postinst made, with an empty data dir and socket dir for user postgres.
pg_rootfs() {
    command -v debootstrap >/dev/null || die "debootstrap not found: run scripts/testenv.sh install"
    local parent tmp mirror pid
    parent=$(dirname "$PG_ROOTFS")
    mkdir -p "$parent"
    exec 9>>"$parent/.pg-lock"
    flock -w 600 9 || die "another testenv.sh holds $parent/.pg-lock"
    if [[ ! -x $PG_ROOTFS$PG_BIN/postgres ]]; then
        mirror=$(debian_mirror)
        tmp=$PG_ROOTFS.partial
        rm -rf --one-file-system "$tmp"
        log "debootstrapping Debian 12 with postgresql into $PG_ROOTFS (from $mirror)"
        with_services_blocked debootstrap --variant=minbase --include=postgresql bookworm \
            "$tmp" "$mirror" >"$parent/debootstrap-postgres.log" 2>&1 ||
            die_with_log "$parent/debootstrap-postgres.log" "debootstrap failed"
        for pid in /proc/[0-9]*; do
            if [[ $(readlink "$pid/root" 2>/dev/null) == "$tmp" ]]; then
                kill -KILL "${pid#/proc/}" 2>/dev/null || true
            fi
        done
        # Also the JIT (LLVM, 130 MB: without it PostgreSQL runs every query interpreted) and
        # the translations, so that the image imports faster on each engine.
        rm -rf --one-file-system "$tmp"/etc/postgresql/15 "$tmp"/var/lib/postgresql/15 \
            "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* \
            "$tmp"/usr/share/doc/* "$tmp"/usr/share/man/* "$tmp"/usr/share/locale/* \
            "$tmp"$PG_BIN/../lib/llvmjit* "$tmp"$PG_BIN/../lib/bitcode \
            "$tmp"/usr/lib/*-linux-gnu/libLLVM-* "$tmp"/usr/lib/*-linux-gnu/libz3.so.*
        chroot "$tmp" install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data
        chroot "$tmp" install -d -o postgres -g postgres -m 2775 /run/postgresql
        rm -rf --one-file-system "$PG_ROOTFS"
        mv "$tmp" "$PG_ROOTFS"
    fi
    exec 9>&-
}

usage() {
    sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
        install) cmd_install ;;
        up) cmd_up ;;
        env) cmd_env ;;
        down) cmd_down "$@" ;;
        status) cmd_status ;;
        restart-engine) cmd_restart_engine ;;
        app-image) cmd_app_image ;;
        python-image) cmd_python_image ;;
        pg-image) cmd_pg_image ;;
        *) usage ;;
    esac
}

main "$@"
