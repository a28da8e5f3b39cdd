"""`kubeadm` on a lab host: join, init and reset against a real API server, without a real kubelet.

    kubeadm join --config FILE              token discovery (see discovery.py), then register this host's
                                            Node with the bootstrap token (see node.py)
    kubeadm init --config FILE              with the cluster CA in /etc/kubernetes/pki (CAPBK's write_files):
                                            mint admin.conf (CN kubernetes-admin, O system:masters), upload
                                            kubeadm-config, publish cluster-info (+ its anonymous-read RBAC),
                                            register this host as a control-plane Node
    kubeadm reset [-f]                      stop the kubelet (drop the KWOK annotation), remove what join/init
                                            wrote; always succeeds, bounded in time
    kubeadm version [-o short]

Progress goes to stdout and /var/log/kubeadm.log; errors to stderr, exit code 1. The bootstrap token secret
and private keys are never printed or logged.
"""

from __future__ import annotations

import argparse
import datetime
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lab.kubeapi import KubeAPIError, KubeClient, KubeConfig, kubeconfig_dict
from lab.standins import discovery, node
from lab.standins.hostfs import HostFS, clear_directory, file_logger, write_file
from lab.standins.kubeadmconfig import ConfigError, load_documents, parse_init, parse_join, taints_for

LOG = "/var/log/kubeadm.log"
PKI_CA_CRT = "/etc/kubernetes/pki/ca.crt"
PKI_CA_KEY = "/etc/kubernetes/pki/ca.key"
ADMIN_CONF = "/etc/kubernetes/admin.conf"
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
KUBELET_CONFIG = "/var/lib/kubelet/config.yaml"
KUBELET_FLAGS = "/var/lib/kubelet/kubeadm-flags.env"
RESET_DIRS = ("/etc/kubernetes", "/var/lib/kubelet")
RESET_API_TIMEOUT_S = 5.0


class Failure(Exception):
    """Ends the command with exit code 1 and this message (already safe to print)."""


@dataclass
class Ctx:
    fs: HostFS
    log: Any

    def say(self, msg: str) -> None:
        print(msg, flush=True)
        self.log.info(msg)

    def lab(self) -> dict[str, Any]:
        return self.fs.lab_settings()


@contextmanager
def phase(ctx: Ctx, name: str) -> Iterator[None]:
    # kubeadm prefixes failures with the phase, which is what people grep for.
    try:
        yield
    except (Failure, ConfigError, discovery.DiscoveryError, node.RegistrationError, KubeAPIError) as e:
        raise Failure(f"error execution phase {name}: {e}") from None


# --- join -------------------------------------------------------------------------------------------


def cmd_join(ctx: Ctx, args: argparse.Namespace) -> None:
    with phase(ctx, "preflight"):
        ctx.say("[preflight] Running pre-flight checks")
        cfg = parse_join(load_documents(_read_config(ctx, args.config)))
        _preflight_not_joined(ctx, args)
        timeout = float(ctx.lab().get("discoveryTimeoutSeconds") or cfg.discovery_timeout_s)
        ctx.log.info("discovery via %s with token %s", cfg.api_server_endpoint, cfg.token)
        info = discovery.discover(
            cfg.api_server_endpoint, cfg.token, cfg.ca_cert_hashes, timeout_s=timeout, log=ctx.say
        )
    reg = cfg.node_registration
    name = (reg.name or args.node_name or socket.gethostname()).lower()
    with phase(ctx, "kubelet-start"):
        ctx.say("[kubelet-start] Writing kubelet configuration and starting the kubelet")
        client = KubeClient(info.server, ca_pem=info.ca_pem, token=cfg.tls_bootstrap_token.bearer)
        obj = node.build_node(
            name,
            facts=ctx.fs.host_facts(),
            provider_id=reg.provider_id,
            node_labels=reg.node_labels,
            taints=taints_for(reg, cfg.control_plane),
            control_plane=cfg.control_plane,
            kubelet_version=ctx.lab().get("kubeletVersion"),
        )
        outcome = node.register_node(client, obj)
        ctx.say(f"[kubelet-start] Node {name!r} {outcome} (providerID {reg.provider_id or '<none>'})")
        _write_kubelet_files(ctx, name, info.server, info.ca_pem, reg.kubelet_extra_args, cfg.control_plane)
    ctx.say("")
    ctx.say("This node has joined the cluster:")
    ctx.say("* The Kubelet was informed of the new secure connection details.")


