"""The local management cluster behaves like a real one: CAPI's webhooks default our objects and CAPI's
controllers turn a MachineDeployment into Machines and KubeadmConfigs."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import yaml
from lab.cluster import ManagementCluster

pytestmark = pytest.mark.cluster

# A throwaway infrastructure provider (templates only, nothing reconciles them): it proves the CAPI side
# on its own, independent of our provider's CRDs.
_THROWAWAY_GROUP = "infrastructure.cluster.x-k8s.io"


def _throwaway_crd(kind: str) -> dict:
    plural = kind.lower() + "s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{_THROWAWAY_GROUP}",
            # Without the contract label CAPI cannot resolve the version of a v1beta2 reference.
            "labels": {"cluster.x-k8s.io/v1beta2": "v1alpha1"},
        },
        "spec": {
            "group": _THROWAWAY_GROUP,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def throwaway_infra(mgmt: ManagementCluster) -> None:
    docs = [_throwaway_crd(k) for k in ("LabTestCluster", "LabTestMachine", "LabTestMachineTemplate")]
    mgmt.apply_docs(docs)
    mgmt.kubectl("wait", "--for=condition=Established", "crd", *(d["metadata"]["name"] for d in docs))


@pytest.fixture
def namespace(mgmt: ManagementCluster) -> str:
    ns = f"t-{uuid.uuid4().hex[:8]}"
    mgmt.kubectl("create", "namespace", ns)
    return ns


def _get(mgmt: ManagementCluster, *args: str) -> dict:
    return json.loads(mgmt.kubectl("get", *args, "-o", "json").stdout)


def test_machinedeployment_is_defaulted_by_the_real_capi_webhook(
    mgmt: ManagementCluster, namespace: str
) -> None:
    md = {
        "apiVersion": "cluster.x-k8s.io/v1beta2",
        "kind": "MachineDeployment",
        "metadata": {"name": "workers", "namespace": namespace},
        "spec": {
            "clusterName": "c1",
            "template": {
                "spec": {
                    "clusterName": "c1",
                    "version": "1.34.4",
                    "bootstrap": {"dataSecretName": "unused"},
                    "infrastructureRef": {
                        "apiGroup": _THROWAWAY_GROUP,
                        "kind": "LabTestMachineTemplate",
                        "name": "t",
                    },
                }
            },
        },
    }
    mgmt.kubectl("apply", "-f", "-", input=yaml.safe_dump(md))
    got = _get(mgmt, "machinedeployment", "workers", "-n", namespace)
    spec = got["spec"]
    # Every one of these is written by CAPI's defaulting webhook, not by us.
    assert got["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"] == "c1"
    assert spec["selector"]["matchLabels"] == {
        "cluster.x-k8s.io/cluster-name": "c1",
        "cluster.x-k8s.io/deployment-name": "workers",
    }
    assert spec["template"]["metadata"]["labels"]["cluster.x-k8s.io/deployment-name"] == "workers"
    assert spec["replicas"] == 1
    assert spec["template"]["spec"]["version"] == "v1.34.4"
    assert spec["rollout"]["strategy"]["type"] == "RollingUpdate"


def test_machinedeployment_webhook_rejects_invalid_objects(mgmt: ManagementCluster, namespace: str) -> None:
    md = {
        "apiVersion": "cluster.x-k8s.io/v1beta2",
        "kind": "MachineDeployment",
        "metadata": {"name": "bad", "namespace": namespace},
        "spec": {
            "clusterName": "c1",
            "template": {
                "spec": {
                    "clusterName": "c1",
                    "version": "not-a-version",
                    "bootstrap": {"dataSecretName": "unused"},
                    "infrastructureRef": {
                        "apiGroup": _THROWAWAY_GROUP,
                        "kind": "LabTestMachineTemplate",
                        "name": "t",
                    },
                }
            },
        },
    }
    res = mgmt.kubectl("apply", "-f", "-", input=yaml.safe_dump(md), check=False)
    assert res.returncode != 0
    assert "version" in res.stderr


def test_machinedeployment_creates_machines_and_kubeadmconfigs(
    mgmt: ManagementCluster, namespace: str, throwaway_infra: None
) -> None:
    objs = [
        {
            "apiVersion": f"{_THROWAWAY_GROUP}/v1alpha1",
            "kind": "LabTestCluster",
            "metadata": {"name": "c1", "namespace": namespace},
            "spec": {},
        },
        {
            "apiVersion": "cluster.x-k8s.io/v1beta2",
            "kind": "Cluster",
            "metadata": {"name": "c1", "namespace": namespace},
            "spec": {
                "infrastructureRef": {"apiGroup": _THROWAWAY_GROUP, "kind": "LabTestCluster", "name": "c1"},
            },
        },
        {
            "apiVersion": f"{_THROWAWAY_GROUP}/v1alpha1",
            "kind": "LabTestMachineTemplate",
            "metadata": {"name": "workers", "namespace": namespace},
            "spec": {"template": {"spec": {}}},
        },
        {
            "apiVersion": "bootstrap.cluster.x-k8s.io/v1beta2",
            "kind": "KubeadmConfigTemplate",
            "metadata": {"name": "workers", "namespace": namespace},
            "spec": {"template": {"spec": {"format": "cloud-config"}}},
        },
        {
            "apiVersion": "cluster.x-k8s.io/v1beta2",
            "kind": "MachineDeployment",
            "metadata": {"name": "workers", "namespace": namespace},
            "spec": {
                "clusterName": "c1",
                "replicas": 2,
                "template": {
                    "spec": {
                        "clusterName": "c1",
                        "version": "v1.34.4",
                        "bootstrap": {
                            "configRef": {
                                "apiGroup": "bootstrap.cluster.x-k8s.io",
                                "kind": "KubeadmConfigTemplate",
                                "name": "workers",
                            }
                        },
                        "infrastructureRef": {
                            "apiGroup": _THROWAWAY_GROUP,
                            "kind": "LabTestMachineTemplate",
                            "name": "workers",
                        },
                    }
                },
            },
        },
    ]
    mgmt.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objs))

    def owned_by_a_machine(obj: dict, machine_names: set[str]) -> bool:
        return any(
            o["kind"] == "Machine" and o["name"] in machine_names
            for o in obj["metadata"].get("ownerReferences", [])
        )

    deadline = time.monotonic() + 90
    while True:
        machines = _get(mgmt, "machines", "-n", namespace)["items"]
        configs = _get(mgmt, "kubeadmconfigs", "-n", namespace)["items"]
        infra = _get(mgmt, "labtestmachines", "-n", namespace)["items"]
        names = {m["metadata"]["name"] for m in machines}
        # The Machine controller makes each bootstrap config and infra machine its own.
        if (
            len(machines) == 2
            and len(configs) == 2
            and len(infra) == 2
            and all(owned_by_a_machine(o, names) for o in configs + infra)
        ):
            break
        assert time.monotonic() < deadline, (
            f"CAPI created {len(machines)} machines, {len(configs)} kubeadmconfigs, "
            f"{len(infra)} infra machines; "
            f"owners: {[o['metadata'].get('ownerReferences') for o in configs + infra]}"
        )
        time.sleep(1)

    for m in machines:
        owner = m["metadata"]["ownerReferences"][0]
        assert owner["kind"] == "MachineSet" and owner["controller"] is True
        assert m["metadata"]["labels"]["cluster.x-k8s.io/deployment-name"] == "workers"
