"""A blocking SSH shell to one host, with its host key pinned.

The controller calls this from worker threads. Every call is bounded by a timeout. The host key is checked
right after key exchange and before authentication, so a wrong host never sees our public key or any data.
No agent, no ~/.ssh: the only credentials used are the ones passed in.
"""

from __future__ import annotations

import logging
import select
import shlex
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

import paramiko

from capi_provider.ssh.errors import (
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    SSHAuthFailed,
    SSHError,
    SSHUnreachable,
    summarize,
)
from capi_provider.ssh.keys import PublicKey, fingerprint, load_private_key, parse_public_key

log = logging.getLogger(__name__)

_CHUNK = 65536
# Only the last this-many bytes of each output stream are kept: what a caller needs is the end (an error, a
# marker line), and a runaway command must not grow controller memory with every host it runs on.
MAX_OUTPUT = 64 * 1024
# A kept connection whose peer vanished (power cut) must be noticed: keepalives every this many seconds.
KEEPALIVE_S = 15


class CommandResult(NamedTuple):
    exit_code: int
    stdout: bytes
    stderr: bytes


class _PinnedKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko when the presented key is of a type we hold no key for: always a mismatch.

    (A same-type key with different material is rejected by paramiko itself as BadHostKeyException,
    because the pinned key is registered as the only known key for this host.)
    """

    def __init__(self, pinned: PublicKey, address: str, port: int) -> None:
        self._pinned = pinned
        self._address = address
        self._port = port

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        if self._pinned.matches(key):  # defensive: paramiko only calls us for unknown keys
            return
        raise HostKeyMismatch(
            address=self._address,
            port=self._port,
            expected_fingerprint=self._pinned.fingerprint,
            presented_fingerprint=fingerprint(key.asbytes()),
            presented_type=key.get_name(),
        )


class HostShell:
    """An authenticated SSH connection; run commands and write files. Use as a context manager."""

    def __init__(
        self, client: paramiko.SSHClient, address: str, port: int, host_key_fingerprint: str
    ) -> None:
        self._client = client
        self.address = address
        self.port = port
        self.host_key_fingerprint = host_key_fingerprint

    @classmethod
    def connect(
        cls,
        address: str,
        port: int,
        user: str,
        private_key: str | bytes | paramiko.PKey,
        pinned_host_key: str | PublicKey,
        timeout: float = 10.0,
    ) -> HostShell:
        """Connect, verify the pinned host key, authenticate with the private key.

        Raises SSHUnreachable, HostKeyMismatch, SSHAuthFailed (or InvalidKey for unparsable keys).
        """
        pkey = private_key if isinstance(private_key, paramiko.PKey) else load_private_key(private_key)
        pinned = (
            pinned_host_key if isinstance(pinned_host_key, PublicKey) else parse_public_key(pinned_host_key)
        )

        client = paramiko.SSHClient()
        # The pinned key is the only known key for this host: paramiko then prefers its type in the key
        # exchange and raises BadHostKeyException for a same-type key that differs.
        client.get_host_keys().add(_hostkey_name(address, port), pinned.key_type, pinned.to_paramiko())
        client.set_missing_host_key_policy(_PinnedKeyPolicy(pinned, address, port))
        where = f"{address}:{port}"
        try:
            client.connect(
                address,
                port=port,
                username=user,
                pkey=pkey,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except HostKeyMismatch:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            raise HostKeyMismatch(
                address=address,
                port=port,
                expected_fingerprint=pinned.fingerprint,
                presented_fingerprint=fingerprint(e.key.asbytes()),
                presented_type=e.key.get_name(),
            ) from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise SSHAuthFailed(
                f"{where} refused authentication as {user!r} with key {fingerprint(pkey.asbytes())}: "
                f"{type(e).__name__}",
                address=address,
                port=port,
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as e:
            # Refused / timed out / reset / no banner yet: the usual shapes of "not up (yet)".
            client.close()
            raise SSHUnreachable(
                f"cannot reach SSH at {where}: {_describe(e)}", address=address, port=port
            ) from None
        except BaseException:
            client.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_S)
        log.debug("ssh connected to %s as %s (host key %s)", where, user, pinned.fingerprint)
        return cls(client, address, port, pinned.fingerprint)

    def run(
        self, command: str, stdin: bytes | None = None, timeout: float = 60.0, *, check: bool = False
    ) -> CommandResult:
        """Run a command to completion (or until `timeout`), feeding `stdin` and collecting stdout/stderr.

        Raises CommandTimeout, SSHUnreachable if the connection drops, and CommandFailed if `check`.
        """
        deadline = time.monotonic() + timeout
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise SSHUnreachable(f"connection to {self.address}:{self.port} is closed", **self._where())
        try:
            chan = transport.open_session(timeout=max(0.1, deadline - time.monotonic()))
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise SSHUnreachable(
                f"cannot open a session on {self.address}:{self.port}: {_describe(e)}", **self._where()
            ) from None
        started = time.monotonic()
        # Blocking sends and receives on the channel never outlast the command's own deadline.
        chan.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chan.exec_command(command)
            result = self._pump(chan, command, stdin or b"", deadline, timeout)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise SSHUnreachable(
                f"connection to {self.address}:{self.port} lost while running {summarize(command)!r}: "
                f"{_describe(e)}",
                **self._where(),
            ) from None
        finally:
            chan.close()
        log.debug(
            "ssh %s:%s %r -> %d in %.2fs",
            self.address,
            self.port,
            summarize(command, 80),
            result.exit_code,
            time.monotonic() - started,
        )
        if check and result.exit_code != 0:
            raise CommandFailed(
                command=command, exit_code=result.exit_code, stderr=result.stderr, **self._where()
            )
        return result

    def _pump(
        self, chan: paramiko.Channel, command: str, stdin: bytes, deadline: float, timeout: float
    ) -> CommandResult:
        # Feed stdin and drain both outputs together: a command that writes a lot before reading its input
        # (or the reverse) must not deadlock against our own blocking send or receive.
        pending = memoryview(stdin)
        if not pending:
            chan.shutdown_write()
        out, err = bytearray(), bytearray()
        while True:
            progressed = False
            if pending and chan.send_ready():
                sent = chan.send(pending[:_CHUNK].tobytes())
                pending = pending[sent:]
                progressed = True
                if not pending:
                    chan.shutdown_write()
            while chan.recv_ready():
                _append(out, chan.recv(_CHUNK))
                progressed = True
            while chan.recv_stderr_ready():
                _append(err, chan.recv_stderr(_CHUNK))
                progressed = True
            drained = not chan.recv_ready() and not chan.recv_stderr_ready()
            # paramiko keeps exit_status at -1 until the server sends one (real statuses are unsigned).
            if drained and chan.exit_status != -1 and (chan.eof_received or chan.closed):
                return CommandResult(chan.exit_status, bytes(out), bytes(err))
            if drained and chan.closed:
                if _transport_dead(chan):
                    raise EOFError("connection closed")
                # Session ended without a status: OpenSSH does that when the command died from a signal.
                return CommandResult(-1, bytes(out), bytes(err))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(command=command, timeout=timeout, **self._where())
            if not progressed:
                # The channel's fileno turns readable on stdout/stderr data and on close; while stdin is
                # pending we also poll because paramiko has no "writable" event.
                select.select([chan], [], [], min(remaining, 0.02 if pending else 0.5))

    def write_file(self, path: str, content: bytes, mode: int = 0o600, timeout: float = 30.0) -> None:
        """Atomically replace `path` with `content` (parent directories are created; umask 077).

        The content travels on stdin, so it never appears in a command line or process list.
        """
        self.run(write_file_command(path, mode), stdin=content, timeout=timeout, check=True)

    def close(self) -> None:
        self._client.close()

    def alive(self) -> bool:
        """Whether the connection can still carry commands (a kept connection may have dropped)."""
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def __enter__(self) -> HostShell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self) -> dict[str, object]:
        return {"address": self.address, "port": self.port}


def write_file_command(path: str, mode: int) -> str:
    """POSIX sh that writes stdin to `path` through a temp file in the same directory and renames it."""
    p = shlex.quote(path)
    return (
        f"if [ -d {p} ]; then echo {shlex.quote(path + ': is a directory')} >&2; exit 1; fi; "
        f'umask 077 && mkdir -p -- "$(dirname -- {p})" && '
        f"t=$(mktemp -- {shlex.quote(path + '.tmp.XXXXXX')}) && "
        f'{{ cat > "$t" && chmod {mode:o} -- "$t" && mv -f -- "$t" {p}; }} || {{ rm -f -- "$t"; exit 1; }}'
    )


def wait_for_ssh(
    address: str,
    port: int,
    user: str,
    private_key: str | bytes | paramiko.PKey,
    pinned_host_key: str | PublicKey,
    *,
    timeout: float,
    connect_timeout: float = 5.0,
    initial_backoff: float = 0.5,
    max_backoff: float = 5.0,
    retry_auth_failures: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> HostShell:
    """Connect, retrying while the host is not up yet, until `timeout` seconds have passed.

    HostKeyMismatch stops at once (a different machine answers: retrying cannot help). SSHAuthFailed also
    stops at once unless `retry_auth_failures` (for images that install authorized keys late in boot).
    On timeout, raises SSHUnreachable describing the last failure.
    """
    pkey = private_key if isinstance(private_key, paramiko.PKey) else load_private_key(private_key)
    pinned = pinned_host_key if isinstance(pinned_host_key, PublicKey) else parse_public_key(pinned_host_key)
    deadline = clock() + timeout
    backoff = initial_backoff
    attempts = 0
    last: SSHError | None = None
    while True:
        attempts += 1
        remaining = deadline - clock()
        try:
            attempt_timeout = max(0.5, min(connect_timeout, remaining))
            return HostShell.connect(address, port, user, pkey, pinned, timeout=attempt_timeout)
        except SSHUnreachable as e:
            last = e
        except SSHAuthFailed as e:
            if not retry_auth_failures:
                raise
            last = e
        remaining = deadline - clock()
        if remaining <= 0:
            raise SSHUnreachable(
                f"SSH at {address}:{port} not available after {timeout:g}s ({attempts} attempts); "
                f"last error: {last}",
                address=address,
                port=port,
            )
        sleep(min(backoff, remaining))
        backoff = min(backoff * 2, max_backoff)


def _hostkey_name(address: str, port: int) -> str:
    # The name paramiko looks the host up under (known_hosts syntax).
    return address if port == 22 else f"[{address}]:{port}"


def _append(buf: bytearray, data: bytes) -> None:
    buf += data
    if len(buf) > MAX_OUTPUT:
        del buf[: len(buf) - MAX_OUTPUT]


def _transport_dead(chan: paramiko.Channel) -> bool:
    transport = chan.get_transport()
    return transport is None or not transport.is_active()


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        # One error per address family tried; their texts ("Connection refused") are what tells the story.
        return "; ".join(sorted({getattr(err, "strerror", None) or str(err) for err in e.errors.values()}))
    text = str(e) or type(e).__name__
    return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text
