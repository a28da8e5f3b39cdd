"""Lab hosts with a real OpenSSH sshd, driven through the provider's SSH client.

Each test boots its own hosts on their own 127.0.0.x addresses with short boot delays; the fixture closes
them (killing sshd and every session process) even when a test fails, and checks nothing was left behind.
"""

from __future__ import annotations

import json
import random
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from lab.host import LabHost, LabHostSpec
from lab.standins import node
from lab.standins.discovery import ca_cert_hash

from capi_provider.ssh import (
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    HostShell,
    SSHUnreachable,
    wait_for_ssh,
)
from tests.unit.test_standins_kubeadm import TOKEN, FakeAPIServer

BOOT_DELAY = 0.5


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str


def _keypair() -> KeyPair:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(private, public.decode())


@pytest.fixture(scope="module")
def provider_key() -> KeyPair:
    return _keypair()


_used_addresses: set[str] = set()


def _free_endpoint() -> tuple[str, int]:
    while True:
        address = f"127.0.0.{random.randint(100, 250)}"
        if address not in _used_addresses:
            _used_addresses.add(address)
            break
    with socket.socket() as s:
        s.bind((address, 0))
        return address, s.getsockname()[1]


@pytest.fixture
def lab_host_factory(tmp_path: Path, provider_key: KeyPair) -> Iterator[Callable[..., LabHost]]:
    made: list[LabHost] = []

    def make(name: str = "host-a", **overrides: object) -> LabHost:
        address, port = _free_endpoint()
        fields: dict[str, object] = {
            "name": name,
            "ssh_address": address,
            "ssh_port": port,
            "root_dir": tmp_path / name,
            "authorized_key": provider_key.public,
            "boot_delay_s": BOOT_DELAY,
            **overrides,
        }
        host = LabHost(LabHostSpec(**fields))  # type: ignore[arg-type]
        made.append(host)
        return host

    yield make
    pids = [h.sshd_pid for h in made if h.sshd_pid]
    for host in made:
        host.close()
    assert not [p for p in pids if _alive(p)], "sshd survived LabHost.close()"
    assert not _tagged_processes(tmp_path), "lab host processes survived LabHost.close()"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tagged_processes(root_prefix: Path) -> list[int]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("LAB_HOST_ROOT", "").startswith(str(root_prefix)) and _alive(p.pid):
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


def connect(host: LabHost, key: KeyPair, pinned: str | None = None) -> HostShell:
    return HostShell.connect(
        host.spec.ssh_address,
        host.spec.ssh_port,
        "root",
        key.private,
        pinned or host.host_public_key,
        timeout=5,
    )


def boot(host: LabHost) -> None:
    host.power_on()
    host.wait_until_up(15)


# --- spec --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ssh_address": "10.0.0.5"}, "loopback"),
        ({"ssh_address": "127.0.0.1"}, "x >= 2"),
        ({"name": "Bad_Name"}, "DNS label"),
        ({"root_dir": Path("/var/lib/cloud/h")}, "mounts over"),
        ({"boot_delay_s": -1.0}, "negative"),
    ],
)
def test_spec_rejects_unsafe_or_unusable_settings(overrides: dict, message: str) -> None:
    fields = {
        "name": "h",
        "ssh_address": "127.0.0.9",
        "ssh_port": 2222,
        "root_dir": Path("/tmp/h"),
        "authorized_key": "ssh-ed25519 AAAA",
        **overrides,
    }
    with pytest.raises(ValueError, match=message):
        LabHostSpec(**fields)  # type: ignore[arg-type]


# --- power and SSH ---------------------------------------------------------------------------------------


def test_sshd_answers_only_after_the_boot_delay_with_the_pinned_key(lab_host_factory, provider_key) -> None:
    host = lab_host_factory(boot_delay_s=1.0)
    host.set_boot_device("hd")
    host.power_on()
    assert host.is_powered_on() and not host.os_up
    with pytest.raises(SSHUnreachable):
        connect(host, provider_key)

    shell = wait_for_ssh(
        host.spec.ssh_address, host.spec.ssh_port, "root", provider_key.private, host.host_public_key,
        timeout=15, initial_backoff=0.1, max_backoff=0.2,
    )  # fmt: skip
    with shell:
        assert host.os_up
        assert shell.host_key_fingerprint == host.host_key_fingerprint
        assert shell.run("hostname; id -u") == (0, b"host-a\n0\n", b"")
    assert (host.boot_count, host.last_boot_device) == (1, "hd")
    assert host.host_public_key == (host.root / "sshd/ssh_host_ed25519_key.pub").read_text().strip()


