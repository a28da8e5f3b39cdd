"""How every part of the provider names a namespaced object."""

from __future__ import annotations

from typing import Any, NamedTuple


class ObjKey(NamedTuple):
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, body: Any) -> ObjKey:
        return cls(body["metadata"]["namespace"], body["metadata"]["name"])

    @classmethod
    def parse(cls, text: str | None) -> ObjKey | None:
        """`<namespace>/<name>` (as the host annotation holds it), or None when malformed."""
        if not text or text.count("/") != 1:
            return None
        ns, name = text.split("/")
        return cls(ns, name) if ns and name else None
