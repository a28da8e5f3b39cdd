"""CustomResourceDefinitions generated from the API types
(`python -m capi_provider.api.crds config/crd/bases`, or `make generate`).

Each CRD carries the CAPI contract label (without it CAPI cannot resolve our v1beta2-style references) and
the clusterctl provider label; printer columns are chosen for an operator's `kubectl get`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from capi_provider import api
from capi_provider.api import types as t
from capi_provider.api.schema import schema_for_dataclass

PROVIDER_LABEL = "infrastructure-baremetal"


@dataclass(frozen=True)
class Column:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec: type
    status: type | None
    description: str
    columns: tuple[Column, ...] = ()
    categories: tuple[str, ...] = ("cluster-api",)
    # clusterctl move: objects not owned by a Cluster must be labelled to move along (hosts are inventory).
    move: bool = False

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{api.GROUP}"


_READY = Column("Ready", '.status.conditions[?(@.type=="Ready")].status', description="Ready condition")
_AGE = Column("Age", ".metadata.creationTimestamp", "date")

KINDS: tuple[Kind, ...] = (
    Kind(
        "BareMetalHost",
        api.HOSTS,
        ("bmh", "bmhost"),
        t.BareMetalHostSpec,
        t.BareMetalHostStatus,
        "A physical server in the inventory: how to reach its BMC and its OS, what hardware it has, and "
        "whether it is free or serving a machine.",
        (
            Column("State", ".status.provisioningState", description="Provisioning state"),
            Column("Power", ".status.powerState", description="Power as read from the BMC"),
            Column("Consumer", ".spec.consumerRef.name", description="Machine using the host"),
            Column("BMC", ".spec.bmc.address", description="BMC address"),
            Column("Online", ".spec.online", "boolean", "Desired power while free", priority=1),
            Column("Error", ".status.lastError.type", description="Last error", priority=1),
            _AGE,
        ),
        categories=("cluster-api", "baremetal"),
        move=True,
    ),
    Kind(
        "BareMetalMachine",
        api.MACHINES,
        ("bmm",),
        t.BareMetalMachineSpec,
        t.BareMetalMachineStatus,
        "The infrastructure of one CAPI Machine: the host serving it, provisioned through BMC and SSH.",
        (
            Column("Cluster", ".metadata.labels.cluster\\.x-k8s\\.io/cluster-name", description="Cluster"),
            Column("Host", ".status.host.name", description="BareMetalHost serving the machine"),
            Column("Phase", ".status.phase", description="What is happening"),
            _READY,
            Column("ProviderID", ".spec.providerID", description="Provider ID", priority=1),
            Column(
                "Machine",
                '.metadata.ownerReferences[?(@.kind=="Machine")].name',
                description="Owning CAPI Machine",
                priority=1,
            ),
            _AGE,
        ),
    ),
    Kind(
        "BareMetalMachineTemplate",
        api.MACHINE_TEMPLATES,
        ("bmmt",),
        t.BareMetalMachineTemplateSpec,
        t.BareMetalMachineTemplateStatus,
        "Template of BareMetalMachines for MachineDeployments and control planes; its status tells the "
        "cluster-autoscaler what a new node would look like (scale from zero).",
        (
            Column("Matching", ".status.matchingHosts", "integer", "Free hosts that match"),
            Column("Warm", ".status.warmHosts", "integer", "Matching hosts kept warm"),
            Column("CPU", ".status.capacity.cpu", description="CPU of the next host"),
            Column("Memory", ".status.capacity.memory", description="Memory of the next host"),
            _AGE,
        ),
    ),
    Kind(
        "BareMetalCluster",
        api.CLUSTERS,
        ("bmcluster",),
        t.BareMetalClusterSpec,
        t.BareMetalClusterStatus,
        "Cluster-level bare-metal infrastructure: the control plane endpoint and failure domains.",
        (
            Column("Cluster", ".metadata.labels.cluster\\.x-k8s\\.io/cluster-name", description="Cluster"),
            Column("Endpoint", ".spec.controlPlaneEndpoint.host", description="Control plane endpoint"),
            _READY,
            _AGE,
        ),
    ),
    Kind(
        "BareMetalClusterTemplate",
        api.CLUSTER_TEMPLATES,
        ("bmct",),
        t.BareMetalClusterTemplateSpec,
        None,
        "Template of BareMetalClusters for ClusterClass.",
        (_AGE,),
    ),
)


def crd(kind: Kind) -> dict[str, Any]:
    props: dict[str, Any] = {
        "apiVersion": {"type": "string", "description": "APIVersion of this object."},
        "kind": {"type": "string", "description": "Kind of this object."},
        "metadata": {"type": "object"},
        "spec": schema_for_dataclass(kind.spec),
    }
    version: dict[str, Any] = {
        "name": api.VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": kind.description,
                "properties": props,
                "required": ["spec"],
            }
        },
        "additionalPrinterColumns": [
            {
                "name": c.name,
                "type": c.type,
                "jsonPath": c.json_path,
                **({"description": c.description} if c.description else {}),
                **({"priority": c.priority} if c.priority else {}),
            }
            for c in kind.columns
        ],
    }
    if kind.status:
        props["status"] = schema_for_dataclass(kind.status)
        version["subresources"] = {"status": {}}
    labels = {
        f"cluster.x-k8s.io/{api.CONTRACT}": api.VERSION,
        "cluster.x-k8s.io/provider": PROVIDER_LABEL,
    }
    if kind.move:
        labels["clusterctl.cluster.x-k8s.io/move"] = ""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": labels},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.kind.lower(),
                "shortNames": list(kind.short_names),
                "categories": list(kind.categories),
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


_HEADER = "# Generated from capi_provider/api/types.py by `make generate`; do not edit.\n"


def render(kind: Kind) -> str:
    return _HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=120)


def file_name(kind: Kind) -> str:
    return f"{api.GROUP}_{kind.plural}.yaml"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for kind in KINDS:
        path = directory / file_name(kind)
        path.write_text(render(kind))
        out.append(path)
    return out


def all_crds() -> list[dict[str, Any]]:
    return [crd(k) for k in KINDS]


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "config/crd/bases")):
        print(p)
