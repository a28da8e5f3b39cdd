"""HostShell host key pinning (against an in-process paramiko server), wait_for_ssh retries, write_file."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from capi_provider.ssh import (
    HostKeyMismatch,
    HostShell,
    SSHAuthFailed,
    SSHUnreachable,
    load_private_key,
    public_line,
    wait_for_ssh,
)
from capi_provider.ssh import client as ssh_client
from capi_provider.ssh.client import write_file_command


def _ed25519_pkey() -> paramiko.PKey:
    key = ed25519.Ed25519PrivateKey.generate()
    return load_private_key(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )


class _Server(paramiko.ServerInterface):
    def __init__(self, authorized: paramiko.PKey) -> None:
        self.authorized = authorized
        self.auth_attempts = 0

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        self.auth_attempts += 1
        ok = username == "root" and key.asbytes() == self.authorized.asbytes()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED


@pytest.fixture
def ssh_server() -> Iterator:
    """Start a one-connection paramiko SSH server with a given host key; yields a starter function."""
    started: list[tuple[socket.socket, threading.Thread, list[paramiko.Transport]]] = []

    def start(host_key: paramiko.PKey, authorized: paramiko.PKey) -> tuple[int, _Server]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        server = _Server(authorized)
        transports: list[paramiko.Transport] = []

        def serve() -> None:
            conn, _ = sock.accept()
            t = paramiko.Transport(conn)
            transports.append(t)
            t.add_server_key(host_key)
            try:
                t.start_server(server=server)
            except (paramiko.SSHException, EOFError):
                return
            t.join(10)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        started.append((sock, thread, transports))
        return sock.getsockname()[1], server

    yield start
    for sock, thread, transports in started:
        for t in transports:
            t.close()
        sock.close()
        thread.join(5)


@pytest.mark.parametrize(
    "host_key_factory",
    [_ed25519_pkey, lambda: paramiko.RSAKey.generate(2048), lambda: paramiko.ECDSAKey.generate()],
    ids=["ed25519", "rsa", "ecdsa"],
)
def test_pinned_host_key_of_each_type_is_accepted(ssh_server, host_key_factory) -> None:
    host_key, user_key = host_key_factory(), _ed25519_pkey()
    port, server = ssh_server(host_key, user_key)
    with HostShell.connect("127.0.0.1", port, "root", user_key, public_line(host_key), timeout=5) as shell:
        assert shell.host_key_fingerprint.startswith("SHA256:")
    assert server.auth_attempts >= 1


@pytest.mark.parametrize("wrong_type", ["same type", "other type"])
def test_wrong_host_key_raises_before_any_authentication(ssh_server, wrong_type: str) -> None:
    host_key, user_key = _ed25519_pkey(), _ed25519_pkey()
    pinned = _ed25519_pkey() if wrong_type == "same type" else paramiko.ECDSAKey.generate()
    port, server = ssh_server(host_key, user_key)
    with pytest.raises(HostKeyMismatch) as exc:
        HostShell.connect("127.0.0.1", port, "root", user_key, public_line(pinned), timeout=5)
    err = exc.value
    assert err.presented_fingerprint == ssh_client.fingerprint(host_key.asbytes())
    assert err.expected_fingerprint == ssh_client.fingerprint(pinned.asbytes())
    assert err.presented_type == "ssh-ed25519"
    assert server.auth_attempts == 0


def test_unauthorized_key_raises_auth_failed(ssh_server) -> None:
    host_key = _ed25519_pkey()
    port, _ = ssh_server(host_key, _ed25519_pkey())
    with pytest.raises(SSHAuthFailed):
        HostShell.connect("127.0.0.1", port, "root", _ed25519_pkey(), public_line(host_key), timeout=5)


def test_closed_port_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    host_key, user_key = _ed25519_pkey(), _ed25519_pkey()
    with pytest.raises(SSHUnreachable):
        HostShell.connect("127.0.0.1", port, "root", user_key, public_line(host_key), timeout=2)


class _FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _scripted_connect(monkeypatch, outcomes: list) -> list[int]:
    calls: list[int] = []

    def connect(cls, *args, **kwargs):
        calls.append(1)
        outcome = outcomes.pop(0) if outcomes else SSHUnreachable("refused")
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(HostShell, "connect", classmethod(connect))
    return calls


KEYS = {"private_key": _ed25519_pkey(), "pinned_host_key": public_line(_ed25519_pkey())}


def test_wait_for_ssh_retries_until_up_with_growing_backoff(monkeypatch) -> None:
    fake = _FakeTime()
    sentinel = object()
    calls = _scripted_connect(monkeypatch, [SSHUnreachable("refused")] * 4 + [sentinel])
    got = wait_for_ssh(
        "127.0.0.2", 22, "root", **KEYS, timeout=60, initial_backoff=0.5, max_backoff=2.0,
        sleep=fake.sleep, clock=fake.clock,
    )  # fmt: skip
    assert got is sentinel
    assert len(calls) == 5
    assert fake.sleeps == [0.5, 1.0, 2.0, 2.0]


def test_wait_for_ssh_stops_at_once_on_host_key_mismatch(monkeypatch) -> None:
    fake = _FakeTime()
    mismatch = HostKeyMismatch(
        address="a",
        port=22,
        expected_fingerprint="SHA256:x",
        presented_fingerprint="SHA256:y",
        presented_type="t",
    )
    calls = _scripted_connect(monkeypatch, [SSHUnreachable("refused"), mismatch])
    with pytest.raises(HostKeyMismatch):
        wait_for_ssh("a", 22, "root", **KEYS, timeout=60, sleep=fake.sleep, clock=fake.clock)
    assert len(calls) == 2


def test_wait_for_ssh_auth_failure_stops_unless_retrying_is_asked_for(monkeypatch) -> None:
    fake = _FakeTime()
    calls = _scripted_connect(monkeypatch, [SSHAuthFailed("no")])
    with pytest.raises(SSHAuthFailed):
        wait_for_ssh("a", 22, "root", **KEYS, timeout=60, sleep=fake.sleep, clock=fake.clock)
    assert len(calls) == 1

    sentinel = object()
    calls = _scripted_connect(monkeypatch, [SSHAuthFailed("no"), sentinel])
    got = wait_for_ssh(
        "a", 22, "root", **KEYS, timeout=60, retry_auth_failures=True, sleep=fake.sleep, clock=fake.clock
    )
    assert got is sentinel


def test_wait_for_ssh_gives_up_at_the_deadline(monkeypatch) -> None:
    fake = _FakeTime()
    calls = _scripted_connect(monkeypatch, [])
    with pytest.raises(SSHUnreachable, match="not available after 10s") as exc:
        wait_for_ssh("a", 22, "root", **KEYS, timeout=10, sleep=fake.sleep, clock=fake.clock)
    assert "refused" in str(exc.value)
    assert fake.now == pytest.approx(10.0)
    assert len(calls) == len(fake.sleeps) + 1


@pytest.mark.parametrize("name", ["plain", "with space", "quote'and\"dq", "-dash"])
def test_write_file_command_writes_stdin_atomically_with_mode(tmp_path: Path, name: str) -> None:
    target = tmp_path / "new" / "dir" / name
    content = bytes(range(256)) * 100
    target.parent.parent.mkdir()
    run = subprocess.run(
        ["sh", "-c", write_file_command(str(target), 0o640)], input=content, capture_output=True
    )
    assert run.returncode == 0, run.stderr
    assert target.read_bytes() == content
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700  # created under umask 077
    assert sorted(os.listdir(target.parent)) == [name]  # no temp file left behind


def test_write_file_command_fails_and_cleans_up_when_the_target_is_a_directory(tmp_path: Path) -> None:
    target = tmp_path / "d"
    (target / "x").mkdir(parents=True)
    run = subprocess.run(
        ["sh", "-c", write_file_command(str(target), 0o600)], input=b"data", capture_output=True
    )
    assert run.returncode != 0
    assert sorted(os.listdir(tmp_path)) == ["d"]
