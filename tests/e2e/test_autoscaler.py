"""The real cluster-autoscaler (1.34.5, clusterapi provider) in the loop: pending pods become bare-metal
nodes through real CAPI and this provider, idle nodes go back to the pool, the right node group is chosen,
and what the autoscaler expects of an empty group is what then registers.

The autoscaler runs as its own process under the RBAC we document (config/autoscaler/rbac.yaml), with the
default 10 s scan interval. Nothing here scales a MachineDeployment by hand. Without the autoscaler binary
these tests fail and say how to get it (hack/lab/tools.py); they never skip.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab import workload
from lab.autoscaler import ClusterAutoscaler
from lab.hostlab import HostProfile, LabMachine
from lab.lab import Lab
from lab.tools import tool, versions

from tests.helpers import eventually, get_json, hosts_by_name, ipmitool_power

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

CLUSTER = "c1"
MIN_SIZE = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size"
MAX_SIZE = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"
LABELS_ANNOTATION = "capacity.cluster-autoscaler.kubernetes.io/labels"
TAINTS_ANNOTATION = "capacity.cluster-autoscaler.kubernetes.io/taints"
# CAPI copies node.cluster.x-k8s.io/* labels from the Machine to its Node. Pods here select on it, so they can
# only land on this test's nodes (the lab's apiserver holds every test's Nodes).
POOL_LABEL = "node.cluster.x-k8s.io/autoscaler-test"
# Taints the autoscaler itself puts on nodes it is about to remove; not part of what a node group looks like.
_AUTOSCALER_TAINTS = {"ToBeDeletedByClusterAutoscaler", "DeletionCandidateOfClusterAutoscaler"}


# ------------------------------------------------------------------------------------------------ set-up


def _apply(lab: Lab, docs: list[dict[str, Any]]) -> None:
    lab.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def _control_plane(lab: Lab, ns: str) -> None:
    """A workload cluster whose first control-plane machine runs kubeadm init on a lab host (so workers
    join with CAPBK's real join data)."""
    lab.hosts.add_host(f"{ns}-cp", HostProfile(labels={"role": "control-plane"}), namespace=ns)
    version = versions()["KUBERNETES_VERSION"]
    # Machine names become Node names, and every test's Nodes share the lab's apiserver.
    cp = f"cp-{ns}"
    docs = [workload.ca_secret(CLUSTER, ns, lab.cluster.ca_pem, lab.cluster.ca_key_pem)]
    docs += workload.cluster(CLUSTER, ns, lab.cluster.server)
    docs += workload.control_plane_machine(
        cp, ns, CLUSTER, version, {"hostSelector": {"matchLabels": {"role": "control-plane"}}}
    )
    _apply(lab, docs)
    eventually(
        "control plane machine Running",
        lambda: get_json(lab.cluster, "machine", cp, "-n", ns).get("status", {}).get("nodeRef"),
        timeout=240,
    )


def _node_group(
    lab: Lab,
    ns: str,
    name: str,
    *,
    role: str,
    max_size: int,
    kubelet_labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    pre_kubeadm: list[str] | None = None,
) -> None:
    """A MachineDeployment at 0 replicas that the autoscaler may scale between 0 and `max_size`, on hosts
    labelled `role`. The labels and taints its nodes will carry are declared to the autoscaler with the
    capacity annotations: the clusterapi provider reads them from there when the group is empty."""
    kubelet_labels = kubelet_labels or {}
    node_labels = {POOL_LABEL: ns}
    annotations = {
        MIN_SIZE: "0",
        MAX_SIZE: str(max_size),
        LABELS_ANNOTATION: ",".join(f"{k}={v}" for k, v in {**node_labels, **kubelet_labels}.items()),
    }
    if taints:
        annotations[TAINTS_ANNOTATION] = ",".join(f"{t['key']}={t['value']}:{t['effect']}" for t in taints)
    docs = workload.machine_deployment(
        name,
        ns,
        CLUSTER,
        versions()["KUBERNETES_VERSION"],
        replicas=0,
        machine_spec={"hostSelector": {"matchLabels": {"role": role}}},
        annotations=annotations,
        node_labels=node_labels,
    )
    kct = next(d for d in docs if d["kind"] == "KubeadmConfigTemplate")
    spec = kct["spec"]["template"]["spec"]
    registration = spec["joinConfiguration"]["nodeRegistration"]
    if kubelet_labels:
        registration["kubeletExtraArgs"] = [
            *registration["kubeletExtraArgs"],
            {"name": "node-labels", "value": ",".join(f"{k}={v}" for k, v in kubelet_labels.items())},
        ]
    if taints is not None:
        registration["taints"] = taints
    if pre_kubeadm:
        spec["preKubeadmCommands"] = pre_kubeadm
    _apply(lab, docs)


def _wait_capacity(lab: Lab, ns: str, template: str, cpu: str) -> dict[str, Any]:
    """Until the template publishes the capacity of a host with `cpu` cores (what scale from zero reads)."""
    return eventually(
        f"template {template} capacity from the inventory (cpu {cpu})",
        lambda: (
            st
            if (
                (st := get_json(lab.cluster, "bmmt", template, "-n", ns).get("status") or {}).get("capacity")
                or {}
            ).get("cpu")
            == cpu
            else None
        ),
        timeout=90,
    )


@pytest.fixture
def autoscaler(lab: Lab, namespace: str) -> Iterator[ClusterAutoscaler]:
    """The real autoscaler for this test's cluster, stopped when the test ends. Without the binary the test
    fails here, before any set-up, saying how to get it."""
    tool("cluster-autoscaler")
    ca = ClusterAutoscaler(lab, namespace, CLUSTER)
    try:
        yield ca
    finally:
        ca.stop()


# ------------------------------------------------------------------------------------------------ workload


def _pod_spec(
    ns: str, cpu: str, memory: str = "1Gi", tolerations: list[dict[str, str]] | None = None
) -> dict:
    spec: dict[str, Any] = {
        "nodeSelector": {POOL_LABEL: ns},
        "containers": [
            {
                "name": "app",
                "image": "registry.k8s.io/pause:3.10",
                "resources": {"requests": {"cpu": cpu, "memory": memory}},
            }
        ],
    }
    if tolerations:
        spec["tolerations"] = tolerations
    return spec


def _deployment(name: str, ns: str, replicas: int, cpu: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": _pod_spec(ns, cpu)},
        },
    }


