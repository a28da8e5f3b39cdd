"""The SSH-push backend: servers with an installed OS, powered through their BMC and provisioned over SSH.

PowerOn sets the boot device to disk and powers the server on (cycling it if it was on), WaitForSSH waits for
its OS with the pinned host key, DeliverSeed writes the NoCloud seed, Bootstrap runs cloud-init's stages,
which run CAPI's bootstrap commands (`kubeadm join`/`init`). Cleaning runs `kubeadm reset` and wipes the data
disks with `wipefs`, refusing any disk that is mounted or backs the OS.

Blocking work (pyghmi, paramiko) runs on `BlockingRunner` threads: one operation at a time per BMC and per
host, fair per namespace, every call bounded. Waiting for a boot is an async loop of short connection
attempts, never a thread held for the boot timeout.
"""

from __future__ import annotations

import asyncio
import io
import re
import shlex
import tarfile
import time
from collections.abc import Callable
from typing import TypeVar

from capi_provider.api.types import BareMetalHostSpec, Disk
from capi_provider.bmc.address import BmcAddress, parse_bmc_address
from capi_provider.bmc.base import BmcCredentials, BmcDriver, BmcError, BootDevice, PowerState, open_driver
from capi_provider.config import Settings
from capi_provider.objkey import ObjKey
from capi_provider.provisioner.base import Credentials, ProvisionerError, Seed, StepSpec, Target
from capi_provider.runner import BlockingRunner, RunnerTimeout
from capi_provider.ssh import HostShell, SSHError
from capi_provider.ssh.errors import HostKeyMismatch, SSHAuthFailed, SSHUnreachable

T = TypeVar("T")

SEED_DIR = "/var/lib/cloud/seed/nocloud"
SENTINEL = "/run/cluster-api/bootstrap-success.complete"
CLOUD_INIT_LOG = "/var/log/cloud-init-output.log"
# cloud-init's stages in order, after forgetting any earlier instance (a host reused by a new machine).
CLOUD_INIT = (
    "cloud-init clean --logs && cloud-init init --local && cloud-init init && "
    "cloud-init modules --mode=config && cloud-init modules --mode=final"
)

STEPS = (
    StepSpec("PowerOn"),
    StepSpec("WaitForSSH"),
    StepSpec("DeliverSeed", needs_seed=True),
    StepSpec("Bootstrap"),
)

_TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|$)", re.S)
_LONG_B64 = re.compile(r"[A-Za-z0-9+/=]{48,}")


def scrub(text: str) -> str:
    """Remove what could be a secret from text bound for status or events: kubeadm bootstrap tokens, PEM
    blocks (keys, certificates) and long base64 runs (embedded kubeconfigs)."""
    return _LONG_B64.sub("<redacted>", _PEM.sub("<redacted>", _TOKEN.sub("<token>", text)))


