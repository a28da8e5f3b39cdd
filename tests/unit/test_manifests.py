"""What `make release-manifests` ships: the clusterctl components (config/ rendered by kustomize), the
flavors in flavors/, and the Dockerfile/Makefile that build the image the components deploy.

These are the rules clusterctl and the CAPI contract impose (one Namespace, container `manager`, contract
label, variables with defaults or documentation), the controller's least-privilege RBAC checked against
what capi_provider/controller actually calls, and the image's hardening. Rendering needs kubectl's built-in
kustomize (the lab's kubectl, else one on PATH); no cluster is involved.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flavorgen
import kopf
import pytest
import release
import yaml
from lab.standins import userdata

from capi_provider import api
from capi_provider.api import crds
from capi_provider.bootstrap.render import HostInput, SeedInputs, render_seed
from capi_provider.config import Settings

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "capi-provider-baremetal-system"
# Kinds clusterctl (and kustomize) must leave without a namespace.
CLUSTER_SCOPED = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "ClusterKopfPeering",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


# ====================================================================================== clusterctl variables

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def variables(text: str) -> dict[str, str | None]:
    """The variables clusterctl (drone/envsubst) sees: name -> default (None when required).

    Fails on a bare `$NAME`, which envsubst would also substitute, usually by accident (a shell snippet),
    and on one variable with different defaults: envsubst applies each occurrence's own default.
    """
    found: dict[str, str | None] = {}
    i = 0
    while (i := text.find("$", i)) >= 0:
        if text.startswith("${", i):
            name, default, i = _parse_ref(text, i)
            nested = variables(default) if default else {}
            for var, var_default in ((name, default), *nested.items()):
                assert found.setdefault(var, var_default) == var_default, f"{var}: defaults differ"
        else:
            bare = _NAME.match(text, i + 1)
            assert not bare, (
                f"bare ${bare.group()} would be substituted by clusterctl: {text[i - 30 : i + 30]!r}"
            )
            i += 1
    return found


def _parse_ref(text: str, start: int) -> tuple[str, str | None, int]:
    m = _NAME.match(text, start + 2)
    assert m, f"malformed variable at {text[start : start + 40]!r}"
    i = m.end()
    default = None
    for op in (":=", ":-", "=", "-"):
        if text.startswith(op, i):
            i += len(op)
            depth, j = 1, i
            while depth:
                if text.startswith("${", j):
                    depth, j = depth + 1, j + 2
                    continue
                depth -= text[j] == "}"
                j += 1
            default, i = text[i : j - 1], j - 1
            break
    assert text[i] == "}", f"unsupported variable syntax at {text[start : start + 40]!r}"
    return m.group(), default, i + 1


def substitute(text: str, values: dict[str, str]) -> str:
    """envsubst as clusterctl applies it: a value if given, else the default; a missing required one fails."""
    out, i = [], 0
    while (j := text.find("${", i)) >= 0:
        name, default, end = _parse_ref(text, j)
        if name in values:
            value = values[name]
        else:
            assert default is not None, f"required variable {name} not given"
            value = substitute(default, values)
        out += [text[i:j], value]
        i = end
    return "".join(out) + text[i:]


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


# ====================================================================================== components


@pytest.fixture(scope="module")
def components_text() -> str:
    return release.components()


@pytest.fixture(scope="module")
def components(components_text: str) -> list[dict[str, Any]]:
    return docs_of(components_text)


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def manager_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "manager")


def test_exactly_one_namespace_and_every_namespaced_object_in_it(components: list[dict[str, Any]]) -> None:
    assert [d["metadata"]["name"] for d in components if d["kind"] == "Namespace"] == [NAMESPACE]
    for d in components:
        ns = d["metadata"].get("namespace")
        if d["kind"] in CLUSTER_SCOPED:
            assert ns is None, f"{d['kind']} {d['metadata']['name']} is cluster-scoped but has namespace {ns}"
        else:
            assert ns == NAMESPACE, f"{d['kind']} {d['metadata']['name']} is in {ns!r}"
    binding = one(components, "ClusterRoleBinding")
    assert {(s["name"], s["namespace"]) for s in binding["subjects"]} == {
        ("capi-provider-baremetal-manager", NAMESPACE)
    }


def test_the_claims_policy_trusts_exactly_the_installed_service_account(
    components: list[dict[str, Any]],
) -> None:
    """The admission policy names the provider's identity in a CEL string kustomize cannot rewrite: it must
    be the ServiceAccount the Deployment runs as, in the namespace it is installed in, and bound."""
    policy = one(components, "ValidatingAdmissionPolicy")
    sa = one(components, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    provider = next(v for v in policy["spec"]["variables"] if v["name"] == "provider")["expression"]
    assert f"'system:serviceaccount:{NAMESPACE}:{sa}'" in " ".join(provider.split())
    binding = one(components, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]


def test_every_object_carries_the_clusterctl_provider_label(components: list[dict[str, Any]]) -> None:
    for d in components:
        labels = d["metadata"].get("labels") or {}
        assert labels.get("cluster.x-k8s.io/provider") == "infrastructure-baremetal", d["metadata"]["name"]


def test_every_crd_of_ours_ships_with_the_contract_label(components: list[dict[str, Any]]) -> None:
    ours = {
        d["metadata"]["name"]: d
        for d in components
        if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == api.GROUP
    }
    assert set(ours) == {k.crd_name for k in crds.KINDS}
    for name, crd in ours.items():
        # Without it CAPI cannot resolve the version of our v1beta2-style (apiGroup) references.
        assert crd["metadata"]["labels"][f"cluster.x-k8s.io/{api.CONTRACT}"] == api.VERSION, name


def test_deployment_is_one_recreated_manager_with_peering_and_health_probes(
    components: list[dict[str, Any]],
) -> None:
    deploy = one(components, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    c = manager_container(components)
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    peering = one(components, "ClusterKopfPeering")
    assert env["CAPBM_PEERING"] == peering["metadata"]["name"] == "capi-provider-baremetal"
    # The probes hit kopf's liveness endpoint on the port the controller is told to serve it on.
    args = [substitute(a, {}) for a in c["args"]]
    settings = Settings.from_args(args)
    port = next(p for p in c["ports"] if p["name"] == "healthz")
    assert port["containerPort"] == settings.health_port
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    service = one(components, "Service")
    assert service["spec"]["selector"].items() <= deploy["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "healthz"


def test_deployment_runs_hardened_with_resources_sized_for_200_hosts(
    components: list[dict[str, Any]],
) -> None:
    pod = one(components, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = manager_container(components)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # The only writable path is an emptyDir at /tmp (the image's HOME and TMPDIR).
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts == {"/tmp": "tmp"}
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    res = c["resources"]
    mib = {"Mi": 1, "Gi": 1024}
    request = int(res["requests"]["memory"][:-2]) * mib[res["requests"]["memory"][-2:]]
    limit = int(res["limits"]["memory"][:-2]) * mib[res["limits"]["memory"][-2:]]
    # The target is under 150 MiB resident with 200 hosts: the request must cover it, the limit exceed it.
    assert 150 <= request < limit
    assert res["requests"]["cpu"]


def test_component_variables_all_have_defaults_and_are_controller_flags(components_text: str) -> None:
    found = variables(components_text)
    assert found == {
        "BAREMETAL_POLL_INTERVAL": "30",
        "BAREMETAL_BMC_TIMEOUT": "30",
        "BAREMETAL_BOOT_TIMEOUT": "1200",
    }
    docs = docs_of(substitute(components_text, {"BAREMETAL_POLL_INTERVAL": "45"}))
    settings = Settings.from_args(manager_container(docs)["args"])
    assert (settings.poll_interval, settings.bmc_timeout, settings.boot_timeout) == (45.0, 30.0, 1200.0)


def test_image_is_the_one_make_docker_build_tags(components: list[dict[str, Any]]) -> None:
    # `make -n` prints the recipe without running it (no Docker needed).
    recipe = subprocess.run(
        ["make", "-n", "-s", "docker-build"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    build = next(line for line in recipe.splitlines() if line.startswith("docker build"))
    tag = shlex.split(build)[shlex.split(build).index("-t") + 1]
    assert manager_container(components)["image"] == tag == release.image_reference()
    assert tag.endswith(f":v{release.project_version()}")


# ====================================================================================== RBAC


def _rules(docs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return one(docs, "ClusterRole", name)["rules"]


def granted(rules: list[dict[str, Any]], group: str, resource: str) -> set[str]:
    verbs: set[str] = set()
    for r in rules:
        if group in r.get("apiGroups", []) and resource in r.get("resources", []):
            verbs |= set(r["verbs"])
    return verbs


@pytest.fixture(scope="module")
def manager_rules(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _rules(components, "capi-provider-baremetal-manager-role")


def test_rbac_has_no_wildcards_and_never_writes_secrets(components: list[dict[str, Any]]) -> None:
    for role in (d for d in components if d["kind"] == "ClusterRole"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), f"{role['metadata']['name']}: wildcard in {key}"
    rules = _rules(components, "capi-provider-baremetal-manager-role")
    # Secrets are read one by one (BMC credentials, SSH keys, bootstrap data), never listed or watched.
    assert granted(rules, "", "secrets") == {"get"}
    creates = {
        (g, r)
        for rule in rules
        if "create" in rule["verbs"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert creates == {("", "events"), ("events.k8s.io", "events")}
    assert not any(
        {"delete", "deletecollection", "update", "escalate", "bind"} & set(r["verbs"]) for r in rules
    )


def _kopf_handlers() -> Iterator[tuple[str, Any]]:
    import capi_provider.controller  # noqa: F401  (registers every handler in kopf's default registry)

    registry = kopf.get_default_registry()
    # kopf keeps handlers per purpose; these attribute names are kopf 1.45's (pinned in pyproject.toml).
    for purpose in ("_indexing", "_watching", "_spawning", "_changing"):
        for h in getattr(registry, purpose).get_all_handlers():
            yield purpose, h


def test_rbac_covers_every_resource_kopf_handles(manager_rules: list[dict[str, Any]]) -> None:
    handled = list(_kopf_handlers())
    assert handled, "no kopf handlers registered: did capi_provider.controller move?"
    status_kinds = {k.plural for k in crds.KINDS if k.status}
    for purpose, h in handled:
        group, plural = h.selector.group, h.selector.any_name
        verbs = granted(manager_rules, group, plural)
        assert {"list", "watch"} <= verbs, f"kopf handler {h.id} watches {group}/{plural}: {verbs}"
        if purpose in ("_spawning", "_changing"):
            # Daemons and deletion handlers mean kopf's finalizer and progress annotations: patch.
            assert "patch" in verbs, f"kopf handler {h.id} needs patch on {plural}"
            if group == api.GROUP and plural in status_kinds:
                assert granted(manager_rules, group, f"{plural}/status") == {"patch"}


def _kube_calls() -> set[tuple[str, str, str]]:
    """(verb, group, resource) of every Kube adapter call in capi_provider/controller (an AST scan, so a new
    call on a new resource fails here until the Role grants it)."""
    consts = {k: v for k, v in vars(api).items() if isinstance(v, str)}

    def value(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "api":
            return consts[node.attr]
        return None

    calls: set[tuple[str, str, str]] = set()
    for path in (REPO / "capi_provider" / "controller").glob("*.py"):
        if path.name == "status.py":  # the status writer itself: its callers are scanned instead
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "write_status"
            ):
                plural = value(node.args[1])
                assert plural is not None, f"{path.name}:{node.lineno}: unresolvable"
                calls.add(("patch", api.GROUP, f"{plural}/status"))
                continue
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            owner = node.func.value
            is_kube = (isinstance(owner, ast.Name) and owner.id == "kube") or (
                isinstance(owner, ast.Attribute) and owner.attr == "kube"
            )
            if not is_kube:
                continue
            method = node.func.attr
            if method == "close":  # not an API call
                continue
            if method == "get_secret":
                calls.add(("get", "", "secrets"))
            elif method == "get_configmap":
                calls.add(("get", "", "configmaps"))
            elif method in ("get", "list", "patch"):
                group, plural = value(node.args[0]), value(node.args[2])
                assert group is not None and plural is not None, f"{path.name}:{node.lineno}: unresolvable"
                status = any(k.arg == "status" for k in node.keywords)
                calls.add((method, group, f"{plural}/status" if status else plural))
            else:
                raise AssertionError(f"{path.name}:{node.lineno}: unknown Kube method {method}")
    return calls


def test_rbac_covers_every_api_call_the_controller_makes(manager_rules: list[dict[str, Any]]) -> None:
    calls = _kube_calls()
    assert ("patch", api.GROUP, f"{api.HOSTS}/status") in calls  # the scan finds what it should
    for verb, group, resource in sorted(calls):
        assert verb in granted(manager_rules, group, resource), f"controller calls {verb} {group}/{resource}"


def test_rbac_for_kopf_itself_and_for_cluster_api(components: list[dict[str, Any]]) -> None:
    rules = _rules(components, "capi-provider-baremetal-manager-role")
    assert granted(rules, "kopf.dev", "clusterkopfpeerings") == {"get", "list", "watch", "patch"}
    assert {"list", "watch"} <= granted(rules, "apiextensions.k8s.io", "customresourcedefinitions")
    assert {"list", "watch"} <= granted(rules, "", "namespaces")
    assert "create" in granted(rules, "", "events")
    # CAPI core and KCP create and own our machines, clusters and templates (not hosts: operator inventory).
    agg = one(components, "ClusterRole", "capi-provider-baremetal-capi-manager-role")
    assert agg["metadata"]["labels"]["cluster.x-k8s.io/aggregate-to-manager"] == "true"
    for kind in crds.KINDS:
        verbs = granted(agg["rules"], api.GROUP, kind.plural)
        if kind.plural == api.HOSTS:
            assert not verbs
        else:
            assert verbs == {"get", "list", "watch", "create", "update", "patch", "delete"}, kind.plural


def test_peering_crds_and_object(components: list[dict[str, Any]]) -> None:
    names = {d["metadata"]["name"]: d for d in components if d["kind"] == "CustomResourceDefinition"}
    for plural, scope in (("clusterkopfpeerings", "Cluster"), ("kopfpeerings", "Namespaced")):
        crd = names[f"{plural}.kopf.dev"]
        assert crd["spec"]["scope"] == scope
        status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True  # peers write free-form keys there
    assert one(components, "ClusterKopfPeering")["apiVersion"] == "kopf.dev/v1"


# ====================================================================================== release layout


def test_metadata_declares_the_release_series_and_contract() -> None:
    doc = yaml.safe_load(release.metadata("0.1.0"))
    assert doc == {
        "apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3",
        "kind": "Metadata",
        "releaseSeries": [{"major": 0, "minor": 1, "contract": "v1beta2"}],
    }


def test_release_writes_a_clusterctl_local_repository(tmp_path: Path) -> None:
    vdir = release.release(tmp_path)
    version = f"v{release.project_version()}"
    assert vdir == tmp_path / "infrastructure-baremetal" / version
    assert sorted(p.name for p in vdir.iterdir()) == sorted(
        [
            "infrastructure-components.yaml",
            release.NAMESPACED_COMPONENTS_FILE,
            "metadata.yaml",
            *flavorgen.render_all(),
        ]
    )
    for name, text in flavorgen.render_all().items():
        assert (vdir / name).read_text() == text
    config = yaml.safe_load((tmp_path / "clusterctl.yaml").read_text())
    [provider] = config["providers"]
    assert provider["name"] == "baremetal" and provider["type"] == "InfrastructureProvider"
    # clusterctl's local repository layout: file://{absolute base}/{provider label}/{version}/{components}
    assert provider["url"] == (vdir / "infrastructure-components.yaml").as_uri()
    assert provider["url"].startswith("file:///")


# ====================================================================================== flavors

FLAVOR_FILES = list(flavorgen.render_all())


def flavor_text(name: str) -> str:
    return (REPO / "flavors" / name).read_text()


def header_variables(text: str) -> dict[str, str]:
    """NAME -> 'required' or the default, from the flavor's comment header."""
    lines = text.split("\n---\n", 1)[0].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Variables"))
    out = {}
    for line in lines[start + 1 :]:
        m = re.match(r"#   ([A-Z][A-Z0-9_]+)\s+(required[^;]*|default: ([^;]*));", line)
        if m:
            out[m.group(1)] = "required" if m.group(2).startswith("required") else m.group(3)
        elif not line.startswith("#    "):
            break
    return out


