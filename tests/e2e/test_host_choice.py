"""Which host serves which machine, through real CAPI MachineDeployments: exclusive claims under a race,
waiting for capacity, best fit, a wrong host key, and pause. Bootstrap data is user-provided (a cloud-config
that only writes CAPI's sentinel), because these tests are about hosts, not about joining nodes."""

from __future__ import annotations

import time

import pytest
import yaml
from lab import workload
from lab.hostlab import HostProfile
from lab.lab import Lab
from lab.tools import versions

from tests.helpers import condition, eventually, get_json, hosts_by_name

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def _cluster(lab: Lab, ns: str, name: str = "c1") -> None:
    docs = [*workload.cluster(name, ns, lab.cluster.server), workload.bootstrap_data_secret("boot", ns)]
    lab.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def _deployment(lab: Lab, ns: str, name: str, replicas: int, machine_spec: dict | None = None) -> None:
    docs = workload.machine_deployment(
        name,
        ns,
        "c1",
        versions()["KUBERNETES_VERSION"],
        replicas=replicas,
        machine_spec=machine_spec,
        data_secret="boot",
    )
    lab.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def _bmms(lab: Lab, ns: str) -> list[dict]:
    return get_json(lab.cluster, "baremetalmachines", "-n", ns)["items"]


def _claims(lab: Lab, ns: str) -> dict[str, str]:
    """machine -> host, from the hosts' side (the authoritative record)."""
    return {
        h["spec"]["consumerRef"]["name"]: name
        for name, h in hosts_by_name(lab.cluster, ns).items()
        if h["spec"].get("consumerRef")
    }


def test_racing_machines_get_distinct_hosts_and_the_extra_one_waits(lab: Lab, namespace: str) -> None:
    ns = namespace
    for i in range(10):
        lab.hosts.add_host(f"h{i:02d}", HostProfile(cpu_cores=8, memory_gib=32), namespace=ns, boot_delay=1.0)
    lab.wait_hosts_available_in(ns, 10)
    _cluster(lab, ns)
    # Ten machines created at once by the MachineSet: ten daemons race for ten hosts.
    _deployment(lab, ns, "md", replicas=10)
    claims = eventually(
        "10 machines holding hosts", lambda: (c := _claims(lab, ns)) and len(c) == 10 and c, timeout=120
    )
    assert len(set(claims.values())) == 10, claims
    for bmm in _bmms(lab, ns):
        assert (
            claims[bmm["metadata"]["name"]]
            == bmm["metadata"]["annotations"]["infrastructure.cluster.x-k8s.io/baremetalhost"].split("/")[1]
        )

    lab.cluster.kubectl("scale", "machinedeployment", "md", "-n", ns, "--replicas=11")

    def waiting() -> dict | None:
        for b in _bmms(lab, ns):
            c = condition(b, "HostClaimed")
            if b["metadata"]["name"] not in claims and c and c["reason"] == "WaitingForHost":
                return b
        return None

    extra = eventually("the 11th machine waiting for a host", waiting, timeout=60)
    assert "all 10 hosts are in use" in condition(extra, "HostClaimed")["message"]
    assert extra["status"]["phase"] == "WaitingForHost"
    events = get_json(
        lab.cluster,
        "events",
        "-n",
        ns,
        "--field-selector",
        f"involvedObject.name={extra['metadata']['name']},reason=WaitingForHost",
    )["items"]
    assert events, "an operator should see a WaitingForHost event"

    # Capacity arrives: the waiting machine takes the new host by itself.
    lab.hosts.add_host("h10", HostProfile(cpu_cores=8, memory_gib=32), namespace=ns, boot_delay=1.0)
    claims = eventually(
        "the new host claimed by the waiting machine",
        lambda: (c := _claims(lab, ns)).get(extra["metadata"]["name"]) and c,
        timeout=90,
    )
    assert claims[extra["metadata"]["name"]] == "h10"
    eventually(
        "the late machine provisioned",
        lambda: next(
            (
                b
                for b in _bmms(lab, ns)
                if b["metadata"]["name"] == extra["metadata"]["name"]
                and (b.get("status") or {}).get("initialization", {}).get("provisioned")
            ),
            None,
        ),
        timeout=120,
    )


