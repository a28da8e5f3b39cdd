"""The network-boot lab end to end: a QEMU machine with empty virtual disks, powered through its virtual
BMC with the provider's IPMI driver, firmware-boots (iPXE) the real deploy ramdisk from the provider's boot
server; the agent inspects, writes and verifies an image onto the disk the root device hints choose, adds
the cidata config drive with the seed, cleans disks; the small OS boots from disk and consumes the seed.

One VM for the whole module (2 shared cores): each test asks `agent()` for a running agent and boots one
through the BMC only if none is up, so every test also runs alone. Disks are checked from outside with
util-linux (blkid, wipefs, sfdisk) on the raw image files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from lab.netboot import NetbootLab, NetbootMachine
from lab.redfish import RedfishLab
from lab.smallos.build import SmallOs
from lab.smallos.build import ensure as build_smallos
from lab.vm import VmDisk

from capi_provider.bmc.address import parse_bmc_address
from capi_provider.bmc.base import BmcCredentials, BmcDriver, BootDevice, PowerState, open_driver
from capi_provider.bootserver import (
    AgentFailed,
    AgentUp,
    BootServer,
    Clean,
    Cleaned,
    ImageSpec,
    Inspect,
    Inspected,
    Provision,
    Provisioned,
    RootDeviceHints,
    ScriptFetched,
    Seed,
    parse_checksum,
)
from capi_provider.bootserver.images import CachedImage
from tests.imaging.conftest import _WORKDIRS, record

pytestmark = pytest.mark.timeout(1800)  # per test; the waits below are bounded on their own
BOOT_TIMEOUT = 420  # power on -> agent up, under TCG on a loaded 2-core machine (measured ~30 s idle)
JOB_TIMEOUT = 600


class LabBootServer(BootServer):
    """The product server with one fault for the lab: flip a byte of the next image in transit."""

    corrupt_next_image = False

    async def image_response(self, request: web.Request, image: CachedImage) -> web.StreamResponse:
        if not self.corrupt_next_image:
            return await super().image_response(request, image)
        self.corrupt_next_image = False
        data = bytearray(image.path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        return web.Response(body=bytes(data), content_type="application/octet-stream")


@pytest.fixture(scope="module")
def nlab(request: pytest.FixtureRequest) -> Iterator[NetbootLab]:
    # Not under pytest's basetemp: on a machine shared with other pytest sessions, each new session
    # deletes all but the three newest basetemps, disks and console logs included, under a running VM.
    workdir = Path(tempfile.mkdtemp(prefix="capbm-netboot-"))
    _WORKDIRS.append(workdir)
    lab = NetbootLab(workdir, poll_seconds=10, server_class=LabBootServer)
    failed = request.session.testsfailed
    try:
        yield lab
    finally:
        lab.stop()
        if request.session.testsfailed == failed:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"network-boot lab kept for inspection: {workdir}")


@pytest.fixture(scope="module")
def vm(nlab: NetbootLab) -> NetbootMachine:
    data = VmDisk("data", 96, "LABDATA0001", "0x5000c50000a00001", "LAB HDD", rotational=True, scsi_id=0)
    os_disk = VmDisk("os", 256, "LABOS0001", "0x5000c50000b00002", "LAB SSD", rotational=False, scsi_id=1)
    return nlab.add_machine("vm-a", disks=(data, os_disk))


@pytest.fixture(scope="module")
def smallos() -> SmallOs:
    return build_smallos()


def bmc(m: NetbootMachine) -> BmcDriver:
    creds = BmcCredentials(m.username, m.password)
    return open_driver(parse_bmc_address(m.bmc.address), creds, verify_tls=False, timeout=30)


def ipmitool_power(m: NetbootMachine) -> str:
    out = subprocess.run(
        ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(m.bmc_port), "-U", m.username,
         "-P", m.password, "chassis", "power", "status"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    return "on" if "is on" in out else "off" if "is off" in out else out.strip()


def agent(nlab: NetbootLab, m: NetbootMachine) -> None:
    """An agent up on `m`: the one already running, or a fresh network boot through the BMC."""
    if nlab.server.agent_up(m.mac):
        return
    ticket = nlab.call(nlab.server.expect(m.mac, Inspect()))
    drv = bmc(m)
    drv.set_boot_device(BootDevice.PXE)
    if drv.get_power() is PowerState.ON:
        drv.power_cycle()
    else:
        drv.set_power(PowerState.ON)
    nlab.call(nlab.server.wait_for(ticket, AgentUp, BOOT_TIMEOUT))


def sha256_file(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        remaining = limit if limit is not None else 1 << 62
        while remaining > 0 and (chunk := f.read(min(1 << 20, remaining))):
            h.update(chunk)
            remaining -= len(chunk)
    return h.hexdigest()


def probe(path: Path, offset: int = 0) -> subprocess.CompletedProcess[str]:
    """util-linux blkid low-level probe of an image file at a byte offset (rc 2: nothing found)."""
    return subprocess.run(
        ["blkid", "-p", "-O", str(offset), "-o", "export", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def seed_for(iid: str) -> Seed:
    return Seed(
        {
            "meta-data": f"instance-id: {iid}\nlocal-hostname: vm-a\n".encode(),
            "user-data": f"#!/bin/sh\necho user-data ran for {iid}\n".encode(),
        }
    )


def provision_job(
    smallos: SmallOs, iid: str, *, serial: str = "LABOS0001", digest: str | None = None
) -> Provision:
    checksum = parse_checksum("sha256:" + (digest or smallos.sha256))
    return Provision(
        ImageSpec(smallos.image.as_uri(), checksum), RootDeviceHints(serial_number=serial), seed_for(iid)
    )


# -- (a) network boot through IPMI, inspection --------------------------------------------------------


def test_pxe_boot_through_ipmi_and_the_inspection_matches_the_vm(
    nlab: NetbootLab, vm: NetbootMachine
) -> None:
    drv = bmc(vm)
    drv.set_power(PowerState.OFF)
    ticket = nlab.call(nlab.server.expect(vm.mac, Inspect()))
    drv.set_boot_device(BootDevice.PXE)
    t0 = time.monotonic()
    drv.set_power(PowerState.ON)
    assert ipmitool_power(vm) == "on"  # an independent IPMI client sees it too
    fetched = nlab.call(nlab.server.wait_for(ticket, ScriptFetched, BOOT_TIMEOUT))
    up = nlab.call(nlab.server.wait_for(ticket, AgentUp, BOOT_TIMEOUT))
    inspected = nlab.call(nlab.server.wait_for(ticket, Inspected, JOB_TIMEOUT))
    record("power on -> iPXE script fetched (s)", fetched.at - t0)
    record("power on -> agent up (s)", up.at - t0)
    record("inspect job: handed out -> reported (s)", inspected.at - up.at)
    record("inspection inside the agent (s)", inspected.seconds)
    assert "bootdev network" in vm.bmc.actions and "power on" in vm.bmc.actions

    hw, spec = inspected.hardware, vm.vm.spec
    assert hw.arch == "x86_64"
    assert hw.cpu_count == spec.cpus and hw.cpu_model == spec.cpu_model
    assert hw.memory_mib == spec.memory_mib
    assert hw.system_serial == spec.name
    want = {(d.serial, d.wwn, d.model, d.size_mib << 20, d.rotational, d.by_path) for d in spec.disks}
    got = {(d.serial, d.wwn, d.model, d.size_bytes, d.rotational, d.by_path) for d in hw.disks}
    assert got == want
    assert [(n.mac, n.speed_mbps, n.link) for n in hw.nics] == [(spec.mac, spec.nic_speed_mbps, True)]
    assert up.hardware == hw  # the inventory sent at hello is the same facts

    # Soft off is an ACPI power-button press (QMP system_powerdown), not a hard off: the deploy ramdisk,
    # like any OS without an ACPI daemon, ignores it and keeps working.
    subprocess.run(
        ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(vm.bmc_port), "-U", vm.username,
         "-P", vm.password, "chassis", "power", "soft"],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    assert "power soft" in vm.bmc.actions and any(a == "power soft" for _, a in vm.vm.actions)
    again = nlab.call(nlab.server.submit(vm.mac, Inspect()))
    assert nlab.call(nlab.server.wait_for(again, Inspected, JOB_TIMEOUT)).hardware.disks == hw.disks
    assert ipmitool_power(vm) == "on"


# -- (c) bad checksum: refused before any write; corrupted transfer: caught by the read-back ------------


def test_a_wrong_checksum_fails_and_no_disk_is_touched(
    nlab: NetbootLab, vm: NetbootMachine, smallos: SmallOs
) -> None:
    agent(nlab, vm)
    before = {d.name: sha256_file(vm.vm.disk_path(d)) for d in vm.vm.spec.disks}
    wrong = hashlib.sha256(b"not the image").hexdigest()
    ticket = nlab.call(nlab.server.submit(vm.mac, provision_job(smallos, "i-bad", digest=wrong)))
    with pytest.raises(AgentFailed) as err:
        nlab.call(nlab.server.wait_for(ticket, Provisioned, JOB_TIMEOUT))
    assert err.value.reason == "ImageChecksumMismatch"
    assert smallos.image.name in err.value.message
    assert nlab.server.agent_up(vm.mac)  # the agent is still there for the next job
    assert {d.name: sha256_file(vm.vm.disk_path(d)) for d in vm.vm.spec.disks} == before


def test_no_disk_matching_the_hints_fails_clearly(
    nlab: NetbootLab, vm: NetbootMachine, smallos: SmallOs
) -> None:
    agent(nlab, vm)
    before = {d.name: sha256_file(vm.vm.disk_path(d)) for d in vm.vm.spec.disks}
    ticket = nlab.call(nlab.server.submit(vm.mac, provision_job(smallos, "i-none", serial="NO-SUCH-SERIAL")))
    with pytest.raises(AgentFailed) as err:
        nlab.call(nlab.server.wait_for(ticket, Provisioned, JOB_TIMEOUT))
    assert err.value.reason == "NoDiskMatchesHints"
    for d in vm.vm.spec.disks:  # the message lists what the host has, by stable names
        assert d.serial in err.value.message and d.by_path in err.value.message
    assert {d.name: sha256_file(vm.vm.disk_path(d)) for d in vm.vm.spec.disks} == before


def test_bytes_corrupted_in_transit_leave_no_bootable_disk(
    nlab: NetbootLab, vm: NetbootMachine, smallos: SmallOs
) -> None:
    agent(nlab, vm)
    os_img = vm.vm.disk_path("os")
    server = nlab.server
    assert isinstance(server, LabBootServer)
    server.corrupt_next_image = True
    ticket = nlab.call(server.submit(vm.mac, provision_job(smallos, "i-corrupt")))
    with pytest.raises(AgentFailed) as err:
        nlab.call(server.wait_for(ticket, Provisioned, JOB_TIMEOUT))
    assert err.value.reason == "WrittenImageChecksumMismatch" and err.value.event.step == "verify"
    # The guarantee: no partition table (MBR or GPT, primary or backup) and no boot code is left, so
    # firmware cannot boot the half-good image and nothing recognises the disk.
    with os_img.open("rb") as f:
        assert f.read(1 << 20) == bytes(1 << 20)
        f.seek(-(1 << 20), 2)
        assert f.read() == bytes(1 << 20)
    assert probe(os_img).returncode == 2
    sfdisk = subprocess.run(["sfdisk", "-d", str(os_img)], capture_output=True, text=True, check=False)
    assert sfdisk.returncode != 0


# -- (b) provisioning, then the small OS boots from disk and consumes the seed ------------------------


def test_provision_then_boot_from_disk_consumes_the_seed(
    nlab: NetbootLab, vm: NetbootMachine, smallos: SmallOs
) -> None:
    agent(nlab, vm)
    iid = f"i-{uuid.uuid4().hex[:10]}"
    ticket = nlab.call(nlab.server.submit(vm.mac, provision_job(smallos, iid)))
    done = nlab.call(nlab.server.wait_for(ticket, Provisioned, JOB_TIMEOUT))
    os_disk = next(d for d in vm.vm.spec.disks if d.name == "os")
    assert (done.disk.serial, done.disk.by_path) == (os_disk.serial, os_disk.by_path)
    size = smallos.manifest["size"]
    assert isinstance(size, int) and done.bytes == size
    record("image size (MiB)", size / (1 << 20))
    record("image write (s)", done.write_seconds)
    record("image write throughput (MB/s)", size / 1e6 / done.write_seconds if done.write_seconds else 0)
    record("read-back verify (s)", done.verify_seconds)
    record("config drive (s)", done.configdrive_seconds)

    # From outside: the image bytes are on the hinted disk, the data disk is untouched, cidata is there.
    os_img = vm.vm.disk_path("os")
    # Byte for byte, except the partition table in sector 0 that gained the cidata entry.
    with os_img.open("rb") as disk, smallos.image.open("rb") as image:
        assert disk.read(440) == image.read(440)  # the boot code
        disk.seek(512)
        image.seek(512)
        assert hashlib.sha256(disk.read(size - 512)).digest() == hashlib.sha256(image.read()).digest()
    assert probe(vm.vm.disk_path("data")).returncode == 2
    parts = subprocess.run(["sfdisk", "-J", str(os_img)], capture_output=True, text=True, check=True).stdout
    table = json.loads(parts)["partitiontable"]["partitions"]
    assert len(table) == 2
    cidata = probe(os_img, table[1]["start"] * 512).stdout
    assert "LABEL=CIDATA" in cidata and "TYPE=vfat" in cidata
    assert table[1]["start"] * 512 + table[1]["size"] * 512 <= os_disk.size_mib << 20

    # The controller's part: boot from disk through the BMC, then watch the machine consume its seed.
    booted, consumed = boot_disk_until_seed_consumed(nlab, vm, iid)
    record("power cycle -> small OS running (s)", booted)
    record("power cycle -> seed consumed (s)", consumed)


def boot_disk_until_seed_consumed(nlab: NetbootLab, vm: NetbootMachine, iid: str) -> tuple[float, float]:
    """BMC: boot device disk, power cycle; the small OS must report the seed's instance-id and run its
    user-data. Returns (seconds to the OS running, seconds to the seed consumed)."""
    # The agent's session ends here: the controller revokes it (the server cannot see the machine reboot;
    # until revoked the agent would look up for another few poll periods).
    nlab.call(nlab.server.cancel(vm.mac))
    assert not nlab.server.agent_up(vm.mac)
    drv = bmc(vm)
    drv.set_boot_device(BootDevice.DISK)
    mark = len(vm.vm.console())
    t1 = time.monotonic()
    drv.power_cycle()
    deadline = time.monotonic() + BOOT_TIMEOUT
    seen_boot = None
    while time.monotonic() < deadline:
        text = vm.vm.console()[mark:]
        if seen_boot is None and "CAPBM-SMALLOS booted" in text:
            seen_boot = time.monotonic()
        if "CAPBM-USERDATA exit=" in text:
            break
        time.sleep(0.5)
    consumed = time.monotonic() - t1
    text = vm.vm.console()[mark:]
    assert f"CAPBM-SEED instance-id={iid} local-hostname=vm-a" in text, text[-2000:]
    assert f"user-data ran for {iid}" in text and "CAPBM-USERDATA exit=0" in text
    assert "capbm-init: deploy ramdisk" not in text  # it booted the disk, not the network
    return (seen_boot or time.monotonic()) - t1, consumed


def test_a_gpt_image_gets_its_config_drive_after_the_moved_backup_header_and_boots(
    nlab: NetbootLab, vm: NetbootMachine
) -> None:
    gpt = build_smallos(label="gpt")
    agent(nlab, vm)
    iid = f"i-{uuid.uuid4().hex[:10]}"
    ticket = nlab.call(nlab.server.submit(vm.mac, provision_job(gpt, iid)))
    nlab.call(nlab.server.wait_for(ticket, Provisioned, JOB_TIMEOUT))
    os_img = vm.vm.disk_path("os")
    # The image's backup GPT sat at 64 MiB; the agent moved it to the disk's end, then appended cidata:
    # util-linux finds a consistent GPT (both headers, CRCs) with the cidata partition last.
    verify = subprocess.run(["sfdisk", "--verify", str(os_img)], capture_output=True, text=True, check=False)
    assert verify.returncode == 0 and "No errors detected" in verify.stdout, verify.stdout + verify.stderr
    table = json.loads(subprocess.run(["sfdisk", "-J", str(os_img)], capture_output=True, text=True).stdout)
    assert table["partitiontable"]["label"] == "gpt"
    parts = table["partitiontable"]["partitions"]
    assert len(parts) == 2 and parts[1]["start"] > parts[0]["start"] + parts[0]["size"]
    assert "LABEL=CIDATA" in probe(os_img, parts[1]["start"] * 512).stdout
    boot_disk_until_seed_consumed(nlab, vm, iid)


# -- (e) cleaning, checked from outside ----------------------------------------------------------------


def _put_filesystems_on(vm: NetbootMachine) -> dict[str, list[int]]:
    """GPT + ext4 on the data disk (written from outside while the machine is off); returns the byte
    offsets where each disk has signatures now."""
    data = vm.vm.disk_path("data")
    subprocess.run(["sfdisk", "-q", str(data)], input="label: gpt\nstart=2048, size=65536, type=L\n",
                   text=True, check=True, capture_output=True)  # fmt: skip
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", "offset=1048576", str(data), "32M"], check=True, capture_output=True
    )
    offsets: dict[str, list[int]] = {"data": [0, 1 << 20]}
    os_parts = subprocess.run(["sfdisk", "-J", str(vm.vm.disk_path("os"))], capture_output=True, text=True)
    if os_parts.returncode == 0:
        offsets["os"] = [0] + [
            p["start"] * 512 for p in json.loads(os_parts.stdout)["partitiontable"]["partitions"]
        ]
    for name, offs in offsets.items():
        for off in offs:
            assert probe(vm.vm.disk_path(name), off).returncode == 0, (
                f"{name}@{off} has no signature to clean"
            )
    return offsets


def test_cleaning_leaves_no_signatures_then_full_leaves_zeros(nlab: NetbootLab, vm: NetbootMachine) -> None:
    drv = bmc(vm)
    drv.set_power(PowerState.OFF)
    offsets = _put_filesystems_on(vm)
    ticket = nlab.call(nlab.server.expect(vm.mac, Clean("metadata")))
    drv.set_boot_device(BootDevice.PXE)
    drv.set_power(PowerState.ON)
    cleaned = nlab.call(nlab.server.wait_for(ticket, Cleaned, BOOT_TIMEOUT + JOB_TIMEOUT))
    record("clean metadata (s)", cleaned.seconds)
    assert {serial for _, serial in cleaned.disks} == {d.serial for d in vm.vm.spec.disks}
    for d in vm.vm.spec.disks:
        img = vm.vm.disk_path(d)
        wipefs = subprocess.run(["wipefs", "--no-act", str(img)], capture_output=True, text=True, check=True)
        assert wipefs.stdout.strip() == "", wipefs.stdout
        for off in offsets.get(d.name, [0]):
            assert probe(img, off).returncode == 2, f"{d.name}@{off}: {probe(img, off).stdout}"

    ticket = nlab.call(nlab.server.submit(vm.mac, Clean("full")))
    cleaned = nlab.call(nlab.server.wait_for(ticket, Cleaned, JOB_TIMEOUT))
    total = sum(d.size_mib for d in vm.vm.spec.disks)
    record("clean full (s)", cleaned.seconds)
    record("clean full throughput (MB/s)", total * 1.048576 / cleaned.seconds if cleaned.seconds else 0)
    for d in vm.vm.spec.disks:
        cmp = subprocess.run(["cmp", "-s", "-n", str(d.size_mib << 20), str(vm.vm.disk_path(d)), "/dev/zero"])
        assert cmp.returncode == 0, f"{d.name} is not all zeros after full cleaning"
    drv.set_power(PowerState.OFF)
    assert ipmitool_power(vm) == "off" and not vm.vm.is_powered_on()


# -- Redfish drives the same machine -------------------------------------------------------------------


def test_redfish_sets_network_boot_and_power_on_the_qemu_machine(nlab: NetbootLab) -> None:
    m = nlab.add_machine("vm-rf")
    password = "rf-" + uuid.uuid4().hex
    with RedfishLab(password=password) as endpoint:
        address = endpoint.add(m.vm, username="admin", password=password)
        drv = open_driver(
            parse_bmc_address(address), BmcCredentials("admin", password), verify_tls=True, timeout=30,
            ca_bundle=endpoint.ca_path,
        )  # fmt: skip
        try:
            drv.set_boot_device(BootDevice.PXE)
            assert m.vm.get_boot_device() == "network"
            drv.set_power(PowerState.ON)
            assert m.vm.is_powered_on()
            assert any("virtio-net-pci" in a and "bootindex=1" in a for a in m.vm.argv())
            assert m.vm.qmp("query-status")["status"] == "running"
            drv.set_power(PowerState.OFF)
            assert not m.vm.is_powered_on()
        finally:
            drv.close()
            m.vm.close()
