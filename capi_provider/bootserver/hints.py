"""Choosing the root disk from root device hints and the inspected disks (pure).

Rules, in the order an operator needs to know them:
* Removable disks (USB sticks, virtual media) are never candidates.
* Every hint given must match: serial and WWN exactly (WWN case-insensitively, with or without 0x),
  model and vendor as case-insensitive substrings, minSizeGigabytes as size >= n GiB, rotational exactly,
  byPath exactly (with or without the /dev/disk/by-path/ prefix).
* No hints: only a host with exactly one candidate disk gets a root disk; otherwise this is an error,
  never a guess. There is no kernel-name hint at all: names like sda change between boots.
* Several disks match: the smallest, then the lowest by-path (a stable order; Ironic takes whichever the
  kernel listed first).
"""

from __future__ import annotations

from collections.abc import Iterable

from capi_provider.bootserver.model import Disk, RootDeviceHints

GIB = 1 << 30
_BY_PATH_PREFIX = "/dev/disk/by-path/"


class RootDeviceError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def _norm_wwn(value: str) -> str:
    value = value.strip().lower()
    return value[2:] if value.startswith("0x") else value


def mismatches(hints: RootDeviceHints, disk: Disk) -> list[str]:
    """The hints `disk` does not satisfy (empty: it matches)."""
    out = []
    if hints.serial_number is not None and disk.serial != hints.serial_number:
        out.append("serialNumber")
    if hints.wwn is not None and (not disk.wwn or _norm_wwn(disk.wwn) != _norm_wwn(hints.wwn)):
        out.append("wwn")
    if hints.model is not None and hints.model.lower() not in disk.model.lower():
        out.append("model")
    if hints.vendor is not None and hints.vendor.lower() not in disk.vendor.lower():
        out.append("vendor")
    if hints.min_size_gigabytes is not None and disk.size_bytes < hints.min_size_gigabytes * GIB:
        out.append("minSizeGigabytes")
    if hints.rotational is not None and disk.rotational != hints.rotational:
        out.append("rotational")
    if hints.by_path is not None and disk.by_path != hints.by_path.removeprefix(_BY_PATH_PREFIX):
        out.append("byPath")
    return out


def describe(disk: Disk) -> str:
    ident = disk.by_path or "no by-path"
    serial = f"serial {disk.serial}" if disk.serial else "no serial"
    return f"{ident} ({serial}, {disk.size_bytes / GIB:.1f} GiB)"


def choose_root_device(hints: RootDeviceHints | None, disks: Iterable[Disk]) -> Disk:
    """The disk to write the image to, or RootDeviceError(NoDiskMatchesHints | RootDeviceAmbiguous)."""
    candidates = [d for d in disks if not d.removable]
    if not candidates:
        raise RootDeviceError("NoDiskMatchesHints", "the host has no fixed disk")
    if hints is None or hints.empty():
        if len(candidates) == 1:
            return candidates[0]
        raise RootDeviceError(
            "RootDeviceAmbiguous",
            f"the host has {len(candidates)} disks and no rootDeviceHints: "
            + "; ".join(describe(d) for d in candidates),
        )
    matching = [d for d in candidates if not mismatches(hints, d)]
    if not matching:
        seen = "; ".join(f"{describe(d)} fails {', '.join(mismatches(hints, d))}" for d in candidates)
        raise RootDeviceError("NoDiskMatchesHints", f"no disk matches the rootDeviceHints: {seen}")
    return min(matching, key=lambda d: (d.size_bytes, d.by_path))
