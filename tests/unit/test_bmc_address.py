"""The BMC address parser and the CRD pattern accept exactly the same addresses."""

from __future__ import annotations

import ipaddress
import re

import pytest

from capi_provider.bmc.address import BMC_ADDRESS_PATTERN, BmcAddress, parse_bmc_address

GOOD: list[tuple[str, BmcAddress]] = [
    ("ipmi://10.0.0.1", BmcAddress("ipmi", "10.0.0.1", 623, None, False)),
    ("ipmi://10.0.0.1:6230", BmcAddress("ipmi", "10.0.0.1", 6230, None, False)),
    ("10.0.0.1", BmcAddress("ipmi", "10.0.0.1", 623, None, False)),
    ("bmc-01.rack2.example.com:1623", BmcAddress("ipmi", "bmc-01.rack2.example.com", 1623, None, False)),
    ("node1", BmcAddress("ipmi", "node1", 623, None, False)),
    ("ipmi://127.0.0.1:65535", BmcAddress("ipmi", "127.0.0.1", 65535, None, False)),
    ("ipmi://[fd00::5]", BmcAddress("ipmi", "fd00::5", 623, None, False)),
    ("[fe80::1]:624", BmcAddress("ipmi", "fe80::1", 624, None, False)),
    ("ipmi://[::ffff:10.0.0.1]:623", BmcAddress("ipmi", "::ffff:10.0.0.1", 623, None, False)),
    (
        "redfish://10.0.0.1/redfish/v1/Systems/1",
        BmcAddress("redfish", "10.0.0.1", 443, "/redfish/v1/Systems/1", True),
    ),
    (
        "redfish+https://bmc.example.com:8443/redfish/v1/Systems/System.Embedded.1",
        BmcAddress("redfish", "bmc.example.com", 8443, "/redfish/v1/Systems/System.Embedded.1", True),
    ),
    (
        "redfish+http://10.0.0.1/redfish/v1/Systems/1",
        BmcAddress("redfish", "10.0.0.1", 80, "/redfish/v1/Systems/1", False),
    ),
    (
        "redfish+http://10.0.0.1:8000/redfish/v1/Systems/abc-123/",
        BmcAddress("redfish", "10.0.0.1", 8000, "/redfish/v1/Systems/abc-123", False),
    ),
    (
        "redfish://[2001:db8::1]:443/redfish/v1/Systems/1",
        BmcAddress("redfish", "2001:db8::1", 443, "/redfish/v1/Systems/1", True),
    ),
]

BAD = [
    "",
    "ipmi://",
    "ipmi://10.0.0.1:0",
    "ipmi://10.0.0.1:65536",
    "ipmi://10.0.0.1:",
    "ipmi://10.0.0.1:623x",
    "ipmi://10.0.0.300",
    "ipmi://fe80::1",
    "fe80::1",
    "ipmi://[fe80::1",
    "ipmi://[fe80:::1]",
    "ipmi://[12345::1]",
    "ipmi://[1:2:3:4:5:6:7:8:9]",
    "ipmi://admin:secret@10.0.0.1",
    "redfish://admin:secret@10.0.0.1/redfish/v1/Systems/1",
    "ipmi://10.0.0.1/path",
    "IPMI://10.0.0.1",
    "http://10.0.0.1",
    "idrac://10.0.0.1",
    "redfish://10.0.0.1",
    "redfish://10.0.0.1/redfish/v1/Systems/",
    "redfish://10.0.0.1/redfish/v1/Systems/1/Actions",
    "redfish://10.0.0.1/redfish/v1/Systems/1?x=y",
    "redfish://10.0.0.1/redfish/v1/Managers/1",
    "redfish+ftp://10.0.0.1/redfish/v1/Systems/1",
    "ipmi://-bad.example.com",
    "ipmi://bmc_01",
    " ipmi://10.0.0.1",
    "ipmi://10.0.0.1 ",
]


@pytest.mark.parametrize(("text", "expected"), GOOD, ids=[g[0] for g in GOOD])
def test_good_addresses_parse_and_match_the_crd_pattern(text: str, expected: BmcAddress) -> None:
    assert parse_bmc_address(text) == expected
    assert re.search(BMC_ADDRESS_PATTERN, text), "the API server would reject an address the provider accepts"


@pytest.mark.parametrize("text", BAD)
def test_bad_addresses_are_rejected_by_parser_and_crd_pattern(text: str) -> None:
    with pytest.raises(ValueError, match="accepted forms"):
        parse_bmc_address(text)
    assert not re.search(BMC_ADDRESS_PATTERN, text), (
        "the API server would accept an address the provider rejects"
    )


def test_credentials_in_the_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError) as caught:
        parse_bmc_address("ipmi://admin:Hunter2-xyzzy@10.0.0.1")
    assert "Secret" in str(caught.value)
    assert "Hunter2-xyzzy" not in str(caught.value)
    assert "admin" not in str(caught.value)


def test_rejections_never_quote_the_input() -> None:
    with pytest.raises(ValueError) as caught:
        parse_bmc_address("ipmi://10.0.0.1/?password=Hunter2-xyzzy")
    assert "Hunter2-xyzzy" not in str(caught.value)


def test_ipv6_hosts_come_back_without_brackets_and_valid() -> None:
    for text, expected in GOOD:
        if ":" in expected.host:
            assert ipaddress.IPv6Address(parse_bmc_address(text).host)


def test_pattern_is_anchored_and_free_of_syntax_re2_lacks() -> None:
    # The API server evaluates OpenAPI patterns with Go's RE2 as unanchored searches.
    assert BMC_ADDRESS_PATTERN.startswith("^") and BMC_ADDRESS_PATTERN.endswith("$")
    for construct in ("(?=", "(?!", "(?<=", "(?<!", "(?P=", "\\1"):
        assert construct not in BMC_ADDRESS_PATTERN


def test_address_renders_back_to_an_equivalent_address() -> None:
    for text, expected in GOOD:
        assert parse_bmc_address(str(expected)) == expected, text
