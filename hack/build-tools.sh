#!/usr/bin/env bash
# Builds the real Kubernetes / Cluster API / KWOK / cluster-autoscaler binaries the lab runs, from their Go
# source modules through the Go module proxy (no Docker, no release downloads), into a cache outside git:
#
#   ${CAPBM_CACHE:-~/.cache/capi-provider-baremetal}/bin/<name>-<version>
#
# Re-runs are no-ops for anything already built. A cold build of everything takes a while on 2 cores
# (see README "First run"); progress is printed per component.
#
# Usage: hack/build-tools.sh [group...]     groups: etcd kube capi kwok autoscaler (default: all)
#
# Already have binaries (envtest assets, distro packages)? Point at them and the build is skipped:
#   ETCD_BIN KUBE_APISERVER_BIN KUBE_CONTROLLER_MANAGER_BIN KUBE_SCHEDULER_BIN KUBECTL_BIN
#   CAPI_MANAGER_BIN CAPI_KUBEADM_BOOTSTRAP_BIN CAPI_KUBEADM_CONTROL_PLANE_BIN CLUSTERCTL_BIN
#   KWOK_BIN CLUSTER_AUTOSCALER_BIN
#   KUBEBUILDER_ASSETS=<dir> supplies etcd, kube-apiserver and kubectl from a setup-envtest directory.
# Cluster API's CRDs/webhook manifests and KWOK's stage files are copied from the module cache into
# the same cache (CAPI_CONFIG_DIR / KWOK_STAGES_DIR override them).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

CACHE=${CAPBM_CACHE:-$HOME/.cache/capi-provider-baremetal}
BIN=$CACHE/bin
SRC=$CACHE/src
mkdir -p "$BIN" "$SRC"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local

# quiet DIR CMD...: run CMD in DIR with its output in DIR/build.log; show the tail when it fails.
quiet() {
  local dir=$1
  shift
  if ! (cd "$dir" && "$@") >>"$dir/build.log" 2>&1; then
    log "failed: $* (last lines of $dir/build.log follow)"
    tail -n 30 "$dir/build.log" >&2
    return 1
  fi
}

log() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# have NAME VERSION: true when the binary is cached or supplied through its *_BIN variable.
have() {
  local var
  var=$(echo "$1" | tr 'a-z-' 'A-Z_')_BIN
  if [ -n "${!var:-}" ]; then
    [ -x "${!var}" ] || { log "$var=${!var} is not an executable file"; exit 1; }
    # A prebuilt binary shipped with a checksum file (name.sha256 beside it) must match it.
    if [ -f "${!var}.sha256" ] && ! (cd "$(dirname "${!var}")" && sha256sum --quiet --strict -c "$(basename "${!var}").sha256" >/dev/null 2>&1); then
      log "$var=${!var} does not match its checksum file ${!var}.sha256"
      exit 1
    fi
    log "$1: using $var=${!var}"
    return 0
  fi
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/$1" ]; then
    log "$1: using KUBEBUILDER_ASSETS/$1"
    return 0
  fi
  [ -x "$BIN/$1-$2" ]
}

# timed LABEL CMD...: run a build step and report how long it took.
timed() {
  local label=$1 start=$SECONDS
  shift
  "$@"
  log "$label: ready ($((SECONDS - start)) s)"
}

# new_module DIR: a throwaway wrapper module whose go.mod we own (its versions never leak into others).
new_module() {
  log "building in $1 (first run only; later runs reuse $BIN) ..."
  rm -rf "$1" && mkdir -p "$1"
  printf 'module local.test/%s\n\ngo 1.26\n' "$(basename "$1")" >"$1/go.mod"
}

build_etcd() {
  have etcd "$ETCD_VERSION" && return 0
  local dir=$SRC/etcd-$ETCD_VERSION
  new_module "$dir"
  # server/go.mod replaces its siblings with ../ paths, so `go install` refuses it; a wrapper requiring
  # the published server module resolves the siblings at the exact versions server/go.mod requires.
  quiet "$dir" go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  quiet "$dir" go build -trimpath -ldflags '-s -w' -o "$BIN/etcd-$ETCD_VERSION" go.etcd.io/etcd/server/v3
}

