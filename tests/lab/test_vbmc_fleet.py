"""The lab's virtual IPMI BMCs speak real IPMI: independent clients (ipmitool, FreeIPMI, stock pyghmi)."""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator

import pytest
from lab.machine import MemoryMachine
from lab.vbmc import BmcFleet, VirtualBmc
from pyghmi.ipmi.command import Command


@pytest.fixture
def fleet() -> Iterator[BmcFleet]:
    with BmcFleet() as f:
        yield f


def password() -> str:
    # Fresh per test: pyghmi caches client sessions per (address, user, password) for the whole process.
    return "pw-" + secrets.token_hex(6)


def ipmitool(
    bmc: VirtualBmc, pw: str, *args: str, cipher: str | None = "3"
) -> subprocess.CompletedProcess[str]:
    cmd = ["ipmitool", "-I", "lanplus", "-H", "127.0.0.1", "-p", str(bmc.port), "-U", "admin", "-P", pw]
    if cipher is not None:
        cmd += ["-C", cipher]
    # -N/-R: short retransmit interval and few retries, so a refused login fails fast
    return subprocess.run([*cmd, "-N", "1", "-R", "2", *args], capture_output=True, text=True, timeout=60)


def test_ipmitool_reads_and_changes_power(fleet: BmcFleet) -> None:
    pw = password()
    machine = MemoryMachine("node-a")
    bmc = fleet.add(machine, password=pw)

    status = ipmitool(bmc, pw, "chassis", "power", "status")
    assert status.returncode == 0, status.stderr
    assert "Chassis Power is off" in status.stdout

    assert ipmitool(bmc, pw, "chassis", "power", "on").returncode == 0
    assert machine.is_powered_on()
    assert "Chassis Power is on" in ipmitool(bmc, pw, "chassis", "power", "status").stdout

    assert ipmitool(bmc, pw, "chassis", "power", "cycle").returncode == 0
    assert machine.boot_count == 2

    assert ipmitool(bmc, pw, "chassis", "power", "off").returncode == 0
    assert not machine.is_powered_on()


def test_ipmitool_sets_the_boot_device(fleet: BmcFleet) -> None:
    pw = password()
    machine = MemoryMachine("node-a")
    bmc = fleet.add(machine, password=pw)
    assert ipmitool(bmc, pw, "chassis", "bootdev", "pxe").returncode == 0
    assert machine.get_boot_device() == "network"
    assert ipmitool(bmc, pw, "chassis", "bootdev", "disk").returncode == 0
    assert machine.get_boot_device() == "hd"


def test_ipmitool_with_the_wrong_password_cannot_open_a_session(fleet: BmcFleet) -> None:
    machine = MemoryMachine("node-a")
    bmc = fleet.add(machine, password=password())
    result = ipmitool(bmc, "wrong-password", "chassis", "power", "on")
    assert result.returncode != 0
    assert "Unable to establish IPMI v2 / RMCP+ session" in result.stderr
    assert not machine.is_powered_on()


def test_cipher_suite_negotiation_matches_a_suite_3_only_bmc(fleet: BmcFleet) -> None:
    pw = password()
    bmc = fleet.add(MemoryMachine("node-a"), password=pw)
    # ipmitool's own choice (from Get Channel Cipher Suites) works...
    assert ipmitool(bmc, pw, "chassis", "power", "status", cipher=None).returncode == 0
    # ...and a suite-17 proposal is refused with the RMCP+ status a real suite-3-only BMC sends.
    refused = ipmitool(bmc, pw, "chassis", "power", "status", cipher="17")
    assert refused.returncode != 0
    assert "no matching cipher suite" in refused.stderr


def test_freeipmi_is_a_second_independent_client(fleet: BmcFleet) -> None:
    pw = password()
    machine = MemoryMachine("node-a")
    bmc = fleet.add(machine, password=pw)
    base = ["ipmi-power", "-D", "LAN_2_0", "-h", f"127.0.0.1:{bmc.port}", "-u", "admin", "-p", pw]
    on = subprocess.run([*base, "--on"], capture_output=True, text=True, timeout=60)
    assert on.returncode == 0, on.stderr
    assert machine.is_powered_on()
    stat = subprocess.run([*base, "--stat"], capture_output=True, text=True, timeout=60)
    assert stat.stdout.strip() == "127.0.0.1: on"


def test_unmodified_pyghmi_client_works_against_the_lab_bmc(fleet: BmcFleet) -> None:
    pw = password()
    machine = MemoryMachine("node-a", powered_on=True)
    bmc = fleet.add(machine, password=pw)
    assert Command(bmc="127.0.0.1", userid="admin", password=pw, port=bmc.port).get_power() == {
        "powerstate": "on"
    }


class StockPyghmiBmc(VirtualBmc):
    """Serves like pyghmi's own Bmc: 'accepts' any cipher-suite proposal, then speaks suite 3."""

    refuse_unsupported_cipher_suites = False


