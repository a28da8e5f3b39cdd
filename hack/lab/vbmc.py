"""Virtual IPMI BMCs: many RMCP+ endpoints in one process, each driving a `SimMachine`.

`VirtualBmc` is a `pyghmi.ipmi.bmc.Bmc` (pyghmi's server side supplies RAKP, session crypto and the chassis
command parsing); `BmcFleet` owns the sockets and one I/O thread that feeds every BMC.

Why the fleet does its own socket I/O instead of `Bmc.listen()`: pyghmi's server registers its socket with
the process-wide client I/O thread (the same one the provider's IPMI client uses in tests). That thread can
neither be stopped nor told to forget a socket, closing a socket under it breaks every pyghmi client in the
process, and its packets get processed by whichever thread pumps pyghmi's loop, client threads included.
Owning the sockets gives a clean stop, per-BMC faults on the wire, and a server that never runs in a
client's thread. Consequently `VirtualBmc.__init__` sets up the few attributes pyghmi's server code reads
instead of calling `IpmiServer.__init__`.

Cipher suites: pyghmi's server only speaks suite 3 (HMAC-SHA1 / HMAC-SHA1-96 / AES-CBC-128) but answers
*any* RMCP+ Open Session Request as if suite 3 had been proposed. pyghmi's own client proposes suite 17
first, believes the BMC accepted it, and dies on the SHA-1 RAKP2 (`struct.error` in `_got_rakp2`). Real
suite-3-only BMCs answer an unsupported proposal with an Open Session Response carrying a non-zero RMCP+
status (IPMI 2.0 table 13-15; 0x11 = "no cipher suite match with proposed security algorithms"); pyghmi's
client reacts to any non-zero status on its suite-17 attempt by retrying with suite 3, ipmitool reports it.
`VirtualBmc` does the same.

Faults (per BMC, changeable while running, see `Fault`): dropping, delaying and credential rejection all
happen on our side of the socket, so a slow BMC delays only its own packets: delayed packets wait in a
timer heap, nothing sleeps in the shared I/O thread.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import secrets
import selectors
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pyghmi.ipmi.private.session as ipmisession
from pyghmi.ipmi import bmc as pyghmi_bmc
from pyghmi.ipmi.private import constants, serversession

from lab.machine import BootDevice, SimMachine

LOG = logging.getLogger(__name__)

FaultMode = Literal["none", "no-answer", "slow", "drop", "reject-credentials"]
Address = tuple[str, int]

_RMCP_IPMI = b"\x06\x00\xff\x07"  # RMCP v1.0, no ACK, sequence 0xff, class IPMI
_AUTH_RMCP_PLUS = 0x06
_PT_OPEN_SESSION_REQUEST = 0x10
_PT_RAKP1 = 0x12
_PT_RAKP3 = 0x14
# The algorithms of cipher suite 3 (IPMI 2.0 table 22-20): RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128.
_SUITE_3 = (1, 1, 1)
_STATUS_ILLEGAL_PARAMETER = 0x12
_STATUS_NO_CIPHER_SUITE_MATCH = 0x11
_STATUS_UNAUTHORIZED_NAME = 0x0D
_SESSION_IDLE_EXPIRY = 120.0  # seconds; real BMCs drop idle sessions after about a minute
_UUID_NAMESPACE = uuid.UUID("6f0d8f8e-2f55-4c5e-9d8a-4f1b7c3a9e10")

# IPMI "set boot device" names (as pyghmi's server hands them over) -> SimMachine boot devices.
_BOOT_FROM_IPMI: dict[str, BootDevice] = {
    "network": "network",
    "hd": "hd",
    "safe": "hd",  # "force boot from disk, safe mode": still the disk for a simulated machine
    "optical": "optical",
    "setup": "setup",
    "default": "default",
}
_CC_NOT_IN_PRESENT_STATE = 0xD5


@dataclass(frozen=True)
class Fault:
    """How a virtual BMC misbehaves.

    none                 answer normally
    no-answer            drop every packet, in and out (a dead or unplugged BMC)
    slow                 hold every incoming packet for `delay` seconds before handling it
    drop                 lose each packet, incoming and outgoing independently, with probability `drop_rate`
    reject-credentials   refuse every login as if the password were wrong (a rotated password)
    """

    mode: FaultMode = "none"
    delay: float = 0.0
    drop_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("none", "no-answer", "slow", "drop", "reject-credentials"):
            raise ValueError(f"unknown fault mode {self.mode!r}")
        if self.delay < 0 or not 0.0 <= self.drop_rate <= 1.0:
            raise ValueError("delay must be >= 0 and drop_rate within [0, 1]")


class _PasswordLookup:
    """The `authdata` pyghmi's server reads at each RAKP1, so rotations and faults hit the next login."""

    def __init__(self, owner: VirtualBmc) -> None:
        self._owner = owner

    def get(self, username: str, default: str | None = None) -> str | None:
        password = self._owner._users.get(username)
        if password is None:
            return default
        if self._owner.fault.mode == "reject-credentials":
            # The BMC "knows" some other password: the client's RAKP2 check fails exactly as for a typo.
            return secrets.token_hex(16)
        return password