build_kube() {
  local all=1 n
  for n in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    have "$n" "$KUBERNETES_VERSION" || all=0
  done
  [ "$all" = 1 ] && return 0
  local dir=$SRC/kube-$KUBERNETES_VERSION v=$KUBERNETES_VERSION staging gomod
  local minor=${v#v1.}; minor=${minor%%.*}
  new_module "$dir"
  # k8s.io/kubernetes requires its staging repos at v0.0.0 and maps them to ./staging; that replace
  # is ignored for a dependency, so replace each one with its published v0.<minor>.<patch> tag.
  gomod=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  staging=$(grep -E '^\s+k8s\.io/[a-z0-9-]+ v0\.0\.0$' "$gomod" | awk '{print $1}')
  {
    echo 'replace ('
    for n in $staging; do echo "	$n => $n v0${v#v1}"; done
    echo ')'
  } >>"$dir/go.mod"
  quiet "$dir" go get "k8s.io/kubernetes/cmd/kube-apiserver@$v" "k8s.io/kubernetes/cmd/kube-controller-manager@$v" \
    "k8s.io/kubernetes/cmd/kube-scheduler@$v" "k8s.io/kubernetes/cmd/kubectl@$v"
  # Stamp the version: CAPI refuses a management apiserver reporting v0.0.0, kwok parses --version.
  local ld="-s -w" kv
  for kv in "gitVersion=$v" gitMajor=1 "gitMinor=$minor" gitTreeState=clean "gitCommit=$v" \
    "buildDate=1970-01-01T00:00:00Z"; do
    ld="$ld -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
  quiet "$dir" go build -trimpath -ldflags "$ld" -o "$dir/out/" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  for n in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    mv "$dir/out/$n" "$BIN/$n-$v"
  done
}

build_capi() {
  local v=$CAPI_VERSION all=1 n
  for n in capi-manager capi-kubeadm-bootstrap capi-kubeadm-control-plane clusterctl; do
    have "$n" "$v" || all=0
  done
  if [ "$all" = 1 ] && { [ -n "${CAPI_CONFIG_DIR:-}" ] || [ -d "$CACHE/capi-config-$v" ]; }; then return 0; fi
  local dir=$SRC/capi-$v
  new_module "$dir"
  # Since v1.14 the root module replaces sigs.k8s.io/cluster-api/api with ./api; pin the published module.
  echo "replace sigs.k8s.io/cluster-api/api => sigs.k8s.io/cluster-api/api $v" >>"$dir/go.mod"
  quiet "$dir" go get "sigs.k8s.io/cluster-api/core@$v" "sigs.k8s.io/cluster-api/bootstrap/kubeadm@$v" \
    "sigs.k8s.io/cluster-api/controlplane/kubeadm@$v" "sigs.k8s.io/cluster-api/cmd/clusterctl@$v"
  local ld="-s -w" kv minor=${v#v1.}
  minor=${minor%%.*}
  for kv in "gitVersion=$v" gitMajor=1 "gitMinor=$minor" gitTreeState=clean; do
    ld="$ld -X sigs.k8s.io/cluster-api/version.$kv"
  done
  quiet "$dir" go build -trimpath -ldflags "$ld" -o "$dir/out/" sigs.k8s.io/cluster-api/core \
    sigs.k8s.io/cluster-api/cmd/clusterctl
  mv "$dir/out/core" "$BIN/capi-manager-$v"
  # Both kubeadm providers are main packages named "kubeadm", so they cannot share one -o directory.
  quiet "$dir" go build -trimpath -ldflags "$ld" -o "$BIN/capi-kubeadm-bootstrap-$v" sigs.k8s.io/cluster-api/bootstrap/kubeadm
  quiet "$dir" go build -trimpath -ldflags "$ld" -o "$BIN/capi-kubeadm-control-plane-$v" \
    sigs.k8s.io/cluster-api/controlplane/kubeadm
  mv "$dir/out/clusterctl" "$BIN/clusterctl-$v"
  # CRDs and webhook manifests ship in the module source; keep a copy next to the binaries.
  local mod cfg=$CACHE/capi-config-$v
  mod=$(cd "$dir" && go list -m -f '{{.Dir}}' sigs.k8s.io/cluster-api)
  rm -rf "$cfg.tmp" && mkdir -p "$cfg.tmp"
  for n in core bootstrap/kubeadm controlplane/kubeadm; do
    mkdir -p "$cfg.tmp/$n"
    cp -r "$mod/$n/config/crd" "$mod/$n/config/webhook" "$cfg.tmp/$n/"
  done
  chmod -R u+w "$cfg.tmp" && rm -rf "$cfg" && mv "$cfg.tmp" "$cfg"
}

build_kwok() {
  local v=$KWOK_VERSION
  if have kwok "$v" && { [ -n "${KWOK_STAGES_DIR:-}" ] || [ -d "$CACHE/kwok-stages-$v" ]; }; then return 0; fi
  local dir=$SRC/kwok-$v mod st=$CACHE/kwok-stages-$v
  new_module "$dir"
  quiet "$dir" go get "sigs.k8s.io/kwok/cmd/kwok@$v"
  quiet "$dir" go build -trimpath -ldflags '-s -w' -o "$BIN/kwok-$v" sigs.k8s.io/kwok/cmd/kwok
  # The standalone kwok binary needs Stage objects; the defaults ship in the module's kustomize tree.
  mod=$(cd "$dir" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  rm -rf "$st" && mkdir -p "$st"
  cp "$mod/kustomize/stage/node/fast/node-initialize.yaml" \
    "$mod/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    "$mod"/kustomize/stage/pod/fast/*.yaml "$st/"
  chmod -R u+w "$st"
}

build_autoscaler() {
  local tag=$AUTOSCALER_VERSION
  have cluster-autoscaler "$tag" && return 0
  local dir=$SRC/autoscaler-$tag pseudo gomod
  pseudo=$(autoscaler_pseudo_version "$tag")
  new_module "$dir"
  # cluster-autoscaler's go.mod carries replace lines (staging modules, its nested ./apis module), so
  # copy them into the wrapper, pointing ./apis at the published nested module of the same commit.
  gomod=$(cd "$dir" && go mod download -json "k8s.io/autoscaler/cluster-autoscaler@$pseudo" |
    sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  awk -v pseudo="$pseudo" '
    /^replace \(/ {inblock=1; print; next}
    inblock && /^\)/ {inblock=0; print; next}
    inblock { if ($0 ~ /=> \.\/apis/) { print "\tk8s.io/autoscaler/cluster-autoscaler/apis => k8s.io/autoscaler/cluster-autoscaler/apis " pseudo } else print; next }
    /^replace / { if ($0 ~ /=> \.\/apis/) print "replace k8s.io/autoscaler/cluster-autoscaler/apis => k8s.io/autoscaler/cluster-autoscaler/apis " pseudo; else print }
  ' "$gomod" >>"$dir/go.mod"
  quiet "$dir" go get "k8s.io/autoscaler/cluster-autoscaler@$pseudo"
  quiet "$dir" go build -tags clusterapi -trimpath -ldflags '-s -w' -o "$BIN/cluster-autoscaler-$tag" \
    k8s.io/autoscaler/cluster-autoscaler
}

autoscaler_served() {
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && go mod download -json "k8s.io/autoscaler/cluster-autoscaler@$(autoscaler_pseudo_version "$AUTOSCALER_VERSION")" \
    >/dev/null 2>&1)
  local rc=$?
  rm -rf "$tmp"
  return $rc
}

# The autoscaler publishes no module semver tags; map the release tag to its commit's pseudo-version.
autoscaler_pseudo_version() {
  case "$1" in
    cluster-autoscaler-1.34.5) echo v0.0.0-20260722070747-cb2123ed1314 ;;
    cluster-autoscaler-1.35.2) echo v0.0.0-20260722212750-2d42588803c7 ;;
    cluster-autoscaler-1.36.1) echo v0.0.0-20260722070747-35e8a280425c ;;
    v0.0.0-*) echo "$1" ;;
    *) log "unknown autoscaler tag $1: set AUTOSCALER_VERSION to a pseudo-version"; exit 1 ;;
  esac
}

