"""Firmware-booting lab servers: QEMU virtual machines behind the lab's virtual BMCs.

`QemuMachine` is a `SimMachine` (machine.py), so the IPMI fleet (vbmc.py) and the Redfish endpoint
(redfish.py) drive it unchanged. Power and boot device map onto QEMU:

    power on     start QEMU (a powered-off machine has no QEMU process)
    hard off     QMP `quit` (SIGKILL if QEMU does not go)
    soft off     QMP `system_powerdown` (ACPI power button: the guest decides; the deploy ramdisk ignores it)
    cycle/reset  QMP `system_reset` when the boot device is the one QEMU started with; otherwise a real
                 off/on cycle (quit, start), which is what IPMI's "chassis power cycle" is
    boot device  `bootindex` on the NIC and the disks: network -> NIC first, then the boot disk; disk
                 (and default) -> the boot disk first, then the NIC. Applied at the next start or cycle.

Why bootindex rather than `-boot order=c`: SeaBIOS boots the *first* hard disk for `c`, and the lab's boot
disk is deliberately not the first (the root device is chosen by hints, not by position). A real server's
firmware has the same property: its disk boot order must put the root device first (`VmSpec.boot_disk`).

The machine is a SeaBIOS PC with a virtio NIC whose iPXE ROM (Debian ipxe-qemu) network-boots, and
virtio-scsi disks with serial numbers, WWNs, models and rotation rates (raw sparse files under the lab
dir, readable from outside with blkid/wipefs). Network: QEMU user networking with `restrict=on` (the guest
reaches nothing but what is forwarded), QEMU's own DHCP whose boot filename is the boot server's chain
script, and one forward: 10.0.2.100:80 in the guest -> the boot server on this host's loopback.
The serial console goes to `console.log` (appended across boots).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.machine import BootDevice
from lab.procs import _die_with_parent

GUEST_BOOT_SERVER = "10.0.2.100"
# QEMU gets PR_SET_PDEATHSIG so it dies with the lab; that signal fires when the *thread* that forked it
# ends, and BMC requests arrive on short-lived threads (werkzeug's Redfish server), so every QEMU is
# forked from this one long-lived thread.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="qemu-spawner"
)  # where the guest sees the boot server (a QEMU guestfwd)


@dataclass(frozen=True)
class VmDisk:
    """A virtio-scsi disk: what inspection must report back (serial, WWN, model, rotational, by-path)."""

    name: str  # file name stem under the machine's dir
    size_mib: int
    serial: str
    wwn: str  # 0x + 16 hex digits (NAA)
    model: str = "LAB DISK"  # SCSI product, at most 16 characters
    vendor: str = "CAPBM"  # SCSI vendor, at most 8 characters
    rotational: bool = False
    scsi_id: int = 0

    @property
    def by_path(self) -> str:
        """udev's by-path name: the virtio-scsi controller sits at PCI 00:04.0 (pinned below)."""
        return f"pci-0000:00:04.0-scsi-0:0:{self.scsi_id}:0"


@dataclass(frozen=True)
class VmSpec:
    name: str
    mac: str
    boot_server_port: int  # the boot server on 127.0.0.1
    disks: tuple[VmDisk, ...]
    memory_mib: int = 256
    cpus: int = 1
    cpu_model: str = "CAPBM Lab CPU"
    nic_speed_mbps: int = 25000
    accel: str = "tcg"
    boot_path: str = "/boot.ipxe"
    boot_disk: str = "os"  # the disk the firmware boots from (its disk boot order puts it first)
    extra_args: tuple[str, ...] = field(default=())


class QmpError(RuntimeError):
    pass


