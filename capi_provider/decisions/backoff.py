"""Retry pacing, in one place: every retry in the controller (BMC polling after errors, a failed provisioning
step, a quarantined host's cleaning) waits `backoff_delay` — exponential, capped, jittered, so a rack of
failing hosts neither hammers its BMCs nor retries in lockstep."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


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
