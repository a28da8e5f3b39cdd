"""Scale-out at rack size (marked `slow`: `make test-slow`): thirty machines at once through a real
MachineDeployment, every one on its own host, and all thirty hosts back in the pool, off, afterwards.
Timings at this size are `make bench`'s business; this proves nothing is lost or shared on the way."""

from __future__ import annotations

import pytest
import yaml
from lab import workload
from lab.hostlab import HostProfile
from lab.lab import Lab
from lab.tools import versions

from capi_provider import api
from tests.helpers import eventually, get_json, hosts_by_name, ipmitool_power

pytestmark = [pytest.mark.cluster, pytest.mark.e2e, pytest.mark.slow]

N = 30


def _provisioned(lab: Lab, ns: str) -> list[dict] | None:
    bmms = get_json(lab.cluster, "baremetalmachines", "-n", ns)["items"]
    done = [b for b in bmms if ((b.get("status") or {}).get("initialization") or {}).get("provisioned")]
    return done if len(done) == N else None


def test_thirty_machines_at_once_each_get_their_own_host_and_all_come_back(lab: Lab, namespace: str) -> None:
    ns = namespace
    machines = [
        lab.hosts.add_host(f"s{i:02d}", HostProfile(cpu_cores=8), namespace=ns, register=False)
        for i in range(N)
    ]
    lab.hosts.register_many(machines)
    lab.wait_hosts_available_in(ns, N, timeout=300)
    docs = [*workload.cluster("c1", ns, lab.cluster.server), workload.bootstrap_data_secret("boot", ns)]
    docs += workload.machine_deployment(
        "rack", ns, "c1", versions()["KUBERNETES_VERSION"], replicas=N, data_secret="boot"
    )
    lab.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))

    bmms = eventually(f"{N} machines provisioned", lambda: _provisioned(lab, ns), timeout=900)
    hosts = hosts_by_name(lab.cluster, ns)
    used = {b["metadata"]["annotations"][api.HOST_ANNOTATION].split("/")[1] for b in bmms}
    assert used == set(hosts), "every host serves exactly one machine"
    for b in bmms:
        host = hosts[b["metadata"]["annotations"][api.HOST_ANNOTATION].split("/")[1]]
        assert host["spec"]["consumerRef"]["uid"] == b["metadata"]["uid"]
        assert host["status"]["provisioningState"] == "provisioned"

    lab.cluster.kubectl("scale", "machinedeployment", "rack", "-n", ns, "--replicas=0")

    def all_back() -> bool:
        hs = hosts_by_name(lab.cluster, ns)
        return all(
            not h["spec"].get("consumerRef")
            and h["status"].get("provisioningState") == "available"
            and h["status"].get("powerState") == "off"
            for h in hs.values()
        )

    eventually(f"all {N} hosts back in the pool, off", all_back, timeout=900)
    assert {ipmitool_power(m) for m in machines} == {"off"}
