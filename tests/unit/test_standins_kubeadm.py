"""kubeadm stand-in: config parsing, CA pins, the cluster-info JWS, Node building, and join/init/reset
against a small fake API server over real TLS (the end-to-end run against kube-apiserver is the lab's).

Test vectors (CA hashes, JWS signatures) are computed here independently: CA hashes with the openssl CLI
as kubeadm's documentation does, JWS with cryptography's HMAC.
"""

from __future__ import annotations

import base64
import json
import ssl
import stat
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from lab import certs
from lab.standins import discovery, kubeadm, node
from lab.standins.hostfs import HostFS
from lab.standins.kubeadmconfig import (
    BootstrapToken,
    ConfigError,
    load_documents,
    parse_duration,
    parse_init,
    parse_join,
    taints_for,
)

TOKEN = BootstrapToken("abcdef", "0123456789abcdef")
FACTS = {
    "name": "bmh-1",
    "cpuCores": 8,
    "memoryMiB": 16384,
    "architecture": "x86_64",
    "disks": [{"name": "/dev/sda", "sizeBytes": 200 * 1024**3}],
}


def sign_detached(content: str, token_id: str, secret: str, alg: str = "HS256") -> str:
    """A detached compact JWS as the bootstrapsigner controller writes it (go-jose header order)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    header = b64(json.dumps({"alg": alg, "kid": token_id}, separators=(",", ":")).encode())
    mac = crypto_hmac.HMAC(secret.encode(), hashes.SHA256())
    mac.update(f"{header}.{b64(content.encode())}".encode())
    return f"{header}..{b64(mac.finalize())}"


# --- a fake API server --------------------------------------------------------------------------------


class FakeAPIServer:
    """Just enough kube-apiserver: objects by path, client-cert / bootstrap-token / anonymous identities,
    and an RBAC stand-in (anonymous may read cluster-info, the bootstrap token may manage nodes if allowed,
    system:masters may do anything)."""

    def __init__(self, workdir: Path) -> None:
        self.ca = certs.CertificateAuthority()
        self.ca_pem = self.ca.pair.cert_pem
        crt, key = self.ca.issue("kube-apiserver", ips=("127.0.0.1",), server=True).write(workdir, "serving")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt, key)
        ctx.load_verify_locations(cadata=self.ca_pem.decode())
        ctx.verify_mode = ssl.CERT_OPTIONAL
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str]] = []  # (method, path, identity)
        self.bootstrap_tokens = {TOKEN.bearer}
        self.bootstrap_may_manage_nodes = True
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"https://{self.endpoint}"

    def admin_kubeconfig(self, path: Path) -> Path:
        pair = self.ca.issue("kubernetes-admin", organizations=("system:masters",), client=True)
        cluster = {"server": self.url, "certificate-authority-data": _b64(self.ca_pem)}
        user = {"client-certificate-data": _b64(pair.cert_pem), "client-key-data": _b64(pair.key_pem)}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        path.write_text(yaml.safe_dump(doc))
        return path

    def publish_cluster_info(
        self, *, sign_with: BootstrapToken | None = TOKEN, server: str | None = None
    ) -> str:
        kubeconfig = yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "",
                        "cluster": {
                            "server": server or self.url,
                            "certificate-authority-data": _b64(self.ca_pem),
                        },
                    }
                ],
            }
        )
        data = {"kubeconfig": kubeconfig}
        if sign_with is not None:
            data[f"jws-kubeconfig-{sign_with.id}"] = sign_detached(kubeconfig, sign_with.id, sign_with.secret)
        self.objects[discovery.CLUSTER_INFO] = {"metadata": {"name": "cluster-info"}, "data": data}
        return kubeconfig

    def get(self, path: str) -> dict[str, Any] | None:
        return self.objects.get(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            _merge(target[k], v)
        else:
            target[k] = v
    return target


def _handler(api: FakeAPIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _identity(self) -> str | None:
            cert = self.connection.getpeercert()  # type: ignore[attr-defined]
            if cert:
                subject = {k: v for rdn in cert["subject"] for k, v in rdn}
                return f"cert:{subject.get('commonName')}:{subject.get('organizationName')}"
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Bearer "):
                return "bootstrap" if auth[7:] in api.bootstrap_tokens else None
            return "anonymous"

        def _send(self, code: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _status(self, code: int, reason: str) -> None:
            self._send(
                code, {"kind": "Status", "status": "Failure", "reason": reason, "message": f"fake: {reason}"}
            )

        def _allowed(self, who: str, path: str) -> bool:
            if who.endswith(":system:masters"):
                return True
            if who == "anonymous":
                return path == discovery.CLUSTER_INFO and self.command == "GET"
            if who == "bootstrap":
                return path.startswith("/api/v1/nodes") and api.bootstrap_may_manage_nodes
            return False

        def _handle(self) -> None:
            path = urllib.parse.urlsplit(self.path).path
            who = self._identity()
            with api.lock:
                api.requests.append((self.command, path, who or "invalid-token"))
            if who is None:
                return self._status(401, "Unauthorized")
            if not self._allowed(who, path):
                return self._status(403, "Forbidden")
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            with api.lock:
                if self.command == "POST":
                    item = f"{path}/{body['metadata']['name']}"
                    if item in api.objects:
                        return self._status(409, "AlreadyExists")
                    body["metadata"]["resourceVersion"] = "1"
                    api.objects[item] = body
                    return self._send(201, body)
                current = api.objects.get(path)
                if current is None:
                    return self._status(404, "NotFound")
                if self.command == "GET":
                    return self._send(200, current)
                if self.command == "PUT":
                    api.objects[path] = body
                    return self._send(200, body)
                if self.command == "PATCH":
                    return self._send(200, _merge(current, body))
            return self._status(405, "MethodNotAllowed")

        do_GET = do_POST = do_PUT = do_PATCH = _handle

    return Handler


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeAPIServer]:
    server = FakeAPIServer(tmp_path)
    yield server
    server.close()


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host file system root for the stand-in, run in-process."""
    root = tmp_path / "host"
    (root / "etc/lab").mkdir(parents=True)
    (root / "etc/lab/host.json").write_text(json.dumps(FACTS))
    (root / "etc/lab/lab.json").write_text(json.dumps({"discoveryTimeoutSeconds": 3}))
    monkeypatch.setenv("LAB_STANDIN_FSROOT", str(root))
    return root


