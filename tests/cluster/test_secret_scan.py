"""After everything else in the session: no password, private key, token or bootstrap data in the provider's
logs, in any Event, or in any status an operator (or a tenant) can read.

Marked `audit`: tests/conftest.py moves it to the end of the run, so it sees what every other test left.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from lab.lab import Lab

pytestmark = [pytest.mark.cluster, pytest.mark.audit]

_BOOTSTRAP_TOKEN = re.compile(r"\b[a-z0-9]{6}\.[a-z0-9]{16}\b")


def _known_secrets(lab: Lab) -> dict[str, str]:
    """What must never be readable: each value with a note of what it is."""
    found: dict[str, str] = {}
    for m in lab.hosts.machines.values():
        found[m.bmc_password] = f"BMC password of {m.name}"
    key_body = "".join(line for line in lab.hosts.private_key.splitlines() if "PRIVATE KEY" not in line)
    for i in range(0, len(key_body) - 40, 40):
        found[key_body[i : i + 40]] = "a piece of the provider's SSH private key"
    secrets = json.loads(lab.cluster.kubectl("get", "secrets", "-A", "-o", "json").stdout)["items"]
    for s in secrets:
        data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (s.get("data") or {}).items()}
        where = f"{s['metadata']['namespace']}/{s['metadata']['name']}"
        if s.get("type") == "bootstrap.kubernetes.io/token" and "token-secret" in data:
            found[f"{data['token-id']}.{data['token-secret']}"] = f"bootstrap token {where}"
            found[data["token-secret"]] = f"bootstrap token secret {where}"
        if s.get("type") == "cluster.x-k8s.io/secret" and "format" in data:
            for token in _BOOTSTRAP_TOKEN.findall(data.get("value", "")):
                found[token] = f"join token in bootstrap data {where}"
            for line in data.get("value", "").splitlines():
                if len(line.strip()) >= 60 and re.fullmatch(r"\s*[A-Za-z0-9+/=]+\s*", line):
                    found[line.strip()[:60]] = f"key material in bootstrap data {where}"
    return {k: v for k, v in found.items() if len(k) >= 8}


def test_no_secret_in_logs_events_or_status(lab: Lab) -> None:
    secrets = _known_secrets(lab)
    assert any("BMC password" in v for v in secrets.values()), "the scan found nothing to look for"
    places: dict[str, str] = {}
    for log in sorted(lab.logs.glob("provider*.log")):
        places[f"log {log.name}"] = log.read_text(errors="replace")
    events = json.loads(lab.cluster.kubectl("get", "events", "-A", "-o", "json").stdout)["items"]
    places["events"] = "\n".join(f"{e.get('reason')}: {e.get('message')}" for e in events)
    for kind in (
        "baremetalhosts",
        "baremetalmachines",
        "baremetalmachinetemplates",
        "baremetalclusters",
        "machines",
    ):
        items = json.loads(lab.cluster.kubectl("get", kind, "-A", "-o", "json").stdout)["items"]
        places[f"status of {kind}"] = json.dumps([i.get("status") for i in items])
    leaks = [
        f"{what} in the {place}"
        for place, text in places.items()
        for value, what in secrets.items()
        if value in text
    ]
    assert not leaks, "\n".join(leaks)
