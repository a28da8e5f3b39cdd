"""A real management cluster as local processes: etcd, kube-apiserver, kube-controller-manager
(+ kube-scheduler), Cluster API core, kubeadm bootstrap (+ kubeadm control plane) managers.

Everything binds to 127.0.0.1 on free ports inside one work directory, so several labs (a test session
and `make lab-up`) can run side by side. Cluster API's webhooks and CRD conversion are wired to the
out-of-cluster managers by URL with a CA bundle, the way controller-runtime's envtest does it.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab import certs
from lab.procs import Proc, free_port, http_ok, wait_until
from lab.tools import CapiManifests, tool

log = logging.getLogger("lab.cluster")

# CAPI components: (manifest dir inside the CAPI module, binary, webhook-config suffix)
_CAPI_COMPONENTS = {
    "core": ("core", "capi-manager", "core"),
    "bootstrap": ("bootstrap/kubeadm", "capi-kubeadm-bootstrap", "bootstrap"),
    "controlplane": ("controlplane/kubeadm", "capi-kubeadm-control-plane", "controlplane"),
}

SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
# Lab CAPI managers authenticate with client certificates in this group (bound to cluster-admin).
CAPI_MANAGERS_GROUP = "lab:capi-managers"


@dataclass
class LabOptions:
    scheduler: bool = False  # pods must really be scheduled (pending pod → node → scheduled benchmarks)
    capi: bool = True
    control_plane_provider: bool = False  # KubeadmControlPlane manager (flavors with KCP)
    audit_log: bool = False  # benchmarks count API requests per user from the audit log
    extra_apiserver_args: list[str] = field(default_factory=list)


@dataclass
class ManagementCluster:
    workdir: Path
    options: LabOptions = field(default_factory=LabOptions)
    procs: dict[str, Proc] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    # ---------------------------------------------------------------- layout
    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def ca_pem(self) -> bytes:
        return (self.pki / "ca.crt").read_bytes()

    @property
    def ca_key_pem(self) -> bytes:
        return (self.pki / "ca.key").read_bytes()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> ManagementCluster:
        t0 = time.monotonic()
        for d in (self.pki, self.logs, self.workdir / "etcd"):
            d.mkdir(parents=True, exist_ok=True)
        try:
            self._write_certs()
            self._start_etcd()
            self._start_apiserver()
            self.timings["apiserver"] = time.monotonic() - t0
            self._start_kube_controllers()
            if self.options.capi:
                self._install_capi()
                self._start_capi_managers()
            self._wait_kube_controllers()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        (self.workdir / "pids").write_text("".join(f"{p.pid}\n" for p in self.procs.values() if p.pid))
        log.info("management cluster ready in %.1fs at %s", self.timings["total"], self.server)
        return self

    def stop(self) -> None:
        # Managers first (they would log noise against a dead apiserver), etcd last.
        for name in reversed(list(self.procs)):
            self.procs[name].stop()

    def __enter__(self) -> ManagementCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- certificates
    def _write_certs(self) -> None:
        ca = certs.CertificateAuthority("lab-kubernetes-ca")
        ca.pair.write(self.pki, "ca")
        ca.issue(
            "kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ips=("127.0.0.1", KUBERNETES_SERVICE_IP),
            server=True,
        ).write(self.pki, "apiserver")
        ca.issue("lab-admin", organizations=("system:masters",), client=True).write(self.pki, "admin")
        ca.issue("webhooks", dns_names=("localhost",), ips=("127.0.0.1",), server=True).write(
            self.pki, "webhook"
        )
        wh = self.pki / "webhook-serving"
        wh.mkdir(exist_ok=True)
        (wh / "tls.crt").write_bytes((self.pki / "webhook.crt").read_bytes())
        (wh / "tls.key").write_bytes((self.pki / "webhook.key").read_bytes())
        sa_key, sa_pub = certs.service_account_keys()
        (self.pki / "sa.key").write_bytes(sa_key)
        (self.pki / "sa.pub").write_bytes(sa_pub)
        self.ports["apiserver"] = free_port()
        self.write_kubeconfig(self.kubeconfig, "lab-admin", self.pki / "admin.crt", self.pki / "admin.key")

    def client_kubeconfig(self, user: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig for its own identity, so the audit log tells its requests apart."""
        ca = certs.CertificateAuthority.load(self.ca_pem, self.ca_key_pem)
        crt, key = ca.issue(user, organizations=groups, client=True).write(self.pki, f"user-{user}")
        return self.write_kubeconfig(self.workdir / f"{user}.kubeconfig", user, crt, key)

    def write_kubeconfig(
        self,
        path: Path,
        user: str,
        cert: Path | None = None,
        key: Path | None = None,
        token: str | None = None,
    ) -> Path:
        creds: dict[str, str] = {}
        if cert and key:
            creds["client-certificate-data"] = base64.b64encode(cert.read_bytes()).decode()
            creds["client-key-data"] = base64.b64encode(key.read_bytes()).decode()
        if token:
            creds["token"] = token
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "lab",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": user, "user": creds}],
            "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
            "current-context": "lab",
        }
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path

    # ---------------------------------------------------------------- kubernetes
    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.ports["etcd"] = client
        self.procs["etcd"] = Proc(
            "etcd",
            [
                tool("etcd"),
                f"--data-dir={self.workdir / 'etcd'}",
                "--name=lab",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=lab=http://127.0.0.1:{peer}",
                # A throwaway lab: durability buys nothing and fsync dominates startup on slow disks.
                "--unsafe-no-fsync=true",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
            self.logs,
        ).start()
        wait_until(
            "etcd",
            lambda: http_ok(f"http://127.0.0.1:{client}/health"),
            30,
            [self.procs["etcd"]],
            interval=0.1,
        )

    def _start_apiserver(self) -> None:
        p = self.pki
        args = [
            tool("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={p / 'apiserver.crt'}",
            f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--authorization-mode=Node,RBAC",
            # Workers join with CAPBK's bootstrap tokens, as on a kubeadm-built control plane.
            "--enable-bootstrap-token-auth=true",
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            f"--cert-dir={p}",
            "--profiling=false",
            "--v=0",
            *self.options.extra_apiserver_args,
        ]
        if self.options.audit_log:
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(
                yaml.safe_dump(
                    {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "rules": [{"level": "Metadata"}]}
                )
            )
            args += [
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.logs / 'audit.log'}",
                "--audit-log-format=json",
                "--audit-log-mode=batch",
                "--audit-log-batch-max-wait=1s",
            ]
        self.procs["kube-apiserver"] = Proc("kube-apiserver", args, self.logs).start()
        ctx = ssl.create_default_context(cadata=self.ca_pem.decode())
        wait_until(
            "kube-apiserver /readyz",
            lambda: http_ok(f"{self.server}/readyz", context=ctx),
            90,
            [self.procs["etcd"], self.procs["kube-apiserver"]],
        )

    def _start_kube_controllers(self) -> None:
        p = self.pki
        self.procs["kube-controller-manager"] = Proc(
            "kube-controller-manager",
            [
                tool("kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                # bootstrapsigner signs kube-public/cluster-info for `kubeadm join` discovery;
                # csrsigning issues kubelet client certificates with the lab CA.
                "--controllers=*,bootstrapsigner,tokencleaner",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                "--use-service-account-credentials=false",
                "--kube-api-qps=100",
                "--kube-api-burst=200",
                # Lab nodes are KWOK-kept; when a lab host powers off its heartbeat stops, and the
                # operator should see NotReady within seconds rather than the default 40s+.
                "--node-monitor-grace-period=20s",
            ],
            self.logs,
        ).start()
        if self.options.scheduler:
            self.procs["kube-scheduler"] = Proc(
                "kube-scheduler",
                [
                    tool("kube-scheduler"),
                    f"--kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={free_port()}",
                ],
                self.logs,
            ).start()

    def _wait_kube_controllers(self) -> None:
        # The serviceaccount controller creating `default` proves the controller manager is working.
        procs = [self.procs[n] for n in ("kube-apiserver", "kube-controller-manager") if n in self.procs]
        wait_until(
            "kube-controller-manager (default ServiceAccount)",
            lambda: (
                self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0
            ),
            60,
            procs,
            interval=0.5,
        )

    # ---------------------------------------------------------------- cluster api
    def _install_capi(self) -> None:
        manifests = CapiManifests.locate()
        ca_bundle = base64.b64encode(self.ca_pem).decode()
        docs: list[dict[str, Any]] = []
        components = ["core", "bootstrap"] + (["controlplane"] if self.options.control_plane_provider else [])
        for comp in components:
            src, _, suffix = _CAPI_COMPONENTS[comp]
            port = self.ports[f"capi-{comp}-webhook"] = free_port()
            self.ports[f"capi-{comp}-health"] = free_port()
            url = f"https://127.0.0.1:{port}"
            labels = manifests.crd_labels(src)
            for path in manifests.crds(src):
                for crd in yaml.safe_load_all(path.read_text()):
                    if crd:
                        crd["metadata"].setdefault("labels", {}).update(labels)
                        docs.append(webhook_conversion(crd, url, ca_bundle))
            for cfg in yaml.safe_load_all(manifests.webhooks(src).read_text()):
                if cfg:
                    docs.append(webhook_by_url(cfg, url, ca_bundle, suffix))
        # CRDs must be established before webhook configurations can target their resources usefully.
        self.apply_docs([d for d in docs if d["kind"] == "CustomResourceDefinition"])
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        self.apply_docs([d for d in docs if d["kind"] != "CustomResourceDefinition"])

    def _start_capi_managers(self) -> None:
        names = ["core", "bootstrap"] + (["controlplane"] if self.options.control_plane_provider else [])
        # Each manager under an identity of its own, as in a real management cluster (a ServiceAccount, never
        # system:masters): admission policies that tell identities apart see CAPI as CAPI. Their rights are
        # cluster-admin's here; CAPI's own roles are not what this lab tests.
        self.apply_docs(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": "lab:capi-managers"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "cluster-admin",
                    },
                    "subjects": [
                        {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "Group",
                            "name": CAPI_MANAGERS_GROUP,
                        }
                    ],
                }
            ]
        )
        for comp in names:
            _, binary, _ = _CAPI_COMPONENTS[comp]
            kubeconfig = self.client_kubeconfig(f"lab:capi-{comp}", groups=(CAPI_MANAGERS_GROUP,))
            self.procs[f"capi-{comp}"] = Proc(
                f"capi-{comp}",
                [
                    tool(binary),
                    f"--kubeconfig={kubeconfig}",
                    "--leader-elect=false",
                    f"--webhook-port={self.ports[f'capi-{comp}-webhook']}",
                    f"--webhook-cert-dir={self.pki / 'webhook-serving'}",
                    f"--health-addr=127.0.0.1:{self.ports[f'capi-{comp}-health']}",
                    "--diagnostics-address=0",
                    "--insecure-diagnostics=true",
                    # The lab's MachineDeployments scale in seconds; CAPI's client defaults throttle that.
                    "--kube-api-qps=50",
                    "--kube-api-burst=100",
                ],
                self.logs,
            ).start()
        for comp in names:
            name = f"capi-{comp}"
            wait_until(
                f"{name} /readyz",
                lambda c=comp: http_ok(f"http://127.0.0.1:{self.ports[f'capi-{c}-health']}/readyz"),
                120,
                [self.procs["kube-apiserver"], self.procs[name]],
            )

    # ---------------------------------------------------------------- helpers
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(tool("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def apply_docs(self, docs: list[dict[str, Any]]) -> None:
        if docs:
            self.kubectl(
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=lab",
                "-f",
                "-",
                input=yaml.safe_dump_all(docs),
            )

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def memory_mib(self) -> dict[str, float]:
        """Resident memory per component (from /proc), for the README's footprint figures."""
        out: dict[str, float] = {}
        for name, p in self.procs.items():
            if p.pid and p.alive():
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            out[name] = int(line.split()[1]) / 1024
        return out


def webhook_conversion(crd: dict[str, Any], url: str, ca_bundle: str) -> dict[str, Any]:
    """Point a multi-version CRD's conversion at an out-of-cluster manager (what envtest does)."""
    crd = copy.deepcopy(crd)
    if len(crd["spec"].get("versions", [])) > 1:
        crd["spec"]["conversion"] = {
            "strategy": "Webhook",
            "webhook": {
                "conversionReviewVersions": ["v1", "v1beta1"],
                "clientConfig": {"url": f"{url}/convert", "caBundle": ca_bundle},
            },
        }
    return crd


def webhook_by_url(cfg: dict[str, Any], url: str, ca_bundle: str, suffix: str) -> dict[str, Any]:
    """Rewrite an admission webhook configuration from in-cluster Service form to URL form."""
    cfg = copy.deepcopy(cfg)
    cfg["metadata"]["name"] = f"{cfg['metadata']['name']}-{suffix}"
    for hook in cfg.get("webhooks", []):
        client = hook["clientConfig"]
        path = client.pop("service", {}).get("path", "/")
        client["url"] = f"{url}{path}"
        client["caBundle"] = ca_bundle
    return cfg
