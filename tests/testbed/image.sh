#!/bin/bash
# Build edge's image on the test engine, where nothing can be pulled:
#  1. a Python base image made with debootstrap (tarball cached), imported;
#  2. edge and its dependencies as wheels, built here on the host (PyPI);
#  3. `docker build` of the real Dockerfile with BASE= and WHEELS= pointing
#     at those, so its RUN steps need no network.
# Usage: tests/testbed/image.sh [TAG]   (prints the tag on success)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${EDGE_TEST_ROOT:-/tmp/edge-test}
export DOCKER_HOST=${DOCKER_HOST:-unix://$ROOT/docker.sock}
CACHE=${EDGE_TEST_CACHE:-/tmp/edge-test-cache}
BASE=${EDGE_TEST_BASE:-edge-test/python:bookworm}
TAG=${1:-edge-test/edge:dev}
PIP=${PIP:-.venv/bin/pip}
MIRROR=${DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

log() { echo "image: $*" >&2; }
mkdir -p "$CACHE"

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    tarball=$CACHE/bookworm-python.tar
    if [ ! -s "$tarball" ]; then
        command -v debootstrap >/dev/null || { log "debootstrap missing (make system-deps)"; exit 1; }
        rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
        log "debootstrap bookworm from $MIRROR (a minute or two, once)"
        debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$MIRROR" \
            >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log" >&2; rm -rf "$rootfs"; exit 1; }
        # A base image carries no package caches or apt lists.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . >"$tarball.tmp" && mv "$tarball.tmp" "$tarball"
        rm -rf "$rootfs"
    fi
    docker import "$tarball" "$BASE" >/dev/null
    log "base image $BASE imported"
fi

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp Dockerfile .dockerignore "$context/"
mkdir -p "$context/wheels" "$CACHE/wheels"
# Dependencies: cached between runs, refreshed when setup.cfg changes.
stamp=$(sha256sum setup.cfg | cut -c1-16)
if [ "$(cat "$CACHE/wheels/.stamp" 2>/dev/null)" != "$stamp" ]; then
    log "building dependency wheels"
    rm -f "$CACHE"/wheels/*.whl
    "$PIP" wheel -q -w "$CACHE/wheels" . >&2
    echo "$stamp" >"$CACHE/wheels/.stamp"
fi
cp "$CACHE"/wheels/*.whl "$context/wheels/"
rm -f "$context"/wheels/edge-*.whl
"$PIP" wheel -q --no-deps -w "$context/wheels" . >&2

log "docker build $TAG"
docker build -q \
    --build-arg BASE="$BASE" --build-arg WHEELS=wheels \
    --build-arg VERSION="$(sed -n 's/^version *= *//p' setup.cfg | head -1)" \
    --build-arg REVISION="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    -t "$TAG" "$context" >&2
echo "$TAG"
