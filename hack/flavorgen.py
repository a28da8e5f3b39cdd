"""The clusterctl flavors in flavors/, generated here so their common parts are written once.

    python hack/flavorgen.py            # rewrite flavors/cluster-template*.yaml
    python hack/flavorgen.py --check    # exit 1 if flavors/ differs from what this generates

`make release-manifests` runs the rewrite too; tests/unit/test_manifests.py fails when the committed files
drift from this generator. The committed files are what clusterctl reads (hack/release.py copies them into
the release), so they stay plain YAML with a comment header documenting every variable.

clusterctl substitutes variables in the whole file text, comments included (drone/envsubst: `${VAR}`,
`${VAR:=default}`, and a bare `$VAR` too). So the headers name variables without the dollar syntax, and
no shell snippet anywhere uses `$`.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_DIR = Path(__file__).resolve().parent.parent
FLAVORS_DIR = REPO_DIR / "flavors"

INFRA_GROUP = "infrastructure.cluster.x-k8s.io"
INFRA_VERSION = f"{INFRA_GROUP}/v1alpha1"
CAPI_VERSION = "cluster.x-k8s.io/v1beta2"
BOOTSTRAP_GROUP = "bootstrap.cluster.x-k8s.io"
CONTROLPLANE_GROUP = "controlplane.cluster.x-k8s.io"

# The NoCloud meta-data our provider writes (capi_provider/bootstrap/seed_templates/meta-data.j2) has
# `local-hostname` and `provider-id`; cloud-init renders CAPBK's `## template: jinja` cloud-config with
# them (dashes become underscores), so the Node registers under the machine's name with our providerID.
NODE_NAME = "{{ ds.meta_data.local_hostname }}"
PROVIDER_ID = "{{ ds.meta_data.provider_id }}"

AUTOSCALER_MIN = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size"
AUTOSCALER_MAX = "cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"
OIDC_RBAC_LABEL = f"{INFRA_GROUP}/oidc-rbac"


@dataclass(frozen=True)
class Var:
    name: str
    default: str | None  # None: required
    doc: str
    clusterctl: bool = False  # filled in by `clusterctl generate cluster` itself (name, flags)


_VARS = (
    Var("CLUSTER_NAME", None, "the cluster name (clusterctl generate cluster NAME)", clusterctl=True),
    Var("NAMESPACE", None, "namespace of every object (--target-namespace, else the current one)", True),
    Var("KUBERNETES_VERSION", None, "Kubernetes version, e.g. v1.34.4 (--kubernetes-version)"),
    Var(
        "CONTROL_PLANE_MACHINE_COUNT",
        None,
        "control plane nodes, an odd number (--control-plane-machine-count)",
        True,
    ),
    Var("WORKER_MACHINE_COUNT", None, "initial worker nodes (--worker-machine-count)", clusterctl=True),
    Var(
        "CONTROL_PLANE_ENDPOINT_IP",
        None,
        "API server endpoint: the kube-vip VIP, a free address on the control plane hosts' L2 network",
    ),
    Var("CONTROL_PLANE_ENDPOINT_PORT", "6443", "API server port (kube-vip and the API servers use it)"),
    Var("POD_CIDR", "192.168.0.0/16", "pod network (must match your CNI's configuration)"),
    Var("SERVICE_CIDR", "10.96.0.0/12", "service network"),
    Var("KUBE_VIP_INTERFACE", "eno1", "NIC on the control plane hosts that answers ARP for the VIP"),
    Var("KUBE_VIP_IMAGE", "ghcr.io/kube-vip/kube-vip:v0.8.9", "kube-vip image (static pod on every CP node)"),
    Var("CONTROL_PLANE_HOST_ROLE", "control-plane", "hosts labelled role=<this> serve the control plane"),
    Var("WORKER_HOST_ROLE", "worker", "hosts labelled role=<this> serve the workers"),
    Var(
        "WORKER_MACHINE_MIN_COUNT",
        "${WORKER_MACHINE_COUNT}",
        "cluster-autoscaler lower bound for md-0",
    ),
    Var(
        "WORKER_MACHINE_MAX_COUNT",
        "${WORKER_MACHINE_COUNT}",
        "cluster-autoscaler upper bound for md-0",
    ),
    Var("OIDC_ISSUER_URL", None, "OIDC issuer URL (https), as in the ID tokens' iss claim"),
    Var("OIDC_CLIENT_ID", None, "OIDC client ID the ID tokens are issued for (aud claim)"),
    Var("OIDC_USERNAME_CLAIM", "email", "claim used as the Kubernetes user name"),
    Var("OIDC_USERNAME_PREFIX", "oidc:", "prefix added to OIDC user names ('-' for none)"),
    Var("OIDC_GROUPS_CLAIM", "groups", "claim holding the user's groups"),
    Var("OIDC_GROUPS_PREFIX", "oidc:", "prefix added to OIDC group names"),
    Var("OIDC_ADMIN_GROUP", None, "IdP group (without prefix) granted OIDC_ADMIN_CLUSTER_ROLE"),
    Var("OIDC_ADMIN_CLUSTER_ROLE", "cluster-admin", "ClusterRole bound to OIDC_ADMIN_GROUP"),
)
VARS = {v.name: v for v in _VARS}


class Plain(str):
    """A variable reference emitted unquoted: after substitution it must parse as a number."""


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # shared dicts (nodeRegistration) are written out in full, never as &anchors


def _represent_str(dumper: yaml.SafeDumper, s: str) -> yaml.Node:
    # Multi-line content as literal blocks; variable references single-quoted so the substituted value
    # stays a string whatever it looks like (a version, a number, `true`).
    style = "|" if "\n" in s else "'" if "${" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


def _represent_plain(dumper: yaml.SafeDumper, s: Plain) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(s), style="")


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(Plain, _represent_plain)


def dump(doc: Any) -> str:
    # A wide line: envsubst works on text, and a folded line must never split a `${...}` reference.
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=4096, default_flow_style=False)


class Flavor:
    """One flavor's documents, recording which variables they use (for the header)."""

    def __init__(
        self, name: str, file_name: str, summary: str, notes: str = "", docs: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.file_name = file_name
        self.summary = summary
        self.notes = notes
        self.doc_overrides = docs or {}  # variable -> what it means in this flavor, where that differs
        self.used: dict[str, Var] = {}
        self.docs: list[dict[str, Any]] = []

    def v(self, name: str) -> str:
        var = VARS[name]
        self.used.setdefault(name, var)
        if var.default is not None and var.default.startswith("${"):
            self.v(var.default[2:-1])  # nested default: that variable is used too
        return f"${{{name}}}" if var.default is None else f"${{{name}:={var.default}}}"

    def n(self, name: str) -> Plain:
        return Plain(self.v(name))

    def meta(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "namespace": self.v("NAMESPACE"), **extra}

    def header(self) -> str:
        width = max(len(n) for n in self.used) + 2
        lines = [
            f"Cluster API flavor `{self.name}` of capi-provider-baremetal ({self.file_name}).",
            "Generated by hack/flavorgen.py (make release-manifests): change the generator, not this file.",
            "",
            *self.summary.strip("\n").splitlines(),
            "",
            "Variables (environment or clusterctl.yaml; `clusterctl generate cluster --list-variables`):",
        ]
        for var in sorted(self.used.values(), key=lambda v: (v.default is not None, not v.clusterctl)):
            if var.default is None:
                state = "required, set by clusterctl" if var.clusterctl else "required"
            elif var.default.startswith("${"):
                state = f"default: {var.default[2:-1]}"
            else:
                state = f"default: {var.default}"
            doc = self.doc_overrides.get(var.name, var.doc)
            lines += textwrap.wrap(
                f"{var.name.ljust(width)}{state}; {doc}",
                width=106,
                initial_indent="  ",
                subsequent_indent=" " * (width + 4),
                break_on_hyphens=False,
            )
        if self.notes:
            lines += ["", *self.notes.strip("\n").splitlines()]
        return "".join(f"# {line}".rstrip() + "\n" for line in lines)

    def render(self) -> str:
        return self.header() + "".join("---\n" + dump(d) for d in self.docs)


# ====================================================================================== building blocks


def _ref(group: str, kind: str, name: str) -> dict[str, str]:
    return {"apiGroup": group, "kind": kind, "name": name}


def _node_registration() -> dict[str, Any]:
    return {
        "name": NODE_NAME,
        "kubeletExtraArgs": [{"name": "provider-id", "value": PROVIDER_ID}],
    }


def cluster(f: Flavor, *, control_plane: bool, labels: dict[str, str] | None = None) -> dict[str, Any]:
    c = f.v("CLUSTER_NAME")
    spec: dict[str, Any] = {}
    if control_plane:
        spec["clusterNetwork"] = {
            "pods": {"cidrBlocks": [f.v("POD_CIDR")]},
            "services": {"cidrBlocks": [f.v("SERVICE_CIDR")]},
        }
        spec["controlPlaneRef"] = _ref(CONTROLPLANE_GROUP, "KubeadmControlPlane", f"{c}-control-plane")
    spec["infrastructureRef"] = _ref(INFRA_GROUP, "BareMetalCluster", c)
    meta = f.meta(c, **({"labels": labels} if labels else {}))
    return {"apiVersion": CAPI_VERSION, "kind": "Cluster", "metadata": meta, "spec": spec}


def baremetal_cluster(f: Flavor) -> dict[str, Any]:
    return {
        "apiVersion": INFRA_VERSION,
        "kind": "BareMetalCluster",
        "metadata": f.meta(f.v("CLUSTER_NAME")),
        "spec": {
            "controlPlaneEndpoint": {
                "host": f.v("CONTROL_PLANE_ENDPOINT_IP"),
                "port": f.n("CONTROL_PLANE_ENDPOINT_PORT"),
            }
        },
    }


def machine_template(f: Flavor, name: str, role_var: str) -> dict[str, Any]:
    return {
        "apiVersion": INFRA_VERSION,
        "kind": "BareMetalMachineTemplate",
        "metadata": f.meta(name),
        "spec": {"template": {"spec": {"hostSelector": {"matchLabels": {"role": f.v(role_var)}}}}},
    }


def kube_vip_pod(f: Flavor) -> dict[str, Any]:
    """kube-vip as a static pod holding the control plane VIP in ARP mode, as EKS Anywhere deploys it."""
    env = {
        "vip_arp": "true",
        "port": f.v("CONTROL_PLANE_ENDPOINT_PORT"),
        "vip_interface": f.v("KUBE_VIP_INTERFACE"),
        "vip_cidr": "32",
        "cp_enable": "true",
        "cp_namespace": "kube-system",
        "vip_leaderelection": "true",
        "vip_leasename": "plndr-cp-lock",
        "vip_leaseduration": "15",
        "vip_renewdeadline": "10",
        "vip_retryperiod": "2",
        "address": f.v("CONTROL_PLANE_ENDPOINT_IP"),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kube-vip", "namespace": "kube-system"},
        "spec": {
            "containers": [
                {
                    "name": "kube-vip",
                    "image": f.v("KUBE_VIP_IMAGE"),
                    "imagePullPolicy": "IfNotPresent",
                    "args": ["manager"],
                    "env": [
                        *({"name": k, "value": v} for k, v in env.items()),
                        {"name": "vip_nodename", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    ],
                    "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
                    "volumeMounts": [{"name": "kubeconfig", "mountPath": "/etc/kubernetes/admin.conf"}],
                }
            ],
            "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["kubernetes"]}],
            "hostNetwork": True,
            "volumes": [
                # type File: on a joining control plane node admin.conf appears only late in `kubeadm join`;
                # without a type the runtime would create a directory in its place and break kubeadm.
                {"name": "kubeconfig", "hostPath": {"path": "/etc/kubernetes/admin.conf", "type": "File"}}
            ],
        },
    }


# kubeadm >= 1.29 gives admin.conf its cluster-admin rights only at the end of `kubeadm init`, but the VIP
# must be up before that (kubeadm waits on the endpoint): on the first node kube-vip uses super-admin.conf
# while init runs, and goes back to admin.conf afterwards (kube-vip/kube-vip#684; CAPV does the same).
# /run/kubeadm/kubeadm.yaml is CAPBK's init configuration: it exists on the first node only.
_KUBE_VIP_MANIFEST = "/etc/kubernetes/manifests/kube-vip.yaml"
_TO_SUPER_ADMIN = (
    "if [ -f /run/kubeadm/kubeadm.yaml ]; then sed -i "
    f"'s#path: /etc/kubernetes/admin.conf#path: /etc/kubernetes/super-admin.conf#' {_KUBE_VIP_MANIFEST}; fi"
)
_BACK_TO_ADMIN = (
    "if [ -f /run/kubeadm/kubeadm.yaml ]; then sed -i "
    f"'s#path: /etc/kubernetes/super-admin.conf#path: /etc/kubernetes/admin.conf#' {_KUBE_VIP_MANIFEST}; fi"
)


def kubeadm_control_plane(f: Flavor, api_server_args: list[dict[str, str]] | None = None) -> dict[str, Any]:
    c = f.v("CLUSTER_NAME")
    port = f.n("CONTROL_PLANE_ENDPOINT_PORT")
    cluster_configuration: dict[str, Any] = {}
    if api_server_args:
        cluster_configuration["apiServer"] = {"extraArgs": api_server_args}
    spec: dict[str, Any] = {
        "replicas": f.n("CONTROL_PLANE_MACHINE_COUNT"),
        "version": f.v("KUBERNETES_VERSION"),
        "machineTemplate": {
            "spec": {"infrastructureRef": _ref(INFRA_GROUP, "BareMetalMachineTemplate", f"{c}-control-plane")}
        },
        "kubeadmConfigSpec": {
            **({"clusterConfiguration": cluster_configuration} if cluster_configuration else {}),
            # The API servers listen on the endpoint port: kube-vip moves the address, not the port.
            "initConfiguration": {
                "localAPIEndpoint": {"bindPort": port},
                "nodeRegistration": _node_registration(),
            },
            "joinConfiguration": {
                "controlPlane": {"localAPIEndpoint": {"bindPort": port}},
                "nodeRegistration": _node_registration(),
            },
            "files": [
                {
                    "path": _KUBE_VIP_MANIFEST,
                    "owner": "root:root",
                    "permissions": "0644",
                    "content": dump(kube_vip_pod(f)),
                }
            ],
            "preKubeadmCommands": [_TO_SUPER_ADMIN],
            "postKubeadmCommands": [_BACK_TO_ADMIN],
        },
    }
    return {
        "apiVersion": f"{CONTROLPLANE_GROUP}/v1beta2",
        "kind": "KubeadmControlPlane",
        "metadata": f.meta(f"{c}-control-plane"),
        "spec": spec,
    }


def worker_bootstrap_template(f: Flavor) -> dict[str, Any]:
    return {
        "apiVersion": f"{BOOTSTRAP_GROUP}/v1beta2",
        "kind": "KubeadmConfigTemplate",
        "metadata": f.meta(f"{f.v('CLUSTER_NAME')}-md-0"),
        "spec": {"template": {"spec": {"joinConfiguration": {"nodeRegistration": _node_registration()}}}},
    }


def machine_deployment(f: Flavor, bootstrap: dict[str, Any], *, autoscaler: bool) -> dict[str, Any]:
    c = f.v("CLUSTER_NAME")
    meta = f.meta(f"{c}-md-0")
    if autoscaler:
        meta["annotations"] = {
            AUTOSCALER_MIN: f.v("WORKER_MACHINE_MIN_COUNT"),
            AUTOSCALER_MAX: f.v("WORKER_MACHINE_MAX_COUNT"),
        }
    return {
        "apiVersion": CAPI_VERSION,
        "kind": "MachineDeployment",
        "metadata": meta,
        "spec": {
            "clusterName": c,
            "replicas": f.n("WORKER_MACHINE_COUNT"),
            "template": {
                "spec": {
                    "clusterName": c,
                    "version": f.v("KUBERNETES_VERSION"),
                    "bootstrap": bootstrap,
                    "infrastructureRef": _ref(INFRA_GROUP, "BareMetalMachineTemplate", f"{c}-md-0"),
                }
            },
        },
    }


def oidc_api_server_args(f: Flavor) -> list[dict[str, str]]:
    return [
        {"name": "oidc-issuer-url", "value": f.v("OIDC_ISSUER_URL")},
        {"name": "oidc-client-id", "value": f.v("OIDC_CLIENT_ID")},
        {"name": "oidc-username-claim", "value": f.v("OIDC_USERNAME_CLAIM")},
        {"name": "oidc-username-prefix", "value": f.v("OIDC_USERNAME_PREFIX")},
        {"name": "oidc-groups-claim", "value": f.v("OIDC_GROUPS_CLAIM")},
        {"name": "oidc-groups-prefix", "value": f.v("OIDC_GROUPS_PREFIX")},
    ]


def oidc_rbac(f: Flavor) -> list[dict[str, Any]]:
    c = f.v("CLUSTER_NAME")
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "oidc-admins"},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": f.v("OIDC_ADMIN_CLUSTER_ROLE"),
        },
        # The API server prefixes OIDC groups, so the subject carries the same prefix.
        "subjects": [
            {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Group",
                "name": f.v("OIDC_GROUPS_PREFIX") + f.v("OIDC_ADMIN_GROUP"),
            }
        ],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": f.meta(f"{c}-oidc-rbac"),
            "data": {"oidc-admins.yaml": dump(binding)},
        },
        {
            "apiVersion": "addons.cluster.x-k8s.io/v1beta2",
            "kind": "ClusterResourceSet",
            "metadata": f.meta(f"{c}-oidc-rbac"),
            "spec": {
                # Reconcile: editing the ConfigMap (another group, another role) re-applies the binding.
                "strategy": "Reconcile",
                "clusterSelector": {"matchLabels": {OIDC_RBAC_LABEL: c}},
                "resources": [{"kind": "ConfigMap", "name": f"{c}-oidc-rbac"}],
            },
        },
    ]


