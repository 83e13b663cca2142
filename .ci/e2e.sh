#!/usr/bin/env bash
# CI step after the unit tests: the deployment tests — the manifests on a
# real Kubernetes control plane and the cluster in Docker containers
# (deploy/k8stest/e2e.sh; deploy/README.md says what they check). The
# control plane's binaries are cached in ~/.cache/moegrid-k8s between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"
exec deploy/k8stest/e2e.sh
