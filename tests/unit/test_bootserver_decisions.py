"""Pure decisions of the boot server: root device hints, checksums, tokens, report parsing, iPXE scripts,
and the build helpers (cpio, ELF dependencies, module order)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import subprocess

import pytest

from capi_provider.bootserver import cpio, elfdeps, inventory, ipxe, kmods, tokens
from capi_provider.bootserver.checksum import Checksum, parse_checksum
from capi_provider.bootserver.hints import GIB, RootDeviceError, choose_root_device
from capi_provider.bootserver.model import Disk, RootDeviceHints, Seed

pytestmark = pytest.mark.imaging

SSD = Disk("sda", 480 * GIB, False, serial="S1", wwn="0x5000c500aa", model="Samsung PM893", vendor="ATA",
           by_path="pci-0000:00:1f.2-ata-1")  # fmt: skip
HDD = Disk("sdb", 4000 * GIB, True, serial="H1", wwn="0x5000c500bb", model="ST4000NM", vendor="SEAGATE",
           by_path="pci-0000:00:1f.2-ata-2")  # fmt: skip
SMALL_SSD = Disk(
    "sdc", 240 * GIB, False, serial="S2", model="Samsung PM893", by_path="pci-0000:00:1f.2-ata-3"
)
USB = Disk(
    "sdd", 16 * GIB, False, removable=True, serial="U1", by_path="pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0"
)


# -- root device hints -------------------------------------------------------------------------------


def test_hints_pick_the_disk_with_that_serial_wherever_the_kernel_listed_it() -> None:
    assert choose_root_device(RootDeviceHints(serial_number="H1"), [SSD, HDD]) is HDD
    assert choose_root_device(RootDeviceHints(serial_number="H1"), [HDD, SSD]) is HDD


@pytest.mark.parametrize(
    ("hints", "expected"),
    [
        (RootDeviceHints(wwn="0X5000C500BB"), HDD),
        (RootDeviceHints(wwn="5000c500aa"), SSD),
        (RootDeviceHints(model="pm893", min_size_gigabytes=400), SSD),
        (RootDeviceHints(vendor="seagate"), HDD),
        (RootDeviceHints(rotational=True), HDD),
        (RootDeviceHints(by_path="/dev/disk/by-path/pci-0000:00:1f.2-ata-2"), HDD),
        (RootDeviceHints(by_path="pci-0000:00:1f.2-ata-1"), SSD),
    ],
)
def test_each_hint_kind_selects(hints: RootDeviceHints, expected: Disk) -> None:
    assert choose_root_device(hints, [SSD, HDD, SMALL_SSD]) is expected


def test_all_hints_must_match() -> None:
    with pytest.raises(RootDeviceError) as err:
        choose_root_device(RootDeviceHints(serial_number="S1", rotational=True), [SSD, HDD])
    assert err.value.reason == "NoDiskMatchesHints"
    # The message names every disk and the hints it fails, so an operator can fix the hints.
    assert "pci-0000:00:1f.2-ata-1" in err.value.message and "rotational" in err.value.message
    assert "serialNumber" in err.value.message


def test_several_matches_take_the_smallest_then_the_lowest_by_path() -> None:
    assert choose_root_device(RootDeviceHints(rotational=False), [SSD, SMALL_SSD, HDD]) is SMALL_SSD
    twin = Disk("sde", SMALL_SSD.size_bytes, False, serial="S3", by_path="pci-0000:00:1f.2-ata-0")
    assert choose_root_device(RootDeviceHints(rotational=False), [SMALL_SSD, twin]) is twin


def test_removable_disks_are_never_the_root_device() -> None:
    with pytest.raises(RootDeviceError):
        choose_root_device(RootDeviceHints(serial_number="U1"), [SSD, USB])
    assert choose_root_device(None, [SSD, USB]) is SSD


def test_no_hints_needs_exactly_one_disk() -> None:
    assert choose_root_device(RootDeviceHints(), [SSD]) is SSD
    with pytest.raises(RootDeviceError) as err:
        choose_root_device(RootDeviceHints(), [SSD, HDD])
    assert err.value.reason == "RootDeviceAmbiguous"
    with pytest.raises(RootDeviceError) as err:
        choose_root_device(RootDeviceHints(serial_number="S1"), [])
    assert err.value.reason == "NoDiskMatchesHints"


def test_there_is_no_kernel_name_hint() -> None:
    assert "name" not in RootDeviceHints.__dataclass_fields__
    assert "device_name" not in RootDeviceHints.__dataclass_fields__


# -- checksums ---------------------------------------------------------------------------------------


def test_checksum_forms() -> None:
    h256, h512 = hashlib.sha256(b"x").hexdigest(), hashlib.sha512(b"x").hexdigest()
    assert parse_checksum(f"sha256:{h256}") == Checksum("sha256", h256)
    assert parse_checksum(f"SHA512:{h512.upper()}") == Checksum("sha512", h512)
    assert parse_checksum(h512).algorithm == "sha512"  # bare: by length
    assert parse_checksum(h256, "sha256").matches(h256.upper())
    assert not parse_checksum(h256).matches(hashlib.sha256(b"y").hexdigest())


@pytest.mark.parametrize(
    "value",
    [
        "md5:" + hashlib.md5(b"x").hexdigest(),
        "sha1:" + hashlib.sha1(b"x").hexdigest(),
        hashlib.md5(b"x").hexdigest(),
        "sha256:abc",
        "sha256:" + "g" * 64,
        "crc32:1234",
    ],
)
def test_weak_or_malformed_checksums_are_refused(value: str) -> None:
    with pytest.raises(ValueError):
        parse_checksum(value)


def test_algorithm_given_twice_must_agree() -> None:
    with pytest.raises(ValueError):
        parse_checksum("sha256:" + hashlib.sha256(b"x").hexdigest(), "sha512")


# -- tokens ------------------------------------------------------------------------------------------


def test_token_verdicts() -> None:
    grant = tokens.Grant("aa:bb:cc:dd:ee:ff", "boot", expires_at=100.0)
    assert tokens.check(grant, 99.0) is tokens.Verdict.OK
    assert tokens.check(grant, 100.0) is tokens.Verdict.EXPIRED
    assert tokens.check(None, 1.0) is tokens.Verdict.UNKNOWN
    assert tokens.check(grant, 1.0, presented=False) is tokens.Verdict.MISSING
    grant.revoked = True
    assert tokens.check(grant, 1.0) is tokens.Verdict.REVOKED
    once = tokens.Grant("aa:bb:cc:dd:ee:ff", "boot", expires_at=100.0, one_time=True)
    assert tokens.check(once, 1.0) is tokens.Verdict.OK
    once.used = True
    assert tokens.check(once, 1.0) is tokens.Verdict.USED


def test_secrets_are_unguessable_and_stored_as_digests() -> None:
    a, b = tokens.new_secret(), tokens.new_secret()
    assert a != b and len(a) >= 40
    assert tokens.digest(a) != a and tokens.digest(a) == tokens.digest(a)


def test_bearer_header() -> None:
    assert tokens.bearer("Bearer abc") == "abc"
    assert tokens.bearer("bearer  abc ") == "abc"
    assert tokens.bearer("Basic abc") is None
    assert tokens.bearer("Bearer ") is None
    assert tokens.bearer(None) is None


# -- reports -----------------------------------------------------------------------------------------


def test_inventory_report_parses_into_hardware() -> None:
    body = b"""cpu.arch=x86_64
