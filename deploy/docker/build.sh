#!/usr/bin/env bash
# build.sh — build the moegrid image (moegrid:dev) and the etcd image
# (moegrid-etcd:dev) from static binaries compiled on this machine. No base
# image is pulled: both images are FROM scratch and the build context holds
# only the binary (and an empty /tmp).
#
# Environment:
#   IMAGE        moegrid image name        (default moegrid:dev)
#   ETCD_IMAGE   etcd image name           (default moegrid-etcd:dev)
#   VERSION      org.opencontainers.image.version of moegrid (default: git describe)
#   SKIP_ETCD=1  build only the moegrid image
#   GOARCH       target architecture        (default: the host's)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
IMAGE=${IMAGE:-moegrid:dev}
ETCD_IMAGE=${ETCD_IMAGE:-moegrid-etcd:dev}
VERSION=${VERSION:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}
REVISION=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
etcd_version=$(cd "$root" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -m 1777 "$ctx/tmp"

# image NAME DOCKERFILE ARGS...: build, and drop the image the tag named
# before if nothing else uses it, so that rebuilds leave no dangling images.
image() {
	local name=$1 file=$2 old new
	shift 2
	old=$(docker image inspect --format '{{.Id}}' "$name" 2>/dev/null || true)
	docker build --quiet -f "$file" -t "$name" "$@" "$ctx" >/dev/null
	new=$(docker image inspect --format '{{.Id}}' "$name")
	if [[ -n $old && $old != "$new" ]]; then
		docker rmi "$old" >/dev/null 2>&1 || true
	fi
}

build() { # build NAME GO_PACKAGE [EXTRA_LDFLAGS]
	(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w ${3:-}" -o "$ctx/$1" "$2")
	chmod 0555 "$ctx/$1"
}

build moegrid ./cmd/moegrid "-X main.version=$VERSION"
image "$IMAGE" "$here/Dockerfile" --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION"
rm -f "$ctx/moegrid"
echo "built $IMAGE ($VERSION)"

if [[ ${SKIP_ETCD:-} != 1 ]]; then
	build etcd go.etcd.io/etcd/server/v3
	image "$ETCD_IMAGE" "$here/Dockerfile.etcd" --build-arg VERSION="$etcd_version"
	echo "built $ETCD_IMAGE ($etcd_version)"
fi
