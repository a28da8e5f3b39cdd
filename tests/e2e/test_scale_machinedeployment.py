"""The mission, end to end: `kubectl scale machinedeployment` against real CAPI turns lab servers into
Running nodes and back into free, powered-off hosts."""

from __future__ import annotations

import time

import pytest
import yaml
from lab import workload
from lab.hostlab import HostProfile
from lab.lab import Lab
from lab.tools import versions

from tests.helpers import eventually, get_json, hosts_by_name, ipmitool_power

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

CLUSTER = "c1"


def _running_machines(lab: Lab, ns: str, deployment: str) -> list[dict]:
    machines = get_json(
        lab.cluster, "machines", "-n", ns, "-l", f"cluster.x-k8s.io/deployment-name={deployment}"
    )
    return [
        m
        for m in machines["items"]
        if m.get("status", {}).get("phase") == "Running" and m["status"].get("nodeRef", {}).get("name")
    ]


def test_scale_machinedeployment_provisions_and_releases_hosts(lab: Lab, namespace: str) -> None:
    ns = namespace
    mgmt = lab.cluster
    version = versions()["KUBERNETES_VERSION"]
    cp_host = lab.hosts.add_host("cp-0", HostProfile(labels={"role": "control-plane"}), namespace=ns)
    workers = [
        lab.hosts.add_host(f"w-{i}", HostProfile(labels={"role": "worker"}), namespace=ns) for i in range(3)
    ]
    docs = [workload.ca_secret(CLUSTER, ns, mgmt.ca_pem, mgmt.ca_key_pem)]
    docs += workload.cluster(CLUSTER, ns, mgmt.server)
    docs += workload.control_plane_machine(
        "cp-0", ns, CLUSTER, version, {"hostSelector": {"matchLabels": {"role": "control-plane"}}}
    )
    docs += workload.machine_deployment(
        "workers",
        ns,
        CLUSTER,
        version,
        replicas=0,
        machine_spec={"hostSelector": {"matchLabels": {"role": "worker"}}},
    )
    mgmt.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    # The control plane machine comes up first: kubeadm init on a lab host; CAPI then marks the control
    # plane initialized, which is what lets CAPBK produce join data for workers.
    eventually(
        "control plane machine Running",
        lambda: get_json(mgmt, "machine", "cp-0", "-n", ns).get("status", {}).get("nodeRef"),
        timeout=180,
    )
    assert ipmitool_power(cp_host) == "on"

    start = time.monotonic()
    mgmt.kubectl("scale", "machinedeployment", "workers", "-n", ns, "--replicas=3")
    running = eventually(
        "3 worker machines Running with a nodeRef",
        lambda: (r := _running_machines(lab, ns, "workers")) and len(r) == 3 and r,
        timeout=240,
    )
    scale_up_seconds = time.monotonic() - start
    print(f"scale 0->3: all Machines Running after {scale_up_seconds:.1f}s (lab boot delay 2.0±0.5s)")

    hosts = hosts_by_name(mgmt, ns)
    bmms = {b["metadata"]["name"]: b for b in get_json(mgmt, "baremetalmachines", "-n", ns)["items"]}
    nodes = {n["metadata"]["name"]: n for n in get_json(mgmt, "nodes")["items"]}
    used_hosts = set()
    for m in running:
        bmm = bmms[m["spec"]["infrastructureRef"]["name"]]
        host_name = bmm["status"]["host"]["name"]
        used_hosts.add(host_name)
        host = hosts[host_name]
        assert host["spec"]["consumerRef"]["name"] == bmm["metadata"]["name"]
        assert host["status"]["provisioningState"] == "provisioned"
        lab_machine = lab.hosts.machines[host_name]
        assert ipmitool_power(lab_machine) == "on"
        # CAPI copied our providerID to the Machine and matched the Node that registered with it.
        assert m["spec"]["providerID"] == bmm["spec"]["providerID"]
        assert bmm["spec"]["providerID"].startswith(f"baremetal://{ns}/{host_name}/")
        node = nodes[m["status"]["nodeRef"]["name"]]
        assert node["spec"]["providerID"] == bmm["spec"]["providerID"]
        # The seed on the host holds the real kubeadm bootstrap data CAPBK generated for this Machine.
        secret = get_json(mgmt, "secret", m["spec"]["bootstrap"]["dataSecretName"], "-n", ns)
        import base64

        expected = base64.b64decode(secret["data"]["value"]).decode()
        seed = (lab_machine.host.root / "var/lib/cloud/seed/nocloud/user-data").read_text()
        assert seed.rstrip("\n") == expected.rstrip("\n")
        assert "kubeadm join" in seed
        # Every step was recorded with timestamps.
        steps = {s["name"]: s for s in bmm["status"]["steps"]}
        assert set(steps) >= {"PowerOn", "WaitForSSH", "DeliverSeed", "Bootstrap"}
        assert all(s.get("finishedAt") for s in steps.values())
    assert used_hosts == {w.name for w in workers}

    # Scale down: CAPI drains and deletes two Machines; their hosts are reset, powered off, freed.
    mgmt.kubectl("scale", "machinedeployment", "workers", "-n", ns, "--replicas=1")

    def two_released() -> list[str] | None:
        hs = hosts_by_name(mgmt, ns)
        free = [
            n
            for n in used_hosts
            if not hs[n]["spec"].get("consumerRef")
            and hs[n].get("status", {}).get("provisioningState") == "available"
            and hs[n]["status"].get("powerState") == "off"
        ]
        return free if len(free) == 2 else None

    released = eventually("2 worker hosts released and powered off", two_released, timeout=180)
    for name in released:
        assert ipmitool_power(lab.hosts.machines[name]) == "off"
    eventually("1 worker machine left", lambda: len(_running_machines(lab, ns, "workers")) == 1, timeout=60)

    # Back to 3: the two free hosts are claimed again (the only matching ones).
    mgmt.kubectl("scale", "machinedeployment", "workers", "-n", ns, "--replicas=3")
    running = eventually(
        "3 worker machines Running again",
        lambda: (r := _running_machines(lab, ns, "workers")) and len(r) == 3 and r,
        timeout=240,
    )
    bmms = {b["metadata"]["name"]: b for b in get_json(mgmt, "baremetalmachines", "-n", ns)["items"]}
    reused = {bmms[m["spec"]["infrastructureRef"]["name"]]["status"]["host"]["name"] for m in running}
    assert reused == used_hosts
    for name in released:
        assert ipmitool_power(lab.hosts.machines[name]) == "on"