def test_committed_templates_are_what_the_generator_writes() -> None:
    assert flavorgen.drift() == [], (
        "flavors/ is stale: run `python hack/flavorgen.py` (or make release-manifests)"
    )


@pytest.mark.parametrize("name", FLAVOR_FILES)
def test_every_flavor_variable_is_documented_in_its_header(name: str) -> None:
    text = flavor_text(name)
    used = variables(text)
    documented = header_variables(text)
    assert set(documented) == set(used)
    for var, default in used.items():
        if default is None:
            assert documented[var] == "required", var
        else:
            shown = default[2:-1] if default.startswith("${") else default
            assert documented[var] == shown, var


SAMPLE = {
    "CLUSTER_NAME": "c1",
    "NAMESPACE": "ns1",
    "KUBERNETES_VERSION": "v1.34.4",
    "CONTROL_PLANE_MACHINE_COUNT": "3",
    "WORKER_MACHINE_COUNT": "2",
    "CONTROL_PLANE_ENDPOINT_IP": "192.0.2.10",
    "OIDC_ISSUER_URL": "https://idp.example.com",
    "OIDC_CLIENT_ID": "kubernetes",
    "OIDC_ADMIN_GROUP": "platform-admins",
}


def rendered(name: str, **values: str) -> list[dict[str, Any]]:
    return docs_of(substitute(flavor_text(name), SAMPLE | values))