cpu.count=2
cpu.model=Some "quoted" = CPU
memory.total_kib=210740
memory.physical_mib=256
disk.1.name=sdb
disk.1.size_bytes=536870912
disk.1.rotational=0
disk.1.serial=LABOS0000
disk.1.wwn=0x5000c5000000b002
disk.1.by_path=pci-0000:00:04.0-scsi-0:0:1:0
disk.0.name=sda
disk.0.size_bytes=100663296
disk.0.rotational=1
disk.0.removable=0
nic.0.name=eth0
nic.0.mac=52:54:00:CA:00:00
nic.0.speed_mbps=-1
nic.0.link=1
garbage line without equals
BAD KEY=x
"""
    hw = inventory.hardware(inventory.parse_report(body))
    assert (hw.arch, hw.cpu_count, hw.cpu_model, hw.memory_mib) == ("x86_64", 2, 'Some "quoted" = CPU', 256)
    assert [d.name for d in hw.disks] == ["sda", "sdb"]  # by index, not by order of lines
    assert hw.disks[0].rotational and not hw.disks[1].rotational
    assert hw.disks[1].serial == "LABOS0000" and hw.disks[1].by_path.endswith("scsi-0:0:1:0")
    assert hw.nics[0].mac == "52:54:00:ca:00:00" and hw.nics[0].speed_mbps is None and hw.nics[0].link


def test_memory_falls_back_to_memtotal_without_smbios() -> None:
    hw = inventory.hardware(inventory.parse_report(b"memory.total_kib=2000000\n"))
    assert hw.memory_mib == 1954


def test_oversized_reports_are_refused() -> None:
    with pytest.raises(ValueError):
        inventory.parse_report(b"x=" + b"y" * inventory.MAX_REPORT_BYTES)


def test_seed_never_shows_its_contents() -> None:
    seed = Seed({"meta-data": b"instance-id: secret-ish\n", "user-data": b"token: abcdef\n"})
    assert "abcdef" not in repr(seed) and "secret-ish" not in repr(seed)
    assert list(seed) == ["meta-data", "user-data"]
    with pytest.raises(ValueError):
        Seed({"user-data": b"x"})
    with pytest.raises(ValueError):
        Seed({"meta-data": b"x", "../etc/passwd": b"x"})


# -- iPXE --------------------------------------------------------------------------------------------


def test_macs_normalize_and_junk_is_refused() -> None:
    assert ipxe.normalize_mac("52-54-00-CA-00-01") == "52:54:00:ca:00:01"
    for bad in ("52:54:00:ca:00", "52:54:00:ca:00:01/../x", "zz:54:00:ca:00:01", ""):
        with pytest.raises(ValueError):
            ipxe.normalize_mac(bad)


def test_host_script_boots_the_ramdisk_with_the_token_fragment() -> None:
    s = ipxe.host_script("http://10.0.2.100", "52:54:00:ca:00:01", "/v1/boot/NONCE/token.cpio", "quiet")
    assert s.startswith("#!ipxe\n") and s.rstrip().endswith("boot")
    assert "kernel http://10.0.2.100/ramdisk/vmlinuz" in s
    assert "initrd --name token.cpio http://10.0.2.100/v1/boot/NONCE/token.cpio" in s
    assert "capbm.mac=52:54:00:ca:00:01" in s and "capbm.url=http://10.0.2.100" in s
    assert "exit" in ipxe.exit_script("52:54:00:ca:00:01")
    assert "${netX/mac:hexhyp}" in ipxe.chain_script("http://b")


# -- build helpers -----------------------------------------------------------------------------------


def test_cpio_archive_is_what_the_cpio_tool_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tool = ["busybox", "cpio"] if shutil.which("cpio") is None else ["cpio"]
    data = cpio.archive(
        cpio.with_parents(
            [
                cpio.Entry("etc/capbm/token", b"t0ken\n", 0o600),
                cpio.Entry("bin/busybox", b"\x7fELF...", 0o755),
                cpio.Entry("bin/sh", kind="symlink", target="busybox"),
            ]
        )
    )
    assert len(data) % 4 == 0
    subprocess.run([*tool, "-i", "-d"], input=data, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "etc/capbm/token").read_bytes() == b"t0ken\n"
    assert (tmp_path / "etc/capbm/token").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "bin/sh").is_symlink() and (tmp_path / "bin/sh").readlink().name == "busybox"
    assert cpio.archive([cpio.Entry("a", b"1")]) == cpio.archive([cpio.Entry("a", b"1")])  # reproducible
    assert gzip.decompress(gzip.compress(data, mtime=0)) == data


def test_elf_needed_reads_a_real_binary() -> None:
    with open("/bin/ls", "rb") as f:
        libs = elfdeps.needed(f.read())
    assert "libc.so.6" in libs
    with pytest.raises(ValueError):
        elfdeps.needed(b"#!/bin/sh\n" + bytes(64))


def test_elf_needed_of_a_static_layout_is_empty() -> None:
    # A minimal ELF64 header with no section headers: nothing is needed.
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<QHHHHHH", header, 0x28, 0, 0, 0, 0, 64, 0, 0)
    assert elfdeps.needed(bytes(header)) == []


def test_module_load_order_puts_dependencies_first() -> None:
    deps = {
        "virtio_pci": ["virtio_ring", "virtio_pci_modern_dev", "virtio"],
        "virtio": ["virtio_ring"],
        "virtio_net": ["virtio_ring", "virtio", "net_failover"],
        "net_failover": ["failover"],
    }
    order = kmods.load_order(["virtio_pci", "virtio_net"], lambda m: deps.get(m, []))
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_pci")
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    assert len(order) == len(set(order))
    with pytest.raises(ValueError, match="cycle"):
        kmods.load_order(["a"], lambda m: {"a": ["b"], "b": ["a"]}[m])


def test_modinfo_reads_depends() -> None:
    ko = b"\x00junk\x00license=GPL\x00depends=virtio_ring,virtio\x00vermagic=6.1\x00"
    assert kmods.modinfo(ko, "depends") == "virtio_ring,virtio"
    assert kmods.modinfo(ko, "alias") is None
    assert kmods.canonical("dmi-sysfs") == "dmi_sysfs"


# -- proxy-DHCP --------------------------------------------------------------------------------------


def test_proxy_dhcp_config_leases_nothing_and_chains_pxe_roms_to_ipxe(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from capi_provider.bootserver.dhcp import ProxyDhcp, proxy_config

    conf = proxy_config(ProxyDhcp("192.168.10.7/24", tmp_path, "eth1"))
    assert "dhcp-range=192.168.10.0,proxy,255.255.255.0" in conf  # proxy: no address pool
    assert "port=0" in conf  # no DNS
    assert 'pxe-service=tag:!ipxe,x86PC,"iPXE",undionly.kpxe' in conf
    assert 'pxe-service=tag:ipxe,x86PC,"capi-provider-baremetal",boot.ipxe' in conf
    assert "interface=eth1" in conf and f"tftp-root={tmp_path}" in conf
    for bad in (
        ProxyDhcp("fd00::/64", tmp_path),
        ProxyDhcp("192.168.10.0/24", tmp_path, "eth1\nport=53"),
        ProxyDhcp("192.168.10.0/24", tmp_path.relative_to(tmp_path.anchor)),
        ProxyDhcp("not-a-subnet", tmp_path),
    ):
        with pytest.raises(ValueError):
            proxy_config(bad)
