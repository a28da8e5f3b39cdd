"""The release works with the real clusterctl (v1.14) against real API servers with CAPI's webhooks.

- `clusterctl generate provider|cluster` read our local repository (hack/release.py) and every generated
  object passes server-side dry-run on the session lab, where CAPI's and KCP's webhooks validate it;
- `clusterctl init --infrastructure baremetal` runs end to end on a second, empty management cluster
  (LabOptions(capi=False)): cert-manager check, CAPI core/kubeadm from local repositories rendered from
  CAPI's own config, our components, the inventory. No pod runs there (no kubelet, no images), so the
  controller is then started as a local process authenticated as the ServiceAccount clusterctl created:
  the RBAC we ship is what it runs with.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import flavorgen
import pytest
import release
import yaml
from lab.cluster import LabOptions, ManagementCluster
from lab.lab import Lab
from lab.procs import Proc, free_port, http_ok, wait_until
from lab.tools import REPO_DIR, tool, versions

from capi_provider import api
from capi_provider.api import crds
from tests.helpers import eventually

pytestmark = pytest.mark.cluster

K8S_VERSION = versions()["KUBERNETES_VERSION"]
CAPI_VERSION = versions()["CAPI_VERSION"]
# clusterctl v1.14 defaults to cert-manager v1.21.1; any v1.21 serves the cert-manager.io/v1 API it checks.
CERT_MANAGER_VERSION = "v1.21.2"
VERSION = f"v{release.project_version()}"
NAMESPACE = release.NAMESPACE
SA = "capi-provider-baremetal-manager"
DEPLOYMENT = "capi-provider-baremetal-controller-manager"

# What an operator sets beyond what clusterctl derives from its flags.
VALUES = {
    "CONTROL_PLANE_ENDPOINT_IP": "192.0.2.10",
    "OIDC_ISSUER_URL": "https://idp.example.com",
    "OIDC_CLIENT_ID": "kubernetes",
    "OIDC_ADMIN_GROUP": "platform-admins",
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh `make release-manifests` output: the local repository plus clusterctl.yaml."""
    out = tmp_path_factory.mktemp("release")
    release.release(out)
    return out


class Clusterctl:
    """clusterctl with an environment of its own: no user config or overrides folder, no version check, no
    network (every repository is local), and only the variables a test passes."""

    def __init__(self, home: Path) -> None:
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / "xdg"),
            "CLUSTERCTL_DISABLE_VERSIONCHECK": "true",
            "GOPROXY": "off",
        }

    def __call__(
        self, *args: str | Path, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(tool("clusterctl")), *map(str, args)],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"clusterctl {' '.join(map(str, args))} failed:\n{res.stdout}\n{res.stderr}")
        return res


@pytest.fixture(scope="module")
def clusterctl(tmp_path_factory: pytest.TempPathFactory) -> Clusterctl:
    return Clusterctl(tmp_path_factory.mktemp("clusterctl-home"))


def dry_run(mgmt: ManagementCluster, text: str) -> subprocess.CompletedProcess[str]:
    """Server-side dry-run. A webhook the API server could not reach (the shared lab's CAPI managers on a
    loaded machine) is retried a few times: that is the lab's hiccup, not a verdict on the objects, which
    comes back as Invalid/Forbidden and is returned at once."""
    for attempt in range(4):
        res = mgmt.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "--force-conflicts",
            "-f",
            "-",
            input=text,
            check=False,
        )
        if res.returncode == 0 or "failed calling webhook" not in res.stderr or attempt == 3:
            return res
        time.sleep(3)
    raise AssertionError("unreachable")


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# ====================================================================================== generate