def join_config(api: FakeAPIServer, **overrides: Any) -> str:
    ca_hash = discovery.ca_cert_hash(x509.load_pem_x509_certificate(api.ca_pem))
    doc: dict[str, Any] = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "apiServerEndpoint": api.endpoint,
                "token": TOKEN.bearer,
                "caCertHashes": [ca_hash],
            }
        },
        "nodeRegistration": {
            "name": "node-a",
            "kubeletExtraArgs": [
                {"name": "provider-id", "value": "metal3://default/bmh-1"},
                {"name": "node-labels", "value": "metal3.io/uuid=u-1,tier=gold"},
            ],
            "taints": [{"key": "node.cluster.x-k8s.io/uninitialized", "effect": "NoSchedule"}],
        },
    }
    doc["discovery"]["bootstrapToken"].update(overrides)
    return "---\n" + yaml.safe_dump(doc)


def write(root: Path, path: str, text: str | bytes) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(text if isinstance(text, bytes) else text.encode())


# --- config parsing -----------------------------------------------------------------------------------


def test_parse_join_v1beta4() -> None:
    cfg = parse_join(
        load_documents(
            """
apiVersion: kubeadm.k8s.io/v1beta4
kind: JoinConfiguration
discovery:
  bootstrapToken:
    apiServerEndpoint: 10.0.0.1:6443
    token: abcdef.0123456789abcdef
    caCertHashes: [sha256:aa]
timeouts:
  discovery: 1m30s
nodeRegistration:
  name: n1
  kubeletExtraArgs:
  - {name: provider-id, value: 'metal3://x'}
  taints: []
"""
        )
    )
    assert cfg.api_server_endpoint == "10.0.0.1:6443"
    assert cfg.token == TOKEN
    assert cfg.tls_bootstrap_token == TOKEN
    assert cfg.node_registration.provider_id == "metal3://x"
    assert cfg.node_registration.name == "n1"
    assert cfg.discovery_timeout_s == 90
    assert taints_for(cfg.node_registration, control_plane=False) == []
    assert not cfg.control_plane


