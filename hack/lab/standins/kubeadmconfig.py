"""Reading kubeadm's JoinConfiguration / InitConfiguration / ClusterConfiguration (v1beta3 and v1beta4).

Only the fields a lab join or init acts on are interpreted; the rest of each document is kept as-is (the
ClusterConfiguration is uploaded verbatim to kube-system/kubeadm-config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

API_GROUP = "kubeadm.k8s.io"
SUPPORTED_VERSIONS = ("v1beta3", "v1beta4")
DEFAULT_DISCOVERY_TIMEOUT_S = 300.0  # kubeadm's default (timeouts.discovery: 5m0s)
CONTROL_PLANE_TAINT = {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
_TOKEN_RE = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class BootstrapToken:
    id: str
    secret: str = field(repr=False)

    @classmethod
    def parse(cls, text: str) -> BootstrapToken:
        m = _TOKEN_RE.match(text.strip())
        if not m:
            # Never echo the value: it is a credential.
            raise ConfigError('the bootstrap token does not match "[a-z0-9]{6}.[a-z0-9]{16}"')
        return cls(m.group(1), m.group(2))

    @property
    def bearer(self) -> str:
        return f"{self.id}.{self.secret}"

    def __str__(self) -> str:
        return f"{self.id}.<redacted>"


@dataclass(frozen=True)
class NodeRegistration:
    name: str | None
    kubelet_extra_args: dict[str, str]
    taints: list[dict[str, Any]] | None  # None = not set (kubeadm then applies its defaults)

    @property
    def provider_id(self) -> str | None:
        return self.kubelet_extra_args.get("provider-id")

    @property
    def node_labels(self) -> str:
        return self.kubelet_extra_args.get("node-labels", "")


@dataclass(frozen=True)
class JoinConfig:
    api_server_endpoint: str
    token: BootstrapToken
    tls_bootstrap_token: BootstrapToken
    ca_cert_hashes: list[str]
    unsafe_skip_ca_verification: bool
    node_registration: NodeRegistration
    control_plane: bool
    discovery_timeout_s: float


@dataclass(frozen=True)
class InitConfig:
    node_registration: NodeRegistration
    cluster_configuration: dict[str, Any]
    control_plane_endpoint: str | None

    @property
    def cluster_name(self) -> str:
        return str(self.cluster_configuration.get("clusterName") or "kubernetes")


def load_documents(text: str) -> list[dict[str, Any]]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d]
    except yaml.YAMLError as e:
        raise ConfigError(f"config is not valid YAML: {e}") from None
    for d in docs:
        if not isinstance(d, dict):
            raise ConfigError("every document in a kubeadm config must be a mapping")
    return docs


def kubelet_extra_args(value: Any) -> dict[str, str]:
    """v1beta4 lists ([{name, value}]) and v1beta3 maps ({name: value}) both become a dict."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list):
        out = {}
        for item in value:
            if not isinstance(item, dict) or "name" not in item:
                raise ConfigError("kubeletExtraArgs list items need a name")
            out[str(item["name"])] = "" if item.get("value") is None else str(item["value"])
        return out
    raise ConfigError("kubeletExtraArgs must be a list of {name, value} or a map")


def parse_duration(text: Any) -> float:
    """Go durations as kubeadm writes them ("5m0s", "90s", "1h")."""
    if isinstance(text, int | float):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text).strip():
        raise ConfigError(f"bad duration {text!r}")
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def parse_join(docs: list[dict[str, Any]]) -> JoinConfig:
    doc = _find(docs, "JoinConfiguration")
    if doc is None:
        raise ConfigError("no JoinConfiguration in the config file")
    discovery = doc.get("discovery") or {}
    if discovery.get("file"):
        raise ConfigError("file-based discovery is not supported in the lab (use bootstrapToken)")
    bt = discovery.get("bootstrapToken") or {}
    if not bt.get("apiServerEndpoint"):
        raise ConfigError("discovery.bootstrapToken.apiServerEndpoint is required")
    if not bt.get("token"):
        raise ConfigError("discovery.bootstrapToken.token is required")
    token = BootstrapToken.parse(str(bt["token"]))
    tls_token = (
        BootstrapToken.parse(str(discovery["tlsBootstrapToken"]))
        if discovery.get("tlsBootstrapToken")
        else token
    )
    hashes = [str(h) for h in bt.get("caCertHashes") or []]
    unsafe = bool(bt.get("unsafeSkipCAVerification", False))
    if not hashes and not unsafe:
        # kubeadm's validation message, so people searching for it find the right answer.
        raise ConfigError(
            "using token-based discovery without caCertHashes can be unsafe. "
            "Set unsafeSkipCAVerification as true in your kubeadm config file to continue"
        )
    timeout = (doc.get("timeouts") or {}).get("discovery") or discovery.get("timeout")
    return JoinConfig(
        api_server_endpoint=str(bt["apiServerEndpoint"]),
        token=token,
        tls_bootstrap_token=tls_token,
        ca_cert_hashes=hashes,
        unsafe_skip_ca_verification=unsafe,
        node_registration=_node_registration(doc),
        control_plane=doc.get("controlPlane") is not None,
        discovery_timeout_s=parse_duration(timeout) if timeout else DEFAULT_DISCOVERY_TIMEOUT_S,
    )


def parse_init(docs: list[dict[str, Any]]) -> InitConfig:
    init = _find(docs, "InitConfiguration") or {
        "apiVersion": f"{API_GROUP}/v1beta4",
        "kind": "InitConfiguration",
    }
    cluster = _find(docs, "ClusterConfiguration") or {
        "apiVersion": init.get("apiVersion", f"{API_GROUP}/v1beta4"),
        "kind": "ClusterConfiguration",
    }
    endpoint = cluster.get("controlPlaneEndpoint")
    return InitConfig(
        node_registration=_node_registration(init),
        cluster_configuration=cluster,
        control_plane_endpoint=str(endpoint) if endpoint else None,
    )


def taints_for(registration: NodeRegistration, control_plane: bool) -> list[dict[str, Any]]:
    """kubeadm's defaulting: an unset taints list gets the control-plane taint on control-plane nodes;
    an explicit empty list means no taints."""
    if registration.taints is None:
        return [dict(CONTROL_PLANE_TAINT)] if control_plane else []
    return [dict(t) for t in registration.taints]


def _node_registration(doc: dict[str, Any]) -> NodeRegistration:
    reg = doc.get("nodeRegistration") or {}
    taints = reg.get("taints")
    valid = isinstance(taints, list) and all(isinstance(t, dict) and t.get("key") for t in taints)
    if taints is not None and not valid:
        raise ConfigError("nodeRegistration.taints must be a list of {key, value?, effect}")
    return NodeRegistration(
        name=str(reg["name"]).strip() if reg.get("name") else None,
        kubelet_extra_args=kubelet_extra_args(reg.get("kubeletExtraArgs")),
        taints=taints,
    )


def _find(docs: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    for d in docs:
        if d.get("kind") != kind:
            continue
        group, _, version = str(d.get("apiVersion", "")).partition("/")
        if group != API_GROUP or version not in SUPPORTED_VERSIONS:
            raise ConfigError(
                f"{kind} apiVersion {d.get('apiVersion')!r} is not supported (want {API_GROUP}/v1beta3|4)"
            )
        return d
    return None
