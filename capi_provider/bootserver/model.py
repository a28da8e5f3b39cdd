"""The boot server's vocabulary: hardware as the agent reports it, jobs, and the events controllers await.

All frozen dataclasses: what the controller's image-provisioning backend receives and maps onto the API
(`status.hardware`, steps, conditions). Event `reason`s are condition reasons.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from capi_provider.bootserver.checksum import Checksum


@dataclass(frozen=True)
class Disk:
    name: str  # the kernel name during that boot only: informative, never used to choose a disk
    size_bytes: int
    rotational: bool
    removable: bool = False
    model: str = ""
    vendor: str = ""
    serial: str = ""
    wwn: str = ""  # "0x..." (NAA) as udev writes it, or ""
    wwid: str = ""  # the kernel's full identifier (naa./t10./eui.)
    by_path: str = ""  # udev's /dev/disk/by-path name, e.g. pci-0000:00:04.0-scsi-0:0:1:0


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    speed_mbps: int | None  # None: unknown (no link, or the driver does not say)
    link: bool
    driver: str = ""
    pci: str = ""


@dataclass(frozen=True)
class Hardware:
    arch: str
    cpu_count: int
    cpu_model: str
    memory_mib: int  # physical (SMBIOS memory devices); MemTotal rounded up when the firmware has none
    memory_total_kib: int  # what the kernel can use
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    system_vendor: str = ""
    system_product: str = ""
    system_serial: str = ""
    system_uuid: str = ""


@dataclass(frozen=True)
class RootDeviceHints:
    """Which disk gets the image (Metal3's rootDeviceHints, plus byPath). Every hint given must match.

    No kernel-name hint exists on purpose: `sda` is not stable across boots.
    """

    serial_number: str | None = None
    wwn: str | None = None
    model: str | None = None  # substring, case-insensitive
    vendor: str | None = None  # substring, case-insensitive
    min_size_gigabytes: int | None = None  # GiB
    rotational: bool | None = None
    by_path: str | None = None  # with or without /dev/disk/by-path/

    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__dataclass_fields__)


@dataclass(frozen=True)
class ImageSpec:
    url: str
    checksum: Checksum
    format: Literal["raw"] = "raw"


class Seed(Mapping[str, bytes]):
    """NoCloud seed files by name (meta-data, user-data, network-config, vendor-data). Never printed."""

    NAMES = ("meta-data", "user-data", "network-config", "vendor-data")

    def __init__(self, files: Mapping[str, bytes]) -> None:
        unknown = set(files) - set(self.NAMES)
        if unknown:
            raise ValueError(f"unknown NoCloud seed file(s): {', '.join(sorted(unknown))}")
        if "meta-data" not in files:
            raise ValueError("a NoCloud seed needs meta-data")
        self._files = {k: bytes(v) for k, v in files.items()}

    def __getitem__(self, key: str) -> bytes:
        return self._files[key]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(n for n in self.NAMES if n in self._files)

    def __len__(self) -> int:
        return len(self._files)

    def __repr__(self) -> str:
        return f"Seed(<{', '.join(self)}: redacted>)"


@dataclass(frozen=True)
class Inspect:
    """Report the hardware (inventory) again, timed."""


@dataclass(frozen=True)
class Provision:
    image: ImageSpec
    hints: RootDeviceHints
    seed: Seed = field(repr=False)


@dataclass(frozen=True)
class Clean:
    mode: Literal["metadata", "full"]

    def __post_init__(self) -> None:
        if self.mode not in ("metadata", "full"):
            raise ValueError(f"cleaning mode must be metadata or full, not {self.mode!r}")


Job = Inspect | Provision | Clean


# -- events -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    mac: str
    boot_id: str
    job_id: str  # "" for events of the boot itself
    at: float  # time.monotonic() on the boot server


@dataclass(frozen=True)
class ScriptFetched(Event):
    """The machine's firmware fetched its per-host iPXE script (network boot is under way)."""


@dataclass(frozen=True)
class AgentUp(Event):
    """The ramdisk's agent called in with this boot's token, with its inventory."""

    kernel: str
    hardware: Hardware


@dataclass(frozen=True)
class StepReport(Event):
    step: str  # inspect | write | verify | configdrive | clean
    state: str  # started | done
    detail: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Inspected(Event):
    hardware: Hardware
    seconds: float


@dataclass(frozen=True)
class Provisioned(Event):
    """The image is on the disk, read back and verified, and the cidata config drive holds the seed. The
    agent asks for a reboot from disk (`next`): the controller sets the boot device and cycles power."""

    disk: Disk
    bytes: int
    write_seconds: float
    verify_seconds: float
    configdrive_seconds: float
    configdrive_partition: str
    next: str = "reboot"


@dataclass(frozen=True)
class Cleaned(Event):
    mode: str
    disks: tuple[tuple[str, str], ...]  # (by_path, serial) of every disk cleaned
    seconds: float
    next: str = "poweroff"


@dataclass(frozen=True)
class Failed(Event):
    step: str
    reason: str  # a condition reason: ImageChecksumMismatch, NoDiskMatchesHints, ...
    message: str
