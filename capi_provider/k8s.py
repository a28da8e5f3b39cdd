"""Kubernetes API access for the controllers: the official client, always off kopf's event loop.

Kopf watches; this adapter does the few reads and writes reconciliation needs (get a Machine, read a
Secret, claim a host). Every call runs in a small dedicated thread pool, and every call is counted so a
benchmark can prove the idle controller is not polling the API.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from capi_provider.decisions.secrets import SecretData

T = TypeVar("T")


class Conflict(Exception):
    """Someone else changed the object first (HTTP 409, or a failed JSON-patch `test`)."""


class NotFound(Exception):
    pass


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    def __init__(self, api_client: client.ApiClient, threads: int = 16) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="kube")
        self.calls: Counter[str] = Counter()

    async def _run(
        self, verb: str, fn: Callable[..., T], *args: Any, json_patch: bool = False, **kwargs: Any
    ) -> T:
        self.calls[verb] += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        except ApiException as e:
            if e.status == 404:
                raise NotFound(f"{verb}: not found") from None
            # A JSON patch whose `test` op fails is answered 422 Invalid: someone changed the object first.
            if e.status == 409 or (json_patch and e.status == 422):
                raise Conflict(f"{verb}: conflict") from None
            raise

    # ------------------------------------------------------------------ custom objects
    async def get(
        self, group: str, version: str, plural: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        try:
            return await self._run(
                f"get {plural}",
                self.custom.get_namespaced_custom_object,
                group,
                version,
                namespace,
                plural,
                name,
            )
        except NotFound:
            return None

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
        """Merge-patch for a dict body, JSON-patch for a list of operations."""
        fn = (
            self.custom.patch_namespaced_custom_object_status
            if status
            else self.custom.patch_namespaced_custom_object
        )
        json_patch = isinstance(body, list)
        kwargs = {"_content_type": "application/json-patch+json"} if json_patch else {}
        return await self._run(
            f"patch {plural}{'/status' if status else ''}",
            fn,
            group,
            version,
            namespace,
            plural,
            name,
            body,
            json_patch=json_patch,
            **kwargs,
        )

    # ------------------------------------------------------------------ core
    async def get_secret(self, namespace: str, name: str) -> SecretData | None:
        try:
            s = await self._run("get secrets", self.core.read_namespaced_secret, name, namespace)
        except NotFound:
            return None
        data = {k: base64.b64decode(v) for k, v in (s.data or {}).items()}
        owners = tuple(
            {"apiVersion": r.api_version, "kind": r.kind, "name": r.name, "uid": r.uid}
            for r in s.metadata.owner_references or []
        )
        return SecretData(
            data, s.metadata.resource_version, s.type or "Opaque", dict(s.metadata.labels or {}), owners
        )

    async def get_configmap(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            cm = await self._run("get configmaps", self.core.read_namespaced_config_map, name, namespace)
        except NotFound:
            return None
        return dict(cm.data or {})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
