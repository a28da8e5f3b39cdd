"""IpmiDriver logic against a scripted stand-in for pyghmi's Command (no network)."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pyghmi.ipmi.command
import pytest
from pyghmi.exceptions import IpmiException

from capi_provider.bmc import BmcCredentials, BmcError, BmcErrorReason, BootDevice, PowerState
from capi_provider.bmc import ipmi as ipmi_module
from capi_provider.bmc.address import parse_bmc_address
from capi_provider.bmc.ipmi import IpmiDriver

PASSWORD = "Pa55-distinctive-7f3a"
CONTROL_NAMES = {0: "off", 1: "on", 2: "cycle", 3: "reset"}


class FakeBmc:
    """What the fake Command talks to. Requested power changes become visible after `lands_after` reads."""

    def __init__(self) -> None:
        self.on = False
        self.lands_after = 0
        self.pending: bool | None = None
        self.reads_until_landed = 0
        self.control_codes: dict[str, int] = {}
        self.controls: list[str] = []
        self.boot: tuple[str, bool] | None = None
        self.logins: list[tuple[Any, Any]] = []
        self.login_error: BaseException | None = None
        self.status_error: BaseException | None = None
        self.status_reply: dict[str, Any] | None = None
        self.hang = threading.Event()
        self.hanging = False
        self.sessions: list[FakeSession] = []

    def chassis_status(self) -> dict[str, Any]:
        if self.hanging:
            self.hang.wait(10)
        if self.status_error is not None:
            error, self.status_error = self.status_error, None
            raise error
        if self.status_reply is not None:
            return self.status_reply
        if self.pending is not None:
            if self.reads_until_landed == 0:
                self.on, self.pending = self.pending, None
            else:
                self.reads_until_landed -= 1
        return {"netfn": 1, "command": 1, "code": 0, "data": bytearray([1 if self.on else 0, 0, 0])}

    def chassis_control(self, directive: int) -> dict[str, Any]:
        action = CONTROL_NAMES[directive]
        self.controls.append(action)
        code = self.control_codes.get(action, 0)
        if code:
            return {"netfn": 1, "command": 2, "code": code, "data": bytearray(), "error": f"code {code:#x}"}
        if action in ("on", "off"):
            self.pending = action == "on"
            self.reads_until_landed = self.lands_after
        return {"netfn": 1, "command": 2, "code": 0, "data": bytearray()}


class FakeSession:
    def __init__(self) -> None:
        self.broken = False
        self.logged_out = False

    def logout(self) -> dict[str, bool]:
        self.logged_out = True
        return {"success": True}


@pytest.fixture
def bmc(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBmc]:
    fake = FakeBmc()

    class FakeCommand:
        def __init__(self, bmc: str, userid: Any, password: Any, port: int, **_: Any) -> None:
            fake.logins.append((userid, password))
            if fake.login_error is not None:
                raise fake.login_error
            self.ipmi_session = FakeSession()
            fake.sessions.append(self.ipmi_session)

        def raw_command(self, netfn: int, command: int, data: tuple[int, ...] = ()) -> dict[str, Any]:
            assert netfn == 0
            if self.ipmi_session.broken:
                raise IpmiException("Session no longer connected")
            return fake.chassis_status() if command == 1 else fake.chassis_control(data[0])

        def set_bootdev(self, bootdev: str, persist: bool = False) -> dict[str, str]:
            fake.boot = (bootdev, persist)
            return {"bootdev": bootdev}

    monkeypatch.setattr(pyghmi.ipmi.command, "Command", FakeCommand)
    monkeypatch.setattr(ipmi_module, "POLL_INTERVAL", 0.01)
    yield fake
    fake.hang.set()


def driver(timeout: float = 2.0) -> IpmiDriver:
    return IpmiDriver(
        parse_bmc_address("ipmi://192.0.2.10"), BmcCredentials("admin", PASSWORD), timeout=timeout
    )


def test_reads_power_from_chassis_status(bmc: FakeBmc) -> None:
    assert driver().get_power() is PowerState.OFF
    bmc.on = True
    assert driver().get_power() is PowerState.ON


def test_credentials_reach_pyghmi_as_bytes(bmc: FakeBmc) -> None:
    # With str credentials pyghmi 1.6.19 hands a dead session to every later login (see ipmi.py).
    driver().get_power()
    assert bmc.logins == [(b"admin", PASSWORD.encode())]


def test_set_power_returns_only_once_the_bmc_reports_the_new_state(bmc: FakeBmc) -> None:
    bmc.lands_after = 3
    driver().set_power(PowerState.ON)
    assert bmc.controls == ["on"]
    assert bmc.on and bmc.pending is None


def test_set_power_is_a_no_op_when_already_there(bmc: FakeBmc) -> None:
    bmc.on = True
    driver().set_power(PowerState.ON)
    assert bmc.controls == []


def test_set_power_that_never_lands_times_out(bmc: FakeBmc) -> None:
    bmc.lands_after = 10_000
    with pytest.raises(BmcError) as caught:
        driver(timeout=0.3).set_power(PowerState.ON)
    assert caught.value.reason is BmcErrorReason.TIMEOUT


def test_power_cycle_of_a_machine_that_is_off_powers_it_on(bmc: FakeBmc) -> None:
    driver().power_cycle()
    assert bmc.controls == ["on"]
    assert bmc.on


def test_power_cycle_of_a_running_machine(bmc: FakeBmc) -> None:
    bmc.on = True
    driver().power_cycle()
    assert bmc.controls == ["cycle"]


def test_power_cycle_falls_back_to_reset_where_cycle_is_unsupported(bmc: FakeBmc) -> None:
    bmc.on = True
    bmc.control_codes["cycle"] = 0xC1
    driver().power_cycle()
    assert bmc.controls == ["cycle", "reset"]


def test_power_cycle_refused_because_it_just_went_off_powers_on(bmc: FakeBmc) -> None:
    bmc.on = True
    bmc.control_codes["cycle"] = 0xD5
    driver().power_cycle()
    assert bmc.controls == ["cycle", "on"]


@pytest.mark.parametrize(
    ("device", "persistent", "expected"),
    [(BootDevice.PXE, True, ("network", True)), (BootDevice.DISK, False, ("hd", False))],
)
def test_boot_device(bmc: FakeBmc, device: BootDevice, persistent: bool, expected: tuple[str, bool]) -> None:
    driver().set_boot_device(device, persistent=persistent)
    assert bmc.boot == expected


@pytest.mark.parametrize(
    ("login_error", "reason"),
    [
        (IpmiException("Incorrect password provided"), BmcErrorReason.CREDENTIALS_REJECTED),
        (IpmiException("Unauthorized name in RAKP2"), BmcErrorReason.CREDENTIALS_REJECTED),
        (IpmiException("Invalid RAKP4 integrity code (wrong Kg?)"), BmcErrorReason.CREDENTIALS_REJECTED),
        (IpmiException(None), BmcErrorReason.UNREACHABLE),  # what pyghmi raises when nothing answered
        (IpmiException("timeout"), BmcErrorReason.UNREACHABLE),
        (IpmiException("Unable to transmit to specified address"), BmcErrorReason.UNREACHABLE),
        (socket.gaierror(-2, "Name or service not known"), BmcErrorReason.UNREACHABLE),
        (OSError(113, "No route to host"), BmcErrorReason.UNREACHABLE),
        (IpmiException("Insufficient resources to create new session"), BmcErrorReason.OPERATION_FAILED),
        (struct.error("pack expected 32 items for packing (got 20)"), BmcErrorReason.PROTOCOL_ERROR),
        (IpmiException("Unrecognized RMCP code 99"), BmcErrorReason.PROTOCOL_ERROR),
    ],
)
def test_login_failures_are_classified(
    bmc: FakeBmc, login_error: BaseException, reason: BmcErrorReason
) -> None:
    bmc.login_error = login_error
    with pytest.raises(BmcError) as caught:
        driver().get_power()
    assert caught.value.reason is reason


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ({"netfn": 1, "command": 1, "code": 0xFFFF, "error": "timeout"}, BmcErrorReason.TIMEOUT),
        (
            {"netfn": 1, "command": 1, "code": 0xC1, "error": "Invalid command"},
            BmcErrorReason.OPERATION_FAILED,
        ),
        ({"netfn": 1, "command": 1, "code": 0, "data": bytearray()}, BmcErrorReason.PROTOCOL_ERROR),
    ],
)
def test_command_failures_are_classified(
    bmc: FakeBmc, status: dict[str, Any], reason: BmcErrorReason
) -> None:
    bmc.status_reply = status
    with pytest.raises(BmcError) as caught:
        driver().get_power()
    assert caught.value.reason is reason


def test_a_session_the_bmc_dropped_is_replaced_by_a_new_login(bmc: FakeBmc) -> None:
    drv = driver()
    assert drv.get_power() is PowerState.OFF
    bmc.sessions[-1].broken = True
    bmc.on = True
    assert drv.get_power() is PowerState.ON
    assert len(bmc.logins) == 2


def test_a_hung_call_is_abandoned_at_the_timeout_and_blocks_no_one_forever(bmc: FakeBmc) -> None:
    drv = driver(timeout=0.3)
    bmc.hanging = True
    with pytest.raises(BmcError) as first:
        drv.get_power()
    assert first.value.reason is BmcErrorReason.TIMEOUT
    # While the first call is still stuck in "pyghmi", the driver fails fast instead of stacking threads.
    with pytest.raises(BmcError, match="still waiting"):
        drv.get_power()
    bmc.hanging = False
    bmc.hang.set()
    for _ in range(100):
        if not drv._caller.busy:
            break
        threading.Event().wait(0.01)
    assert drv.get_power() is PowerState.OFF


def test_close_logs_out_and_ends_the_driver(bmc: FakeBmc) -> None:
    drv = driver()
    drv.get_power()
    drv.close()
    assert bmc.sessions[-1].logged_out
    with pytest.raises(BmcError):
        drv.get_power()


def test_password_never_leaks_from_error_paths(bmc: FakeBmc, caplog: pytest.LogCaptureFixture) -> None:
    """Even when an upstream message contains the password, nothing we raise or log does."""
    caplog.set_level(logging.DEBUG)
    failures: list[BaseException] = [
        IpmiException(f"weird failure for {PASSWORD}"),
        IpmiException("Incorrect password provided"),
        IpmiException(None),
        struct.error(f"bad packet {PASSWORD}"),
        OSError(111, f"refused {PASSWORD}"),
        ValueError(PASSWORD),
    ]
    raised: list[BaseException] = []
    for failure in failures:
        bmc.login_error = failure
        with pytest.raises(BmcError) as caught:
            driver().get_power()
        raised.append(caught.value)
    bmc.login_error = None
    bmc.status_reply = {"netfn": 1, "command": 1, "code": 0xC1, "error": f"nope {PASSWORD}"}
    with pytest.raises(BmcError) as caught:
        driver().get_power()
    raised.append(caught.value)
    bmc.status_reply, bmc.hanging = None, True
    with pytest.raises(BmcError) as caught:
        driver(timeout=0.2).get_power()
    raised.append(caught.value)
    for error in raised:
        chain: BaseException | None = error
        while chain is not None:
            assert PASSWORD not in f"{chain} {chain!r} {chain.args!r}"
            chain = chain.__cause__ or chain.__context__
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()
