"""Events for operators through kopf (which posts them asynchronously, off our code path)."""

from __future__ import annotations

from typing import Any

import kopf


class KopfEvents:
    def info(self, body: Any, reason: str, message: str) -> None:
        kopf.info(body, reason=reason, message=message)

    def warn(self, body: Any, reason: str, message: str) -> None:
        kopf.warn(body, reason=reason, message=message)
