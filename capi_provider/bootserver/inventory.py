"""The agent's reports (key=value lines, one per field) parsed into typed values (pure).

The agent is busybox shell: it writes `key=value` lines rather than JSON so no value (a disk model with a
quote in it) can break the format. Unknown keys are ignored; the last occurrence of a key wins.
"""

from __future__ import annotations

import math
import re

from capi_provider.bootserver.model import Disk, Hardware, Nic

MAX_REPORT_BYTES = 256 * 1024


def parse_report(body: bytes) -> dict[str, str]:
    if len(body) > MAX_REPORT_BYTES:
        raise ValueError("report too large")
    out: dict[str, str] = {}
    for line in body.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[a-z0-9_.]+", key):
            out[key] = value.strip()
    return out


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def _float(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def _indexed(report: dict[str, str], prefix: str) -> list[dict[str, str]]:
    items: dict[int, dict[str, str]] = {}
    for key, value in report.items():
        m = re.fullmatch(rf"{prefix}\.(\d+)\.([a-z_]+)", key)
        if m:
            items.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return [items[i] for i in sorted(items)]


def hardware(report: dict[str, str]) -> Hardware:
    disks = tuple(
        Disk(
            name=d.get("name", ""),
            size_bytes=_int(d.get("size_bytes")),
            rotational=d.get("rotational") == "1",
            removable=d.get("removable") == "1",
            model=d.get("model", ""),
            vendor=d.get("vendor", ""),
            serial=d.get("serial", ""),
            wwn=d.get("wwn", ""),
            wwid=d.get("wwid", ""),
            by_path=d.get("by_path", ""),
        )
        for d in _indexed(report, "disk")
    )
    nics = tuple(
        Nic(
            name=n.get("name", ""),
            mac=n.get("mac", "").lower(),
            speed_mbps=_int(n.get("speed_mbps"), -1) if _int(n.get("speed_mbps"), -1) > 0 else None,
            link=n.get("link") == "1",
            driver=n.get("driver", ""),
            pci=n.get("pci", ""),
        )
        for n in _indexed(report, "nic")
    )
    total_kib = _int(report.get("memory.total_kib"))
    physical = _int(report.get("memory.physical_mib"))
    return Hardware(
        arch=report.get("cpu.arch", ""),
        cpu_count=_int(report.get("cpu.count")),
        cpu_model=report.get("cpu.model", ""),
        memory_mib=physical or math.ceil(total_kib / 1024),
        memory_total_kib=total_kib,
        disks=disks,
        nics=nics,
        system_vendor=report.get("system.vendor", ""),
        system_product=report.get("system.product", ""),
        system_serial=report.get("system.serial", ""),
        system_uuid=report.get("system.uuid", ""),
    )


def number(report: dict[str, str], key: str) -> float:
    return _float(report.get(key))
