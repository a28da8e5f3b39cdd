"""A simulated bare-metal host: a `SimMachine` (see machine.py) with an operating system.

Power on starts a boot: after the boot delay (± jitter) the "OS is up", which here means a real OpenSSH
sshd listens on the host's own loopback address with the host's own key, accepting root by key only. Every
SSH session enters hostshell.sh, which gives the host a private view of the paths provisioning touches
(`<root_dir>/<path>` mounted over `<path>`), stand-in `cloud-init`/`kubeadm` first on PATH and disk image
files as /dev. Power off kills sshd and everything its sessions started, at once, like pulling the plug.

The host also plays its kubelet's part towards the workload cluster (see standins/node.py): when a host
that had joined loses power, its Node stops being kept Ready; when it boots again, it is kept Ready again.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import queue
import random
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from lab.kubeapi import KubeClient
from lab.machine import BootDevice
from lab.standins import node
from lab.standins.hostfs import HostFS, write_file

log = logging.getLogger("lab.host")

LAB_DIR = Path(__file__).resolve().parent
HOSTSHELL = LAB_DIR / "hostshell.sh"
STANDINS_BIN = LAB_DIR / "standins" / "bin"
SSHD = Path("/usr/sbin/sshd")
# The paths each host has its own copy of, at <root_dir>/<path> (hostshell.sh mounts them).
HOST_PATHS = (
    "/etc/kubernetes",
    "/etc/lab",
    "/var/lib/cloud",
    "/var/lib/kubelet",
    "/var/log",
    "/run/kubeadm",
    "/run/cluster-api",
    "/run/cloud-init",
)
KUBELET_API_TIMEOUT_S = 5.0
_SSHD_LISTEN_TIMEOUT_S = 10.0
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DISK_RE = re.compile(r"^[A-Za-z0-9._-]+$")


def default_hardware() -> dict[str, Any]:
    return {
        "cpuCores": 4,
        "memoryMiB": 8192,
        "architecture": "x86_64",
        "disks": [{"name": "/dev/sda", "sizeBytes": 100 * 1024**3}],
        "nics": [],
    }


@dataclass(frozen=True, kw_only=True)
class LabHostSpec:
    name: str
    ssh_address: str  # a loopback address of its own (127.0.0.x, x >= 2)
    ssh_port: int
    root_dir: Path  # everything of this host lives here; must not be inside one of HOST_PATHS
    authorized_key: str  # the provider's public key ("ssh-ed25519 AAAA...")
    hardware: dict[str, Any] = field(default_factory=default_hardware)
    boot_delay_s: float = 1.0
    boot_jitter_s: float = 0.0
    workload_kubeconfig: Path | None = None  # lab admin credentials: lets the host start/stop its "kubelet"
    apiserver_url: str | None = None  # kubeadm init's fallback when the config has no controlPlaneEndpoint
    kubelet_version: str | None = None  # reported in Node.status.nodeInfo
    discovery_timeout_s: float | None = None  # overrides kubeadm's (5m default): fail fast in a broken lab

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"lab host name {self.name!r} must be a DNS label (it becomes the hostname)")
        addr = ipaddress.ip_address(self.ssh_address)
        # Root logs in with a key and no password: such a host must never be reachable from a network.
        if addr.version != 4 or not addr.is_loopback or int(addr) & 0xFF < 2:
            raise ValueError(
                f"ssh_address {self.ssh_address} must be a loopback address 127.0.0.x with x >= 2"
            )
        root = Path(self.root_dir)
        if not root.is_absolute() or any(c.isspace() for c in str(root)):
            raise ValueError(f"root_dir {root} must be an absolute path without whitespace")
        for p in (*HOST_PATHS, "/dev"):
            if root == Path(p) or Path(p) in root.parents:
                raise ValueError(f"root_dir {root} is inside {p}, which the host shell mounts over")
        if self.boot_delay_s < 0 or self.boot_jitter_s < 0:
            raise ValueError("boot delay and jitter must not be negative")


class LabHost:
    """One simulated host. All SimMachine methods are thread-safe and return at once."""

    def __init__(
        self, spec: LabHostSpec, *, rng: random.Random | None = None, python: str = sys.executable
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.root = Path(spec.root_dir)
        self._rng = rng or random.Random()
        self._python = python
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._on = False
        self._os_up = False
        self._boot_device: BootDevice = "hd"
        self._generation = 0  # bumped on every power change: a boot thread from an older one gives up
        self._boot_cancel: threading.Event | None = None
        self._sshd: subprocess.Popen[bytes] | None = None
        self._boot_error: str | None = None
        self._closed = False
        self.boot_count = 0
        self.last_boot_device: BootDevice | None = None
        # Kubelet start/stop calls run one at a time, in order, off the caller's thread.
        self._kubelet = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"lab-host-{spec.name}-kubelet")
        self.host_public_key = self._prepare_root()
        _LIVE_HOSTS.add(self)

    # --- SimMachine -------------------------------------------------------------------------------------

    def is_powered_on(self) -> bool:
        with self._lock:
            return self._on

    def power_on(self) -> None:
        with self._lock:
            self._check_open()
            if not self._on:
                self._start_boot()

    def power_off(self) -> None:
        with self._lock:
            self._cut_power()

    def power_cycle(self) -> None:
        with self._lock:
            self._check_open()
            self._cut_power()
            self._start_boot()

    def get_boot_device(self) -> BootDevice:
        with self._lock:
            return self._boot_device

    def set_boot_device(self, device: BootDevice) -> None:
        with self._lock:
            self._boot_device = device

    # --- for the lab and tests ----------------------------------------------------------------------------

    @property
    def os_up(self) -> bool:
        """True once sshd accepts connections, until power is cut."""
        with self._lock:
            return self._os_up

    @property
    def sshd_pid(self) -> int | None:
        with self._lock:
            return self._sshd.pid if self._sshd else None

    @property
    def host_key_fingerprint(self) -> str:
        blob = base64.b64decode(self.host_public_key.split()[1])
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")

    @property
    def sshd_log(self) -> Path:
        return self.root / "sshd" / "sshd.log"

    def wait_until_up(self, timeout: float) -> None:
        """Block until the OS is up; raises TimeoutError (with the reason if the boot failed)."""
        with self._changed:
            self._changed.wait_for(
                lambda: self._os_up or self._boot_error is not None or not self._on, timeout
            )
            if self._os_up:
                return
            if self._boot_error is not None:
                raise TimeoutError(f"lab host {self.name} failed to boot: {self._boot_error}")
            if not self._on:
                raise TimeoutError(f"lab host {self.name} is powered off")
        raise TimeoutError(f"lab host {self.name} not up after {timeout:g}s")

    def wait_kubelet_idle(self, timeout: float = 15.0) -> None:
        """Wait for pending kubelet start/stop calls (tests use this after power changes)."""
        self._kubelet.submit(lambda: None).result(timeout)

    def close(self) -> None:
        """Power off for good: sshd and its sessions are killed; pending kubelet calls finish (bounded)."""
        with self._lock:
            if self._closed:
                return
            self._cut_power()
            self._closed = True
        self._kubelet.shutdown(wait=True)
        _LIVE_HOSTS.discard(self)

    def __enter__(self) -> LabHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- power ----------------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"lab host {self.name} is closed")

    def _start_boot(self) -> None:
        self._on = True
        self._boot_error = None
        self.boot_count += 1
        # A lab host boots whatever the device; the provider's choice is recorded for tests.
        self.last_boot_device = self._boot_device
        self._generation += 1
        self._boot_cancel = cancel = threading.Event()
        delay = max(
            0.0, self.spec.boot_delay_s + self._rng.uniform(-self.spec.boot_jitter_s, self.spec.boot_jitter_s)
        )
        threading.Thread(
            target=self._boot,
            args=(self._generation, cancel, delay),
            name=f"lab-host-{self.name}-boot",
            daemon=True,
        ).start()
        self._changed.notify_all()

    def _cut_power(self) -> None:
        was_running = self._sshd is not None
        self._on = False
        self._os_up = False
        self._generation += 1
        if self._boot_cancel is not None:
            self._boot_cancel.set()
        if self._sshd is not None:
            _kill_tree(self._sshd)
            _kill_tagged(str(self.root))
            self._sshd = None
        self._changed.notify_all()
        if was_running:
            self._kubelet_call(running=False)

    def _boot(self, generation: int, cancel: threading.Event, delay: float) -> None:
        if cancel.wait(delay):
            return
        with self._lock:
            if generation != self._generation:
                return
            self._clear_run()
            try:
                proc = self._sshd = _spawner().spawn(self._sshd_argv(), self.sshd_log)
            except OSError as e:
                self._boot_failed(f"cannot start sshd: {e}")
                return
        deadline = time.monotonic() + _SSHD_LISTEN_TIMEOUT_S
        while not _listening(proc.pid, self.spec.ssh_address, self.spec.ssh_port):
            if cancel.is_set():
                return
            if proc.poll() is not None or time.monotonic() > deadline:
                with self._lock:
                    if generation == self._generation:
                        state = (
                            f"exited with {proc.returncode}"
                            if proc.returncode is not None
                            else "not listening"
                        )
                        self._boot_failed(f"sshd {state}; log tail:\n{_tail(self.sshd_log)}")
                return
            cancel.wait(0.02)
        with self._lock:
            if generation != self._generation:
                return
            self._os_up = True
            self._changed.notify_all()
            # Queued under the lock so it cannot overtake the "stopped" of a power cut that follows.
            self._kubelet_call(running=True)
        log.info("lab host %s is up (sshd pid %d on %s:%d)", self.name, proc.pid, *self._where())

    def _boot_failed(self, reason: str) -> None:
        log.error("lab host %s: %s", self.name, reason)
        self._boot_error = reason
        self._changed.notify_all()

    def _where(self) -> tuple[str, int]:
        return self.spec.ssh_address, self.spec.ssh_port

    # --- the kubelet's part ----------------------------------------------------------------------------

    def _kubelet_call(self, running: bool) -> None:
        # Called with the lock held, so calls are queued in the order the power changes happened.
        if self.spec.workload_kubeconfig is not None and not self._closed:
            self._kubelet.submit(self._set_kubelet, running)

    def _set_kubelet(self, running: bool) -> None:
        marker = node.read_marker(HostFS(self.root))
        if marker is None or self.spec.workload_kubeconfig is None:
            return  # never joined (or reset): no kubelet to start or stop
        try:
            client = KubeClient.from_kubeconfig(self.spec.workload_kubeconfig, timeout=KUBELET_API_TIMEOUT_S)
            exists = node.set_kubelet_running(client, marker.node_name, running)
            log.info(
                "lab host %s: kubelet %s for Node %s%s",
                self.name,
                "started" if running else "stopped",
                marker.node_name,
                "" if exists else " (Node no longer exists)",
            )
        except Exception as e:  # a background effect: report, never raise
            state = "started" if running else "stopped"
            log.warning("lab host %s: could not mark the kubelet %s: %s", self.name, state, e)

    # --- files ----------------------------------------------------------------------------------------------

    def _prepare_root(self) -> str:
        fs = HostFS(self.root)
        sshd_dir = self.root / "sshd"
        sshd_dir.mkdir(parents=True, exist_ok=True)
        sshd_dir.chmod(0o700)
        for p in HOST_PATHS:
            fs.path(p).mkdir(parents=True, exist_ok=True)
        public_key = _ensure_host_key(sshd_dir / "ssh_host_ed25519_key")
        write_file(sshd_dir / "authorized_keys", self.spec.authorized_key.strip() + "\n", 0o600)
        write_file(sshd_dir / "sshd_config", self._sshd_config(), 0o600)
        facts = {"name": self.name, **default_hardware(), **self.spec.hardware}
        write_file(fs.path("/etc/lab/host.json"), json.dumps(facts, indent=1), 0o644)
        write_file(fs.path("/etc/lab/lab.json"), json.dumps(self._lab_settings(), indent=1), 0o644)
        if not fs.path("/etc/hostname").exists():
            write_file(fs.path("/etc/hostname"), self.name + "\n", 0o644)
        for disk in facts.get("disks") or []:
            self._ensure_disk_image(fs, disk)
        return public_key

    def _lab_settings(self) -> dict[str, Any]:
        return {
            "hostName": self.name,
            "workloadKubeconfig": str(self.spec.workload_kubeconfig)
            if self.spec.workload_kubeconfig
            else None,
            "apiserverURL": self.spec.apiserver_url,
            "kubeletVersion": self.spec.kubelet_version,
            "discoveryTimeoutSeconds": self.spec.discovery_timeout_s,
        }

    def _ensure_disk_image(self, fs: HostFS, disk: dict[str, Any]) -> None:
        name = str(disk.get("name", "")).removeprefix("/dev/")
        if not _DISK_RE.match(name):
            log.warning("lab host %s: disk %r has no simple /dev name; no image file made", self.name, disk)
            return
        image = fs.path("/dev") / name
        if not image.exists():
            image.parent.mkdir(parents=True, exist_ok=True)
            with open(image, "wb") as f:
                f.truncate(node.disk_bytes(disk))  # sparse: costs no space until written

    def _clear_run(self) -> None:
        # /run is a tmpfs on a real host: a boot starts with it empty (the bootstrap sentinel goes too).
        run = self.root / "run"
        if run.is_dir():
            for child in run.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()

    def _sshd_config(self) -> str:
        sshd_dir = self.root / "sshd"
        force = " ".join(
            shlex.quote(str(a))
            for a in (
                "/bin/sh",
                HOSTSHELL,
                self.root,
                self._python,
                LAB_DIR.parent,
                STANDINS_BIN,
                *HOST_PATHS,
            )
        )
        return "\n".join(
            [
                f"# lab host {self.name}: written by hack/lab/host.py whenever the LabHost is created",
                f"ListenAddress {self.spec.ssh_address}:{self.spec.ssh_port}",
                f"HostKey {sshd_dir / 'ssh_host_ed25519_key'}",
                f"PidFile {sshd_dir / 'sshd.pid'}",
                f"AuthorizedKeysFile {sshd_dir / 'authorized_keys'}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "UseDNS no",
                "StrictModes no",  # the key files live in a test's tmp dir, whatever its modes
                "PermitUserEnvironment no",
                "AllowAgentForwarding no",
                "AllowTcpForwarding no",
                "X11Forwarding no",
                "PermitTunnel no",
                "PrintMotd no",
                "PrintLastLog no",
                "LogLevel VERBOSE",  # logs each authentication attempt and session start
                "MaxStartups 64:30:128",
                # bash sources ~/.bashrc for every sshd session it runs first (SHLVL < 2), and the lab
                # machine's root .bashrc may do slow, noisy things (pyenv init rehashes its shims, and says so
                # on stderr when sessions race). A simulated host's sessions must not run the lab machine's
                # shell setup: SHLVL=1 makes the session's bash skip it.
                "SetEnv SHLVL=1",
                "LoginGraceTime 30",
                f"ForceCommand {force}",
                "",
            ]
        )

    def _sshd_argv(self) -> list[str]:
        config = self.root / "sshd" / "sshd_config"
        # setpriv: sshd gets SIGKILL if the thread that started it (the long-lived spawner) ever dies.
        return [
            "setpriv",
            "--pdeathsig",
            "KILL",
            "--",
            str(SSHD),
            "-D",
            "-f",
            str(config),
            "-E",
            str(self.sshd_log),
        ]


def _ensure_host_key(path: Path) -> str:
    """The host's ed25519 key, generated once and kept (its public half is pinned in BareMetalHosts)."""
    pub = path.with_name(path.name + ".pub")
    if path.exists() and pub.exists():
        return pub.read_text().split("\n")[0].strip()
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    write_file(path, private, 0o600)  # sshd refuses group/world-readable host keys
    write_file(pub, public + "\n", 0o644)
    return public