def _pod(name: str, ns: str, cpu: str, **kw: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": _pod_spec(ns, cpu, **kw),
    }


def _pods(lab: Lab, ns: str, selector: str | None = None) -> list[dict[str, Any]]:
    return get_json(lab.cluster, "pods", "-n", ns, *(["-l", selector] if selector else []))["items"]


def _running_on(pod: dict[str, Any]) -> str | None:
    st = pod.get("status") or {}
    return pod["spec"].get("nodeName") if st.get("phase") == "Running" else None


def _replicas(lab: Lab, ns: str, md: str) -> int:
    return int(get_json(lab.cluster, "machinedeployment", md, "-n", ns)["spec"].get("replicas") or 0)


def _machines(lab: Lab, ns: str, md: str) -> list[dict[str, Any]]:
    return get_json(lab.cluster, "machines", "-n", ns, "-l", f"cluster.x-k8s.io/deployment-name={md}")[
        "items"
    ]


def _events(lab: Lab, ns: str, pod: str, reason: str) -> list[str]:
    items = get_json(
        lab.cluster, "events", "-n", ns, "--field-selector", f"involvedObject.name={pod},reason={reason}"
    )["items"]
    return [e.get("message", "") for e in items]


def _host_of_node(lab: Lab, ns: str, node_name: str) -> str:
    node = get_json(lab.cluster, "node", node_name)
    provider_id = node["spec"]["providerID"]
    assert provider_id.startswith(f"baremetal://{ns}/"), provider_id
    return provider_id.split("/")[3]


