"""Check the `Visor-Signature` header of a webhook delivery.

`Visor-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>`
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from visor._errors import VisorError

SIGNATURE_HEADER = "Visor-Signature"
DEFAULT_TOLERANCE = 300


class WebhookVerificationError(VisorError):
    """The signature is missing, malformed, wrong, or its timestamp is outside the tolerance."""


def sign(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """The header value Visor would send for `payload` (useful in your own tests)."""
    body = payload.encode() if isinstance(payload, str) else payload
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _header(headers: Mapping[str, str] | str) -> str | None:
    if isinstance(headers, str):
        return headers
    for name, value in headers.items():
        if name.lower() == SIGNATURE_HEADER.lower():
            return value
    return None


def verify(
    payload: bytes | str,
    headers: Mapping[str, str] | str,
    secret: str,
    tolerance: int = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Check the signature over the RAW request body and return the parsed event.

    `headers` is the request's header mapping (or the `Visor-Signature` value itself). Raises
    WebhookVerificationError on a missing/invalid signature or a timestamp more than `tolerance` seconds
    away from now (replay protection).
    """
    header = _header(headers)
    if not header:
        raise WebhookVerificationError(f"missing {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise WebhookVerificationError("malformed signature timestamp") from None
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookVerificationError(f"malformed {SIGNATURE_HEADER} header")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(f"signature timestamp is outside the {tolerance} s tolerance")
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    expected = sign(body, secret, timestamp).split("v1=", 1)[1]
    # compare_digest refuses (TypeError) a str that is not ASCII; such a signature cannot match a hex digest.
    if not any(candidate.isascii() and hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise WebhookVerificationError("signature does not match the payload")
    try:
        event = json.loads(body)
    except ValueError:
        raise WebhookVerificationError("payload is not JSON") from None
    return event if isinstance(event, dict) else {"data": event}
