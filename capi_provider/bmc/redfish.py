"""Redfish backend on pyghmi's `pyghmi.redfish.command.Command` (pyghmi 1.6.19).

What we rely on in pyghmi, and the decisions that follow:

* HTTPS only: pyghmi's web client always wraps the socket in TLS, so `redfish+http://` is refused up front
  with a clear `BMCProtocolError` rather than failing obscurely at the first request.
* Certificate checking. pyghmi has two modes: with no `verifycallback` it verifies the chain against the
  system trust store and checks the host name (`ssl.create_default_context` rules); with a callback it
  skips all verification and hands the callback the peer's leaf certificate (DER) instead. So:
  - `verify_tls=True`, no CA bundle: no callback, pyghmi's standard verification;
  - `verify_tls=True` with a CA bundle: `TrustedCAVerifier`, which checks the leaf against the bundle
    (signature chain, validity period, name = the host we dialled) with `cryptography.x509.verification`.
    Only the leaf reaches the callback, so a chain through intermediates verifies only if those
    intermediates are in the bundle too;
  - `verify_tls=False` (the host says `disableCertificateVerification`): a callback that accepts anything.
* `Command()` talks to the BMC in its constructor (service root, optional session login, manager and system
  discovery). Given the system path, it does not list Systems. A wrong password shows up there as
  "Access Denied" (from listing Managers) or, on BMCs without Managers, as a Command whose system URL is
  None; we check for the latter and probe the system URL to say which.
* Timeouts: the web client's sockets default to 60 s and `Command()` has no way to change that for its own
  constructor; we set the per-request timeout right after, and bound every operation with `BoundedCaller`.
* Sessions: on BMCs with a SessionService pyghmi logs in with a POST and never deletes that session. We
  subclass `Command` to keep the session's URI, and `close()` deletes it (see `_session_tracking_command`).

`set_power` asks for the state and polls (uncached GETs) until the BMC reports it, within the timeout: many
BMCs acknowledge ComputerSystem.Reset seconds before the state changes.
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

from capi_provider.bmc._bounded import BoundedCaller
from capi_provider.bmc.address import BmcAddress
from capi_provider.bmc.base import (
    BmcCredentials,
    BmcError,
    BmcErrorReason,
    BootDevice,
    PowerState,
    redact,
    wait_for_power,
)

LOG = logging.getLogger(__name__)
T = TypeVar("T")

POLL_INTERVAL = 0.5
_BOOT_DEVICE = {BootDevice.DISK: "hd", BootDevice.PXE: "network"}
# Transitional Redfish power states report the state the machine has not left yet.
_POWER = {
    "on": PowerState.ON,
    "off": PowerState.OFF,
    "poweringon": PowerState.OFF,
    "poweringoff": PowerState.ON,
    "paused": PowerState.ON,
}
_CREDENTIAL_MARKERS = (
    "access denied",
    "accessdenied",
    "insufficientprivilege",
    "novalidsession",
    "unauthorized",
)


class CertificateRejected(Exception):
    """Raised by our verify callbacks; pyghmi closes the socket and lets it propagate."""


class TrustedCAVerifier:
    """pyghmi `verifycallback`: accept a leaf certificate only if it chains to the given CAs for `host`."""

    def __init__(self, ca_pem: bytes, host: str) -> None:
        from cryptography import x509
        from cryptography.x509 import verification

        roots = x509.load_pem_x509_certificates(ca_pem)
        subject: verification.IPAddress | verification.DNSName
        try:
            subject = verification.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            subject = verification.DNSName(host)
        self._verifier = (
            verification.PolicyBuilder().store(verification.Store(roots)).build_server_verifier(subject)
        )
        self._load = x509.load_der_x509_certificate
        self._error = verification.VerificationError

    @classmethod
    def from_file(cls, path: str, host: str) -> TrustedCAVerifier:
        with open(path, "rb") as handle:
            return cls(handle.read(), host)

    def __call__(self, der: bytes) -> bool:
        try:
            self._verifier.verify(self._load(der), [])
        except self._error as exc:
            raise CertificateRejected(
                f"certificate does not chain to the configured CA bundle: {exc}"
            ) from None
        except ValueError as exc:
            raise CertificateRejected(f"unreadable server certificate: {exc}") from None
        return True


def _accept_any_certificate(der: bytes) -> bool:
    return True


_COMMAND_CLASS: type | None = None


def _session_tracking_command() -> type:
    """pyghmi's Redfish `Command`, remembering the session it opens so that `close()` can delete it.

    pyghmi logs in through the SessionService when the BMC has one, keeps only the X-Auth-Token and never
    deletes the session, which then lives on the BMC until it idles out (commonly 30 min). BMCs allow few
    concurrent sessions (often 8-16) and the controller opens a driver per operation, so it would exhaust
    them. `_get_session_token` is pyghmi's only hook for this; ours does the same login and also keeps the
    session's URI from the Location header. Built lazily so importing this module does not import pyghmi.
    """
    global _COMMAND_CLASS
    if _COMMAND_CLASS is not None:
        return _COMMAND_CLASS
    from pyghmi.redfish.command import Command

    class SessionTrackingCommand(Command):  # type: ignore[misc]
        session_uri: str | None = None

        def _get_session_token(self, wc: Any) -> None:
            username, password = self.username, self.password
            if isinstance(username, bytes):
                username = username.decode()
            if isinstance(password, bytes):
                password = password.decode()
            rsp = wc.grab_rsp(
                "/redfish/v1/SessionService/Sessions", {"UserName": username, "Password": password}
            )
            rsp.read()
            self.xauthtoken = rsp.getheader("X-Auth-Token")
            if not self.xauthtoken:
                return  # refused or unsupported: stay on HTTP Basic
            location = rsp.getheader("Location")
            self.session_uri = urllib.parse.urlsplit(location).path if location else None
            for client in (wc, self.wc):  # the request's client and the one later requests are cloned from
                client.stdheaders.pop("Authorization", None)
                client.stdheaders["X-Auth-Token"] = self.xauthtoken

    _COMMAND_CLASS = SessionTrackingCommand
    return SessionTrackingCommand


class RedfishDriver:
    """One Redfish ComputerSystem. One operation at a time (see BoundedCaller)."""

    def __init__(
        self,
        address: BmcAddress,
        creds: BmcCredentials,
        *,
        verify_tls: bool,
        timeout: float,
        ca_bundle: str | bytes | None = None,
    ) -> None:
        if address.scheme != "redfish" or address.system_path is None:
            raise ValueError("RedfishDriver needs a redfish:// address with a system path")
        host = f"[{address.host}]" if ":" in address.host else address.host
        self._describe = f"{'https' if address.tls else 'http'}://{host}:{address.port}{address.system_path}"
        if not address.tls:
            raise BmcError(
                f"{self._describe}: plain-HTTP Redfish (redfish+http://) is not supported by this backend, "
                "whose Redfish client speaks HTTPS only; use redfish:// or redfish+https://",
                reason=BmcErrorReason.PROTOCOL_ERROR,
            )
        self._address = address
        self._creds = creds
        self._timeout = timeout
        self._verify: Callable[[bytes], bool] | None
        if not verify_tls:
            self._verify = _accept_any_certificate
        elif ca_bundle is not None:
            where = "from the host's caBundleName" if isinstance(ca_bundle, bytes) else ca_bundle
            try:
                self._verify = (
                    TrustedCAVerifier(ca_bundle, address.host)
                    if isinstance(ca_bundle, bytes)
                    else TrustedCAVerifier.from_file(ca_bundle, address.host)
                )
            except (OSError, ValueError) as exc:
                raise BmcError(
                    f"{self._describe}: cannot use CA bundle {where}: {exc}",
                    reason=BmcErrorReason.TLS_VERIFICATION_FAILED,
                ) from None
        else:
            self._verify = None  # pyghmi's own verification against the system trust store
        self._caller = BoundedCaller(self._describe)
        self._cmd: Any = None
        self._closed = False
        self._deadline = 0.0

    def __repr__(self) -> str:
        return f"RedfishDriver({self._describe}, user={self._creds.username!r})"

    # -- public API -------------------------------------------------------------------------------------

    def get_power(self) -> PowerState:
        return self._op("get power", self._read_power)

    def set_power(self, state: PowerState) -> None:
        state = PowerState(state)

        def body() -> None:
            if self._read_power() is state:
                return
            self._call("power " + state.value, lambda: self._command().set_power(state.value))
            self._wait_for(state)

        self._op(f"power {state.value}", body)

    def power_cycle(self) -> None:
        def body() -> None:
            if self._read_power() is PowerState.OFF:
                self._call("power on", lambda: self._command().set_power("on"))
                self._wait_for(PowerState.ON)
                return
            try:
                self._call("reset", lambda: self._command().set_power("reset"))
            except BmcError as exc:
                # Refused because it went off since our read? Then a cycle means "on".
                if exc.reason is not BmcErrorReason.OPERATION_FAILED or self._read_power() is PowerState.ON:
                    raise
                self._call("power on", lambda: self._command().set_power("on"))
                self._wait_for(PowerState.ON)

        self._op("power cycle", body)

    def set_boot_device(self, dev: BootDevice, persistent: bool = True) -> None:
        device = _BOOT_DEVICE[BootDevice(dev)]
        self._op(
            f"set boot device {dev.value}",
            lambda: self._call(
                "set boot device", lambda: self._command().set_bootdev(device, persist=persistent)
            ),
        )

    def close(self) -> None:
        """Delete the Redfish session we opened, if any (best effort, bounded). Idempotent."""
        self._closed = True
        cmd, self._cmd = self._cmd, None
        uri = getattr(cmd, "session_uri", None)
        if cmd is None or not uri or not cmd.xauthtoken or self._caller.busy:
            return
        try:
            _body, status = self._caller.run(
                "log out",
                lambda: cmd.wc.grab_json_response_with_status(uri, method="DELETE"),
                min(self._timeout, 5.0),
            )
            if status >= 300:
                LOG.debug("%s: deleting the Redfish session answered HTTP %s", self._describe, status)
        except Exception as exc:  # the BMC will expire it; nothing else to do
            LOG.debug("%s: logout failed: %s", self._describe, redact(repr(exc), self._creds.password))

    # -- plumbing ---------------------------------------------------------------------------------------

    def _op(self, op: str, body: Callable[[], T]) -> T:
        if self._closed:
            raise BmcError(
                f"{op} on {self._describe}: driver is closed", reason=BmcErrorReason.PROTOCOL_ERROR
            )
        deadline = time.monotonic() + self._timeout

        def guarded() -> T:
            self._deadline = deadline
            return body()

        return self._caller.run(op, guarded, self._timeout)

    def _command(self) -> Any:
        if self._cmd is None:
            self._cmd = self._call("log in", self._login)
        return self._cmd

    def _login(self) -> Any:
        cmd = _session_tracking_command()(
            self._address.host,
            self._creds.username,
            self._creds.password,
            self._verify,
            sysurl=self._address.system_path,
            port=self._address.port,
        )
        cmd.wc.mytimeout = max(1.0, self._timeout)  # later requests: bounded sockets
        if not cmd.sysurl or not cmd.powerurl:
            self._explain_missing_system(cmd)
        return cmd

    def _explain_missing_system(self, cmd: Any) -> None:
        _body, status = cmd.wc.grab_json_response_with_status(self._address.system_path)
        if status in (401, 403):
            raise BmcError(
                f"{self._describe}: credentials rejected (HTTP {status})",
                reason=BmcErrorReason.CREDENTIALS_REJECTED,
            )
        if status == 404:
            raise BmcError(
                f"{self._describe}: the Redfish service has no such system",
                reason=BmcErrorReason.PROTOCOL_ERROR,
            )
        raise BmcError(
            f"{self._describe}: system resource unusable (HTTP {status}, no ComputerSystem.Reset action)",
            reason=BmcErrorReason.PROTOCOL_ERROR,
        )

    def _read_power(self) -> PowerState:
        info = self._call("get power", lambda: self._command().get_power())
        raw = str(info.get("powerstate", "")) if isinstance(info, dict) else ""
        state = _POWER.get(raw.lower())
        if state is None:
            raise BmcError(
                f"{self._describe} reports unknown PowerState {raw!r}", reason=BmcErrorReason.PROTOCOL_ERROR
            )
        return state

    def _wait_for(self, state: PowerState) -> None:
        wait_for_power(self._read_power, state, self._deadline, self._describe, POLL_INTERVAL)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Call into pyghmi and translate whatever comes out of it into BmcError.

        The BmcError is raised outside the `except` block so that it carries no `__context__`: the upstream
        exception may quote more than we want to keep (we only repeat its text after `redact`).
        """
        from pyghmi import exceptions as pyghmi_exc

        logging_in = what == "log in"
        try:
            return fn()
        except BmcError:
            raise
        except (CertificateRejected, pyghmi_exc.UnrecognizedCertificate, ssl.SSLCertVerificationError) as exc:
            error = self._error(f"TLS certificate not trusted: {exc}", BmcErrorReason.TLS_VERIFICATION_FAILED)
        except ssl.SSLError as exc:
            error = self._error(
                f"TLS handshake failed during {what} (is it an HTTPS port?): {exc}",
                BmcErrorReason.PROTOCOL_ERROR,
            )
        except socket.gaierror:
            error = self._error("host name does not resolve", BmcErrorReason.UNREACHABLE)
        except TimeoutError:
            # No answer while connecting means we never reached it; later it means it stopped answering.
            reason = BmcErrorReason.UNREACHABLE if logging_in else BmcErrorReason.TIMEOUT
            error = self._error(f"{what} timed out", reason)
        except http.client.HTTPException as exc:
            error = self._error(
                f"malformed HTTP during {what}: {type(exc).__name__}", BmcErrorReason.PROTOCOL_ERROR
            )
        except OSError as exc:
            error = self._error(
                f"network error during {what}: {exc.strerror or type(exc).__name__}",
                BmcErrorReason.UNREACHABLE,
            )
        except pyghmi_exc.PyghmiException as exc:
            error = self._classify(what, exc)
        except Exception as exc:
            error = self._error(
                f"unexpected Redfish response during {what} ({type(exc).__name__}: {exc})",
                BmcErrorReason.PROTOCOL_ERROR,
            )
        raise error

    def _classify(self, what: str, exc: Exception) -> BmcError:
        text = str(exc) or type(exc).__name__
        msgid = str(getattr(exc, "msgid", "") or "")
        if any(marker in f"{text} {msgid}".lower() for marker in _CREDENTIAL_MARKERS):
            return self._error(f"{what}: credentials rejected ({text})", BmcErrorReason.CREDENTIALS_REJECTED)
        status = self._probe_status()
        if status in (401, 403):
            return self._error(
                f"{what}: credentials rejected (HTTP {status})", BmcErrorReason.CREDENTIALS_REJECTED
            )
        if type(exc).__name__ == "RedfishError":
            return self._error(f"{what} refused: {text} [{msgid}]", BmcErrorReason.OPERATION_FAILED)
        return self._error(f"{what} failed: {text}", BmcErrorReason.PROTOCOL_ERROR)

    def _probe_status(self) -> int | None:
        """Ask for the system resource to learn the HTTP status behind an ambiguous pyghmi error."""
        if self._cmd is None:
            return None
        try:
            return int(self._cmd.wc.grab_json_response_with_status(self._address.system_path)[1])
        except Exception:
            return None

    def _error(self, text: str, reason: BmcErrorReason) -> BmcError:
        return BmcError(f"{self._describe}: {redact(text, self._creds.password)}", reason=reason)