def _data_disk_signature(m: LabMachine) -> str:
    disk = Path(m.host.root) / "dev" / "sdb"
    return subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", str(disk)], capture_output=True, text=True
    ).stdout.strip()


# ------------------------------------------------------------------------------------------------ tests


def test_pending_pods_scale_a_node_group_from_zero_and_idle_nodes_return_to_the_pool(
    lab: Lab, namespace: str, autoscaler: ClusterAutoscaler
) -> None:
    ns = namespace
    _control_plane(lab, ns)
    workers = [
        lab.hosts.add_host(
            f"{ns}-w{i}", HostProfile(cpu_cores=16, memory_gib=64, labels={"role": "worker"}), namespace=ns
        )
        for i in range(3)
    ]
    lab.wait_hosts_available_in(ns, 3)
    # The node's workload leaves a filesystem signature on its data disk (cleaning must remove it).
    _node_group(lab, ns, "workers", role="worker", max_size=3, pre_kubeadm=["mkswap /dev/sdb"])
    st = _wait_capacity(lab, ns, "workers", "16")
    assert st["capacity"]["memory"] == "64Gi" and st["matchingHosts"] == 3
    autoscaler.start()

    # Two pods of 10 CPUs each: more than the cluster has (no worker node at all), and one per 16-core node.
    _apply(lab, [_deployment("app", ns, replicas=2, cpu="10")])
    eventually(
        "the autoscaler scales the node group 0 -> 2", lambda: _replicas(lab, ns, "workers") == 2, timeout=180
    )
    pods = eventually(
        "both pods Running on new nodes",
        lambda: (p := _pods(lab, ns, "app=app")) and len(p) == 2 and all(_running_on(x) for x in p) and p,
        timeout=300,
    )
    nodes = {_running_on(p) for p in pods}
    assert len(nodes) == 2, "10 + 10 CPUs do not fit one 16-core node"
    used = {_host_of_node(lab, ns, n) for n in nodes if n}
    hosts = hosts_by_name(lab.cluster, ns)
    for name in used:
        assert hosts[name]["status"]["provisioningState"] == "provisioned"
        assert hosts[name]["spec"]["consumerRef"]
        assert ipmitool_power(lab.hosts.machines[name]) == "on"
        assert _data_disk_signature(lab.hosts.machines[name]) == "swap"
    spare = ({w.name for w in workers} - used).pop()
    assert hosts[spare]["status"]["provisioningState"] == "available", "only as many nodes as the pods need"
    assert _replicas(lab, ns, "workers") == 2
    for p in pods:
        assert any(
            "MachineDeployment/" + ns + "/workers" in m
            for m in _events(lab, ns, p["metadata"]["name"], "TriggeredScaleUp")
        )

    # Idle: after --scale-down-unneeded-time the autoscaler removes both nodes; the provider resets, wipes and
    # powers off their hosts and returns them to the pool.
    lab.cluster.kubectl("delete", "deployment", "app", "-n", ns, "--wait=true")
    eventually(
        "the autoscaler scales the node group down to 0",
        lambda: _replicas(lab, ns, "workers") == 0,
        timeout=300,
    )

    def back_in_pool() -> bool:
        hs = hosts_by_name(lab.cluster, ns)
        return all(
            not hs[n]["spec"].get("consumerRef")
            and hs[n]["status"].get("provisioningState") == "available"
            and hs[n]["status"].get("powerState") == "off"
            for n in used
        )

    eventually("both hosts reset, cleaned, powered off and available", back_in_pool, timeout=300)
    for name in used:
        assert ipmitool_power(lab.hosts.machines[name]) == "off", "the BMC itself reports the host off"
        assert _data_disk_signature(lab.hosts.machines[name]) == "", "the data disk was wiped"

    def machines_and_nodes_gone() -> bool:
        remaining = {n["metadata"]["name"] for n in get_json(lab.cluster, "nodes")["items"]}
        return not _machines(lab, ns, "workers") and not nodes & remaining

    eventually("CAPI finishes deleting the Machines and their Nodes", machines_and_nodes_gone, timeout=120)
    eventually(
        "the template counts all three hosts again",
        lambda: (
            (get_json(lab.cluster, "bmmt", "workers", "-n", ns).get("status") or {}).get("matchingHosts") == 3
        ),
        timeout=60,
    )