@pytest.mark.parametrize("name", FLAVOR_FILES)
def test_flavor_values_keep_their_types_after_substitution(name: str) -> None:
    docs = rendered(name)
    for d in docs:
        assert d["metadata"]["namespace"] == "ns1"
        assert d["metadata"]["name"].startswith("c1")
        for k, v in ((d["metadata"].get("annotations") or {}) | (d["metadata"].get("labels") or {})).items():
            assert isinstance(v, str), f"{k}: {v!r}"
    md = one(docs, "MachineDeployment")
    assert md["spec"]["replicas"] == 2
    assert md["spec"]["template"]["spec"]["version"] == "v1.34.4"
    assert one(docs, "BareMetalCluster")["spec"]["controlPlaneEndpoint"] == {
        "host": "192.0.2.10",
        "port": 6443,
    }


def test_every_reference_resolves_inside_the_flavor() -> None:
    for name in FLAVOR_FILES:
        docs = rendered(name)
        present = {(d["kind"], d["metadata"]["name"]) for d in docs}
        refs = []
        for d in docs:
            spec = d.get("spec") or {}
            refs += [spec.get("infrastructureRef"), spec.get("controlPlaneRef")]
            if d["kind"] == "MachineDeployment":
                tspec = spec["template"]["spec"]
                refs += [tspec["infrastructureRef"], tspec["bootstrap"].get("configRef")]
            if d["kind"] == "KubeadmControlPlane":
                refs.append(spec["machineTemplate"]["spec"]["infrastructureRef"])
            if d["kind"] == "ClusterResourceSet":
                refs += [{"kind": r["kind"], "name": r["name"]} for r in spec["resources"]]
        for ref in filter(None, refs):
            assert (ref["kind"], ref["name"]) in present, f"{name}: dangling {ref}"


