"""RedfishDriver logic against a scripted stand-in for pyghmi's Redfish Command, and the CA verifier."""

from __future__ import annotations

import http.client
import logging
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from lab.redfish import LabCertificates
from pyghmi.exceptions import PyghmiException, RedfishError

from capi_provider.bmc import BmcCredentials, BmcError, BmcErrorReason, BootDevice, PowerState
from capi_provider.bmc import redfish as redfish_module
from capi_provider.bmc.address import parse_bmc_address
from capi_provider.bmc.redfish import CertificateRejected, RedfishDriver, TrustedCAVerifier

PASSWORD = "Pa55-distinctive-7f3a"
ADDRESS = "redfish://192.0.2.20/redfish/v1/Systems/1"


class FakeRedfish:
    def __init__(self) -> None:
        self.power = "Off"
        self.pending: str | None = None
        self.reads_until_landed = 0
        self.lands_after = 0
        self.login_error: BaseException | None = None
        self.errors: dict[str, BaseException] = {}
        self.system_found = True
        self.probe_status = 200
        self.resets: list[str] = []
        self.boot: tuple[str, bool] | None = None
        self.verify: Any = "unset"

    def read(self) -> dict[str, str]:
        self._raise("get_power")
        if self.pending is not None:
            if self.reads_until_landed == 0:
                self.power, self.pending = self.pending, None
            else:
                self.reads_until_landed -= 1
        return {"powerstate": self.power.lower()}

    def _raise(self, method: str) -> None:
        if method in self.errors:
            raise self.errors.pop(method)


@pytest.fixture
def fish(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRedfish]:
    fake = FakeRedfish()

    class FakeWebClient:
        mytimeout = 60

        def grab_json_response_with_status(self, url: str) -> tuple[Any, int]:
            return {}, fake.probe_status

    class FakeCommand:
        def __init__(self, bmc: str, userid: str, password: str, verifycallback: Any, **kw: Any) -> None:
            fake.verify = verifycallback
            if fake.login_error is not None:
                raise fake.login_error
            self.wc = FakeWebClient()
            self.sysurl = kw["sysurl"] if fake.system_found else None
            self.powerurl = f"{self.sysurl}/Actions/ComputerSystem.Reset" if self.sysurl else None

        def get_power(self) -> dict[str, str]:
            return fake.read()

        def set_power(self, state: str) -> dict[str, str]:
            fake._raise("set_power")
            fake.resets.append(state)
            if state in ("on", "off"):
                fake.pending = "On" if state == "on" else "Off"
                fake.reads_until_landed = fake.lands_after
            return {"pendingpowerstate": state}

        def set_bootdev(self, bootdev: str, persist: bool = False) -> dict[str, str]:
            fake._raise("set_bootdev")
            fake.boot = (bootdev, persist)
            return {"bootdev": bootdev}

    monkeypatch.setattr(redfish_module, "_session_tracking_command", lambda: FakeCommand)
    monkeypatch.setattr(redfish_module, "POLL_INTERVAL", 0.01)
    yield fake


def driver(timeout: float = 2.0, verify_tls: bool = False) -> RedfishDriver:
    return RedfishDriver(
        parse_bmc_address(ADDRESS), BmcCredentials("admin", PASSWORD), verify_tls=verify_tls, timeout=timeout
    )


def test_set_power_polls_until_the_pending_state_lands(fish: FakeRedfish) -> None:
    fish.lands_after = 4
    driver().set_power(PowerState.ON)
    assert fish.resets == ["on"]
    assert fish.power == "On" and fish.pending is None


def test_set_power_that_never_lands_times_out(fish: FakeRedfish) -> None:
    fish.lands_after = 10_000
    with pytest.raises(BmcError) as caught:
        driver(timeout=0.3).set_power(PowerState.ON)
    assert caught.value.reason is BmcErrorReason.TIMEOUT


def test_transitional_power_states_report_the_state_not_yet_left(fish: FakeRedfish) -> None:
    fish.power = "PoweringOn"
    assert driver().get_power() is PowerState.OFF
    fish.power = "Sleeping-ish"
    with pytest.raises(BmcError) as caught:
        driver().get_power()
    assert caught.value.reason is BmcErrorReason.PROTOCOL_ERROR


def test_power_cycle_restarts_when_on_and_powers_on_when_off(fish: FakeRedfish) -> None:
    driver().power_cycle()
    assert fish.resets == ["on"] and fish.power == "On"
    driver().power_cycle()
    assert fish.resets == ["on", "reset"]


def test_boot_device_maps_to_pyghmi_names(fish: FakeRedfish) -> None:
    driver().set_boot_device(BootDevice.PXE)
    assert fish.boot == ("network", True)
    driver().set_boot_device(BootDevice.DISK, persistent=False)
    assert fish.boot == ("hd", False)


