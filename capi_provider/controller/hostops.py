"""The operations provisioning and deprovisioning perform on a host, as composed BMC and SSH calls.

Each function is one step an operator sees in status.steps (or one part of deprovisioning); they are
idempotent, so re-running one after a crash is safe.
"""

from __future__ import annotations

import io
import re
import shlex
import tarfile
import time

from capi_provider.api.types import BareMetalHostSpec
from capi_provider.bmc.base import BmcDriver, BootDevice, PowerState
from capi_provider.controller.context import Context, ObjKey
from capi_provider.controller.hostio import HostAccessError, sudo, with_bmc, with_ssh
from capi_provider.ssh import HostShell

SEED_DIR = "/var/lib/cloud/seed/nocloud"
SENTINEL = "/run/cluster-api/bootstrap-success.complete"
# cloud-init's stages in order, after forgetting any earlier instance (a host reused by a new machine).
CLOUD_INIT = (
    "cloud-init clean --logs && cloud-init init --local && cloud-init init && "
    "cloud-init modules --mode=config && cloud-init modules --mode=final"
)
_TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")


def scrub(text: str) -> str:
    """Remove anything shaped like a kubeadm bootstrap token from text bound for status or events."""
    return _TOKEN.sub("<token>", text)


async def power_on_for_provisioning(
    ctx: Context, host: ObjKey, spec: BareMetalHostSpec, keep_running: bool
) -> str:
    """Boot from disk. A host that is already on is power-cycled so it starts clean, unless it is a warm-pool
    host (booted by us after being cleaned, SSH verified), which is the whole point of keeping it warm."""

    def op(driver: BmcDriver) -> str:
        driver.set_boot_device(BootDevice.DISK, persistent=True)
        if driver.get_power() == PowerState.ON:
            if keep_running:
                return "already running (warm pool)"
            driver.power_cycle()
            return "power cycled"
        driver.set_power(PowerState.ON)
        return "powered on"

    return await with_bmc(ctx, host.namespace, spec, op, timeout=ctx.settings.power_settle_timeout)


async def wait_for_ssh(ctx: Context, host: ObjKey, spec: BareMetalHostSpec, window: float) -> None:
    """Wait up to `window` seconds for SSH with the pinned host key (HostKeyMismatch stops at once); the
    connection stays open for the next steps."""
    await with_ssh(ctx, host, spec, lambda shell: None, wait=window, timeout=5, keep=True)


def seed_archive(files: dict[str, bytes]) -> bytes:
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


async def deliver_seed(ctx: Context, host: ObjKey, spec: BareMetalHostSpec, files: dict[str, bytes]) -> None:
    archive = seed_archive(files)

    def op(shell: HostShell) -> None:
        shell.run(sudo(spec.ssh.user, DELIVER_SEED), stdin=archive, timeout=60, check=True)

    await with_ssh(ctx, host, spec, op, timeout=120, keep=True)


class BootstrapFailed(Exception):
    pass


# One command: skip if an earlier run already succeeded (the sentinel survives a controller restart, not a
# reboot), otherwise run cloud-init's stages and demand the sentinel afterwards.
BOOTSTRAP = (
    f"if test -f {SENTINEL}; then echo already-bootstrapped; exit 0; fi; "
    f"{CLOUD_INIT} || exit $?; "
    f"test -f {SENTINEL} || "
    f"{{ echo 'bootstrap commands did not complete: {SENTINEL} missing' >&2; exit 97; }}"
)