class _WireSocket:
    """What pyghmi's server code sends through (`_io_sendto` calls `setblocking` then `sendto`)."""

    def __init__(self, sock: socket.socket, owner: VirtualBmc) -> None:
        self._sock = sock
        self._owner = owner

    def setblocking(self, flag: bool) -> None:
        pass  # our socket stays non-blocking; a full send buffer is just a lost datagram

    def sendto(self, packet: bytes, address: Address) -> int:
        fault = self._owner.fault
        if fault.mode == "no-answer":
            return 0
        if fault.mode == "drop" and self._owner._rng.random() < fault.drop_rate:
            return 0
        try:
            return self._sock.sendto(packet, address)
        except OSError:
            return 0


def _forget_in_pyghmi_routing(clientaddr: Address, port: int, session: object) -> None:
    """pyghmi registers every server session in the client-side routing table and never removes it."""
    handlers = ipmisession.Session.bmc_handlers.get(clientaddr)
    if handlers is not None and handlers.get(port) is session:
        del handlers[port]
        if not handlers:
            ipmisession.Session.bmc_handlers.pop(clientaddr, None)


class _LabSession(serversession.ServerSession):
    """One RMCP+ session on a virtual BMC."""

    bmc: VirtualBmc

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # answers the Open Session Request
        _forget_in_pyghmi_routing(self.sockaddr, self.bmc.port, self)
        self.last_used = time.monotonic()

    def _got_rakp1(self, data: bytearray) -> None:
        # pyghmi's server silently ignores unknown (and empty) user names: a client would only see a
        # timeout. Real BMCs answer RAKP2 with "unauthorized name", which clients report as a credentials
        # problem.
        if len(data) < 28:
            return
        name = bytes(data[28 : 28 + data[27]]).decode("utf-8", "replace")
        if not name or self.authdata.get(name) is None:
            payload = bytearray([data[0], _STATUS_UNAUTHORIZED_NAME, 0, 0]) + self.clientsessionid
            self.send_payload(payload, constants.payload_types["rakp2"], retry=False)
            return
        super()._got_rakp1(data)

    def close_server_session(self) -> None:
        self.bmc._forget_session(self.sockaddr, self)