def _node_registrations(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] == "KubeadmControlPlane":
            spec = d["spec"]["kubeadmConfigSpec"]
            yield "KCP init", spec["initConfiguration"]["nodeRegistration"]
            yield "KCP join", spec["joinConfiguration"]["nodeRegistration"]
        if d["kind"] == "KubeadmConfigTemplate":
            yield "workers join", d["spec"]["template"]["spec"]["joinConfiguration"]["nodeRegistration"]


@pytest.mark.parametrize("name", ["cluster-template.yaml", "cluster-template-oidc.yaml"])
def test_every_node_registers_with_the_name_and_provider_id_from_our_meta_data(name: str) -> None:
    regs = list(_node_registrations(rendered(name)))
    assert [where for where, _ in regs] == ["KCP init", "KCP join", "workers join"]
    for where, reg in regs:
        assert reg["name"] == "{{ ds.meta_data.local_hostname }}", where
        assert {"name": "provider-id", "value": "{{ ds.meta_data.provider_id }}"} in reg[
            "kubeletExtraArgs"
        ], where


def test_kube_vip_holds_the_endpoint_as_a_static_pod() -> None:
    kcp = one(rendered("cluster-template.yaml", KUBE_VIP_INTERFACE="bond0"), "KubeadmControlPlane")
    spec = kcp["spec"]["kubeadmConfigSpec"]
    [file] = spec["files"]
    assert file["path"] == "/etc/kubernetes/manifests/kube-vip.yaml"
    pod = yaml.safe_load(file["content"])
    assert pod["kind"] == "Pod" and pod["spec"]["hostNetwork"] is True
    [c] = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["address"] == "192.0.2.10"
    assert env["vip_interface"] == "bond0"
    assert env["vip_arp"] == "true" and env["cp_enable"] == "true"
    assert env["port"] == "6443"
    assert c["image"] == "ghcr.io/kube-vip/kube-vip:v0.8.9"
    # kubeadm >= 1.29: super-admin.conf during init on the first node only, admin.conf afterwards.
    assert (
        "super-admin.conf" in spec["preKubeadmCommands"][0] and file["path"] in spec["preKubeadmCommands"][0]
    )
    assert spec["postKubeadmCommands"][0].endswith(f"admin.conf#' {file['path']}; fi")
    # The API servers listen where kube-vip sends traffic.
    assert spec["initConfiguration"]["localAPIEndpoint"]["bindPort"] == 6443
    assert spec["joinConfiguration"]["controlPlane"]["localAPIEndpoint"]["bindPort"] == 6443


