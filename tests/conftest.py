"""Session-wide fixtures: one real lab (management cluster built from source, KWOK, our provider running as
its own process) shared by every test that needs it; each test adds its own lab hosts in its own namespace.

Nothing starts unless a selected test needs it, so `pytest tests/unit` never touches the lab. Missing
binaries fail loudly (run `make tools`) rather than skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab.cluster import ManagementCluster
from lab.lab import Lab, LabConfig


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`audit` tests look at what the whole session left behind: they run last."""
    items.sort(key=lambda item: item.get_closest_marker("audit") is not None)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = Path(os.environ.get("LAB_WORKDIR") or tmp_path_factory.mktemp("lab"))
    the_lab = Lab(LabConfig(workdir=workdir, hosts=0, boot_delay=2.0, boot_jitter=0.5))
    the_lab.start()
    try:
        yield the_lab
    finally:
        the_lab.stop()


@pytest.fixture(scope="session")
def mgmt(lab: Lab) -> ManagementCluster:
    return lab.cluster


@pytest.fixture
def namespace(mgmt: ManagementCluster) -> str:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    mgmt.kubectl("create", "namespace", ns)
    return ns
