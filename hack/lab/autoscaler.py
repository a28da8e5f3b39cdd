"""The real cluster-autoscaler (clusterapi provider) as a lab process, scaling one cluster's node groups.

It runs the way an operator runs it against a management cluster (docs/autoscaling.md): `--cloud-provider=
clusterapi`, node group auto-discovery for one cluster, `--kubeconfig` for the workload cluster and
`--cloud-config` for the management cluster (in the lab both are the lab's apiserver, through the same
file), under its own identity bound to exactly the RBAC we document (config/autoscaler/rbac.yaml, plus the
provider's shipped template reader role) — never system:masters. Its status ConfigMap lives in the
namespace it scales, so several tests' autoscalers never share state. Like every lab process it has its
own process group and dies with the lab (procs.Proc); its log is `<lab logs>/cluster-autoscaler-<ns>.log`.

Its debugging snapshot (`/snapshotz`) is enabled: it returns, after the next loop, the template Node the
autoscaler derived for each node group, which is how tests compare a scale-from-zero estimate with the Node
that then registers.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lab.procs import Proc, free_port, wait_until
from lab.tools import REPO_DIR, tool

if TYPE_CHECKING:
    from lab.lab import Lab

AUTOSCALER_USER = "cluster-autoscaler"
RBAC_MANIFEST = REPO_DIR / "config" / "autoscaler" / "rbac.yaml"
STATUS_CONFIGMAP = "cluster-autoscaler-status"
CAPI_UNINITIALIZED_TAINT = "node.cluster.x-k8s.io/uninitialized"
# The placeholders config/autoscaler/rbac.yaml uses for the autoscaler's and the cluster's namespaces.
_OWN_NAMESPACE = "kube-system"
_CLUSTER_NAMESPACE = "metal"


@dataclass(frozen=True)
class AutoscalerOptions:
    """Flags that shape its behaviour. The defaults keep the upstream scan interval and make scale-down quick
    enough for a test: a node is removed after being unneeded for 20 s, as soon as 10 s after a scale-up."""

    scan_interval: str = "10s"
    scale_down_unneeded_time: str = "20s"
    scale_down_delay_after_add: str = "10s"
    expander: str = "least-waste"
    max_node_provision_time: str = "10m"
    verbosity: int = 4
    extra_args: tuple[str, ...] = field(default=())


def rbac_documents(namespace: str, cluster_namespace: str) -> list[dict[str, Any]]:
    """config/autoscaler/rbac.yaml for the lab: its ServiceAccount subjects become the lab's autoscaler user,
    `kube-system` the autoscaler's namespace and `metal` the cluster's."""
    docs = []
    for doc in yaml.safe_load_all(RBAC_MANIFEST.read_text()):
        if not doc:
            continue
        doc = copy.deepcopy(doc)
        meta = doc["metadata"]
        if meta.get("namespace") == _OWN_NAMESPACE:
            meta["namespace"] = namespace
        elif meta.get("namespace") == _CLUSTER_NAMESPACE:
            meta["namespace"] = cluster_namespace
        if "subjects" in doc:
            doc["subjects"] = [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": AUTOSCALER_USER}
            ]
        docs.append(doc)
    return docs


class ClusterAutoscaler:
    """One autoscaler for cluster `cluster_name` in `namespace`: a context manager, or start() and stop()."""

    def __init__(
        self, lab: Lab, namespace: str, cluster_name: str, options: AutoscalerOptions | None = None
    ) -> None:
        self.lab = lab
        self.namespace = namespace
        self.cluster_name = cluster_name
        self.options = options or AutoscalerOptions()
        self.name = f"cluster-autoscaler-{namespace}"
        self.port = 0
        self.proc: Proc | None = None

    @property
    def log_path(self) -> Path:
        return self.lab.logs / f"{self.name}.log"

    def argv(self, binary: Path, kubeconfig: Path) -> list[str]:
        o = self.options
        return [
            str(binary),
            "--cloud-provider=clusterapi",
            f"--node-group-auto-discovery=clusterapi:namespace={self.namespace},clusterName={self.cluster_name}",
            # Workload cluster and management cluster: the same apiserver in the lab.
            f"--kubeconfig={kubeconfig}",
            f"--cloud-config={kubeconfig}",
            f"--namespace={self.namespace}",
            "--leader-elect=false",
            f"--scan-interval={o.scan_interval}",
            f"--scale-down-unneeded-time={o.scale_down_unneeded_time}",
            f"--scale-down-delay-after-add={o.scale_down_delay_after_add}",
            f"--max-node-provision-time={o.max_node_provision_time}",
            f"--expander={o.expander}",
            # CAPBK registers every node with this taint and CAPI removes it once it has synced the node's
            # labels. Until then the node is still starting: counted as ready, its taint would keep the
            # pending pod off it and the autoscaler would add another node for the same pod.
            f"--startup-taint={CAPI_UNINITIALIZED_TAINT}",
            # Other tests' hosts power off and leave NotReady Nodes in the shared lab apiserver for a while;
            # the autoscaler halts when more than 3 nodes and 45 % of them are unready, which is about the
            # cluster it scales, not this one.
            "--ok-total-unready-count=1000",
            f"--address=127.0.0.1:{self.port}",
            "--debugging-snapshot-enabled=true",
            f"--v={o.verbosity}",
            *o.extra_args,
        ]

    def start(self, timeout: float = 120) -> ClusterAutoscaler:
        binary = tool("cluster-autoscaler")  # fails loudly, saying how to get it, when it is missing
        cluster = self.lab.cluster
        kubeconfig = cluster.workdir / f"{AUTOSCALER_USER}.kubeconfig"
        if not kubeconfig.exists():
            kubeconfig = cluster.client_kubeconfig(AUTOSCALER_USER)
        cluster.apply_docs(rbac_documents(self.namespace, self.namespace))
        # A previous autoscaler's status must not pass for this one's first loop.
        cluster.kubectl(
            "delete", "configmap", STATUS_CONFIGMAP, "-n", self.namespace, "--ignore-not-found", "--wait=true"
        )
        self.port = free_port()
        self.proc = Proc(self.name, self.argv(binary, kubeconfig), self.lab.logs).start()
        self.lab.procs[self.name] = self.proc
        # Ready once a whole loop ran under its RBAC: the loop ends by writing the status ConfigMap.
        wait_until(
            f"{self.name}: first loop (status ConfigMap {self.namespace}/{STATUS_CONFIGMAP})",
            lambda: bool(self.status()),
            timeout,
            [self.proc],
            interval=0.5,
        )
        return self

    def stop(self) -> None:
        self.lab.procs.pop(self.name, None)
        if self.proc is not None:
            self.proc.stop()

    def __enter__(self) -> ClusterAutoscaler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ what it thinks
    def status(self) -> str:
        """The human-readable status it writes after every loop ('' before the first)."""
        res = self.lab.cluster.kubectl(
            "get",
            "configmap",
            STATUS_CONFIGMAP,
            "-n",
            self.namespace,
            "-o",
            "jsonpath={.data.status}",
            check=False,
        )
        return res.stdout if res.returncode == 0 else ""

    def snapshot(self, timeout: float = 120) -> dict[str, Any]:
        """Its debugging snapshot, taken during its next loop: `TemplateNodes` maps each node group
        (`MachineDeployment/<ns>/<name>`) to the Node it expects a scale-up to add."""
        if self.proc is not None:
            self.proc.check_alive()
        url = f"http://127.0.0.1:{self.port}/snapshotz"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return dict(json.loads(resp.read()))

    def log_lines(self, needle: str) -> list[str]:
        try:
            return [ln for ln in self.log_path.read_text(errors="replace").splitlines() if needle in ln]
        except OSError:
            return []
