"""In-memory stand-ins for the controllers' adapters: an API server that keeps objects and applies merge and
JSON patches with resourceVersion/test semantics, an event sink, and builders for the objects CAPI and an
operator would create. Contract behaviour is proven against the real apiserver (tests/cluster, tests/e2e);
these only let the controllers' decisions and orderings be tested one pass at a time."""

from __future__ import annotations

import copy
import itertools
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from capi_provider import api
from capi_provider.config import Settings
from capi_provider.controller.context import Context
from capi_provider.controller.credentials import CredentialStore
from capi_provider.controller.inventory import host_record, machine_record
from capi_provider.decisions.secrets import CAPI_SECRET_TYPE, SecretData
from capi_provider.k8s import Conflict
from capi_provider.objkey import ObjKey
from capi_provider.provisioner.fake import FakeProvisioner

LOG = logging.getLogger("test")
_rv = itertools.count(1)


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 merge patch."""
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = copy.deepcopy(v)


def _pointer(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def _json_patch(obj: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = obj
        for p in parents:
            if not isinstance(node, dict) or p not in node:
                raise Conflict(f"path {op['path']} does not exist")
            node = node[p]
        if op["op"] == "test":
            if not isinstance(node, dict) or node.get(last, object()) != op["value"]:
                raise Conflict(f"test {op['path']} failed")
        elif op["op"] in ("add", "replace"):
            if op["op"] == "replace" and last not in node:
                raise Conflict(f"replace {op['path']}: missing")
            node[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            if last not in node:
                raise Conflict(f"remove {op['path']}: missing")
            del node[last]
        else:
            raise ValueError(op["op"])


@dataclass
class FakeKube:
    objects: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    secrets: dict[tuple[str, str], SecretData] = field(default_factory=dict)
    configmaps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)

    def create(self, group: str, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta["resourceVersion"] = str(next(_rv))
        meta.setdefault("generation", 1)
        self.objects[(group, plural, meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def delete(self, group: str, plural: str, namespace: str, name: str) -> None:
        self.objects.pop((group, plural, namespace, name), None)

    def obj(self, group: str, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[(group, plural, namespace, name)]

    async def get(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        self.calls[f"get {plural}"] += 1
        o = self.objects.get((group, plural, namespace, name))
        return copy.deepcopy(o) if o is not None else None

    async def patch(
        self,
        group: str,
        version: str,
        plural: str,
        namespace: str,
        name: str,
        body: dict[str, Any] | list[dict[str, Any]],
        *,
        status: bool = False,
    ) -> dict[str, Any]:
        self.calls[f"patch {plural}{'/status' if status else ''}"] += 1
        key = (group, plural, namespace, name)
        if key not in self.objects:
            raise Conflict("not found")
        work = copy.deepcopy(self.objects[key])
        before_spec = copy.deepcopy(work.get("spec"))
        if isinstance(body, list):
            _json_patch(work, body)
        elif status:
            work.setdefault("status", {})
            _merge(work["status"], body.get("status") or {})
        else:
            _merge(work, {k: v for k, v in body.items() if k != "status"})
        if work.get("spec") != before_spec:
            work["metadata"]["generation"] = int(work["metadata"].get("generation", 1)) + 1
        work["metadata"]["resourceVersion"] = str(next(_rv))
        self.objects[key] = work
        return copy.deepcopy(work)

    async def get_secret(self, namespace: str, name: str) -> SecretData | None:
        self.calls["get secrets"] += 1
        return self.secrets.get((namespace, name))

    async def get_configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        self.calls["get configmaps"] += 1
        return self.configmaps.get((namespace, name))

    # ------------------------------------------------------------------ what kopf's indices would hold
    def host_index(self) -> dict[ObjKey, list[Any]]:
        return {
            ObjKey(ns, name): [host_record(o)]
            for (g, plural, ns, name), o in self.objects.items()
            if plural == api.HOSTS
        }

    def machine_index(self) -> dict[ObjKey, list[Any]]:
        return {
            ObjKey(ns, name): [machine_record(o)]
            for (g, plural, ns, name), o in self.objects.items()
            if plural == api.MACHINES
        }


@dataclass
class FakeEvents:
    recorded: list[tuple[str, str, str, str]] = field(default_factory=list)  # (type, object, reason, message)

    def info(self, body: Any, reason: str, message: str) -> None:
        self.recorded.append(("Normal", body["metadata"]["name"], reason, message))

    def warn(self, body: Any, reason: str, message: str) -> None:
        self.recorded.append(("Warning", body["metadata"]["name"], reason, message))

    def reasons(self, name: str | None = None) -> list[str]:
        return [r for _, n, r, _ in self.recorded if name is None or n == name]


@dataclass
class World:
    """One fake management cluster with our controller's context."""

    kube: FakeKube
    provisioner: FakeProvisioner
    events: FakeEvents
    ctx: Context

    @classmethod
    def new(cls, **settings: Any) -> World:
        kube, prov, events = FakeKube(), FakeProvisioner(), FakeEvents()
        ctx = Context(
            settings=Settings(**settings),
            kube=kube,
            provisioner=prov,
            credentials=CredentialStore(kube),
            events=events,
        )
        return cls(kube, prov, events, ctx)

    # ------------------------------------------------------------------ builders
    def host(
        self,
        name: str,
        namespace: str = "a",
        *,
        cores: int = 16,
        state: str | None = "available",
        consumer: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "bmc": {
                "address": f"ipmi://10.0.0.{len(self.kube.objects) + 2}",
                "credentialsName": f"{name}-bmc",
            },
            "ssh": {
                "address": f"10.1.0.{len(self.kube.objects) + 2}",
                "privateKeySecretName": "ssh",
                "hostKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyHostKeyHostKeyHostKeyHostKey",
            },
            "hardware": {
                "cpuCores": cores,
                "memory": "64Gi",
                "disks": [
                    {"name": "sda", "type": "SSD", "size": "480Gi"},
                    {"name": "sdb", "type": "SSD", "size": "1Ti"},
                ],
            },
        }
        if consumer:
            spec["consumerRef"] = consumer
        obj = self.kube.create(
            api.GROUP,
            api.HOSTS,
            {
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": labels or {},
                    "annotations": annotations or {},
                },
                "spec": spec,
                "status": {"provisioningState": state, "powerState": "off"} if state else {},
            },
        )
        uid = obj["metadata"]["uid"]
        owner = {"apiVersion": api.API_VERSION, "kind": "BareMetalHost", "name": name, "uid": uid}
        self.kube.secrets[(namespace, f"{name}-bmc")] = SecretData(
            {"username": b"admin", "password": b"pw-" + name.encode()}, "1", owner_references=(owner,)
        )
        self.kube.secrets.setdefault((namespace, "ssh"), SecretData({"ssh-privatekey": b"KEY"}, "1"))
        return obj

    def cluster(self, name: str = "c1", namespace: str = "a", *, paused: bool = False) -> dict[str, Any]:
        return self.kube.create(
            api.CAPI_GROUP,
            "clusters",
            {
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"paused": paused},
                "status": {"initialization": {"infrastructureProvisioned": True}},
            },
        )

    def machine(
        self,
        name: str,
        namespace: str = "a",
        *,
        cluster: str = "c1",
        data: bool = True,
        annotations: dict[str, str] | None = None,
        spec: dict[str, Any] | None = None,
        data_secret: SecretData | None = None,
    ) -> dict[str, Any]:
        """A CAPI Machine, its bootstrap data Secret (unless `data` is False) and its BareMetalMachine."""
        secret_name = f"{name}-bootstrap"
        self.kube.create(
            api.CAPI_GROUP,
            "machines",
            {
                "metadata": {"name": name, "namespace": namespace},
                "spec": {
                    "clusterName": cluster,
                    "infrastructureRef": {"kind": "BareMetalMachine", "name": name},
                    "bootstrap": {"dataSecretName": secret_name} if data else {},
                },
            },
        )
        if data:
            self.kube.secrets[(namespace, secret_name)] = data_secret or SecretData(
                {"value": b"#cloud-config\nruncmd: [kubeadm join]\n", "format": b"cloud-config"},
                "1",
                type=CAPI_SECRET_TYPE,
                labels={api.CLUSTER_NAME_LABEL: cluster},
            )
        return self.kube.create(
            api.GROUP,
            api.MACHINES,
            {
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "labels": {api.CLUSTER_NAME_LABEL: cluster},
                    "annotations": annotations or {},
                    "ownerReferences": [
                        {
                            "apiVersion": f"{api.CAPI_GROUP}/{api.CAPI_VERSION}",
                            "kind": "Machine",
                            "name": name,
                        }
                    ],
                },
                "spec": spec or {},
            },
        )

    # ------------------------------------------------------------------ reading back
    def bmm(self, name: str, namespace: str = "a") -> dict[str, Any]:
        return self.kube.obj(api.GROUP, api.MACHINES, namespace, name)

    def bmh(self, name: str, namespace: str = "a") -> dict[str, Any]:
        return self.kube.obj(api.GROUP, api.HOSTS, namespace, name)

    def key(self, name: str, namespace: str = "a") -> ObjKey:
        return ObjKey(namespace, name)