def seed_archive(files: Seed) -> bytes:
    """The seed files as one tar stream: one command writes them all, and the contents (a join token)
    travel on stdin, never in a command line."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o600, int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


# Extract into a fresh directory and swap it in, so a host never boots from half a seed.
DELIVER_SEED = (
    f"umask 077 && rm -rf {SEED_DIR}.new && mkdir -p {SEED_DIR}.new && tar -x -C {SEED_DIR}.new -f - && "
    f"rm -rf {SEED_DIR} && mv {SEED_DIR}.new {SEED_DIR}"
)

# One command: skip if an earlier run already succeeded (the sentinel survives a controller restart, not a
# reboot), otherwise run cloud-init's stages and demand the sentinel afterwards. On failure the end of
# cloud-init's own output log says why (the kubeadm error), on stderr.
BOOTSTRAP = (
    f"if test -f {SENTINEL}; then echo already-bootstrapped; exit 0; fi; "
    f"{CLOUD_INIT}; rc=$?; "
    f"if [ $rc -eq 0 ] && ! test -f {SENTINEL}; then echo 'bootstrap commands did not complete: "
    f"{SENTINEL} missing' >&2; rc=97; fi; "
    f"if [ $rc -ne 0 ]; then tail -n 15 {CLOUD_INIT_LOG} >&2 2>/dev/null; fi; exit $rc"
)

# A data disk is wiped only if it is what the operator declared (its serial, when given) and nothing on it is
# in use: not mounted (directly, through a partition or a device-mapper child), not swap. No --force: wipefs
# itself then refuses a device the kernel holds open exclusively.
WIPE_FUNCTION = r"""wipe_disk() {
  d=$(readlink -f -- "$1") || { echo "$1: no such disk" >&2; return 1; }
  [ -b "$d" ] || [ -f "$d" ] || { echo "$1: not a disk" >&2; return 1; }
  if [ -n "$2" ] && [ -b "$d" ]; then
    s=$(lsblk -dno SERIAL "$d" 2>/dev/null | tr -d '[:space:]')
    [ "$s" = "$2" ] || { echo "$1: serial is '$s', expected '$2': refusing to wipe" >&2; return 1; }
  fi
  for src in $(awk '{print $1}' /proc/self/mounts) $(awk 'NR>1 {print $1}' /proc/swaps); do
    r=$(readlink -f -- "$src" 2>/dev/null) || r=$src
    case "$r" in "$d"|"$d"[0-9]*|"$d"p[0-9]*)
      echo "$1 is in use ($src): refusing to wipe" >&2; return 1;;
    esac
  done
  if [ -b "$d" ]; then
    command -v lsblk >/dev/null || { echo "no lsblk: cannot prove $1 unused, not wiped" >&2; return 1; }
    if [ -n "$(lsblk -nro MOUNTPOINT "$d" | tr -d '[:space:]')" ]; then
      echo "$1 has mounted partitions: refusing to wipe" >&2; return 1
    fi
  fi
  wipefs --all -- "$d" >/dev/null
}"""


def disk_path(disk: Disk) -> str:
    """Where the OS finds the disk: a stable /dev/disk/by-* path or WWN when the operator gave one (kernel
    names can change between boots), else /dev/<name>."""
    if disk.name.startswith("/dev/disk/by-"):
        return disk.name
    if disk.wwn:
        return f"/dev/disk/by-id/wwn-{disk.wwn}"
    return f"/dev/{disk.name}"


def cleanup_command(spec: BareMetalHostSpec, cleaning: str) -> str:
    """Leave the host the way the next user should find it: out of its cluster, no join token on disk, and
    (cleaning=metadata) no partition tables or filesystem signatures on its data disks. The first disk holds
    the operating system the provider reaches over SSH, so it is never wiped. A failed wipe fails the
    command."""
    command = f"kubeadm reset -f || true; rm -rf {SEED_DIR} /run/cluster-api; cloud-init clean --logs || true"
    if cleaning == "metadata":
        data_disks = (spec.hardware.disks or [])[1:]
        if data_disks:
            wipes = [
                f"wipe_disk {shlex.quote(disk_path(d))} {shlex.quote(d.serial or '')}" for d in data_disks
            ]
            command += f"\n{WIPE_FUNCTION}\n" + " && ".join(wipes)
    return command


def sudo(user: str, command: str) -> str:
    """Run as root: directly when logged in as root, else through non-interactive sudo."""
    return command if user == "root" else f"sudo -n sh -c {shlex.quote(command)}"


class BootstrapFailed(ProvisionerError):
    def __init__(self, message: str) -> None:
        super().__init__("BootstrapFailed", message)


class SshPushProvisioner:
    steps = STEPS

    def __init__(
        self, settings: Settings, credentials: Credentials, bmc: BlockingRunner, ssh: BlockingRunner
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.bmc = bmc
        self.ssh = ssh
        # SSH connections kept between the steps of one provisioning (a key exchange per step costs round
        # trips and CPU on both ends). Each is used by one runner thread at a time (serialized per host).
        self.shells: dict[ObjKey, HostShell] = {}

    # ------------------------------------------------------------------ the interface
    async def run_step(self, step: str, target: Target, *, seed: Seed | None, warm: bool) -> str:
        if step == "PowerOn":
            return await self._power_on_from_disk(target, keep_running=warm)
        if step == "WaitForSSH":
            await self.wait_for_os(target, self.settings.boot_timeout)
            return f"SSH up, host key {target.spec.ssh.hostKey.split()[0]} verified"
        if step == "DeliverSeed":
            assert seed is not None
            archive = seed_archive(seed)
            user = target.spec.ssh.user
            await self._ssh(
                target,
                lambda sh: sh.run(sudo(user, DELIVER_SEED), stdin=archive, timeout=60, check=True),
                timeout=120,
            )
            return f"wrote {', '.join(sorted(seed))} to {SEED_DIR}"
        if step == "Bootstrap":
            return await self._bootstrap(target)
        raise ValueError(f"unknown step {step}")

    async def read_power(self, target: Target) -> PowerState:
        return await self._bmc(target, lambda d: d.get_power())

    async def set_power(self, target: Target, state: PowerState) -> None:
        await self._bmc(target, lambda d: d.set_power(state), timeout=self.settings.power_settle_timeout)

    async def wait_for_os(self, target: Target, window: float) -> None:
        """Short connection attempts with async sleeps between them until the OS answers with the pinned
        host key; the connection is kept for the next steps. HostKeyMismatch and auth failures stop at
        once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window
        delay, attempts = 0.5, 0
        while True:
            attempts += 1
            try:
                await self._ssh(target, lambda shell: None, timeout=5)
                return
            except ProvisionerError as e:
                if e.reason not in ("SSHUnreachable", "SSHTimeout"):
                    raise
                left = deadline - loop.time()
                if left <= 0:
                    raise ProvisionerError(
                        "SSHUnreachable",
                        f"OS not answering after {window:g}s ({attempts} attempts); last: {e.message}",
                    ) from None
            # Retry at least every 2 s: a refused SYN costs nothing, and the machine is Running sooner.
            await asyncio.sleep(min(delay, max(left, 0)))
            delay = min(delay * 2, 2.0)

    async def clean(self, target: Target, cleaning: str) -> str:
        command = cleanup_command(target.spec, cleaning)
        user = target.spec.ssh.user
        limit = self.settings.reset_timeout + self.settings.wipe_timeout

        def op(shell: HostShell) -> str:
            res = shell.run(sudo(user, command), timeout=limit)
            if res.exit_code != 0:
                tail = (res.stderr or res.stdout).decode(errors="replace").strip().splitlines()[-2:]
                raise ProvisionerError(
                    "CleaningFailed", f"cleanup exited {res.exit_code}: {scrub(' | '.join(tail))}"
                )
            return "reset" + (" and wiped" if cleaning == "metadata" else "")

        return await self._ssh(target, op, timeout=limit, keep=False)

    def end_session(self, key: ObjKey) -> None:
        shell = self.shells.pop(key, None)
        if shell is not None:
            shell.close()

    # ------------------------------------------------------------------ steps
    async def _power_on_from_disk(self, target: Target, keep_running: bool) -> str:
        """Boot from disk. A host that is already on is power-cycled so it starts clean, unless it is a
        warm-pool host (booted by us after being cleaned, SSH verified): that is the point of keeping it
        warm."""

        def op(driver: BmcDriver) -> str:
            driver.set_boot_device(BootDevice.DISK, persistent=True)
            if driver.get_power() == PowerState.ON:
                if keep_running:
                    return "already running (warm pool)"
                driver.power_cycle()
                return "power cycled"
            driver.set_power(PowerState.ON)
            return "powered on"

        return await self._bmc(target, op, timeout=self.settings.power_settle_timeout)

    async def _bootstrap(self, target: Target) -> str:
        user = target.spec.ssh.user
        limit = self.settings.bootstrap_timeout

        def op(shell: HostShell) -> str:
            res = shell.run(sudo(user, BOOTSTRAP), timeout=limit)
            if res.exit_code != 0:
                tail = (res.stderr or res.stdout).decode(errors="replace").strip().splitlines()[-6:]
                raise BootstrapFailed(f"bootstrap exited {res.exit_code}: {scrub(' | '.join(tail))}")
            if b"already-bootstrapped" in res.stdout:
                return "already bootstrapped (sentinel present)"
            return "bootstrap data applied"

        return await self._ssh(target, op, timeout=limit + 60)

    # ------------------------------------------------------------------ BMC and SSH access
    async def _bmc(self, target: Target, op: Callable[[BmcDriver], T], *, timeout: float | None = None) -> T:
        """Run `op` against the host's BMC with the credentials from its Secret; one operation at a time per
        BMC, bounded, fair per namespace."""
        address = _bmc_address(target.spec)
        username, password, _ = await self.credentials.bmc(target)
        creds = BmcCredentials(username, password)
        limit = timeout or self.settings.bmc_timeout
        # Verification stays on: the host's own CA bundle, else the controller's, else the system store.
        ca_bundle = await self.credentials.ca_bundle(target) or self.settings.redfish_ca_bundle

        def run() -> T:
            driver = open_driver(
                address,
                creds,
                verify_tls=not target.spec.bmc.disableCertificateVerification,
                timeout=limit,
                ca_bundle=ca_bundle,
            )
            try:
                return op(driver)
            finally:
                driver.close()

        try:
            return await self.bmc.call(str(address), run, timeout=limit + 5, tenant=target.key.namespace)
        except BmcError as e:
            if e.reason.value == "CredentialsRejected":
                # Re-read the Secret next time: it may just have been rotated.
                self.credentials.forget(target.key.namespace, target.spec.bmc.credentialsName)
            if e.reason.value == "TLSVerificationFailed" and target.spec.bmc.caBundleName:
                self.credentials.forget(target.key.namespace, target.spec.bmc.caBundleName)
            raise ProvisionerError(e.reason.value, e.message) from None
        except RunnerTimeout as e:
            raise ProvisionerError("BMCTimeout", str(e)) from None

    async def _ssh(
        self, target: Target, op: Callable[[HostShell], T], *, timeout: float, keep: bool = True
    ) -> T:
        """Connect (or reuse the kept connection) with the pinned host key, then run `op` within `timeout`."""
        key = await self.credentials.ssh_key(target)
        s = target.spec.ssh
        connect_timeout = self.settings.ssh_connect_timeout

        def run() -> T:
            shell = self.shells.pop(target.key, None)
            if shell is not None and not shell.alive():
                shell.close()
                shell = None
            if shell is None:
                shell = HostShell.connect(s.address, s.port, s.user, key, s.hostKey, timeout=connect_timeout)
            try:
                result = op(shell)
            except BaseException:
                shell.close()
                raise
            if keep:
                self.shells[target.key] = shell
            else:
                shell.close()
            return result

        try:
            return await self.ssh.call(
                f"ssh:{target.key}", run, timeout=timeout + connect_timeout, tenant=target.key.namespace
            )
        except HostKeyMismatch as e:
            raise ProvisionerError("HostKeyMismatch", str(e)) from None
        except SSHAuthFailed as e:
            self.credentials.forget(target.key.namespace, s.privateKeySecretName)
            raise ProvisionerError("SSHAuthFailed", str(e)) from None
        except SSHUnreachable as e:
            raise ProvisionerError("SSHUnreachable", str(e)) from None
        except SSHError as e:
            raise ProvisionerError(type(e).__name__, str(e)) from None
        except RunnerTimeout as e:
            raise ProvisionerError("SSHTimeout", str(e)) from None


def _bmc_address(spec: BareMetalHostSpec) -> BmcAddress:
    try:
        return parse_bmc_address(spec.bmc.address)
    except ValueError as e:
        raise ProvisionerError("InvalidBMCAddress", str(e)) from None
