"""The lab's rack: simulated hosts behind virtual BMCs (IPMI, optionally Redfish), registered in the
management cluster as BareMetalHosts with their Secrets — what an operator does for real servers.

Host i gets its own loopback address 127.0.<10+i//250>.<2+i%250> for SSH and a BMC on a free
127.0.0.1 UDP port; its disks are image files (never the lab machine's devices).
"""

from __future__ import annotations

import base64
import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from lab.cluster import ManagementCluster
from lab.host import LabHost, LabHostSpec
from lab.procs import free_port
from lab.vbmc import BmcFleet

log = logging.getLogger("lab.hostlab")

GROUP_VERSION = "infrastructure.cluster.x-k8s.io/v1alpha1"
SSH_KEY_SECRET = "lab-provider-ssh"
REDFISH_CA_CONFIGMAP = "lab-redfish-ca"


@dataclass(frozen=True)
class HostProfile:
    cpu_cores: int = 16
    memory_gib: int = 64
    architecture: str = "amd64"
    # (name, type, GiB): the first holds the OS, the others are data disks `cleaning: metadata` wipes.
    disks: tuple[tuple[str, str, int], ...] = (("sda", "SSD", 480), ("sdb", "SSD", 1920))
    labels: dict[str, str] = field(default_factory=dict)
    extended_resources: dict[str, str] = field(default_factory=dict)


@dataclass
class LabMachine:
    """One registered lab host: the simulated machine, its BMC and how it is registered."""

    name: str
    host: LabHost
    protocol: Literal["ipmi", "redfish"]
    bmc_address: str
    bmc_user: str
    bmc_password: str
    ssh_address: str
    ssh_port: int
    mac: str
    profile: HostProfile
    namespace: str

    @property
    def bmc_port(self) -> int:
        return int(self.bmc_address.rsplit(":", 1)[1].split("/", 1)[0])


