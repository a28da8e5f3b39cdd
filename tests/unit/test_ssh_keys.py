"""Private key loading, pinned host key parsing and fingerprints (checked against ssh-keygen)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from capi_provider.ssh import InvalidKey, fingerprint, load_private_key, parse_public_key, public_line

PEM = serialization.Encoding.PEM
NO_PASS = serialization.NoEncryption()


def _ed25519() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# (description, key factory, private format) — every format a Secret is likely to hold.
FORMATS = [
    ("ed25519-openssh", _ed25519, serialization.PrivateFormat.OpenSSH),
    ("ed25519-pkcs8", _ed25519, serialization.PrivateFormat.PKCS8),
    ("rsa-pkcs1", _rsa, serialization.PrivateFormat.TraditionalOpenSSL),
    ("rsa-openssh", _rsa, serialization.PrivateFormat.OpenSSH),
    (
        "ecdsa-p256-sec1",
        lambda: ec.generate_private_key(ec.SECP256R1()),
        serialization.PrivateFormat.TraditionalOpenSSL,
    ),
    ("ecdsa-p384-pkcs8", lambda: ec.generate_private_key(ec.SECP384R1()), serialization.PrivateFormat.PKCS8),
]


def _openssh_public(key: object) -> str:
    return (
        key.public_key()
        .public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        .decode()
    )


@pytest.mark.parametrize(("name", "factory", "fmt"), FORMATS, ids=[f[0] for f in FORMATS])
def test_private_key_formats_load_to_the_same_public_key(name: str, factory, fmt) -> None:
    key = factory()
    text = key.private_bytes(PEM, fmt, NO_PASS).decode()
    loaded = load_private_key(text)
    assert isinstance(loaded, paramiko.PKey)
    assert public_line(loaded) == _openssh_public(key)


def test_private_key_with_windows_line_endings_and_padding_loads() -> None:
    key = _ed25519()
    text = key.private_bytes(PEM, serialization.PrivateFormat.OpenSSH, NO_PASS).decode()
    assert public_line(load_private_key("\n  " + text.replace("\n", "\r\n") + "\n\n")) == _openssh_public(key)


def test_encrypted_private_key_is_refused_without_echoing_it() -> None:
    text = (
        _ed25519()
        .private_bytes(PEM, serialization.PrivateFormat.OpenSSH, serialization.BestAvailableEncryption(b"pw"))
        .decode()
    )
    with pytest.raises(InvalidKey, match="passphrase") as exc:
        load_private_key(text)
    _assert_no_key_material(str(exc.value), text)


@pytest.mark.parametrize(
    "text",
    [
        "not a key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAsecretlookingbroken==\n-----END OPENSSH PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKjunkjunkjunk\n-----END RSA PRIVATE KEY-----\n",
    ],
)
def test_garbage_private_key_error_does_not_contain_the_input(text: str) -> None:
    with pytest.raises(InvalidKey) as exc:
        load_private_key(text)
    _assert_no_key_material(str(exc.value), text)
    assert exc.value.__cause__ is None  # no chained exception carrying the bytes either


@pytest.mark.parametrize(
    ("factory", "expected_type"),
    [
        (_ed25519, "ssh-ed25519"),
        (_rsa, "ssh-rsa"),
        (lambda: ec.generate_private_key(ec.SECP256R1()), "ecdsa-sha2-nistp256"),
    ],
)
def test_fingerprint_matches_ssh_keygen(tmp_path: Path, factory, expected_type: str) -> None:
    line = _openssh_public(factory()) + " comment@host"
    (tmp_path / "k.pub").write_text(line + "\n")
    keygen = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / "k.pub")],
        capture_output=True,
        text=True,
        check=True,
    )
    parsed = parse_public_key(line)
    assert parsed.key_type == expected_type
    assert keygen.stdout.split()[1] == parsed.fingerprint
    assert parsed.fingerprint == fingerprint(parsed.to_paramiko().asbytes())
    assert parsed.line == " ".join(line.split()[:2])


def test_pinned_key_matches_only_its_own_paramiko_key() -> None:
    key = _ed25519()
    pinned = parse_public_key(_openssh_public(key))
    same = load_private_key(key.private_bytes(PEM, serialization.PrivateFormat.OpenSSH, NO_PASS))
    other = load_private_key(_ed25519().private_bytes(PEM, serialization.PrivateFormat.OpenSSH, NO_PASS))
    assert pinned.matches(same)
    assert not pinned.matches(other)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "must look like"),
        ("ssh-ed25519", "must look like"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "unsupported host key type"),
        ("ssh-ed25519 not*base64", "not valid base64"),
        ("ssh-ed25519 AAAA", "truncated"),
    ],
)
def test_bad_pinned_keys_are_rejected(line: str, message: str) -> None:
    with pytest.raises(InvalidKey, match=message):
        parse_public_key(line)


def test_pinned_key_whose_data_is_another_type_is_rejected() -> None:
    ed_blob = _openssh_public(_ed25519()).split()[1]
    with pytest.raises(InvalidKey, match="declares ssh-rsa"):
        parse_public_key(f"ssh-rsa {ed_blob}")


def _assert_no_key_material(message: str, key_text: str) -> None:
    for line in key_text.splitlines():
        body = line.strip()
        if body and not body.startswith("-----"):
            assert body[:16] not in message
