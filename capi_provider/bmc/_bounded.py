"""Run one blocking BMC operation with a hard deadline.

pyghmi has its own retry timers, but nothing in its API bounds a whole call: a login blocks in a loop that
only ends when its shared I/O thread wakes it, the Redfish client's sockets default to 60 s, and a
protocol error inside pyghmi's shared packet processing can surface in whichever thread pumps the loop.
We cannot kill a thread, so each operation runs in its own daemon thread and the caller stops waiting at
the deadline.

An abandoned thread may still be talking to its BMC. Drivers are cheap and the controller opens one per
operation, so the bookkeeping is per BMC, not per driver: a new operation on a BMC first waits (within its
own timeout) for an abandoned one to end, and gives up with BMCTimeout if it does not. Two operations never
talk to one BMC at once, and a dead BMC costs at most one stuck thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from capi_provider.bmc.base import BmcError, BmcErrorReason

T = TypeVar("T")

_abandoned: dict[str, threading.Thread] = {}  # BMC -> a thread we stopped waiting for
_abandoned_lock = threading.Lock()


class _Outcome(Generic[T]):
    __slots__ = ("error", "value")

    def __init__(self) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None


class BoundedCaller:
    """Bounds the operations on one BMC; `bmc` names it in errors and keys the abandoned-thread registry."""

    def __init__(self, bmc: str) -> None:
        self._bmc = bmc
        self._lock = threading.Lock()  # one operation at a time through this caller

    @property
    def busy(self) -> bool:
        """True while an abandoned operation on this BMC is still running."""
        with _abandoned_lock:
            thread = _abandoned.get(self._bmc)
        return thread is not None and thread.is_alive()

    def run(self, op: str, fn: Callable[[], T], timeout: float) -> T:
        deadline = time.monotonic() + timeout
        with self._lock:
            self._wait_for_abandoned(op, deadline)
            outcome: _Outcome[T] = _Outcome()

            def target() -> None:
                try:
                    outcome.value = fn()
                except BaseException as exc:  # handed to the caller below, never lost in the thread
                    outcome.error = exc

            thread = threading.Thread(target=target, name=f"bmc-op {self._bmc}", daemon=True)
            thread.start()
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                with _abandoned_lock:
                    _abandoned[self._bmc] = thread
                raise BmcError(
                    f"{op} on {self._bmc} did not finish within {timeout:g}s", reason=BmcErrorReason.TIMEOUT
                )
        if outcome.error is not None:
            raise outcome.error
        return outcome.value  # type: ignore[return-value]

    def _wait_for_abandoned(self, op: str, deadline: float) -> None:
        with _abandoned_lock:
            thread = _abandoned.get(self._bmc)
        if thread is None:
            return
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            raise BmcError(
                f"{op} on {self._bmc}: an earlier operation is still waiting for the BMC",
                reason=BmcErrorReason.TIMEOUT,
            )
        with _abandoned_lock:
            if _abandoned.get(self._bmc) is thread:
                del _abandoned[self._bmc]
