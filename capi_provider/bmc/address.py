"""Parse a BareMetalHost `spec.bmc.address` into a typed address.

Accepted forms (schemes are lower case):

    ipmi://HOST[:PORT]                                   IPMI over LAN (RMCP+), default port 623
    HOST[:PORT]                                          same as ipmi://
    redfish://HOST[:PORT]/redfish/v1/Systems/ID          Redfish over HTTPS, default port 443
    redfish+https://HOST[:PORT]/redfish/v1/Systems/ID    same as redfish://
    redfish+http://HOST[:PORT]/redfish/v1/Systems/ID     parsed only to refuse it clearly: the CRD and the
                                                         driver reject plain HTTP (the BMC password would
                                                         cross the network in clear)

HOST is a DNS name, a dotted IPv4 address or a bracketed IPv6 address (`[fd00::5]`).

The same building blocks produce `BMC_ADDRESS_PATTERN`, the regular expression the CRD uses so that the API
server rejects a bad address at admission time. It only uses syntax that Python `re` and Go RE2 (what the
API server evaluates OpenAPI `pattern` with) read the same way: no look-around, no backreferences, explicit
`^...$` anchors because RE2 patterns are unanchored searches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"

# RFC 3986 IPv6address, spelled out because neither engine has an "IPv6" class.
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6 = (
    "(?:"
    + "|".join(
        [
            rf"(?:{_H16}:){{6}}{_LS32}",
            rf"::(?:{_H16}:){{5}}{_LS32}",
            rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
            rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
            rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
            rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
            rf"(?:(?:{_H16}:){{0,6}}{_H16})?::",
        ]
    )
    + ")"
)

# DNS name: LDH labels; the last label must start with a letter so that "10.0.0.300" is not a host name.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TOP_LABEL = r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = rf"(?:{_LABEL}\.)*{_TOP_LABEL}"

_HOST = rf"(?:{_HOSTNAME}|{_IPV4}|\[{_IPV6}\])"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
_AUTHORITY = rf"{_HOST}(?::{_PORT})?"
# A Redfish resource Id: unreserved characters plus the few sub-delims real BMCs use ("System.Embedded.1").
_SYSTEM_ID = r"[A-Za-z0-9._~%:@+-]+"
_SYSTEMS_PATH = rf"/redfish/v1/Systems/{_SYSTEM_ID}/?"

BMC_ADDRESS_PATTERN = rf"^(?:(?:ipmi://)?{_AUTHORITY}|redfish(?:\+https?)?://{_AUTHORITY}{_SYSTEMS_PATH})$"

ACCEPTED_FORMS = (
    "ipmi://HOST[:PORT], HOST[:PORT], redfish://HOST[:PORT]/redfish/v1/Systems/ID, "
    "or redfish+https://HOST[:PORT]/redfish/v1/Systems/ID (HOST: DNS name, IPv4, or [IPv6] in brackets)"
)

_AUTHORITY_RE = re.compile(rf"(?P<host>{_HOST})(?::(?P<port>{_PORT}))?")
_SYSTEMS_PATH_RE = re.compile(_SYSTEMS_PATH)

_REDFISH_SCHEMES = {"redfish": True, "redfish+https": True, "redfish+http": False}  # scheme -> TLS
IPMI_DEFAULT_PORT = 623
HTTPS_DEFAULT_PORT = 443
HTTP_DEFAULT_PORT = 80


@dataclass(frozen=True)
class BmcAddress:
    scheme: Literal["ipmi", "redfish"]
    host: str  # IPv6 without brackets, ready for getaddrinfo
    port: int
    system_path: str | None  # "/redfish/v1/Systems/<id>" for Redfish, None for IPMI
    tls: bool  # Redfish over HTTPS; always False for IPMI (RMCP+ has its own crypto)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme == "ipmi":
            return f"ipmi://{host}:{self.port}"
        scheme = "redfish+https" if self.tls else "redfish+http"
        return f"{scheme}://{host}:{self.port}{self.system_path}"


def _invalid(problem: str) -> ValueError:
    # Never quote the rejected input: a mistyped address may carry a password.
    return ValueError(f"invalid BMC address: {problem}; accepted forms: {ACCEPTED_FORMS}")


def parse_bmc_address(value: str) -> BmcAddress:
    """Parse `spec.bmc.address`; raise ValueError (without echoing the input) for anything else."""
    if not isinstance(value, str) or not value:
        raise _invalid("empty")
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "ipmi", value
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        raise _invalid("it contains user information (user:password@); credentials belong in the Secret")
    if scheme != "ipmi" and scheme not in _REDFISH_SCHEMES:
        raise _invalid("unsupported scheme")

    match = _AUTHORITY_RE.fullmatch(authority)
    if match is None:
        raise _invalid("host or port is malformed (IPv6 addresses need brackets)")
    host = match["host"].removeprefix("[").removesuffix("]")

    if scheme == "ipmi":
        if slash:
            raise _invalid("an IPMI address has no path")
        port = int(match["port"]) if match["port"] else IPMI_DEFAULT_PORT
        return BmcAddress(scheme="ipmi", host=host, port=port, system_path=None, tls=False)

    full_path = slash + path
    if not _SYSTEMS_PATH_RE.fullmatch(full_path):
        raise _invalid("a Redfish address must end in /redfish/v1/Systems/<id>")
    tls = _REDFISH_SCHEMES[scheme]
    default_port = HTTPS_DEFAULT_PORT if tls else HTTP_DEFAULT_PORT
    port = int(match["port"]) if match["port"] else default_port
    return BmcAddress(scheme="redfish", host=host, port=port, system_path=full_path.rstrip("/"), tls=tls)
