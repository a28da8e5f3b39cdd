"""The whole lab in one object: management cluster, our CRDs, KWOK, the provider, and a rack of hosts.

Used by `python -m lab serve` (make lab-up), the pytest fixtures, `make demo` and the benchmarks, so they
all run the same thing. The workload cluster is the management apiserver itself: lab hosts join it with the
bootstrap tokens CAPBK writes there, and KWOK keeps their Nodes Ready while they are powered on.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.cluster import LabOptions, ManagementCluster
from lab.hostlab import HostLab, HostProfile
from lab.procs import Proc, free_port, http_ok, wait_until
from lab.tools import REPO_DIR, kwok_stages_dir, tool

# What lets a joining lab host register its Node with a bootstrap token. A real kubelet would post a CSR
# (which the controller-manager approves and signs) and register as system:node:<name>; the stand-in
# kubeadm skips that exchange and registers directly, so the bootstrap group may create Nodes here.
_BOOTSTRAP_NODE_RBAC: list[dict[str, Any]] = [
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "lab:bootstrap-node-registration"},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "create", "patch", "update"]}],
    },
    {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "lab:bootstrap-node-registration"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "lab:bootstrap-node-registration",
        },
        "subjects": [
            {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Group",
                "name": "system:bootstrappers:kubeadm:default-node-token",
            }
        ],
    },
]


PROVIDER_NAMESPACE = "capi-provider-baremetal-system"
PROVIDER_SA = "capi-provider-baremetal-manager"
# The provider runs as its ServiceAccount (a token from the TokenRequest API), as in a pod: the RBAC, the
# claims admission policy and the audit log all see exactly the identity the release manifests install.
PROVIDER_USER = f"system:serviceaccount:{PROVIDER_NAMESPACE}:{PROVIDER_SA}"


@dataclass
class LabConfig:
    workdir: Path
    hosts: int = 5
    host_profile: HostProfile = field(default_factory=HostProfile)
    boot_delay: float = 3.0
    boot_jitter: float = 1.0
    namespace: str = "default"
    provider: bool = True
    kwok: bool = True
    provider_env: dict[str, str] = field(default_factory=dict)
    cluster: LabOptions = field(
        default_factory=lambda: LabOptions(scheduler=True, control_plane_provider=True)
    )


class Lab:
    def __init__(self, config: LabConfig) -> None:
        self.config = config
        self.cluster = ManagementCluster(config.workdir / "cluster", config.cluster)
        self.hosts = HostLab(
            config.workdir / "rack",
            self.cluster,
            namespace=config.namespace,
            boot_delay=config.boot_delay,
            boot_jitter=config.boot_jitter,
        )
        self.procs: dict[str, Proc] = {}
        self.provider_health_port = 0

    @property
    def kubeconfig(self) -> Path:
        return self.config.workdir / "kubeconfig"

    @property
    def logs(self) -> Path:
        return self.cluster.logs

    def start(self) -> Lab:
        try:
            self.cluster.start()
            shutil.copyfile(self.cluster.kubeconfig, self.kubeconfig)
            self.kubeconfig.chmod(0o600)
            self.install_provider_crds()
            self.cluster.apply_docs(_BOOTSTRAP_NODE_RBAC)
            if self.config.kwok:
                self.start_kwok()
            self.hosts.start()
            for i in range(self.config.hosts):
                self.hosts.add_host(f"lab-host-{i + 1:02d}", self.config.host_profile)
            if self.config.provider:
                self.install_provider_rbac()
                self.start_provider()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()
        self.hosts.stop()
        self.cluster.stop()

    # ------------------------------------------------------------------ components
    def install_provider_crds(self) -> None:
        docs = [
            yaml.safe_load(p.read_text())
            for p in sorted((REPO_DIR / "config" / "crd" / "bases").glob("*.yaml"))
        ]
        self.cluster.apply_docs(docs)
        self.cluster.kubectl(
            "wait", "--for=condition=Established", "crd", *(d["metadata"]["name"] for d in docs)
        )

    def start_kwok(self) -> None:
        stages = []
        for path in sorted(kwok_stages_dir().glob("*.yaml")):
            stages += [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "Stage"]
        config = self.config.workdir / "kwok-stages.yaml"
        config.write_text(yaml.safe_dump_all(stages))
        self.procs["kwok"] = Proc(
            "kwok",
            [
                tool("kwok"),
                f"--kubeconfig={self.cluster.kubeconfig}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--manage-nodes-with-label-selector=",
                "--manage-single-node=",
                "--cidr=10.244.0.0/16",
                "--node-ip=127.0.0.1",
                "--node-lease-duration-seconds=40",
                f"--config={config}",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
            self.logs,
        ).start()

    def install_provider_rbac(self) -> None:
        """Everything `clusterctl init --infrastructure baremetal` installs (config/default: Namespace,
        ServiceAccount, RBAC, CRDs, peering, the claims admission policy) except the Deployment and its
        Service, which need a kubelet: the provider runs as a process under that ServiceAccount, so every test
        also proves the manifests grant enough and nothing more is needed."""
        out = self.cluster.kubectl("kustomize", str(REPO_DIR / "config" / "default")).stdout
        docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] not in ("Deployment", "Service")]
        crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
        self.cluster.apply_docs(crds)
        self.cluster.kubectl(
            "wait", "--for=condition=Established", "crd", *(d["metadata"]["name"] for d in crds)
        )
        self.cluster.apply_docs([d for d in docs if d["kind"] != "CustomResourceDefinition"])

    def provider_kubeconfig(self, name: str = "provider") -> Path:
        """A kubeconfig with a fresh token of the provider's ServiceAccount."""
        token = self.cluster.kubectl(
            "create", "token", PROVIDER_SA, "-n", PROVIDER_NAMESPACE, "--duration=48h"
        ).stdout.strip()
        return self.cluster.write_kubeconfig(
            self.config.workdir / f"{name}.kubeconfig", PROVIDER_USER, token=token
        )

    def start_provider(self, extra_env: dict[str, str] | None = None) -> Proc:
        self.provider_health_port = free_port()
        # Its own identity (no system:masters): only the shipped RBAC lets it act, and the apiserver's audit
        # log (benchmarks) tells its requests apart.
        kubeconfig = self.provider_kubeconfig()
        env = {
            "PYTHONPATH": str(REPO_DIR),
            "PYTHONUNBUFFERED": "1",
            # The lab's hosts boot in seconds; the production defaults are sized for real servers.
            "CAPBM_POLL_INTERVAL": "10",
            "CAPBM_BOOT_TIMEOUT": "120",
            # Dead-BMC tests should not wait out production timeouts.
            "CAPBM_BMC_TIMEOUT": "5",
            "CAPBM_PEERING": "capi-provider-baremetal",
            "CAPBM_PEERING_PRIORITY": "100",
            **self.config.provider_env,
            **(extra_env or {}),
        }
        proc = Proc(
            "provider",
            [
                sys.executable,
                "-m",
                "capi_provider",
                f"--kubeconfig={kubeconfig}",
                f"--health-port={self.provider_health_port}",
            ],
            self.logs,
            env=env,
        ).start()
        self.procs["provider"] = proc
        wait_until(
            "provider /healthz",
            lambda: http_ok(f"http://127.0.0.1:{self.provider_health_port}/healthz"),
            60,
            [proc],
        )
        return proc

    def stop_provider(self) -> None:
        proc = self.procs.pop("provider", None)
        if proc:
            proc.stop()

    def wait_hosts_available_in(self, namespace: str, count: int, timeout: float = 120) -> None:
        """Until `count` hosts of `namespace` are registered and available (their BMC answered)."""

        def ready() -> bool:
            out = self.cluster.kubectl(
                "get",
                "baremetalhosts",
                "-n",
                namespace,
                "-o",
                "jsonpath={.items[*].status.provisioningState}",
                check=False,
            ).stdout
            return out.split().count("available") >= count

        wait_until(
            f"{count} hosts available in {namespace}", ready, timeout, list(self.procs.values()), interval=0.5
        )

    def wait_hosts_available(self, timeout: float = 120) -> None:
        self.wait_hosts_available_in(self.config.namespace, len(self.hosts.machines), timeout)

    def describe(self) -> dict[str, object]:
        return {
            "kubeconfig": str(self.kubeconfig),
            "server": self.cluster.server,
            "summary": [
                f"apiserver {self.cluster.server} (management cluster started in "
                f"{self.cluster.timings.get('total', 0):.0f}s)",
                f"{len(self.hosts.machines)} lab hosts registered as BareMetalHosts in namespace "
                f"{self.config.namespace}",
                f"logs: {self.cluster.logs}",
            ],
        }