def _preflight_not_joined(ctx: Ctx, args: argparse.Namespace) -> None:
    ignored = {s.strip().lower() for s in ",".join(args.ignore_preflight_errors or []).split(",")}
    if ctx.fs.path(KUBELET_CONF).exists() and not ignored & {
        "all",
        "fileavailable--etc-kubernetes-kubelet.conf",
    }:
        raise Failure(
            "[preflight] Some fatal errors occurred:\n"
            f"\t[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: {KUBELET_CONF} already exists\n"
            "(run 'kubeadm reset' first)"
        )


# --- init -------------------------------------------------------------------------------------------


def cmd_init(ctx: Ctx, args: argparse.Namespace) -> None:
    with phase(ctx, "preflight"):
        ctx.say("[preflight] Running pre-flight checks")
        cfg = parse_init(load_documents(_read_config(ctx, args.config)))
        _preflight_not_joined(ctx, args)
    with phase(ctx, "kubeconfig"):
        ca_pem, ca_key_pem = _read_ca(ctx)
        server = _control_plane_url(ctx, cfg.control_plane_endpoint)
        cert_pem, key_pem = mint_admin_cert(ca_pem, ca_key_pem)
        admin = kubeconfig_dict(
            server,
            ca_pem,
            cluster_name=cfg.cluster_name,
            user_name="kubernetes-admin",
            client_cert_pem=cert_pem,
            client_key_pem=key_pem,
        )
        write_file(ctx.fs.path(ADMIN_CONF), yaml.safe_dump(admin, sort_keys=False), 0o600)
        ctx.say(f'[kubeconfig] Writing "admin.conf" kubeconfig file (server {server})')
    client = KubeClient.from_kubeconfig(KubeConfig.from_dict(admin))
    with phase(ctx, "upload-config"):
        cluster_cfg = yaml.safe_dump(cfg.cluster_configuration, sort_keys=False)
        _upsert_configmap(client, "kube-system", "kubeadm-config", {"ClusterConfiguration": cluster_cfg})
        ctx.say(
            '[upload-config] Stored the configuration used in ConfigMap "kubeadm-config" in "kube-system"'
        )
    with phase(ctx, "bootstrap-token"):
        info = kubeconfig_dict(server, ca_pem, cluster_name="")
        _upsert_configmap(
            client, "kube-public", "cluster-info", {"kubeconfig": yaml.safe_dump(info, sort_keys=False)}
        )
        _cluster_info_rbac(client)
        ctx.say('[bootstrap-token] Creating the "cluster-info" ConfigMap in the "kube-public" namespace')
    reg = cfg.node_registration
    name = (reg.name or args.node_name or socket.gethostname()).lower()
    with phase(ctx, "kubelet-start"):
        obj = node.build_node(
            name,
            facts=ctx.fs.host_facts(),
            provider_id=reg.provider_id,
            node_labels=reg.node_labels,
            taints=taints_for(reg, control_plane=True),
            control_plane=True,
            kubelet_version=ctx.lab().get("kubeletVersion")
            or cfg.cluster_configuration.get("kubernetesVersion"),
        )
        outcome = node.register_node(client, obj)
        ctx.say(f"[mark-control-plane] Node {name!r} {outcome} as a control-plane node")
        _write_kubelet_files(ctx, name, server, ca_pem, reg.kubelet_extra_args, control_plane=True)
    ctx.say("")
    ctx.say("Your Kubernetes control-plane has initialized successfully!")


