"""The lab host's "kubelet": its Node object, the files that say it joined, and starting/stopping it.

A lab host has no kubelet process. Joining registers the Node object the kubelet would have registered
(name, providerID, labels, taints, capacity from the host's hardware facts), annotated
`kwok.x-k8s.io/node: fake` so KWOK's node stages keep it Ready and heartbeating, as a running kubelet would.
"Stopping the kubelet" (kubeadm reset, power off) removes that annotation, so the Node goes NotReady; the
Node object itself stays until Cluster API deletes it, as in real life.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from lab.kubeapi import KubeAPIError, KubeClient, set_node_annotation
from lab.standins.hostfs import HostFS, write_file

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_VALUE = "fake"
# Written by join/init, removed by reset; the lab host reads it on power off to know it had joined.
MARKER = "/var/lib/kubelet/lab-node.json"
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "ppc64le": "ppc64le"}
_GIB = 1024**3


class RegistrationError(Exception):
    pass


def goarch(facts: dict[str, Any]) -> str:
    arch = str(facts.get("architecture") or "x86_64").lower()
    return _ARCH.get(arch, arch)


def disk_bytes(disk: dict[str, Any]) -> int:
    if disk.get("sizeBytes"):
        return int(disk["sizeBytes"])
    if disk.get("sizeGiB"):
        return int(float(disk["sizeGiB"]) * _GIB)
    return 0


def capacity(facts: dict[str, Any]) -> dict[str, str]:
    out = {
        "cpu": str(int(facts.get("cpuCores") or 1)),
        "memory": f"{int(facts.get('memoryMiB') or 1024) * 1024}Ki",
        "pods": "110",
    }
    disks = facts.get("disks") or []
    if disks and disk_bytes(disks[0]):
        out["ephemeral-storage"] = str(disk_bytes(disks[0]))
    return out


def parse_node_labels(text: str) -> dict[str, str]:
    """The kubelet's --node-labels syntax: "k1=v1,k2=v2"."""
    labels = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RegistrationError(f"bad node label {item!r}: expected key=value")
        labels[key] = value
    return labels


def build_node(
    name: str,
    *,
    facts: dict[str, Any],
    provider_id: str | None,
    node_labels: str = "",
    taints: list[dict[str, Any]] | None = None,
    control_plane: bool = False,
    kubelet_version: str | None = None,
) -> dict[str, Any]:
    """The Node object a kubelet on this hardware would register (plus the KWOK annotation)."""
    arch = goarch(facts)
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch,
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": arch,
        **parse_node_labels(node_labels),
    }
    if control_plane:
        # What kubeadm's mark-control-plane phase adds.
        labels["node-role.kubernetes.io/control-plane"] = ""
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    spec: dict[str, Any] = {}
    if provider_id:
        spec["providerID"] = provider_id
    if taints:
        spec["taints"] = [
            {k: t[k] for k in ("key", "value", "effect") if t.get(k) is not None} for t in taints
        ]
    cap = capacity(facts)
    node_info = {
        "architecture": arch,
        "operatingSystem": "linux",
        "osImage": "capi-provider-baremetal lab host",
    }
    if kubelet_version:
        node_info["kubeletVersion"] = kubelet_version
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                KWOK_ANNOTATION: KWOK_VALUE,
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": spec,
        "status": {"capacity": cap, "allocatable": dict(cap), "nodeInfo": node_info},
    }


def register_node(client: KubeClient, node: dict[str, Any], *, retry_s: float = 30.0) -> str:
    """Create the Node; if it exists (a re-join), reconcile labels, annotations and taints like the kubelet
    does. Returns "created" or "updated". Transport errors are retried for `retry_s`; HTTP errors are not."""
    deadline = time.monotonic() + retry_s
    name = node["metadata"]["name"]
    while True:
        try:
            return _register_once(client, node)
        except KubeAPIError as e:
            if e.status == 403:
                raise RegistrationError(
                    f"registering Node {name!r} was forbidden: {e}. The lab must allow the bootstrap token's "
                    "group (system:bootstrappers:kubeadm:default-node-token) to create, get and patch nodes"
                ) from None
            if e.status == 401:
                raise RegistrationError(
                    f"the API server rejected the bootstrap token while registering Node {name!r} "
                    "(expired, deleted, or --enable-bootstrap-token-auth is off)"
                ) from None
            if e.status is not None or time.monotonic() > deadline:
                raise RegistrationError(f"registering Node {name!r} failed: {e}") from None
            time.sleep(1.0)


def _register_once(client: KubeClient, node: dict[str, Any]) -> str:
    try:
        client.create("/api/v1/nodes", node)
        return "created"
    except KubeAPIError as e:
        if not e.conflict:
            raise
    name = node["metadata"]["name"]
    path = f"/api/v1/nodes/{urllib.parse.quote(name)}"
    current = client.get(path)
    want = node["spec"].get("providerID")
    have = (current.get("spec") or {}).get("providerID")
    if want and have and want != have:
        raise RegistrationError(f"Node {name!r} already exists with providerID {have!r}, not {want!r}")
    patch: dict[str, Any] = {
        "metadata": {"labels": node["metadata"]["labels"], "annotations": node["metadata"]["annotations"]},
        "spec": {"taints": node["spec"].get("taints")} if "taints" in node["spec"] else {},
    }
    if want and not have:
        patch["spec"]["providerID"] = want
    client.merge_patch(path, patch)
    return "updated"


@dataclass(frozen=True)
class KubeletMarker:
    node_name: str
    server: str
    provider_id: str | None
    control_plane: bool


def write_marker(fs: HostFS, marker: KubeletMarker) -> None:
    data = {
        "nodeName": marker.node_name,
        "server": marker.server,
        "providerID": marker.provider_id,
        "controlPlane": marker.control_plane,
        "joinedAt": time.time(),
    }
    write_file(fs.path(MARKER), json.dumps(data, indent=1), 0o644)


def read_marker(fs: HostFS) -> KubeletMarker | None:
    try:
        data = json.loads(fs.path(MARKER).read_text())
        return KubeletMarker(
            data["nodeName"], data.get("server", ""), data.get("providerID"), bool(data.get("controlPlane"))
        )
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def set_kubelet_running(client: KubeClient, node_name: str, running: bool) -> bool:
    """Start/stop the simulated kubelet: add/remove the KWOK annotation. False if the Node is gone."""
    return set_node_annotation(client, node_name, KWOK_ANNOTATION, KWOK_VALUE if running else None)
