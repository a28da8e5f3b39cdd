"""Kernel modules for the ramdisk: their dependencies and a load order (pure).

Debian's kernel package ships no modules.dep (depmod runs at install time), so dependencies come from
each module's own `.modinfo` section (`depends=`). The ramdisk has no udev and no modprobe database: its
/init loads exactly the list computed here with insmod, dependencies first (virtio_ring before virtio
before virtio_pci, as the facts file warns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


def modinfo(ko: bytes, field: str) -> str | None:
    """A `.modinfo` field of a module file (uncompressed .ko): the strings are NUL-separated key=value."""
    key = b"\0" + field.encode() + b"="
    at = ko.find(key)
    if at < 0:
        return None
    start = at + len(key)
    return ko[start : ko.index(b"\0", start)].decode()


def canonical(name: str) -> str:
    """Module names treat '-' and '_' alike (dmi-sysfs.ko is module dmi_sysfs)."""
    return name.replace("-", "_")


def load_order(wanted: Iterable[str], depends: Callable[[str], list[str]]) -> list[str]:
    """Every module `wanted` needs, each after its dependencies, each once; `wanted` order otherwise kept.

    `depends(name)` returns a module's direct dependencies. A dependency cycle raises ValueError.
    """
    order: list[str] = []
    done: set[str] = set()
    active: list[str] = []

    def visit(name: str) -> None:
        name = canonical(name)
        if name in done:
            return
        if name in active:
            raise ValueError(f"module dependency cycle: {' -> '.join([*active, name])}")
        active.append(name)
        for dep in depends(name):
            if dep:
                visit(dep)
        active.pop()
        done.add(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order