# ====================================================================================== the flavors

_DEFAULT_SUMMARY = """
A workload cluster on bare metal: KubeadmControlPlane on hosts labelled role=CONTROL_PLANE_HOST_ROLE and
MachineDeployment md-0 on hosts labelled role=WORKER_HOST_ROLE (label your BareMetalHosts accordingly:
`kubectl label baremetalhost <host> role=worker`). The API endpoint is a VIP held by kube-vip (static pod
in ARP mode on every control plane node, as EKS Anywhere deploys it): pick a free address on the control
plane hosts' network for CONTROL_PLANE_ENDPOINT_IP and the NIC carrying it for KUBE_VIP_INTERFACE.

Every kubeadm nodeRegistration uses the machine name and providerID from the NoCloud meta-data our
provider writes (`{{ ds.meta_data.local_hostname }}`, `{{ ds.meta_data.provider_id }}`, rendered by
cloud-init because CAPBK's cloud-config starts with `## template: jinja`): that is how each Node registers
with the providerID CAPI matches to its Machine.

Autoscaling: md-0 carries cluster-autoscaler's min/max annotations. By default both equal
WORKER_MACHINE_COUNT, so the autoscaler leaves md-0 alone; set WORKER_MACHINE_MIN_COUNT and
WORKER_MACHINE_MAX_COUNT (or edit the annotations) to hand it over. Scale from zero works: the
BareMetalMachineTemplate status publishes the next host's capacity. Once the autoscaler owns md-0, stop
re-applying spec.replicas (drop it from what you apply), or each apply resets the autoscaler's choice.
No CNI is included: install one once the control plane is up.
"""