def test_kubeadm_config_survives_cloud_init_jinja() -> None:
    # CAPBK's output is a `## template: jinja` cloud-config: cloud-init renders all of it, files and
    # commands included, so nothing of ours may look like jinja except the two meta-data references.
    for name in ("cluster-template.yaml", "cluster-template-oidc.yaml"):
        docs = rendered(name)
        for d in docs:
            if d["kind"] in ("KubeadmControlPlane", "KubeadmConfigTemplate"):
                text = json.dumps(d["spec"])
                assert "{%" not in text and "{#" not in text
                refs = set(re.findall(r"\{\{.*?\}\}", text))
                assert refs == {"{{ ds.meta_data.local_hostname }}", "{{ ds.meta_data.provider_id }}"}


def test_default_flavor_is_autoscaler_ready_but_inert_by_default() -> None:
    md = one(rendered("cluster-template.yaml"), "MachineDeployment")
    ann = md["metadata"]["annotations"]
    assert ann["cluster.x-k8s.io/cluster-api-autoscaler-node-group-min-size"] == "2"
    assert ann["cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"] == "2"
    md = one(rendered("cluster-template.yaml", WORKER_MACHINE_MAX_COUNT="10"), "MachineDeployment")
    assert (
        md["metadata"]["annotations"]["cluster.x-k8s.io/cluster-api-autoscaler-node-group-max-size"] == "10"
    )
    templates = {
        d["metadata"]["name"]: d for d in rendered("cluster-template.yaml") if d["kind"].endswith("Template")
    }
    assert templates["c1-md-0"]["spec"]["template"]["spec"]["hostSelector"] == {
        "matchLabels": {"role": "worker"}
    }
    cp = templates["c1-control-plane"]["spec"]["template"]["spec"]["hostSelector"]
    assert cp == {"matchLabels": {"role": "control-plane"}}


