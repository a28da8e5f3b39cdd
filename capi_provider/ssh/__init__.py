"""SSH to provisioned hosts: pinned host keys, bounded commands, file writes over stdin."""

from capi_provider.ssh.client import CommandResult, HostShell, wait_for_ssh
from capi_provider.ssh.errors import (
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    InvalidKey,
    SSHAuthFailed,
    SSHError,
    SSHUnreachable,
)
from capi_provider.ssh.keys import PublicKey, fingerprint, load_private_key, parse_public_key, public_line

__all__ = [
    "CommandFailed",
    "CommandResult",
    "CommandTimeout",
    "HostKeyMismatch",
    "HostShell",
    "InvalidKey",
    "PublicKey",
    "SSHAuthFailed",
    "SSHError",
    "SSHUnreachable",
    "fingerprint",
    "load_private_key",
    "parse_public_key",
    "public_line",
    "wait_for_ssh",
]
