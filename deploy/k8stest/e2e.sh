#!/usr/bin/env bash
# e2e.sh — moegrid's deployment tests (go test -tags e2e ./deploy/k8stest):
#
#   1. builds bin/moegrid and the images moegrid:dev and moegrid-etcd:dev
#      (deploy/docker/build.sh, the same as `make image`);
#   2. builds the Kubernetes control plane (kube-apiserver,
#      kube-controller-manager, kube-scheduler, kubectl v1.37.2, etcd, kwok)
#      from the Go module proxy into a cache directory, once per version:
#      $MOEGRID_K8S_CACHE, default ~/.cache/moegrid-k8s (4-7 min cold on 2
#      cores, nothing when cached);
#   3. runs the offline manifest tests, TestKubernetes (the manifests on the
#      real control plane), TestContainerCluster (the cluster in containers
#      on a private Docker network) and TestFaultSchedule (issue 10's faults
#      under load, and the soak: MOEGRID_SOAK, default 10m; 0 runs the
#      schedule once);
#   4. removes whatever a crashed test left (containers and networks labelled
#      moegrid-e2e, processes it started) and fails if it had to.
#
# MOEGRID_E2E_SKIP=kubernetes,docker skips tests by name (and says so);
# nothing is ever skipped because a tool is missing.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
skip=",${MOEGRID_E2E_SKIP:-},"
export MOEGRID_K8S_CACHE=${MOEGRID_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/moegrid-k8s}

state=$(mktemp -d)
export MOEGRID_E2E_PIDFILE=$state/pids
leftovers=0

cleanup() {
	local rc=$? pid exe ids
	if [[ -f $MOEGRID_E2E_PIDFILE ]]; then
		while read -r pid exe; do
			if [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == "$exe" ]]; then
				echo "e2e.sh: stopping leftover process $pid ($exe)" >&2
				kill -KILL "$pid" 2>/dev/null || true
				leftovers=1
			fi
		done <"$MOEGRID_E2E_PIDFILE"
	fi
	if command -v docker >/dev/null 2>&1; then
		ids=$(docker ps -aq --filter label=moegrid-e2e 2>/dev/null || true)
		if [[ -n $ids ]]; then
			echo "e2e.sh: removing leftover containers: $(echo $ids)" >&2
			docker rm -f -v $ids >/dev/null || true
			leftovers=1
		fi
		ids=$(docker network ls -q --filter label=moegrid-e2e 2>/dev/null || true)
		if [[ -n $ids ]]; then
			echo "e2e.sh: removing leftover networks: $(echo $ids)" >&2
			docker network rm $ids >/dev/null || true
			leftovers=1
		fi
	fi
	rm -rf "$state"
	if [[ $rc == 0 && $leftovers != 0 ]]; then
		echo "e2e.sh: FAIL: the tests left the above behind" >&2
		rc=1
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$SECONDS
step() { printf '== e2e: %s (%ds)\n' "$*" $((SECONDS - t0)); }

step "building moegrid"
CGO_ENABLED=0 go build -trimpath -o "$state/moegrid" ./cmd/moegrid
export MOEGRID_BIN=$state/moegrid

if [[ $skip != *,docker,* ]]; then
	step "building the images (deploy/docker/build.sh)"
	IMAGE=moegrid:dev ETCD_IMAGE=moegrid-etcd:dev deploy/docker/build.sh
	export MOEGRID_E2E_IMAGE=moegrid:dev MOEGRID_E2E_ETCD_IMAGE=moegrid-etcd:dev
fi

if [[ $skip != *,kubernetes,* ]]; then
	# The cache key is the tools module and its build script: the same
	# key TestKubernetes computes when run on its own.
	key=$(cat deploy/k8stest/tools/go.mod deploy/k8stest/tools/go.sum deploy/k8stest/tools/build.sh | sha256sum | cut -c1-16)
	tools=$MOEGRID_K8S_CACHE/$key
	step "building the Kubernetes control plane into $tools"
	deploy/k8stest/tools/build.sh "$tools"
	export MOEGRID_K8S_TOOLS=$tools
fi

export MOEGRID_SOAK=${MOEGRID_SOAK:-10m}
step "go test -tags e2e ./deploy/k8stest (soak $MOEGRID_SOAK)"
rc=0
go test -tags e2e -count=1 -v -timeout 60m ./deploy/k8stest || rc=$?
step "done (go test exit $rc)"
exit "$rc"
