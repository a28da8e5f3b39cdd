"""One-time tokens and their policy (pure).

A network boot is armed for one MAC; the machine's firmware fetches its iPXE script once, the script names
a one-time nonce for the initramfs fragment that carries the boot's token, and that fragment is served once.
The token then authorises the agent of that boot only (its reports, its image, its seed) until it expires
or the boot is replaced. Only digests are kept once the token has been handed out.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Verdict(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    UNKNOWN = "unknown"  # no grant has this digest (wrong, another host's replaced boot, or forged)
    EXPIRED = "expired"
    REVOKED = "revoked"
    USED = "used"  # a one-time grant that was already used


@dataclass
class Grant:
    """What a secret allows, kept under the secret's digest."""

    mac: str
    boot_id: str
    expires_at: float
    one_time: bool = False
    used: bool = False
    revoked: bool = False


def check(grant: Grant | None, now: float, *, presented: bool = True) -> Verdict:
    if not presented:
        return Verdict.MISSING
    if grant is None:
        return Verdict.UNKNOWN
    if grant.revoked:
        return Verdict.REVOKED
    if now >= grant.expires_at:
        return Verdict.EXPIRED
    if grant.one_time and grant.used:
        return Verdict.USED
    return Verdict.OK


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
