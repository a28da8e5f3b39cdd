"""A tiny Kubernetes REST client over urllib + ssl, for the lab host and the stand-ins that run "on" it.

Why not the kubernetes package: the stand-ins must behave like kubeadm on a bare host (anonymous requests
without TLS verification for discovery, bearer bootstrap tokens, a freshly minted client certificate), they
run as short-lived processes where import time matters, and every request has to be bounded. This is the
whole surface they need: JSON requests, kubeconfig loading, and typed errors.

Client keys given as PEM bytes are handed to OpenSSL through an anonymous memory file, never written to disk.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_TIMEOUT = 10.0


class KubeAPIError(Exception):
    """An API request failed. `status` is the HTTP status (None for transport errors)."""

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


@dataclass(frozen=True)
class KubeConfig:
    """The parts of a kubeconfig's current context that a client needs (secrets excluded from repr)."""

    server: str
    ca_pem: bytes | None = None
    insecure_skip_tls_verify: bool = False
    client_cert_pem: bytes | None = field(default=None, repr=False)
    client_key_pem: bytes | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> KubeConfig:
        path = Path(path)
        return cls.from_dict(yaml.safe_load(path.read_text()), base_dir=path.parent)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], base_dir: Path | None = None) -> KubeConfig:
        context_name = doc.get("current-context") or ""
        contexts = {c.get("name", ""): c.get("context") or {} for c in doc.get("contexts") or []}
        context = contexts.get(context_name) or (next(iter(contexts.values())) if contexts else {})
        cluster = _named(doc.get("clusters"), context.get("cluster"), "cluster")
        user = _named(doc.get("users"), context.get("user"), "user")
        if not cluster.get("server"):
            raise ValueError("kubeconfig has no cluster server")

        def blob(data_key: str, file_key: str, entry: dict[str, Any]) -> bytes | None:
            if entry.get(data_key):
                return base64.b64decode(entry[data_key])
            if entry.get(file_key):
                return (Path(base_dir or ".") / entry[file_key]).read_bytes()
            return None

        return cls(
            server=str(cluster["server"]).rstrip("/"),
            ca_pem=blob("certificate-authority-data", "certificate-authority", cluster),
            insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
            client_cert_pem=blob("client-certificate-data", "client-certificate", user),
            client_key_pem=blob("client-key-data", "client-key", user),
            token=user.get("token"),
        )


def kubeconfig_dict(
    server: str,
    ca_pem: bytes,
    *,
    cluster_name: str = "kubernetes",
    user_name: str = "",
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """A kubeconfig with embedded data. With no user name it has no user/context (the cluster-info shape)."""
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    "server": server,
                },
            }
        ],
        "contexts": [],
        "current-context": "",
        "preferences": {},
        "users": [],
    }
    if user_name:
        user: dict[str, str] = {}
        if client_cert_pem:
            user["client-certificate-data"] = base64.b64encode(client_cert_pem).decode()
        if client_key_pem:
            user["client-key-data"] = base64.b64encode(client_key_pem).decode()
        if token:
            user["token"] = token
        context = f"{user_name}@{cluster_name}"
        doc["users"] = [{"name": user_name, "user": user}]
        doc["contexts"] = [{"name": context, "context": {"cluster": cluster_name, "user": user_name}}]
        doc["current-context"] = context
    return doc


class KubeClient:
    """JSON requests against one API server. Thread-safe (no mutable state after construction)."""

    def __init__(
        self,
        server: str,
        *,
        ca_pem: bytes | None = None,
        verify: bool = True,
        client_cert_pem: bytes | None = None,
        client_key_pem: bytes | None = None,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._ssl = _ssl_context(ca_pem, verify, client_cert_pem, client_key_pem)
        # No proxies: lab API servers are local, and an HTTPS_PROXY in the environment must not intercept.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._ssl)
        )

    @classmethod
    def from_kubeconfig(cls, config: KubeConfig | str | Path, timeout: float = DEFAULT_TIMEOUT) -> KubeClient:
        cfg = config if isinstance(config, KubeConfig) else KubeConfig.load(config)
        return cls(
            cfg.server,
            ca_pem=cfg.ca_pem,
            verify=not cfg.insecure_skip_tls_verify,
            client_cert_pem=cfg.client_cert_pem,
            client_key_pem=cfg.client_key_pem,
            token=cfg.token,
            timeout=timeout,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one request; returns the decoded JSON body ({} when empty). Raises KubeAPIError."""
        url = self.server + path
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "User-Agent": "capi-provider-baremetal-lab"}
        if data is not None:
            headers["Content-Type"] = content_type
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise _api_error(method, path, e) from None
        except (urllib.error.URLError, OSError, ssl.SSLError) as e:
            reason = getattr(e, "reason", e)
            raise KubeAPIError(f"{method} {self.server}{path}: {reason}") from None
        return json.loads(raw) if raw.strip() else {}

    def get(self, path: str) -> dict[str, Any]:
        return self.request("GET", path)

    def create(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", path, obj)

    def replace(self, path: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", path, obj)

    def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", path, patch, content_type="application/merge-patch+json")

    def create_or_replace(self, collection: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create `obj` in `collection`, or overwrite the existing object of that name (like kubeadm's
        CreateOrUpdate helpers)."""
        try:
            return self.create(collection, obj)
        except KubeAPIError as e:
            if not e.conflict:
                raise
        item = f"{collection}/{obj['metadata']['name']}"
        current = self.get(item)
        updated = {
            **obj,
            "metadata": {**obj["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
        }
        return self.replace(item, updated)


def set_node_annotation(client: KubeClient, node: str, key: str, value: str | None) -> bool:
    """Set (or with None remove) one annotation on a Node. Returns False if the Node does not exist."""
    try:
        client.merge_patch(
            f"/api/v1/nodes/{urllib.parse.quote(node)}", {"metadata": {"annotations": {key: value}}}
        )
    except KubeAPIError as e:
        if e.not_found:
            return False
        raise
    return True


def _named(entries: list[dict[str, Any]] | None, name: str | None, key: str) -> dict[str, Any]:
    entries = entries or []
    for entry in entries:
        if entry.get("name") == name:
            return entry.get(key) or {}
    # cluster-info style kubeconfigs have no contexts: fall back to the only entry.
    return (entries[0].get(key) or {}) if entries and not name else {}


def _api_error(method: str, path: str, e: urllib.error.HTTPError) -> KubeAPIError:
    reason, message = e.reason, ""
    with contextlib.suppress(Exception):
        status = json.loads(e.read())
        reason = status.get("reason") or reason
        message = status.get("message") or ""
    return KubeAPIError(
        f"{method} {path}: HTTP {e.code} {reason}" + (f": {message}" if message else ""),
        status=e.code,
        reason=str(reason),
    )


def _ssl_context(
    ca_pem: bytes | None, verify: bool, client_cert_pem: bytes | None, client_key_pem: bytes | None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        if ca_pem:
            ctx.load_verify_locations(cadata=ca_pem.decode())
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_cert_pem and client_key_pem:
        _load_client_cert(ctx, client_cert_pem, client_key_pem)
    return ctx


def _load_client_cert(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # OpenSSL only loads key pairs from paths: give it an anonymous in-memory file instead of a temp file.
    fd = os.memfd_create("kube-client-cert", os.MFD_CLOEXEC)
    try:
        os.write(fd, cert_pem.rstrip(b"\n") + b"\n" + key_pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
