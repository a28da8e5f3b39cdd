"""Session-wide fixtures: one real management cluster (built from source) shared by every test that needs it.

Tests that need it take the `mgmt` fixture; nothing starts unless such a test is selected, so
`pytest tests/unit` never touches the lab. Missing binaries fail loudly (run `make tools`) rather than skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.cluster import LabOptions, ManagementCluster


@pytest.fixture(scope="session")
def mgmt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManagementCluster]:
    workdir = Path(os.environ.get("LAB_WORKDIR") or tmp_path_factory.mktemp("mgmt"))
    cluster = ManagementCluster(workdir, LabOptions(scheduler=True, control_plane_provider=True))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
