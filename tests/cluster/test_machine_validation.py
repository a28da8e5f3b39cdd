"""BareMetalMachine and BareMetalMachineTemplate mistakes are refused by the real API server with a message an
operator can act on (the CRDs' schema and CEL rules, generated from capi_provider/api/types.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from lab.lab import Lab

from capi_provider import api

pytestmark = pytest.mark.cluster

_SPEC: dict[str, Any] = {
    "hostSelector": {"matchExpressions": [{"key": "rack", "operator": "In", "values": ["r1"]}]},
    "requirements": {"minCPUCores": 8, "minMemory": "32Gi", "disk": {"type": "SSD", "minSize": "400Gi"}},
    "cleaning": "metadata",
}

_MISTAKES = [
    ({"hostSelector": {"matchExpressions": [{"key": "rack", "operator": "In"}]}}, "In/NotIn need values"),
    (
        {"hostSelector": {"matchExpressions": [{"key": "rack", "operator": "Exists", "values": ["x"]}]}},
        "Exists/DoesNotExist take none",
    ),
    ({"requirements": {"minMemory": "-32Gi"}}, "must be a positive quantity"),
    ({"requirements": {"disk": {"minSize": "0"}}}, "must be a positive quantity"),
    ({"requirements": {"minCPUCores": 0}}, "should be greater than or equal to 1"),
    ({"cleaning": "everything"}, 'Unsupported value: "everything"'),
    ({"seedTemplatesRef": {}}, "seedTemplatesRef.name: Required value"),
]


def _machine(ns: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "BareMetalMachine",
        "metadata": {"name": "m", "namespace": ns},
        "spec": spec,
    }


def _template(ns: str, spec: dict[str, Any], warm: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "BareMetalMachineTemplate",
        "metadata": {"name": "t", "namespace": ns},
        "spec": {"template": {"spec": spec}, "warmPool": {"size": warm}},
    }


def _apply(lab: Lab, obj: dict[str, Any]) -> Any:
    return lab.cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(obj), check=False)


@pytest.mark.parametrize("kind", ["machine", "template"])
def test_valid_specs_are_accepted(lab: Lab, namespace: str, kind: str) -> None:
    obj = _machine(namespace, _SPEC) if kind == "machine" else _template(namespace, _SPEC, warm=2)
    res = _apply(lab, obj)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize(("change", "message"), _MISTAKES)
@pytest.mark.parametrize("kind", ["machine", "template"])
def test_mistakes_are_refused_with_a_clear_message(
    lab: Lab, namespace: str, kind: str, change: dict[str, Any], message: str
) -> None:
    spec = copy.deepcopy(_SPEC) | change
    obj = _machine(namespace, spec) if kind == "machine" else _template(namespace, spec)
    res = _apply(lab, obj)
    assert res.returncode != 0
    assert message in res.stderr, res.stderr


def test_a_negative_warm_pool_is_refused(lab: Lab, namespace: str) -> None:
    res = _apply(lab, _template(namespace, _SPEC, warm=-1))
    assert res.returncode != 0
    assert "warmPool.size: Invalid value: -1" in res.stderr, res.stderr
