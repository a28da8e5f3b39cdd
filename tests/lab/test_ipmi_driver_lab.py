"""The provider's IPMI driver against the lab's virtual BMCs (real RMCP+ over loopback)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from lab.machine import MemoryMachine
from lab.vbmc import BmcFleet, VirtualBmc

from capi_provider.bmc import (
    BmcCredentials,
    BmcError,
    BmcErrorReason,
    BootDevice,
    PowerState,
    open_driver,
    parse_bmc_address,
)
from capi_provider.bmc.base import BmcDriver
from capi_provider.runner import BlockingRunner


@pytest.fixture
def fleet() -> Iterator[BmcFleet]:
    with BmcFleet() as f:
        yield f


def password() -> str:
    # Fresh per test: pyghmi caches client sessions per (address, user, password) for the whole process.
    return "pw-" + secrets.token_hex(6)


def driver(bmc: VirtualBmc, pw: str, *, user: str = "admin", timeout: float = 5.0) -> BmcDriver:
    return open_driver(
        parse_bmc_address(bmc.address), BmcCredentials(user, pw), verify_tls=True, timeout=timeout
    )


def test_reads_and_sets_power_and_boot_device(fleet: BmcFleet) -> None:
    pw = password()
    machine = MemoryMachine("node-a")
    drv = driver(fleet.add(machine, password=pw), pw)
    try:
        assert drv.get_power() is PowerState.OFF
        drv.set_power(PowerState.ON)
        assert machine.is_powered_on() and drv.get_power() is PowerState.ON
        drv.set_boot_device(BootDevice.PXE)
        assert machine.get_boot_device() == "network"
        drv.set_boot_device(BootDevice.DISK, persistent=False)
        assert machine.get_boot_device() == "hd"
        drv.power_cycle()
        assert machine.boot_count == 2 and machine.is_powered_on()
        drv.set_power(PowerState.OFF)
        assert not machine.is_powered_on()
        drv.power_cycle()  # off: the lab BMC refuses a cycle, the driver powers on instead
        assert machine.is_powered_on() and machine.boot_count == 3
    finally:
        drv.close()


def test_a_new_driver_works_after_the_previous_one_logged_out(fleet: BmcFleet) -> None:
    # Guards the pyghmi session-cache workaround: same BMC, same credentials, after a logout.
    pw = password()
    machine = MemoryMachine("node-a", powered_on=True)
    bmc = fleet.add(machine, password=pw)
    first = driver(bmc, pw)
    assert first.get_power() is PowerState.ON
    first.close()
    second = driver(bmc, pw)
    machine.power_off()
    assert second.get_power() is PowerState.OFF
    second.close()


@pytest.mark.parametrize("how", ["wrong password", "unknown user", "rejecting BMC"])
def test_refused_credentials(fleet: BmcFleet, how: str) -> None:
    pw = password()
    bmc = fleet.add(MemoryMachine("node-a"), password=pw)
    if how == "wrong password":
        drv = driver(bmc, "not-" + pw)
    elif how == "unknown user":
        drv = driver(bmc, pw, user="nobody")
    else:
        fleet.set_fault("node-a", "reject-credentials")
        drv = driver(bmc, pw)
    with pytest.raises(BmcError) as caught:
        drv.get_power()
    assert caught.value.reason is BmcErrorReason.CREDENTIALS_REJECTED
    assert not caught.value.retryable


def test_rotated_password(fleet: BmcFleet) -> None:
    old, new = password(), password()
    bmc = fleet.add(MemoryMachine("node-a"), password=old)
    fleet.set_credentials("node-a", "admin", new)
    with pytest.raises(BmcError) as caught:
        driver(bmc, old).get_power()
    assert caught.value.reason is BmcErrorReason.CREDENTIALS_REJECTED
    assert driver(bmc, new).get_power() is PowerState.OFF


def test_a_bmc_that_never_answers_fails_within_the_timeout(fleet: BmcFleet) -> None:
    pw = password()
    bmc = fleet.add(MemoryMachine("node-a"), password=pw)
    fleet.set_fault("node-a", "no-answer")
    # The call returns with an error instead of hanging (pyghmi's own retries would go on for a minute).
    outcome: list[BaseException] = []
    caller = threading.Thread(target=lambda: _capture(outcome, driver(bmc, pw, timeout=2).get_power))
    caller.start()
    caller.join(30)
    assert not caller.is_alive(), "a call to a silent BMC hung"
    assert isinstance(outcome[0], BmcError)
    assert outcome[0].reason in (BmcErrorReason.UNREACHABLE, BmcErrorReason.TIMEOUT)


def _capture(outcome: list[BaseException], call: Any) -> None:
    try:
        call()
    except BaseException as e:
        outcome.append(e)


def test_a_slow_bmc_does_not_delay_another_bmc_of_the_same_fleet(fleet: BmcFleet) -> None:
    pw = password()
    slow_bmc = fleet.add(MemoryMachine("node-slow"), password=pw)
    fast_machine = MemoryMachine("node-fast", powered_on=True)
    fast_bmc = fleet.add(fast_machine, password=pw)
    fleet.set_fault("node-slow", "slow", delay=10)
    outcome: list[object] = []

    def call_slow() -> None:
        try:
            outcome.append(driver(slow_bmc, pw, timeout=3).get_power())
        except BmcError as exc:
            outcome.append(exc)

    slow_thread = threading.Thread(target=call_slow)
    slow_thread.start()
    time.sleep(0.2)  # its first request is now sitting in the slow BMC's delay queue
    fast = driver(fast_bmc, pw)
    assert fast.get_power() is PowerState.ON
    fast.set_power(PowerState.OFF)
    assert not fast_machine.is_powered_on()
    assert slow_thread.is_alive(), "the fast BMC's calls completed while the slow one was still in flight"
    slow_thread.join(10)
    assert isinstance(outcome[0], BmcError)
    fast.close()


def test_runner_serves_other_bmcs_while_one_is_slow(fleet: BmcFleet) -> None:
    pw = password()
    slow = driver(fleet.add(MemoryMachine("node-slow"), password=pw), pw, timeout=2)
    fast = driver(fleet.add(MemoryMachine("node-fast", powered_on=True), password=pw), pw)
    fleet.set_fault("node-slow", "slow", delay=10)
    runner = BlockingRunner()

    async def main() -> None:
        slow_call = asyncio.ensure_future(runner.call("node-slow", slow.get_power, timeout=2.5))
        fast_call = asyncio.ensure_future(runner.call("node-fast", fast.get_power, timeout=2.5))
        done, _ = await asyncio.wait({slow_call, fast_call}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {fast_call}
        assert fast_call.result() is PowerState.ON
        # The driver bounds its own call (2 s) inside the runner's deadline (2.5 s).
        with pytest.raises(BmcError) as caught:
            await slow_call
        assert caught.value.reason is BmcErrorReason.TIMEOUT

    try:
        asyncio.run(main())
    finally:
        runner.shutdown()
        fast.close()


def test_password_never_appears_in_errors_or_logs(fleet: BmcFleet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    pw = "Pa55-distinctive-" + secrets.token_hex(4)
    bmc = fleet.add(MemoryMachine("node-a"), password=pw)
    errors: list[BmcError] = []
    attempts = [
        lambda: driver(bmc, pw + "-typo").get_power(),
        lambda: driver(bmc, pw, user="nobody").set_power(PowerState.ON),
    ]
    for attempt in attempts:
        with pytest.raises(BmcError) as caught:
            attempt()
        errors.append(caught.value)
    fleet.set_fault("node-a", "reject-credentials")
    with pytest.raises(BmcError) as caught:
        driver(bmc, pw).power_cycle()
    errors.append(caught.value)
    fleet.set_fault("node-a", "no-answer")
    with pytest.raises(BmcError) as caught:
        driver(bmc, pw, timeout=1).set_boot_device(BootDevice.PXE)
    errors.append(caught.value)
    for error in errors:
        for text in (str(error), repr(error), repr(error.args), error.message):
            assert pw not in text
        assert error.__cause__ is None and error.__context__ is None
    for record in caplog.records:
        assert pw not in record.getMessage()
