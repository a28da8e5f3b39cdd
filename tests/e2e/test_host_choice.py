"""Which host serves which machine, through real CAPI MachineDeployments: exclusive claims under a race,
waiting for capacity, best fit, a wrong host key, and pause. Bootstrap data is user-provided (a cloud-config
that only writes CAPI's sentinel), because these tests are about hosts, not about joining nodes."""

from __future__ import annotations

import pytest
import yaml
from lab import workload
from lab.hostlab import HostProfile
from lab.lab import Lab
from lab.tools import versions

from capi_provider import api
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
    log = lab.procs["provider"].log_path
    mark = len(log.read_text())
    _deployment(lab, ns, "md", replicas=10)
    claims = eventually(
        "10 machines holding hosts", lambda: (c := _claims(lab, ns)) and len(c) == 10 and c, timeout=120
    )
    # Exclusive both ways: every machine names the one host whose consumerRef names it, and 10 machines use
    # 10 different hosts.
    bmms = _bmms(lab, ns)
    annotated = {
        b["metadata"]["name"]: b["metadata"]["annotations"][api.HOST_ANNOTATION].split("/")[1] for b in bmms
    }
    assert annotated == claims
    assert len(bmms) == 10 and len(set(annotated.values())) == 10
    # And the race really happened: machines lost claims to each other and took the next best host.
    conflicts = sum(
        1
        for line in log.read_text()[mark:].splitlines()
        if f"host {ns}/" in line and "changed under us" in line
    )
    assert conflicts >= 1, "no claim conflict occurred: this run did not exercise the race"

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
    # A witness: a machine of an unpaused cluster in the same namespace, woken by the same host arrivals.
    _cluster(lab, ns, "c2")
    docs = workload.machine_deployment(
        "witness", ns, "c2", versions()["KUBERNETES_VERSION"], replicas=1, data_secret="boot"
    )
    lab.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    eventually(
        "the witness waiting for a host",
        lambda: any(b["metadata"]["name"].startswith("witness") for b in _bmms(lab, ns)),
        timeout=60,
    )
    lab.hosts.add_host("p0", namespace=ns)
    lab.hosts.add_host("p1", namespace=ns)
    witness_host = eventually(
        "the witness claiming a host",
        lambda: next((h for m, h in _claims(lab, ns).items() if m.startswith("witness")), None),
        timeout=60,
    )
    free = "p1" if witness_host == "p0" else "p0"
    eventually(
        f"{free} registered and free",
        lambda: hosts_by_name(lab.cluster, ns)[free]["status"].get("provisioningState") == "available",
        timeout=60,
    )
    # The controller has seen the hosts arrive (the witness, woken by the same arrivals, took one); the
    # paused cluster's machine took nothing, and left the free host off.
    assert bmm["metadata"]["name"] not in _claims(lab, ns)
    assert hosts_by_name(lab.cluster, ns)[free]["status"]["powerState"] == "off"
    assert not lab.hosts.machines[free].host.is_powered_on()

    lab.cluster.kubectl("patch", "cluster", "c1", "-n", ns, "--type=merge", "-p", '{"spec":{"paused":false}}')
    eventually(
        "claimed after unpause", lambda: _claims(lab, ns).get(bmm["metadata"]["name"]) == free, timeout=60
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
