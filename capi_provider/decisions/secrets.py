"""Which Secrets the provider may use, and for what (pure: the adapter reads, this decides).

- A BMC credentials Secret serves only the hosts it is bound to, by an ownerReference to the
  BareMetalHost (as Metal3 does). Otherwise anyone who may create a BareMetalHost could name another host's
  Secret and a BMC address of their own, and the provider would send that password there.
- Bootstrap data is accepted only as CAPI makes it: type `cluster.x-k8s.io/secret`, labelled for the
  machine's cluster, with an explicit `format`. Otherwise a machine could name any Secret of its namespace
  (say `<cluster>-kubeconfig`) and have it written onto a server its requester controls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from capi_provider import api

CAPI_SECRET_TYPE = "cluster.x-k8s.io/secret"
BOOTSTRAP_FORMATS = ("cloud-config",)


@dataclass(frozen=True)
class SecretData:
    """A Secret as the controller sees it. Values never appear in its repr."""

    data: dict[str, bytes]
    resource_version: str
    type: str = "Opaque"
    labels: dict[str, str] = field(default_factory=dict)
    owner_references: tuple[dict[str, Any], ...] = ()

    def __repr__(self) -> str:  # never print secret material, even in a traceback
        return f"SecretData(keys={sorted(self.data)}, type={self.type!r}, version={self.resource_version!r})"


def bound_to_host(secret: SecretData, host_name: str, host_uid: str) -> bool:
    """Whether the Secret carries an ownerReference to this BareMetalHost (uid checked when given; clusterctl
    move rewrites owner uids)."""
    for ref in secret.owner_references:
        if (
            ref.get("kind") == "BareMetalHost"
            and str(ref.get("apiVersion", "")).startswith(api.GROUP + "/")
            and ref.get("name") == host_name
            and (not ref.get("uid") or ref.get("uid") == host_uid)
        ):
            return True
    return False


def bootstrap_data_problem(secret: SecretData | None, name: str, cluster: str) -> tuple[str, str] | None:
    """(reason, message) when `secret` is not bootstrap data CAPI made for `cluster`; None when it is."""
    if secret is None:
        return "BootstrapDataMissing", f"bootstrap Secret {name} does not exist"
    if secret.type != CAPI_SECRET_TYPE:
        return (
            "BootstrapDataRejected",
            f"Secret {name} has type {secret.type!r}; bootstrap data must be of type {CAPI_SECRET_TYPE!r}",
        )
    if secret.labels.get(api.CLUSTER_NAME_LABEL) != cluster:
        return (
            "BootstrapDataRejected",
            f"Secret {name} is not labelled {api.CLUSTER_NAME_LABEL}={cluster}",
        )
    fmt = secret.data.get("format")
    if fmt is None:
        return "BootstrapDataRejected", f"Secret {name} has no `format` key"
    if fmt.decode(errors="replace") not in BOOTSTRAP_FORMATS:
        return (
            "UnsupportedBootstrapFormat",
            f"bootstrap format {fmt.decode(errors='replace')[:40]!r}: only "
            f"{', '.join(BOOTSTRAP_FORMATS)} is supported",
        )
    if not secret.data.get("value"):
        return "BootstrapDataMissing", f"bootstrap Secret {name} has no `value`"
    return None
