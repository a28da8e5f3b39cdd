"""Image provisioning: the boot server over HTTP (a scripted agent) and the network-boot lab (QEMU VMs
that firmware-boot the real deploy ramdisk). Everything here carries the `imaging` marker: it runs in the
default suite and can be selected with `pytest -m imaging` (or `make test-imaging`).

Timings measured by the lab tests are printed at the end of the run (terminal summary) and, when the lab
dir is kept (a test failed), written to `<lab dir>/imaging-measurements.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MEASUREMENTS: dict[str, float] = {}
_WORKDIRS: list[Path] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.imaging)


def record(name: str, seconds: float) -> None:
    MEASUREMENTS[name] = round(seconds, 2)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not MEASUREMENTS:
        return
    terminalreporter.section("image provisioning: measured in this run")
    for name, value in MEASUREMENTS.items():
        terminalreporter.write_line(f"  {name:<48} {value}")
    for d in _WORKDIRS:
        if d.is_dir():
            (d / "imaging-measurements.json").write_text(json.dumps(MEASUREMENTS, indent=2) + "\n")
