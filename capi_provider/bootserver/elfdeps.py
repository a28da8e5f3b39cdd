"""What a dynamically linked ELF binary needs (DT_NEEDED), read without binutils.

The ramdisk build copies a few util-linux tools (sfdisk, wipefs, blkid) and their shared libraries out of
Debian packages; this tells it which libraries. ELF64 little-endian only (the ramdisk is amd64).
"""

from __future__ import annotations

import struct

_DT_NEEDED = 1
_DT_STRTAB = 5
_SHT_DYNAMIC = 6


def needed(elf: bytes) -> list[str]:
    """Shared library names (sonames) the binary lists as DT_NEEDED, in order; [] for static binaries."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", elf, 0x28)[0]
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    out: list[str] = []
    for sh in sections:
        if sh[1] != _SHT_DYNAMIC:
            continue
        strtab = sections[sh[6]]  # sh_link of .dynamic is its string table
        str_off = strtab[4]
        offset, size = sh[4], sh[5]
        for i in range(0, size, 16):
            tag, val = struct.unpack_from("<qQ", elf, offset + i)
            if tag == 0:
                break
            if tag == _DT_NEEDED:
                end = elf.index(b"\0", str_off + val)
                out.append(elf[str_off + val : end].decode())
    return out