def test_generate_provider_describe_lists_our_variables(clusterctl: Clusterctl, repo: Path) -> None:
    out = clusterctl(
        "generate",
        "provider",
        "--infrastructure",
        "baremetal",
        "--config",
        repo / "clusterctl.yaml",
        "--describe",
    ).stdout
    assert re.search(rf"^Version:\s+{re.escape(VERSION)}$", out, re.M)
    assert re.search(rf"^TargetNamespace:\s+{NAMESPACE}$", out, re.M)
    listed = out.split("Variables:", 1)[1].split("Images:", 1)[0]
    assert sorted(line.strip("- ").strip() for line in listed.splitlines() if line.strip()) == [
        "BAREMETAL_BMC_TIMEOUT",
        "BAREMETAL_BOOT_TIMEOUT",
        "BAREMETAL_POLL_INTERVAL",
    ]
    assert release.image_reference() in out.split("Images:", 1)[1]


def test_generated_components_pass_server_side_dry_run(
    clusterctl: Clusterctl, repo: Path, lab: Lab, namespace: str
) -> None:
    # --target-namespace, clusterctl's own transform, moves every namespaced object into the test's fresh
    # namespace (the lab already serves our CRDs; their dry-run is an update).
    text = clusterctl(
        "generate",
        "provider",
        "--infrastructure",
        "baremetal",
        "--config",
        repo / "clusterctl.yaml",
        "--target-namespace",
        namespace,
    ).stdout
    docs = docs_of(text)
    # Objects of a CRD defined in the same file cannot be dry-run before that CRD exists for real: the
    # ClusterKopfPeering. It is created for real by the clusterctl init test below.
    defined = {
        (d["spec"]["group"], d["spec"]["names"]["kind"])
        for d in docs
        if d["kind"] == "CustomResourceDefinition"
    }
    deferred = [d for d in docs if (d["apiVersion"].split("/")[0], d["kind"]) in defined]
    assert [(d["kind"], d["metadata"]["name"]) for d in deferred] == [
        ("ClusterKopfPeering", "capi-provider-baremetal")
    ]
    applied = [d for d in docs if d not in deferred]
    res = dry_run(lab.cluster, yaml.safe_dump_all(applied))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("(server dry run)") == len(applied)
    deploy = next(d for d in applied if d["kind"] == "Deployment")
    assert deploy["metadata"]["namespace"] == namespace
    assert deploy["metadata"]["labels"]["cluster.x-k8s.io/provider"] == "infrastructure-baremetal"


def _required_in_header(text: str) -> set[str]:
    # "required;" alone marks what clusterctl cannot fill in from its own flags and arguments.
    header = text.split("\n---\n", 1)[0]
    return set(re.findall(r"^#   ([A-Z][A-Z0-9_]+)\s+required;", header, re.M))


FLAVORS = {
    "": "cluster-template.yaml",
    "workers-only": "cluster-template-workers-only.yaml",
    "oidc": "cluster-template-oidc.yaml",
}


@pytest.mark.parametrize("flavor", list(FLAVORS))
def test_flavor_generates_and_passes_capi_webhooks(
    clusterctl: Clusterctl, repo: Path, lab: Lab, namespace: str, flavor: str
) -> None:
    common = [
        "--infrastructure",
        f"baremetal:{VERSION}",
        "--config",
        repo / "clusterctl.yaml",
        "--flavor",
        flavor,
    ]
    common += ["--kubeconfig", lab.cluster.kubeconfig, "--target-namespace", namespace]
    listed = clusterctl("generate", "cluster", "c1", *common, "--list-variables").stdout
    required = {
        line.strip("- ").strip()
        for line in listed.split("Required Variables:", 1)[1].split("Optional Variables:", 1)[0].splitlines()
        if line.strip()
    }
    # What clusterctl asks the operator for is exactly what the flavor's header calls required.
    assert required == _required_in_header(
        (repo / "infrastructure-baremetal" / VERSION / FLAVORS[flavor]).read_text()
    )
    missing = clusterctl("generate", "cluster", "c1", *common, check=False)
    assert missing.returncode != 0 and "value for variables" in missing.stderr

    text = clusterctl(
        "generate",
        "cluster",
        "c1",
        *common,
        "--kubernetes-version",
        K8S_VERSION,
        "--control-plane-machine-count",
        "3",
        "--worker-machine-count",
        "2",
        env={k: v for k, v in VALUES.items() if k in required},
    ).stdout
    docs = docs_of(text)
    res = dry_run(lab.cluster, text)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("(server dry run)") == len(docs)
    assert all(d["metadata"]["namespace"] == namespace for d in docs)