def test_workers_only_joins_with_operator_bootstrap_data_and_no_control_plane_object() -> None:
    docs = rendered("cluster-template-workers-only.yaml")
    assert sorted(d["kind"] for d in docs) == [
        "BareMetalCluster",
        "BareMetalMachineTemplate",
        "Cluster",
        "MachineDeployment",
    ]
    assert "controlPlaneRef" not in one(docs, "Cluster")["spec"]
    bootstrap = one(docs, "MachineDeployment")["spec"]["template"]["spec"]["bootstrap"]
    assert bootstrap == {"dataSecretName": "c1-join"}
    header = flavor_text("cluster-template-workers-only.yaml").split("\n---\n", 1)[0]
    assert "c1-kubeconfig" not in header  # placeholders, not substituted names, and no credential
    assert "Secret <cluster>-kubeconfig" in header and "cluster.x-k8s.io/cluster-name=<cluster>" in header


def test_workers_only_example_join_secret_renders_with_our_meta_data() -> None:
    # The example in the header, rendered the way cloud-init renders it (the lab's stand-in) with the
    # meta-data our provider writes, yields a join config naming the Node and its providerID.
    secret = yaml.safe_load(flavorgen.JOIN_SECRET_EXAMPLE)
    assert secret["type"] == "cluster.x-k8s.io/secret" and secret["stringData"]["format"] == "cloud-config"
    value = secret["stringData"]["value"]
    pid = "baremetal://ns1/rack1-srv07/9f1c"
    seed = render_seed(
        SeedInputs(
            bootstrap_data=value,
            instance_id="9f1c",
            hostname="c1-md-0-abcde",
            provider_id=pid,
            cluster_name="c1",
            machine_name="c1-md-0-abcde",
            machine_namespace="ns1",
            host=HostInput(name="rack1-srv07"),
        )
    )
    meta = yaml.safe_load(seed["meta-data"])
    assert userdata.is_jinja(seed["user-data"].decode())
    text = userdata.render(seed["user-data"].decode(), {"ds": {"meta_data": meta}})
    assert userdata.missing_variables(text) == []
    config = userdata.parse_payload(text).config
    join = yaml.safe_load(config["write_files"][0]["content"])
    assert join["nodeRegistration"]["name"] == "c1-md-0-abcde"
    assert join["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "provider-id", "value": pid}]
    [cmd] = config["runcmd"]
    assert cmd.startswith("kubeadm join ") and cmd.endswith("/run/cluster-api/bootstrap-success.complete")
    assert " && " in cmd  # a failed join must not write the sentinel


def test_oidc_flavor_configures_the_apiserver_and_binds_the_admin_group() -> None:
    docs = rendered("cluster-template-oidc.yaml")
    kcp = one(docs, "KubeadmControlPlane")
    args = {
        a["name"]: a["value"]
        for a in kcp["spec"]["kubeadmConfigSpec"]["clusterConfiguration"]["apiServer"]["extraArgs"]
    }
    assert args == {
        "oidc-issuer-url": "https://idp.example.com",
        "oidc-client-id": "kubernetes",
        "oidc-username-claim": "email",
        "oidc-username-prefix": "oidc:",
        "oidc-groups-claim": "groups",
        "oidc-groups-prefix": "oidc:",
    }
    crs = one(docs, "ClusterResourceSet")
    assert crs["apiVersion"] == "addons.cluster.x-k8s.io/v1beta2"
    assert (
        crs["spec"]["clusterSelector"]["matchLabels"].items()
        <= one(docs, "Cluster")["metadata"]["labels"].items()
    )
    [res] = crs["spec"]["resources"]
    cm = one(docs, "ConfigMap", res["name"])
    [binding] = [yaml.safe_load(v) for v in cm["data"].values()]
    assert binding["kind"] == "ClusterRoleBinding"
    assert binding["roleRef"]["name"] == "cluster-admin"
    # The API server prefixes OIDC groups: the subject must carry the same prefix.
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "oidc:platform-admins"}
    ]
    # Same as the default flavor apart from the OIDC parts.
    default = {(d["kind"], d["metadata"]["name"]) for d in rendered("cluster-template.yaml")}
    assert default | {("ConfigMap", "c1-oidc-rbac"), ("ClusterResourceSet", "c1-oidc-rbac")} == {
        (d["kind"], d["metadata"]["name"]) for d in docs
    }