def test_the_autoscaler_picks_the_node_group_whose_hosts_fit_the_pod(
    lab: Lab, namespace: str, autoscaler: ClusterAutoscaler
) -> None:
    ns = namespace
    _control_plane(lab, ns)
    for i in range(2):
        lab.hosts.add_host(
            f"{ns}-s{i}", HostProfile(cpu_cores=16, memory_gib=64, labels={"role": "small"}), namespace=ns
        )
        lab.hosts.add_host(
            f"{ns}-b{i}", HostProfile(cpu_cores=64, memory_gib=256, labels={"role": "big"}), namespace=ns
        )
    lab.wait_hosts_available_in(ns, 4)
    _node_group(lab, ns, "small", role="small", max_size=2)
    _node_group(lab, ns, "big", role="big", max_size=2)
    _wait_capacity(lab, ns, "small", "16")
    _wait_capacity(lab, ns, "big", "64")
    autoscaler.start()

    # 60 CPUs fit only a 64-core server. 100 CPUs fit none: the autoscaler must not scale anything for it.
    _apply(lab, [_pod("needs-big", ns, "60"), _pod("fits-nowhere", ns, "100")])
    node = eventually(
        "needs-big Running",
        lambda: _running_on(get_json(lab.cluster, "pod", "needs-big", "-n", ns)),
        timeout=300,
    )
    assert get_json(lab.cluster, "node", node)["status"]["capacity"]["cpu"] == "64"
    assert _replicas(lab, ns, "big") == 1
    assert _replicas(lab, ns, "small") == 0 and not _machines(lab, ns, "small"), (
        "the 16-core group stayed at 0"
    )
    assert any(f"MachineDeployment/{ns}/big" in m for m in _events(lab, ns, "needs-big", "TriggeredScaleUp"))
    eventually(
        "fits-nowhere reported as not triggering a scale-up",
        lambda: _events(lab, ns, "fits-nowhere", "NotTriggerScaleUp"),
        timeout=120,
    )
    assert not get_json(lab.cluster, "pod", "fits-nowhere", "-n", ns)["spec"].get("nodeName")
    lab.cluster.kubectl("delete", "pod", "fits-nowhere", "-n", ns, "--wait=true")

    # The small group is a real candidate: a 10-CPU pod does not fit the big node's 4 spare CPUs, both groups
    # could serve it, and the least-waste expander picks the 16-core servers over another 64-core one.
    _apply(lab, [_pod("fits-small", ns, "10")])
    node = eventually(
        "fits-small Running",
        lambda: _running_on(get_json(lab.cluster, "pod", "fits-small", "-n", ns)),
        timeout=300,
    )
    assert get_json(lab.cluster, "node", node)["status"]["capacity"]["cpu"] == "16"
    assert _replicas(lab, ns, "small") == 1
    assert _replicas(lab, ns, "big") == 1, "the big group was not grown for a pod the small one serves"
    assert any(
        f"MachineDeployment/{ns}/small" in m for m in _events(lab, ns, "fits-small", "TriggeredScaleUp")
    )


def _quantity(q: str) -> float:
    """Kubernetes quantities as numbers, enough for capacities (cpu, memory, storage, pods)."""
    suffixes = {
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "m": 1e-3,
    }
    for s, mult in sorted(suffixes.items(), key=lambda kv: -len(kv[0])):
        if q.endswith(s):
            return float(q[: -len(s)]) * mult
    return float(q)


