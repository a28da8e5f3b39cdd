"""kubeadm's token-based discovery: how a joining node learns to trust the API server.

Same steps as kubeadm's `discovery/token`:
1. GET kube-public/cluster-info anonymously, without verifying TLS (we do not know the CA yet), retrying
   until the bootstrapsigner controller has signed it for our token (`jws-kubeconfig-<token-id>`);
2. verify that detached JWS: HS256 over the kubeconfig, keyed with the token secret, kid = token id.
   Only someone who knows the token could have produced it;
3. check the kubeconfig's CA against the pinned `caCertHashes` (sha256 of the DER SubjectPublicKeyInfo);
4. fetch cluster-info again, now verifying TLS with that CA, and require the same content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from lab.kubeapi import KubeAPIError, KubeClient
from lab.standins.kubeadmconfig import BootstrapToken

CLUSTER_INFO = "/api/v1/namespaces/kube-public/configmaps/cluster-info"
JWS_PREFIX = "jws-kubeconfig-"
_PIN_RE = re.compile(r"^sha256:([0-9a-f]{64})$")


class DiscoveryError(Exception):
    pass


@dataclass(frozen=True)
class ClusterInfo:
    server: str
    ca_pem: bytes
    kubeconfig: str


def ca_cert_hash(cert: x509.Certificate) -> str:
    """kubeadm's CA pin: `sha256:` + hex SHA-256 of the certificate's DER SubjectPublicKeyInfo."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def parse_pins(pins: list[str]) -> set[str]:
    out = set()
    for pin in pins:
        p = pin.strip().lower()
        if not _PIN_RE.match(p):
            raise DiscoveryError(f"invalid caCertHashes entry {pin!r}: expected sha256:<64 hex digits>")
        out.add(p)
    return out


def check_ca_pins(ca_pem: bytes, pins: list[str]) -> None:
    """Any certificate in the bundle matching any pin is enough (kubeadm's pubkeypin.CheckAny)."""
    wanted = parse_pins(pins)
    try:
        certs = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise DiscoveryError("cluster-info CA data is not a PEM certificate bundle") from None
    found = [ca_cert_hash(c) for c in certs]
    if not wanted.intersection(found):
        raise DiscoveryError(
            "cluster CA found in cluster-info ConfigMap is not signed by any of the public keys you "
            "specified: "
            f"cluster CA hash(es) {', '.join(found)} do not match caCertHashes {', '.join(sorted(wanted))}"
        )


def detached_jws_valid(detached: str, content: str, token: BootstrapToken) -> bool:
    """Verify a detached compact JWS ("<header>..<signature>") made by the bootstrapsigner controller."""
    parts = detached.strip().split(".")
    if len(parts) != 3 or parts[1] != "":
        return False
    header_b64, _, sig_b64 = parts
    try:
        header = json.loads(_b64url_decode(header_b64))
        signature = _b64url_decode(sig_b64)
    except (ValueError, binascii.Error):
        return False
    if not isinstance(header, dict) or header.get("alg") != "HS256" or header.get("kid") != token.id:
        return False
    signing_input = f"{header_b64}.{_b64url_encode(content.encode())}".encode()
    expected = hmac.new(token.secret.encode(), signing_input, hashlib.sha256).digest()
    return hmac.compare_digest(expected, signature)


def parse_cluster_info_kubeconfig(text: str) -> tuple[str, bytes]:
    """(server, CA PEM) of the cluster in a cluster-info kubeconfig."""
    try:
        doc = yaml.safe_load(text)
        cluster = (doc.get("clusters") or [])[0]["cluster"]
        return str(cluster["server"]).rstrip("/"), base64.b64decode(cluster["certificate-authority-data"])
    except (yaml.YAMLError, AttributeError, IndexError, KeyError, TypeError, binascii.Error):
        raise DiscoveryError(
            "the kubeconfig in cluster-info has no usable cluster (server + CA data)"
        ) from None


def discover(
    endpoint: str,
    token: BootstrapToken,
    pins: list[str],
    *,
    timeout_s: float,
    interval_s: float = 2.0,
    log: Callable[[str], None] = lambda _msg: None,
    request_timeout: float = 10.0,
) -> ClusterInfo:
    """Run token discovery against `endpoint` (host:port); returns the trusted server and CA."""
    url = endpoint if endpoint.startswith("https://") else f"https://{endpoint}"
    insecure = KubeClient(url, verify=False, timeout=request_timeout)
    deadline = time.monotonic() + timeout_s
    jws_key = JWS_PREFIX + token.id
    while True:
        try:
            data = _cluster_info_data(insecure)
            if data.get(jws_key):
                break
            last = f"could not find a JWS signature in the cluster-info ConfigMap for token ID {token.id!r}"
        except (KubeAPIError, DiscoveryError) as e:
            last = str(e)
        if time.monotonic() + interval_s > deadline:
            raise DiscoveryError(f"couldn't validate the identity of the API Server: {last}")
        log(f"[discovery] Retrying due to error: {last}")
        time.sleep(interval_s)

    kubeconfig = data.get("kubeconfig", "")
    if not kubeconfig:
        raise DiscoveryError(
            "there is no kubeconfig key in the cluster-info ConfigMap. "
            "This API Server isn't set up for token bootstrapping, can't connect"
        )
    if not detached_jws_valid(data[jws_key], kubeconfig, token):
        raise DiscoveryError(
            "failed to verify JWS signature of received cluster info object, can't trust this API Server"
        )
    server, ca_pem = parse_cluster_info_kubeconfig(kubeconfig)
    if pins:
        check_ca_pins(ca_pem, pins)
        log(
            "[discovery] Cluster info signature and contents are valid; the CA matches the pinned public keys"
        )
    else:
        log("[discovery] Cluster info signature and contents are valid and no TLS pinning was specified")

    secure = KubeClient(url, ca_pem=ca_pem, timeout=request_timeout)
    try:
        again = _cluster_info_data(secure).get("kubeconfig", "")
    except KubeAPIError as e:
        raise DiscoveryError(
            f"cannot reach {url} while verifying its certificate with the cluster CA: {e}"
        ) from None
    if again != kubeconfig:
        raise DiscoveryError(
            "the second kubeconfig from the cluster-info ConfigMap (using validated TLS) "
            "was different from the first"
        )
    return ClusterInfo(server=server, ca_pem=ca_pem, kubeconfig=kubeconfig)


def _cluster_info_data(client: KubeClient) -> dict[str, Any]:
    cm = client.get(CLUSTER_INFO)
    data = cm.get("data")
    if not isinstance(data, dict):
        raise DiscoveryError("the cluster-info ConfigMap has no data")
    return data


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
