"""What the routes that take an image share: the scale parameter, the request-body schema, the codec pool."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

from app.api.state import ServiceState

T = TypeVar("T")


class Scale(int, Enum):
    x2 = 2
    x3 = 3
    x4 = 4


UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The image, as multipart field `file` or as the raw body with an `image/*` Content-Type.",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"],
                           "properties": {"file": {"type": "string", "format": "binary"}}}
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


async def in_pool(state: ServiceState, fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(state.codec_pool, fn, *args)