def test_a_host_booted_from_network_still_comes_up(lab_host_factory) -> None:
    host = lab_host_factory(boot_delay_s=0.1)
    host.set_boot_device("network")
    boot(host)
    assert host.last_boot_device == "network"
    assert host.get_boot_device() == "network"


def test_wrong_pinned_key_is_refused_before_authentication(lab_host_factory, provider_key) -> None:
    host = lab_host_factory()
    boot(host)
    impostor = _keypair().public
    log_before = host.sshd_log.stat().st_size

    with pytest.raises(HostKeyMismatch) as exc:
        connect(host, provider_key, pinned=impostor)
    assert exc.value.presented_fingerprint == host.host_key_fingerprint
    assert exc.value.expected_fingerprint != host.host_key_fingerprint
    assert provider_key.private.splitlines()[1][:20] not in str(exc.value)

    time.sleep(0.3)  # let sshd log the closed connection
    during = host.sshd_log.read_bytes()[log_before:].decode()
    assert "Connection from" in during  # the server saw the connection...
    for evidence in ("publickey", "Accepted", "Failed", "Postponed", "Starting session"):
        assert evidence not in during  # ...but no authentication was attempted and nothing ran

    with connect(host, provider_key) as shell:  # the right pin still works
        assert shell.run("true").exit_code == 0
    assert "Accepted publickey for root" in host.sshd_log.read_text()


