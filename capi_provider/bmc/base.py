"""What every BMC backend shares: power/boot vocabulary, credentials, errors and the driver contract.

The controller only sees this module and `open_driver`; which wire protocol sits behind a host's BMC is
decided once, from the parsed address.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from capi_provider.bmc.address import BmcAddress


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"


class BootDevice(enum.StrEnum):
    DISK = "disk"
    PXE = "pxe"


@dataclass(frozen=True)
class BmcCredentials:
    """Username and password for a BMC, as read from the host's credentials Secret.

    The password is excluded from the generated repr and from equality-free printing on purpose: these objects
    end up in log lines, exception messages and debugger output.
    """

    username: str
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"BmcCredentials(username={self.username!r}, password=<redacted>)"

    __repr__ = __str__


class BmcErrorReason(enum.StrEnum):
    """Short CamelCase reasons, meant to be copied verbatim into a condition's `reason`."""

    UNREACHABLE = "BMCUnreachable"  # nothing answered (no route, refused, silent)
    CREDENTIALS_REJECTED = "CredentialsRejected"  # the BMC answered and refused the username/password
    TIMEOUT = "BMCTimeout"  # the BMC answered at some point but this operation did not finish in time
    PROTOCOL_ERROR = "BMCProtocolError"  # we could not make sense of the conversation
    OPERATION_FAILED = "BMCOperationFailed"  # the BMC understood and refused/failed the request
    TLS_VERIFICATION_FAILED = "TLSVerificationFailed"  # HTTPS peer not trusted (Redfish only)


class BmcError(Exception):
    """A BMC operation failed. `reason` is machine-readable, the message is for humans.

    Messages are built by our code from host names and upstream error texts that have been passed through
    `redact`; they must never contain a password.
    """

    def __init__(self, message: str, *, reason: BmcErrorReason | str) -> None:
        super().__init__(message)
        self.reason = BmcErrorReason(reason)
        self.message = message

    @property
    def retryable(self) -> bool:
        """False when retrying with the same inputs cannot help (the credentials Secret must change first)."""
        return self.reason is not BmcErrorReason.CREDENTIALS_REJECTED

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"

    def __repr__(self) -> str:
        return f"BmcError(reason={self.reason.value!r}, message={self.message!r})"


def redact(text: str, *secrets: str) -> str:
    """Remove every occurrence of the given secrets from an upstream error text before we repeat it."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


class BmcDriver(Protocol):
    """One BMC, blocking calls. Every call returns or raises `BmcError` within the driver's timeout."""

    def get_power(self) -> PowerState: ...

    def set_power(self, state: PowerState) -> None:
        """Request the state and return once the BMC reports it (idempotent: no-op if already there)."""
        ...

    def power_cycle(self) -> None:
        """Hard reboot if on; power on if off (so the next boot device takes effect either way)."""
        ...

    def set_boot_device(self, dev: BootDevice, persistent: bool = True) -> None: ...

    def close(self) -> None:
        """Release the BMC session; the driver must not be used afterwards."""
        ...


def open_driver(
    address: BmcAddress,
    creds: BmcCredentials,
    *,
    verify_tls: bool,
    timeout: float,
    ca_bundle: str | bytes | None = None,
) -> BmcDriver:
    """Pick the backend for the address scheme. Nothing is sent to the BMC until the first call.

    `verify_tls`/`ca_bundle` only matter for Redfish: with `ca_bundle` (PEM data, or a PEM file path) the BMC
    certificate must chain to one of those CAs, otherwise to the system trust store.
    """
    # Imported here so that importing the vocabulary above never drags pyghmi's I/O machinery in.
    if address.scheme == "ipmi":
        from capi_provider.bmc.ipmi import IpmiDriver

        return IpmiDriver(address, creds, timeout=timeout)
    from capi_provider.bmc.redfish import RedfishDriver

    return RedfishDriver(address, creds, verify_tls=verify_tls, timeout=timeout, ca_bundle=ca_bundle)


def wait_for_power(
    read: Callable[[], PowerState], state: PowerState, deadline: float, describe: str, interval: float
) -> None:
    """Poll until the BMC reports `state` (BMCs apply power changes late; Redfish ones acknowledge at once and
    act seconds later), or raise BMCTimeout at `deadline` (time.monotonic)."""
    while read() is not state:
        if time.monotonic() + interval >= deadline:
            raise BmcError(
                f"{describe} accepted power {state.value} but still reports otherwise",
                reason=BmcErrorReason.TIMEOUT,
            )
        time.sleep(interval)
