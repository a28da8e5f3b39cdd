"""MachineReconciler and machine deletion, one pass at a time, on the fake provisioner and API.

Each test drives what an operator or CAPI would do and asserts what the server (the fake provisioner's call
log and state) and the objects show: which host was used, which steps ran, what the conditions say.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import kopf
import pytest

from capi_provider import api
from capi_provider.bmc.base import PowerState
from capi_provider.controller.hosts import HostMonitor
from capi_provider.controller.machines import MachineReconciler, deprovision_machine
from capi_provider.decisions.host import Quarantine
from capi_provider.decisions.ownership import provider_id
from capi_provider.decisions.secrets import CAPI_SECRET_TYPE, SecretData
from tests.unit.fakes import LOG, World

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def reconcile(w: World, name: str, ns: str = "a") -> float:
    body = await w.kube.get(api.GROUP, api.VERSION, api.MACHINES, ns, name)
    return await MachineReconciler(w.ctx, body, w.kube.host_index(), LOG).reconcile()


async def host_pass(w: World, name: str, ns: str = "a", monitor: HostMonitor | None = None) -> HostMonitor:
    monitor = monitor or HostMonitor(w.ctx, w.key(name, ns))
    await monitor.pass_once(w.bmh(name, ns), w.kube.machine_index(), LOG)
    return monitor


def cond(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def steps(obj: dict[str, Any]) -> list[str]:
    return [s["name"] for s in obj["status"].get("steps", []) if s.get("finishedAt")]


@pytest.fixture
def w() -> World:
    world = World.new()
    world.cluster()
    return world


# ----------------------------------------------------------------------------------------- provisioning


def test_a_machine_claims_the_best_fit_and_runs_every_step_in_order(w: World) -> None:
    w.host("big", cores=64)
    w.host("small", cores=16)
    w.machine("m1", spec={"requirements": {"minCPUCores": 8}})
    run(reconcile(w, "m1"))
    host = w.bmh("small")
    assert host["spec"]["consumerRef"]["uid"] == w.bmm("m1")["metadata"]["uid"]
    assert w.bmm("m1")["metadata"]["annotations"][api.HOST_ANNOTATION] == "a/small"
    assert w.provisioner.ops(w.key("small")) == ["PowerOn", "WaitForSSH", "DeliverSeed", "Bootstrap"]
    assert w.provisioner.ops(w.key("big")) == []
    assert steps(w.bmm("m1")) == ["PowerOn", "WaitForSSH", "DeliverSeed", "Bootstrap"]
    seed = w.provisioner.servers[w.key("small")].seed
    assert seed is not None and b"kubeadm join" in seed["user-data"]
    assert provider_id("a", "small", w.bmm("m1")["metadata"]["uid"]).encode() in seed["meta-data"]


def test_the_host_shows_provisioned_before_the_machine_reports_it(w: World) -> None:
    """CAPI marks the Machine Running from our status: by then the host must already say provisioned."""
    w.host("h1")
    w.machine("m1")
    run(reconcile(w, "m1"))
    bmm = w.bmm("m1")
    assert bmm["spec"]["providerID"] == provider_id("a", "h1", bmm["metadata"]["uid"])
    assert not bmm["status"].get("initialization", {}).get("provisioned")
    assert cond(bmm, "Provisioned")["reason"] == "WaitingForHostStatus"
    run(host_pass(w, "h1"))  # the host monitor sees the providerID
    assert w.bmh("h1")["status"]["provisioningState"] == "provisioned"
    run(reconcile(w, "m1"))
    bmm = w.bmm("m1")
    assert bmm["status"]["initialization"] == {"provisioned": True}
    assert cond(bmm, "Ready")["status"] == "True"


def test_boot_overlaps_bootstrap_data_and_delivery_waits_for_it(w: World) -> None:
    w.host("h1")
    w.machine("m1", data=False)
    run(reconcile(w, "m1"))
    assert w.provisioner.ops() == ["PowerOn", "WaitForSSH"]
    assert cond(w.bmm("m1"), "Provisioned")["reason"] == "WaitingForBootstrapData"


def test_without_a_free_host_the_machine_waits_and_says_why(w: World) -> None:
    w.host("h1", cores=4)
    w.machine("m1", spec={"requirements": {"minCPUCores": 8}})
    run(reconcile(w, "m1"))
    c = cond(w.bmm("m1"), "HostClaimed")
    assert (c["status"], c["reason"]) == ("False", "WaitingForHost")
    assert "lack 8 CPU cores" in c["message"]
    assert w.ctx.state.waiting_for_host == {w.key("m1")}
    assert w.provisioner.calls == []


def test_two_machines_racing_for_one_host_never_both_get_it(w: World) -> None:
    w.host("h1")
    w.host("h2")
    w.machine("m1")
    w.machine("m2")
    index = w.kube.host_index()  # both passes decide on the same (soon stale) view

    async def both() -> None:
        b1 = await w.kube.get(api.GROUP, api.VERSION, api.MACHINES, "a", "m1")
        b2 = await w.kube.get(api.GROUP, api.VERSION, api.MACHINES, "a", "m2")
        await MachineReconciler(w.ctx, b1, index, LOG).reconcile()
        w.ctx.state.pending_claims.clear()  # as another replica would: no local memory of m1's claim
        await MachineReconciler(w.ctx, b2, index, LOG).reconcile()

    run(both())
    holders = {w.bmh(h)["spec"]["consumerRef"]["name"] for h in ("h1", "h2")}
    assert holders == {"m1", "m2"}
    # m2 lost the race for the best host (its resourceVersion changed) and took the other one.
    assert w.kube.calls["patch baremetalhosts"] >= 3


def test_a_transient_failure_is_retried_with_backoff(w: World) -> None:
    w.host("h1")
    w.machine("m1")
    w.provisioner.fail("WaitForSSH", w.key("h1"), "SSHUnreachable")
    delay = run(reconcile(w, "m1"))
    assert 10 <= delay <= 20
    c = cond(w.bmm("m1"), "Provisioned")
    assert c["reason"] == "SSHUnreachable" and "attempt 1" in c["message"]
    delay2 = run(reconcile(w, "m1"))  # next pass: succeeds and goes on
    assert steps(w.bmm("m1")) == ["PowerOn", "WaitForSSH", "DeliverSeed", "Bootstrap"]
    assert delay2 > 0


def test_a_foreign_host_key_stops_provisioning_until_the_host_spec_changes(w: World) -> None:
    w.host("h1")
    w.machine("m1")
    w.provisioner.fail("WaitForSSH", w.key("h1"), "HostKeyMismatch")
    run(reconcile(w, "m1"))
    bmm = w.bmm("m1")
    assert bmm["status"]["phase"] == "Failed"
    assert cond(bmm, "Provisioned")["reason"] == "HostKeyMismatch"
    run(reconcile(w, "m1"))  # nothing is retried while nothing changed
    assert w.provisioner.ops() == ["PowerOn", "WaitForSSH"]
    assert "HostKeyMismatch" in w.events.reasons("m1")
    # The operator corrects the pinned key (the host's generation moves): provisioning resumes.
    run(w.kube.patch(api.GROUP, api.VERSION, api.HOSTS, "a", "h1", {"spec": {"online": False}}))
    run(reconcile(w, "m1"))
    assert steps(w.bmm("m1")) == ["PowerOn", "WaitForSSH", "DeliverSeed", "Bootstrap"]


def test_a_stopped_machine_retries_when_asked_after_fixing_what_it_reads(w: World) -> None:
    """Seed templates live in a ConfigMap the controller does not watch: the operator fixes it and asks for a
    retry with the documented annotation."""
    w.host("h1")
    w.kube.configmaps[("a", "seed")] = {"meta-data": "instance-id: {{ no_such_input }}\n"}
    w.machine("m1", spec={"seedTemplatesRef": {"name": "seed"}})
    run(reconcile(w, "m1"))
    assert cond(w.bmm("m1"), "Provisioned")["reason"] == "SeedTemplateInvalid"
    w.kube.configmaps[("a", "seed")] = {"meta-data": "instance-id: {{ instance_id }}\n"}
    run(reconcile(w, "m1"))
    assert "DeliverSeed" not in steps(w.bmm("m1"))  # nothing asked it to look again
    run(
        w.kube.patch(
            api.GROUP,
            api.VERSION,
            api.MACHINES,
            "a",
            "m1",
            {"metadata": {"annotations": {api.RETRY_ANNOTATION: "1"}}},
        )
    )
    run(reconcile(w, "m1"))
    assert steps(w.bmm("m1")) == ["PowerOn", "WaitForSSH", "DeliverSeed", "Bootstrap"]


# ----------------------------------------------------------------------------------------- trust boundaries


def test_an_annotation_naming_another_namespaces_host_touches_nothing(w: World) -> None:
    w.host("victim", namespace="b", consumer=None)
    w.cluster(namespace="b")
    w.machine("evil", annotations={api.HOST_ANNOTATION: "b/victim"})
    run(reconcile(w, "evil"))
    assert w.provisioner.calls == []
    assert "consumerRef" not in w.bmh("victim", "b")["spec"]
    c = cond(w.bmm("evil"), "HostClaimed")
    assert c["reason"] == "HostNotOwned" and "outside namespace a" in c["message"]


def test_an_annotation_naming_a_host_another_machine_holds_touches_nothing(w: World) -> None:
    w.host("h1")
    w.machine("owner")
    run(reconcile(w, "owner"))
    before = list(w.provisioner.calls)
    w.machine("thief", annotations={api.HOST_ANNOTATION: "a/h1"})
    run(reconcile(w, "thief"))
    assert w.provisioner.calls == before
    assert w.bmh("h1")["spec"]["consumerRef"]["name"] == "owner"
    assert cond(w.bmm("thief"), "HostClaimed")["reason"] == "HostNotOwned"


def test_a_forged_consumer_ref_does_not_hand_a_machine_a_host(w: World) -> None:
    """Whoever can edit hosts cannot make a machine send its bootstrap data to a server of their choosing:
    a consumerRef from another namespace, or with the wrong uid, proves nothing."""
    w.machine("m1")
    uid = w.bmm("m1")["metadata"]["uid"]
    ref = {"kind": "BareMetalMachine", "namespace": "a", "name": "m1"}
    w.host("planted-b", namespace="b", consumer={**ref, "uid": uid})
    w.host("planted-a", consumer={**ref, "uid": "not-" + uid})
    run(reconcile(w, "m1"))
    assert w.provisioner.calls == []
    assert cond(w.bmm("m1"), "HostClaimed")["reason"] == "WaitingForHost"


def test_ownership_is_proven_again_before_every_step(w: World) -> None:
    w.host("h1")
    w.machine("m1")

    def steal(op: str, key: Any) -> None:
        if op == "PowerOn":
            # Right after power on, the claim changes hands behind the machine's back.
            o = w.bmh("h1")
            o["spec"]["consumerRef"] = {**o["spec"]["consumerRef"], "name": "someone-else"}

    w.provisioner.before = steal
    run(reconcile(w, "m1"))
    assert w.provisioner.ops() == ["PowerOn"]
    bmm = w.bmm("m1")
    assert cond(bmm, "Provisioned")["reason"] == "HostNotOwned"
    assert w.provisioner.servers[w.key("h1")].seed is None


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        # `<cluster>-kubeconfig` is a CAPI secret for the cluster, but not bootstrap data: no `format`.
        (
            SecretData(
                {"value": b"apiVersion: v1\nkind: Config\n"},
                "1",
                type=CAPI_SECRET_TYPE,
                labels={api.CLUSTER_NAME_LABEL: "c1"},
            ),
            "BootstrapDataRejected",
        ),
        (
            SecretData(
                {"value": b"x", "format": b"cloud-config"},
                "1",
                type="Opaque",
                labels={api.CLUSTER_NAME_LABEL: "c1"},
            ),
            "BootstrapDataRejected",
        ),
        (
            SecretData(
                {"value": b"x", "format": b"cloud-config"},
                "1",
                type=CAPI_SECRET_TYPE,
                labels={api.CLUSTER_NAME_LABEL: "other"},
            ),
            "BootstrapDataRejected",
        ),
        (
            SecretData(
                {"value": b"x", "format": b"ignition"},
                "1",
                type=CAPI_SECRET_TYPE,
                labels={api.CLUSTER_NAME_LABEL: "c1"},
            ),
            "UnsupportedBootstrapFormat",
        ),
    ],
)
def test_only_bootstrap_data_capi_made_for_the_cluster_is_delivered(
    w: World, secret: SecretData, reason: str
) -> None:
    w.host("h1")
    w.machine("m1", data_secret=secret)
    run(reconcile(w, "m1"))
    assert w.provisioner.ops() == ["PowerOn", "WaitForSSH"]
    assert w.provisioner.servers[w.key("h1")].seed is None
    bmm = w.bmm("m1")
    assert cond(bmm, "Provisioned")["reason"] == reason
    assert b"apiVersion" not in str(bmm["status"]).encode()


def test_a_template_bomb_fails_only_its_machine_naming_file_line_and_type(w: World) -> None:
    w.host("h1")
    w.host("h2")
    w.kube.configmaps[("a", "bomb")] = {"user-data": "#cloud-config\n{{ 'x' * 2**31 }}\n"}
    w.machine("bombed", spec={"seedTemplatesRef": {"name": "bomb"}})
    w.machine("fine")
    run(reconcile(w, "bombed"))
    run(reconcile(w, "fine"))
    c = cond(w.bmm("bombed"), "Provisioned")
    assert c["reason"] == "SeedTemplateInvalid"
    assert c["message"] == "seed template user-data line 2: OverflowError"
    assert steps(w.bmm("fine")) == ["PowerOn", "WaitForSSH", "DeliverSeed", "Bootstrap"]


# ----------------------------------------------------------------------------------------- clusterctl move


def test_a_moved_machine_re_stamps_its_claim_and_repeats_no_step(w: World) -> None:
    """After clusterctl move the same machine has a new uid; its providerID proves the old claim was its."""
    old_uid = "uid-before-move"
    pid = provider_id("a", "h1", old_uid)
    w.host(
        "h1",
        state="provisioned",
        consumer={"kind": "BareMetalMachine", "namespace": "a", "name": "m1", "uid": old_uid},
    )
    w.machine("m1", annotations={api.HOST_ANNOTATION: "a/h1"}, spec={"providerID": pid})
    run(reconcile(w, "m1"))
    assert w.bmh("h1")["spec"]["consumerRef"]["uid"] == w.bmm("m1")["metadata"]["uid"]
    assert w.provisioner.calls == []  # nothing re-run on a live node
    assert w.bmm("m1")["status"]["initialization"] == {"provisioned": True}


def test_a_same_name_machine_without_proof_does_not_inherit_the_host(w: World) -> None:
    w.host(
        "h1",
        state="deprovisioning",
        consumer={"kind": "BareMetalMachine", "namespace": "a", "name": "m1", "uid": "gone"},
    )
    w.machine("m1", annotations={api.HOST_ANNOTATION: "a/h1"})
    run(reconcile(w, "m1"))
    assert w.provisioner.calls == []
    assert w.bmh("h1")["spec"]["consumerRef"]["uid"] == "gone"
    assert cond(w.bmm("m1"), "HostClaimed")["reason"] == "HostNotOwned"


def test_a_failed_machine_stops_blocking_clusterctl_move_once_paused(w: World) -> None:
    w.host("h1")
    w.machine("m1")
    w.provisioner.fail("WaitForSSH", w.key("h1"), "HostKeyMismatch")
    run(reconcile(w, "m1"))
    assert w.bmm("m1")["metadata"]["annotations"].get("clusterctl.cluster.x-k8s.io/block-move") == "true"
    run(w.kube.patch(api.CAPI_GROUP, api.CAPI_VERSION, "clusters", "a", "c1", {"spec": {"paused": True}}))
    run(reconcile(w, "m1"))
    assert "clusterctl.cluster.x-k8s.io/block-move" not in w.bmm("m1")["metadata"]["annotations"]
    assert w.bmm("m1")["status"]["phase"] == "Paused"


def test_a_provisioned_machine_whose_host_was_released_behind_its_back_says_so(w: World) -> None:
    provisioned(w)
    o = w.bmh("h1")
    del o["spec"]["consumerRef"]  # released by hand
    run(reconcile(w, "m1"))
    bmm = w.bmm("m1")
    assert cond(bmm, "Ready")["status"] == "False"
    assert cond(bmm, "Ready")["reason"] == "HostNotOwned"
    assert w.provisioner.calls == []


# ----------------------------------------------------------------------------------------- deletion


async def delete(w: World, name: str, retry: int = 0, ns: str = "a") -> None:
    body = await w.kube.get(api.GROUP, api.VERSION, api.MACHINES, ns, name)
    await deprovision_machine(w.ctx, body, w.kube.host_index(), LOG, retry)


def provisioned(w: World, host: str = "h1", machine: str = "m1") -> None:
    w.host(host)
    w.machine(machine)
    run(reconcile(w, machine))
    run(host_pass(w, host))
    run(reconcile(w, machine))
    w.provisioner.calls.clear()


def test_deletion_resets_wipes_powers_off_and_releases(w: World) -> None:
    provisioned(w)
    run(delete(w, "m1"))
    server = w.provisioner.servers[w.key("h1")]
    assert (server.reset, server.wiped, server.power) == (1, 1, PowerState.OFF)
    assert w.provisioner.ops() == ["read_power", "wait_for_os", "clean", "power_off"]
    assert "consumerRef" not in w.bmh("h1")["spec"]
    assert api.QUARANTINE_ANNOTATION not in w.bmh("h1")["metadata"]["annotations"]


def test_a_host_found_off_is_booted_to_be_cleaned(w: World) -> None:
    provisioned(w)
    w.provisioner.servers[w.key("h1")].power = PowerState.OFF
    run(delete(w, "m1"))
    assert w.provisioner.ops() == ["read_power", "power_on", "wait_for_os", "clean", "power_off"]
    assert w.provisioner.servers[w.key("h1")].wiped == 1


def test_a_host_that_could_not_be_cleaned_is_quarantined_not_returned(w: World) -> None:
    provisioned(w)
    w.provisioner.servers[w.key("h1")].bootable = False  # powered, but its OS does not answer
    w.provisioner.servers[w.key("h1")].power = PowerState.OFF
    run(delete(w, "m1"))
    host = w.bmh("h1")
    assert "consumerRef" not in host["spec"]
    q = Quarantine.parse(host["metadata"]["annotations"][api.QUARANTINE_ANNOTATION])
    assert q is not None and q.reason == "SSHUnreachable"
    assert w.provisioner.servers[w.key("h1")].power is PowerState.OFF  # never left on unowned
    assert "HostQuarantined" in w.events.reasons("m1")
    # A waiting machine does not get it.
    run(host_pass(w, "h1"))
    assert w.bmh("h1")["status"]["provisioningState"] == "quarantined"
    w.machine("m2")
    run(reconcile(w, "m2"))
    assert cond(w.bmm("m2"), "HostClaimed")["reason"] == "WaitingForHost"


def test_a_dead_bmc_defers_the_host_instead_of_hanging_the_machine(w: World) -> None:
    provisioned(w)
    w.provisioner.fail("read_power", w.key("h1"), "BMCUnreachable", times=5)
    with pytest.raises(kopf.TemporaryError):
        run(delete(w, "m1", retry=0))
    run(delete(w, "m1", retry=w.ctx.settings.power_off_attempts - 1))  # gives up waiting: no exception
    assert "DeprovisioningDeferred" in w.events.reasons("m1")
    assert w.bmh("h1")["spec"]["consumerRef"]["name"] == "m1"  # still claimed: out of the pool


def test_deletion_leaves_a_host_alone_once_it_is_someone_elses(w: World) -> None:
    provisioned(w)

    def steal(op: str, key: Any) -> None:
        if op == "read_power":
            o = w.bmh("h1")
            o["spec"]["consumerRef"] = {**o["spec"]["consumerRef"], "uid": "another"}

    w.provisioner.before = steal
    run(delete(w, "m1"))
    # Reading and connecting change nothing; nothing that does (clean, power) happened.
    assert not {"clean", "power_on", "power_off"} & set(w.provisioner.ops())
    assert w.provisioner.servers[w.key("h1")].wiped == 0
    assert w.bmh("h1")["spec"]["consumerRef"]["uid"] == "another"