def test_power_off_kills_sshd_and_everything_the_host_runs(lab_host_factory, provider_key) -> None:
    host = lab_host_factory()
    boot(host)
    sshd_pid = host.sshd_pid
    assert sshd_pid is not None
    shell = connect(host, provider_key)
    daemon_pid = int(shell.run("setsid sleep 301 </dev/null >/dev/null 2>&1 & echo $!", timeout=10).stdout)
    outcome: list[BaseException | object] = []

    def long_command() -> None:
        try:
            outcome.append(shell.run("sleep 302", timeout=60))
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=long_command)
    worker.start()
    time.sleep(0.8)  # the session is running
    assert _alive(daemon_pid)

    host.power_off()
    # Like pulling the plug: by the time power_off returns, sshd is gone.
    assert not _alive(sshd_pid)
    worker.join(10)
    assert not worker.is_alive()
    assert isinstance(outcome[0], SSHUnreachable)
    shell.close()
    assert not host.is_powered_on() and not host.os_up and host.sshd_pid is None
    assert not _alive(sshd_pid)
    deadline = time.monotonic() + 3
    while _alive(daemon_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(daemon_pid)
    # Nothing this host started survives (other processes on the machine may well run `sleep`).
    assert not _tagged_processes(host.root)
    with pytest.raises(SSHUnreachable, match="Connection refused"):
        connect(host, provider_key)


def test_power_off_cancels_a_pending_boot(lab_host_factory, provider_key) -> None:
    host = lab_host_factory(boot_delay_s=0.6)
    host.power_on()
    host.power_off()
    time.sleep(1.0)
    assert not host.os_up and host.sshd_pid is None
    with pytest.raises(SSHUnreachable):
        connect(host, provider_key)


def test_power_cycle_reboots_with_a_fresh_delay_and_empty_run(lab_host_factory, provider_key) -> None:
    host = lab_host_factory()
    boot(host)
    first_pid = host.sshd_pid
    with connect(host, provider_key) as shell:
        shell.run(
            "echo x > /run/cluster-api/bootstrap-success.complete; echo y > /var/lib/kubelet/keep", check=True
        )
    host.power_cycle()
    assert host.is_powered_on() and not host.os_up  # booting again, with a fresh delay
    host.wait_until_up(15)
    assert host.boot_count == 2 and host.sshd_pid not in (None, first_pid)
    with connect(host, provider_key) as shell:
        # /run is a tmpfs on real hosts: the sentinel is gone after a reboot; disk-backed state stays.
        assert shell.run("ls /run/cluster-api; cat /var/lib/kubelet/keep").stdout == b"y\n"


# --- commands and files ----------------------------------------------------------------------------------


def test_run_and_write_file(lab_host_factory, provider_key) -> None:
    host = lab_host_factory(boot_delay_s=0.1)
    boot(host)
    with connect(host, provider_key) as shell:
        content = bytes(range(256)) * 64
        shell.write_file("/var/lib/cloud/seed/nocloud/user-data", content, mode=0o600)
        on_disk = host.root / "var/lib/cloud/seed/nocloud/user-data"
        assert on_disk.read_bytes() == content
        assert stat.S_IMODE(on_disk.stat().st_mode) == 0o600

        big = b"z" * (3 * 1024 * 1024)
        result = shell.run("wc -c; echo to-stderr >&2; exit 7", stdin=big)
        assert result == (7, f"{len(big)}\n".encode(), b"to-stderr\n")

        with pytest.raises(CommandFailed) as failed:
            shell.write_file("/proc/version", b"x")
        assert failed.value.exit_code != 0

        # Without the timeout the command would end normally after 20 s and no CommandTimeout would be raised.
        with pytest.raises(CommandTimeout):
            shell.run("sleep 20", timeout=1.0)
        assert shell.run("echo still-usable").stdout == b"still-usable\n"


def test_two_hosts_see_their_own_files_and_disks(lab_host_factory, provider_key) -> None:
    disk = {"name": "/dev/sda", "sizeBytes": 64 * 1024**2}
    a = lab_host_factory("host-a", boot_delay_s=0.1, hardware={"disks": [disk]})
    b = lab_host_factory(
        "host-b", boot_delay_s=0.1, hardware={"disks": [{**disk, "sizeBytes": 32 * 1024**2}]}
    )
    boot(a)
    boot(b)
    with connect(a, provider_key) as sa, connect(b, provider_key) as sb:
        for shell, name in ((sa, "host-a"), (sb, "host-b")):
            shell.run(f"echo {name} > /etc/kubernetes/whoami && echo {name} >> /var/log/test.log", check=True)
        assert sa.run("cat /etc/kubernetes/whoami").stdout == b"host-a\n"
        assert sb.run("cat /etc/kubernetes/whoami").stdout == b"host-b\n"
        # Disks are image files of the declared size; the machine's real disks are not there.
        assert sa.run("stat -c %s /dev/sda; test -e /dev/vda || echo no-vda").stdout == b"67108864\nno-vda\n"
        assert sb.run("stat -c %s /dev/sda").stdout == b"33554432\n"
        sa.run("dd if=/dev/zero of=/dev/sda bs=4096 count=1 conv=notrunc status=none && sync", check=True)
    assert (a.root / "etc/kubernetes/whoami").read_text() == "host-a\n"
    assert (b.root / "var/log/test.log").read_text() == "host-b\n"
    assert not Path("/etc/kubernetes/whoami").exists()
    assert json.loads((a.root / "etc/lab/host.json").read_text())["disks"] == [disk]


# --- cloud-init and kubeadm on the host -------------------------------------------------------------------

CAPBK_USER_DATA = """## template: jinja
#cloud-config

write_files:
-   path: /run/kubeadm/kubeadm-join-config.yaml
    owner: root:root
    permissions: '0640'
    content: |
      ---
      apiVersion: kubeadm.k8s.io/v1beta4
      discovery:
        bootstrapToken:
          apiServerEndpoint: {endpoint}
          caCertHashes:
          - {ca_hash}
          token: {token}
      kind: JoinConfiguration
      nodeRegistration:
        kubeletExtraArgs:
        - name: provider-id
          value: metal3://{{{{ ds.meta_data.provider_id }}}}
        name: '{{{{ ds.meta_data.local_hostname }}}}'
        taints:
        - effect: NoSchedule
          key: node.cluster.x-k8s.io/uninitialized
-   path: /run/cluster-api/placeholder
    owner: root:root
    permissions: '0640'
    content: "This placeholder file is used to create the /run/cluster-api sub directory in a way that is compatible with both Linux and Windows (mkdir -p /run/cluster-api does not work with Windows)"
runcmd:
  - "echo ran >> /var/log/runcmd-count"
  - kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml {verbosity} && echo success > /run/cluster-api/bootstrap-success.complete
"""  # noqa: E501 - the placeholder line is CAPBK's, verbatim
META_DATA = "instance-id: uid-1\nlocal-hostname: worker-1\nprovider-id: default/bmh-1/m3m-1\n"
STAGES = " && ".join(
    [
        "cloud-init init --local",
        "cloud-init init",
        "cloud-init modules --mode=config",
        "cloud-init modules --mode=final",
    ]
)


@pytest.fixture
def fake_api(tmp_path: Path) -> Iterator[FakeAPIServer]:
    (tmp_path / "api").mkdir()
    server = FakeAPIServer(tmp_path / "api")
    server.publish_cluster_info()
    yield server
    server.close()


def _seed(shell: HostShell, api: FakeAPIServer) -> None:
    ca_hash = ca_cert_hash(x509.load_pem_x509_certificate(api.ca_pem))
    user_data = CAPBK_USER_DATA.format(
        endpoint=api.endpoint, ca_hash=ca_hash, token=TOKEN.bearer, verbosity=""
    )
    shell.write_file("/var/lib/cloud/seed/nocloud/user-data", user_data.encode())
    shell.write_file("/var/lib/cloud/seed/nocloud/meta-data", META_DATA.encode())


def test_cloud_init_renders_and_applies_capbk_data_then_is_a_no_op(
    lab_host_factory, provider_key, fake_api
) -> None:
    host = lab_host_factory(boot_delay_s=0.1, discovery_timeout_s=20, kubelet_version="v1.34.4")
    assert json.loads((host.root / "etc/lab/lab.json").read_text())["discoveryTimeoutSeconds"] == 20
    boot(host)
    with connect(host, provider_key) as shell:
        _seed(shell, fake_api)
        run = shell.run(STAGES, timeout=60)
        assert run.exit_code == 0, run.stderr.decode()
        assert shell.run("cat /run/cluster-api/bootstrap-success.complete").stdout == b"success\n"
        join = shell.run("cat /run/kubeadm/kubeadm-join-config.yaml").stdout.decode()
        assert "name: 'worker-1'" in join
        assert "value: metal3://default/bmh-1/m3m-1" in join
        assert shell.run("cloud-init status").stdout == b"status: done\n"

        again = shell.run(STAGES, timeout=60)
        assert again.exit_code == 0
        assert shell.run("cat /var/log/runcmd-count").stdout == b"ran\n"  # runcmd ran once
    assert (host.root / "run/cluster-api/bootstrap-success.complete").exists()
    assert TOKEN.secret not in (host.root / "var/log/kubeadm.log").read_text()
    assert TOKEN.secret not in (host.root / "var/log/cloud-init.log").read_text()

    created = fake_api.get("/api/v1/nodes/worker-1")
    assert created is not None
    assert created["spec"]["providerID"] == "metal3://default/bmh-1/m3m-1"
    assert created["status"]["capacity"]["cpu"] == "4"
    assert created["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"


def test_power_off_stops_the_kubelet_and_boot_starts_it(
    lab_host_factory, provider_key, fake_api, tmp_path
) -> None:
    admin = fake_api.admin_kubeconfig(tmp_path / "admin.kubeconfig")
    host = lab_host_factory(boot_delay_s=0.1, workload_kubeconfig=admin)
    boot(host)
    with connect(host, provider_key) as shell:
        _seed(shell, fake_api)
        assert shell.run(STAGES, timeout=60).exit_code == 0

    def kwok_annotation() -> str | None:
        n = fake_api.get("/api/v1/nodes/worker-1")
        assert n is not None
        return n["metadata"].get("annotations", {}).get(node.KWOK_ANNOTATION)

    assert kwok_annotation() == "fake"
    host.power_off()
    host.wait_kubelet_idle()
    assert kwok_annotation() is None
    assert ("PATCH", "/api/v1/nodes/worker-1", "cert:kubernetes-admin:system:masters") in fake_api.requests

    boot(host)
    host.wait_kubelet_idle()
    assert kwok_annotation() == "fake"

    with connect(host, provider_key) as shell:
        assert shell.run("kubeadm reset -f", timeout=30).exit_code == 0
    assert kwok_annotation() is None
    assert fake_api.get("/api/v1/nodes/worker-1") is not None  # the Node stays until CAPI deletes it
    requests_before = len(fake_api.requests)
    host.power_off()
    host.wait_kubelet_idle()
    assert len(fake_api.requests) == requests_before  # reset host: no kubelet left to stop
