"""Async facade over blocking calls (pyghmi, paramiko), for the kopf controller, which must never block its
event loop.

`BlockingRunner.call(key, fn, timeout=..., tenant=...)` runs `fn` on a thread of the runner's own pool and
awaits it:

* Own pool, lazily grown (ThreadPoolExecutor only starts a thread when none is idle): kopf's default
  executor stays free for kopf.
* One operation at a time per key (a BMC address, an SSH host): an `asyncio.Lock` per key. Many BMCs
  misbehave when two sessions talk to them at once, and pyghmi shares one session per BMC and credentials.
* Per-tenant fairness: at most `per_tenant` operations of one tenant (a namespace) hold threads at once, so
  one tenant's 500 dead BMCs cannot take every thread from another tenant's hosts.
* Timeout: the caller gets `RunnerTimeout` when `timeout` passes, counting every wait (tenant slot, key
  lock, a free thread). Work still queued for a thread at its deadline is cancelled, never run late. A
  running thread cannot be killed, so its key lock and tenant slot are released only when it really ends:
  nothing talks to that BMC concurrently with it, and a stuck tenant's threads count against that tenant.
  The drivers bound their own calls, so a stuck thread ends within the driver's timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_MAX_WORKERS = 256
DEFAULT_PER_TENANT = 64


class RunnerTimeout(Exception):
    """The operation did not finish (or start) within its timeout."""


class _Expired(Exception):
    """The deadline passed while the work waited for a thread: it is dropped, not run."""


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # callers holding or waiting for the lock, plus a running orphaned thread


class BlockingRunner:
    """Runs blocking calls off the event loop, bounded, serialized per key, fair per tenant. One loop only."""

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS, per_tenant: int = DEFAULT_PER_TENANT) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="blocking"
        )
        self._keys: dict[str, _KeyLock] = {}
        self._per_tenant = per_tenant
        self._tenants: dict[str, asyncio.Semaphore] = {}
        self._tenant_users: dict[str, int] = {}

    async def call(self, key: str, fn: Callable[[], T], *, timeout: float, tenant: str = "") -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wall_deadline = time.monotonic() + timeout
        held = _Held(self, key, tenant)
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await held.acquire()
            except TimeoutError:
                raise RunnerTimeout(
                    f"{key}: waited {timeout:g}s for earlier operations on it (or its tenant) to finish"
                ) from None

            def guarded() -> T:
                if time.monotonic() > wall_deadline:
                    raise _Expired
                return fn()

            try:
                cfuture = self._executor.submit(guarded)
            except RuntimeError:  # the runner was shut down
                raise RunnerTimeout(f"{key}: the runner is shutting down") from None
            future = asyncio.wrap_future(cfuture)
            try:
                async with asyncio.timeout_at(deadline):
                    return await asyncio.shield(future)
            except TimeoutError:
                if future.done() and not future.cancelled():  # finished in the tick the timer fired
                    with contextlib.suppress(_Expired):
                        return future.result()
                raise RunnerTimeout(f"{key}: operation did not finish within {timeout:g}s") from None
            except _Expired:
                raise RunnerTimeout(f"{key}: no thread free within {timeout:g}s") from None
            finally:
                if not cfuture.done() and not cfuture.cancel():
                    # Running on a thread we cannot stop: it keeps the key and the tenant slot until it ends.
                    held.hand_off(cfuture)
        finally:
            held.release()

    def busy_keys(self) -> set[str]:
        """Keys with an operation running or queued (for metrics and tests)."""
        return set(self._keys)

    def shutdown(self, *, wait: bool = False) -> None:
        """Stop accepting work; with wait=True, also wait for running threads to return."""
        self._executor.shutdown(wait=wait, cancel_futures=True)


class _Held:
    """The key lock and tenant slot of one call, released when the call ends or, if its thread outlives the
    call, when the thread does."""

    def __init__(self, runner: BlockingRunner, key: str, tenant: str) -> None:
        self.runner, self.key, self.tenant = runner, key, tenant
        entry = runner._keys.get(key)
        if entry is None:
            entry = runner._keys[key] = _KeyLock()
        entry.users += 1
        self.entry = entry
        sem = runner._tenants.get(tenant)
        if sem is None:
            sem = runner._tenants[tenant] = asyncio.Semaphore(runner._per_tenant)
        runner._tenant_users[tenant] = runner._tenant_users.get(tenant, 0) + 1
        self.sem = sem
        self.has_slot = self.has_lock = False
        self.handed_off = False

    async def acquire(self) -> None:
        # The key lock first: many calls queued on one dead BMC must not each hold a tenant slot.
        await self.entry.lock.acquire()
        self.has_lock = True
        await self.sem.acquire()
        self.has_slot = True

    def hand_off(self, cfuture: concurrent.futures.Future[object]) -> None:
        self.handed_off = True
        loop = asyncio.get_running_loop()
        cfuture.add_done_callback(lambda _f: loop.call_soon_threadsafe(self._finish))

    def release(self) -> None:
        if not self.handed_off:
            self._finish()

    def _finish(self) -> None:
        r = self.runner
        if self.has_slot:
            self.sem.release()
        if self.has_lock:
            self.entry.lock.release()
        self.entry.users -= 1
        if self.entry.users == 0 and r._keys.get(self.key) is self.entry:
            del r._keys[self.key]  # forget idle keys so thousands of hosts do not accumulate locks
        left = r._tenant_users.get(self.tenant, 1) - 1
        if left <= 0:
            r._tenant_users.pop(self.tenant, None)
            if r._tenants.get(self.tenant) is self.sem:
                del r._tenants[self.tenant]
        else:
            r._tenant_users[self.tenant] = left
