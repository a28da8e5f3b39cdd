"""The pure decisions behind the host and machine controllers."""

from __future__ import annotations

import random

from capi_provider.decisions import host as h
from capi_provider.decisions import machine as m
from capi_provider.decisions.conditions import get_condition, same_ignoring_time, set_condition
from capi_provider.decisions.ownership import provider_id
from capi_provider.provisioner.sshpush import STEPS


def test_host_states_follow_claims_and_the_bmc() -> None:
    ok, bad = (
        h.BmcObservation(power="off"),
        h.BmcObservation(error_reason="BMCUnreachable", error_message="x"),
    )
    assert h.host_state(False, None, None) == "registering"
    assert h.host_state(False, None, ok) == "available"
    assert h.host_state(False, None, bad) == "error"
    assert h.host_state(True, "provisioning", ok) == "provisioning"
    assert h.host_state(True, "provisioned", bad) == "provisioned"  # in use: a BMC blip is not a state
    assert h.host_state(True, "deleting", ok) == "deprovisioning"
    assert h.host_state(True, "missing", bad) == "deprovisioning"


def test_free_host_power_policy() -> None:
    assert h.desired_free_power(online=False, warm=False) == "off"
    assert h.desired_free_power(online=True, warm=False) == "on"
    assert h.desired_free_power(online=False, warm=True) == "on"


def test_poll_schedule_backs_off_when_quiet_and_on_errors_but_reacts_to_change() -> None:
    random.seed(1)
    s = h.PollSchedule(base=30, maximum=300, error_max=300)
    quiet = [s.next_delay(ok=True, changed=False) for _ in range(6)]
    assert quiet[0] < quiet[2] < quiet[4] and max(quiet) <= 300 * 1.1
    assert s.next_delay(ok=True, changed=True) <= 30 * 1.1  # something changed: look again soon
    errors = [s.next_delay(ok=False, changed=True) for _ in range(12)]
    assert errors[0] < 3 and errors[5] > errors[1] and max(errors) <= 300 * 1.2
    # Thousands of failures do not overflow or exceed the cap.
    for _ in range(5000):
        d = s.next_delay(ok=False, changed=False)
    assert d <= 300 * 1.2


def test_host_conditions_say_what_is_wrong() -> None:
    rejected = h.BmcObservation(error_reason="CredentialsRejected", error_message="Secret ns/x rejected")
    conds = h.host_conditions(None, rejected, 1)
    assert get_condition(conds, "BMCReachable")["status"] == "True"
    assert get_condition(conds, "CredentialsValid")["status"] == "False"
    assert get_condition(conds, "Ready")["reason"] == "CredentialsRejected"
    unreachable = h.BmcObservation(error_reason="BMCUnreachable", error_message="no answer")
    conds = h.host_conditions(conds, unreachable, 1)
    assert get_condition(conds, "BMCReachable")["status"] == "False"
    conds = h.host_conditions(conds, h.BmcObservation(power="on"), 2)
    assert all(c["status"] == "True" for c in conds)
    # Credentials that are missing or not bound to the host: the BMC was never contacted.
    unbound = h.BmcObservation(error_reason="CredentialsNotBound", error_message="no ownerReference")
    conds = h.host_conditions(conds, unbound, 3)
    assert get_condition(conds, "BMCReachable")["status"] == "Unknown"
    assert get_condition(conds, "CredentialsValid")["reason"] == "CredentialsNotBound"


def test_error_status_keeps_the_first_time_of_a_repeated_error_and_clears_on_success() -> None:
    obs = h.BmcObservation(error_reason="BMCTimeout", error_message="slow")
    first, n = h.error_status(None, obs, 0)
    again, n2 = h.error_status(first, obs, n)
    assert again is first and (n, n2) == (1, 2)
    assert h.error_status(again, h.BmcObservation(power="on"), n2) == (None, 0)


