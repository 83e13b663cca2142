#!/usr/bin/env bash
# build.sh DIR — build the real Kubernetes control plane the manifest tests
# run (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
# v1.37.2, etcd v3.7.3, kwok v0.8.0 and kwok's stage objects) into DIR/bin.
#
# Everything builds from the Go module proxy; nothing is downloaded besides Go
# modules. DIR is a cache: a binary that is already there is kept, and DIR is
# keyed by the caller on the hash of this module's go.mod/go.sum (see
# deploy/k8stest/e2e.sh), so a version change builds afresh. Cold: 4-7 min on
# 2 cores; warm Go build cache: under a minute.
set -euo pipefail

dest=${1:?usage: build.sh DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
mkdir -p "$dest/bin"
dest=$(cd "$dest" && pwd)

K8S_VERSION=v1.37.2
KWOK_VERSION=v0.8.0
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

log() { printf '%s build.sh: %s\n' "$(date +%T)" "$*" >&2; }

build_k8s() {
	local name=$1
	[[ -x $dest/bin/$name ]] && return
	log "building $name $K8S_VERSION"
	(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$dest/bin/$name.tmp" "k8s.io/kubernetes/cmd/$name")
	mv "$dest/bin/$name.tmp" "$dest/bin/$name"
}

# The largest first: kube-apiserver shares most packages with the others.
for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
	build_k8s "$c"
done

if [[ ! -x $dest/bin/etcd ]]; then
	# The etcd server module has a main package; its version is moegrid's
	# own go.mod requirement (go.etcd.io/etcd/server/v3 v3.7.3).
	log "building etcd from moegrid's go.mod"
	(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$dest/bin/etcd.tmp" go.etcd.io/etcd/server/v3)
	mv "$dest/bin/etcd.tmp" "$dest/bin/etcd"
fi

if [[ ! -x $dest/bin/kwok || ! -d $dest/kwok-stages ]]; then
	log "building kwok $KWOK_VERSION"
	# kwok's own go.mod pins its dependencies; go install @version uses it.
	(cd "$dest" && GOBIN="$dest/bin" CGO_ENABLED=0 GOFLAGS= go install -trimpath "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION")
	moddir=$(cd "$dest" && GOFLAGS= go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	rm -rf "$dest/kwok-stages.tmp"
	mkdir -p "$dest/kwok-stages.tmp"
	# kwok's "fast" stages (its kustomize/stage/fast): nodes turn Ready and
	# renew their leases, pods go Running and Ready at once.
	for d in node/fast node/heartbeat-with-lease pod/fast; do
		for f in "$moddir/kustomize/stage/$d"/*.yaml; do
			[[ $(basename "$f") == kustomization.yaml ]] && continue
			cp "$f" "$dest/kwok-stages.tmp/"
		done
	done
	chmod -R u+w "$dest/kwok-stages.tmp"
	rm -rf "$dest/kwok-stages"
	mv "$dest/kwok-stages.tmp" "$dest/kwok-stages"
fi
log "done: $(ls "$dest/bin" | tr '\n' ' ')"