def _listening(pid: int, address: str, port: int) -> bool:
    # Asked of the kernel rather than by connecting: a probe connection would show up in sshd's log.
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp4")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and tuple(c.laddr) == (address, port) for c in conns)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL sshd and every process below it, now.

    sshd puts each connection, and each session, in a session of its own, so a process group kill would
    miss them. Instead the tree is frozen (SIGSTOP) and re-scanned until nothing new appears, so no process
    can fork away or be reparented while we collect it, and then everything is killed.
    """
    try:
        root = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        proc.wait()
        return
    frozen: dict[int, psutil.Process] = {}
    for _ in range(20):
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        new = [p for p in tree if p.pid not in frozen]
        if not new:
            break
        for p in new:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.suspend()
            frozen[p.pid] = p
    for p in frozen.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout=5)
    _wait_dead([p for p in frozen.values() if p.pid != proc.pid])


def _kill_tagged(root: str) -> None:
    """Kill what escaped the sshd tree (daemonized, reparented): hostshell.sh tags every process of a host
    with LAB_HOST_ROOT, and power off ends them all, as pulling the plug would."""
    victims = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if p.environ().get("LAB_HOST_ROOT") == root:
                p.kill()
                victims.append(p)
    _wait_dead(victims)


def _wait_dead(procs: list[psutil.Process], timeout: float = 2.0) -> None:
    """Until each process is gone or a zombie. (Orphans are reaped by init whenever it gets to them, so
    waiting for them to vanish, as psutil.wait_procs does, can take seconds.)"""
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if _running(p)]
        if pending:
            time.sleep(0.01)


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class _Spawner:
    """Starts sshd processes from one thread that lives as long as the lab process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, so starting sshd from a boot
    thread would kill it as soon as that thread ends; from here it only fires when the lab process dies
    (even by SIGKILL), which is the point.
    """

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[list[str], Path, Future[subprocess.Popen[bytes]]]] = queue.Queue()
        threading.Thread(target=self._loop, name="lab-host-spawner", daemon=True).start()

    def spawn(self, argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
        done: Future[subprocess.Popen[bytes]] = Future()
        self._requests.put((argv, log_path, done))
        return done.result()

    def _loop(self) -> None:
        while True:
            argv, log_path, done = self._requests.get()
            try:
                with open(log_path, "ab") as logf:
                    done.set_result(
                        subprocess.Popen(
                            argv,
                            stdin=subprocess.DEVNULL,
                            stdout=logf,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,  # terminal signals to the lab must not reach sshd
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                        )
                    )
            except BaseException as e:  # hand any failure to the caller, keep serving
                done.set_exception(e)


_spawner_lock = threading.Lock()
_spawner_instance: _Spawner | None = None


def _spawner() -> _Spawner:
    global _spawner_instance
    with _spawner_lock:
        if _spawner_instance is None:
            _ensure_privsep_dir()
            _spawner_instance = _Spawner()
        return _spawner_instance


def _ensure_privsep_dir() -> None:
    # OpenSSH refuses to start without its privilege separation directory (normally made by systemd).
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)


_LIVE_HOSTS: weakref.WeakSet[LabHost] = weakref.WeakSet()


def _close_all() -> None:
    for host in list(_LIVE_HOSTS):
        with contextlib.suppress(Exception):
            host.close()


atexit.register(_close_all)