# ====================================================================================== image


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        if instr.upper() == "FROM":
            stages.append([])
        elif not stages:
            assert instr.upper() == "ARG", f"{instr} before the first FROM"
            continue
        stages[-1].append((instr.upper(), rest.strip()))
    return stages


def test_dockerfile_is_multi_stage_and_the_final_stage_is_minimal_and_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert any(i == "RUN" and "pip wheel" in r and r.endswith(" .") for i, r in builder), (
        "builder builds wheels"
    )
    assert ("ENTRYPOINT", '["python", "-m", "capi_provider"]') in final
    assert json.loads(dict(final)["ENTRYPOINT"]) == ["python", "-m", "capi_provider"]
    users = [r for i, r in final if i == "USER"]
    assert users, "the final stage must drop root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (runAsNonRoot verifies it)"
    env = " ".join(r for i, r in final if i == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "HOME=/tmp"):
        assert setting in env
    installs = [r for i, r in final if i == "RUN"]
    assert installs and all("--no-index" in r for r in installs if "pip install" in r)
    dev = ["[dev]", *(re.split(r"[=<>\[]", d)[0] for d in _dev_dependencies())]
    for r in installs + [r for i, r in builder if i == "RUN"]:
        for name in dev:
            assert name not in r, f"dev dependency {name} in: {r}"
    assert not any(i in ("COPY", "ADD") and "--from" not in r for i, r in final), "final stage copies sources"


