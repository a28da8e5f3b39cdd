"""What every handler shares (kopf's operator memo carries one `Context`): the adapters (Kubernetes API,
provisioner, credentials, events), the wake-ups between objects, and a little typed in-memory state.

Nothing here is the source of truth: the API objects and the hardware are. A restart rebuilds all of it
from watches; every per-object entry is dropped when that object's daemon ends (`SharedState.forget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from capi_provider.config import Settings
from capi_provider.controller.credentials import CredentialStore
from capi_provider.decisions.secrets import SecretData
from capi_provider.objkey import ObjKey
from capi_provider.provisioner.base import Provisioner

__all__ = ["Context", "Kind", "ObjKey", "SharedState", "Wakers", "run_daemon"]


class Kind(enum.StrEnum):
    """Objects with a daemon of their own (each sleeps on its own wake-up event)."""

    HOST = "host"
    MACHINE = "machine"
    TEMPLATE = "template"
    CLUSTER = "cluster"


class Followed(enum.StrEnum):
    """CAPI objects we only follow: we remember what we last saw of them to wake our own objects."""

    CAPI_MACHINE = "capi-machine"
    CAPI_CLUSTER = "capi-cluster"


class KubeApi(Protocol):
    """The Kubernetes calls the controllers make (capi_provider/k8s.py; a fake in the unit tests)."""

    async def get(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None: ...

    async def patch(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        body: dict[str, Any] | list[dict[str, Any]],
        *,
        status: bool = False,
    ) -> dict[str, Any]: ...

    async def get_secret(self, namespace: str, name: str) -> SecretData | None: ...

    async def get_configmap(self, namespace: str, name: str) -> dict[str, str] | None: ...


class EventSink(Protocol):
    """Events for operators, written by us on purpose (log lines are not events)."""

    def info(self, body: Any, reason: str, message: str) -> None: ...

    def warn(self, body: Any, reason: str, message: str) -> None: ...


class Wakers:
    """One event per object: anything that may change an object's next step sets it; its daemon waits on it.

    Events are cheap and level-triggered: a set before the daemon starts waiting is not lost.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[Kind, ObjKey], asyncio.Event] = {}
        self._seen: dict[tuple[str, ObjKey], int] = {}

    def event(self, kind: Kind, key: ObjKey) -> asyncio.Event:
        ev = self._events.get((kind, key))
        if ev is None:
            ev = self._events[(kind, key)] = asyncio.Event()
        return ev

    def wake(self, kind: Kind, key: ObjKey) -> None:
        ev = self._events.get((kind, key))
        if ev is not None:  # no daemon (yet): its first pass sees the change anyway
            ev.set()

    def wake_all(self, kind: Kind, keys: Iterable[ObjKey] | None = None) -> None:
        wanted = None if keys is None else set(keys)
        for (k, key), ev in self._events.items():
            if k == kind and (wanted is None or key in wanted):
                ev.set()

    def wake_namespace(self, kind: Kind, namespace: str) -> None:
        for (k, key), ev in self._events.items():
            if k == kind and key.namespace == namespace:
                ev.set()

    def wake_on_change(self, kind: Kind, body: Any) -> bool:
        """Wake the object's daemon if something other than its status changed. Status is written by the
        daemon itself: waking on it would turn every status write into another pass (a hot loop)."""
        meta = body["metadata"]
        fingerprint = (
            meta.get("generation"),
            sorted((meta.get("labels") or {}).items()),
            sorted((meta.get("annotations") or {}).items()),
            meta.get("ownerReferences"),
            meta.get("deletionTimestamp"),
        )
        if self.seen_before(kind, ObjKey.of(body), fingerprint):
            return False
        self.wake(kind, ObjKey.of(body))
        return True

    def seen_before(self, kind: str, key: ObjKey, fingerprint: object) -> bool:
        """Record `fingerprint` for an object; True if it is what we saw last."""
        fp = hash(repr(fingerprint))
        if self._seen.get((kind, key)) == fp:
            return True
        self._seen[(kind, key)] = fp
        return False

    def forget(self, kind: Kind, key: ObjKey) -> None:
        self._events.pop((kind, key), None)
        self._seen.pop((kind, key), None)

    def forget_followed(self, kind: Followed, key: ObjKey) -> None:
        self._seen.pop((kind, key), None)

    def __len__(self) -> int:
        return len(self._events) + len(self._seen)

    async def sleep(self, kind: Kind, key: ObjKey, timeout: float, stopped: Any = None) -> None:
        """Wait until woken, stopped (kopf's daemon flag) or `timeout` seconds pass."""
        ev = self.event(kind, key)
        waits = [asyncio.ensure_future(ev.wait())]
        if stopped is not None:
            waits.append(asyncio.ensure_future(stopped.wait()))
        try:
            await asyncio.wait(waits, timeout=max(timeout, 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await w
        ev.clear()


@dataclass(frozen=True)
class Blocked:
    """A machine stopped by a failure retrying cannot fix (HostKeyMismatch, BootstrapFailed, ...): it tries
    again when its host's spec or its own spec changes, when its retry annotation changes, or after a
    restart. `since` is what those were when it stopped."""

    reason: str
    message: str
    host: ObjKey
    since: tuple[int, int, str | None]  # host generation, machine generation, retry annotation


@dataclass(frozen=True)
class PowerEvent:
    """A power change the machine controller made, for the host daemon (the one writer of host status)."""

    action: str  # on | off | cycle
    reason: str


@dataclass
class SharedState:
    # Hosts this replica claimed, until the watch shows the claim (prevents racing its own stale view).
    pending_claims: dict[ObjKey, ObjKey] = field(default_factory=dict)  # host -> machine
    # Free hosts each template's warm pool wants kept booted, and their union.
    warm_by_template: dict[ObjKey, set[ObjKey]] = field(default_factory=dict)
    warm_wanted: set[ObjKey] = field(default_factory=set)
    # Hosts last seen free: entering this set wakes machines waiting for a host.
    free_hosts: set[ObjKey] = field(default_factory=set)
    # Last provisioningState seen per host: a change wakes its consumer (Finalize waits for it).
    host_states: dict[ObjKey, str | None] = field(default_factory=dict)
    # Last status.initialization.provisioned seen per machine: its host's state follows it.
    machine_provisioned: dict[ObjKey, bool] = field(default_factory=dict)
    blocked: dict[ObjKey, Blocked] = field(default_factory=dict)
    # Consecutive failed attempts of a machine's current step (for its retry backoff).
    step_failures: dict[ObjKey, int] = field(default_factory=dict)
    # Machines whose last pass found no host: any change to a free host gives them another look.
    waiting_for_host: set[ObjKey] = field(default_factory=set)
    power_events: dict[ObjKey, PowerEvent] = field(default_factory=dict)

    def set_warm_pool(self, template: ObjKey, hosts: set[ObjKey]) -> None:
        if hosts:
            self.warm_by_template[template] = hosts
        else:
            self.warm_by_template.pop(template, None)
        self.warm_wanted = set().union(*self.warm_by_template.values())

    def forget_machine(self, key: ObjKey) -> None:
        self.blocked.pop(key, None)
        self.step_failures.pop(key, None)
        self.waiting_for_host.discard(key)
        self.machine_provisioned.pop(key, None)
        for host in [h for h, m in self.pending_claims.items() if m == key]:
            del self.pending_claims[host]

    def forget_host(self, key: ObjKey) -> None:
        self.pending_claims.pop(key, None)
        self.free_hosts.discard(key)
        self.host_states.pop(key, None)
        self.power_events.pop(key, None)

    def forget_template(self, key: ObjKey) -> None:
        self.set_warm_pool(key, set())

    def size(self) -> int:
        """Entries held (a test proves deleted objects leave nothing behind)."""
        return sum(
            len(c)
            for c in (
                self.pending_claims,
                self.warm_by_template,
                self.free_hosts,
                self.host_states,
                self.machine_provisioned,
                self.blocked,
                self.step_failures,
                self.waiting_for_host,
                self.power_events,
            )
        )


@dataclass
class Context:
    settings: Settings
    kube: KubeApi
    provisioner: Provisioner
    credentials: CredentialStore
    events: EventSink
    wakers: Wakers = field(default_factory=Wakers)
    state: SharedState = field(default_factory=SharedState)


async def run_daemon(
    ctx: Context,
    kind: Kind,
    key: ObjKey,
    stopped: Any,
    logger: Any,
    one_pass: Callable[[], Awaitable[float]],
    *,
    retry_after: float = 30.0,
) -> None:
    """The loop every object's daemon runs: a pass, then sleep until woken, stopped or the pass's requeue
    time. A failed pass is logged and retried later; it never ends the daemon. The object's in-memory
    wake-up state goes when the daemon does (a long-running controller sees many objects come and go)."""
    ctx.wakers.event(kind, key)  # exists from now on: wake-ups before the first sleep are not lost
    try:
        while not stopped:
            try:
                delay = await one_pass()
            except Exception:  # any failure: the next wake-up or retry_after tries again
                logger.exception("%s %s: pass failed; retrying", kind, key)
                delay = retry_after
            await ctx.wakers.sleep(kind, key, delay, stopped)
    finally:
        ctx.wakers.forget(kind, key)