def test_without_the_cipher_suite_fix_the_pyghmi_client_breaks(fleet: BmcFleet) -> None:
    # The failure the fix exists for: the client believes suite 17 was accepted and chokes on SHA-1 RAKP2.
    pw = password()
    bmc = fleet.add(MemoryMachine("node-a"), password=pw, bmc_class=StockPyghmiBmc)
    with pytest.raises(Exception) as caught:
        Command(bmc="127.0.0.1", userid="admin", password=pw, port=bmc.port).get_power()
    assert type(caught.value).__name__ == "error"  # struct.error from pyghmi's _got_rakp2
    assert "32 items" in str(caught.value)


def test_rotated_password_takes_effect_for_new_sessions(fleet: BmcFleet) -> None:
    old, new = password(), password()
    machine = MemoryMachine("node-a")
    bmc = fleet.add(machine, password=old)
    fleet.set_credentials("node-a", "admin", new)
    assert ipmitool(bmc, old, "chassis", "power", "status").returncode != 0
    assert ipmitool(bmc, new, "chassis", "power", "on").returncode == 0
    assert machine.is_powered_on()


def test_many_bmcs_in_one_fleet_answer_concurrently(fleet: BmcFleet) -> None:
    pw = password()
    machines = [MemoryMachine(f"node-{i:02d}") for i in range(24)]
    bmcs = [fleet.add(m, password=pw) for m in machines]
    assert len({b.port for b in bmcs}) == 24
    errors: list[BaseException] = []

    def power_on(bmc: VirtualBmc) -> None:
        try:
            Command(bmc="127.0.0.1", userid="admin", password=pw, port=bmc.port).set_power("on", wait=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=power_on, args=(b,)) for b in bmcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert all(m.is_powered_on() for m in machines)


def test_removed_bmc_stops_answering_and_others_keep_going(fleet: BmcFleet) -> None:
    pw = password()
    gone = fleet.add(MemoryMachine("node-gone"), password=pw)
    kept = fleet.add(MemoryMachine("node-kept"), password=pw)
    fleet.remove("node-gone")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", gone.port))  # its socket is closed: nothing can answer there any more
    probe.close()
    assert ipmitool(kept, pw, "chassis", "power", "status").returncode == 0


def _auth_capabilities_request(seq: int) -> bytes:
    """A sessionless IPMI 1.5 "Get Channel Authentication Capabilities": one request, one reply."""

    def checksum(*data: int) -> int:
        return -sum(data) & 0xFF

    header = bytes([0x20, 0x06 << 2])
    body = bytes([0x81, (seq & 0x3F) << 2, 0x38, 0x8E, 0x04])
    message = header + bytes([checksum(*header)]) + body + bytes([checksum(*body)])
    return b"\x06\x00\xff\x07" + bytes(9) + bytes([len(message)]) + message


def _answered(bmc: VirtualBmc, requests: int) -> int:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(0.03)
    answered = 0
    try:
        for seq in range(requests):
            client.sendto(_auth_capabilities_request(seq), ("127.0.0.1", bmc.port))
            with contextlib.suppress(TimeoutError):  # lost on the way there or back
                answered += len(client.recv(512)) > 0
    finally:
        client.close()
    return answered


def test_drop_fault_loses_the_configured_share_of_packets() -> None:
    with BmcFleet(seed=42) as fleet:
        bmc = fleet.add(MemoryMachine("node-a"), password="x")
        assert _answered(bmc, 40) == 40
        fleet.set_fault("node-a", "drop", drop_rate=0.5)
        # Requests and replies are each lost with p=0.5, so about a quarter of the requests get an answer.
        assert 10 <= _answered(bmc, 100) <= 42
        fleet.set_fault("node-a", "drop", drop_rate=1.0)
        assert _answered(bmc, 5) == 0
        fleet.set_fault("node-a", "none")
        assert _answered(bmc, 5) == 5


def test_stop_closes_every_socket_and_ends_the_io_thread() -> None:
    # Other fleets (a session-wide lab) may be running: only this fleet's thread must end.
    before = {t for t in threading.enumerate() if t.name == "lab-bmc-fleet"}
    fleet = BmcFleet()
    fleet.start()
    ports = [fleet.add(MemoryMachine(f"node-{i}"), password="x").port for i in range(3)]
    assert fleet.running
    assert {t for t in threading.enumerate() if t.name == "lab-bmc-fleet"} - before
    fleet.stop()
    assert not fleet.running
    assert {t for t in threading.enumerate() if t.name == "lab-bmc-fleet"} - before == set()
    for port in ports:  # the ports are free again: nothing holds them open
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", port))
        probe.close()
    fleet.stop()  # idempotent
    with pytest.raises(RuntimeError):
        fleet.add(MemoryMachine("late"), password="x")
