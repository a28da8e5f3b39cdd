"""The whole lab in one object: management cluster (+ later: provider, virtual hosts, KWOK).

Used by `python -m lab serve` (make lab-up), the pytest fixtures, `make demo` and the benchmarks, so they
all run the same thing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from lab.cluster import LabOptions, ManagementCluster


@dataclass
class LabConfig:
    workdir: Path
    hosts: int = 5
    cluster: LabOptions = field(
        default_factory=lambda: LabOptions(scheduler=True, control_plane_provider=True)
    )


class Lab:
    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.cluster = ManagementCluster(config.workdir / "cluster", config.cluster)

    @property
    def kubeconfig(self) -> Path:
        return self.config.workdir / "kubeconfig"

    def start(self) -> Lab:
        self.cluster.start()
        shutil.copyfile(self.cluster.kubeconfig, self.kubeconfig)
        self.kubeconfig.chmod(0o600)
        return self

    def stop(self) -> None:
        self.cluster.stop()

    def describe(self) -> dict[str, object]:
        return {
            "kubeconfig": str(self.kubeconfig),
            "server": self.cluster.server,
            "summary": [
                f"apiserver {self.cluster.server} (started in {self.cluster.timings.get('total', 0):.0f}s)",
                f"logs: {self.cluster.logs}",
            ],
        }