class VirtualBmc(pyghmi_bmc.Bmc):
    """An IPMI BMC on its own UDP port, bound to one SimMachine. Served by a `BmcFleet`."""

    # False reproduces pyghmi's stock server: any cipher-suite proposal is "accepted", then served in suite 3.
    refuse_unsupported_cipher_suites = True

    def __init__(
        self,
        machine: SimMachine,
        *,
        password: str,
        username: str = "admin",
        host: str = "127.0.0.1",
        port: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        # Not calling IpmiServer.__init__ on purpose (see the module docstring); these are the attributes
        # pyghmi's server code reads.
        self.machine = machine
        # Every command that changes the machine, in order: what a BMC's event log would show.
        self.actions: list[str] = []
        self.fault = Fault()
        self._users: dict[str, str] = {username: password}
        self._rng = rng or random.Random()
        self.authdata = _PasswordLookup(self)
        self.kg = None
        self.uuid = uuid.uuid5(_UUID_NAMESPACE, machine.name)
        self.deviceid = 0x20
        self.revision = 1
        self.firmwaremajor = 1
        self.firmwareminor = 0
        self.ipmiversion = 2
        self.additionaldevices = 0
        self.mfgid = 0
        self.prodid = 0
        self.timeout = 60
        self.pktqueue: deque[Any] = deque()
        # Get Channel Authentication Capabilities reply (IPMI 2.0 table 22-15): completion code, channel 1,
        # "IPMI 2.0 extended capabilities" only, non-null user names enabled, IPMI 2.0 connections supported,
        # no OEM data.
        self.authcap = bytes([0x00, 0x01, 0x80, 0x04, 0x02, 0x00, 0x00, 0x00, 0x00])
        self._sessions: dict[Address, _LabSession] = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self._sock.setblocking(False)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.serversocket = _WireSocket(self._sock, self)

    def __repr__(self) -> str:
        return f"VirtualBmc({self.machine.name!r}, {self.address}, fault={self.fault.mode})"

    @property
    def name(self) -> str:
        return self.machine.name

    @property
    def address(self) -> str:
        """The BareMetalHost `spec.bmc.address` for this BMC."""
        return f"ipmi://{self.host}:{self.port}"

    def set_credentials(self, username: str, password: str) -> None:
        """Replace the BMC's only account; existing sessions stay up, new logins need the new password."""
        self._users = {username: password}

    def set_fault(self, mode: FaultMode, *, delay: float = 0.0, drop_rate: float = 0.0) -> None:
        self.fault = Fault(mode, delay, drop_rate)

    # -- what pyghmi's Bmc asks of us (all called on the fleet's I/O thread) ------------------------------

    def get_power_state(self) -> str:
        return "on" if self.machine.is_powered_on() else "off"

    def power_on(self) -> None:
        self.actions.append("power on")
        self.machine.power_on()

    def power_off(self) -> None:
        self.actions.append("power off")
        self.machine.power_off()

    def power_shutdown(self) -> None:
        # Soft off: a simulated machine has no ACPI, so the OS "shuts down" at once; a machine with a real
        # guest (lab.vm.QemuMachine) gets an ACPI power-button press and its OS decides.
        self.actions.append("power soft")
        soft = getattr(self.machine, "soft_power_off", None)
        if soft is not None:
            soft()
        else:
            self.machine.power_off()

    def power_cycle(self) -> int | None:
        # As on real BMCs, cycling or resetting a machine that is off is refused, not turned into "on".
        self.actions.append("power cycle")
        if not self.machine.is_powered_on():
            return _CC_NOT_IN_PRESENT_STATE
        self.machine.power_cycle()
        return None

    def power_reset(self) -> int | None:
        return self.power_cycle()

    def get_boot_device(self) -> str:
        return self.machine.get_boot_device()

    def set_boot_device(self, bootdevice: str) -> None:
        self.actions.append(f"bootdev {bootdevice}")
        device = _BOOT_FROM_IPMI.get(bootdevice)
        if device is None:
            raise NotImplementedError(f"boot device {bootdevice!r}")  # pyghmi replies "invalid command"
        self.machine.set_boot_device(device)

    def get_system_guid(self) -> uuid.UUID:
        return self.uuid

    # -- packet handling ---------------------------------------------------------------------------------

    def handle_datagram(self, data: bytes, addr: Address) -> None:
        if len(data) < 16 or data[:4] != _RMCP_IPMI:
            return  # not IPMI over RMCP (ASF presence pings and noise)
        if data[4] == _AUTH_RMCP_PLUS:
            payload_type = data[5] & 0x3F
            if payload_type == _PT_OPEN_SESSION_REQUEST:
                self._open_session(bytes(data[16:]), addr)
                return
            session = self._sessions.get(addr)
            session_id = struct.unpack_from("<I", data, 6)[0]
            if session is not None and (session_id != 0 or payload_type in (_PT_RAKP1, _PT_RAKP3)):
                session.last_used = time.monotonic()
                session._handle_ipmi2_packet(bytearray(data))
                return
        self.sessionless_data(data, addr)

    def _open_session(self, request: bytes, addr: Address) -> None:
        if len(request) < 32:
            return
        if (request[8], request[16], request[24]) != (0, 1, 2):
            self._refuse_open_session(request, addr, _STATUS_ILLEGAL_PARAMETER)
            return
        proposal = (request[12] & 0x3F, request[20] & 0x3F, request[28] & 0x3F)
        if proposal != _SUITE_3 and self.refuse_unsupported_cipher_suites:
            self._refuse_open_session(request, addr, _STATUS_NO_CIPHER_SUITE_MATCH)
            return
        self._expire_idle_sessions()
        # A new Open Session Request from the same client address supersedes its previous session.
        self._sessions[addr] = _LabSession(
            self.authdata, self.kg, addr, self.serversocket, bytearray(request), self.uuid, bmc=self
        )

    def _refuse_open_session(self, request: bytes, addr: Address, status: int) -> None:
        # RMCP+ Open Session Response (IPMI 2.0 table 13-10) with an error status: message tag, status,
        # reserved privilege byte and reserved byte, remote console session id; the rest is absent on error.
        payload = bytes([request[0], status, 0, 0]) + request[4:8]
        header = _RMCP_IPMI + bytes([_AUTH_RMCP_PLUS, _PT_OPEN_SESSION_REQUEST + 1]) + bytes(8)
        self.serversocket.sendto(header + struct.pack("<H", len(payload)) + payload, addr)

    def _expire_idle_sessions(self) -> None:
        cutoff = time.monotonic() - _SESSION_IDLE_EXPIRY
        for addr, session in list(self._sessions.items()):
            if session.last_used < cutoff:
                del self._sessions[addr]

    def _forget_session(self, addr: Address, session: _LabSession) -> None:
        if self._sessions.get(addr) is session:
            del self._sessions[addr]

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    def close(self) -> None:
        self._sessions.clear()
        self._sock.close()


@dataclass(order=True)
class _Delayed:
    due: float
    seq: int
    bmc: VirtualBmc
    data: bytes
    addr: Address


class BmcFleet:
    """Serves many `VirtualBmc`s from one I/O thread. BMCs can be added, removed and faulted while running.

    >>> with BmcFleet() as fleet:
    ...     bmc = fleet.add(MemoryMachine("node-0"), password="s3cret")
    ...     bmc.address  # 'ipmi://127.0.0.1:<port>'
    """

    def __init__(self, host: str = "127.0.0.1", *, seed: int | None = None) -> None:
        self.host = host
        self._rng = random.Random(seed)
        self._bmcs: dict[str, VirtualBmc] = {}
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pending: deque[Callable[[], None]] = deque()  # selector changes, applied on the I/O thread
        self._delayed: list[_Delayed] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False

    def __enter__(self) -> BmcFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getitem__(self, name: str) -> VirtualBmc:
        return self._bmcs[name]

    def __iter__(self) -> Iterator[VirtualBmc]:
        return iter(list(self._bmcs.values()))

    def __len__(self) -> int:
        return len(self._bmcs)

    # -- membership ------------------------------------------------------------------------------------

    def add(
        self,
        machine: SimMachine,
        *,
        password: str,
        username: str = "admin",
        port: int = 0,
        bmc_class: type[VirtualBmc] = VirtualBmc,
    ) -> VirtualBmc:
        """Give `machine` a BMC on `port` (0: any free port) and start serving it."""
        if self._closed:
            raise RuntimeError("this BmcFleet is stopped")
        if machine.name in self._bmcs:
            raise ValueError(f"{machine.name!r} already has a BMC in this fleet")
        vbmc = bmc_class(
            machine,
            username=username,
            password=password,
            host=self.host,
            port=port,
            rng=random.Random(self._rng.random()),
        )
        self._bmcs[machine.name] = vbmc
        self._on_io_thread(lambda: self._selector.register(vbmc._sock, selectors.EVENT_READ, vbmc))
        return vbmc

    def remove(self, name: str) -> None:
        vbmc = self._bmcs.pop(name)

        def unregister() -> None:
            self._selector.unregister(vbmc._sock)
            vbmc.close()

        self._on_io_thread(unregister)

    def set_fault(self, name: str, mode: FaultMode, *, delay: float = 0.0, drop_rate: float = 0.0) -> None:
        self._bmcs[name].set_fault(mode, delay=delay, drop_rate=drop_rate)

    def set_credentials(self, name: str, username: str, password: str) -> None:
        self._bmcs[name].set_credentials(username, password)

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._closed:
            raise RuntimeError("a stopped BmcFleet cannot be restarted")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="lab-bmc-fleet", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop serving and close every socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stopping = True
        if self._thread is not None:
            self._wake()
            self._thread.join(timeout=10)
            if self._thread.is_alive():  # pragma: no cover - would mean a SimMachine call hung
                LOG.error("BMC fleet I/O thread did not stop")
        for vbmc in self._bmcs.values():
            vbmc.close()
        self._delayed.clear()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- I/O thread ------------------------------------------------------------------------------------

    def _on_io_thread(self, change: Callable[[], None]) -> None:
        if self._thread is None:
            change()  # not serving yet: nobody else touches the selector
            return
        done = threading.Event()

        def run() -> None:
            try:
                change()
            finally:
                done.set()

        self._pending.append(run)
        self._wake()
        if threading.current_thread() is not self._thread and not done.wait(timeout=10):
            raise RuntimeError("BMC fleet I/O thread is not responding")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe means it is awake already
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        while not self._stopping:
            while self._pending:
                self._pending.popleft()()
            timeout = None
            if self._delayed:
                timeout = max(0.0, self._delayed[0].due - time.monotonic())
            for key, _ in self._selector.select(timeout):
                if key.data is None:
                    self._drain_wakeups()
                else:
                    self._receive(key.data)
            now = time.monotonic()
            while self._delayed and self._delayed[0].due <= now:
                item = heapq.heappop(self._delayed)
                if self._bmcs.get(item.bmc.name) is item.bmc:  # skip BMCs removed meanwhile
                    self._dispatch(item.bmc, item.data, item.addr)

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(512):
                pass
        except (BlockingIOError, OSError):
            pass

    def _receive(self, vbmc: VirtualBmc) -> None:
        while True:
            try:
                data, addr = vbmc._sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # closed under us by remove(); nothing left to read
            fault = vbmc.fault
            if fault.mode == "no-answer":
                continue
            if fault.mode == "drop" and vbmc._rng.random() < fault.drop_rate:
                continue
            if fault.mode == "slow" and fault.delay > 0:
                due = time.monotonic() + fault.delay
                heapq.heappush(self._delayed, _Delayed(due, next(self._seq), vbmc, data, addr))
                continue
            self._dispatch(vbmc, data, addr)

    @staticmethod
    def _dispatch(vbmc: VirtualBmc, data: bytes, addr: Address) -> None:
        try:
            vbmc.handle_datagram(data, addr)
        except Exception:  # one malformed packet must not take the fleet down
            LOG.debug("%s: error handling a packet from %s", vbmc.name, addr, exc_info=True)
