"""Talking to one host: its BMC with the credentials from its Secret, and its OS over SSH with the pinned key.

Everything blocking runs in the runners' threads (one operation at a time per BMC and per host), bounded by
the settings' timeouts. Failures come back as `HostAccessError` with a condition-ready reason and a message
that names what to fix and never carries a secret.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import TypeVar

from capi_provider.api.types import BareMetalHostSpec
from capi_provider.bmc.address import BmcAddress, parse_bmc_address
from capi_provider.bmc.base import BmcCredentials, BmcDriver, BmcError, open_driver
from capi_provider.controller.context import Context, ObjKey
from capi_provider.ssh import HostShell, SSHError, wait_for_ssh
from capi_provider.ssh.errors import HostKeyMismatch, SSHAuthFailed, SSHUnreachable

T = TypeVar("T")


class HostAccessError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def bmc_address(spec: BareMetalHostSpec) -> BmcAddress:
    try:
        return parse_bmc_address(spec.bmc.address)
    except ValueError as e:
        raise HostAccessError("InvalidBMCAddress", str(e)) from None


async def secret_values(
    ctx: Context,
    namespace: str,
    name: str,
    keys: tuple[str, ...],
    reason: str,
    may_be_empty: tuple[str, ...] = (),
) -> tuple[dict[str, str], str]:
    """The named keys of a Secret (and its resourceVersion), or HostAccessError(`reason`) naming what is
    missing. Values are never part of the message. Keys in `may_be_empty` may hold an empty value (some BMC
    accounts have no password)."""
    secret = await ctx.secret(namespace, name)
    if secret is None:
        raise HostAccessError(reason, f"Secret {namespace}/{name} does not exist")
    if any(secret.data.get(k) is None or (k not in may_be_empty and not secret.data[k]) for k in keys):
        raise HostAccessError(
            reason, f"Secret {namespace}/{name} needs the keys {', '.join(f'`{k}`' for k in keys)}"
        )
    return {k: secret.data[k].decode() for k in keys}, secret.resource_version


async def bmc_credentials(
    ctx: Context, namespace: str, spec: BareMetalHostSpec
) -> tuple[BmcCredentials, str]:
    """The BMC credentials and the Secret's resourceVersion (recorded once the BMC accepts them)."""
    values, version = await secret_values(
        ctx,
        namespace,
        spec.bmc.credentialsName,
        ("username", "password"),
        "CredentialsSecretMissing",
        may_be_empty=("password",),
    )
    return BmcCredentials(values["username"], values["password"]), version


async def bmc_op(
    ctx: Context,
    spec: BareMetalHostSpec,
    creds: BmcCredentials,
    op: Callable[[BmcDriver], T],
    *,
    timeout: float | None = None,
) -> T:
    """Run `op` against the host's BMC; one operation at a time per BMC, bounded."""
    address = bmc_address(spec)
    limit = timeout or ctx.settings.bmc_timeout

    def run() -> T:
        driver = open_driver(
            address, creds, verify_tls=not spec.bmc.disableCertificateVerification, timeout=limit
        )
        try:
            return op(driver)
        finally:
            driver.close()

    try:
        return await ctx.bmc.call(str(address), run, timeout=limit + 5)
    except BmcError as e:
        raise HostAccessError(e.reason.value, e.message) from None


async def with_bmc(
    ctx: Context,
    namespace: str,
    spec: BareMetalHostSpec,
    op: Callable[[BmcDriver], T],
    *,
    timeout: float | None = None,
) -> T:
    """Like bmc_op, reading the credentials first (cached until the Secret watch reports a change)."""
    creds, _ = await bmc_credentials(ctx, namespace, spec)
    return await bmc_op(ctx, spec, creds, op, timeout=timeout)


async def ssh_private_key(ctx: Context, namespace: str, spec: BareMetalHostSpec) -> str:
    values, _ = await secret_values(
        ctx, namespace, spec.ssh.privateKeySecretName, ("ssh-privatekey",), "SSHKeySecretMissing"
    )
    return values["ssh-privatekey"]


async def with_ssh(
    ctx: Context,
    host: ObjKey,
    spec: BareMetalHostSpec,
    op: Callable[[HostShell], T],
    *,
    wait: float = 0.0,
    timeout: float,
    keep: bool = False,
) -> T:
    """Connect (retrying for up to `wait` seconds while the OS boots), then run `op` within `timeout`.

    `keep` leaves the connection open for the host's next step (provisioning runs several in a row; a
    fresh key exchange per step costs a real network round trips and CPU on both ends). Any failure drops
    it, and the host key was verified when it was opened."""
    key = await ssh_private_key(ctx, host.namespace, spec)
    s = spec.ssh

    def run() -> T:
        shell = ctx.shells.pop(host, None)
        if shell is not None and not shell.alive():
            shell.close()
            shell = None
        if shell is None and wait > 0:
            # Retry at least every 2 s: a refused SYN costs nothing, and the machine is Running sooner.
            shell = wait_for_ssh(
                s.address,
                s.port,
                s.user,
                key,
                s.hostKey,
                timeout=wait,
                connect_timeout=ctx.settings.ssh_connect_timeout,
                max_backoff=2.0,
            )
        elif shell is None:
            shell = HostShell.connect(
                s.address, s.port, s.user, key, s.hostKey, timeout=ctx.settings.ssh_connect_timeout
            )
        try:
            result = op(shell)
        except BaseException:
            shell.close()
            raise
        if keep:
            ctx.shells[host] = shell
        else:
            shell.close()
        return result

    try:
        return await ctx.ssh.call(
            f"ssh:{host}", run, timeout=wait + timeout + ctx.settings.ssh_connect_timeout
        )
    except HostKeyMismatch as e:
        raise HostAccessError("HostKeyMismatch", str(e)) from None
    except SSHAuthFailed as e:
        raise HostAccessError("SSHAuthFailed", str(e)) from None
    except SSHUnreachable as e:
        raise HostAccessError("SSHUnreachable", str(e)) from None
    except SSHError as e:
        raise HostAccessError(type(e).__name__, str(e)) from None
    except BmcError as e:  # the runner's own timeout
        raise HostAccessError("SSHTimeout", e.message) from None


def drop_ssh(ctx: Context, host: ObjKey) -> None:
    """Close a connection kept for `host` (provisioning ended or was interrupted)."""
    shell = ctx.shells.pop(host, None)
    if shell is not None:
        shell.close()


def sudo(user: str, command: str) -> str:
    """Run as root: directly when logged in as root, else through non-interactive sudo."""
    return command if user == "root" else f"sudo -n sh -c {shlex.quote(command)}"
