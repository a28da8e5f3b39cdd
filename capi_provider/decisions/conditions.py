"""metav1.Condition lists, edited the way CAPI expects: lastTransitionTime moves only when status changes."""

from __future__ import annotations

import datetime
from typing import Any

READY = "Ready"
PAUSED = "Paused"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new list with `type_` set; the input is not modified. Order of existing conditions is kept."""
    status_s = status if isinstance(status, str) else ("True" if status else "False")
    out: list[dict[str, Any]] = []
    found = False
    for c in conditions or []:
        if c.get("type") == type_:
            found = True
            c = {
                **c,
                "status": status_s,
                "reason": reason,
                "message": message,
                "lastTransitionTime": c.get("lastTransitionTime") if c.get("status") == status_s else now(),
            }
            if generation is not None:
                c["observedGeneration"] = generation
        out.append(c)
    if not found:
        new = {
            "type": type_,
            "status": status_s,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now(),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        out.append(new)
    return out


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    c = get_condition(conditions, type_)
    return bool(c and c.get("status") == "True")


def same_ignoring_time(a: list[dict[str, Any]] | None, b: list[dict[str, Any]] | None) -> bool:
    """Whether writing `b` over `a` would change anything an operator sees (avoids no-op status patches)."""

    def strip(cs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in cs or []]

    return strip(a) == strip(b)


def status_changed(current: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether writing the fields of `new` over `current` changes what an operator sees; controllers skip
    the write otherwise, so an idle controller writes nothing."""
    if not same_ignoring_time(current.get("conditions"), new.get("conditions", current.get("conditions"))):
        return True
    return any(current.get(k) != v for k, v in new.items() if k != "conditions")
