"""Image checksums (pure): which algorithms we accept and how a checksum is written.

Only sha256 and sha512: an operator's image URL is untrusted transport, the checksum is what makes the
bytes trustworthy, and md5/sha1 cannot carry that weight.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

ALGORITHMS = {"sha256": 64, "sha512": 128}
_REJECTED = {"md5", "sha1", "sha224", "sha384"}


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    hexdigest: str

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"checksum algorithm {self.algorithm!r} is not accepted: use sha256 or sha512")
        if not re.fullmatch(rf"[0-9a-f]{{{ALGORITHMS[self.algorithm]}}}", self.hexdigest):
            raise ValueError(
                f"a {self.algorithm} checksum is {ALGORITHMS[self.algorithm]} lowercase hex digits"
            )

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    def matches(self, hexdigest: str) -> bool:
        return hmac.compare_digest(self.hexdigest, hexdigest.strip().lower())


def parse_checksum(value: str, algorithm: str | None = None) -> Checksum:
    """`sha256:<hex>` / `sha512:<hex>`, or bare hex with `algorithm` (or inferred from its length)."""
    value = value.strip()
    if ":" in value:
        algo, _, digest = value.partition(":")
        algo = algo.lower()
        if algorithm is not None and algorithm.lower() != algo:
            raise ValueError(f"checksum says {algo} but the algorithm given is {algorithm}")
    else:
        digest = value
        if algorithm is not None:
            algo = algorithm.lower()
        else:
            by_length = {n: a for a, n in ALGORITHMS.items()}
            algo = by_length.get(len(digest), "")
            if not algo:
                raise ValueError("a bare checksum must be 64 (sha256) or 128 (sha512) hex digits")
    if algo in _REJECTED:
        raise ValueError(f"{algo} checksums are not accepted: use sha256 or sha512")
    return Checksum(algo, digest.lower())
