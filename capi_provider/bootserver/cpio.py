"""newc cpio archives (what the Linux kernel unpacks as an initramfs), written in memory.

Used for the deploy ramdisk, the small lab OS and the per-boot token archive the kernel appends to the
ramdisk (Linux unpacks concatenated initramfs archives in order, so a second tiny archive adds a file).
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. `path` is relative to the root ("bin/busybox"); `target` makes a symlink."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    kind: str = "file"  # file | dir | symlink
    target: str = ""


def _header(ino: int, mode: int, size: int, name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    return b"070701" + b"".join(f"{f:08X}".encode() for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def archive(entries: Iterable[Entry]) -> bytes:
    """The newc archive of `entries`, in order (parents must come before children), with its trailer.

    Owner root, mtime 0: the output depends only on the entries, so rebuilds are byte-identical.
    """
    out = bytearray()
    ino = 1
    for e in [*entries, Entry(_TRAILER)]:
        name = e.path.strip("/").encode() if e.path != _TRAILER else _TRAILER.encode()
        if e.path == _TRAILER:
            mode, data = 0, b""
        elif e.kind == "dir":
            mode, data = stat.S_IFDIR | e.mode, b""
        elif e.kind == "symlink":
            mode, data = stat.S_IFLNK | 0o777, e.target.encode()
        elif e.kind == "file":
            mode, data = stat.S_IFREG | e.mode, e.data
        else:
            raise ValueError(f"unknown cpio entry kind {e.kind!r}")
        header = _header(ino if e.path != _TRAILER else 0, mode, len(data), name)
        out += header + name + b"\0"
        out += _pad(len(header) + len(name) + 1)
        out += data + _pad(len(data))
        ino += 1
    return bytes(out)


def with_parents(entries: Iterable[Entry]) -> list[Entry]:
    """`entries` preceded by a directory entry for every parent directory they need (each once)."""
    seen: set[str] = set()
    out: list[Entry] = []
    for e in entries:
        parts = e.path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in seen:
                seen.add(d)
                out.append(Entry(d, kind="dir", mode=0o755))
        if e.kind == "dir":
            if e.path.strip("/") in seen:
                continue
            seen.add(e.path.strip("/"))
        out.append(e)
    return out
