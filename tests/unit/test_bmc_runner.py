"""BmcRunner: per-BMC serialization, cross-BMC concurrency, timeouts; Backoff arithmetic."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Iterator

import pytest

from capi_provider.bmc import BmcError, BmcErrorReason
from capi_provider.bmc.runner import Backoff, BmcRunner, backoff_delay


@pytest.fixture
def runner() -> Iterator[BmcRunner]:
    r = BmcRunner(max_workers=8)
    yield r
    r.shutdown(wait=False)


def test_calls_for_one_key_never_overlap(runner: BmcRunner) -> None:
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


def test_calls_for_different_keys_run_at_the_same_time(runner: BmcRunner) -> None:
    # Both operations must be inside fn together to pass the barrier; serialized calls would break it.
    barrier = threading.Barrier(2, timeout=5)

    async def main() -> list[int]:
        return await asyncio.gather(
            runner.call("bmc-a", barrier.wait, timeout=5), runner.call("bmc-b", barrier.wait, timeout=5)
        )

    assert sorted(asyncio.run(main())) == [0, 1]


def test_results_and_errors_pass_through(runner: BmcRunner) -> None:
    def fails() -> None:
        raise BmcError("refused", reason=BmcErrorReason.CREDENTIALS_REJECTED)

    async def main() -> None:
        assert await runner.call("bmc-a", lambda: 42, timeout=1) == 42
        with pytest.raises(BmcError) as caught:
            await runner.call("bmc-a", fails, timeout=1)
        assert caught.value.reason is BmcErrorReason.CREDENTIALS_REJECTED

    asyncio.run(main())
    assert runner.busy_keys() == set()


def test_timeout_fires_and_the_bmc_stays_locked_until_the_stuck_thread_ends(runner: BmcRunner) -> None:
    release = threading.Event()
    events: list[str] = []

    def stuck() -> None:
        release.wait(10)
        events.append("stuck finished")

    def follow_up() -> str:
        events.append("follow-up ran")
        return "ok"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(BmcError) as caught:
            await runner.call("bmc-a", stuck, timeout=0.1)
        assert caught.value.reason is BmcErrorReason.TIMEOUT
        # Same BMC while the thread still runs: waits for it, and gives up at its own timeout.
        with pytest.raises(BmcError, match="still running"):
            await runner.call("bmc-a", follow_up, timeout=0.1)
        # Another BMC is not held up.
        assert await runner.call("bmc-b", lambda: "other", timeout=1) == "other"
        # Once the stuck thread ends, the queued call runs, strictly after it.
        waiting = asyncio.ensure_future(runner.call("bmc-a", follow_up, timeout=5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        loop.call_soon(release.set)
        assert await waiting == "ok"

    asyncio.run(main())
    assert events == ["stuck finished", "follow-up ran"]
    assert runner.busy_keys() == set()


def test_cancelling_a_caller_keeps_the_bmc_locked_until_its_thread_ends(runner: BmcRunner) -> None:
    release = threading.Event()
    events: list[str] = []

    def slow(tag: str) -> Callable[[], None]:
        def op() -> None:
            events.append(f"{tag} start")
            release.wait(10)
            events.append(f"{tag} end")

        return op

    async def main() -> None:
        first = asyncio.ensure_future(runner.call("bmc-a", slow("first"), timeout=5))
        await asyncio.sleep(0.05)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        second = asyncio.ensure_future(runner.call("bmc-a", slow("second"), timeout=5))
        await asyncio.sleep(0.05)
        assert events == ["first start"]
        release.set()
        await second

    asyncio.run(main())
    assert events == ["first start", "first end", "second start", "second end"]


def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(base=1, cap=10, jitter=0)
    assert [backoff.failure() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    backoff.success()
    assert backoff.failure() == 1


def test_backoff_jitter_stays_within_its_band() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(4, base=2, cap=300, factor=2, jitter=0.5, rng=rng) for _ in range(500)]
    assert all(8.0 <= d <= 16.0 for d in delays)
    assert max(delays) - min(delays) > 4.0  # actually spread, not a constant


def test_backoff_survives_very_many_failures() -> None:
    assert backoff_delay(100_000, base=1, cap=60, factor=10, jitter=0, rng=random.Random()) == 60
    assert backoff_delay(0, base=1, cap=60, factor=2, jitter=0.5, rng=random.Random()) == 0


def test_backoff_rejects_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        Backoff(base=10, cap=1)
    with pytest.raises(ValueError):
        Backoff(jitter=1.5)
