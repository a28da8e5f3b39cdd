"""An in-memory provisioner (Metal3 BMO's "fixture" provisioner plays the same part): servers as plain
records, every call logged, failures injected per operation and host. The controllers' unit tests run on it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from capi_provider.bmc.base import PowerState
from capi_provider.objkey import ObjKey
from capi_provider.provisioner.base import ProvisionerError, Seed, StepSpec, Target
from capi_provider.provisioner.sshpush import STEPS


@dataclass
class FakeServer:
    power: PowerState = PowerState.OFF
    bootable: bool = True  # False: the OS never comes up (broken disk, wrong boot device)
    seed: Seed | None = None
    joined: bool = False  # bootstrap ran (its data is on the disk)
    boots: int = 0
    wiped: int = 0
    reset: int = 0


@dataclass
class FakeProvisioner:
    steps: tuple[StepSpec, ...] = STEPS
    servers: dict[ObjKey, FakeServer] = field(default_factory=lambda: defaultdict(FakeServer))
    calls: list[tuple[str, ObjKey]] = field(default_factory=list)
    # (operation, host) -> errors to raise, one per call, before the operation succeeds again
    failures: dict[tuple[str, ObjKey], list[ProvisionerError]] = field(default_factory=dict)
    # Run before an operation (after it is logged): tests change the world mid-flight with it.
    before: Callable[[str, ObjKey], None] | None = None
    sessions: set[ObjKey] = field(default_factory=set)

    def fail(self, op: str, host: ObjKey, reason: str, times: int = 1, message: str = "injected") -> None:
        self.failures.setdefault((op, host), []).extend(
            ProvisionerError(reason, message) for _ in range(times)
        )

    def ops(self, host: ObjKey | None = None) -> list[str]:
        return [op for op, key in self.calls if host is None or key == host]

    def _enter(self, op: str, key: ObjKey) -> FakeServer:
        self.calls.append((op, key))
        if self.before is not None:
            self.before(op, key)
        pending = self.failures.get((op, key))
        if pending:
            raise pending.pop(0)
        return self.servers[key]

    async def run_step(self, step: str, target: Target, *, seed: Seed | None, warm: bool) -> str:
        server = self._enter(step, target.key)
        if step == "PowerOn":
            if server.power is PowerState.ON and warm:
                return "already running (warm pool)"
            note = "power cycled" if server.power is PowerState.ON else "powered on"
            server.power, server.boots = PowerState.ON, server.boots + 1
            return note
        if step == "WaitForSSH":
            self._os_up(server, target)
            self.sessions.add(target.key)
            return "OS up"
        if step == "DeliverSeed":
            self._os_up(server, target)
            assert seed is not None
            server.seed = dict(seed)
            return "seed written"
        if step == "Bootstrap":
            self._os_up(server, target)
            server.joined = True
            return "bootstrap data applied"
        raise ValueError(step)

    async def read_power(self, target: Target) -> PowerState:
        return self._enter("read_power", target.key).power

    async def set_power(self, target: Target, state: PowerState) -> None:
        self._enter(f"power_{state.value}", target.key).power = state

    async def wait_for_os(self, target: Target, window: float) -> None:
        self._os_up(self._enter("wait_for_os", target.key), target)

    async def clean(self, target: Target, cleaning: str) -> str:
        server = self._enter("clean", target.key)
        self._os_up(server, target)
        server.reset += 1
        server.seed, server.joined = None, False
        if cleaning == "metadata":
            server.wiped += 1
        return "reset" + (" and wiped" if cleaning == "metadata" else "")

    def end_session(self, key: ObjKey) -> None:
        self.sessions.discard(key)

    @staticmethod
    def _os_up(server: FakeServer, target: Target) -> None:
        if server.power is not PowerState.ON or not server.bootable:
            raise ProvisionerError("SSHUnreachable", f"{target.key}: OS not answering")
