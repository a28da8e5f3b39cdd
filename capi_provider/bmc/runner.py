"""Async facade over the blocking BMC drivers, for the kopf controller (which must never block its loop).

`BmcRunner.call(key, fn, timeout=...)` runs `fn` on a thread of the runner's own pool and awaits it:

* Own pool, large and lazily grown (ThreadPoolExecutor only starts a thread when none is idle): kopf's
  default executor stays free for kopf, and a handful of dead BMCs holding threads cannot starve the others.
* One operation at a time per key (use the BMC address): an `asyncio.Lock` per key. Many BMCs misbehave
  when two sessions talk to them at once, and pyghmi shares one session per BMC and credentials.
* Timeout: the caller gets `BmcError(reason=BMCTimeout)` when `timeout` passes, counting the wait for the
  key's lock too. A thread cannot be killed, so the key's lock is *not* released at the timeout: it is
  released by the worker thread's completion. The next call for that BMC therefore waits (within its own
  timeout) until the stuck operation has really finished, and never talks to the BMC concurrently with it.
  The drivers bound their own calls, so a stuck thread ends within the driver's timeout.

`Backoff` computes retry delays (exponential, capped, jittered) for BMC errors; it is pure and holds no timer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from capi_provider.bmc.base import BmcError, BmcErrorReason

LOG = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_WORKERS = 256


class _KeyLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # callers holding or waiting for the lock, plus a running orphaned thread


class BmcRunner:
    """Runs blocking BMC calls off the event loop, bounded and serialized per key. One event loop only."""

    def __init__(self, max_workers: int = DEFAULT_MAX_WORKERS) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="bmc"
        )
        self._keys: dict[str, _KeyLock] = {}

    async def call(self, key: str, fn: Callable[[], T], *, timeout: float) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        entry = self._keys.get(key)
        if entry is None:
            entry = self._keys[key] = _KeyLock()
        entry.users += 1
        handed_off = False  # True once a still-running thread owns the lock's release
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    await entry.lock.acquire()
            except TimeoutError:
                raise BmcError(
                    f"{key}: an earlier operation on this BMC is still running after {timeout:g}s",
                    reason=BmcErrorReason.TIMEOUT,
                ) from None
            try:
                future = loop.run_in_executor(self._executor, fn)
            except BaseException:  # e.g. the runner was shut down
                entry.lock.release()
                raise
            try:
                async with asyncio.timeout_at(deadline):
                    return await asyncio.shield(future)
            except TimeoutError:
                if future.done():  # finished in the same tick the timer fired: honour the result
                    return future.result()
                raise BmcError(
                    f"{key}: operation did not finish within {timeout:g}s", reason=BmcErrorReason.TIMEOUT
                ) from None
            finally:
                if future.done():
                    entry.lock.release()
                else:
                    # Timed out or cancelled while the thread still talks to the BMC: keep the key locked
                    # until it is done, so nothing else talks to that BMC meanwhile.
                    handed_off = True
                    future.add_done_callback(lambda _f: self._release_orphan(key, entry))
        finally:
            if not handed_off:
                self._leave(key, entry)

    def _release_orphan(self, key: str, entry: _KeyLock) -> None:
        entry.lock.release()
        self._leave(key, entry)

    def _leave(self, key: str, entry: _KeyLock) -> None:
        entry.users -= 1
        if entry.users == 0 and self._keys.get(key) is entry:
            del self._keys[key]  # forget idle keys so thousands of hosts do not accumulate locks

    def busy_keys(self) -> set[str]:
        """Keys with an operation running or queued (for metrics and tests)."""
        return set(self._keys)

    def shutdown(self, *, wait: bool = False) -> None:
        """Stop accepting work; with wait=True, also wait for running threads to return."""
        self._executor.shutdown(wait=wait, cancel_futures=True)


def backoff_delay(
    failures: int, *, base: float, cap: float, factor: float, jitter: float, rng: random.Random
) -> float:
    """Delay before the next attempt after `failures` consecutive failures (0 failures: no delay).

    Exponential growth capped at `cap`, then reduced by a random fraction of up to `jitter` ("equal jitter"
    when jitter=0.5): retries against one BMC keep a floor of (1 - jitter) x the nominal delay, and many hosts
    failing together (a rack switch reboot) spread out instead of retrying in lockstep.
    """
    if failures <= 0:
        return 0.0
    exponent = failures - 1
    if factor > 1 and exponent >= math.log(cap / base, factor):
        nominal = cap  # also keeps factor ** exponent from overflowing after thousands of failures
    else:
        nominal = min(cap, base * factor**exponent)
    return nominal * (1.0 - jitter * rng.random())


@dataclass
class Backoff:
    """Retry pacing for one BMC: `failure()` returns the next delay, `success()` resets."""

    base: float = 2.0
    cap: float = 300.0
    factor: float = 2.0
    jitter: float = 0.5
    rng: random.Random = field(default_factory=random.Random, repr=False)
    failures: int = 0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.factor < 1 or not 0 <= self.jitter <= 1:
            raise ValueError("need 0 < base <= cap, factor >= 1 and 0 <= jitter <= 1")

    def failure(self) -> float:
        self.failures += 1
        return backoff_delay(
            self.failures, base=self.base, cap=self.cap, factor=self.factor, jitter=self.jitter, rng=self.rng
        )

    def success(self) -> None:
        self.failures = 0