def default_flavor() -> Flavor:
    f = Flavor("default", "cluster-template.yaml", _DEFAULT_SUMMARY)
    _with_control_plane(f)
    return f


def _with_control_plane(
    f: Flavor,
    *,
    api_server_args: Callable[[Flavor], list[dict[str, str]]] | None = None,
    cluster_labels: dict[str, str] | None = None,
) -> None:
    c = f.v("CLUSTER_NAME")
    f.docs += [
        cluster(f, control_plane=True, labels=cluster_labels),
        baremetal_cluster(f),
        kubeadm_control_plane(f, api_server_args(f) if api_server_args else None),
        machine_template(f, f"{c}-control-plane", "CONTROL_PLANE_HOST_ROLE"),
        machine_deployment(
            f,
            {"configRef": _ref(BOOTSTRAP_GROUP, "KubeadmConfigTemplate", f"{c}-md-0")},
            autoscaler=True,
        ),
        worker_bootstrap_template(f),
        machine_template(f, f"{c}-md-0", "WORKER_HOST_ROLE"),
    ]


_OIDC_SUMMARY = """
The default flavor (see cluster-template.yaml) with the API server trusting an OIDC identity provider,
and the IdP group OIDC_ADMIN_GROUP bound to OIDC_ADMIN_CLUSTER_ROLE (cluster-admin by default) in the
workload cluster: the identity -> OIDC -> RBAC mapping managed Kubernetes services give their IAM users.

The binding travels as a ClusterResourceSet (strategy Reconcile) that CAPI applies to this Cluster once
its API server is up; change the group or role by editing the ConfigMap <cluster>-oidc-rbac. Users log in
with an OIDC client such as kubelogin; their groups arrive prefixed with OIDC_GROUPS_PREFIX, which the
binding accounts for. The issuer must be reachable from the control plane nodes and serve a certificate
they trust (add an `oidc-ca-file` extraArg and a KCP `files` entry for a private CA).
"""


