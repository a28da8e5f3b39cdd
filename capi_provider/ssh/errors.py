"""What can go wrong when the provider talks SSH to a host.

The controller reacts differently to each: `SSHUnreachable` means "not up yet, retry later",
`HostKeyMismatch` and `SSHAuthFailed` need a human (wrong host, wrong key), `CommandFailed` and
`CommandTimeout` are provisioning failures. Messages name the host and fingerprints, never key material,
so they are safe to put in conditions and events.
"""

from __future__ import annotations


class SSHError(Exception):
    """Base class; `address`/`port` say which host."""

    def __init__(self, message: str, *, address: str = "", port: int = 0) -> None:
        super().__init__(message)
        self.address = address
        self.port = port


class InvalidKey(SSHError, ValueError):
    """A private key or pinned host key that cannot be parsed (the text itself is never echoed)."""


class SSHUnreachable(SSHError):
    """No SSH server answered (refused, timed out, reset, no banner) or the connection dropped."""


class HostKeyMismatch(SSHError):
    """The server presented a host key other than the pinned one; nothing was authenticated or sent."""

    def __init__(
        self,
        *,
        address: str,
        port: int,
        expected_fingerprint: str,
        presented_fingerprint: str,
        presented_type: str,
    ) -> None:
        super().__init__(
            f"host key mismatch for {address}:{port}: expected {expected_fingerprint}, "
            f"server presented {presented_type} {presented_fingerprint}",
            address=address,
            port=port,
        )
        self.expected_fingerprint = expected_fingerprint
        self.presented_fingerprint = presented_fingerprint
        self.presented_type = presented_type


class SSHAuthFailed(SSHError):
    """The server (with the right host key) refused our key."""


class CommandFailed(SSHError):
    """A remote command exited non-zero."""

    def __init__(self, *, address: str, port: int, command: str, exit_code: int, stderr: bytes) -> None:
        tail = stderr[-500:].decode("utf-8", "replace").strip()
        super().__init__(
            f"command {summarize(command)!r} on {address}:{port} exited {exit_code}"
            + (f": {tail}" if tail else ""),
            address=address,
            port=port,
        )
        self.command = command
        self.exit_code = exit_code
        self.stderr = stderr


class CommandTimeout(SSHError):
    """A remote command did not finish in time (its channel was closed)."""

    def __init__(self, *, address: str, port: int, command: str, timeout: float) -> None:
        super().__init__(
            f"command {summarize(command)!r} on {address}:{port} did not finish within {timeout:g}s",
            address=address,
            port=port,
        )
        self.command = command
        self.timeout = timeout


def summarize(command: str, limit: int = 120) -> str:
    """First line of a command, shortened: enough to recognise it in a message without dumping scripts."""
    first = command.strip().splitlines()[0] if command.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."
