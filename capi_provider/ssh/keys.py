"""Parsing the provider's private key and a host's pinned public key, and OpenSSH fingerprints.

The private key comes from a Secret as text and can be in any format `ssh-keygen` or `openssl` writes
(OpenSSH, PKCS#1, SEC1, PKCS#8). We parse it with `cryptography` ourselves instead of trying each paramiko
key class in turn, because paramiko's errors can carry the key bytes, and none of ours may.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import struct
from dataclasses import dataclass

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from capi_provider.ssh.errors import InvalidKey

# Public key types we accept for pinning, and the key classes that implement them.
_PUBLIC_KEY_TYPES = {
    "ssh-ed25519": paramiko.Ed25519Key,
    "ssh-rsa": paramiko.RSAKey,
    "ecdsa-sha2-nistp256": paramiko.ECDSAKey,
    "ecdsa-sha2-nistp384": paramiko.ECDSAKey,
    "ecdsa-sha2-nistp521": paramiko.ECDSAKey,
}


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob: `SHA256:` + unpadded base64."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass(frozen=True)
class PublicKey:
    """A pinned host key as written in a BareMetalHost ("<type> <base64> [comment]")."""

    key_type: str
    blob: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.blob)

    @property
    def line(self) -> str:
        return f"{self.key_type} {base64.b64encode(self.blob).decode()}"

    def to_paramiko(self) -> paramiko.PKey:
        return _PUBLIC_KEY_TYPES[self.key_type](data=self.blob)

    def matches(self, key: paramiko.PKey) -> bool:
        # Compare the wire blobs: key type and key material together, independent of signature algorithm.
        return key.asbytes() == self.blob


def parse_public_key(line: str) -> PublicKey:
    """Parse an OpenSSH public key line; the type inside the blob must match the declared type."""
    parts = line.strip().split()
    if len(parts) < 2:
        raise InvalidKey("pinned host key must look like '<type> <base64>'")
    key_type, b64 = parts[0], parts[1]
    if key_type not in _PUBLIC_KEY_TYPES:
        supported = ", ".join(_PUBLIC_KEY_TYPES)
        raise InvalidKey(f"unsupported host key type {key_type!r} (supported: {supported})")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidKey(f"pinned {key_type} host key is not valid base64") from None
    if len(blob) < 4:
        raise InvalidKey(f"pinned {key_type} host key is truncated")
    (name_len,) = struct.unpack(">I", blob[:4])
    inner = blob[4 : 4 + name_len]
    if inner != key_type.encode():
        raise InvalidKey(f"pinned host key declares {key_type} but its data is {inner[:40]!r}")
    key = PublicKey(key_type, blob)
    try:
        key.to_paramiko()
    except Exception:  # any parse failure means the same thing to the caller
        raise InvalidKey(f"pinned {key_type} host key data is malformed") from None
    return key


def load_private_key(text: str | bytes) -> paramiko.PKey:
    """A paramiko key from private key text (ed25519, RSA or ECDSA; unencrypted).

    Raises InvalidKey with a message that never includes the text.
    """
    data = text.encode() if isinstance(text, str) else bytes(text)
    data = data.replace(b"\r\n", b"\n").strip() + b"\n"
    loaded: object
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in data:
            loaded = serialization.load_ssh_private_key(data, password=None)
        else:
            loaded = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        # cryptography raises TypeError when the key is encrypted and no password was given.
        raise InvalidKey("the SSH private key is passphrase-protected; provide an unencrypted key") from None
    except (ValueError, binascii.Error):
        raise InvalidKey("the SSH private key could not be parsed (expected PEM or OpenSSH format)") from None
    except Exception:  # e.g. UnsupportedAlgorithm; the message must not depend on the input
        raise InvalidKey("the SSH private key uses an unsupported format or algorithm") from None

    if isinstance(loaded, rsa.RSAPrivateKey):
        return paramiko.RSAKey(key=loaded)
    key_class: type[paramiko.PKey]
    if isinstance(loaded, ed25519.Ed25519PrivateKey):
        key_class = paramiko.Ed25519Key
    elif isinstance(loaded, ec.EllipticCurvePrivateKey):
        key_class = paramiko.ECDSAKey
    else:
        raise InvalidKey(f"unsupported SSH private key algorithm {type(loaded).__name__}")
    # paramiko reads every type from the OpenSSH container, so normalise to that (in memory only).
    openssh = loaded.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    try:
        return key_class.from_private_key(io.StringIO(openssh.decode()))
    except Exception:  # paramiko errors may embed key bytes
        raise InvalidKey("the SSH private key could not be loaded") from None


def public_line(key: paramiko.PKey) -> str:
    """The "<type> <base64>" line of a key's public half (what goes into authorized_keys)."""
    return f"{key.get_name()} {key.get_base64()}"