def test_tls_modes_choose_the_right_callback(fish: FakeRedfish) -> None:
    driver(verify_tls=True).get_power()
    assert fish.verify is None  # pyghmi's own verification against the system trust store
    driver(verify_tls=False).get_power()
    assert callable(fish.verify) and fish.verify(b"anything")


@pytest.mark.parametrize(
    ("login_error", "reason"),
    [
        (PyghmiException("Access Denied"), BmcErrorReason.CREDENTIALS_REJECTED),
        (RedfishError("nope", msgid="Base.1.0.InsufficientPrivilege"), BmcErrorReason.CREDENTIALS_REJECTED),
        (ssl.SSLCertVerificationError("certificate verify failed"), BmcErrorReason.TLS_VERIFICATION_FAILED),
        (CertificateRejected("not from our CA"), BmcErrorReason.TLS_VERIFICATION_FAILED),
        (ssl.SSLError("wrong version number"), BmcErrorReason.PROTOCOL_ERROR),
        (ConnectionRefusedError(111, "Connection refused"), BmcErrorReason.UNREACHABLE),
        (TimeoutError("timed out"), BmcErrorReason.UNREACHABLE),
        (http.client.RemoteDisconnected("closed"), BmcErrorReason.PROTOCOL_ERROR),
        (PyghmiException("Redfish not ready"), BmcErrorReason.PROTOCOL_ERROR),
        (KeyError("Members"), BmcErrorReason.PROTOCOL_ERROR),
    ],
)
def test_login_failures_are_classified(
    fish: FakeRedfish, login_error: BaseException, reason: BmcErrorReason
) -> None:
    fish.login_error = login_error
    with pytest.raises(BmcError) as caught:
        driver().get_power()
    assert caught.value.reason is reason


@pytest.mark.parametrize(("status", "reason"), [(401, "CredentialsRejected"), (404, "BMCProtocolError")])
def test_a_system_pyghmi_could_not_resolve_is_explained(fish: FakeRedfish, status: int, reason: str) -> None:
    fish.system_found, fish.probe_status = False, status
    with pytest.raises(BmcError) as caught:
        driver().get_power()
    assert caught.value.reason == reason


def test_errors_after_login(fish: FakeRedfish) -> None:
    drv = driver()
    drv.get_power()
    fish.errors["get_power"] = TimeoutError("timed out")
    with pytest.raises(BmcError) as caught:
        drv.get_power()
    assert caught.value.reason is BmcErrorReason.TIMEOUT
    fish.errors["set_power"] = RedfishError("Reset not allowed", msgid="Base.1.0.ActionNotSupported")
    with pytest.raises(BmcError) as caught:
        drv.set_power(PowerState.ON)
    assert caught.value.reason is BmcErrorReason.OPERATION_FAILED
    # An ambiguous error whose probe says 401: the password was changed under us.
    fish.errors["get_power"], fish.probe_status = PyghmiException("/redfish/v1/Systems/1:<html>"), 401
    with pytest.raises(BmcError) as caught:
        drv.get_power()
    assert caught.value.reason is BmcErrorReason.CREDENTIALS_REJECTED


def test_password_never_leaks_from_error_paths(fish: FakeRedfish, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    raised: list[BaseException] = []
    for failure in (
        PyghmiException(f"Access Denied for admin:{PASSWORD}"),
        RedfishError(f"echoed {PASSWORD}", msgid="Base.1.0.GeneralError"),
        ssl.SSLError(f"odd {PASSWORD}"),
        OSError(113, f"no route {PASSWORD}"),
        ValueError(PASSWORD),
    ):
        fish.login_error = failure
        with pytest.raises(BmcError) as caught:
            driver().get_power()
        raised.append(caught.value)
    for error in raised:
        chain: BaseException | None = error
        while chain is not None:
            assert PASSWORD not in f"{chain} {chain!r} {chain.args!r}"
            chain = chain.__cause__ or chain.__context__
    for record in caplog.records:
        assert PASSWORD not in record.getMessage()


# -- TrustedCAVerifier -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs() -> LabCertificates:
    return LabCertificates(hosts=("127.0.0.1", "localhost"))


def test_ca_verifier_accepts_a_certificate_from_the_bundle_for_the_dialled_host(
    certs: LabCertificates,
) -> None:
    assert TrustedCAVerifier(certs.ca_pem, "127.0.0.1")(certs.cert_der)
    assert TrustedCAVerifier(certs.ca_pem, "localhost")(certs.cert_der)


def test_ca_verifier_rejects_another_host_name(certs: LabCertificates) -> None:
    with pytest.raises(CertificateRejected):
        TrustedCAVerifier(certs.ca_pem, "bmc.example.com")(certs.cert_der)


def test_ca_verifier_rejects_a_certificate_from_another_ca(certs: LabCertificates) -> None:
    other = LabCertificates(hosts=("127.0.0.1",))
    with pytest.raises(CertificateRejected):
        TrustedCAVerifier(certs.ca_pem, "127.0.0.1")(other.cert_der)
