"""Where the lab's binaries are: the cache filled by hack/build-tools.sh, or what the user points at.

Resolution order per tool: `<NAME>_BIN` (e.g. KUBE_APISERVER_BIN), then `KUBEBUILDER_ASSETS/<name>` for the
envtest trio, then `${CAPBM_CACHE:-~/.cache/capi-provider-baremetal}/bin/<name>-<pinned version>`.
The pinned versions live in hack/versions.env, shared with the build script.
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

HACK_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = HACK_DIR.parent


def versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (HACK_DIR / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("CAPBM_CACHE", Path.home() / ".cache" / "capi-provider-baremetal"))


# tool name -> the versions.env key its cached file name carries
_TOOL_VERSION_KEY = {
    "etcd": "ETCD_VERSION",
    "kube-apiserver": "KUBERNETES_VERSION",
    "kube-controller-manager": "KUBERNETES_VERSION",
    "kube-scheduler": "KUBERNETES_VERSION",
    "kubectl": "KUBERNETES_VERSION",
    "capi-manager": "CAPI_VERSION",
    "capi-kubeadm-bootstrap": "CAPI_VERSION",
    "capi-kubeadm-control-plane": "CAPI_VERSION",
    "clusterctl": "CAPI_VERSION",
    "kwok": "KWOK_VERSION",
    "cluster-autoscaler": "AUTOSCALER_VERSION",
}
_ENVTEST_ASSETS = {"etcd", "kube-apiserver", "kubectl"}


class ToolMissing(RuntimeError):
    pass


# The autoscaler's Go module is not served by the module proxy these machines use, so `make tools` cannot
# build it; say exactly what is missing and how to get it rather than letting its tests pass or skip.
_AUTOSCALER_MISSING = (
    "the real {version} (clusterapi provider) is not available, so the cluster-autoscaler end-to-end tests "
    "cannot run: no verified prebuilt binary was found (hack/prebuilt-autoscaler.sh looks in ../shared/bin "
    "and /work/shared/bin) and CLUSTER_AUTOSCALER_BIN is not set. Build it from the upstream tag "
    '(README, "The real cluster-autoscaler": `go build -tags clusterapi` in the tag\'s cluster-autoscaler/ '
    "folder) and set CLUSTER_AUTOSCALER_BIN to it"
)


def tool(name: str) -> Path:
    var = name.upper().replace("-", "_") + "_BIN"
    override = os.environ.get(var)
    if override:
        if not os.access(override, os.X_OK):
            raise ToolMissing(f"{var}={override} is not an executable file")
        return Path(override)
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and name in _ENVTEST_ASSETS and (Path(assets) / name).exists():
        return Path(assets) / name
    path = cache_dir() / "bin" / f"{name}-{versions()[_TOOL_VERSION_KEY[name]]}"
    if not path.exists() and name == "cluster-autoscaler":
        prebuilt = _prebuilt_autoscaler()
        if prebuilt:
            return prebuilt
        raise ToolMissing(_AUTOSCALER_MISSING.format(version=versions()["AUTOSCALER_VERSION"]))
    if not path.exists():
        raise ToolMissing(
            f"{name} is not built: run `make tools` (or hack/build-tools.sh), or set the *_BIN variable"
        )
    return path


@functools.cache
def _prebuilt_autoscaler() -> Path | None:
    """The checksum-verified prebuilt autoscaler next to the checkout, as `make` and .ci/run find it (so a
    plain `pytest` run finds it too)."""
    out = subprocess.run(
        [str(HACK_DIR / "prebuilt-autoscaler.sh")], capture_output=True, text=True, timeout=60, check=False
    ).stdout.strip()
    return Path(out) if out else None


def available(name: str) -> bool:
    try:
        return tool(name).exists()
    except ToolMissing:
        return False


@dataclass(frozen=True)
class CapiManifests:
    """Cluster API's CRDs and webhook manifests, copied out of the module cache by the build script."""

    root: Path

    @classmethod
    def locate(cls) -> CapiManifests:
        override = os.environ.get("CAPI_CONFIG_DIR")
        root = Path(override) if override else cache_dir() / f"capi-config-{versions()['CAPI_VERSION']}"
        if not root.is_dir():
            raise ToolMissing(f"Cluster API manifests missing at {root}: run `make tools`")
        return cls(root)

    def crds(self, component: str) -> list[Path]:
        return sorted((self.root / component / "crd" / "bases").glob("*.yaml"))

    def crd_labels(self, component: str) -> dict[str, str]:
        """Labels the component's kustomization adds to its CRDs (the contract labels CAPI resolves
        bootstrap/control-plane references with)."""
        kustomization = yaml.safe_load((self.root / component / "crd" / "kustomization.yaml").read_text())
        labels: dict[str, str] = {}
        for entry in kustomization.get("labels", []):
            labels.update(entry.get("pairs", {}))
        return labels

    def webhooks(self, component: str) -> Path:
        return self.root / component / "webhook" / "manifests.yaml"


def kwok_stages_dir() -> Path:
    override = os.environ.get("KWOK_STAGES_DIR")
    return Path(override) if override else cache_dir() / f"kwok-stages-{versions()['KWOK_VERSION']}"
