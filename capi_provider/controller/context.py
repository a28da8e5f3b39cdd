"""What every handler shares (kopf's operator memo carries one `Context`): API and BMC/SSH access, the
in-memory wake-ups between objects, and the claims this replica made but has not yet seen come back.

Nothing here is the source of truth: the API objects are. A restart rebuilds all of it from watches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from capi_provider.bmc.runner import BmcRunner
from capi_provider.config import Settings
from capi_provider.k8s import Kube


class ObjKey(NamedTuple):
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, body: Any) -> ObjKey:
        return cls(body["metadata"]["namespace"], body["metadata"]["name"])


class Wakers:
    """One event per object: anything that may change an object's next step sets it; its daemon waits on it.

    Events are cheap and level-triggered: a set before the daemon starts waiting is not lost.
    """

    def __init__(self) -> None:
        self._events: dict[tuple[str, ObjKey], asyncio.Event] = {}
        self._seen: dict[tuple[str, ObjKey], int] = {}

    def event(self, kind: str, key: ObjKey) -> asyncio.Event:
        ev = self._events.get((kind, key))
        if ev is None:
            ev = self._events[(kind, key)] = asyncio.Event()
        return ev

    def wake(self, kind: str, key: ObjKey) -> None:
        self.event(kind, key).set()

    def wake_all(self, kind: str, keys: Iterable[ObjKey] | None = None) -> None:
        for (k, key), ev in list(self._events.items()):
            if k == kind and (keys is None or key in keys):
                ev.set()

    def wake_on_change(self, kind: str, body: Any) -> bool:
        """Wake the object's daemon if something other than its status changed. Status is written by the
        daemon itself: waking on it would turn every status write into another pass (a hot loop)."""
        key = ObjKey.of(body)
        meta = body["metadata"]
        fingerprint = hash(
            (
                meta.get("generation"),
                repr(sorted((meta.get("labels") or {}).items())),
                repr(sorted((meta.get("annotations") or {}).items())),
                repr(meta.get("ownerReferences")),
                meta.get("deletionTimestamp"),
            )
        )
        if self._seen.get((kind, key)) == fingerprint:
            return False
        self._seen[(kind, key)] = fingerprint
        self.wake(kind, key)
        return True

    def seen_before(self, kind: str, key: ObjKey, fingerprint: object) -> bool:
        """Record `fingerprint` for an object we do not own (CAPI's); True if it is what we saw last."""
        fp = hash(repr(fingerprint))
        if self._seen.get((kind, key)) == fp:
            return True
        self._seen[(kind, key)] = fp
        return False

    def wake_namespace(self, kind: str, namespace: str) -> None:
        for (k, key), ev in list(self._events.items()):
            if k == kind and key.namespace == namespace:
                ev.set()

    def forget(self, kind: str, key: ObjKey) -> None:
        self._events.pop((kind, key), None)
        self._seen.pop((kind, key), None)

    async def sleep(self, kind: str, key: ObjKey, timeout: float, stopped: Any = None) -> None:
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


@dataclass
class Context:
    settings: Settings
    kube: Kube
    bmc: BmcRunner = field(default_factory=BmcRunner)
    ssh: BmcRunner = field(default_factory=BmcRunner)
    wakers: Wakers = field(default_factory=Wakers)
    # Hosts this replica claimed, until the watch shows the claim (prevents racing its own stale view).
    pending_claims: dict[ObjKey, ObjKey] = field(default_factory=dict)  # host -> machine
    # Free hosts the warm pools want kept booted (computed per template; see templates.py) and their union.
    warm_by_template: dict[ObjKey, set[ObjKey]] = field(default_factory=dict)
    warm_wanted: set[ObjKey] = field(default_factory=set)
    # Hosts last seen free (available, unclaimed): entering this set wakes machines waiting for a host.
    free_hosts: set[ObjKey] = field(default_factory=set)
    # Secrets the hosts reference (BMC credentials, SSH keys), kept until a watch event says they changed:
    # polling a BMC must not cost an API request each time.
    secrets: dict[ObjKey, Any] = field(default_factory=dict)
    # SSH connections kept open between the provisioning steps of one host (key: host). Each is used by
    # one runner thread at a time (the SSH runner serializes per host).
    shells: dict[ObjKey, Any] = field(default_factory=dict)
    # Last seen status.initialization.provisioned per machine: its host's state follows it.
    machine_provisioned: dict[ObjKey, bool] = field(default_factory=dict)
    # Machines stopped by a failure retrying cannot fix (HostKeyMismatch, BootstrapFailed), with the host
    # generation they failed on: they try again only when the host's spec changes (or after a restart).
    blocked: dict[ObjKey, tuple[str, str, int, ObjKey]] = field(
        default_factory=dict
    )  # -> reason, msg, gen, host
    # Consecutive failed attempts of a machine's current step (for its retry backoff).
    step_failures: dict[ObjKey, int] = field(default_factory=dict)
    # Machines whose last pass found no host: any change to a free host gives them another look.
    waiting_for_host: set[ObjKey] = field(default_factory=set)
    # Hosts whose last power operation should be recorded by the host daemon (which owns host status).
    power_events: dict[ObjKey, dict[str, str]] = field(default_factory=dict)

    async def secret(self, namespace: str, name: str) -> Any:
        """A Secret's data (SecretData or None), from the cache when the watch says it has not changed."""
        key = ObjKey(namespace, name)
        if key not in self.secrets:
            self.secrets[key] = await self.kube.get_secret(namespace, name)
        return self.secrets[key]


async def run_daemon(
    ctx: Context,
    kind: str,
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