async def run_bootstrap(ctx: Context, host: ObjKey, spec: BareMetalHostSpec) -> str:
    """Run cloud-init's stages unless the sentinel says a previous run already succeeded."""

    def op(shell: HostShell) -> str:
        res = shell.run(sudo(spec.ssh.user, BOOTSTRAP), timeout=ctx.settings.bootstrap_timeout)
        if res.exit_code != 0:
            tail = (res.stderr or res.stdout).decode(errors="replace").strip().splitlines()[-3:]
            raise BootstrapFailed(f"bootstrap exited {res.exit_code}: {scrub(' | '.join(tail))}")
        if b"already-bootstrapped" in res.stdout:
            return "already bootstrapped (sentinel present)"
        return "bootstrap data applied"

    return await with_ssh(ctx, host, spec, op, timeout=ctx.settings.bootstrap_timeout + 60)


def cleanup_command(spec: BareMetalHostSpec, cleaning: str) -> str:
    """Leave the host the way the next user should find it: out of its cluster, no join token on disk, and
    (cleaning=metadata) no partition tables or filesystem signatures on its data disks. The first disk holds
    the operating system the provider reaches over SSH, so it is never wiped. A failed wipe fails the
    command."""
    command = f"kubeadm reset -f || true; rm -rf {SEED_DIR} /run/cluster-api; cloud-init clean --logs || true"
    if cleaning == "metadata":
        data_disks = (spec.hardware.disks or [])[1:]
        wipes = [f"wipefs --all --force {shlex.quote('/dev/' + d.name)}" for d in data_disks]
        if wipes:
            command += "; " + " && ".join(wipes)
    return command


async def clean_host(ctx: Context, host: ObjKey, spec: BareMetalHostSpec, cleaning: str) -> str:
    user = spec.ssh.user
    command = cleanup_command(spec, cleaning)

    def op(shell: HostShell) -> str:
        res = shell.run(sudo(user, command), timeout=ctx.settings.reset_timeout + ctx.settings.wipe_timeout)
        if res.exit_code != 0:
            tail = (res.stderr or res.stdout).decode(errors="replace").strip().splitlines()[-2:]
            raise HostAccessError(
                "CleaningFailed", f"cleanup exited {res.exit_code}: {scrub(' | '.join(tail))}"
            )
        return "reset" + (" and wiped" if cleaning == "metadata" else "")

    return await with_ssh(ctx, host, spec, op, timeout=ctx.settings.reset_timeout + ctx.settings.wipe_timeout)


async def read_power(ctx: Context, host: ObjKey, spec: BareMetalHostSpec) -> PowerState:
    return await with_bmc(ctx, host.namespace, spec, lambda d: d.get_power())


async def set_power(ctx: Context, host: ObjKey, spec: BareMetalHostSpec, state: PowerState) -> None:
    """Power the host on or off and wait until the BMC reports it (bounded by the settle timeout)."""
    await with_bmc(
        ctx, host.namespace, spec, lambda d: d.set_power(state), timeout=ctx.settings.power_settle_timeout
    )


async def deprovision(ctx: Context, host: ObjKey, spec: BareMetalHostSpec, cleaning: str) -> list[str]:
    """Reset and wipe over SSH, then power off through the BMC, which must succeed (HostAccessError
    otherwise). A host found powered off is booted first when its data disks must be wiped: the next user
    must not find the last one's data. An OS that does not come up is noted, not waited on forever."""
    notes = []
    on = await read_power(ctx, host, spec) == PowerState.ON
    booted_to_clean = not on and cleaning == "metadata"
    if booted_to_clean:
        await set_power(ctx, host, spec, PowerState.ON)
        notes.append("booted to clean")
    if on or booted_to_clean:
        try:
            if booted_to_clean:
                await with_ssh(
                    ctx, host, spec, lambda shell: None, wait=ctx.settings.boot_timeout, timeout=5, keep=True
                )
            notes.append(await clean_host(ctx, host, spec, cleaning))
        except HostAccessError as e:
            if e.reason == "CleaningFailed":
                raise  # the OS answered and the wipe failed: the host must not go back to the pool dirty
            notes.append(f"OS unreachable, not reset/wiped: {e.reason}")
    await set_power(ctx, host, spec, PowerState.OFF)
    notes.append("powered off")
    return notes
