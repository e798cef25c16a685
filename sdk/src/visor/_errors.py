"""Exceptions raised by the SDK, mapped from the RFC 9457 problem `type` the API returns."""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://visor.dev/problems/"


class VisorError(Exception):
    """An error answer from the Visor API (or the transport failing for good).

    `type` is the short problem type (`"not-found"`), `type_uri` the full URI the API sent.
    """

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        type: str | None = None,
        title: str | None = None,
        request_id: str | None = None,
        errors: dict[str, Any] | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.request_id = request_id
        self.errors = errors or {}
        self.body = body or {}
        self.headers = headers or {}

    @property
    def type_uri(self) -> str | None:
        return PROBLEM_BASE + self.type if self.type else None

    def __str__(self) -> str:
        parts = [f"{self.status} {self.title}" if self.status else (self.title or "Visor error")]
        if self.detail and self.detail != self.title:
            parts.append(self.detail)
        if self.errors:
            parts.append(
                "; ".join(f"{field}: {', '.join(map(str, msgs))}" for field, msgs in _flat(self.errors))
            )
        if self.request_id:
            parts.append(f"(request id {self.request_id})")
        return ": ".join(parts[:2]) + (" " + " ".join(parts[2:]) if len(parts) > 2 else "")


def _flat(errors: dict[str, Any], prefix: str = "") -> list[tuple[str, list[Any]]]:
    items: list[tuple[str, list[Any]]] = []
    for field, value in errors.items():
        name = f"{prefix}{field}"
        if isinstance(value, dict):
            items.extend(_flat(value, name + "."))
        else:
            items.append((name, value if isinstance(value, list) else [value]))
    return items


class APIConnectionError(VisorError):
    """The server could not be reached (after the configured retries)."""


class BadRequestError(VisorError):
    pass


class ValidationError(BadRequestError):
    pass


class AuthenticationError(VisorError):
    pass


class PermissionDeniedError(VisorError):
    pass


class NotFoundError(VisorError):
    pass


class ConflictError(VisorError):
    pass


class CapacityExceededError(ConflictError):
    pass


class RateLimitError(VisorError):
    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class QuotaExceededError(RateLimitError):
    pass


class InvalidImageError(VisorError):
    @property
    def reason(self) -> str | None:
        return self.body.get("reason")


class FaceRejectedError(VisorError):
    @property
    def reasons(self) -> list[str]:
        return list(self.body.get("reasons") or [])


class ServerError(VisorError):
    pass


class JobFailedError(VisorError):
    """A job the SDK waited for finished as failed with an error that is not a face rejection."""


class WaitTimeoutError(VisorError, TimeoutError):
    """`jobs.wait` (or `faces.enroll(wait=True)`) gave up before the job finished."""


_BY_TYPE: dict[str, type[VisorError]] = {
    "validation-error": ValidationError,
    "malformed-request": BadRequestError,
    "bad-request": BadRequestError,
    "request-too-large": BadRequestError,
    "method-not-allowed": BadRequestError,
    "not-acceptable": BadRequestError,
    "unsupported-media-type": BadRequestError,
    "unauthenticated": AuthenticationError,
    "forbidden": PermissionDeniedError,
    "insufficient-scope": PermissionDeniedError,
    "tenant-suspended": PermissionDeniedError,
    "not-found": NotFoundError,
    "conflict": ConflictError,
    "gallery-needs-reembed": ConflictError,
    "capacity-exceeded": CapacityExceededError,
    "idempotency-key-reused": ValidationError,
    "rate-limited": RateLimitError,
    "quota-exceeded": QuotaExceededError,
    "invalid-image": InvalidImageError,
    "face-rejected": FaceRejectedError,
    "internal-error": ServerError,
    "enrollment-failed": ServerError,
}

_BY_STATUS: dict[int, type[VisorError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationError,
    429: RateLimitError,
}


def error_from_response(status: int, headers: dict[str, str], body: Any, text: str) -> VisorError:
    """The exception for an error answer: by problem type, else by status."""
    problem = body if isinstance(body, dict) else {}
    type_uri = problem.get("type")
    short = (
        type_uri[len(PROBLEM_BASE) :]
        if isinstance(type_uri, str) and type_uri.startswith(PROBLEM_BASE)
        else None
    )
    cls = _BY_TYPE.get(short or "") or (ServerError if status >= 500 else _BY_STATUS.get(status, VisorError))
    return cls(
        str(problem.get("detail") or text[:500] or f"HTTP {status}"),
        status=status,
        type=short or type_uri,
        title=problem.get("title"),
        request_id=problem.get("request_id") or headers.get("x-request-id"),
        errors=problem.get("errors") if isinstance(problem.get("errors"), dict) else None,
        body=problem,
        headers=headers,
    )