def oidc_flavor() -> Flavor:
    f = Flavor("oidc", "cluster-template-oidc.yaml", _OIDC_SUMMARY)
    _with_control_plane(
        f, api_server_args=oidc_api_server_args, cluster_labels={OIDC_RBAC_LABEL: f.v("CLUSTER_NAME")}
    )
    f.docs += oidc_rbac(f)
    return f


_WORKERS_ONLY_SUMMARY = """
Bare-metal workers joining an EXTERNAL control plane that already runs (a managed service, a cluster built
by other tooling): a Cluster with an infrastructureRef and no controlPlaneRef, a BareMetalCluster holding
the existing endpoint, and MachineDeployment md-0 whose machines boot with bootstrap data YOU provide.

Why not KubeadmConfigTemplate here: CAPBK produces worker join data only once the Cluster's
ControlPlaneInitialized condition is True. Without a control plane object CAPI sets that condition only
when a control plane Machine it manages has a Node, and this cluster has none, so CAPBK would wait
forever. Machines therefore use `bootstrap.dataSecretName: <cluster>-join`, a Secret you create.

Before applying, create in the same namespace:
  1. Secret <cluster>-kubeconfig (type cluster.x-k8s.io/secret, key `value`: a kubeconfig for the external
     API server allowed to read and label Nodes, and the label cluster.x-k8s.io/cluster-name=<cluster>,
     without which CAPI does not see it). CAPI's Machine controller uses it to find each Node by
     providerID (Machine status.nodeRef) and to sync Node labels.
  2. Secret <cluster>-join (example below): a `## template: jinja` cloud-config that runs `kubeadm join`
     with a long-lived bootstrap token (on the control plane: `kubeadm token create --ttl 0
     --print-join-command`; the token is a credential: rotate it by editing this Secret) and registers the
     Node under the machine's name with our providerID from the meta-data.
The control plane must accept kubeadm joins (bootstrap-token auth, kube-public/cluster-info signed, the
kubeadm node-bootstrap RBAC and kubeadm-config/kubelet-config ConfigMaps), as kubeadm-built ones do.
Known limit: the Cluster never reports ControlPlaneInitialized, so CAPI leaves the Machines' NodeHealthy
and NodeReady conditions Unknown ("Waiting for Cluster control plane to be initialized"), and
MachineHealthChecks cannot judge these Machines.
"""