def test_parse_join_v1beta3_map_args_and_defaults() -> None:
    cfg = parse_join(
        load_documents(
            """
apiVersion: kubeadm.k8s.io/v1beta3
kind: JoinConfiguration
discovery:
  bootstrapToken:
    {apiServerEndpoint: 'h:6443', token: abcdef.0123456789abcdef, unsafeSkipCAVerification: true}
  tlsBootstrapToken: zyxwvu.0123456789abcdef
nodeRegistration:
  kubeletExtraArgs: {provider-id: PROVIDER_ID, node-labels: 'a=b'}
"""
        )
    )
    assert cfg.node_registration.kubelet_extra_args == {"provider-id": "PROVIDER_ID", "node-labels": "a=b"}
    assert cfg.unsafe_skip_ca_verification and cfg.ca_cert_hashes == []
    assert cfg.tls_bootstrap_token.id == "zyxwvu"
    assert cfg.node_registration.name is None
    assert cfg.discovery_timeout_s == 300


@pytest.mark.parametrize(
    ("bootstrap_token", "message"),
    [
        ({"apiServerEndpoint": "h:1", "token": "abcdef.0123456789abcdef"}, "without caCertHashes"),
        ({"token": "abcdef.0123456789abcdef", "caCertHashes": ["x"]}, "apiServerEndpoint is required"),
        (
            {"apiServerEndpoint": "h:1", "token": "abcdef.0123456789ABCDEF", "caCertHashes": ["x"]},
            "does not match",
        ),
    ],
)
def test_parse_join_errors(bootstrap_token: dict[str, Any], message: str) -> None:
    doc = {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "JoinConfiguration"}
    doc["discovery"] = {"bootstrapToken": bootstrap_token}
    with pytest.raises(ConfigError, match=message) as exc:
        parse_join([doc])
    assert "0123456789" not in str(exc.value)  # a malformed token is still a secret


def test_token_repr_and_str_hide_the_secret() -> None:
    assert TOKEN.secret not in repr(TOKEN)
    assert TOKEN.secret not in str(TOKEN)
    assert TOKEN.bearer == "abcdef.0123456789abcdef"


def test_parse_init_multi_document_and_control_plane_taint_default() -> None:
    cfg = parse_init(
        load_documents(
            """
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
clusterName: wl
controlPlaneEndpoint: 10.0.0.5:6443
kubernetesVersion: v1.34.4
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  name: cp-1
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
"""
        )
    )
    assert cfg.control_plane_endpoint == "10.0.0.5:6443"
    assert cfg.cluster_name == "wl"
    assert cfg.node_registration.name == "cp-1"
    assert taints_for(cfg.node_registration, control_plane=True) == [
        {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}
    ]


def test_unsupported_api_version_is_rejected() -> None:
    with pytest.raises(ConfigError, match="not supported"):
        parse_join([{"apiVersion": "kubeadm.k8s.io/v1beta2", "kind": "JoinConfiguration"}])


@pytest.mark.parametrize(
    ("text", "seconds"), [("5m0s", 300), ("90s", 90), ("1h", 3600), ("1m30s", 90), (12, 12)]
)
def test_parse_duration(text: Any, seconds: float) -> None:
    assert parse_duration(text) == seconds


# --- CA pins and JWS -----------------------------------------------------------------------------------


