"""The one backoff every retry in the controller uses."""

from __future__ import annotations

import random

import pytest

from capi_provider.decisions.backoff import Backoff, backoff_delay


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