# Shown commented out in the workers-only header: no credential ever sits in a template.
_JOIN_SECRET_EXAMPLE = """
apiVersion: v1
kind: Secret
metadata:
  name: <cluster>-join
  namespace: <namespace>
  labels:
    cluster.x-k8s.io/cluster-name: <cluster>
type: cluster.x-k8s.io/secret
stringData:
  format: cloud-config
  value: |
    ## template: jinja
    #cloud-config
    write_files:
    - path: /run/kubeadm/kubeadm-join-config.yaml
      owner: root:root
      permissions: '0640'
      content: |
        apiVersion: kubeadm.k8s.io/v1beta4
        kind: JoinConfiguration
        discovery:
          bootstrapToken:
            apiServerEndpoint: <endpoint host>:<port>
            token: <token id>.<token secret>
            caCertHashes:
            - sha256:<hash printed by kubeadm token create --print-join-command>
        nodeRegistration:
          name: '{{ ds.meta_data.local_hostname }}'
          kubeletExtraArgs:
          - name: provider-id
            value: '{{ ds.meta_data.provider_id }}'
    runcmd:
    - {join}
"""
# One command: cloud-init runs runcmd without `set -e`, so a failed join must not reach the sentinel.
_JOIN_COMMAND = (
    "kubeadm join --config /run/kubeadm/kubeadm-join-config.yaml"
    " && mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete"
)
JOIN_SECRET_EXAMPLE = _JOIN_SECRET_EXAMPLE.strip("\n").replace("{join}", _JOIN_COMMAND)