def mint_admin_cert(ca_pem: bytes, ca_key_pem: bytes) -> tuple[bytes, bytes]:
    """A client certificate for admin.conf, signed by the cluster CA.

    O=system:masters is what kubeadm used for admin.conf before 1.29 (it now uses kubeadm:cluster-admins
    bound to cluster-admin, keeping system:masters for super-admin.conf); system:masters needs no RBAC,
    so it works on any lab API server that trusts this CA for client certificates.
    """
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())  # kubeadm defaults to RSA-2048; P-256 is faster to make
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes-admin"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _read_ca(ctx: Ctx) -> tuple[bytes, bytes]:
    try:
        return ctx.fs.path(PKI_CA_CRT).read_bytes(), ctx.fs.path(PKI_CA_KEY).read_bytes()
    except FileNotFoundError as e:
        raise Failure(
            f"{e.filename} not found: a lab kubeadm init uses the cluster CA written by cloud-init "
            "(CAPBK puts <cluster>-ca into write_files)"
        ) from None


def _control_plane_url(ctx: Ctx, endpoint: str | None) -> str:
    if endpoint:
        host = endpoint.removeprefix("https://")
        return f"https://{host}" if ":" in host.rsplit("]", 1)[-1] else f"https://{host}:6443"
    lab = ctx.lab()
    if lab.get("apiserverURL"):
        return str(lab["apiserverURL"]).rstrip("/")
    if lab.get("workloadKubeconfig"):
        return KubeConfig.load(lab["workloadKubeconfig"]).server
    raise Failure(
        "no controlPlaneEndpoint in the ClusterConfiguration and no apiserverURL in /etc/lab/lab.json"
    )


def _upsert_configmap(client: KubeClient, namespace: str, name: str, data: dict[str, str]) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": data,
    }
    try:
        client.create(f"/api/v1/namespaces/{namespace}/configmaps", cm)
    except KubeAPIError as e:
        if not e.conflict:
            raise
        # A merge patch keeps keys we do not own (the bootstrapsigner's jws-kubeconfig-* signatures).
        client.merge_patch(f"/api/v1/namespaces/{namespace}/configmaps/{name}", {"data": data})


def _cluster_info_rbac(client: KubeClient) -> None:
    name = "kubeadm:bootstrap-signer-clusterinfo"
    base = "/apis/rbac.authorization.k8s.io/v1/namespaces/kube-public"
    meta = {"name": name, "namespace": "kube-public"}
    client.create_or_replace(
        f"{base}/roles",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta,
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["cluster-info"],
                    "verbs": ["get"],
                }
            ],
        },
    )
    client.create_or_replace(
        f"{base}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}
            ],
        },
    )


# --- files shared by join and init ------------------------------------------------------------------


