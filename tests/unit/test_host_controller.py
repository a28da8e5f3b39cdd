"""HostMonitor, one pass at a time, on the fake provisioner and API: registration, credentials binding,
free-host power, hosts whose machine is gone (including during clusterctl move), quarantine."""

from __future__ import annotations

from typing import Any

import pytest

from capi_provider import api
from capi_provider.bmc.base import PowerState
from capi_provider.controller.hosts import HostMonitor
from capi_provider.decisions.host import Quarantine
from tests.unit.fakes import LOG, World
from tests.unit.test_machine_controller import cond, host_pass, reconcile, run


@pytest.fixture
def w() -> World:
    world = World.new(orphan_grace=600.0)
    world.cluster()
    return world


def consumer(name: str = "m1", uid: str = "gone-uid", cluster: str | None = "c1") -> dict[str, Any]:
    ref = {"kind": "BareMetalMachine", "namespace": "a", "name": name, "uid": uid, "cleaning": "metadata"}
    if cluster:
        ref["cluster"] = cluster
    return ref


def test_a_new_host_registers_and_is_available(w: World) -> None:
    w.host("h1", state=None)
    run(host_pass(w, "h1"))
    host = w.bmh("h1")
    assert host["status"]["provisioningState"] == "available"
    assert cond(host, "Ready")["status"] == "True"
    assert "Registered" in w.events.reasons("h1")


def test_credentials_not_bound_to_the_host_are_never_sent_to_its_bmc(w: World) -> None:
    """Whoever may create a host could otherwise name another host's Secret and a BMC address of theirs."""
    w.host("victim")
    attacker = w.host("attacker", state=None)
    attacker["spec"]["bmc"]["credentialsName"] = "victim-bmc"  # borrow the victim's password
    w.kube.objects[(api.GROUP, api.HOSTS, "a", "attacker")] = attacker
    run(host_pass(w, "attacker"))
    host = w.bmh("attacker")
    c = cond(host, "CredentialsValid")
    assert (c["status"], c["reason"]) == ("False", "CredentialsNotBound")
    assert w.provisioner.ops(w.key("attacker")) == []  # the BMC was never contacted
    assert "pw-victim" not in str(host)


def test_a_free_host_follows_its_online_spec(w: World) -> None:
    w.host("h1")
    run(w.kube.patch(api.GROUP, api.VERSION, api.HOSTS, "a", "h1", {"spec": {"online": True}}))
    run(host_pass(w, "h1"))
    assert w.provisioner.servers[w.key("h1")].power is PowerState.ON
    assert w.bmh("h1")["status"]["lastPowerOperation"]["reason"] == "OnlineSpec"


def test_a_host_whose_machine_is_gone_is_cleaned_and_released(w: World) -> None:
    w.host("h1", state="provisioned", consumer=consumer())
    w.provisioner.servers[w.key("h1")].power = PowerState.ON
    run(host_pass(w, "h1"))
    assert w.provisioner.ops() == ["read_power", "read_power", "wait_for_os", "clean", "power_off"]
    assert "consumerRef" not in w.bmh("h1")["spec"]


def test_a_paused_cluster_keeps_a_missing_machines_host_untouched(w: World) -> None:
    """clusterctl move pauses the Cluster, deletes machines on one side and creates them on the other."""
    w.cluster("moving", paused=True)
    w.host("h1", state="provisioned", consumer=consumer(cluster="moving"))
    w.provisioner.servers[w.key("h1")].power = PowerState.ON
    run(host_pass(w, "h1"))
    assert w.provisioner.ops() == ["read_power"]
    assert w.bmh("h1")["spec"]["consumerRef"]["name"] == "m1"


def test_a_host_arriving_before_its_cluster_waits_out_a_grace_period(w: World) -> None:
    w.host("h1", state="provisioned", consumer=consumer(cluster="not-yet"))
    w.provisioner.servers[w.key("h1")].power = PowerState.ON
    monitor = run(host_pass(w, "h1"))
    assert w.provisioner.ops() == ["read_power"]
    assert monitor.orphan_since is not None
    monitor.orphan_since -= 601  # the grace period passes without the machine arriving
    run(host_pass(w, "h1", monitor=monitor))
    assert "clean" in w.provisioner.ops()
    assert "consumerRef" not in w.bmh("h1")["spec"]


def test_a_same_name_machine_does_not_keep_a_dead_machines_host_from_cleaning(w: World) -> None:
    w.machine("m1")  # a new machine under the old one's name: another uid, no providerID
    w.host("h1", state="provisioned", consumer=consumer(uid="old-uid"))
    w.provisioner.servers[w.key("h1")].power = PowerState.ON
    run(host_pass(w, "h1"))
    assert w.provisioner.servers[w.key("h1")].wiped == 1
    assert "consumerRef" not in w.bmh("h1")["spec"]