def _keypair() -> tuple[str, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public.decode()


def loopback_address(index: int) -> str:
    return f"127.0.{10 + index // 250}.{2 + index % 250}"


class HostLab:
    def __init__(
        self,
        workdir: Path,
        cluster: ManagementCluster,
        *,
        namespace: str = "default",
        boot_delay: float = 3.0,
        boot_jitter: float = 1.0,
    ) -> None:
        self.workdir = workdir
        self.cluster = cluster
        self.namespace = namespace
        self.boot_delay = boot_delay
        self.boot_jitter = boot_jitter
        self.fleet = BmcFleet()
        self.redfish: Any = None  # lab.redfish.RedfishLab, started on first use
        self.machines: dict[str, LabMachine] = {}
        self.private_key, self.public_key = _keypair()
        self._started = False
        self._namespaces: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> HostLab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.fleet.start()
        self._started = True
        self.ensure_namespace(self.namespace)
        return self

    def ensure_namespace(self, namespace: str) -> None:
        """A namespace with the provider's SSH key Secret (hosts are matched within their namespace)."""
        if namespace in self._namespaces:
            return
        self.cluster.kubectl("create", "namespace", namespace, check=False)
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                # Shared by every host of the namespace (no single owner): labelled so that clusterctl move
                # carries it along with the hosts (their BMC Secrets move through their ownerReferences).
                "metadata": {
                    "name": SSH_KEY_SECRET,
                    "namespace": namespace,
                    "labels": {"clusterctl.cluster.x-k8s.io/move": ""},
                },
                "type": "kubernetes.io/ssh-auth",
                "data": {"ssh-privatekey": base64.b64encode(self.private_key.encode()).decode()},
            }
        )
        self._namespaces.add(namespace)

    def stop(self) -> None:
        for m in self.machines.values():
            m.host.close()
        if self._started:
            self.fleet.stop()
        if self.redfish is not None:
            self.redfish.stop()

    def apply(self, *docs: dict[str, Any]) -> None:
        self.cluster.kubectl(
            "apply", "--server-side", "--field-manager=lab", "-f", "-", input=yaml.safe_dump_all(docs)
        )

    # ------------------------------------------------------------------ hosts
    def add_host(
        self,
        name: str,
        profile: HostProfile | None = None,
        *,
        protocol: Literal["ipmi", "redfish"] = "ipmi",
        register: bool = True,
        online: bool = False,
        boot_delay: float | None = None,
        namespace: str | None = None,
    ) -> LabMachine:
        if name in self.machines:
            # One rack: names are unique across namespaces (each host has its own root dir and BMC).
            raise ValueError(f"lab host {name!r} exists already")
        profile = profile or HostProfile()
        namespace = namespace or self.namespace
        self.ensure_namespace(namespace)
        index = len(self.machines)
        ssh_address, ssh_port = loopback_address(index), free_port()
        mac = f"02:00:00:{(index >> 16) & 0xFF:02x}:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}"
        host = LabHost(
            LabHostSpec(
                name=name,
                ssh_address=ssh_address,
                ssh_port=ssh_port,
                root_dir=self.workdir / "hosts" / name,
                authorized_key=self.public_key,
                hardware={
                    "cpuCores": profile.cpu_cores,
                    "memoryMiB": profile.memory_gib * 1024,
                    "architecture": {"amd64": "x86_64", "arm64": "aarch64"}.get(
                        profile.architecture, profile.architecture
                    ),
                    "disks": [
                        {"name": f"/dev/{d}", "sizeBytes": size * 2**30} for d, _, size in profile.disks
                    ],
                    "nics": [{"name": "eno1", "mac": mac}],
                },
                boot_delay_s=self.boot_delay if boot_delay is None else boot_delay,
                boot_jitter_s=self.boot_jitter,
                workload_kubeconfig=self.cluster.kubeconfig,
                apiserver_url=self.cluster.server,
                kubelet_version=self.cluster_version(),
            )
        )
        password = secrets.token_urlsafe(12)
        if protocol == "ipmi":
            bmc = self.fleet.add(host, username="admin", password=password)
            address = bmc.address
        else:
            address = self._redfish().add(host, username="admin", password=password)
        machine = LabMachine(
            name, host, protocol, address, "admin", password, ssh_address, ssh_port, mac, profile, namespace
        )
        self.machines[name] = machine
        if register:
            self.register(machine, online=online)
        return machine

    def _redfish(self) -> Any:
        if self.redfish is None:
            from lab.redfish import RedfishLab

            self.redfish = RedfishLab(self.workdir / "redfish")
            self.redfish.start()
        return self.redfish

    def cluster_version(self) -> str:
        from lab.tools import versions

        return versions()["KUBERNETES_VERSION"]

    def host_object(self, m: LabMachine, online: bool = False) -> dict[str, Any]:
        p = m.profile
        hardware: dict[str, Any] = {
            "cpuCores": p.cpu_cores,
            "memory": f"{p.memory_gib}Gi",
            "architecture": p.architecture,
            "disks": [{"name": d, "type": t, "size": f"{s}Gi"} for d, t, s in p.disks],
            "nics": [{"name": "eno1", "mac": m.mac, "speedGbps": 25}],
        }
        if p.extended_resources:
            hardware["extendedResources"] = dict(p.extended_resources)
        return {
            "apiVersion": GROUP_VERSION,
            "kind": "BareMetalHost",
            "metadata": {"name": m.name, "namespace": m.namespace, "labels": dict(p.labels)},
            "spec": {
                "bmc": {
                    "address": m.bmc_address,
                    "credentialsName": f"{m.name}-bmc",
                    # The lab's Redfish endpoint has a certificate from the lab's own CA: verified against it.
                    **({"caBundleName": REDFISH_CA_CONFIGMAP} if m.protocol == "redfish" else {}),
                },
                "ssh": {
                    "address": m.ssh_address,
                    "port": m.ssh_port,
                    "user": "root",
                    "privateKeySecretName": SSH_KEY_SECRET,
                    "hostKey": m.host.host_public_key,
                },
                "hardware": hardware,
                "bootMACAddress": m.mac,
                "online": online,
            },
        }

    def credentials_secret(
        self, m: LabMachine, password: str | None = None, host_uid: str | None = None
    ) -> dict[str, Any]:
        """The host's BMC credentials, bound to it by an ownerReference (the provider uses a credentials
        Secret only for the hosts it is bound to). `host_uid` defaults to the registered host's."""
        uid = host_uid or self.host_uids(m.namespace)[m.name]
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": f"{m.name}-bmc",
                "namespace": m.namespace,
                "ownerReferences": [
                    {"apiVersion": GROUP_VERSION, "kind": "BareMetalHost", "name": m.name, "uid": uid}
                ],
            },
            "stringData": {"username": m.bmc_user, "password": password or m.bmc_password},
        }

    def host_uids(self, namespace: str) -> dict[str, str]:
        jsonpath = 'jsonpath={range .items[*]}{.metadata.name}={.metadata.uid}{" "}{end}'
        out = self.cluster.kubectl("get", "baremetalhosts", "-n", namespace, "-o", jsonpath).stdout
        return dict(line.split("=", 1) for line in out.split() if "=" in line)

    def register(self, m: LabMachine, online: bool = False) -> None:
        """As an operator does it: the host, then its credentials Secret owned by it."""
        self.register_many([m], online=online)

    def register_many(self, machines: list[LabMachine], batch: int = 50, online: bool = False) -> None:
        """Register many hosts with few API round trips (a rack at once)."""
        for i in range(0, len(machines), batch):
            chunk = machines[i : i + batch]
            if any(m.protocol == "redfish" for m in chunk):
                for ns in {m.namespace for m in chunk if m.protocol == "redfish"}:
                    self.apply(self.redfish_ca_configmap(ns))
            self.apply(*(self.host_object(m, online) for m in chunk))
            uids: dict[str, dict[str, str]] = {}
            for ns in {m.namespace for m in chunk}:
                uids[ns] = self.host_uids(ns)
            self.apply(*(self.credentials_secret(m, host_uid=uids[m.namespace][m.name]) for m in chunk))

    def redfish_ca_configmap(self, namespace: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": REDFISH_CA_CONFIGMAP, "namespace": namespace},
            "data": {"ca.crt": self._redfish().certificates.ca_pem.decode()},
        }

    def set_fault(self, name: str, mode: str, **kw: Any) -> None:
        self.fleet.set_fault(name, mode, **kw)  # type: ignore[arg-type]
