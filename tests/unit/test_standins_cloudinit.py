"""cloud-init stand-in, run as a program against a host file system rooted in a temp dir."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

USER_DATA = """## template: jinja
#cloud-config
write_files:
-   path: /run/kubeadm/kubeadm-join-config.yaml
    owner: root:root
    permissions: '0640'
    content: |
      nodeRegistration:
        name: '{{ ds.meta_data.local_hostname }}'
        kubeletExtraArgs:
        - name: provider-id
          value: 'metal3://{{ ds.meta_data.provider_id }}'
-   path: /run/cluster-api/late
    content: deferred
    defer: true
bootcmd:
- echo boot >> "$OUT/order"
runcmd:
- echo one >> "$OUT/order"
- [sh, -c, 'echo "two $0" >> "$OUT/order"', arg]
- echo shown-to-caller
"""
META_DATA = "instance-id: iid-1\nlocal-hostname: node-a\nprovider-id: default/bmh-1\n"


def cloud_init(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LAB_STANDIN_FSROOT": str(root),
        "PYTHONPATH": f"{REPO / 'hack'}",
        "OUT": str(root / "out"),
    }
    return subprocess.run(
        [sys.executable, "-m", "lab.standins.cloudinit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def host(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    seed = tmp_path / "var/lib/cloud/seed/nocloud"
    seed.mkdir(parents=True)
    (seed / "user-data").write_text(USER_DATA)
    (seed / "meta-data").write_text(META_DATA)
    return tmp_path


def run_all_stages(root: Path) -> list[subprocess.CompletedProcess[str]]:
    stages = [("init", "--local"), ("init",), ("modules", "--mode=config"), ("modules", "--mode=final")]
    return [cloud_init(root, *s) for s in stages]


def test_stages_render_and_apply_the_cloud_config(host: Path) -> None:
    results = run_all_stages(host)
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]

    join = host / "run/kubeadm/kubeadm-join-config.yaml"
    assert "name: 'node-a'" in join.read_text()
    assert "value: 'metal3://default/bmh-1'" in join.read_text()
    assert stat.S_IMODE(join.stat().st_mode) == 0o640
    assert (host / "run/cluster-api/late").read_text() == "deferred"
    assert (host / "out/order").read_text() == "boot\none\ntwo arg\n"
    assert (host / "etc/hostname").read_text() == "node-a\n"
    assert "shown-to-caller" in results[3].stdout  # command output is shown to the caller...
    assert "shown-to-caller" in (host / "var/log/cloud-init-output.log").read_text()  # ...and logged

    status = cloud_init(host, "status", "--long")
    assert status.returncode == 0
    assert status.stdout.splitlines()[0] == "status: done"
    result = json.loads((host / "var/lib/cloud/data/result.json").read_text())
    assert result["v1"]["errors"] == []


def test_rerun_is_a_no_op_until_clean(host: Path) -> None:
    run_all_stages(host)
    again = run_all_stages(host)
    assert [r.returncode for r in again] == [0, 0, 0, 0]
    assert (host / "out/order").read_text() == "boot\none\ntwo arg\n"
    assert "already ran for instance iid-1" in again[3].stderr

    assert cloud_init(host, "clean", "--logs").returncode == 0
    assert not (host / "var/log/cloud-init.log").exists()
    assert (host / "var/lib/cloud/seed/nocloud/user-data").exists()  # the seed survives a clean
    assert cloud_init(host, "status").stdout.strip() == "status: not started"
    run_all_stages(host)
    assert (host / "out/order").read_text().count("one") == 2


def test_later_stage_runs_the_earlier_ones_first(host: Path) -> None:
    final = cloud_init(host, "modules", "--mode=final")
    assert final.returncode == 0, final.stderr
    assert (host / "out/order").read_text() == "boot\none\ntwo arg\n"


def test_new_instance_id_is_a_new_machine(host: Path) -> None:
    run_all_stages(host)
    (host / "var/lib/cloud/seed/nocloud/meta-data").write_text(META_DATA.replace("iid-1", "iid-2"))
    assert cloud_init(host, "status").stdout.strip() == "status: done"
    run_all_stages(host)
    assert (host / "out/order").read_text().count("one") == 2
    assert (host / "var/lib/cloud/instance").resolve().name == "iid-2"


def test_failing_runcmd_stops_and_reports_error(host: Path) -> None:
    seed = host / "var/lib/cloud/seed/nocloud/user-data"
    seed.write_text(
        '#cloud-config\nruncmd:\n- echo a >> "$OUT/order"\n- exit 3\n- echo never >> "$OUT/order"\n'
    )
    results = run_all_stages(host)
    assert [r.returncode for r in results] == [0, 0, 0, 1]
    assert "runcmd[1] failed with exit code 3" in results[3].stderr
    assert (host / "out/order").read_text() == "a\n"
    status = cloud_init(host, "status")
    assert (status.returncode, status.stdout.strip()) == (1, "status: error")
    as_json = json.loads(cloud_init(host, "status", "--format", "json").stdout)
    assert as_json["status"] == "error"
    assert "exit code 3" in as_json["errors"][0]


def test_missing_seed_is_an_error(tmp_path: Path) -> None:
    r = cloud_init(tmp_path, "init", "--local")
    assert r.returncode == 1
    assert "no NoCloud seed" in r.stderr


def test_logs_do_not_contain_file_contents_or_tokens(host: Path) -> None:
    seed = host / "var/lib/cloud/seed/nocloud/user-data"
    seed.write_text(USER_DATA + "- echo kubeadm join --token abcdef.0123456789abcdef > /dev/null\n")
    run_all_stages(host)
    log = (host / "var/log/cloud-init.log").read_text()
    assert "write_files: /run/kubeadm/kubeadm-join-config.yaml" in log
    assert "metal3://" not in log  # file contents (which carry tokens in real data) are never logged
    assert "--token abcdef.<redacted>" in log
    assert "0123456789abcdef" not in log
