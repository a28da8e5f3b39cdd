#!/usr/bin/env bash
# A management cluster in kind running this checkout's provider, for machines WITH a Docker engine
# (the development machines have none; the lab in hack/lab is the Docker-free equivalent):
#
#   kind cluster -> make docker-build -> kind load docker-image -> make release-manifests
#   -> clusterctl init --infrastructure baremetal --config out/clusterctl.yaml -> wait for the controller
#
# Needs docker, kind, kubectl and clusterctl (v1.14.x) on PATH, and network access: clusterctl init fetches
# cert-manager and the core/kubeadm providers from their GitHub releases.
#
# Environment: KIND_CLUSTER_NAME (default capi-baremetal), KIND_NODE_IMAGE (default: kind's own),
# IMG (default: the image the release manifests reference, as `make docker-build` tags it).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cluster=${KIND_CLUSTER_NAME:-capi-baremetal}
namespace=capi-provider-baremetal-system
deployment=capi-provider-baremetal-controller-manager

log() { printf '[kind-up] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

for bin in docker kind kubectl clusterctl make; do
  command -v "$bin" >/dev/null || die "$bin is not on PATH"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed): kind needs one"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$repo/pyproject.toml")
# The Deployment pulls this exact reference with imagePullPolicy IfNotPresent, so the image kind loads is
# the one that runs; a different IMG would also need an `images:` override in out/clusterctl.yaml.
img=${IMG:-ghcr.io/capi-provider-baremetal/controller:v$version}

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "kind cluster $cluster exists; reusing it"
else
  log "creating kind cluster $cluster"
  kind create cluster --name "$cluster" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"}
fi
kubeconfig=$(mktemp)
trap 'rm -f "$kubeconfig"' EXIT
kind get kubeconfig --name "$cluster" >"$kubeconfig"

log "building $img"
make -C "$repo" docker-build IMG="$img"
log "loading $img into kind"
kind load docker-image "$img" --name "$cluster"

log "rendering the clusterctl repository (out/)"
make -C "$repo" release-manifests

log "clusterctl init (cert-manager, Cluster API core/kubeadm, baremetal)"
clusterctl init --kubeconfig "$kubeconfig" --infrastructure baremetal --config "$repo/out/clusterctl.yaml" \
  --wait-providers

log "waiting for the controller"
kubectl --kubeconfig "$kubeconfig" -n "$namespace" rollout status "deployment/$deployment" --timeout=5m

cat <<EOF

capi-provider-baremetal $version runs in kind cluster "$cluster".

Next steps:
  kind get kubeconfig --name $cluster > kind.kubeconfig && export KUBECONFIG=\$PWD/kind.kubeconfig
  kubectl -n $namespace logs deploy/$deployment -f        # the controller's log
  # register servers: a BareMetalHost per machine, with its BMC credentials and SSH key Secrets
  #   (kind's node must reach the BMCs and the hosts' SSH ports)
  kubectl label baremetalhost <host> role=control-plane   # or role=worker: what the flavors select
  clusterctl generate cluster c1 --infrastructure baremetal --config $repo/out/clusterctl.yaml \\
    --kubernetes-version v1.34.4 --control-plane-machine-count 3 --worker-machine-count 2 \\
    | kubectl apply -f -                                    # needs CONTROL_PLANE_ENDPOINT_IP set
  clusterctl describe cluster c1
Delete everything with: kind delete cluster --name $cluster
EOF