def _dev_dependencies() -> list[str]:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]


def test_dockerignore_admits_only_the_package_and_its_metadata() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    assert {line for line in lines if line.startswith("!")} == {"!pyproject.toml", "!capi_provider/"}


def test_the_namespaced_install_grants_namespaced_rights_only_in_the_watched_namespace(
    components_text: str,
) -> None:
    docs = docs_of(release.namespaced_components(components_text))
    ns = release.WATCH_NAMESPACE_VAR
    role = one(docs, "Role", "capi-provider-baremetal-manager-role")
    assert role["metadata"]["namespace"] == ns
    clusterwide = one(docs, "ClusterRole", "capi-provider-baremetal-manager-clusterwide")
    assert {r for rule in clusterwide["rules"] for r in rule["resources"]} == {
        "clusterkopfpeerings",
        "customresourcedefinitions",
    }
    assert not [
        d
        for d in docs
        if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "capi-provider-baremetal-manager-role"
    ]
    binding = one(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == ns and binding["roleRef"]["kind"] == "Role"
    assert {(s["name"], s["namespace"]) for s in binding["subjects"]} == {
        ("capi-provider-baremetal-manager", NAMESPACE)
    }
    assert f"--namespace={ns}" in manager_container(docs)["args"]
    # Every API call the controller makes is still granted, by the Role (namespaced) or the small ClusterRole.
    for verb, group, resource in _kube_calls():
        assert verb in granted(role["rules"], group, resource), (verb, group, resource)
