"""The SSH-push backend's own rules, with fake drivers: credentials are read again after the BMC rejects
them, and the cleanup script wipes only what it may."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from capi_provider.api.schema import from_obj
from capi_provider.api.types import BareMetalHostSpec
from capi_provider.bmc.base import BmcError, BmcErrorReason, PowerState
from capi_provider.config import Settings
from capi_provider.controller.credentials import CredentialStore
from capi_provider.objkey import ObjKey
from capi_provider.provisioner import sshpush
from capi_provider.provisioner.base import ProvisionerError, Target
from capi_provider.runner import BlockingRunner
from tests.unit.fakes import World


class FakeDriver:
    def __init__(self, accepted: str, creds: Any) -> None:
        self.accepted, self.creds = accepted, creds

    def get_power(self) -> PowerState:
        if self.creds.password != self.accepted:
            raise BmcError("refused", reason=BmcErrorReason.CREDENTIALS_REJECTED)
        return PowerState.OFF

    def close(self) -> None:
        pass


def test_a_rotated_password_is_read_again_after_the_bmc_rejects_the_old_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    w = World.new()
    body = w.host("h1")
    target = Target(ObjKey("a", "h1"), body["metadata"]["uid"], from_obj(BareMetalHostSpec, body["spec"]))
    bmc_password = {"now": "pw-h1"}  # what the BMC accepts
    monkeypatch.setattr(
        sshpush, "open_driver", lambda address, creds, **_: FakeDriver(bmc_password["now"], creds)
    )
    runner = BlockingRunner(max_workers=2)
    backend = sshpush.SshPushProvisioner(Settings(), CredentialStore(w.kube), runner, runner)

    async def scenario() -> None:
        assert await backend.read_power(target) is PowerState.OFF
        reads = w.kube.calls["get secrets"]
        assert await backend.read_power(target) is PowerState.OFF
        assert w.kube.calls["get secrets"] == reads  # cached: polling costs no API request
        # The operator rotates the password on the BMC and in the Secret.
        bmc_password["now"] = "rotated"
        old = w.kube.secrets[("a", "h1-bmc")]
        w.kube.secrets[("a", "h1-bmc")] = type(old)(
            {**old.data, "password": b"rotated"}, "2", owner_references=old.owner_references
        )
        with pytest.raises(ProvisionerError) as e:
            await backend.read_power(target)  # the cached (old) password is refused once...
        assert e.value.reason == "CredentialsRejected"
        assert await backend.read_power(target) is PowerState.OFF  # ...and the new one read and used
        assert w.kube.calls["get secrets"] == reads + 1

    try:
        asyncio.run(scenario())
    finally:
        runner.shutdown()


def _wipe(tmp_path: Path, disk: Path, serial: str = "") -> subprocess.CompletedProcess[str]:
    script = sshpush.WIPE_FUNCTION + f"\nwipe_disk {disk} '{serial}'\n"
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)


def _signature(disk: Path) -> str:
    return subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "TYPE", str(disk)], capture_output=True, text=True
    ).stdout.strip()


def test_the_wipe_removes_signatures_from_an_unused_disk(tmp_path: Path) -> None:
    disk = tmp_path / "sdb"
    disk.write_bytes(b"\0" * (4 << 20))
    subprocess.run(["mkswap", str(disk)], capture_output=True, check=True)
    assert _signature(disk) == "swap"
    res = _wipe(tmp_path, disk)
    assert res.returncode == 0, res.stderr
    assert _signature(disk) == ""


def test_the_wipe_refuses_a_disk_that_is_not_there_or_not_a_disk(tmp_path: Path) -> None:
    res = _wipe(tmp_path, tmp_path / "nope")
    assert res.returncode != 0
    assert "not a disk" in res.stderr or "no such disk" in res.stderr
    (tmp_path / "dir").mkdir()
    assert _wipe(tmp_path, tmp_path / "dir").returncode != 0
