"""RFC 9457 problem details for every error the API returns.

Each kind of problem has a stable `type` URI under PROBLEM_BASE that clients (and the SDK) map to
exception classes; `title` is fixed per type, `detail` explains this occurrence.
"""

from http import HTTPStatus

from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response

PROBLEM_BASE = "https://visor.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(exceptions.APIException):
    """An API error with a stable problem type. Subclass per kind of problem."""

    status_code = 400
    problem_type = "bad-request"
    title = "Bad request"

    def __init__(self, detail: str, *, extra: dict | None = None, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.extra = extra or {}
        self.headers = headers or {}


def problem_body(
    *, problem_type: str, title: str, status: int, detail: str, instance: str | None = None, **extra
) -> dict:
    body = {"type": PROBLEM_BASE + problem_type, "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def problem_response(
    request,
    *,
    problem_type: str,
    title: str,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra,
) -> JsonResponse:
    body = problem_body(
        problem_type=problem_type,
        title=title,
        status=status,
        detail=detail,
        instance=request.path if request is not None else None,
        **extra,
    )
    request_id = getattr(request, "request_id", None)
    if request_id:
        body["request_id"] = request_id
    response = JsonResponse(body, status=status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


_DRF_TYPES: list[tuple[type[Exception], str, str]] = [
    (exceptions.ValidationError, "validation-error", "Your request parameters did not validate"),
    (exceptions.ParseError, "malformed-request", "The request body could not be parsed"),
    (exceptions.NotAuthenticated, "unauthenticated", "Authentication required"),
    (exceptions.AuthenticationFailed, "unauthenticated", "Authentication failed"),
    (exceptions.PermissionDenied, "forbidden", "Not allowed"),
    (exceptions.NotFound, "not-found", "Not found"),
    (exceptions.MethodNotAllowed, "method-not-allowed", "Method not allowed"),
    (exceptions.NotAcceptable, "not-acceptable", "Not acceptable"),
    (exceptions.UnsupportedMediaType, "unsupported-media-type", "Unsupported media type"),
    (exceptions.Throttled, "rate-limited", "Too many requests"),
]


def _field_errors(detail) -> dict:
    if isinstance(detail, dict):
        return {
            field: _field_errors(value)
            if isinstance(value, dict)
            else [str(v) for v in value]
            if isinstance(value, list)
            else [str(value)]
            for field, value in detail.items()
        }
    return {"non_field_errors": [str(item) for item in detail]} if isinstance(detail, list) else {}


def problem_exception_handler(exc, context):
    """DRF exception handler: every error leaves as application/problem+json."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("The resource does not exist.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    # Imported here: DRF loads the default authentication classes (which raise these problems) while
    # rest_framework.views is still importing.
    from rest_framework.views import exception_handler

    response = exception_handler(exc, context)
    if response is None:
        return None
    request = context.get("request")
    if isinstance(exc, Problem):
        problem_type, title, extra = exc.problem_type, exc.title, exc.extra
        detail = str(exc.detail)
    else:
        problem_type, title = next(
            ((ptype, ptitle) for cls, ptype, ptitle in _DRF_TYPES if isinstance(exc, cls)),
            ("error", HTTPStatus(response.status_code).phrase),
        )
        extra = {}
        if isinstance(exc, exceptions.ValidationError):
            extra["errors"] = _field_errors(exc.detail)
            detail = "One or more fields are invalid; see `errors`."
        else:
            detail = str(exc.detail)
    body = problem_body(
        problem_type=problem_type,
        title=title,
        status=response.status_code,
        detail=detail,
        instance=request.path if request is not None else None,
        **extra,
    )
    request_id = getattr(getattr(request, "_request", request), "request_id", None)
    if request_id:
        body["request_id"] = request_id
    problem = Response(body, status=response.status_code, headers=dict(response.items()))
    problem.content_type = PROBLEM_CONTENT_TYPE
    for name, value in getattr(exc, "headers", {}).items():
        problem[name] = value
    return problem


def not_found_view(request, exception=None):
    return problem_response(
        request,
        problem_type="not-found",
        title="Not found",
        status=404,
        detail="The resource does not exist.",
    )


def server_error_view(request):
    return problem_response(
        request,
        problem_type="internal-error",
        title="Internal server error",
        status=500,
        detail="An unexpected error occurred; quote the request id when reporting it.",
    )


def bad_request_view(request, exception=None):
    return problem_response(
        request,
        problem_type="bad-request",
        title="Bad request",
        status=400,
        detail="The request could not be understood.",
    )


def permission_denied_view(request, exception=None):
    return problem_response(
        request,
        problem_type="forbidden",
        title="Not allowed",
        status=403,
        detail="You do not have permission to perform this action.",
    )
