"""Credentials, errors and driver selection."""

from __future__ import annotations

import pytest

from capi_provider.bmc import (
    BmcCredentials,
    BmcError,
    BmcErrorReason,
    BootDevice,
    PowerState,
    open_driver,
    parse_bmc_address,
)
from capi_provider.bmc.ipmi import IpmiDriver
from capi_provider.bmc.redfish import RedfishDriver

PASSWORD = "Pa55-distinctive-7f3a"


def test_credentials_never_show_the_password() -> None:
    creds = BmcCredentials("admin", PASSWORD)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds]), repr({"c": creds})):
        assert PASSWORD not in text
        assert "admin" in text
    assert creds.password == PASSWORD


def test_bmc_error_carries_a_machine_readable_reason() -> None:
    error = BmcError("bmc-1 did not answer", reason="BMCTimeout")
    assert error.reason is BmcErrorReason.TIMEOUT
    assert error.reason == "BMCTimeout"
    assert str(error) == "BMCTimeout: bmc-1 did not answer"
    assert error.retryable
    assert not BmcError("x", reason=BmcErrorReason.CREDENTIALS_REJECTED).retryable
    with pytest.raises(ValueError):
        BmcError("x", reason="SomethingElse")


def test_vocabulary_values_are_the_api_strings() -> None:
    assert [p.value for p in PowerState] == ["on", "off"]
    assert [d.value for d in BootDevice] == ["disk", "pxe"]
    assert {r.value for r in BmcErrorReason} >= {
        "BMCUnreachable",
        "CredentialsRejected",
        "BMCTimeout",
        "BMCProtocolError",
        "BMCOperationFailed",
    }


def test_open_driver_picks_the_backend_by_scheme_without_network() -> None:
    creds = BmcCredentials("admin", PASSWORD)
    ipmi = open_driver(parse_bmc_address("ipmi://192.0.2.1"), creds, verify_tls=True, timeout=5)
    redfish = open_driver(
        parse_bmc_address("redfish://192.0.2.1/redfish/v1/Systems/1"), creds, verify_tls=True, timeout=5
    )
    assert isinstance(ipmi, IpmiDriver)
    assert isinstance(redfish, RedfishDriver)
    assert PASSWORD not in repr(ipmi) and PASSWORD not in repr(redfish)


def test_plain_http_redfish_is_refused_clearly() -> None:
    with pytest.raises(BmcError) as caught:
        open_driver(
            parse_bmc_address("redfish+http://192.0.2.1/redfish/v1/Systems/1"),
            BmcCredentials("admin", PASSWORD),
            verify_tls=True,
            timeout=5,
        )
    assert caught.value.reason is BmcErrorReason.PROTOCOL_ERROR
    assert "plain-HTTP Redfish" in str(caught.value)


def test_unreadable_ca_bundle_is_a_tls_error(tmp_path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate")
    with pytest.raises(BmcError) as caught:
        open_driver(
            parse_bmc_address("redfish://192.0.2.1/redfish/v1/Systems/1"),
            BmcCredentials("admin", PASSWORD),
            verify_tls=True,
            timeout=5,
            ca_bundle=str(bundle),
        )
    assert caught.value.reason is BmcErrorReason.TLS_VERIFICATION_FAILED
