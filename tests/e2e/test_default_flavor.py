"""The operator's path with our default flavor: `clusterctl generate cluster` → KubeadmControlPlane puts the
control plane on a bare-metal host (kubeadm init), `kubectl scale` adds workers that join it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import release
import yaml
from lab import workload
from lab.hostlab import HostProfile
from lab.lab import Lab
from lab.tools import tool, versions

from tests.helpers import eventually, get_json, hosts_by_name

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def _generate(lab: Lab, ns: str, repo: Path, home: Path) -> str:
    url = urlparse(lab.cluster.server)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "xdg"),
        "CLUSTERCTL_DISABLE_VERSIONCHECK": "true",
        "GOPROXY": "off",
        # The lab's workload cluster is its own apiserver: that is the "VIP" of this control plane.
        "CONTROL_PLANE_ENDPOINT_IP": url.hostname or "",
        "CONTROL_PLANE_ENDPOINT_PORT": str(url.port),
    }
    res = subprocess.run(
        [str(tool("clusterctl")), "generate", "cluster", "fl", "--infrastructure",
         f"baremetal:v{release.project_version()}", "--config", str(repo / "clusterctl.yaml"),
         "--kubeconfig", str(lab.kubeconfig), "--kubernetes-version", versions()["KUBERNETES_VERSION"],
         "--control-plane-machine-count", "1", "--worker-machine-count", "0", "--target-namespace", ns],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_default_flavor_control_plane_and_workers_on_bare_metal(
    lab: Lab, namespace: str, tmp_path: Path
) -> None:
    ns = namespace
    lab.hosts.add_host("fl-cp", HostProfile(labels={"role": "control-plane"}), namespace=ns)
    for i in range(2):
        lab.hosts.add_host(f"fl-w{i}", HostProfile(labels={"role": "worker"}), namespace=ns)
    lab.wait_hosts_available_in(ns, 3)
    release.release(tmp_path / "repo")
    manifest = _generate(lab, ns, tmp_path / "repo", tmp_path)
    # As in any kubeadm cluster the control plane and joining nodes share one CA: the lab apiserver's.
    lab.cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump(workload.ca_secret("fl", ns, lab.cluster.ca_pem, lab.cluster.ca_key_pem)),
    )
    lab.cluster.kubectl("apply", "-f", "-", input=manifest)

    def cp_running() -> dict | None:
        items = get_json(lab.cluster, "machines", "-n", ns, "-l", "cluster.x-k8s.io/control-plane")["items"]
        return next((m for m in items if (m.get("status") or {}).get("nodeRef")), None)

    cp = eventually("KubeadmControlPlane's machine Running on fl-cp", cp_running, timeout=180)
    assert (
        hosts_by_name(lab.cluster, ns)["fl-cp"]["spec"]["consumerRef"]["name"]
        == cp["spec"]["infrastructureRef"]["name"]
    )
    kcp = get_json(lab.cluster, "kubeadmcontrolplane", "fl-control-plane", "-n", ns)
    assert kcp["status"]["initialization"]["controlPlaneInitialized"] is True

    lab.cluster.kubectl("scale", "machinedeployment", "fl-md-0", "-n", ns, "--replicas=2")

    def workers_running() -> list[dict] | None:
        items = get_json(lab.cluster, "machines", "-n", ns, "-l", "cluster.x-k8s.io/deployment-name=fl-md-0")
        running = [m for m in items["items"] if (m.get("status") or {}).get("phase") == "Running"]
        return running if len(running) == 2 else None

    workers = eventually("2 workers Running", workers_running, timeout=180)
    nodes = {n["metadata"]["name"]: n for n in get_json(lab.cluster, "nodes")["items"]}
    for m in [cp, *workers]:
        node = nodes[m["status"]["nodeRef"]["name"]]
        assert node["spec"]["providerID"] == m["spec"]["providerID"]
        assert node["spec"]["providerID"].startswith(f"baremetal://{ns}/fl-")
    # The kube-vip static pod the flavor ships reached the control plane host with the rest of the data.
    kube_vip = lab.hosts.machines["fl-cp"].host.root / "etc/kubernetes/manifests/kube-vip.yaml"
    assert kube_vip.exists() and "kube-vip" in kube_vip.read_text()
