"""Scale from zero and the warm pool: BareMetalMachineTemplate status follows the real inventory, and a
warm host skips the boot."""

from __future__ import annotations

import pytest
import yaml
from lab import workload
from lab.hostlab import HostProfile
from lab.lab import Lab
from lab.tools import versions

from tests.helpers import eventually, get_json, hosts_by_name

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def _template(lab: Lab, ns: str, name: str) -> dict:
    return get_json(lab.cluster, "baremetalmachinetemplate", name, "-n", ns)


def _apply(lab: Lab, docs: list[dict]) -> None:
    lab.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def test_template_capacity_tracks_the_best_fit_free_host(lab: Lab, namespace: str) -> None:
    ns = namespace
    gpu = HostProfile(cpu_cores=16, memory_gib=64, extended_resources={"nvidia.com/gpu": "2"})
    lab.hosts.add_host("cap-small", HostProfile(cpu_cores=8, memory_gib=32), namespace=ns)
    lab.hosts.add_host("cap-medium", gpu, namespace=ns)
    lab.hosts.add_host(
        "cap-big", HostProfile(cpu_cores=64, memory_gib=512, architecture="amd64"), namespace=ns
    )
    lab.wait_hosts_available_in(ns, 3)
    _apply(lab, [*workload.cluster("c1", ns, lab.cluster.server), workload.bootstrap_data_secret("boot", ns)])
    _apply(
        lab,
        workload.machine_deployment(
            "md",
            ns,
            "c1",
            versions()["KUBERNETES_VERSION"],
            replicas=0,
            machine_spec={"requirements": {"minCPUCores": 12}},
            data_secret="boot",
        ),
    )

    def status_with(cpu: str) -> dict | None:
        st = _template(lab, ns, "md").get("status") or {}
        return st if (st.get("capacity") or {}).get("cpu") == cpu else None

    st = eventually("capacity of the 16-core host", lambda: status_with("16"), timeout=60)
    assert st["capacity"] == {
        "cpu": "16",
        "memory": "64Gi",
        "ephemeral-storage": "480Gi",
        "nvidia.com/gpu": "2",
    }
    assert st["nodeInfo"] == {"architecture": "amd64", "operatingSystem": "linux"}
    assert st["matchingHosts"] == 2  # the 8-core host does not qualify

    # The best-fit host gets claimed: the next node would be the 64-core one.
    lab.cluster.kubectl("scale", "machinedeployment", "md", "-n", ns, "--replicas=1")
    st = eventually("capacity of the 64-core host", lambda: status_with("64"), timeout=90)
    assert st["capacity"]["memory"] == "512Gi" and st["matchingHosts"] == 1
    assert hosts_by_name(lab.cluster, ns)["cap-medium"]["spec"]["consumerRef"]

    # A better-fitting server is racked: it becomes the next node.
    lab.hosts.add_host("cap-new", HostProfile(cpu_cores=12, memory_gib=48), namespace=ns)
    st = eventually("capacity of the new 12-core host", lambda: status_with("12"), timeout=90)
    assert st["matchingHosts"] == 2
    # `kubectl get` tells the operator how many hosts back the node group.
    row = (
        lab.cluster.kubectl("get", "baremetalmachinetemplate", "md", "-n", ns).stdout.splitlines()[1].split()
    )
    assert row[1:5] == ["2", "0", "12", "48Gi"]


def test_warm_pool_keeps_hosts_booted_and_a_scale_up_skips_the_boot(lab: Lab, namespace: str) -> None:
    ns = namespace
    for i in range(3):
        lab.hosts.add_host(f"wp{i}", namespace=ns, boot_delay=4.0)
    lab.wait_hosts_available_in(ns, 3)
    _apply(lab, [*workload.cluster("c1", ns, lab.cluster.server), workload.bootstrap_data_secret("boot", ns)])
    _apply(
        lab,
        workload.machine_deployment(
            "md", ns, "c1", versions()["KUBERNETES_VERSION"], replicas=0, data_secret="boot", warm_pool=1
        ),
    )

    def warm_hosts() -> list[str]:
        return [n for n, h in hosts_by_name(lab.cluster, ns).items() if (h.get("status") or {}).get("warm")]

    warm = eventually("one warm host", lambda: (w := warm_hosts()) and len(w) == 1 and w, timeout=90)
    assert lab.hosts.machines[warm[0]].host.os_up
    others = [
        n
        for n in lab.hosts.machines
        if n.startswith("wp") and n not in warm and n in hosts_by_name(lab.cluster, ns)
    ]
    assert all(not lab.hosts.machines[n].host.is_powered_on() for n in others), "the rest stay off"
    eventually(
        "template reports it",
        lambda: (_template(lab, ns, "md").get("status") or {}).get("warmHosts") == 1,
        timeout=30,
    )
    boots_before = lab.hosts.machines[warm[0]].host.boot_count

    lab.cluster.kubectl("scale", "machinedeployment", "md", "-n", ns, "--replicas=1")
    bmm = eventually(
        "machine provisioned",
        lambda: next(
            (
                b
                for b in get_json(lab.cluster, "baremetalmachines", "-n", ns)["items"]
                if (b.get("status") or {}).get("initialization", {}).get("provisioned")
            ),
            None,
        ),
        timeout=90,
    )
    assert bmm["status"]["host"]["name"] == warm[0], "the warm host is taken first"
    power_on = next(s for s in bmm["status"]["steps"] if s["name"] == "PowerOn")
    assert power_on["message"] == "already running (warm pool)"
    assert lab.hosts.machines[warm[0]].host.boot_count == boots_before, "no reboot: the boot was skipped"

    # The pool refills with another matching host.
    refilled = eventually("pool refilled", lambda: (w := warm_hosts()) and w[0] != warm[0] and w, timeout=90)
    assert len(refilled) == 1
