#!/usr/bin/env bash
# Prints the path of the prebuilt real cluster-autoscaler (the version pinned in hack/versions.env, built
# with the clusterapi provider) when one is provided next to this checkout, and only if its checksum
# matches; prints nothing otherwise. Its Go module is not served by the module proxy these machines use,
# so hack/build-tools.sh cannot build it here (README "The real cluster-autoscaler" has the recipe).
#
# Looked for, in order: <repo>/../shared/bin (CI clones the repo next to the shared folder), then
# /work/shared/bin (worktrees elsewhere on the development machines).
# Used by .ci/run and the Makefile to set CLUSTER_AUTOSCALER_BIN.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
name=$AUTOSCALER_VERSION

for dir in "$here/../../shared/bin" /work/shared/bin; do
  [ -x "$dir/$name" ] || continue
  dir=$(cd "$dir" && pwd)
  if [ ! -f "$dir/$name.sha256" ]; then
    echo "prebuilt-autoscaler: $dir/$name has no $name.sha256 next to it; not used" >&2
    continue
  fi
  if (cd "$dir" && sha256sum --quiet --strict -c "$name.sha256" >/dev/null 2>&1); then
    echo "$dir/$name"
    exit 0
  fi
  echo "prebuilt-autoscaler: $dir/$name does NOT match $name.sha256; not used" >&2
done