def test_a_live_machine_whose_watch_lags_is_not_treated_as_gone(w: World) -> None:
    w.host("h1")
    w.machine("m1")
    run(reconcile(w, "m1"))
    assert w.bmh("h1")["spec"]["consumerRef"]["name"] == "m1"
    # The machine index (a watch) does not show the machine yet; the API server does.
    run(HostMonitor(w.ctx, w.key("h1")).pass_once(w.bmh("h1"), {}, LOG))
    assert w.provisioner.servers[w.key("h1")].wiped == 0
    assert w.bmh("h1")["spec"]["consumerRef"]["name"] == "m1"


def quarantined(w: World, reason: str = "SSHUnreachable", generation: int = 1) -> None:
    q = Quarantine(reason, "could not be cleaned", generation, "2026-01-01T00:00:00Z")
    w.host("h1", state="quarantined", annotations={api.QUARANTINE_ANNOTATION: q.to_annotation()})


def test_a_quarantined_host_is_kept_off(w: World) -> None:
    quarantined(w)
    w.provisioner.servers[w.key("h1")].power = PowerState.ON
    w.provisioner.servers[w.key("h1")].bootable = False
    monitor = run(host_pass(w, "h1"))  # first pass: tries to clean, cannot, powers off
    assert w.provisioner.servers[w.key("h1")].power is PowerState.OFF
    assert api.QUARANTINE_ANNOTATION in w.bmh("h1")["metadata"]["annotations"]
    w.provisioner.servers[w.key("h1")].power = PowerState.ON  # someone powers it on by hand
    run(host_pass(w, "h1", monitor=monitor))  # before its next cleaning attempt: just off again
    assert w.provisioner.servers[w.key("h1")].power is PowerState.OFF
    host = w.bmh("h1")
    assert host["status"]["provisioningState"] == "quarantined"
    assert cond(host, "Ready")["reason"] == "Quarantined"


def test_a_later_successful_cleaning_lifts_the_quarantine(w: World) -> None:
    quarantined(w)
    run(host_pass(w, "h1"))
    assert w.provisioner.servers[w.key("h1")].wiped == 1
    assert api.QUARANTINE_ANNOTATION not in w.bmh("h1")["metadata"]["annotations"]
    assert "QuarantineLifted" in w.events.reasons("h1")


def test_a_host_with_a_foreign_key_is_not_contacted_until_its_spec_changes(w: World) -> None:
    quarantined(w, reason="HostKeyMismatch", generation=1)
    run(host_pass(w, "h1"))
    assert "wait_for_os" not in w.provisioner.ops()
    assert api.QUARANTINE_ANNOTATION in w.bmh("h1")["metadata"]["annotations"]
    # The operator pins the right key: the host's generation moves and cleaning is tried again.
    host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFixedKeyFixedKeyFixedKeyFixedKeyFixedKe"
    run(w.kube.patch(api.GROUP, api.VERSION, api.HOSTS, "a", "h1", {"spec": {"ssh": {"hostKey": host_key}}}))
    run(host_pass(w, "h1"))
    assert w.provisioner.servers[w.key("h1")].wiped == 1
    assert api.QUARANTINE_ANNOTATION not in w.bmh("h1")["metadata"]["annotations"]


def test_a_quarantined_host_is_never_claimed(w: World) -> None:
    quarantined(w, reason="HostKeyMismatch")
    w.machine("m1")
    run(reconcile(w, "m1"))
    assert "consumerRef" not in w.bmh("h1")["spec"]
    assert cond(w.bmm("m1"), "HostClaimed")["reason"] == "WaitingForHost"


def test_a_warm_host_is_used_warm_by_the_machine_that_claims_it(w: World) -> None:
    """The boot a warm pool saves must not be spent again: the claimed host stays marked warm (its monitor
    may write status between the claim and PowerOn) until its machine's PowerOn has kept it running."""
    w.host("h1")
    w.ctx.state.set_warm_pool(w.key("pool"), {w.key("h1")})
    monitor = run(host_pass(w, "h1"))  # booted and verified for the pool
    assert w.bmh("h1")["status"]["warm"] is True
    boots = w.provisioner.servers[w.key("h1")].boots
    w.machine("m1", data=False)
    w.provisioner.fail("PowerOn", w.key("h1"), "BMCTimeout")  # the first pass ends right after the claim
    run(reconcile(w, "m1"))
    assert w.bmh("h1")["spec"]["consumerRef"]["name"] == "m1"
    run(host_pass(w, "h1", monitor=monitor))  # the monitor writes the claimed host's status meanwhile
    run(reconcile(w, "m1"))
    power_on = next(s for s in w.bmm("m1")["status"]["steps"] if s["name"] == "PowerOn")
    assert power_on["message"] == "already running (warm pool)"
    assert w.provisioner.servers[w.key("h1")].boots == boots
    run(host_pass(w, "h1", monitor=monitor))  # PowerOn has used it: no longer warm
    assert not w.bmh("h1")["status"].get("warm")