def _write_kubelet_files(
    ctx: Ctx, name: str, server: str, ca_pem: bytes, extra_args: dict[str, str], control_plane: bool
) -> None:
    write_file(ctx.fs.path(PKI_CA_CRT), ca_pem, 0o644)
    kubelet_conf = kubeconfig_dict(server, ca_pem, cluster_name="default-cluster", user_name="default-auth")
    write_file(
        ctx.fs.path(KUBELET_CONF),
        "# lab host: no kubelet process, so no client credentials either (see lab/standins/node.py)\n"
        + yaml.safe_dump(kubelet_conf, sort_keys=False),
        0o600,
    )
    kubelet_config = {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration"}
    write_file(ctx.fs.path(KUBELET_CONFIG), yaml.safe_dump(kubelet_config), 0o644)
    flags = " ".join(f"--{k}={v}" for k, v in sorted(extra_args.items()))
    write_file(ctx.fs.path(KUBELET_FLAGS), f'KUBELET_KUBEADM_ARGS="{flags}"\n', 0o644)
    node.write_marker(ctx.fs, node.KubeletMarker(name, server, extra_args.get("provider-id"), control_plane))


# --- reset ------------------------------------------------------------------------------------------


def cmd_reset(ctx: Ctx, args: argparse.Namespace) -> None:
    if not args.force:
        print("[reset] Are you sure you want to proceed? [y/N]: ", end="", flush=True)
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            raise Failure("aborted reset operation")
    marker = node.read_marker(ctx.fs)
    ctx.say("[reset] Stopping the kubelet service")
    if marker is not None:
        _stop_kubelet(ctx, marker.node_name)
    removed = [f for d in RESET_DIRS for f in clear_directory(ctx.fs.path(d))]
    ctx.log.info("removed: %s", ", ".join(removed) or "nothing")
    ctx.say(f"[reset] Deleting contents of directories: {list(RESET_DIRS)}")
    ctx.say("[reset] The reset process does not clean CNI configuration, iptables or IPVS tables.")


def _stop_kubelet(ctx: Ctx, node_name: str) -> None:
    """Best effort, bounded: with admin.conf (an init node) or the lab's kubeconfig (the lab's way of
    modelling "the kubelet stopped"; a joined lab node has no credentials of its own)."""
    sources = [ctx.fs.path(ADMIN_CONF)]
    lab_kubeconfig = ctx.lab().get("workloadKubeconfig")
    if lab_kubeconfig:
        sources.append(ctx.fs.path(str(lab_kubeconfig)))
    for source in sources:
        if not source.exists():
            continue
        try:
            client = KubeClient.from_kubeconfig(source, timeout=RESET_API_TIMEOUT_S)
            if node.set_kubelet_running(client, node_name, False):
                ctx.log.info("kubelet stopped: removed %s from Node %s", node.KWOK_ANNOTATION, node_name)
            else:
                ctx.log.info("Node %s no longer exists", node_name)
            return
        except (KubeAPIError, OSError, ValueError) as e:
            ctx.log.warning("could not update Node %s using %s: %s", node_name, source, e)
    ctx.log.warning("no working credentials to mark Node %s as stopped", node_name)


# --- CLI --------------------------------------------------------------------------------------------


def _read_config(ctx: Ctx, path: str | None) -> str:
    if not path:
        raise Failure("--config is required in the lab (CAPBK always passes one)")
    try:
        return (ctx.fs.path(path) if path.startswith("/") else Path(path)).read_text()
    except OSError as e:
        raise Failure(f"unable to read config from {path!r}: {e.strerror}") from None


def cmd_version(ctx: Ctx, args: argparse.Namespace) -> None:
    version = ctx.lab().get("kubeletVersion") or "v0.0.0"
    print(
        version if args.output == "short" else f'kubeadm version: &version.Info{{GitVersion:"{version}-lab"}}'
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubeadm", description="kubeadm stand-in for lab hosts")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("join", "init"):
        s = sub.add_parser(name)
        s.add_argument("--config")
        s.add_argument("--node-name")
        s.add_argument("--ignore-preflight-errors", action="append")
        s.add_argument("--v", "-v")
        s.add_argument("--skip-phases", action="append")
    reset = sub.add_parser("reset")
    reset.add_argument("--force", "-f", action="store_true")
    reset.add_argument("--v", "-v")
    version = sub.add_parser("version")
    version.add_argument("--output", "-o", default="")
    return p


def main(argv: list[str] | None = None) -> int:
    args, unknown = _parser().parse_known_args(argv)
    fs = HostFS()
    ctx = Ctx(fs, file_logger("kubeadm", fs, LOG))
    ctx.log.info("invoked: kubeadm %s", args.command)
    if unknown:
        ctx.log.info("ignored flags: %s", " ".join(a.split("=", 1)[0] for a in unknown))
    commands = {"join": cmd_join, "init": cmd_init, "reset": cmd_reset, "version": cmd_version}
    try:
        commands[args.command](ctx, args)
    except Failure as e:
        ctx.log.error("%s", e)
        print(str(e), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
