"""Host decisions: what state a host is in, what power it should have while free, how often to poll it, and
what its status should say. Inputs are plain facts gathered by the host controller; nothing here does I/O.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

from capi_provider.decisions.backoff import backoff_delay
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
CREDENTIAL_ERRORS = {"CredentialsRejected", "CredentialsSecretMissing", "CredentialsNotBound"}


def host_state(
    consumer: bool,
    consumer_phase: ConsumerPhase | None,
    observation: BmcObservation | None,
    quarantined: bool = False,
) -> str:
    """registering → available ⇄ provisioning → provisioned → deprovisioning → available; error for a free
    host whose BMC is not usable; quarantined for a host that could not be cleaned (out of the pool)."""
    if consumer:
        if consumer_phase in ("missing", "deleting"):
            return "deprovisioning"
        return "provisioned" if consumer_phase == "provisioned" else "provisioning"
    if quarantined:
        return "quarantined"
    if observation is None:
        return "registering"
    return "available" if observation.ok else "error"


@dataclass(frozen=True)
class Quarantine:
    """Why a host is out of the pool: its last user's data may still be on it (it could not be reset and
    cleaned as asked), or it presented another host key than the pinned one. Kept in an annotation on the
    host (survives restarts and clusterctl move); an operator removes it to release the host by hand."""

    reason: str
    message: str
    generation: int  # the host's spec generation when it was quarantined
    since: str
    cleaning: str = "metadata"  # what a later cleaning must achieve (the last consumer's mode)

    def to_annotation(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def parse(cls, text: str | None) -> Quarantine | None:
        if text is None:
            return None
        try:
            d = json.loads(text)
            cleaning = "none" if d.get("cleaning") == "none" else "metadata"
            return cls(str(d["reason"]), str(d["message"]), int(d["generation"]), str(d["since"]), cleaning)
        except (ValueError, KeyError, TypeError):
            # Still quarantined: a mangled annotation must not put a dirty host back into the pool.
            return cls("Unknown", "unreadable quarantine annotation", -1, "")


def may_retry_cleaning(q: Quarantine, generation: int) -> bool:
    """A host quarantined for a foreign host key is never contacted again until its spec changes (the
    operator corrected the key, or re-imaged the server); other failures are retried with backoff."""
    return q.reason != "HostKeyMismatch" or generation != q.generation


def cleaning_retry_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt to clean a quarantined host: 1 minute doubling to an hour."""
    return backoff_delay(attempt, base=60.0, cap=3600.0, factor=2.0, jitter=0.2, rng=rng or random.Random())


OrphanCluster = Literal["running", "paused", "absent"]


def orphan_action(cluster: OrphanCluster, missing_for: float, grace: float) -> Literal["clean", "wait"]:
    """What to do with a claimed host whose machine is gone (its deletion went on while the BMC was dead,
    its finalizer was removed by hand, or it was re-created under the same name).

    A paused Cluster means `clusterctl move` (or an operator) is at work: during a move the machine is
    deleted from one management cluster and created in the other, and the host must not be wiped meanwhile.
    A Cluster that does not exist (yet, on a move's target; or any more) gets a grace period before the host
    is cleaned, so the machine can arrive."""
    if cluster == "paused":
        return "wait"
    if cluster == "absent" and missing_for < grace:
        return "wait"
    return "clean"


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
            return backoff_delay(
                self._error_streak, base=2.0, cap=self.error_max, factor=2.0, jitter=0.2, rng=random.Random()
            )
        self._error_streak = 0
        self._healthy_streak = 0 if changed else self._healthy_streak + 1
        return min(self.maximum, self.base * 2 ** min(self._healthy_streak, 16)) * random.uniform(0.9, 1.1)


def host_conditions(
    existing: list[dict[str, Any]] | None,
    observation: BmcObservation | None,
    generation: int | None,
    quarantine: Quarantine | None = None,
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
        if quarantine is not None:
            return set_condition(
                conds, READY, False, "Quarantined", f"{quarantine.reason}: {quarantine.message}", generation
            )
        return set_condition(conds, READY, True, "Ready", "", generation)
    if reason == "CredentialsRejected":
        # The BMC answered, it is our credentials that are wrong.
        conds = set_condition(conds, BMC_REACHABLE, True, "Reachable", "", generation)
        conds = set_condition(conds, CREDENTIALS_VALID, False, reason, message, generation)
    elif reason in CREDENTIAL_ERRORS:
        # No usable credentials (missing or not bound to this host): the BMC was not contacted at all.
        conds = set_condition(
            conds, BMC_REACHABLE, "Unknown", "NotContacted", "no usable credentials", generation
        )
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
