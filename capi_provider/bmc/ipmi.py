"""IPMI-over-LAN (RMCP+) backend on pyghmi's `Command`.

What we rely on in pyghmi 1.6.19 (`pyghmi/ipmi/private/session.py`), and why the code below looks as it does:

* Cipher suites. The client proposes suite 17 (SHA-256) and, only if the BMC answers the RMCP+ Open Session
  Request with a non-zero status, retries once with suite 3 (SHA-1) (`_got_rmcp_response`, `attemptedhash`).
  Suite-3-only BMCs that answer that way work without help from us; a BMC that accepts the SHA-256 proposal
  and then answers in SHA-1 makes pyghmi raise `struct.error` from `_got_rakp2`. We turn any such exception
  into `BMCProtocolError`; we do not pin suite 3 because pyghmi has no knob for it.
* One process-wide I/O thread (`_IOWorker`) owns all client sockets (up to 64 BMCs share one UDP socket) and
  wakes callers; each synchronous call pumps the shared loop itself (`wait_for_rsp`), so packets and retry
  timers of *other* sessions can be processed, and their exceptions raised, in *our* thread. Hence every
  operation runs under `BoundedCaller` and any exception is mapped, never propagated raw.
* Timeouts/retries: a request is retransmitted after 0.5-1 s, then +1 s per retry while below `maxtimeout`
  (2 s during login, 4 s afterwards), then the session re-logs in once (`logontries`) before giving up.
  A silent BMC therefore fails a login after roughly 5 s with the error text "timeout"; a session whose BMC
  stops answering fails with "timeout"/"Session no longer connected". Nothing in that bounds the *whole*
  call, hence our own deadline.
* Session reuse: `Session.__new__` hands back an existing logged-in session for the same (address, user,
  password, Kg), so two `Command`s for one BMC share one session and a new password opens a new one.
  Keepalives only run while some thread pumps the loop, so an idle session may expire on the BMC; pyghmi
  then times out once and re-logs in transparently. `close()` logs the session out; because sessions are
  shared, two drivers must not work on one BMC at once (the runner's per-BMC lock and `BoundedCaller`'s
  per-BMC bookkeeping ensure that).
* A pyghmi bug we work around: a half-open session is filed under the credentials as passed in but
  unfiled under their encoded form, so with `str` credentials a session that dies (logout, BMC reboot,
  timeouts) is handed back to every later `Command` for that BMC and credentials, forever. We pass bytes
  (see `_login`); `test_a_new_driver_works_after_the_previous_one_logged_out` guards it.
* We never call `get_power`/`set_power` on `Command`: both run OEM detection first (`oem_init`: an extra Get
  Device ID round trip and vendor code paths, some of which open HTTPS side channels). Chassis Status and
  Chassis Control are standard and sent raw; `set_bootdev` does not touch OEM code and is used as is.

`set_power` waits (within the timeout) until the BMC reports the requested state, so callers see a finished
transition or a `BMCTimeout`, never a "pending" state they must remember.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
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


def _untangle_pyghmi_locks() -> None:
    """pyghmi 1.6.19 takes its two module locks in opposite orders on two paths: `send_payload` holds
    KEEPALIVE_SESSIONS and then registers the session under WAITING_SESSIONS, while `wait_for_rsp`, handling
    expired requests under WAITING_SESSIONS, retransmits through `send_payload` and wants KEEPALIVE_SESSIONS.
    Once one slow BMC makes retransmits happen while other sessions log in, two threads deadlock and every
    IPMI session of the process hangs behind them (bench: one BMC answering in 10 s froze 200 healthy ones).
    Both are module globals looked up at each use, so making them one reentrant lock removes the inversion.
    """
    from pyghmi.ipmi.private import session

    if session.WAITING_SESSIONS is not session.KEEPALIVE_SESSIONS:
        session.WAITING_SESSIONS = session.KEEPALIVE_SESSIONS


T = TypeVar("T")

# IPMI chassis netfn and commands (IPMI 2.0 spec, section 28).
_NETFN_CHASSIS = 0x00
_CMD_CHASSIS_STATUS = 0x01
_CMD_CHASSIS_CONTROL = 0x02
_CONTROL = {"off": 0x00, "on": 0x01, "cycle": 0x02, "reset": 0x03}
# Completion codes that decide our fallbacks.
_CC_INVALID_COMMAND = 0xC1
_CC_INVALID_DATA = 0xCC
_CC_NOT_IN_PRESENT_STATE = 0xD5
_CC_TIMEOUT = 0xFFFF  # pyghmi's synthetic code for "no response after retries"

_BOOT_DEVICE = {BootDevice.DISK: "hd", BootDevice.PXE: "network"}
POLL_INTERVAL = 0.5

# Texts pyghmi (and the RMCP+ status table it quotes) uses when the BMC refuses who we are.
_CREDENTIAL_MARKERS = (
    "incorrect password",
    "unauthorized name",
    "invalid role",
    "unauthorized role",
    "invalid integrity check value",
    "wrong kg",
    "privelege level",  # sic, pyghmi's spelling when Set Session Privilege Level is refused
    "privilege level",
    "invalid username length",
)
_RESOURCE_MARKERS = ("insufficient resources",)
_TIMEOUT_MARKERS = ("timeout", "no longer connected")
_UNREACHABLE_MARKERS = ("unable to transmit",)


class IpmiDriver:
    """One BMC over RMCP+. Not thread-safe by design: one operation at a time (see BoundedCaller)."""

    def __init__(self, address: BmcAddress, creds: BmcCredentials, *, timeout: float) -> None:
        if address.scheme != "ipmi":
            raise ValueError("IpmiDriver needs an ipmi:// address")
        self._address = address
        self._creds = creds
        self._timeout = timeout
        self._describe = str(address)  # ipmi://host:port, IPv6 in brackets
        self._caller = BoundedCaller(self._describe)
        self._cmd: Any = None  # pyghmi.ipmi.command.Command once logged in
        self._closed = False
        self._deadline = 0.0  # of the operation in progress; read by the power-state polling

    def __repr__(self) -> str:
        return f"IpmiDriver({self._describe}, user={self._creds.username!r})"

    # -- public API -------------------------------------------------------------------------------------

    def get_power(self) -> PowerState:
        return self._op("get power", self._read_power, reconnect=True)

    def set_power(self, state: PowerState) -> None:
        state = PowerState(state)

        def body() -> None:
            if self._read_power() is state:
                return
            self._chassis_control(state.value)
            self._wait_for(state)

        self._op(f"power {state.value}", body, reconnect=True)

    def power_cycle(self) -> None:
        def body() -> None:
            if self._read_power() is PowerState.OFF:
                self._chassis_control("on")
                self._wait_for(PowerState.ON)
                return
            code = self._chassis_control(
                "cycle", accept=(_CC_INVALID_COMMAND, _CC_INVALID_DATA, _CC_NOT_IN_PRESENT_STATE)
            )
            if code in (_CC_INVALID_COMMAND, _CC_INVALID_DATA):
                # Some BMCs (openstack virtualbmc among them) implement hard reset but not power cycle.
                code = self._chassis_control("reset", accept=(_CC_NOT_IN_PRESENT_STATE,))
            if code == _CC_NOT_IN_PRESENT_STATE:
                # It went off between our read and the command: "cycle" then simply means "on".
                self._chassis_control("on")
                self._wait_for(PowerState.ON)

        # No reconnect-and-retry here: repeating a cycle whose reply was lost would reboot twice.
        self._op("power cycle", body, reconnect=False)

    def set_boot_device(self, dev: BootDevice, persistent: bool = True) -> None:
        device = _BOOT_DEVICE[BootDevice(dev)]

        def body() -> None:
            result = self._command().set_bootdev(device, persist=persistent)
            if isinstance(result, dict) and "error" in result:
                raise BmcError(
                    f"{self._describe} refused boot device {device}: {self._clean(result['error'])}",
                    reason=BmcErrorReason.OPERATION_FAILED,
                )

        self._op(f"set boot device {dev.value}", body, reconnect=True)

    def close(self) -> None:
        """Log the session out (best effort, bounded) and drop it."""
        if self._closed:
            return
        self._closed = True
        cmd, self._cmd = self._cmd, None
        if cmd is None or self._caller.busy:
            return
        try:
            self._caller.run("logout", cmd.ipmi_session.logout, min(self._timeout, 5.0))
        except Exception as exc:  # a failed logout only leaves a session for the BMC to expire
            LOG.debug("logout from %s failed: %s", self._describe, self._clean(repr(exc)))

    # -- plumbing ---------------------------------------------------------------------------------------

    def _op(self, op: str, body: Callable[[], T], *, reconnect: bool) -> T:
        if self._closed:
            raise BmcError(
                f"{op} on {self._describe}: driver is closed", reason=BmcErrorReason.PROTOCOL_ERROR
            )
        deadline = time.monotonic() + self._timeout

        def guarded() -> T:
            self._deadline = deadline
            try:
                return body()
            except BmcError as exc:
                if not (reconnect and exc.reason is BmcErrorReason.TIMEOUT and self._session_dropped()):
                    raise
            # The BMC forgot our session (reboot, idle expiry, another client logged us out):
            # log in again, once.
            LOG.debug("%s: session lost, logging in again", self._describe)
            self._cmd = None
            return body()

        return self._caller.run(op, guarded, self._timeout)

    def _session_dropped(self) -> bool:
        session = getattr(self._cmd, "ipmi_session", None)
        return session is not None and bool(getattr(session, "broken", False))

    def _command(self) -> Any:
        if self._cmd is None:
            self._cmd = self._call("log in", self._login)
        return self._cmd

    def _login(self) -> Any:
        from pyghmi.ipmi.command import Command  # imported lazily: it starts pyghmi's I/O thread on first use

        _untangle_pyghmi_locks()

        # Credentials go in as bytes on purpose. pyghmi files a half-open session under (host, user, password,
        # port, kg) as passed in, but removes that entry under the *encoded* user and password; with str
        # arguments the entry is never removed, and once that session has died (logout, BMC reboot, timeouts)
        # every later Command for the same BMC and credentials gets the dead session back for the life of the
        # process. With bytes both spellings agree and a dead session is replaced by a fresh login.
        def login() -> Any:
            return Command(
                bmc=self._address.host,
                userid=self._creds.username.encode("utf-8"),
                password=self._creds.password.encode("utf-8"),
                port=self._address.port,
            )

        try:
            return login()
        except AttributeError as exc:
            if "errormsg" not in str(exc):
                raise
            # pyghmi race: the shared half-open session we waited on was broken by a logout, which records
            # no error message, and pyghmi then fails reading it. A fresh login gets the BMC's real answer
            # (a rejected password must say so, not look like a protocol error).
            return login()

    def _read_power(self) -> PowerState:
        response = self._raw(_CMD_CHASSIS_STATUS, ())
        data = response.get("data") or b""
        if len(data) < 1:
            raise BmcError(
                f"{self._describe} sent a Chassis Status reply without data",
                reason=BmcErrorReason.PROTOCOL_ERROR,
            )
        return PowerState.ON if data[0] & 0x01 else PowerState.OFF

    def _chassis_control(self, action: str, accept: tuple[int, ...] = ()) -> int:
        response = self._raw(_CMD_CHASSIS_CONTROL, (_CONTROL[action],), accept=accept)
        return int(response.get("code", 0))

    def _raw(self, command: int, data: tuple[int, ...], accept: tuple[int, ...] = ()) -> dict[str, Any]:
        cmd = self._command()
        response = self._call(
            f"chassis command 0x{command:02x}",
            lambda: cmd.raw_command(netfn=_NETFN_CHASSIS, command=command, data=data),
        )
        if not isinstance(response, dict):
            raise BmcError(f"{self._describe} returned no response", reason=BmcErrorReason.PROTOCOL_ERROR)
        code = response.get("code", 0)
        if code in accept:
            return response
        if code == _CC_TIMEOUT:
            raise BmcError(f"{self._describe} stopped answering", reason=BmcErrorReason.TIMEOUT)
        if "error" in response or code:
            raise BmcError(
                f"{self._describe} rejected chassis command 0x{command:02x}: "
                f"{self._clean(str(response.get('error', f'completion code 0x{code:02x}')))}",
                reason=BmcErrorReason.OPERATION_FAILED,
            )
        return response

    def _wait_for(self, state: PowerState) -> None:
        wait_for_power(self._read_power, state, self._deadline, self._describe, POLL_INTERVAL)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Call into pyghmi and translate whatever comes out of it into BmcError.

        The BmcError is raised outside the `except` block so that it carries no `__context__`: the upstream
        exception may quote more than we want to keep (we only repeat its text after `redact`).
        """
        try:
            return fn()
        except BmcError:
            raise
        except socket.gaierror:
            error = BmcError(
                f"{self._describe}: host name does not resolve", reason=BmcErrorReason.UNREACHABLE
            )
        except OSError as exc:
            error = BmcError(
                f"{self._describe}: network error during {what}: "
                f"{self._clean(exc.strerror or type(exc).__name__)}",
                reason=BmcErrorReason.UNREACHABLE,
            )
        except (struct.error, AssertionError, IndexError, KeyError, TypeError, ValueError) as exc:
            # Typical of a BMC that accepted a cipher suite it does not speak, or of a malformed reply.
            error = BmcError(
                f"{self._describe}: malformed IPMI exchange during {what} ({type(exc).__name__}: "
                f"{self._clean(str(exc))})",
                reason=BmcErrorReason.PROTOCOL_ERROR,
            )
        except Exception as exc:
            error = self._classify(what, exc)
        raise error

    def _classify(self, what: str, exc: Exception) -> BmcError:
        logging_in = what == "log in"
        # pyghmi overwrites the reason of a login that got no answer with None after reporting "timeout".
        detail = exc.args[0] if exc.args else None
        if not detail:
            reason = BmcErrorReason.UNREACHABLE if logging_in else BmcErrorReason.TIMEOUT
            return BmcError(f"{self._describe}: {what} failed: no answer from the BMC", reason=reason)
        text = self._clean(str(detail))
        lowered = text.lower()
        if any(marker in lowered for marker in _CREDENTIAL_MARKERS):
            reason = BmcErrorReason.CREDENTIALS_REJECTED
        elif any(marker in lowered for marker in _UNREACHABLE_MARKERS):
            reason = BmcErrorReason.UNREACHABLE
        elif any(marker in lowered for marker in _RESOURCE_MARKERS):
            reason = BmcErrorReason.OPERATION_FAILED
        elif any(marker in lowered for marker in _TIMEOUT_MARKERS):
            # Silence during login means we never reached the BMC; later it means it stopped answering.
            reason = BmcErrorReason.UNREACHABLE if logging_in else BmcErrorReason.TIMEOUT
        else:
            reason = BmcErrorReason.PROTOCOL_ERROR
        return BmcError(f"{self._describe}: {what} failed: {text}", reason=reason)

    def _clean(self, text: str) -> str:
        return redact(text, self._creds.password)
