"""Returning a server to the pool, the same way whoever does it: the machine's deletion, the host controller
finishing for a machine that is gone, or retrying a quarantined host.

Reset and wipe through the OS (booting it first if it is off: the next user must not find the last one's
data or join credentials), then power off, which must succeed. Ownership is proven again right before each
action on the server: a claim can change while we wait for a boot. A host that could not be reset and
cleaned is quarantined by the caller, never returned to the pool.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from capi_provider.bmc.base import PowerState
from capi_provider.config import Settings
from capi_provider.controller.inventory import HostRecord
from capi_provider.provisioner.base import Provisioner, ProvisionerError

Guard = Callable[[], Awaitable[HostRecord]]  # a fresh host record, or raises OwnershipLost


@dataclass(frozen=True)
class Outcome:
    notes: tuple[str, ...]
    problem: tuple[str, str] | None  # (reason, message) when the host was not reset/cleaned as asked
    generation: int  # the host's spec generation we last acted on

    @property
    def clean(self) -> bool:
        return self.problem is None


async def deprovision(
    provisioner: Provisioner, settings: Settings, host: HostRecord, cleaning: str, guard: Guard
) -> Outcome:
    """Raises ProvisionerError when the BMC fails (the host must not be released: it may still run), and
    OwnershipLost when the host stopped being ours."""
    notes: list[str] = []
    host = await guard()
    on = await provisioner.read_power(host.target) is PowerState.ON
    if not on:
        host = await guard()
        await provisioner.set_power(host.target, PowerState.ON)
        notes.append("booted to clean")
    problem: tuple[str, str] | None = None
    try:
        # A host that was on should answer at once; one we just booted gets the boot timeout.
        await provisioner.wait_for_os(
            host.target, settings.boot_timeout if not on else settings.ssh_connect_timeout
        )
        host = await guard()  # ownership again, immediately before wiping
        notes.append(await provisioner.clean(host.target, cleaning))
    except ProvisionerError as e:
        if e.reason == "HostNotOwned":
            raise
        problem = (e.reason, e.message)
        notes.append(f"not reset/cleaned: {e.reason}")
    finally:
        provisioner.end_session(host.key)
    host = await guard()
    await provisioner.set_power(host.target, PowerState.OFF)
    notes.append("powered off")
    return Outcome(tuple(notes), problem, host.generation)
