#!/bin/bash
# Build edge's image on the test engine, where nothing can be pulled:
#  1. a Python base image made with debootstrap (tarball cached), loaded;
#  2. edge and its dependencies as wheels, built here on the host (PyPI);
#  3. `docker build` of the real Dockerfile with BASE= and WHEELS= pointing
#     at those, so its RUN steps need no network.
# Usage: tests/testbed/image.sh [TAG]   (prints the tag on success)
#
# EDGE_IMAGE_ARCH=arm64 (a Debian architecture other than the host's) builds
# the image for that machine instead: debootstrap's second stage and the
# Dockerfile's RUN steps run under qemu-user-static (tests/testbed/binfmt.sh
# registers it), and the dependencies are the wheels PyPI publishes for that
# machine (`pip download --platform`), so nothing is compiled under emulation.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${EDGE_TEST_ROOT:-/tmp/edge-test}
export DOCKER_HOST=${DOCKER_HOST:-unix://$ROOT/docker.sock}
CACHE=${EDGE_TEST_CACHE:-/tmp/edge-test-cache}
HOST_ARCH=$(dpkg --print-architecture)
ARCH=${EDGE_IMAGE_ARCH:-$HOST_ARCH}
# The host's architecture keeps the cache and tag names it always had.
SUFFIX=$([ "$ARCH" = "$HOST_ARCH" ] || echo "-$ARCH")
BASE=${EDGE_TEST_BASE:-edge-test/python:bookworm$SUFFIX}
TAG=${1:-edge-test/edge:dev$SUFFIX}
PIP=${PIP:-.venv/bin/pip}
MIRROR=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# Bookworm's python3; foreign wheels are chosen for it.
PY_VERSION=3.11

log() { echo "image: $*" >&2; }
mkdir -p "$CACHE"
case "$ARCH" in
    amd64) MACHINE=x86_64 ;;
    arm64) MACHINE=aarch64 ;;
    *) log "no wheel platform known for $ARCH"; exit 1 ;;
esac
[ "$ARCH" = "$HOST_ARCH" ] || bash tests/testbed/binfmt.sh "$ARCH"

# `docker import --platform` is ignored by an engine without experimental
# features (the image says the host's architecture), so the base is loaded
# as an image archive whose config names its architecture.
load_base() {
    local dir diff
    dir=$(mktemp -d)
    ln -s "$1" "$dir/layer.tar"
    diff=$(sha256sum "$1" | cut -d' ' -f1)
    cat >"$dir/config.json" <<JSON
{"architecture": "$ARCH", "os": "linux", "created": "$(date -u -r "$1" +%Y-%m-%dT%H:%M:%SZ)",
 "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/bash"]},
 "rootfs": {"type": "layers", "diff_ids": ["sha256:$diff"]},
 "history": [{"created_by": "debootstrap --arch=$ARCH --variant=minbase --include=python3,python3-venv bookworm"}]}
JSON
    printf '[{"Config": "config.json", "RepoTags": ["%s"], "Layers": ["layer.tar"]}]\n' "$BASE" >"$dir/manifest.json"
    tar -h -C "$dir" -c manifest.json config.json layer.tar | docker load >/dev/null
    rm -rf "$dir"
}

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    tarball=$CACHE/bookworm-python$SUFFIX.tar
    if [ ! -s "$tarball" ]; then
        command -v debootstrap >/dev/null || { log "debootstrap missing (make system-deps)"; exit 1; }
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        log "debootstrap bookworm $ARCH from $MIRROR (a minute or two, once; ~2 min more under emulation)"
        debootstrap --arch="$ARCH" --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$MIRROR" \
            >"$CACHE/debootstrap$SUFFIX.log" 2>&1 || { tail -20 "$CACHE/debootstrap$SUFFIX.log" >&2; rm -rf "$rootfs"; exit 1; }
        # A base image carries no package caches or apt lists.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        # Another engineer's run may be making the same tarball: unique name, atomic rename.
        tmp=$(mktemp "$tarball.XXXXXX")
        tar -C "$rootfs" -c . >"$tmp" && mv "$tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    load_base "$tarball"
    log "base image $BASE ($ARCH) loaded"
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp Dockerfile .dockerignore "$context/"
wheels=$CACHE/wheels$SUFFIX
mkdir -p "$context/wheels" "$wheels"
# Dependencies: cached between runs, refreshed when setup.cfg changes.
stamp=$(sha256sum setup.cfg | cut -c1-16)
if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -f "$wheels"/*.whl
    if [ "$ARCH" = "$HOST_ARCH" ]; then
        log "building dependency wheels"
        "$PIP" wheel -q -w "$wheels" . >&2
    else
        # Binary wheels only: a dependency with none for $MACHINE fails here,
        # by name, instead of wanting a compiler under emulation.
        log "downloading $MACHINE wheels for Python $PY_VERSION"
        "$PIP" download -q -d "$wheels" --only-binary=:all: --implementation cp \
            --python-version "$PY_VERSION" --abi "cp${PY_VERSION/./}" \
            --platform "manylinux2014_$MACHINE" . >&2
    fi
    echo "$stamp" >"$wheels/.stamp"
fi
cp "$wheels"/*.whl "$context/wheels/"
rm -f "$context"/wheels/edge-*.whl
# edge itself is pure Python: one py3-none-any wheel fits every machine.
"$PIP" wheel -q --no-deps -w "$context/wheels" . >&2

log "docker build $TAG ($ARCH)"
docker build -q \
    --build-arg BASE="$BASE" --build-arg WHEELS=wheels \
    --build-arg VERSION="$(sed -n 's/^version *= *//p' setup.cfg | head -1)" \
    --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "$TAG" "$context" >&2
# The legacy builder gives the image its base's architecture.
built=$(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$TAG")
[ "$built" = "linux/$ARCH" ] || { log "$TAG is $built, not linux/$ARCH"; exit 1; }
echo "$TAG"
