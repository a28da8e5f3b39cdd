"""config/crd/bases is generated from capi_provider/api/types.py; this fails when someone edits one without
the other (run `make generate`)."""

from __future__ import annotations

from pathlib import Path

from capi_provider.api import crds

REPO = Path(__file__).resolve().parents[2]


def test_crd_files_match_the_api_types() -> None:
    stale = []
    for kind in crds.KINDS:
        path = REPO / "config" / "crd" / "bases" / crds.file_name(kind)
        if not path.exists() or path.read_text() != crds.render(kind):
            stale.append(path.name)
    assert not stale, f"CRDs out of date with capi_provider/api/types.py: {stale}; run `make generate`"


def test_every_crd_carries_the_contract_and_provider_labels() -> None:
    for crd in crds.all_crds():
        labels = crd["metadata"]["labels"]
        assert labels["cluster.x-k8s.io/v1beta2"] == "v1alpha1"
        assert labels["cluster.x-k8s.io/provider"] == "infrastructure-baremetal"
        # clusterctl requires <plural>.<group> names.
        names = crd["spec"]["names"]
        assert crd["metadata"]["name"] == f"{names['plural']}.infrastructure.cluster.x-k8s.io"


def test_every_schema_field_is_described() -> None:
    def walk(schema: dict, path: str) -> list[str]:
        missing = []
        for name, sub in schema.get("properties", {}).items():
            if name not in ("apiVersion", "kind", "metadata") and not sub.get("description"):
                missing.append(f"{path}.{name}")
            missing += walk(sub, f"{path}.{name}")
            if "items" in sub:
                missing += walk(sub["items"], f"{path}.{name}[]")
        return missing

    for crd in crds.all_crds():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert walk(schema, crd["spec"]["names"]["kind"]) == []