def test_best_fit_takes_the_smallest_sufficient_host(lab: Lab, namespace: str) -> None:
    ns = namespace
    lab.hosts.add_host("big", HostProfile(cpu_cores=64, memory_gib=512), namespace=ns)
    lab.hosts.add_host("medium", HostProfile(cpu_cores=16, memory_gib=64), namespace=ns)
    lab.hosts.add_host("small", HostProfile(cpu_cores=4, memory_gib=16), namespace=ns)
    lab.wait_hosts_available_in(ns, 3)
    _cluster(lab, ns)
    _deployment(lab, ns, "md", replicas=1, machine_spec={"requirements": {"minCPUCores": 8}})
    claims = eventually("one claim", lambda: _claims(lab, ns), timeout=60)
    assert list(claims.values()) == ["medium"]


def test_wrong_pinned_host_key_stops_provisioning_before_any_data_is_sent(lab: Lab, namespace: str) -> None:
    ns = namespace
    m = lab.hosts.add_host("impostor", namespace=ns, register=False)
    other = lab.hosts.add_host("other", namespace=ns, register=False)
    # Pin another host's key: whatever answers at impostor's address is not the server we registered.
    obj = lab.hosts.host_object(m)
    obj["spec"]["ssh"]["hostKey"] = other.host.host_public_key
    lab.hosts.apply(obj)
    lab.hosts.apply(lab.hosts.credentials_secret(m))
    lab.wait_hosts_available_in(ns, 1)
    _cluster(lab, ns)
    _deployment(lab, ns, "md", replicas=1)

    def mismatch() -> dict | None:
        bmms = _bmms(lab, ns)
        c = condition(bmms[0], "Provisioned") if bmms else None
        return c if c and c["reason"] == "HostKeyMismatch" else None

    c = eventually("HostKeyMismatch on the machine", mismatch, timeout=90)
    assert m.host.host_key_fingerprint in c["message"] and other.host.host_key_fingerprint in c["message"]
    bmm = _bmms(lab, ns)[0]
    assert bmm["status"]["phase"] == "Failed"
    assert not bmm["spec"].get("providerID")
    # Nothing reached the host: no seed, and sshd never let us log in.
    assert not (m.host.root / "var/lib/cloud/seed").exists()
    assert "Accepted publickey" not in m.host.sshd_log.read_text()


def test_paused_cluster_changes_nothing_until_unpaused(lab: Lab, namespace: str) -> None:
    ns = namespace
    _cluster(lab, ns)
    # No host yet: the machine exists and waits. (CAPI itself creates no Machines for a paused Cluster,
    # so pausing has to happen once the BareMetalMachine exists.)
    _deployment(lab, ns, "md", replicas=1)
    bmm = eventually(
        "the machine waiting for a host",
        lambda: next(
            (
                b
                for b in _bmms(lab, ns)
                if (c := condition(b, "HostClaimed")) and c["reason"] == "WaitingForHost"
            ),
            None,
        ),
        timeout=60,
    )
    lab.cluster.kubectl("patch", "cluster", "c1", "-n", ns, "--type=merge", "-p", '{"spec":{"paused":true}}')
    eventually(
        "the machine reports Paused",
        lambda: (
            (
                c := condition(
                    get_json(lab.cluster, "baremetalmachine", bmm["metadata"]["name"], "-n", ns), "Paused"
                )
            )
            and c["status"] == "True"
        ),
        timeout=60,
    )
    lab.hosts.add_host("p0", namespace=ns)
    lab.wait_hosts_available_in(ns, 1)
    time.sleep(8)  # several reconcile opportunities, and the new host's arrival wakes waiting machines
    assert _claims(lab, ns) == {}
    assert hosts_by_name(lab.cluster, ns)["p0"]["status"]["powerState"] == "off"
    assert not lab.hosts.machines["p0"].host.is_powered_on()

    lab.cluster.kubectl("patch", "cluster", "c1", "-n", ns, "--type=merge", "-p", '{"spec":{"paused":false}}')
    eventually(
        "claimed after unpause", lambda: _claims(lab, ns).get(bmm["metadata"]["name"]) == "p0", timeout=60
    )
    eventually(
        "provisioned after unpause",
        lambda: (
            get_json(lab.cluster, "baremetalmachine", bmm["metadata"]["name"], "-n", ns)
            .get("status", {})
            .get("initialization", {})
            .get("provisioned")
        ),
        timeout=90,
    )
    paused = condition(get_json(lab.cluster, "baremetalmachine", bmm["metadata"]["name"], "-n", ns), "Paused")
    assert paused["status"] == "False"
