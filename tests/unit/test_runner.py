"""BlockingRunner: per-key serialization, cross-key concurrency, per-tenant fairness, timeouts, and work that
expired in the queue never running late. Ordering is proven with events, not with wall-clock waits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest

from capi_provider.bmc import BmcError, BmcErrorReason
from capi_provider.runner import BlockingRunner, RunnerTimeout


@pytest.fixture
def runner() -> Iterator[BlockingRunner]:
    r = BlockingRunner(max_workers=8, per_tenant=2)
    yield r
    r.shutdown(wait=False)


def test_calls_for_one_key_never_overlap(runner: BlockingRunner) -> None:
    active = 0
    overlaps = 0
    lock = threading.Lock()

    def op() -> None:
        nonlocal active, overlaps
        with lock:
            active += 1
            overlaps += active > 1
        threading.Event().wait(0.05)
        with lock:
            active -= 1

    async def main() -> None:
        await asyncio.gather(*(runner.call("bmc-a", op, timeout=5) for _ in range(5)))

    asyncio.run(main())
    assert overlaps == 0


def test_calls_for_different_keys_run_at_the_same_time(runner: BlockingRunner) -> None:
    # Both operations must be inside fn together to pass the barrier; serialized calls would break it.
    barrier = threading.Barrier(2, timeout=5)

    async def main() -> list[int]:
        return await asyncio.gather(
            runner.call("bmc-a", barrier.wait, timeout=5), runner.call("bmc-b", barrier.wait, timeout=5)
        )

    assert sorted(asyncio.run(main())) == [0, 1]


def test_results_and_errors_pass_through(runner: BlockingRunner) -> None:
    def fails() -> None:
        raise BmcError("refused", reason=BmcErrorReason.CREDENTIALS_REJECTED)

    async def main() -> None:
        assert await runner.call("bmc-a", lambda: 42, timeout=1) == 42
        with pytest.raises(BmcError) as caught:
            await runner.call("bmc-a", fails, timeout=1)
        assert caught.value.reason is BmcErrorReason.CREDENTIALS_REJECTED

    asyncio.run(main())
    assert runner.busy_keys() == set()


def test_timeout_fires_and_the_key_stays_locked_until_the_stuck_thread_ends(runner: BlockingRunner) -> None:
    release = threading.Event()
    events: list[str] = []

    def stuck() -> None:
        release.wait(10)
        events.append("stuck finished")

    def follow_up() -> str:
        events.append("follow-up ran")
        return "ok"

    async def main() -> None:
        with pytest.raises(RunnerTimeout, match="did not finish"):
            await runner.call("bmc-a", stuck, timeout=0.1)
        # Same BMC while the thread still runs: waits for it, and gives up at its own timeout.
        with pytest.raises(RunnerTimeout, match="waited"):
            await runner.call("bmc-a", follow_up, timeout=0.1)
        # Another BMC is not held up.
        assert await runner.call("bmc-b", lambda: "other", timeout=1) == "other"
        # A call queued behind the stuck thread runs once it ends, strictly after it.
        waiting = asyncio.ensure_future(runner.call("bmc-a", follow_up, timeout=5))
        asyncio.get_running_loop().call_soon(release.set)
        assert await waiting == "ok"

    asyncio.run(main())
    assert events == ["stuck finished", "follow-up ran"]
    assert runner.busy_keys() == set()


def test_cancelling_a_caller_keeps_the_key_locked_until_its_thread_ends(runner: BlockingRunner) -> None:
    release = threading.Event()
    started = threading.Event()
    events: list[str] = []

    def slow(tag: str) -> Callable[[], None]:
        def op() -> None:
            events.append(f"{tag} start")
            started.set()
            release.wait(10)
            events.append(f"{tag} end")

        return op

    async def main() -> None:
        first = asyncio.ensure_future(runner.call("bmc-a", slow("first"), timeout=5))
        await asyncio.to_thread(started.wait, 5)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.ensure_future(runner.call("bmc-a", slow("second"), timeout=5))
        release.set()
        await second

    asyncio.run(main())
    assert events == ["first start", "first end", "second start", "second end"]


def test_one_tenant_cannot_take_every_thread(runner: BlockingRunner) -> None:
    """Tenant A's stuck calls hold at most `per_tenant` threads; tenant B still gets one at once."""
    release = threading.Event()
    a_started = threading.Semaphore(0)

    def stuck() -> None:
        a_started.release()
        release.wait(10)

    async def main() -> str:
        a_calls = [
            asyncio.ensure_future(runner.call(f"a-bmc-{i}", stuck, timeout=10, tenant="a")) for i in range(6)
        ]
        for _ in range(2):  # exactly per_tenant of A's calls get threads
            await asyncio.to_thread(a_started.acquire, True, 5)
        result = await runner.call("b-bmc", lambda: "b served", timeout=5, tenant="b")
        extra_a_started = a_started.acquire(blocking=False)
        release.set()
        await asyncio.gather(*a_calls)
        assert not extra_a_started, "a third call of tenant A got a thread while two were stuck"
        return result

    assert asyncio.run(main()) == "b served"


def test_work_that_expires_while_queued_never_runs() -> None:
    """A BMC command whose caller has given up must not reach the BMC minutes later."""
    small = BlockingRunner(max_workers=1, per_tenant=8)
    release, started = threading.Event(), threading.Event()
    ran: list[str] = []

    def block() -> None:
        started.set()
        release.wait(10)

    async def main() -> None:
        blocker = asyncio.ensure_future(small.call("k1", block, timeout=10))
        await asyncio.to_thread(started.wait, 5)  # the only thread is taken
        with pytest.raises(RunnerTimeout):
            await small.call("k2", lambda: ran.append("late"), timeout=0.2)
        release.set()
        await blocker
        # The pool is free again: a fresh call runs (so the dropped one had its chance and was dropped).
        await small.call("k3", lambda: ran.append("fresh"), timeout=5)

    try:
        asyncio.run(main())
    finally:
        small.shutdown(wait=True)
    assert ran == ["fresh"]