def test_ca_cert_hash_matches_openssl(tmp_path: Path) -> None:
    ca = certs.CertificateAuthority()
    (tmp_path / "ca.crt").write_bytes(ca.pair.cert_pem)
    # kubeadm's documented recipe for --discovery-token-ca-cert-hash
    out = subprocess.run(
        f"openssl x509 -pubkey -noout -in {tmp_path / 'ca.crt'} | "
        "openssl pkey -pubin -outform der | sha256sum",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()[0]
    assert discovery.ca_cert_hash(ca.cert) == f"sha256:{out}"


def test_ca_pins_accept_any_matching_cert_in_the_bundle() -> None:
    a, b = certs.CertificateAuthority(), certs.CertificateAuthority()
    bundle = a.pair.cert_pem + b.pair.cert_pem
    discovery.check_ca_pins(bundle, [discovery.ca_cert_hash(b.cert).upper().replace("SHA256", "sha256")])
    with pytest.raises(discovery.DiscoveryError, match="not signed by any of the public keys"):
        discovery.check_ca_pins(a.pair.cert_pem, [discovery.ca_cert_hash(b.cert)])
    with pytest.raises(discovery.DiscoveryError, match="invalid caCertHashes"):
        discovery.check_ca_pins(a.pair.cert_pem, ["md5:1234"])


def test_detached_jws_verification() -> None:
    content = "apiVersion: v1\nkind: Config\n"
    good = sign_detached(content, TOKEN.id, TOKEN.secret)
    assert discovery.detached_jws_valid(good, content, TOKEN)
    assert not discovery.detached_jws_valid(good, content + " ", TOKEN)  # content changed
    assert not discovery.detached_jws_valid(good, content, BootstrapToken(TOKEN.id, "x" * 16))  # other secret
    other_kid = sign_detached(content, "zzzzzz", TOKEN.secret)
    assert not discovery.detached_jws_valid(other_kid, content, TOKEN)
    assert not discovery.detached_jws_valid(
        sign_detached(content, TOKEN.id, TOKEN.secret, alg="none"), content, TOKEN
    )
    header, _, sig = good.split(".")
    payload = base64.urlsafe_b64encode(content.encode()).decode().rstrip("=")
    assert not discovery.detached_jws_valid(f"{header}.{payload}.{sig}", content, TOKEN)  # not detached
    assert not discovery.detached_jws_valid("garbage", content, TOKEN)


# --- Node object ---------------------------------------------------------------------------------------


def test_build_node_from_host_facts() -> None:
    obj = node.build_node(
        "node-a",
        facts=FACTS,
        provider_id="metal3://default/bmh-1",
        node_labels="metal3.io/uuid=u-1",
        taints=[{"key": "k", "effect": "NoSchedule", "value": None}],
        kubelet_version="v1.34.4",
    )
    assert obj["spec"] == {
        "providerID": "metal3://default/bmh-1",
        "taints": [{"key": "k", "effect": "NoSchedule"}],
    }
    labels = obj["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "node-a"
    assert labels["kubernetes.io/arch"] == "amd64"
    assert labels["kubernetes.io/os"] == "linux"
    assert labels["metal3.io/uuid"] == "u-1"
    assert "node-role.kubernetes.io/control-plane" not in labels
    assert obj["metadata"]["annotations"][node.KWOK_ANNOTATION] == "fake"
    assert obj["status"]["capacity"] == {
        "cpu": "8",
        "memory": f"{16384 * 1024}Ki",
        "pods": "110",
        "ephemeral-storage": str(200 * 1024**3),
    }
    assert obj["status"]["allocatable"] == obj["status"]["capacity"]
    assert obj["status"]["nodeInfo"]["kubeletVersion"] == "v1.34.4"

    cp = node.build_node(
        "cp", facts={**FACTS, "architecture": "aarch64"}, provider_id=None, control_plane=True
    )
    assert cp["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == ""
    assert cp["metadata"]["labels"]["kubernetes.io/arch"] == "arm64"
    assert "providerID" not in cp["spec"]


def test_bad_node_labels_are_rejected() -> None:
    with pytest.raises(node.RegistrationError, match="expected key=value"):
        node.parse_node_labels("a=b,justakey")


# --- discovery against the fake API server --------------------------------------------------------------


def test_discovery_trusts_pinned_ca_and_signed_cluster_info(api: FakeAPIServer) -> None:
    kubeconfig = api.publish_cluster_info()
    pin = discovery.ca_cert_hash(x509.load_pem_x509_certificate(api.ca_pem))
    info = discovery.discover(api.endpoint, TOKEN, [pin], timeout_s=5)
    assert (info.server, info.ca_pem, info.kubeconfig) == (api.url, api.ca_pem, kubeconfig)
    # Anonymous twice: once without TLS verification, once verifying with the discovered CA.
    assert [(m, who) for m, p, who in api.requests] == [("GET", "anonymous"), ("GET", "anonymous")]


def test_discovery_refuses_a_ca_that_does_not_match_the_pin(api: FakeAPIServer) -> None:
    api.publish_cluster_info()
    other = discovery.ca_cert_hash(certs.CertificateAuthority().cert)
    with pytest.raises(discovery.DiscoveryError, match="not signed by any of the public keys"):
        discovery.discover(api.endpoint, TOKEN, [other], timeout_s=5)


def test_discovery_waits_for_the_signature_then_gives_up(api: FakeAPIServer) -> None:
    api.publish_cluster_info(
        sign_with=BootstrapToken("zzzzzz", "0123456789abcdef")
    )  # signed for another token
    messages: list[str] = []
    with pytest.raises(discovery.DiscoveryError, match="could not find a JWS signature"):
        discovery.discover(api.endpoint, TOKEN, [], timeout_s=1.5, interval_s=0.5, log=messages.append)
    assert any("Retrying" in m for m in messages)


def test_discovery_rejects_a_forged_signature(api: FakeAPIServer) -> None:
    api.publish_cluster_info(sign_with=BootstrapToken(TOKEN.id, "ffffffffffffffff"))
    with pytest.raises(discovery.DiscoveryError, match="failed to verify JWS signature"):
        discovery.discover(api.endpoint, TOKEN, [], timeout_s=5)


# --- kubeadm join / reset / init, in-process ---------------------------------------------------------------


def test_join_registers_the_node_and_writes_kubelet_files(api: FakeAPIServer, host: Path, capsys) -> None:
    api.publish_cluster_info()
    write(host, "/run/kubeadm/kubeadm-join-config.yaml", join_config(api))
    assert kubeadm.main(["join", "--config", "/run/kubeadm/kubeadm-join-config.yaml", "--v=5"]) == 0

    created = api.get("/api/v1/nodes/node-a")
    assert created is not None
    assert created["spec"]["providerID"] == "metal3://default/bmh-1"
    assert created["spec"]["taints"] == [
        {"key": "node.cluster.x-k8s.io/uninitialized", "effect": "NoSchedule"}
    ]
    assert created["metadata"]["labels"]["tier"] == "gold"
    assert created["metadata"]["annotations"][node.KWOK_ANNOTATION] == "fake"
    assert ("POST", "/api/v1/nodes", "bootstrap") in api.requests

    marker = node.read_marker(HostFS(host))
    assert marker is not None and marker.node_name == "node-a" and marker.server == api.url
    assert (host / "etc/kubernetes/pki/ca.crt").read_bytes() == api.ca_pem
    assert stat.S_IMODE((host / "etc/kubernetes/kubelet.conf").stat().st_mode) == 0o600
    assert "--provider-id=metal3://default/bmh-1" in (host / "var/lib/kubelet/kubeadm-flags.env").read_text()
    out = capsys.readouterr()
    assert "This node has joined the cluster" in out.out
    for text in (
        out.out,
        out.err,
        (host / "var/log/kubeadm.log").read_text(),
        (host / "etc/kubernetes/kubelet.conf").read_text(),
    ):
        assert TOKEN.secret not in text

    # A second join on the same host fails preflight, as with kubeadm.
    assert kubeadm.main(["join", "--config", "/run/kubeadm/kubeadm-join-config.yaml"]) == 1
    assert "FileAvailable--etc-kubernetes-kubelet.conf" in capsys.readouterr().err


def test_join_with_wrong_ca_hash_fails_without_registering(api: FakeAPIServer, host: Path, capsys) -> None:
    api.publish_cluster_info()
    write(host, "/run/kubeadm/j.yaml", join_config(api, caCertHashes=["sha256:" + "0" * 64]))
    assert kubeadm.main(["join", "--config", "/run/kubeadm/j.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error execution phase preflight: ")
    assert "not signed by any of the public keys" in err
    assert not [r for r in api.requests if r[0] == "POST"]
    assert node.read_marker(HostFS(host)) is None


def test_join_forbidden_node_creation_is_explained(api: FakeAPIServer, host: Path, capsys) -> None:
    api.publish_cluster_info()
    api.bootstrap_may_manage_nodes = False
    write(host, "/run/kubeadm/j.yaml", join_config(api))
    assert kubeadm.main(["join", "--config", "/run/kubeadm/j.yaml"]) == 1
    err = capsys.readouterr().err
    assert "error execution phase kubelet-start" in err
    assert "system:bootstrappers:kubeadm:default-node-token" in err


def test_rejoin_after_reset_updates_the_existing_node(api: FakeAPIServer, host: Path, tmp_path: Path) -> None:
    api.publish_cluster_info()
    write(host, "/run/kubeadm/j.yaml", join_config(api))
    assert kubeadm.main(["join", "--config", "/run/kubeadm/j.yaml"]) == 0
    lab_kubeconfig = api.admin_kubeconfig(host / "lab-admin.kubeconfig")
    write(host, "/etc/lab/lab.json", json.dumps({"workloadKubeconfig": "/lab-admin.kubeconfig"}))
    assert lab_kubeconfig.exists()

    assert kubeadm.main(["reset", "-f"]) == 0
    n = api.get("/api/v1/nodes/node-a")
    assert n is not None and node.KWOK_ANNOTATION not in n["metadata"]["annotations"]  # kubelet stopped
    assert sorted(p.name for p in (host / "etc/kubernetes").iterdir()) == []
    assert sorted(p.name for p in (host / "var/lib/kubelet").iterdir()) == []
    assert kubeadm.main(["reset", "--force"]) == 0  # idempotent

    assert kubeadm.main(["join", "--config", "/run/kubeadm/j.yaml"]) == 0
    n = api.get("/api/v1/nodes/node-a")
    assert n is not None and n["metadata"]["annotations"][node.KWOK_ANNOTATION] == "fake"
    assert ("PATCH", "/api/v1/nodes/node-a", "bootstrap") in api.requests


def test_reset_without_force_asks_first(host: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    write(host, "/etc/kubernetes/kubelet.conf", "x")
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("n\n"))
    assert kubeadm.main(["reset"]) == 1
    assert "aborted" in capsys.readouterr().err
    assert (host / "etc/kubernetes/kubelet.conf").exists()


def test_reset_is_bounded_when_the_api_server_is_gone(host: Path, tmp_path: Path) -> None:
    server = FakeAPIServer(tmp_path)
    server.admin_kubeconfig(host / "lab-admin.kubeconfig")
    server.close()
    write(host, "/etc/lab/lab.json", json.dumps({"workloadKubeconfig": "/lab-admin.kubeconfig"}))
    node.write_marker(HostFS(host), node.KubeletMarker("n", "https://127.0.0.1:1", None, False))
    assert kubeadm.main(["reset", "-f"]) == 0
    assert node.read_marker(HostFS(host)) is None


def test_init_publishes_cluster_info_and_registers_a_control_plane_node(
    api: FakeAPIServer, host: Path, capsys
) -> None:
    write(host, "/etc/kubernetes/pki/ca.crt", api.ca.pair.cert_pem)
    write(host, "/etc/kubernetes/pki/ca.key", api.ca.pair.key_pem)
    config = f"""
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
clusterName: wl
controlPlaneEndpoint: {api.endpoint}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
nodeRegistration:
  name: cp-1
  kubeletExtraArgs:
  - name: provider-id
    value: metal3://default/bmh-cp
"""
    write(host, "/run/kubeadm/kubeadm.yaml", config)
    assert kubeadm.main(["init", "--config", "/run/kubeadm/kubeadm.yaml"]) == 0, capsys.readouterr().err

    assert {who for _, _, who in api.requests} == {"cert:kubernetes-admin:system:masters"}
    kubeadm_config = api.get("/api/v1/namespaces/kube-system/configmaps/kubeadm-config")
    assert kubeadm_config is not None
    assert yaml.safe_load(kubeadm_config["data"]["ClusterConfiguration"])["clusterName"] == "wl"
    info = api.get(discovery.CLUSTER_INFO)
    assert info is not None
    assert discovery.parse_cluster_info_kubeconfig(info["data"]["kubeconfig"]) == (api.url, api.ca_pem)
    rb = api.get(
        "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-public/rolebindings/kubeadm:bootstrap-signer-clusterinfo"
    )
    assert rb is not None and rb["subjects"][0]["name"] == "system:anonymous"
    cp = api.get("/api/v1/nodes/cp-1")
    assert cp is not None
    assert cp["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == ""
    assert cp["spec"]["taints"] == [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    assert cp["spec"]["providerID"] == "metal3://default/bmh-cp"
    admin = host / "etc/kubernetes/admin.conf"
    assert stat.S_IMODE(admin.stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert "BEGIN" not in out and "PRIVATE" not in out

    # Once signed by the bootstrapsigner, what init published lets a worker discover the cluster.
    kubeconfig = info["data"]["kubeconfig"]
    info["data"][f"jws-kubeconfig-{TOKEN.id}"] = sign_detached(kubeconfig, TOKEN.id, TOKEN.secret)
    pin = discovery.ca_cert_hash(x509.load_pem_x509_certificate(api.ca_pem))
    assert discovery.discover(api.endpoint, TOKEN, [pin], timeout_s=5).server == api.url


def test_init_without_the_cluster_ca_explains_what_is_missing(host: Path, capsys) -> None:
    write(host, "/run/kubeadm/kubeadm.yaml", "apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\n")
    assert kubeadm.main(["init", "--config", "/run/kubeadm/kubeadm.yaml"]) == 1
    assert "ca.crt not found" in capsys.readouterr().err


def test_admin_cert_is_signed_by_the_ca_for_system_masters() -> None:
    ca = certs.CertificateAuthority()
    cert_pem, key_pem = kubeadm.mint_admin_cert(ca.pair.cert_pem, ca.pair.key_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.rfc4514_string() == "CN=kubernetes-admin,O=system:masters"
    cert.verify_directly_issued_by(ca.cert)
    assert b"PRIVATE KEY" in key_pem
