"""Where a stand-in finds the host's files, facts and logs.

Inside a lab host session the host's directories are mounted at their real absolute paths, so the root is
"/". Unit tests point `LAB_STANDIN_FSROOT` at a temporary directory instead, and the lab itself (host.py)
uses `HostFS(root_dir)` to look at a host's files from outside.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

FSROOT_ENV = "LAB_STANDIN_FSROOT"
HOST_FACTS = "/etc/lab/host.json"  # hardware: name, cpuCores, memoryMiB, architecture, disks, nics
LAB_SETTINGS = "/etc/lab/lab.json"  # lab wiring: workloadKubeconfig, apiserverURL, kubeletVersion, ...


class HostFS:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root if root is not None else os.environ.get(FSROOT_ENV, "/"))

    def path(self, absolute: str | PurePosixPath) -> Path:
        """The host path `absolute` ("/etc/kubernetes/...") as seen from here."""
        rel = PurePosixPath(absolute)
        if not rel.is_absolute():
            raise ValueError(f"host paths must be absolute: {absolute}")
        return self.root.joinpath(*rel.parts[1:])

    def host_facts(self) -> dict[str, Any]:
        return _read_json(self.path(HOST_FACTS))

    def lab_settings(self) -> dict[str, Any]:
        return _read_json(self.path(LAB_SETTINGS))


def write_file(path: Path, data: bytes | str, mode: int = 0o644, *, append: bool = False) -> None:
    """Write with exactly `mode` (not filtered by the umask), creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, mode)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def clear_directory(path: Path) -> list[str]:
    """Remove everything inside `path` (not `path` itself: on a lab host it is a mount point)."""
    removed: list[str] = []
    if not path.is_dir():
        return removed
    for child in sorted(path.iterdir()):
        if child.is_dir() and not child.is_symlink():
            clear_directory(child)
            child.rmdir()
        else:
            child.unlink()
        removed.append(str(child))
    return removed


def file_logger(name: str, fs: HostFS, logfile: str) -> logging.Logger:
    """A logger that appends to the host's `logfile` (e.g. /var/log/kubeadm.log), like the real tools."""
    logger = logging.getLogger(f"lab.standins.{name}")
    for old in list(logger.handlers):  # a stand-in run in-process (tests) may target another host root
        logger.removeHandler(old)
        old.close()
    path = fs.path(logfile)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s[%(process)d] %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}
