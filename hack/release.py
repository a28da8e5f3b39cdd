"""Build the clusterctl release of this provider (`make release-manifests`).

    python hack/release.py [--out out]

writes a clusterctl local repository and a config that points at it:

    out/infrastructure-baremetal/v<version>/
        infrastructure-components.yaml    kustomize render of config/default
        metadata.yaml                     release series -> contract
        cluster-template*.yaml            the flavors, copied from flavors/
    out/clusterctl.yaml                   `--config` for clusterctl

The version is pyproject.toml's. Before building it regenerates flavors/ from hack/flavorgen.py, so one
command refreshes everything; the unit tests catch a checkout whose committed flavors are stale.
kustomize is kubectl's built-in one (the lab's kubectl, else `kubectl` on PATH).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

HACK_DIR = Path(__file__).resolve().parent
REPO_DIR = HACK_DIR.parent
if str(HACK_DIR) not in sys.path:  # `python hack/release.py` and imports from tests alike
    sys.path.insert(0, str(HACK_DIR))

import flavorgen  # noqa: E402

PROVIDER_NAME = "baremetal"
PROVIDER_LABEL = f"infrastructure-{PROVIDER_NAME}"
CONTRACT = "v1beta2"
IMAGE_REPOSITORY = "ghcr.io/capi-provider-baremetal/controller"
NAMESPACE = "capi-provider-baremetal-system"
COMPONENTS_FILE = "infrastructure-components.yaml"


class ReleaseError(Exception):
    pass


def project_version() -> str:
    return str(tomllib.loads((REPO_DIR / "pyproject.toml").read_text())["project"]["version"])


def image_reference(version: str | None = None) -> str:
    """The controller image a release deploys by default; `make docker-build` tags the same."""
    return f"{IMAGE_REPOSITORY}:v{version or project_version()}"


def kubectl_binary() -> str:
    try:
        from lab.tools import ToolMissing, tool

        try:
            return str(tool("kubectl"))
        except ToolMissing:
            pass
    except ImportError:
        pass
    found = shutil.which("kubectl")
    if not found:
        raise ReleaseError("no kubectl: run `make tools`, set KUBECTL_BIN, or put kubectl on PATH")
    return found


def kustomize(directory: Path, kubectl: str | None = None) -> str:
    res = subprocess.run(
        [kubectl or kubectl_binary(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if res.returncode != 0:
        raise ReleaseError(f"kubectl kustomize {directory} failed: {res.stderr.strip()}")
    return res.stdout


def _check_components(docs: list[dict[str, Any]], version: str) -> None:
    """The rules clusterctl and this project rely on, checked before anything is written."""
    namespaces = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    if namespaces != [NAMESPACE]:
        raise ReleaseError(f"components must hold exactly the Namespace {NAMESPACE}, found {namespaces}")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    if len(deployments) != 1:
        raise ReleaseError(f"expected one Deployment, found {len(deployments)}")
    containers = deployments[0]["spec"]["template"]["spec"]["containers"]
    manager = [c for c in containers if c["name"] == "manager"]
    if not manager:
        raise ReleaseError("clusterctl needs the controller container to be named `manager`")
    want = image_reference(version)
    if manager[0]["image"] != want:
        raise ReleaseError(
            f"config/manager image is {manager[0]['image']!r}, but version {version} ships {want!r}: "
            "update config/manager/manager.yaml"
        )


def components(kubectl: str | None = None, version: str | None = None) -> str:
    version = version or project_version()
    text = kustomize(REPO_DIR / "config" / "default", kubectl)
    _check_components([d for d in yaml.safe_load_all(text) if d], version)
    header = (
        f"# capi-provider-baremetal v{version}: what `clusterctl init --infrastructure {PROVIDER_NAME}` "
        "installs.\n# Rendered by hack/release.py from config/default (kubectl kustomize); do not edit.\n"
    )
    return header + text


WATCH_NAMESPACE_VAR = "${BAREMETAL_WATCH_NAMESPACE}"
NAMESPACED_COMPONENTS_FILE = "infrastructure-components-namespaced.yaml"
# Cluster-scoped things the controller needs even when it watches one namespace: its peering object (leader
# election is always cluster-wide) and the CRDs kopf follows.
_CLUSTER_SCOPED_RESOURCES = {"clusterkopfpeerings", "customresourcedefinitions", "namespaces"}


def namespaced_components(text: str) -> str:
    """The same installation for a controller that watches one namespace (`--namespace`): its rights on
    namespaced resources (Secrets among them) become a Role and RoleBinding in that namespace, and only what
    must be cluster-wide stays in a small ClusterRole. The namespace is a clusterctl variable."""
    docs = [d for d in yaml.safe_load_all(text) if d]
    out: list[dict[str, Any]] = []
    for d in docs:
        name = d["metadata"]["name"]
        if d["kind"] == "ClusterRole" and name == "capi-provider-baremetal-manager-role":
            cluster, local = [], []
            for r in d["rules"]:
                # Namespaces are listed only to follow namespace globs; one watched namespace has none.
                wide = [x for x in r["resources"] if x in _CLUSTER_SCOPED_RESOURCES and x != "namespaces"]
                narrow = [x for x in r["resources"] if x not in _CLUSTER_SCOPED_RESOURCES]
                cluster += [{**r, "resources": wide}] if wide else []
                local += [{**r, "resources": narrow}] if narrow else []
            meta = {"labels": d["metadata"].get("labels", {})}
            out.append(
                {
                    **d,
                    "metadata": {**meta, "name": "capi-provider-baremetal-manager-clusterwide"},
                    "rules": cluster,
                }
            )
            out.append(
                {
                    "apiVersion": d["apiVersion"],
                    "kind": "Role",
                    "metadata": {**meta, "name": name, "namespace": WATCH_NAMESPACE_VAR},
                    "rules": local,
                }
            )
        elif d["kind"] == "ClusterRoleBinding" and name == "capi-provider-baremetal-manager-rolebinding":
            meta = {"labels": d["metadata"].get("labels", {})}
            out.append(
                {
                    **d,
                    "metadata": {**meta, "name": "capi-provider-baremetal-manager-clusterwide"},
                    "roleRef": {**d["roleRef"], "name": "capi-provider-baremetal-manager-clusterwide"},
                }
            )
            out.append(
                {
                    **d,
                    "kind": "RoleBinding",
                    "metadata": {**meta, "name": name, "namespace": WATCH_NAMESPACE_VAR},
                    "roleRef": {**d["roleRef"], "kind": "Role"},
                }
            )
        else:
            if d["kind"] == "Deployment":
                [manager] = [c for c in d["spec"]["template"]["spec"]["containers"] if c["name"] == "manager"]
                manager["args"] = [*manager["args"], f"--namespace={WATCH_NAMESPACE_VAR}"]
            out.append(d)
    return (
        "# capi-provider-baremetal watching one namespace, ${BAREMETAL_WATCH_NAMESPACE}: rights on Secrets\n"
        "# and everything namespaced only there (a Role). Rendered by hack/release.py; docs/security.md.\n"
        + yaml.safe_dump_all(out, sort_keys=False)
    )


def metadata(version: str | None = None) -> str:
    major, minor, _ = (version or project_version()).split(".", 2)
    doc = {
        "apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3",
        "kind": "Metadata",
        "releaseSeries": [{"major": int(major), "minor": int(minor), "contract": CONTRACT}],
    }
    return (
        "# Which CAPI contract each release series of capi-provider-baremetal implements.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )


def clusterctl_config(components_path: Path) -> str:
    doc = {
        "providers": [
            {
                "name": PROVIDER_NAME,
                "type": "InfrastructureProvider",
                "url": components_path.resolve().as_uri(),
            }
        ]
    }
    return (
        "# clusterctl configuration registering this checkout's release as a local repository\n"
        "# (written by hack/release.py). Use it with --config:\n"
        f"#   clusterctl init --infrastructure {PROVIDER_NAME} --config out/clusterctl.yaml\n"
        f"#   clusterctl generate cluster c1 --infrastructure {PROVIDER_NAME} \\\n"
        "#     --config out/clusterctl.yaml --kubernetes-version v1.34.4 \\\n"
        "#     --control-plane-machine-count 3 --worker-machine-count 2\n"
        "# Template and provider variables may be set here as top-level keys instead of the environment\n"
        "# (the environment wins), and the controller image overridden (a mirror, a private build):\n"
        "#   CONTROL_PLANE_ENDPOINT_IP: 192.0.2.10\n"
        '#   BAREMETAL_POLL_INTERVAL: "60"\n'
        "#   images:\n"
        f"#     {PROVIDER_LABEL}:\n"
        f"#       repository: {IMAGE_REPOSITORY.rsplit('/', 1)[0]}\n"
        f"#       tag: v{project_version()}\n" + yaml.safe_dump(doc, sort_keys=False)
    )


def release(out: Path, kubectl: str | None = None) -> Path:
    """Write the local repository for this version under `out`; returns the version directory."""
    version = project_version()
    stale = flavorgen.drift()
    if stale:
        raise ReleaseError(f"flavors/ is out of date ({', '.join(stale)}): run `python hack/flavorgen.py`")
    comps = components(kubectl, version)
    vdir = out / PROVIDER_LABEL / f"v{version}"
    if vdir.exists():
        shutil.rmtree(vdir)  # a flavor removed from flavors/ must not linger in the release
    vdir.mkdir(parents=True)
    (vdir / COMPONENTS_FILE).write_text(comps)
    (vdir / NAMESPACED_COMPONENTS_FILE).write_text(namespaced_components(comps))
    (vdir / "metadata.yaml").write_text(metadata(version))
    for template in sorted(flavorgen.FLAVORS_DIR.glob("cluster-template*.yaml")):
        shutil.copyfile(template, vdir / template.name)
    (out / "clusterctl.yaml").write_text(clusterctl_config(vdir / COMPONENTS_FILE))
    return vdir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO_DIR / "out", help="output directory (default: out/)")
    a = p.parse_args(argv)
    try:
        flavorgen.write()
        vdir = release(a.out)
    except ReleaseError as e:
        print(f"release-manifests: {e}", file=sys.stderr)
        return 1
    for path in sorted(vdir.iterdir()):
        print(path)
    print(a.out / "clusterctl.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
