"""iPXE scripts the boot server hands out (pure).

`chain_script` is what a DHCP server's `filename` (or dnsmasq's proxy-DHCP) points iPXE at; it asks for the
per-host script by the MAC iPXE booted from. `host_script` boots the deploy ramdisk with the one-time URL of
this boot's token fragment; `exit_script` tells the firmware to go on to its next boot device (no boot is
armed for that MAC: an unknown or already-served machine boots its disk).
"""

from __future__ import annotations

import re

_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


def normalize_mac(mac: str) -> str:
    """aa:bb:cc:dd:ee:ff (lowercase, colons) from colon or hyphen notation; ValueError otherwise."""
    value = mac.strip().lower()
    if not _MAC.match(value):
        raise ValueError(f"not a MAC address: {mac!r}")
    return value.replace("-", ":")


def chain_script(public_url: str) -> str:
    return f"#!ipxe\nchain --autofree {public_url}/ipxe/${{netX/mac:hexhyp}}\n"


def host_script(public_url: str, mac: str, token_path: str, kernel_args: str) -> str:
    args = f"initrd=initramfs.gz initrd=token.cpio capbm.url={public_url} capbm.mac={mac} {kernel_args}"
    return (
        "#!ipxe\n"
        f"echo capi-provider-baremetal: deploy ramdisk for {mac}\n"
        f"kernel {public_url}/ramdisk/vmlinuz {args.strip()}\n"
        f"initrd --name initramfs.gz {public_url}/ramdisk/initramfs.gz\n"
        f"initrd --name token.cpio {public_url}{token_path}\n"
        "boot\n"
    )


def exit_script(mac: str) -> str:
    return (
        "#!ipxe\n"
        f"echo capi-provider-baremetal: no network boot is scheduled for {mac}; trying the next boot device\n"
        "exit 1\n"
    )
