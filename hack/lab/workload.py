"""Manifests for a workload cluster built by our provider in the lab (tests, demo, benchmarks).

The workload cluster's API server is the lab's own apiserver, so its CA is handed to CAPI as
`<cluster>-ca` (kubeadm's init path then reuses it, CAPI's generated kubeconfig and CAPBK's join discovery
all trust the real server). The first control-plane machine runs `kubeadm init` on a lab host; workers join.
"""

from __future__ import annotations

import base64
import copy
from typing import Any
from urllib.parse import urlparse

INFRA = "infrastructure.cluster.x-k8s.io"
INFRA_V = f"{INFRA}/v1alpha1"
CAPI_V = "cluster.x-k8s.io/v1beta2"
BOOT_V = "bootstrap.cluster.x-k8s.io/v1beta2"

# What makes the kubelet register with our providerID and the machine's name: cloud-init renders these
# from the NoCloud meta-data the provider writes (CAPBK's output is a `## template: jinja` cloud-config).
NODE_REGISTRATION = {
    "name": "{{ ds.meta_data.local_hostname }}",
    "kubeletExtraArgs": [{"name": "provider-id", "value": "{{ ds.meta_data.provider_id }}"}],
}


def ca_secret(cluster: str, namespace: str, ca_crt: bytes, ca_key: bytes) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{cluster}-ca",
            "namespace": namespace,
            "labels": {"cluster.x-k8s.io/cluster-name": cluster},
        },
        "type": "cluster.x-k8s.io/secret",
        "data": {"tls.crt": base64.b64encode(ca_crt).decode(), "tls.key": base64.b64encode(ca_key).decode()},
    }


def cluster(name: str, namespace: str, server: str) -> list[dict[str, Any]]:
    url = urlparse(server)
    return [
        {
            "apiVersion": INFRA_V,
            "kind": "BareMetalCluster",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"controlPlaneEndpoint": {"host": url.hostname, "port": url.port}},
        },
        {
            "apiVersion": CAPI_V,
            "kind": "Cluster",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"infrastructureRef": {"apiGroup": INFRA, "kind": "BareMetalCluster", "name": name}},
        },
    ]


def control_plane_machine(
    name: str, namespace: str, cluster_name: str, version: str, machine_spec: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": BOOT_V,
            "kind": "KubeadmConfig",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"initConfiguration": {"nodeRegistration": copy.deepcopy(NODE_REGISTRATION)}},
        },
        {
            "apiVersion": INFRA_V,
            "kind": "BareMetalMachine",
            "metadata": {"name": name, "namespace": namespace},
            "spec": machine_spec or {},
        },
        {
            "apiVersion": CAPI_V,
            "kind": "Machine",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"cluster.x-k8s.io/control-plane": ""},
            },
            "spec": {
                "clusterName": cluster_name,
                "version": version,
                "bootstrap": {
                    "configRef": {
                        "apiGroup": "bootstrap.cluster.x-k8s.io",
                        "kind": "KubeadmConfig",
                        "name": name,
                    }
                },
                "infrastructureRef": {"apiGroup": INFRA, "kind": "BareMetalMachine", "name": name},
            },
        },
    ]


def machine_deployment(
    name: str,
    namespace: str,
    cluster_name: str,
    version: str,
    replicas: int = 0,
    machine_spec: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    warm_pool: int | None = None,
    data_secret: str | None = None,
    node_labels: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """A MachineDeployment on BareMetalMachineTemplate. Bootstrap: CAPBK (a KubeadmConfigTemplate) unless
    `data_secret` names user-provided bootstrap data (CAPI then skips the bootstrap provider)."""
    template_spec: dict[str, Any] = {"template": {"spec": machine_spec or {}}}
    if warm_pool is not None:
        template_spec["warmPool"] = {"size": warm_pool}
    if data_secret:
        bootstrap: dict[str, Any] = {"dataSecretName": data_secret}
        docs: list[dict[str, Any]] = []
    else:
        bootstrap = {
            "configRef": {
                "apiGroup": "bootstrap.cluster.x-k8s.io",
                "kind": "KubeadmConfigTemplate",
                "name": name,
            }
        }
        docs = [
            {
                "apiVersion": BOOT_V,
                "kind": "KubeadmConfigTemplate",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "template": {
                        "spec": {"joinConfiguration": {"nodeRegistration": copy.deepcopy(NODE_REGISTRATION)}}
                    }
                },
            }
        ]
    return [
        *docs,
        {
            "apiVersion": INFRA_V,
            "kind": "BareMetalMachineTemplate",
            "metadata": {"name": name, "namespace": namespace},
            "spec": template_spec,
        },
        {
            "apiVersion": CAPI_V,
            "kind": "MachineDeployment",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
            "spec": {
                "clusterName": cluster_name,
                "replicas": replicas,
                "template": {
                    # CAPI copies node.cluster.x-k8s.io/* labels from Machines to their Nodes.
                    "metadata": {"labels": node_labels or {}},
                    "spec": {
                        "clusterName": cluster_name,
                        "version": version,
                        "bootstrap": bootstrap,
                        "infrastructureRef": {
                            "apiGroup": INFRA,
                            "kind": "BareMetalMachineTemplate",
                            "name": name,
                        },
                    },
                },
            },
        },
    ]


# User-provided bootstrap data that does what CAPBK's does for the provider's purposes (a cloud-config that
# ends by writing CAPI's sentinel file) without joining a cluster: for tests about hosts, not nodes.
SENTINEL_ONLY = """#cloud-config
runcmd:
  - mkdir -p /run/cluster-api && echo success > /run/cluster-api/bootstrap-success.complete
"""


def bootstrap_data_secret(
    name: str, namespace: str, cloud_config: str = SENTINEL_ONLY, cluster: str = "c1"
) -> dict[str, Any]:
    """User-provided join data, shaped as CAPI's own (type, cluster label, explicit format): the provider
    delivers nothing else."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"cluster.x-k8s.io/cluster-name": cluster},
        },
        "type": "cluster.x-k8s.io/secret",
        "stringData": {"value": cloud_config, "format": "cloud-config"},
    }
