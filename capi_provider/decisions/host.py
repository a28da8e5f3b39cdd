"""Host decisions: what state a host is in, what power it should have while free, how often to poll it, and
what its status should say. Inputs are plain facts gathered by the host controller; nothing here does I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from capi_provider.decisions.conditions import READY, now, set_condition

BMC_REACHABLE = "BMCReachable"
CREDENTIALS_VALID = "CredentialsValid"

ConsumerPhase = Literal["missing", "deleting", "provisioning", "provisioned"]


@dataclass(frozen=True)
class BmcObservation:
    """The result of the last attempt to talk to the BMC. `power` is None when it failed."""

    power: str | None = None  # "on" | "off"
    error_reason: str | None = None  # BMCUnreachable, CredentialsRejected, BMCTimeout, ...
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.error_reason is None and self.power is not None


# Which condition an error is about: the BMC connection, the credentials, or (anything else, e.g. cleaning
# over SSH) neither — then only Ready says it.
BMC_ERRORS = {
    "BMCUnreachable",
    "BMCTimeout",
    "BMCProtocolError",
    "BMCOperationFailed",
    "TLSVerificationFailed",
    "InvalidBMCAddress",
}
CREDENTIAL_ERRORS = {"CredentialsRejected", "CredentialsSecretMissing"}


def host_state(
    consumer: bool,
    consumer_phase: ConsumerPhase | None,
    observation: BmcObservation | None,
) -> str:
    """registering → available ⇄ provisioning → provisioned → deprovisioning → available; error for a free
    host whose BMC is not usable."""
    if consumer:
        if consumer_phase in ("missing", "deleting"):
            return "deprovisioning"
        return "provisioned" if consumer_phase == "provisioned" else "provisioning"
    if observation is None:
        return "registering"
    return "available" if observation.ok else "error"


def desired_free_power(online: bool, warm: bool) -> str:
    """Power a free host should have: on if the operator wants it online or the warm pool holds it."""
    return "on" if online or warm else "off"


@dataclass
class PollSchedule:
    """When to look at the BMC again. Healthy and unchanged: the interval doubles up to `maximum` (an idle
    controller costs each BMC one request every few minutes). Failing: exponential backoff with jitter, so a
    rack of dead BMCs is not hammered and does not fall into lockstep."""

    base: float
    maximum: float
    error_max: float
    _healthy_streak: int = 0
    _error_streak: int = 0

    def next_delay(self, ok: bool, changed: bool) -> float:
        if not ok:
            self._healthy_streak = 0
            self._error_streak += 1
            delay = min(self.error_max, 2.0 * 2 ** min(self._error_streak - 1, 16))
            return delay * random.uniform(0.8, 1.2)
        self._error_streak = 0
        self._healthy_streak = 0 if changed else self._healthy_streak + 1
        return min(self.maximum, self.base * 2 ** min(self._healthy_streak, 16)) * random.uniform(0.9, 1.1)


def host_conditions(
    existing: list[dict[str, Any]] | None, observation: BmcObservation | None, generation: int | None
) -> list[dict[str, Any]]:
    conds = existing
    if observation is None:
        conds = set_condition(
            conds, BMC_REACHABLE, "Unknown", "Registering", "BMC not contacted yet", generation
        )
        return set_condition(conds, READY, False, "Registering", "BMC not contacted yet", generation)
    reason, message = observation.error_reason, observation.error_message or ""
    if observation.ok:
        conds = set_condition(conds, BMC_REACHABLE, True, "Reachable", "", generation)
        conds = set_condition(conds, CREDENTIALS_VALID, True, "Accepted", "", generation)
        return set_condition(conds, READY, True, "Ready", "", generation)
    if reason in CREDENTIAL_ERRORS:
        # The BMC answered, it is our credentials that are wrong.
        conds = set_condition(conds, BMC_REACHABLE, True, "Reachable", "", generation)
        conds = set_condition(conds, CREDENTIALS_VALID, False, reason or "", message, generation)
    elif reason in BMC_ERRORS or reason is None:
        conds = set_condition(conds, BMC_REACHABLE, False, reason or "BMCError", message, generation)
    return set_condition(conds, READY, False, reason or "BMCError", message, generation)


def error_status(
    previous: dict[str, Any] | None, observation: BmcObservation | None, previous_count: int
) -> tuple[dict[str, Any] | None, int]:
    """lastError and errorCount: the first occurrence of an error keeps its time; success clears both."""
    if observation is None or observation.ok:
        return None, 0
    if (
        previous
        and previous.get("type") == observation.error_reason
        and previous.get("message") == (observation.error_message or "")
    ):
        return previous, previous_count + 1
    return {"type": observation.error_reason, "message": observation.error_message or "", "time": now()}, (
        previous_count + 1
    )
