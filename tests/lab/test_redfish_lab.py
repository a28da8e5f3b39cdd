"""The provider's Redfish driver against the lab Redfish endpoint (sushy-tools in-process, HTTPS)."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
from collections.abc import Iterator

import pytest
from lab.machine import MemoryMachine
from lab.redfish import LabCertificates, RedfishLab

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

PASSWORD = "Pa55-distinctive-" + secrets.token_hex(4)


@pytest.fixture(scope="module")
def machines() -> dict[str, MemoryMachine]:
    return {name: MemoryMachine(name) for name in ("node-a", "node-b", "node-c")}


@pytest.fixture(scope="module")
def lab(machines: dict[str, MemoryMachine]) -> Iterator[RedfishLab]:
    with RedfishLab(machines=machines.values(), password=PASSWORD) as endpoint:
        yield endpoint


def driver(
    lab: RedfishLab,
    name: str,
    *,
    password: str = PASSWORD,
    verify_tls: bool = False,
    ca_bundle: str | None = None,
    timeout: float = 10.0,
) -> BmcDriver:
    return open_driver(
        parse_bmc_address(lab.address(name)),
        BmcCredentials("admin", password),
        verify_tls=verify_tls,
        timeout=timeout,
        ca_bundle=ca_bundle,
    )


def test_address_is_a_valid_bmc_address(lab: RedfishLab) -> None:
    address = parse_bmc_address(lab.address("node-a"))
    assert (address.scheme, address.tls, address.host, address.port) == (
        "redfish",
        True,
        "127.0.0.1",
        lab.port,
    )
    assert address.system_path == "/redfish/v1/Systems/node-a"


def test_reads_and_sets_power_and_boot_device(lab: RedfishLab, machines: dict[str, MemoryMachine]) -> None:
    machine = machines["node-a"]
    drv = driver(lab, "node-a")
    assert drv.get_power() is PowerState.OFF
    drv.set_power(PowerState.ON)
    assert machine.is_powered_on()
    drv.set_boot_device(BootDevice.PXE)
    assert machine.get_boot_device() == "network"
    drv.set_boot_device(BootDevice.DISK, persistent=False)
    assert machine.get_boot_device() == "hd"
    boots = machine.boot_count
    drv.power_cycle()
    assert machine.boot_count == boots + 1
    drv.set_power(PowerState.OFF)
    assert not machine.is_powered_on() and drv.get_power() is PowerState.OFF
    drv.power_cycle()
    assert machine.is_powered_on()
    assert machines["node-b"].boot_count == 0, "only the addressed system is touched"


def test_closing_a_driver_logs_its_redfish_session_out(lab: RedfishLab) -> None:
    # The controller opens a driver per operation: without logout real BMCs run out of session slots.
    before = lab.session_count
    for _ in range(5):
        drv = driver(lab, "node-b")
        drv.get_power()
        assert lab.session_count == before + 1, "the driver logged in through the SessionService"
        drv.close()
        assert lab.session_count == before
    drv.close()  # idempotent


def test_tls_verification(lab: RedfishLab) -> None:
    # The lab's CA is in no trust store: verifying against the system store must fail...
    with pytest.raises(BmcError) as caught:
        driver(lab, "node-b", verify_tls=True).get_power()
    assert caught.value.reason is BmcErrorReason.TLS_VERIFICATION_FAILED
    # ...and succeed once that CA is supplied.
    assert driver(lab, "node-b", verify_tls=True, ca_bundle=lab.ca_path).get_power() is PowerState.OFF
    # verify_tls=False (disableCertificateVerification) accepts the certificate as is.
    assert driver(lab, "node-b", verify_tls=False).get_power() is PowerState.OFF


def test_a_ca_bundle_of_another_ca_is_not_trusted(lab: RedfishLab, tmp_path) -> None:
    bundle = tmp_path / "other-ca.pem"
    bundle.write_bytes(LabCertificates().ca_pem)
    with pytest.raises(BmcError) as caught:
        driver(lab, "node-b", verify_tls=True, ca_bundle=str(bundle)).get_power()
    assert caught.value.reason is BmcErrorReason.TLS_VERIFICATION_FAILED


def test_wrong_password_is_rejected(lab: RedfishLab) -> None:
    with pytest.raises(BmcError) as caught:
        driver(lab, "node-b", password="not-" + PASSWORD).get_power()
    assert caught.value.reason is BmcErrorReason.CREDENTIALS_REJECTED


def test_unknown_system_is_a_clear_error(lab: RedfishLab) -> None:
    with pytest.raises(BmcError) as caught:
        driver(lab, "no-such-node").get_power()
    assert caught.value.reason is BmcErrorReason.PROTOCOL_ERROR
    assert "no such system" in str(caught.value)


def test_plain_http_redfish_is_refused_before_any_traffic(lab: RedfishLab) -> None:
    plain = lab.address("node-b").replace("redfish+https://", "redfish+http://")
    with pytest.raises(BmcError) as caught:
        open_driver(parse_bmc_address(plain), BmcCredentials("admin", PASSWORD), verify_tls=False, timeout=5)
    assert caught.value.reason is BmcErrorReason.PROTOCOL_ERROR


def test_per_system_account_and_rotation() -> None:
    lab_password, own_password, rotated = (secrets.token_hex(6) for _ in range(3))
    special = MemoryMachine("node-special")
    with RedfishLab(machines=[MemoryMachine("node-plain")], password=lab_password) as endpoint:
        endpoint.add(special, username="admin", password=own_password)
        assert driver(endpoint, "node-special", password=own_password).get_power() is PowerState.OFF
        with pytest.raises(BmcError) as caught:
            driver(endpoint, "node-special", password=lab_password).get_power()
        assert caught.value.reason is BmcErrorReason.CREDENTIALS_REJECTED
        assert driver(endpoint, "node-plain", password=lab_password).get_power() is PowerState.OFF

        logged_in = driver(endpoint, "node-special", password=own_password)
        logged_in.get_power()
        endpoint.set_credentials("admin", rotated, system="node-special")
        with pytest.raises(BmcError) as caught:
            logged_in.get_power()  # the next request of an existing driver sees the rotation
        assert caught.value.reason is BmcErrorReason.CREDENTIALS_REJECTED
        assert driver(endpoint, "node-special", password=rotated).get_power() is PowerState.OFF


def test_workdir_lab_with_only_per_system_accounts(tmp_path) -> None:
    # How the lab rack uses it: systems come and go at runtime, each with its own account.
    pw = secrets.token_hex(6)
    machine = MemoryMachine("node-w")
    with RedfishLab(tmp_path / "redfish") as endpoint:
        address = endpoint.add(machine, username="admin", password=pw)
        assert address == endpoint.address("node-w")
        assert driver(
            endpoint, "node-w", password=pw, verify_tls=True, ca_bundle=endpoint.ca_path
        ).get_power() is (PowerState.OFF)
        endpoint.remove("node-w")
        with pytest.raises(BmcError):
            driver(endpoint, "node-w", password=pw).get_power()
    assert (tmp_path / "redfish" / "ca.pem").is_file(), "a workdir is the caller's and outlives stop()"


def test_set_power_waits_for_a_slow_power_transition() -> None:
    machine = MemoryMachine("node-slow")
    with RedfishLab(machines=[machine], password=PASSWORD, power_delay=1.0) as endpoint:
        driver(endpoint, "node-slow", timeout=10).set_power(PowerState.ON)
        assert machine.is_powered_on(), "set_power returned before the BMC reported the new state"
        with pytest.raises(BmcError) as caught:
            driver(endpoint, "node-slow", timeout=0.6).set_power(PowerState.OFF)
        assert caught.value.reason is BmcErrorReason.TIMEOUT


def test_password_never_appears_in_errors_or_logs(lab: RedfishLab, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[BmcError] = []
    for attempt in (
        lambda: driver(lab, "node-c", password=PASSWORD + "-typo").get_power(),
        lambda: driver(lab, "node-c", verify_tls=True).set_power(PowerState.ON),
        lambda: driver(lab, "missing").power_cycle(),
    ):
        with pytest.raises(BmcError) as caught:
            attempt()
        errors.append(caught.value)
    for error in errors:
        for text in (str(error), repr(error), repr(error.args)):
            assert PASSWORD not in text
        assert error.__cause__ is None and error.__context__ is None
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()


def test_stop_releases_the_port_and_thread() -> None:
    endpoint = RedfishLab(machines=[MemoryMachine("node-x")], password=PASSWORD)
    endpoint.start()
    port = endpoint.port
    assert endpoint.running
    endpoint.stop()
    assert not endpoint.running
    assert not any(t.name == f"lab-redfish-{port}" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    endpoint.stop()  # idempotent
