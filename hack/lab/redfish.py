"""A Redfish endpoint for the lab: sushy-tools' emulator, in-process, over HTTPS, backed by SimMachines.

Why in-process rather than `sushy-emulator` as a subprocess: the machines behind it are Python objects in
this process (the lab host runs a real sshd while "powered on"), and sushy only reaches machines through a
systems driver object. A subprocess would need an RPC bridge back to them; in-process it is one class.

How sushy is embedded:
* `sushy_tools.emulator.main` builds one module-global Flask app whose views all reference that global and
  whose systems driver is chosen from config (fake/libvirt/nova/ironic). Each `RedfishLab` therefore loads
  a private copy of that module (a fresh `app`, a fresh `Application` class) and points the copy's
  `Application.systems` at our `SimSystemsDriver`. Labs in one process do not share state, and nothing in
  the installed package is modified.
* Authentication is ours (`_Gate`), not sushy's htpasswd middleware: it supports per-system accounts,
  credential changes at runtime and a SessionService (X-Auth-Token sessions, as on real BMCs). As the
  Redfish spec requires, the service root is readable without credentials; resources under
  `/Systems/<name>` need that system's account (or the lab-wide one when the system has none); other
  resources accept any valid account.
* TLS: a throwaway CA and a server certificate for 127.0.0.1/localhost/::1 are generated at start. Clients
  that should verify pass `ca_path`; the system trust store rejects it, like a real BMC's self-signed cert.
* Served by werkzeug's threaded WSGI server in a background thread; `stop()` shuts it down and removes its
  temporary directory (a `workdir` given by the caller is kept).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hmac
import importlib.util
import ipaddress
import itertools
import json
import logging
import os
import secrets
import ssl
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sushy_tools import error as sushy_error
from sushy_tools.emulator.resources.systems.base import AbstractSystemsDriver
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from lab.machine import BootDevice, SimMachine

LOG = logging.getLogger(__name__)

_UUID_NAMESPACE = uuid.UUID("0b6c3c53-49d9-4c0e-8d2f-7a51d7f5c2aa")
_module_counter = itertools.count()

# Redfish BootSourceOverrideTarget <-> SimMachine boot device.
_BOOT_TO_REDFISH: dict[BootDevice, str] = {
    "hd": "Hdd",
    "network": "Pxe",
    "optical": "Cd",
    "setup": "BiosSetup",
    "default": "None",
}
_BOOT_FROM_REDFISH: dict[str, BootDevice] = {value: key for key, value in _BOOT_TO_REDFISH.items()}


# -- certificates ----------------------------------------------------------------------------------------


class LabCertificates:
    """A throwaway CA and a server certificate signed by it (EC P-256, valid for a day)."""

    def __init__(self, hosts: Iterable[str] = ("127.0.0.1", "localhost", "::1")) -> None:
        now = datetime.datetime.now(datetime.UTC)
        not_before, not_after = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "capi-provider-baremetal lab CA")])
        ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ca_ski, critical=False)
            .sign(ca_key, hashes.SHA256())
        )

        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lab redfish")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


# -- the systems driver sushy calls ----------------------------------------------------------------------


class SimSystemsDriver(AbstractSystemsDriver):
    """sushy's view of our machines: identities are machine names (UUIDs are accepted too).

    With `power_delay` > 0 power changes land that many seconds after the request, like real BMCs whose
    ComputerSystem.Reset returns before the server has changed state; clients must poll.
    """

    def __init__(self, power_delay: float = 0.0) -> None:
        self._machines: dict[str, SimMachine] = {}
        self._lock = threading.Lock()
        self._power_delay = power_delay
        self._timers: set[threading.Timer] = set()
        self._boot_modes: dict[str, str] = {}

    # membership (called by RedfishLab)
    def add(self, machine: SimMachine) -> None:
        with self._lock:
            self._machines[machine.name] = machine

    def remove(self, name: str) -> None:
        with self._lock:
            self._machines.pop(name, None)

    def cancel_pending(self) -> None:
        with self._lock:
            timers, self._timers = self._timers, set()
        for timer in timers:
            timer.cancel()

    def canonical_name(self, identity: str) -> str:
        """The machine name for a name or UUID identity; unknown identities come back unchanged."""
        try:
            return self._machine(identity).name
        except sushy_error.NotFound:
            return identity

    def _machine(self, identity: str) -> SimMachine:
        with self._lock:
            machine = self._machines.get(identity)
            if machine is None:
                for candidate in self._machines.values():
                    if str(uuid.uuid5(_UUID_NAMESPACE, candidate.name)) == identity:
                        return candidate
                raise sushy_error.NotFound(f"System {identity} was not found")
            return machine

    # AbstractSystemsDriver
    @property
    def driver(self) -> str:
        return "<lab SimMachine>"

    @property
    def systems(self) -> list[str]:
        with self._lock:
            return sorted(self._machines)

    def uuid(self, identity: str) -> str:
        return str(uuid.uuid5(_UUID_NAMESPACE, self._machine(identity).name))

    def name(self, identity: str) -> str:
        return self._machine(identity).name

    def get_power_state(self, identity: str) -> str:
        return "On" if self._machine(identity).is_powered_on() else "Off"

    def set_power_state(self, identity: str, state: str) -> None:
        machine = self._machine(identity)
        action: Callable[[], None]
        if state in ("On", "ForceOn"):
            action = machine.power_on
        elif state == "GracefulShutdown" and hasattr(machine, "soft_power_off"):
            action = machine.soft_power_off  # a real guest (lab.vm.QemuMachine): ACPI power button
        elif state in ("ForceOff", "GracefulShutdown"):
            action = machine.power_off  # no ACPI in a simulated machine: graceful is immediate too
        elif state in ("ForceRestart", "GracefulRestart", "PowerCycle"):
            if not machine.is_powered_on():
                raise sushy_error.BadRequest(f"System {identity} is powered off; {state} needs it on")
            action = machine.power_cycle
        else:
            raise sushy_error.NotSupportedError(f"ResetType {state} is not supported")
        self._later(action)

    def _later(self, action: Callable[[], None]) -> None:
        if self._power_delay <= 0:
            action()
            return

        def run() -> None:
            with self._lock:
                self._timers.discard(timer)
            action()

        timer = threading.Timer(self._power_delay, run)
        timer.daemon = True
        with self._lock:
            self._timers.add(timer)
        timer.start()

    def get_boot_device(self, identity: str) -> str:
        return _BOOT_TO_REDFISH[self._machine(identity).get_boot_device()]

    def set_boot_device(self, identity: str, boot_source: str) -> None:
        device = _BOOT_FROM_REDFISH.get(boot_source)
        if device is None:
            raise sushy_error.BadRequest(f"Boot source {boot_source} is not supported")
        self._machine(identity).set_boot_device(device)

    def get_boot_mode(self, identity: str) -> str:
        return self._boot_modes.get(self._machine(identity).name, "UEFI")

    def set_boot_mode(self, identity: str, boot_mode: str) -> None:
        if boot_mode not in ("UEFI", "Legacy"):
            raise sushy_error.BadRequest(f"Boot mode {boot_mode} is not supported")
        self._boot_modes[self._machine(identity).name] = boot_mode


# -- authentication and sessions ---------------------------------------------------------------------------

Account = tuple[str, str]  # (username, password)
_StartResponse = Callable[..., Any]


def _json_response(
    start_response: _StartResponse, status: str, body: object, headers: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    data = json.dumps(body).encode() if body is not None else b""
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers]
    )
    return [data]


class _Gate:
    """Authentication in front of sushy: HTTP Basic and a Redfish SessionService, with per-system accounts.

    sushy has neither per-system accounts nor sessions, and real BMCs all have a SessionService (clients
    such as pyghmi log in through it when the service root advertises it), so the lab provides both:
    POST /redfish/v1/SessionService/Sessions with {"UserName", "Password"} returns an X-Auth-Token and the
    session's URI in Location; DELETE on that URI logs out. A session stays bound to the account it was
    opened with and dies when that account's password changes.
    """

    _PUBLIC = frozenset({"", "redfish", "redfish/v1"})
    _SYSTEMS_PREFIX = "redfish/v1/Systems/"
    _SESSIONS = "redfish/v1/SessionService/Sessions"

    def __init__(self, app: Callable[..., Any], lab: RedfishLab) -> None:
        self._app = app
        self._lab = lab
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, Account]] = {}  # token -> (session id, account)
        self._ids = itertools.count(1)

    @property
    def session_count(self) -> int:
        with self._lock:
            return len(self._sessions)

    def __call__(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "").strip("/")
        method = environ.get("REQUEST_METHOD", "GET")
        if path in self._PUBLIC:
            return (
                self._service_root(environ, start_response)
                if path == "redfish/v1"
                else self._app(environ, start_response)
            )
        if path == self._SESSIONS and method == "POST":
            return self._log_in(environ, start_response)
        system = None
        if path.startswith(self._SYSTEMS_PREFIX):
            system = path[len(self._SYSTEMS_PREFIX) :].split("/", 1)[0]
        account = self._authenticated(environ, system)
        if account is None:
            return self._denied(start_response)
        if path.startswith(self._SESSIONS + "/") and method == "DELETE":
            return self._log_out(path.rsplit("/", 1)[1], start_response)
        return self._app(environ, start_response)

    def _service_root(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, headers

        body = b"".join(self._app(environ, capture))
        root = json.loads(body)
        root["SessionService"] = {"@odata.id": "/redfish/v1/SessionService"}
        return _json_response(start_response, captured["status"], root)

    def _log_in(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            request = json.loads(environ["wsgi.input"].read(length) or b"{}")
            account = (str(request["UserName"]), str(request["Password"]))
        except (ValueError, KeyError, TypeError):
            return _json_response(start_response, "400 Bad Request", {"error": {"message": "bad request"}})
        if not self._lab._accepts(account, None):
            return self._denied(start_response)
        token = secrets.token_hex(16)
        with self._lock:
            session_id = str(next(self._ids))
            self._sessions[token] = (session_id, account)
        uri = f"/{self._SESSIONS}/{session_id}"
        body = {"@odata.id": uri, "Id": session_id, "UserName": account[0]}
        return _json_response(
            start_response, "201 Created", body, [("X-Auth-Token", token), ("Location", uri)]
        )

    def _log_out(self, session_id: str, start_response: _StartResponse) -> Iterable[bytes]:
        with self._lock:
            for token, (sid, _account) in list(self._sessions.items()):
                if sid == session_id:
                    del self._sessions[token]
                    start_response("204 No Content", [("Content-Length", "0")])
                    return [b""]
        return _json_response(start_response, "404 Not Found", {"error": {"message": "no such session"}})

    def _authenticated(self, environ: dict[str, Any], system: str | None) -> Account | None:
        token = environ.pop("HTTP_X_AUTH_TOKEN", None)
        if token is not None:
            with self._lock:
                entry = self._sessions.get(token)
            if entry is None:
                return None
            account = entry[1]
            if not self._lab._accepts(account, None):  # its password changed: the session is over
                with self._lock:
                    self._sessions.pop(token, None)
                return None
            return account if self._lab._accepts(account, system) else None
        presented = self._basic(environ.pop("HTTP_AUTHORIZATION", ""))
        return presented if presented is not None and self._lab._accepts(presented, system) else None

    @staticmethod
    def _basic(header: str) -> Account | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, sep, password = base64.b64decode(token.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (username, password) if sep else None

    @staticmethod
    def _denied(start_response: _StartResponse) -> Iterable[bytes]:
        body = {
            "error": {
                "code": "Base.1.8.GeneralError",
                "message": "Access denied: valid credentials are required",
                "@Message.ExtendedInfo": [{"MessageId": "Base.1.8.AccessDenied", "Message": "Access denied"}],
            }
        }
        return _json_response(
            start_response, "401 Unauthorized", body, [("WWW-Authenticate", 'Basic realm="lab redfish"')]
        )


class _QuietHandler(WSGIRequestHandler):
    """werkzeug prints every request to stderr unless told otherwise; keep that at debug level."""

    def log(self, type: str, message: str, *args: Any) -> None:
        LOG.debug("redfish lab %s: " + message, type, *args)


# -- the endpoint ------------------------------------------------------------------------------------------


def _private_sushy_app(state_dir: str, systems: SimSystemsDriver) -> tuple[ModuleType, Any]:
    spec = importlib.util.find_spec("sushy_tools.emulator.main")
    assert spec is not None and spec.origin is not None
    name = f"lab_sushy_emulator_{next(_module_counter)}"
    private_spec = importlib.util.spec_from_file_location(name, spec.origin)
    assert private_spec is not None and private_spec.loader is not None
    module = importlib.util.module_from_spec(private_spec)
    # Flask finds the emulator's templates through sys.modules[import name], so register before executing.
    sys.modules[name] = module
    private_spec.loader.exec_module(module)
    module.Application.systems = property(lambda _app: systems)
    app = module.app
    app.config.update(
        SUSHY_EMULATOR_STATE_DIR=state_dir,  # sushy's sqlite state (indicator LEDs...) stays in our dir
        SUSHY_EMULATOR_FEATURE_SET="full",
    )
    app.logger.setLevel(logging.WARNING)
    return module, app


class RedfishLab:
    """Redfish over HTTPS on 127.0.0.1 for a set of SimMachines.

    `workdir` keeps the CA, server certificate and sushy's state (kept after `stop()` for inspection);
    without it a temporary directory is used and removed at `stop()`. Without a lab-wide `password` only
    systems added with their own account are reachable.

    >>> with RedfishLab(machines=[MemoryMachine("node-0")], password="s3cret") as lab:
    ...     lab.address("node-0")  # 'redfish+https://127.0.0.1:<port>/redfish/v1/Systems/node-0'
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str] | None = None,
        *,
        machines: Iterable[SimMachine] = (),
        username: str = "admin",
        password: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        power_delay: float = 0.0,
    ) -> None:
        self.host = host
        self._workdir = Path(workdir) if workdir is not None else None
        self._requested_port = port
        # None: the lab-wide account; without a password it is one nobody knows.
        self._accounts: dict[str | None, tuple[str, str]] = {
            None: (username, password if password is not None else secrets.token_urlsafe(24))
        }
        self._systems = SimSystemsDriver(power_delay=power_delay)
        for machine in machines:
            self._systems.add(machine)
        self._dir: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._module_name: str | None = None
        self.certificates: LabCertificates | None = None
        self._gate: _Gate | None = None
        self.port = 0

    def __enter__(self) -> RedfishLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration (safe while running) ------------------------------------------------------------

    def add(self, machine: SimMachine, *, username: str | None = None, password: str | None = None) -> str:
        """Serve `machine` too, optionally with its own account; returns its BMC address.

        Needs a started lab (the address contains the port); pass machines to the constructor otherwise.
        """
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        if not self.port:
            raise RuntimeError("RedfishLab is not started")
        self._systems.add(machine)
        if username is not None and password is not None:
            self._accounts[machine.name] = (username, password)
        return self.address(machine.name)

    def remove(self, name: str) -> None:
        self._systems.remove(name)
        self._accounts.pop(name, None)

    def set_credentials(self, username: str, password: str, *, system: str | None = None) -> None:
        """Change the lab-wide account, or one system's account (e.g. to simulate a rotated password)."""
        self._accounts = {**self._accounts, system: (username, password)}

    def address(self, name: str) -> str:
        """The BareMetalHost `spec.bmc.address` for machine `name`."""
        if not self.port:
            raise RuntimeError("RedfishLab is not started")
        return f"redfish+https://{self.host}:{self.port}/redfish/v1/Systems/{name}"

    @property
    def ca_path(self) -> str:
        """PEM file of the CA that signed the endpoint's certificate (for `ca_bundle`)."""
        if self._dir is None:
            raise RuntimeError("RedfishLab is not started")
        return str(self._dir / "ca.pem")

    def _accepts(self, presented: tuple[str, str], system: str | None) -> bool:
        accounts = self._accounts
        if system is None:
            wanted = list(accounts.values())
        else:
            wanted = [accounts.get(self._systems.canonical_name(system), accounts[None])]
        user, password = presented
        # compare_digest on both fields, not short-circuited, so timing does not tell which one was wrong
        return any(
            hmac.compare_digest(user.encode(), u.encode())
            & hmac.compare_digest(password.encode(), p.encode())
            for u, p in wanted
        )

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            return
        if self._workdir is not None:
            self._workdir.mkdir(parents=True, exist_ok=True)
            self._dir = self._workdir
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="lab-redfish-")
            self._dir = Path(self._tmp.name)
        self.certificates = LabCertificates(hosts=sorted({self.host, "127.0.0.1", "localhost", "::1"}))
        cert_file, key_file = self._dir / "server.pem", self._dir / "server.key"
        (self._dir / "ca.pem").write_bytes(self.certificates.ca_pem)
        cert_file.write_bytes(self.certificates.cert_pem)
        key_file.touch(mode=0o600)
        key_file.chmod(0o600)
        key_file.write_bytes(self.certificates.key_pem)
        state_dir = self._dir / "state"
        state_dir.mkdir(exist_ok=True)

        module, app = _private_sushy_app(str(state_dir), self._systems)
        self._module_name = module.__name__
        self._gate = _Gate(app.wsgi_app, self)
        app.wsgi_app = self._gate
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        self._server = make_server(
            self.host,
            self._requested_port,
            app,
            threaded=True,
            request_handler=_QuietHandler,
            ssl_context=context,
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"lab-redfish-{self.port}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, cancel pending power changes, remove the temporary directory. Idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._systems.cancel_pending()
        if self._module_name is not None:
            sys.modules.pop(self._module_name, None)
            self._module_name = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._dir = None
        self.port = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def session_count(self) -> int:
        """Open Redfish sessions (clients that logged in and have not logged out)."""
        return self._gate.session_count if self._gate is not None else 0
