"""BareMetalMachine decisions: the next step, step bookkeeping, retry and blocking policy, conditions, phase.

A machine goes: wait for its CAPI Machine and Cluster → claim a host → the provisioner's steps (SSH push:
PowerOn → WaitForSSH → (wait for bootstrap data) → DeliverSeed → Bootstrap) → Finalize (providerID, the
host shows provisioned, then addresses and initialization.provisioned). Claiming and powering on do not wait
for the bootstrap data, so a server's boot overlaps CAPI preparing the join data. Each step is recorded in
status.steps with timestamps; a step that finished is never repeated, which is what makes the controller
restartable at any point.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass
from typing import Any

from capi_provider.decisions.backoff import backoff_delay
from capi_provider.decisions.conditions import PAUSED, READY, now, set_condition
from capi_provider.provisioner.base import StepSpec

HOST_CLAIMED = "HostClaimed"
PROVISIONED = "Provisioned"

# Reasons (CamelCase, on the conditions; CAPI mirrors Ready into the Machine's InfrastructureReady).
WAITING_FOR_MACHINE = "WaitingForMachineOwner"
WAITING_FOR_CLUSTER = "WaitingForClusterInfrastructure"
WAITING_FOR_HOST = "WaitingForHost"
WAITING_FOR_BOOTSTRAP = "WaitingForBootstrapData"
WAITING_FOR_HOST_STATE = "WaitingForHostStatus"
HOST_DELETED = "HostDeleted"
HOST_NOT_OWNED = "HostNotOwned"
BOOTSTRAP_FAILED = "BootstrapFailed"
SEED_TEMPLATE_INVALID = "SeedTemplateInvalid"
DELETING = "Deleting"
FINALIZE = "Finalize"

# Failures that retrying cannot fix: the machine stops (condition, event) until its host's spec changes.
# A host presenting another host key may be another machine or an attacker: nothing more is sent to it.
# Bad bootstrap data or seed templates need their author, not another attempt.
BLOCKING_REASONS = frozenset(
    {
        "HostKeyMismatch",
        BOOTSTRAP_FAILED,
        SEED_TEMPLATE_INVALID,
        "BootstrapDataRejected",
        "UnsupportedBootstrapFormat",
        HOST_NOT_OWNED,
    }
)


def step_retry_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before retrying a failed step (attempt 1, 2, ...): 15 s doubling to 5 min, jittered, so a
    BMC or network that stays down is not retried in a tight loop, nor a rack in lockstep."""
    return backoff_delay(attempt, base=15.0, cap=300.0, factor=2.0, jitter=0.2, rng=rng or random.Random())


@dataclass(frozen=True)
class Facts:
    """What the machine controller knows before choosing the next step."""

    steps_done: frozenset[str]
    bootstrap_data_ready: bool
    provider_id_set: bool


def next_step(steps: tuple[StepSpec, ...], facts: Facts) -> str:
    """The next thing to do for a machine that holds a host: a step name, WaitForBootstrapData, or Finalize
    (when provisioned already, Finalize only re-asserts status, which is idempotent)."""
    if facts.provider_id_set:
        return FINALIZE
    for step in steps:
        if step.name in facts.steps_done:
            continue
        if step.needs_seed and not facts.bootstrap_data_ready:
            return WAITING_FOR_BOOTSTRAP
        return step.name
    return FINALIZE


def steps_done(steps: list[dict[str, Any]] | None) -> frozenset[str]:
    return frozenset(s["name"] for s in steps or [] if s.get("finishedAt"))


def start_step(steps: list[dict[str, Any]] | None, name: str, message: str = "") -> list[dict[str, Any]]:
    """Record that `name` is running. A retry of a step that never finished keeps its first start time, so
    the timestamps say how long the step has really been trying."""
    previous = next((s for s in steps or [] if s.get("name") == name and not s.get("finishedAt")), None)
    out = [s for s in steps or [] if s.get("name") != name]
    entry: dict[str, Any] = {"name": name, "startedAt": previous["startedAt"] if previous else now()}
    if message:
        entry["message"] = message
    out.append(entry)
    return out


def finish_step(steps: list[dict[str, Any]] | None, name: str, message: str = "") -> list[dict[str, Any]]:
    out = []
    for s in steps or []:
        if s.get("name") == name:
            s = {**s, "finishedAt": now()}
            if message:
                s["message"] = message
        out.append(s)
    return out


def machine_addresses(hostname: str, ssh_address: str, nic_ips: list[str]) -> list[dict[str, str]]:
    out = [{"type": "Hostname", "address": hostname}]
    seen = set()
    for candidate in [ssh_address, *[ip.split("/")[0] for ip in nic_ips]]:
        if candidate in seen:
            continue
        seen.add(candidate)
        try:
            ipaddress.ip_address(candidate)
            out.append({"type": "InternalIP", "address": candidate})
        except ValueError:
            out.append({"type": "InternalDNS", "address": candidate})
    return out


def phase_for(reason: str, provisioned: bool) -> str:
    if provisioned:
        return "Provisioned"
    return {
        WAITING_FOR_HOST: "WaitingForHost",
        WAITING_FOR_CLUSTER: "Pending",
        WAITING_FOR_MACHINE: "Pending",
        HOST_DELETED: "Failed",
        **dict.fromkeys(BLOCKING_REASONS, "Failed"),
        DELETING: "Deprovisioning",
        "Paused": "Paused",
    }.get(reason, "Provisioning")


def summarize(
    conditions: list[dict[str, Any]] | None,
    *,
    claimed: tuple[bool, str, str],
    provisioned: tuple[bool | str, str, str] | None,
    generation: int | None,
) -> list[dict[str, Any]]:
    """Set HostClaimed/Provisioned and the Ready summary (True only when provisioned; otherwise it carries
    the reason of the first step that is not done, which is what an operator needs to see)."""
    conds = set_condition(conditions, HOST_CLAIMED, claimed[0], claimed[1], claimed[2], generation)
    if provisioned is not None:
        conds = set_condition(conds, PROVISIONED, provisioned[0], provisioned[1], provisioned[2], generation)
    if not claimed[0]:
        return set_condition(conds, READY, False, claimed[1], claimed[2], generation)
    if provisioned is None:
        return set_condition(conds, READY, False, "Provisioning", "", generation)
    status, reason, message = provisioned
    return set_condition(conds, READY, status, reason, message, generation)


def paused_condition(
    conditions: list[dict[str, Any]] | None, paused: bool, generation: int | None
) -> list[dict[str, Any]]:
    if paused:
        return set_condition(conditions, PAUSED, True, "Paused", "Cluster or object is paused", generation)
    return set_condition(conditions, PAUSED, False, "NotPaused", "", generation)
