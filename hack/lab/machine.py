"""What a virtual BMC controls: the simulated machine behind it.

The virtual BMCs (IPMI and Redfish, `vbmc.py` / `redfish.py`) only talk to this interface, and the lab
host (`host.py`: boot delay, jitter, a real sshd while powered on) implements it. Keeping the seam this
small lets each side be tested without the other (`MemoryMachine` is the trivial implementation).
"""

from __future__ import annotations

import threading
from typing import Literal, Protocol

BootDevice = Literal["hd", "network", "optical", "setup", "default"]


class SimMachine(Protocol):
    """A machine as its BMC sees it. Every method is thread-safe and returns quickly (never waits for a
    boot)."""

    name: str

    def is_powered_on(self) -> bool:
        """Chassis power: True from power_on() until power_off(), whatever the OS is doing."""
        ...

    def power_on(self) -> None:
        """Apply power; the OS then boots in the background (the lab host adds its boot delay)."""
        ...

    def power_off(self) -> None:
        """Cut power at once (hard off): the OS and its sshd stop."""
        ...

    def power_cycle(self) -> None:
        """Hard off then on: a fresh boot from the current boot device."""
        ...

    def get_boot_device(self) -> BootDevice: ...

    def set_boot_device(self, device: BootDevice) -> None: ...


class MemoryMachine:
    """Power and boot device only, no OS: enough for BMC protocol tests."""

    def __init__(self, name: str, powered_on: bool = False, boot_device: BootDevice = "default") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._on = powered_on
        self._boot: BootDevice = boot_device
        self.boot_count = 0  # how many times power was applied; tests use it to see a cycle happened

    def is_powered_on(self) -> bool:
        with self._lock:
            return self._on

    def power_on(self) -> None:
        with self._lock:
            if not self._on:
                self._on = True
                self.boot_count += 1

    def power_off(self) -> None:
        with self._lock:
            self._on = False

    def power_cycle(self) -> None:
        with self._lock:
            self._on = True
            self.boot_count += 1

    def get_boot_device(self) -> BootDevice:
        with self._lock:
            return self._boot

    def set_boot_device(self, device: BootDevice) -> None:
        with self._lock:
            self._boot = device
