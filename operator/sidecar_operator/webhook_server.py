"""kopf's webhook server, plus the namespace an admission request carries.

A Pod created by a controller may arrive with an empty ``metadata.namespace``; the namespace
is then only in the admission request, which kopf does not pass to handlers. Filling it into
the object here keeps the handler a function of the object alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import kopf


class NamespacedWebhookServer(kopf.WebhookServer):
    async def __call__(self, fn: Any) -> AsyncIterator[Any]:
        async def fill_namespace(request: Any, **kwargs: Any) -> Any:
            payload = request.get("request") or {}
            namespace = payload.get("namespace")
            obj = payload.get("object")
            if namespace and isinstance(obj, dict):
                metadata = obj.setdefault("metadata", {})
                if not metadata.get("namespace"):
                    metadata["namespace"] = namespace
            return await fn(request, **kwargs)

        async for client_config in super().__call__(fill_namespace):
            yield client_config
