#!/usr/bin/env bash
# Build and run the Lepton compose cluster on a machine with Docker but no image registry.
#
#   deploy/containers.sh engine   start dockerd in the background if it is not running (root)
#   deploy/containers.sh base     build the local base image lepton/base:bookworm (debootstrap)
#   deploy/containers.sh build    base + wheelhouse on the host + docker build -> lepton:local
#   deploy/containers.sh up       build, then docker-compose up, wait until all 6 are healthy
#   deploy/containers.sh down     docker-compose down -v (containers, network, volumes)
#   deploy/containers.sh test     pytest -m containers tests/test_containers.py
#
# Nothing inside `docker build` touches the network: the base image is a
# Debian rootfs made by debootstrap on the host (Debian's mirror is reachable
# here, Docker Hub is not), and every wheel -- Lepton's and its dependencies',
# for the base image's CPython 3.11 and glibc -- is fetched on the host with
# pip and installed in the image with --no-index.
#
# Environment: LEPTON_COMPOSE_PROJECT (default lepton), LEPTON_IMAGE (default
# lepton:local), LEPTON_BASE_IMAGE (default lepton/base:bookworm; set it to
# python:3.12-slim where a registry is reachable and the base step is skipped).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PROJECT="${LEPTON_COMPOSE_PROJECT:-lepton}"
export LEPTON_IMAGE="${LEPTON_IMAGE:-lepton:local}"
export LEPTON_BASE_IMAGE="${LEPTON_BASE_IMAGE:-lepton/base:bookworm}"
CACHE="${LEPTON_BUILD_CACHE:-$ROOT/build/containers}"
# The classic builder: BuildKit needs the buildx plugin, which Debian's docker.io lacks.
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"
COMPOSE=(docker-compose -p "$PROJECT" -f "$HERE/compose.yaml")

# Temporary directories to remove however the script ends.
CLEANUP=()
trap 'rm -rf "${CLEANUP[@]}"' EXIT

log() { printf '[containers %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

need_docker() {
    docker info >/dev/null 2>&1 || die "no Docker engine (apt-get install -y docker.io docker-compose; deploy/containers.sh engine)"
    command -v docker-compose >/dev/null || die "docker-compose missing (apt-get install -y docker-compose)"
}

cmd_engine() {
    if docker info >/dev/null 2>&1; then log "dockerd already running"; return; fi
    command -v dockerd >/dev/null || die "dockerd missing: apt-get install -y docker.io docker-compose"
    nohup dockerd >/tmp/dockerd.log 2>&1 &
    log "started dockerd (pid $!, log /tmp/dockerd.log)"
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && return; sleep 1; done
    die "dockerd did not come up; see /tmp/dockerd.log"
}

cmd_base() {
    need_docker
    [[ "$LEPTON_BASE_IMAGE" == lepton/base:* ]] || { log "base image $LEPTON_BASE_IMAGE comes from a registry"; return; }
    if docker image inspect "$LEPTON_BASE_IMAGE" >/dev/null 2>&1; then log "base image $LEPTON_BASE_IMAGE exists"; return; fi
    command -v debootstrap >/dev/null || die "debootstrap missing (apt-get install -y debootstrap)"
    mkdir -p "$CACHE"
    local rootfs
    rootfs="$(mktemp -d /var/tmp/lepton-rootfs.XXXXXX)"
    CLEANUP+=("$rootfs")
    log "debootstrap bookworm into $rootfs (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,iproute2,ca-certificates \
        bookworm "$rootfs" >"$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed; see $CACHE/debootstrap.log"
    # Keep the image lean: package lists and caches are useless at run time.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$LEPTON_BASE_IMAGE" >/dev/null
    log "imported $LEPTON_BASE_IMAGE"
}

wheelhouse() {
    # Lepton's own wheel (the build hook compiles the protos), then its dependencies as
    # binary wheels for the image's interpreter: CPython 3.11 on glibc 2.36 (bookworm),
    # whatever Python the host runs.
    local wh="$1"
    rm -f "$wh"/lepton-*.whl
    python3 -m pip wheel --quiet --no-deps --wheel-dir "$wh" "$ROOT"
    python3 -m pip download --quiet --dest "$wh" --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_36_x86_64 --platform manylinux2014_x86_64 \
        "$wh"/lepton-*.whl
}

cmd_build() {
    need_docker
    local offline=0
    [[ "$LEPTON_BASE_IMAGE" == lepton/base:* ]] && offline=1
    if ((offline)); then
        cmd_base
        mkdir -p "$CACHE/wheelhouse"
        log "wheelhouse in $CACHE/wheelhouse"
        wheelhouse "$CACHE/wheelhouse"
    fi
    # A clean context: the files git knows (tracked or not ignored), plus the wheels.
    local ctx
    ctx="$(mktemp -d /var/tmp/lepton-ctx.XXXXXX)"
    CLEANUP+=("$ctx")
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
        tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$ctx" -xf -
    # The wheels target the local base image's CPython 3.11; a registry base image
    # (another Python) gets none and the builder resolves dependencies itself.
    if ((offline)); then cp -r "$CACHE/wheelhouse" "$ctx/wheelhouse"; fi
    log "docker build $LEPTON_IMAGE from $LEPTON_BASE_IMAGE"
    local old
    old="$(docker image inspect -f '{{.Id}}' "$LEPTON_IMAGE" 2>/dev/null || true)"
    docker build --quiet -f "$ctx/deploy/Dockerfile" --build-arg "BASE_IMAGE=$LEPTON_BASE_IMAGE" \
        -t "$LEPTON_IMAGE" "$ctx" >/dev/null
    # Drop the image this build replaced (kept if a container still uses it), so
    # repeated builds do not pile up untagged images.
    if [[ -n "$old" && "$old" != "$(docker image inspect -f '{{.Id}}' "$LEPTON_IMAGE")" ]]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
    docker image prune -f --filter label=org.lepton.stage=builder >/dev/null
    log "built $LEPTON_IMAGE ($(docker image inspect -f '{{.Size}}' "$LEPTON_IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
}

wait_healthy() {
    local want=6 deadline=$((SECONDS + ${1:-180}))
    while ((SECONDS < deadline)); do
        local healthy
        healthy="$(docker ps --filter "label=com.docker.compose.project=$PROJECT" --filter health=healthy -q | wc -l)"
        ((healthy >= want)) && { log "all $want containers healthy"; return 0; }
        sleep 1
    done
    "${COMPOSE[@]}" ps >&2
    "${COMPOSE[@]}" logs --tail=30 >&2
    die "cluster not healthy in time"
}

cmd_up() {
    local t0=$SECONDS
    [[ "${LEPTON_SKIP_BUILD:-0}" == 1 ]] || cmd_build
    local t1=$SECONDS
    log "docker-compose -p $PROJECT up"
    "${COMPOSE[@]}" up -d --no-build >/dev/null
    wait_healthy "${LEPTON_UP_TIMEOUT:-180}"
    log "build $((t1 - t0))s, up+healthy $((SECONDS - t1))s"
    log "try: docker-compose -p $PROJECT -f $HERE/compose.yaml exec c1 lepton-ctl cluster status"
}

cmd_down() {
    need_docker
    "${COMPOSE[@]}" down -v --remove-orphans --timeout 5
}

cmd_test() {
    cd "$ROOT"
    exec python3 -m pytest -m containers tests/test_containers.py "$@"
}

case "${1:-}" in
    engine | base | build | up | down) "cmd_$1" ;;
    test) shift; cmd_test "$@" ;;
    *) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
