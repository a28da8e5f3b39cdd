"""The seam between the controllers and the servers: what reconciling a machine or a host needs of a server.

Modelled on Metal3 BMO's `Provisioner`: one small interface, one real backend per way of provisioning (SSH
push onto an installed OS today: `sshpush.SshPushProvisioner`; network-boot imaging next), and an in-memory
fixture (`fake.FakeProvisioner`) that lets the controllers be unit-tested without BMCs, SSH or a cluster.

Every method is a coroutine that never blocks the event loop, is bounded by the settings' timeouts, and is
idempotent: re-running one after a crash is safe. Failures are `ProvisionerError`s whose `reason` is a
condition reason and whose message names what to fix and never carries a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from capi_provider.api.types import BareMetalHostSpec
from capi_provider.bmc.base import PowerState
from capi_provider.objkey import ObjKey

Seed = dict[str, bytes]  # NoCloud seed files by name: user-data, meta-data, network-config


@dataclass(frozen=True)
class Target:
    """The server to act on: its BareMetalHost's identity and spec."""

    key: ObjKey
    uid: str
    spec: BareMetalHostSpec


@dataclass(frozen=True)
class StepSpec:
    """One provisioning step as operators see it in status.steps."""

    name: str
    needs_seed: bool = False  # runs only once CAPI's bootstrap data exists (the seed is rendered for it)


class ProvisionerError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class Provisioner(Protocol):
    steps: tuple[StepSpec, ...]

    async def run_step(self, step: str, target: Target, *, seed: Seed | None, warm: bool) -> str:
        """Run one provisioning step; returns a short note for status.steps. `warm`: the host was kept
        booted and verified by a warm pool (no power cycle needed)."""
        ...

    async def read_power(self, target: Target) -> PowerState: ...

    async def set_power(self, target: Target, state: PowerState) -> None:
        """Request `state` and return once the BMC reports it."""
        ...

    async def wait_for_os(self, target: Target, window: float) -> None:
        """Until the server's OS answers (within `window` seconds) with its proven identity."""
        ...

    async def clean(self, target: Target, cleaning: str) -> str:
        """Reset the running OS (leave the cluster, remove the seed) and wipe as `cleaning` asks. Raises
        ProvisionerError(CleaningFailed) when the OS answered but the reset or wipe failed."""
        ...

    def end_session(self, key: ObjKey) -> None:
        """Forget any connection kept for the host between steps."""
        ...


class Credentials(Protocol):
    """Where a backend gets a host's secrets (BMC login, SSH key): cached, invalidated on rejection."""

    async def bmc(self, target: Target) -> tuple[str, str, str]:
        """username, password, and the Secret's resourceVersion."""
        ...

    async def ssh_key(self, target: Target) -> str: ...

    async def ca_bundle(self, target: Target) -> bytes | None:
        """The PEM CA bundle the host's Redfish certificate must chain to, if the host names one."""
        ...

    def forget(self, namespace: str, name: str) -> None: ...
