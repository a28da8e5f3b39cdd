"""The network-boot lab: the provider's boot server, QEMU machines that firmware-boot from it, and their
virtual BMCs (the lab's IPMI fleet; Redfish on request).

The boot server runs on its own asyncio loop in a background thread (as it would run on kopf's loop in the
controller); `call()` runs a coroutine there from test code. Machines reach it only through their QEMU
forward (10.0.2.100:80 -> 127.0.0.1:<port>): no other network exists for them.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from capi_provider.bootserver import BootServer, BootServerConfig
from capi_provider.bootserver.ramdisk import build as ramdisk_build
from lab.vbmc import BmcFleet, VirtualBmc
from lab.vm import GUEST_BOOT_SERVER, QemuMachine, VmDisk, VmSpec, probe_accelerator

T = TypeVar("T")


@dataclass
class NetbootMachine:
    vm: QemuMachine
    bmc: VirtualBmc
    username: str
    password: str

    @property
    def mac(self) -> str:
        return self.vm.spec.mac

    @property
    def bmc_port(self) -> int:
        return self.bmc.port


def default_disks(index: int = 0) -> tuple[VmDisk, ...]:
    """A data disk first (scsi id 0, so the kernel calls it sda) and the OS disk second: the image must go
    to the second disk because the hints say so, not because of kernel names or order."""
    data = VmDisk("data", 96, f"LABDATA{index:04d}", f"0x5000c500{index:04x}a001", "LAB HDD", rotational=True)
    os_disk = VmDisk("os", 512, f"LABOS{index:04d}", f"0x5000c500{index:04x}b002", "LAB SSD", scsi_id=1)
    return (data, os_disk)


class NetbootLab:
    def __init__(
        self, workdir: Path, *, poll_seconds: float = 10.0, server_class: type[BootServer] = BootServer
    ):
        self.workdir = workdir
        self.ramdisk = ramdisk_build.ensure()
        self.accel = probe_accelerator(
            self.ramdisk.kernel, self.ramdisk.initramfs, ramdisk_build.cache_root()
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="boot-server", daemon=True)
        self._thread.start()
        self.server = server_class(
            BootServerConfig(
                public_url=f"http://{GUEST_BOOT_SERVER}",
                kernel=self.ramdisk.kernel,
                initramfs=self.ramdisk.initramfs,
                image_dir=workdir / "images",
                poll_seconds=poll_seconds,
                kernel_args="console=ttyS0,115200 quiet",
                allow_file_urls=True,  # the lab serves its cached small OS image as a file URL
            )
        )
        self.call(self.server.start())
        self.fleet = BmcFleet()
        self.fleet.start()
        self.machines: dict[str, NetbootMachine] = {}

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def add_machine(
        self, name: str, disks: tuple[VmDisk, ...] | None = None, memory_mib: int = 256
    ) -> NetbootMachine:
        index = len(self.machines)
        mac = f"52:54:00:ca:{index >> 8:02x}:{index & 0xFF:02x}"
        spec = VmSpec(
            name=name,
            mac=mac,
            boot_server_port=self.server.port,
            disks=disks or default_disks(index),
            memory_mib=memory_mib,
            accel=self.accel,
        )
        vm = QemuMachine(spec, self.workdir / "vms" / name)
        password = secrets.token_urlsafe(12)
        bmc = self.fleet.add(vm, username="admin", password=password)
        m = NetbootMachine(vm, bmc, "admin", password)
        self.machines[name] = m
        return m

    def stop(self) -> None:
        for m in self.machines.values():
            m.vm.close()
        self.fleet.stop()
        self.call(self.server.stop(), timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