def test_dry_run_does_reach_capi_webhooks(
    clusterctl: Clusterctl, repo: Path, lab: Lab, namespace: str
) -> None:
    # The negative control for the test above: an even control plane size is refused by KCP's validating
    # webhook (Go code, not the CRD schema), so a passing dry-run really went through CAPI's webhooks.
    text = clusterctl(
        "generate",
        "cluster",
        "c1",
        "--infrastructure",
        f"baremetal:{VERSION}",
        "--config",
        repo / "clusterctl.yaml",
        "--kubeconfig",
        lab.cluster.kubeconfig,
        "--target-namespace",
        namespace,
        "--kubernetes-version",
        K8S_VERSION,
        "--control-plane-machine-count",
        "2",
        env={"CONTROL_PLANE_ENDPOINT_IP": "192.0.2.10"},
    ).stdout
    res = dry_run(lab.cluster, text)
    assert res.returncode != 0, res.stdout
    # The message is the webhook's own (controller-runtime passes its Status through to kubectl).
    assert "spec.replicas: Forbidden: cannot be an even number when etcd is stacked" in res.stderr, res.stderr


# ====================================================================================== clusterctl init


def _go_module_dir(module: str) -> Path:
    """A module's source from the Go module cache (downloaded through the module proxy if missing)."""
    res = subprocess.run(
        ["go", "mod", "download", "-json", module],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        env={**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"},
    )
    assert res.returncode == 0, f"go mod download {module}: {res.stderr or res.stdout}"
    return Path(json.loads(res.stdout)["Dir"])


def _local_repositories(base: Path) -> tuple[list[dict[str, str]], dict[str, str]]:
    """clusterctl local repositories for CAPI core, kubeadm bootstrap and control plane (each rendered with
    kustomize from CAPI's own config/default, as its release does) and for cert-manager (its CRDs only: the
    API clusterctl checks; its controllers could not run here anyway)."""
    capi = _go_module_dir(f"sigs.k8s.io/cluster-api@{CAPI_VERSION}")
    providers = []
    for name, kind, src, label, file in (
        ("cluster-api", "CoreProvider", "core", "cluster-api", "core-components.yaml"),
        (
            "kubeadm",
            "BootstrapProvider",
            "bootstrap/kubeadm",
            "bootstrap-kubeadm",
            "bootstrap-components.yaml",
        ),
        (
            "kubeadm",
            "ControlPlaneProvider",
            "controlplane/kubeadm",
            "control-plane-kubeadm",
            "control-plane-components.yaml",
        ),
    ):
        d = base / label / CAPI_VERSION
        d.mkdir(parents=True)
        (d / file).write_text(release.kustomize(capi / src / "config" / "default"))
        (d / "metadata.yaml").write_text((capi / "metadata.yaml").read_text())
        providers.append({"name": name, "type": kind, "url": (d / file).as_uri()})
    cm = _go_module_dir(f"github.com/cert-manager/cert-manager@{CERT_MANAGER_VERSION}")
    d = base / "cert-manager" / CERT_MANAGER_VERSION
    d.mkdir(parents=True)
    crds = [p.read_text() for p in sorted((cm / "deploy" / "crds").glob("*.yaml"))]
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cert-manager"}}
    (d / "cert-manager.yaml").write_text(yaml.safe_dump(namespace) + "".join(f"---\n{c}" for c in crds))
    return providers, {"url": (d / "cert-manager.yaml").as_uri(), "version": CERT_MANAGER_VERSION}


def _bare_metal_cluster(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": flavorgen.INFRA_VERSION,
        "kind": "BareMetalCluster",
        "metadata": {"name": "c1", "namespace": ns},
        "spec": {"controlPlaneEndpoint": {"host": "192.0.2.10", "port": 6443}},
    }


def _bare_metal_host(ns: str, bmc_port: int) -> dict[str, Any]:
    return {
        "apiVersion": flavorgen.INFRA_VERSION,
        "kind": "BareMetalHost",
        "metadata": {"name": "h1", "namespace": ns},
        "spec": {
            "bmc": {"address": f"ipmi://127.0.0.1:{bmc_port}", "credentialsName": "h1-bmc"},
            "ssh": {
                "address": "127.0.0.1",
                "privateKeySecretName": "h1-ssh",
                "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
            },
            "hardware": {"cpuCores": 8, "memory": "64Gi"},
        },
    }


def _machine_and_template(ns: str) -> list[dict[str, Any]]:
    meta = {"name": "m1", "namespace": ns}
    return [
        {"apiVersion": flavorgen.INFRA_VERSION, "kind": "BareMetalMachine", "metadata": meta, "spec": {}},
        {
            "apiVersion": flavorgen.INFRA_VERSION,
            "kind": "BareMetalMachineTemplate",
            "metadata": meta,
            "spec": {"template": {"spec": {}}},
        },
    ]


def _get(cluster: ManagementCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def _host_error(cluster: ManagementCluster, ns: str) -> str | None:
    return ((_get(cluster, "baremetalhost", "h1", "-n", ns).get("status") or {}).get("lastError") or {}).get(
        "type"
    )


def test_clusterctl_init_on_an_empty_management_cluster(
    clusterctl: Clusterctl, repo: Path, tmp_path: Path, lab: Lab
) -> None:
    # `lab` only for ordering: tools are built and the session lab is up before this second cluster starts.
    cluster = ManagementCluster(tmp_path / "mgmt", LabOptions(capi=False))
    cluster.start()
    provider: Proc | None = None
    try:
        providers, cert_manager = _local_repositories(tmp_path / "repos")
        ours = yaml.safe_load((repo / "clusterctl.yaml").read_text())["providers"]
        config = tmp_path / "clusterctl.yaml"
        config.write_text(yaml.safe_dump({"providers": providers + ours, "cert-manager": cert_manager}))

        res = clusterctl(
            "init", "--infrastructure", "baremetal", "--config", config, "--kubeconfig", cluster.kubeconfig
        )
        log = res.stdout + res.stderr
        assert f'Installing cert-manager version="{CERT_MANAGER_VERSION}"' in log
        assert "Your management cluster has been initialized successfully!" in log

        # The inventory clusterctl keeps (what upgrade, move and delete work from).
        inventory = {
            (p["metadata"]["namespace"], p["metadata"]["name"], p["type"], p["version"])
            for p in _get(cluster, "providers.clusterctl.cluster.x-k8s.io", "-A")["items"]
        }
        assert inventory == {
            ("capi-system", "cluster-api", "CoreProvider", CAPI_VERSION),
            ("capi-kubeadm-bootstrap-system", "bootstrap-kubeadm", "BootstrapProvider", CAPI_VERSION),
            (
                "capi-kubeadm-control-plane-system",
                "control-plane-kubeadm",
                "ControlPlaneProvider",
                CAPI_VERSION,
            ),
            (NAMESPACE, "infrastructure-baremetal", "InfrastructureProvider", VERSION),
        }
        deploy = _get(cluster, "deployment", DEPLOYMENT, "-n", NAMESPACE)
        assert deploy["metadata"]["labels"]["clusterctl.cluster.x-k8s.io"] == ""
        [manager] = deploy["spec"]["template"]["spec"]["containers"]
        assert manager["name"] == "manager" and manager["image"] == release.image_reference()
        peering = _get(cluster, "clusterkopfpeering", "capi-provider-baremetal")
        assert "namespace" not in peering["metadata"]  # clusterctl set one; the API server dropped it
        for crd in (k.crd_name for k in crds.KINDS):
            labels = _get(cluster, "crd", crd)["metadata"]["labels"]
            assert labels["cluster.x-k8s.io/v1beta2"] == "v1alpha1"

        # With the inventory in place, `generate cluster` finds our version on its own.
        clusterctl(
            "generate",
            "cluster",
            "c1",
            "--infrastructure",
            "baremetal",
            "--config",
            config,
            "--kubeconfig",
            cluster.kubeconfig,
            "--kubernetes-version",
            K8S_VERSION,
            env={"CONTROL_PLANE_ENDPOINT_IP": "192.0.2.10"},
        )

        # The controller with exactly the ServiceAccount's RBAC (a token from the TokenRequest API).
        token = cluster.kubectl("create", "token", SA, "-n", NAMESPACE, "--duration=1h").stdout.strip()
        kubeconfig = cluster.write_kubeconfig(tmp_path / "sa.kubeconfig", SA, token=token)
        port = free_port()
        provider = Proc(
            "provider-as-sa",
            [
                sys.executable,
                "-m",
                "capi_provider",
                f"--kubeconfig={kubeconfig}",
                f"--health-port={port}",
                "--bmc-timeout=3",
            ],
            cluster.logs,
            env={
                "PYTHONPATH": str(REPO_DIR),
                "PYTHONUNBUFFERED": "1",
                "CAPBM_PEERING": "capi-provider-baremetal",
            },
        ).start()
        wait_until("provider /healthz", lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60, [provider])

        ns = "rbac-check"
        cluster.kubectl("create", "namespace", ns)
        docs = [_bare_metal_cluster(ns), _bare_metal_host(ns, free_port()), *_machine_and_template(ns)]
        cluster.apply_docs(docs)

        def status(kind: str, name: str) -> dict[str, Any]:
            return _get(cluster, kind, name, "-n", ns).get("status") or {}

        def reason(kind: str, name: str, wanted: str) -> bool:
            return any(c["reason"] == wanted for c in status(kind, name).get("conditions") or [])

        # Every daemon writes its kind's status (through the status subresource), kopf its finalizer.
        eventually("cluster status", lambda: reason("baremetalcluster", "c1", "WaitingForClusterOwner"), 30)
        eventually("machine status", lambda: reason("baremetalmachine", "m1", "WaitingForMachineOwner"), 30)
        eventually(
            "template status", lambda: status("baremetalmachinetemplate", "m1").get("matchingHosts") == 0, 30
        )
        for kind, name in (("baremetalcluster", "c1"), ("baremetalmachine", "m1"), ("baremetalhost", "h1")):
            assert _get(cluster, kind, name, "-n", ns)["metadata"]["finalizers"] == [api.FINALIZER], kind
        eventually(
            "the host reports its missing credentials",
            lambda: _host_error(cluster, ns) == "CredentialsSecretMissing",
            timeout=30,
        )
        # The Secret watch (cluster-wide) wakes the host at once; it reads the Secret and tries the BMC.
        cluster.kubectl(
            "create",
            "secret",
            "generic",
            "h1-bmc",
            "-n",
            ns,
            "--from-literal=username=admin",
            "--from-literal=password=not-a-real-password",
        )
        eventually(
            "the host gets past the credentials to the (absent) BMC",
            lambda: _host_error(cluster, ns) not in (None, "CredentialsSecretMissing"),
            timeout=30,
        )
        events = _get(cluster, "events", "-n", ns)["items"]
        assert any(e["involvedObject"]["name"] == "h1" and e["type"] == "Warning" for e in events)
        peers = _get(cluster, "clusterkopfpeering", "capi-provider-baremetal").get("status") or {}
        assert len(peers) == 1 and next(iter(peers.values()))["lifetime"] == 60

        provider.check_alive()
        log = provider.log_path.read_text()
        assert "Forbidden" not in log and " 403" not in log, provider.tail(40)
    finally:
        if provider is not None:
            provider.stop()
        cluster.stop()
