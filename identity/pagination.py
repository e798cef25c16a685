"""Cursor pagination over (created_at, id): stable while rows are added or deleted between pages."""

import base64
import binascii
import json
import uuid
from collections.abc import Callable
from datetime import datetime

from django.db.models import Q, QuerySet
from rest_framework.exceptions import ValidationError


def _encode(created_at: datetime, object_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(object_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created_at, object_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        # A cursor is the client's text: one crafted with other JSON types must be refused, not crash.
        if not isinstance(created_at, str) or not isinstance(object_id, str):
            raise TypeError("a cursor holds two strings")
        return datetime.fromisoformat(created_at), uuid.UUID(object_id)
    except (binascii.Error, ValueError, TypeError):
        raise ValidationError(
            {"cursor": ["This cursor is not valid; use `next_cursor` from a previous page."]}
        ) from None


def paginate(queryset: QuerySet, *, represent: Callable, limit: int, cursor: str) -> dict:
    ordered = queryset.order_by("created_at", "id")
    if cursor:
        created_at, object_id = _decode(cursor)
        ordered = ordered.filter(Q(created_at__gt=created_at) | Q(created_at=created_at, id__gt=object_id))
    rows = list(ordered[: limit + 1])
    has_more = len(rows) > limit
    rows = rows[:limit]
    return {
        "data": [represent(row) for row in rows],
        "next_cursor": _encode(rows[-1].created_at, rows[-1].id) if has_more else None,
    }
