"""What the routes that take an image share: the scale parameter and the request-body schema."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from app.store.manifest import MAX_SCALE, MIN_SCALE

# A plain integer, checked against the loaded store by the pipeline before the body is read:
# the scales served are a fact of the store, not of the code (the 422 lists them; so does GET /models).
ScaleQuery = Annotated[
    int, Query(ge=MIN_SCALE, le=MAX_SCALE, description="upscale factor: one of the served scales (`GET /models`)")
]

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
