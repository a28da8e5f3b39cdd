"""Small helpers the cluster and e2e tests share."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

from lab.cluster import ManagementCluster
from lab.hostlab import LabMachine

T = TypeVar("T")


def get_json(mgmt: ManagementCluster, *args: str) -> Any:
    return json.loads(mgmt.kubectl("get", *args, "-o", "json").stdout)


def eventually(what: str, fn: Callable[[], T | None], timeout: float = 120, interval: float = 1.0) -> T:
    """Poll `fn` until it returns something truthy; fail with `what` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


def ipmitool_power(m: LabMachine) -> str:
    """The host's power as the independent Debian ipmitool client reads it from the lab BMC."""
    out = subprocess.run(
        [
            "ipmitool",
            "-I",
            "lanplus",
            "-H",
            "127.0.0.1",
            "-p",
            str(m.bmc_port),
            "-U",
            m.bmc_user,
            "-P",
            m.bmc_password,
            "chassis",
            "power",
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return "on" if "is on" in out else "off" if "is off" in out else out.strip()


def hosts_by_name(mgmt: ManagementCluster, namespace: str) -> dict[str, dict[str, Any]]:
    return {h["metadata"]["name"]: h for h in get_json(mgmt, "baremetalhosts", "-n", namespace)["items"]}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)
