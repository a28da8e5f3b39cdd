"""`make lab-up` / `make lab-down` as a user runs them: a background lab reachable with kubectl, and nothing
left running afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lab.tools import REPO_DIR, tool

pytestmark = pytest.mark.cluster


def _lab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO_DIR / 'hack'}:{REPO_DIR}"}
    return subprocess.run(
        [sys.executable, "-m", "lab", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _processes_mentioning(text: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                out.append(f"{pid}: {cmdline[:160]}")
    return out


def test_lab_up_serves_capi_crds_and_lab_down_leaves_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "lab"
    up = _lab("up", "--dir", str(workdir), "--hosts", "0")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "ready" in up.stdout
        kubeconfig = workdir / "kubeconfig"
        got = subprocess.run(
            [
                str(tool("kubectl")),
                f"--kubeconfig={kubeconfig}",
                "get",
                "crd",
                "machinedeployments.cluster.x-k8s.io",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.returncode == 0, got.stderr
        assert "machinedeployments.cluster.x-k8s.io" in got.stdout
        # A second `up` is a no-op that points at the running lab.
        again = _lab("up", "--dir", str(workdir), "--hosts", "0")
        assert again.returncode == 0 and "already running" in again.stdout
        assert _processes_mentioning(str(workdir)), "the lab's components should be running"
    finally:
        down = _lab("down", "--dir", str(workdir))
    assert down.returncode == 0, down.stderr
    assert _processes_mentioning(str(workdir)) == []
