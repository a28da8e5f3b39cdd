"""Run one blocking BMC operation with a hard deadline.

pyghmi has its own retry timers, but nothing in its API bounds a whole call: a login blocks in a loop that
only ends when its shared I/O thread wakes it, the Redfish client's sockets default to 60 s, and a
protocol error inside pyghmi's shared packet processing can surface in whichever thread pumps the loop.
We cannot kill a thread, so each operation runs in its own daemon thread and the caller stops waiting at
the deadline. A driver whose last operation is still stuck refuses new ones (fail fast) instead of piling
threads onto a dead BMC.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from capi_provider.bmc.base import BmcError, BmcErrorReason

T = TypeVar("T")


class _Outcome(Generic[T]):
    __slots__ = ("error", "value")

    def __init__(self) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None


class BoundedCaller:
    """Serializes the operations of one driver and bounds each one; `describe` names the BMC in errors."""

    def __init__(self, describe: str) -> None:
        self._describe = describe
        self._lock = threading.Lock()
        self._stuck: threading.Thread | None = None

    def run(self, op: str, fn: Callable[[], T], timeout: float) -> T:
        with self._lock:
            if self._stuck is not None and self._stuck.is_alive():
                raise BmcError(
                    f"{op} on {self._describe}: an earlier operation is still waiting for the BMC",
                    reason=BmcErrorReason.TIMEOUT,
                )
            self._stuck = None
            outcome: _Outcome[T] = _Outcome()

            def target() -> None:
                try:
                    outcome.value = fn()
                except BaseException as exc:  # handed to the caller below, never lost in the thread
                    outcome.error = exc

            thread = threading.Thread(target=target, name=f"bmc-op {self._describe}", daemon=True)
            thread.start()
            thread.join(timeout)
            if thread.is_alive():
                self._stuck = thread
                raise BmcError(
                    f"{op} on {self._describe} did not finish within {timeout:g}s",
                    reason=BmcErrorReason.TIMEOUT,
                )
        if outcome.error is not None:
            raise outcome.error
        return outcome.value  # type: ignore[return-value]

    @property
    def busy(self) -> bool:
        return self._stuck is not None and self._stuck.is_alive()