groups=("$@")
[ ${#groups[@]} -gt 0 ] || groups=(etcd kube capi kwok autoscaler)
exec 9>"$CACHE/.build.lock"
flock 9 # two `make` runs at once would build the same thing twice
total=$SECONDS
for g in "${groups[@]}"; do
  case "$g" in
    etcd) timed "etcd $ETCD_VERSION" build_etcd ;;
    kube) timed "kubernetes $KUBERNETES_VERSION (apiserver, controller-manager, scheduler, kubectl)" build_kube ;;
    capi) timed "cluster-api $CAPI_VERSION (core, kubeadm bootstrap + control plane, clusterctl)" build_capi ;;
    kwok) timed "kwok $KWOK_VERSION" build_kwok ;;
    # The module proxy these machines use does not serve the autoscaler module (403 for every version):
    # say so and carry on; CLUSTER_AUTOSCALER_BIN supplies a binary (the Makefile and .ci/run set it to a
    # checksum-verified prebuilt one when there is one, see hack/prebuilt-autoscaler.sh).
    autoscaler)
      if [ -n "${CLUSTER_AUTOSCALER_BIN:-}" ] || [ -x "$BIN/cluster-autoscaler-$AUTOSCALER_VERSION" ] || autoscaler_served; then
        timed "cluster-autoscaler $AUTOSCALER_VERSION" build_autoscaler
      else
        log "cluster-autoscaler: NOT built: k8s.io/autoscaler/cluster-autoscaler is not served by GOPROXY=$(go env GOPROXY)." \
          "The autoscaler e2e tests will fail until CLUSTER_AUTOSCALER_BIN points at a build with -tags clusterapi" \
          "(README, \"The real cluster-autoscaler\", builds one from the upstream tag)."
      fi ;;
    *) log "unknown group $g"; exit 2 ;;
  esac
done
log "all requested tools ready in $((SECONDS - total)) s ($BIN)"
