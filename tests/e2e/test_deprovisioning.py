"""Giving hosts back: wipe as configured, power off, release — and nothing lost when the BMC is dead or the
host object disappears first."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from lab import workload
from lab.hostlab import LabMachine
from lab.lab import Lab
from lab.tools import versions

from tests.helpers import eventually, get_json, hosts_by_name, ipmitool_power

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]

# Bootstrap data that leaves a filesystem signature on the host's disk, like an installed node would.
SIGNS_THE_DISK = """#cloud-config
runcmd:
  - mkswap /dev/sda
  - mkswap /dev/sdb
  - mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete
"""


def _signatures(m: LabMachine, disk_name: str = "sdb") -> str:
    disk = Path(m.host.root) / "dev" / disk_name
    return subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", str(disk)], capture_output=True, text=True
    ).stdout.strip()


def _setup(lab: Lab, ns: str, name: str, cleaning: str, selector: str) -> None:
    docs = workload.machine_deployment(
        name,
        ns,
        "c1",
        versions()["KUBERNETES_VERSION"],
        replicas=1,
        data_secret="boot",
        machine_spec={"cleaning": cleaning, "hostSelector": {"matchLabels": {"pool": selector}}},
    )
    lab.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def _cluster(lab: Lab, ns: str, cloud_config: str = workload.SENTINEL_ONLY) -> None:
    docs = [
        *workload.cluster("c1", ns, lab.cluster.server),
        workload.bootstrap_data_secret("boot", ns, cloud_config),
    ]
    lab.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))


def _provisioned(lab: Lab, ns: str, host: str) -> bool:
    h = hosts_by_name(lab.cluster, ns).get(host) or {}
    return (h.get("status") or {}).get("provisioningState") == "provisioned"


def _free_and_off(lab: Lab, ns: str, host: str) -> bool:
    h = hosts_by_name(lab.cluster, ns)[host]
    return (
        not h["spec"].get("consumerRef")
        and h["status"].get("provisioningState") == "available"
        and h["status"].get("powerState") == "off"
    )


def test_cleaning_metadata_wipes_disks_and_none_keeps_them(lab: Lab, namespace: str) -> None:
    from lab.hostlab import HostProfile

    ns = namespace
    wiped = lab.hosts.add_host("wipe-me", HostProfile(labels={"pool": "a"}), namespace=ns)
    kept = lab.hosts.add_host("keep-me", HostProfile(labels={"pool": "b"}), namespace=ns)
    lab.wait_hosts_available_in(ns, 2)
    _cluster(lab, ns, SIGNS_THE_DISK)
    _setup(lab, ns, "wiping", "metadata", "a")
    _setup(lab, ns, "keeping", "none", "b")
    eventually(
        "both provisioned",
        lambda: _provisioned(lab, ns, "wipe-me") and _provisioned(lab, ns, "keep-me"),
        timeout=120,
    )
    assert _signatures(wiped) == "swap" and _signatures(kept) == "swap"

    for md in ("wiping", "keeping"):
        lab.cluster.kubectl("scale", "machinedeployment", md, "-n", ns, "--replicas=0")
    eventually(
        "both released and off",
        lambda: _free_and_off(lab, ns, "wipe-me") and _free_and_off(lab, ns, "keep-me"),
        timeout=120,
    )
    assert _signatures(wiped) == "", "cleaning: metadata must remove filesystem signatures"
    assert _signatures(wiped, "sda") == "swap", "the OS disk is never wiped"
    assert _signatures(kept) == "swap", "cleaning: none must keep the disk as it was"
    for m in (wiped, kept):
        assert ipmitool_power(m) == "off"
        # No join token stays behind on a released host.
        assert not (Path(m.host.root) / "var/lib/cloud/seed/nocloud/user-data").exists()
    events = get_json(lab.cluster, "events", "-n", ns, "--field-selector", "reason=Deprovisioned")["items"]
    assert len(events) == 2


def test_dead_bmc_does_not_hang_machine_deletion_and_the_host_stays_out_of_the_pool(
    lab: Lab, namespace: str
) -> None:
    from lab.hostlab import HostProfile

    ns = namespace
    m = lab.hosts.add_host("flaky", HostProfile(labels={"pool": "a"}), namespace=ns)
    lab.wait_hosts_available_in(ns, 1)
    _cluster(lab, ns, SIGNS_THE_DISK)
    _setup(lab, ns, "md", "metadata", "a")
    eventually("provisioned", lambda: _provisioned(lab, ns, "flaky"), timeout=120)
    assert _signatures(m) == "swap"  # the machine left data on its data disk
    machine = get_json(lab.cluster, "machines", "-n", ns)["items"][0]["metadata"]["name"]

    lab.hosts.set_fault("flaky", "no-answer")
    lab.cluster.kubectl("scale", "machinedeployment", "md", "-n", ns, "--replicas=0")
    # CAPI's Machine goes away although the host could not be powered off...
    eventually(
        "the Machine deleted",
        lambda: (
            machine
            not in {x["metadata"]["name"] for x in get_json(lab.cluster, "machines", "-n", ns)["items"]}
        ),
        timeout=180,
    )
    # ...but the host is not handed out: it stays claimed and visibly deprovisioning.
    h = hosts_by_name(lab.cluster, ns)["flaky"]
    assert h["spec"].get("consumerRef"), "a host that may still be running must not return to the pool"
    eventually(
        "host shows deprovisioning",
        lambda: (
            hosts_by_name(lab.cluster, ns)["flaky"]["status"].get("provisioningState") == "deprovisioning"
        ),
        timeout=60,
    )
    assert m.host.is_powered_on()
    deferred = get_json(lab.cluster, "events", "-n", ns, "--field-selector", "reason=DeprovisioningDeferred")
    assert deferred["items"]

    # The BMC comes back: the host controller finishes the job by itself.
    lab.hosts.set_fault("flaky", "none")
    eventually("host powered off and released", lambda: _free_and_off(lab, ns, "flaky"), timeout=180)
    assert not m.host.is_powered_on()
    assert _signatures(m) == "", "the host went back to the pool with its last user's data"


def test_machine_deletion_completes_when_the_host_object_is_gone(lab: Lab, namespace: str) -> None:
    from lab.hostlab import HostProfile

    ns = namespace
    lab.hosts.add_host("vanishing", HostProfile(labels={"pool": "a"}), namespace=ns)
    lab.wait_hosts_available_in(ns, 1)
    _cluster(lab, ns)
    _setup(lab, ns, "md", "metadata", "a")
    eventually("provisioned", lambda: _provisioned(lab, ns, "vanishing"), timeout=120)

    # Deleting a host that serves a live machine is refused (it would pull a node from under a cluster)...
    lab.cluster.kubectl("delete", "baremetalhost", "vanishing", "-n", ns, "--wait=false")
    eventually(
        "host deletion blocked, host still there",
        lambda: (
            hosts_by_name(lab.cluster, ns).get("vanishing", {}).get("metadata", {}).get("deletionTimestamp")
        ),
        timeout=30,
    )
    assert "vanishing" in hosts_by_name(lab.cluster, ns)
    # ...unless an operator forces it out of the inventory.
    lab.cluster.kubectl(
        "patch",
        "baremetalhost",
        "vanishing",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )
    eventually("host object gone", lambda: "vanishing" not in hosts_by_name(lab.cluster, ns), timeout=30)

    lab.cluster.kubectl("scale", "machinedeployment", "md", "-n", ns, "--replicas=0")
    eventually(
        "machines and infra machines gone",
        lambda: (
            not get_json(lab.cluster, "machines", "-n", ns)["items"]
            and not get_json(lab.cluster, "baremetalmachines", "-n", ns)["items"]
        ),
        timeout=120,
    )
