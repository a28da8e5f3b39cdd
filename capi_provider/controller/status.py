"""The one way any controller writes status: compute the new fields, compare with what the object shows,
patch once if an operator would see a difference. An idle controller therefore writes nothing."""

from __future__ import annotations

from typing import Any

from capi_provider import api
from capi_provider.controller.context import KubeApi
from capi_provider.decisions.conditions import status_changed
from capi_provider.objkey import ObjKey


async def write_status(
    kube: KubeApi, plural: str, key: ObjKey, current: dict[str, Any] | None, new: dict[str, Any]
) -> bool:
    """Merge-patch `new` into the object's status if it changes anything visible; True when it wrote."""
    if not status_changed(dict(current or {}), new):
        return False
    await kube.patch(api.GROUP, api.VERSION, plural, key.namespace, key.name, {"status": new}, status=True)
    return True