class QemuMachine:
    """A QEMU VM as its BMC sees it. Thread-safe; every method returns quickly (never waits for a boot)."""

    def __init__(self, spec: VmSpec, workdir: Path) -> None:
        self.spec = spec
        self.name = spec.name
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._boot: BootDevice = "default"
        self._started_with: BootDevice = "default"
        self.boot_count = 0
        self.actions: list[tuple[float, str]] = []  # (monotonic time, action): what the BMC did, in order
        for disk in spec.disks:
            path = self.disk_path(disk)
            if not path.exists():
                with path.open("wb") as f:
                    f.truncate(disk.size_mib << 20)

    # -- files -----------------------------------------------------------------------------------------

    def disk_path(self, disk: VmDisk | str) -> Path:
        name = disk if isinstance(disk, str) else disk.name
        return self.dir / f"{name}.img"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def qmp_path(self) -> Path:
        return self.dir / "qmp.sock"

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- SimMachine ------------------------------------------------------------------------------------

    def is_powered_on(self) -> bool:
        with self._lock:
            return self._proc is not None and self._proc.poll() is None

    def power_on(self) -> None:
        with self._lock:
            self._note("power on")
            if not self.is_powered_on():
                self._start()

    def power_off(self) -> None:
        with self._lock:
            self._note("power off")
            self._stop()

    def soft_power_off(self) -> None:
        with self._lock:
            self._note("power soft")
            if self.is_powered_on():
                with contextlib.suppress(QmpError, OSError):
                    self.qmp("system_powerdown")

    def power_cycle(self) -> None:
        with self._lock:
            self._note("power cycle")
            if not self.is_powered_on():
                self._start()
                return
            if self._boot == self._started_with:
                try:
                    self.qmp("system_reset")
                    self.boot_count += 1
                    with self.console_log.open("a") as c:
                        c.write(f"\n=== capbm lab: reset ({self._boot}) at {time.time():.3f} ===\n")
                    return
                except (QmpError, OSError):
                    pass
            self._stop()
            self._start()

    def get_boot_device(self) -> BootDevice:
        with self._lock:
            return self._boot

    def set_boot_device(self, device: BootDevice) -> None:
        with self._lock:
            self._note(f"bootdev {device}")
            self._boot = device

    # -- QEMU ------------------------------------------------------------------------------------------

    def argv(self) -> list[str]:
        s = self.spec
        network_first = self._boot == "network"
        net_index = 1 if network_first else 9
        disk_index = {s.boot_disk: 2 if network_first else 1}
        nc = shutil.which("busybox") or "busybox"
        netdev = (
            "user,id=n0,restrict=on,ipv6=off,net=10.0.2.0/24"
            f",bootfile=http://{GUEST_BOOT_SERVER}{s.boot_path}"
            f",guestfwd=tcp:{GUEST_BOOT_SERVER}:80-cmd:{nc} nc 127.0.0.1 {s.boot_server_port}"
        )
        argv = [
            "qemu-system-x86_64",
            "-name", s.name,
            "-machine", f"pc,accel={s.accel}",
            "-cpu", f"qemu64,model-id={s.cpu_model}",
            "-smp", str(s.cpus),
            "-m", str(s.memory_mib),
            "-nodefaults", "-no-user-config", "-display", "none", "-vga", "none",
            "-smbios", f"type=1,manufacturer=CAPBM Lab,product=Lab VM,serial={s.name}",
            "-chardev", f"file,id=ser0,path={self.console_log},append=on",
            "-serial", "chardev:ser0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=n0,mac={s.mac},addr=0x3,speed={s.nic_speed_mbps},duplex=full"
            f",bootindex={net_index}",
            "-device", "virtio-scsi-pci,id=scsi0,addr=0x4",
        ]  # fmt: skip
        for i, d in enumerate(s.disks):
            argv += [
                "-drive", f"if=none,id=d{i},file={self.disk_path(d)},format=raw,cache=writeback",
                "-device",
                f"scsi-hd,bus=scsi0.0,channel=0,scsi-id={d.scsi_id},lun=0,drive=d{i},serial={d.serial}"
                f",wwn={d.wwn},vendor={d.vendor},product={d.model}"
                f",rotation_rate={7200 if d.rotational else 1}"
                + (f",bootindex={disk_index[d.name]}" if d.name in disk_index else ""),
            ]  # fmt: skip
        return argv + list(s.extra_args)

    def _start(self) -> None:
        self._started_with = self._boot
        self.qmp_path.unlink(missing_ok=True)
        log = (self.dir / "qemu.log").open("ab")
        with self.console_log.open("a") as c:
            c.write(f"\n=== capbm lab: power on ({self._boot}) at {time.time():.3f} ===\n")
        argv = self.argv()

        def spawn() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

        try:
            self._proc = _SPAWNER.submit(spawn).result(30)
        finally:
            log.close()
        self.boot_count += 1

    def _stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._proc = None
            return
        with contextlib.suppress(QmpError, OSError):
            self.qmp("quit", timeout=3)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        self._proc = None

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _note(self, action: str) -> None:
        self.actions.append((time.monotonic(), action))

    def qmp(self, command: str, timeout: float = 5.0, **arguments: Any) -> Any:
        """One QMP command on a fresh connection (QEMU's QMP socket takes one client at a time)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                sock.connect(str(self.qmp_path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline or not self.is_powered_on():
                    raise QmpError(f"{self.name}: QMP socket not available") from None
                time.sleep(0.05)
        with sock, sock.makefile("rwb") as f:
            json.loads(f.readline())  # greeting
            for msg in ({"execute": "qmp_capabilities"}, {"execute": command, "arguments": arguments}):
                f.write(json.dumps(msg).encode() + b"\n")
                f.flush()
                while True:
                    line = f.readline()
                    if not line:
                        if command == "quit":
                            return None
                        raise QmpError(f"{self.name}: QMP connection closed during {command}")
                    reply = json.loads(line)
                    if "event" in reply:
                        continue
                    if "error" in reply:
                        raise QmpError(f"{self.name}: {command}: {reply['error'].get('desc')}")
                    break
            return reply.get("return")

    def hmp(self, command: str) -> str:
        return str(self.qmp("human-monitor-command", **{"command-line": command}) or "")


def probe_accelerator(kernel: Path, initramfs: Path, cache_dir: Path, timeout: float = 30.0) -> str:
    """Which accelerator lab machines use: "kvm" if a Linux guest boots under KVM here, else "tcg".

    Nested KVM hangs after kernel decompression on this kind of machine, so a failed probe costs its whole
    timeout. The ramdisk's init powers off at once with `capbm.probe=1`. Cached in `cache_dir` (the tool
    cache, not a lab dir: each test session would pay the timeout again) per boot of this machine;
    CAPBM_LAB_ACCEL=kvm|tcg skips the probe.
    """
    forced = os.environ.get("CAPBM_LAB_ACCEL")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    cache = cache_dir / f"accel-probe-{boot_id}"
    if cache.exists():
        return cache.read_text().strip()
    cache_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        "qemu-system-x86_64", "-machine", "pc,accel=kvm", "-m", "256", "-nodefaults", "-no-user-config",
        "-display", "none", "-serial", "stdio", "-kernel", str(kernel), "-initrd", str(initramfs),
        "-append", "console=ttyS0 quiet capbm.probe=1",
    ]  # fmt: skip
    try:
        out = subprocess.run(
            argv, capture_output=True, timeout=timeout, preexec_fn=_die_with_parent, check=False
        ).stdout.decode(errors="replace")
        result = "kvm" if "CAPBM-PROBE-OK" in out else "tcg"
    except subprocess.TimeoutExpired:
        result = "tcg"
    cache.write_text(result + "\n")
    return result