def test_condition_transition_time_moves_only_on_status_change() -> None:
    c1 = set_condition(None, "Ready", False, "A", "x")
    c2 = set_condition(c1, "Ready", False, "B", "y")
    assert c2[0]["lastTransitionTime"] == c1[0]["lastTransitionTime"]
    assert not same_ignoring_time(c1, c2)
    c3 = set_condition(c2, "Ready", False, "B", "y")
    assert same_ignoring_time(c2, c3)


def test_machine_step_table() -> None:
    def nxt(done: set[str], data: bool = True, pid: bool = False) -> str:
        return m.next_step(STEPS, m.Facts(frozenset(done), data, pid))

    assert nxt(set()) == "PowerOn"
    assert nxt({"PowerOn"}) == "WaitForSSH"
    # The boot overlaps CAPI preparing bootstrap data; only delivery waits for it.
    assert nxt(set(), data=False) == "PowerOn"
    assert nxt({"PowerOn", "WaitForSSH"}, data=False) == m.WAITING_FOR_BOOTSTRAP
    assert nxt({"PowerOn", "WaitForSSH"}) == "DeliverSeed"
    assert nxt({"PowerOn", "WaitForSSH", "DeliverSeed"}) == "Bootstrap"
    assert nxt({s.name for s in STEPS}) == "Finalize"
    # After clusterctl move there is no status, but the providerID says it is done.
    assert nxt(set(), pid=True) == "Finalize"


def test_steps_are_recorded_with_timestamps_and_restarts_reset_a_step() -> None:
    steps = m.start_step(None, "PowerOn")
    assert "finishedAt" not in steps[0]
    steps = m.finish_step(steps, "PowerOn", "powered on")
    assert steps[0]["finishedAt"] and steps[0]["message"] == "powered on"
    assert m.steps_done(steps) == {"PowerOn"}
    steps = m.start_step(steps, "PowerOn")
    assert m.steps_done(steps) == set()


def test_provider_id_last_segment_is_the_machine_uid() -> None:
    pid = provider_id("ns1", "rack1-srv07", "0b6e-uid")
    assert pid == "baremetal://ns1/rack1-srv07/0b6e-uid"
    assert pid.rsplit("/", 1)[1] == "0b6e-uid"


def test_machine_addresses() -> None:
    assert m.machine_addresses("w-1", "10.0.0.7", ["10.1.0.7/24", "10.0.0.7/24"]) == [
        {"type": "Hostname", "address": "w-1"},
        {"type": "InternalIP", "address": "10.0.0.7"},
        {"type": "InternalIP", "address": "10.1.0.7"},
    ]
    assert m.machine_addresses("w-1", "srv7.rack1.example", [])[1] == {
        "type": "InternalDNS",
        "address": "srv7.rack1.example",
    }


def test_ready_summary_carries_the_blocking_reason() -> None:
    conds = m.summarize(
        None, claimed=(False, m.WAITING_FOR_HOST, "none free"), provisioned=None, generation=1
    )
    ready = get_condition(conds, "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "WaitingForHost", "none free")
    conds = m.summarize(
        conds, claimed=(True, "HostClaimed", "h1"), provisioned=(True, "Provisioned", ""), generation=1
    )
    assert get_condition(conds, "Ready")["status"] == "True"
    assert m.phase_for("HostKeyMismatch", False) == "Failed"
    assert m.phase_for(m.WAITING_FOR_HOST, False) == "WaitingForHost"
    assert m.phase_for("anything", True) == "Provisioned"


def test_a_retried_step_keeps_its_first_start_time() -> None:
    first = m.start_step(None, "WaitForSSH")
    first[0]["startedAt"] = "2026-01-01T00:00:00Z"
    again = m.start_step(first, "WaitForSSH", "retry")
    assert again[0]["startedAt"] == "2026-01-01T00:00:00Z" and again[0]["message"] == "retry"
    done = m.finish_step(again, "WaitForSSH")
    assert m.start_step(done, "WaitForSSH")[0]["startedAt"] != "2026-01-01T00:00:00Z"