def test_what_the_autoscaler_expects_of_an_empty_group_is_the_node_that_registers(
    lab: Lab, namespace: str, autoscaler: ClusterAutoscaler
) -> None:
    ns = namespace
    _control_plane(lab, ns)
    profile = HostProfile(
        cpu_cores=32,
        memory_gib=128,
        disks=(("sda", "NVMe", 960), ("sdb", "NVMe", 3840)),
        labels={"role": "gpu-less"},
    )
    # Two such hosts and room for two nodes: were the estimate wrong, the autoscaler could (and would) add a
    # second node for a pod that stays pending on the first.
    for i in range(2):
        lab.hosts.add_host(f"{ns}-h{i}", profile, namespace=ns)
    lab.wait_hosts_available_in(ns, 2)
    taint = {"key": "dedicated", "value": ns, "effect": "NoSchedule"}
    _node_group(
        lab,
        ns,
        "tainted",
        role="gpu-less",
        max_size=2,
        kubelet_labels={"example.com/disk": "nvme"},
        taints=[taint],
    )
    _wait_capacity(lab, ns, "tainted", "32")
    autoscaler.start()

    # What the autoscaler would add for the empty group: built from our template's status.capacity and the
    # MachineDeployment's annotations.
    group = f"MachineDeployment/{ns}/tainted"
    expected = eventually(
        "the autoscaler's template node for the empty group",
        lambda: ((autoscaler.snapshot().get("TemplateNodes") or {}).get(group) or {}).get("Node"),
        timeout=120,
    )
    assert not _machines(lab, ns, "tainted")

    pod = _pod(
        "picky",
        ns,
        "20",
        memory="64Gi",
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": ns, "effect": "NoSchedule"}],
    )
    pod["spec"]["nodeSelector"]["example.com/disk"] = "nvme"
    _apply(lab, [pod])
    node_name = eventually(
        "picky Running", lambda: _running_on(get_json(lab.cluster, "pod", "picky", "-n", ns)), timeout=300
    )
    node = get_json(lab.cluster, "node", node_name)

    # Capacity and allocatable: every resource the autoscaler planned with is what the node has.
    for field in ("capacity", "allocatable"):
        planned = {k: _quantity(v) for k, v in expected["status"][field].items()}
        real = {k: _quantity(v) for k, v in node["status"][field].items()}
        assert planned == {k: real.get(k) for k in planned}, f"{field}: planned {planned}, node has {real}"
        assert {"cpu", "memory", "pods", "ephemeral-storage"} <= set(planned)
    # Labels: everything it assumed is on the node, with the same value (but the made-up host name and the
    # autoscaler's own marker, cluster-autoscaler.kubernetes.io/template-node).
    assumed = {
        k: v
        for k, v in expected["metadata"]["labels"].items()
        if k != "kubernetes.io/hostname" and not k.startswith("cluster-autoscaler.kubernetes.io/")
    }
    assert {k: node["metadata"]["labels"].get(k) for k in assumed} == assumed, node["metadata"]["labels"]
    assert {"kubernetes.io/arch", "kubernetes.io/os", POOL_LABEL, "example.com/disk"} <= set(assumed)

    # Taints: the same, apart from the autoscaler's own.
    def taints(n: dict[str, Any]) -> list[tuple[str, str, str]]:
        return sorted(
            (t["key"], t.get("value", ""), t["effect"])
            for t in n["spec"].get("taints") or []
            if t["key"] not in _AUTOSCALER_TAINTS
        )

    assert taints(expected) == taints(node) == [("dedicated", ns, "NoSchedule")]

    # No loop: with the pod running, further autoscaler loops leave the group at the one node it needed.
    for _ in range(2):
        autoscaler.snapshot()
    assert _replicas(lab, ns, "tainted") == 1
    assert len(_machines(lab, ns, "tainted")) == 1