def workers_only_flavor() -> Flavor:
    notes = (
        "Example <cluster>-join Secret (the last command writes the sentinel file CAPI providers wait for):\n"
        + textwrap.indent(JOIN_SECRET_EXAMPLE, "  ")
    )
    f = Flavor(
        "workers-only",
        "cluster-template-workers-only.yaml",
        _WORKERS_ONLY_SUMMARY,
        notes,
        docs={
            "CONTROL_PLANE_ENDPOINT_IP": "address or DNS name of the external control plane's API server",
            "CONTROL_PLANE_ENDPOINT_PORT": "its port",
        },
    )
    c = f.v("CLUSTER_NAME")
    f.docs += [
        cluster(f, control_plane=False),
        baremetal_cluster(f),
        machine_deployment(f, {"dataSecretName": f"{c}-join"}, autoscaler=False),
        machine_template(f, f"{c}-md-0", "WORKER_HOST_ROLE"),
    ]
    return f


FLAVORS: tuple[Callable[[], Flavor], ...] = (default_flavor, workers_only_flavor, oidc_flavor)


def render_all() -> dict[str, str]:
    """File name -> content, for every flavor."""
    return {f.file_name: f.render() for f in (make() for make in FLAVORS)}


def write(directory: Path = FLAVORS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text)
        out.append(path)
    return out


def drift(directory: Path = FLAVORS_DIR) -> list[str]:
    """Flavor files in `directory` that differ from the generator (or are missing)."""
    return [
        name
        for name, text in render_all().items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only report drift (exit 1 if any)")
    p.add_argument("dir", nargs="?", type=Path, default=FLAVORS_DIR)
    a = p.parse_args(argv)
    if a.check:
        stale = drift(a.dir)
        for name in stale:
            print(f"{a.dir / name} is out of date: run `python hack/flavorgen.py`", file=sys.stderr)
        return 1 if stale else 0
    for path in write(a.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
