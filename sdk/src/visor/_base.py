"""What the sync and async clients share: configuration, request building, retry policy, error mapping."""

from __future__ import annotations

import email.utils
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal

import httpx

from visor._errors import VisorError, error_from_response
from visor._images import ImageInput, image_part
from visor._models import Face, Job

# How strict enrollment is about face quality (the server's `quality_filter`).
QualityFilter = Literal["auto", "low", "none"]

__version__ = "0.1.0"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 3
RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# Answers of a proxy in front of the API, which may have done the request before its answer was lost.
GATEWAY_ERRORS = frozenset({502, 504})


@dataclass
class RequestSpec:
    """One API call, independent of the transport; rebuilt into an httpx.Request on every attempt."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; `Retry-After` wins when the server sends one."""

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 60.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.initial_delay * 2**attempt))

    def delay_for(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before retry `attempt` (0-based), or None when this answer must not be retried."""
        if attempt >= self.max_retries:
            return None
        if response is None:
            return self.backoff(attempt)
        if response.status_code not in RETRYABLE_STATUS:
            return None
        if response.status_code == 429 and _problem_type(response) == "quota-exceeded":
            return None  # the quota resets at the start of next month; retrying now cannot help
        # A 503 says when too (an enrollment the service could not finish): sooner would fail again.
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        if retry_after is not None:
            return None if retry_after > self.max_retry_after else retry_after + random.uniform(0, 0.25)
        return self.backoff(attempt)


def _problem_type(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    type_uri = body.get("type") if isinstance(body, dict) else None
    return type_uri.rsplit("/", 1)[-1] if isinstance(type_uri, str) else None


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def already_deleted(spec: RequestSpec, response: httpx.Response, *, answer_lost: bool) -> bool:
    """A DELETE that finds nothing after an attempt whose answer was lost (a broken connection, or a proxy's
    502 or 504): that attempt deleted it. After the API's own error answer, such as a 503, nothing was
    deleted, and a 404 means there was nothing to delete."""
    return spec.method == "DELETE" and response.status_code == 404 and answer_lost


def raise_for_problem(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = None
    raise error_from_response(
        response.status_code, {k.lower(): v for k, v in response.headers.items()}, body, response.text
    )


def json_of(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    return response.json()


def new_idempotency_key() -> str:
    return str(uuid.uuid4())


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _date(value: date | datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return (value.date() if isinstance(value, datetime) else value).isoformat()


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class BaseClient:
    def __init__(
        self,
        api_key: str | None,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        retry_policy: RetryPolicy | None,
    ) -> None:
        api_key = api_key or os.environ.get("VISOR_API_KEY")
        if not api_key:
            raise VisorError("No API key: pass Client(api_key=...) or set VISOR_API_KEY.")
        self.api_key = api_key
        self.base_url = (base_url or os.environ.get("VISOR_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy(max_retries=max_retries)

    def _default_headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.api_key}",
            "User-Agent": f"visor-python/{__version__}",
            "Accept": "application/json, application/problem+json",
        }

    def _prepare(self, spec: RequestSpec) -> RequestSpec:
        if spec.method == "POST" and not spec.idempotency_key:
            spec.idempotency_key = new_idempotency_key()
        if spec.idempotency_key:
            spec.headers["Idempotency-Key"] = spec.idempotency_key
        return spec

    def _build(self, http: httpx.Client | httpx.AsyncClient, spec: RequestSpec) -> httpx.Request:
        timeout = spec.timeout if spec.timeout is not None else self.timeout
        return http.build_request(
            spec.method,
            self.base_url + spec.path,
            params=_drop_none(spec.params or {}) or None,
            json=spec.json,
            files=spec.files,
            data=spec.data,
            headers={**self._default_headers(), **spec.headers},
            timeout=timeout,
        )


# --- Request specs, shared by Client and AsyncClient -------------------------------------------------------


def spec_identify(
    gallery_id: str, image: ImageInput, top_k: int, threshold: float | None, max_faces: int
) -> RequestSpec:
    return RequestSpec(
        "POST",
        f"/v1/galleries/{gallery_id}/identify",
        params={"top_k": top_k, "threshold": threshold, "max_faces": max_faces},
        files={"image": image_part(image)},
    )


def spec_verify(
    image: ImageInput, image2: ImageInput | None, subject_id: str | None, threshold: float | None
) -> RequestSpec:
    if (image2 is None) == (subject_id is None):
        raise TypeError("verify() needs exactly one of image2= and subject_id=")
    files = {"image": image_part(image)}
    if image2 is not None:
        files["image2"] = image_part(image2)
    return RequestSpec(
        "POST", "/v1/verify", params={"subject_id": subject_id, "threshold": threshold}, files=files
    )


def spec_detect(image: ImageInput, max_faces: int) -> RequestSpec:
    return RequestSpec(
        "POST", "/v1/detect", params={"max_faces": max_faces}, files={"image": image_part(image)}
    )


def spec_enroll(
    *,
    subject_id: str,
    image: ImageInput,
    wait: bool,
    largest: bool,
    quality_filter: QualityFilter | None,
    idempotency_key: str | None,
    wait_timeout: float,
    client_timeout: float,
) -> RequestSpec:
    """With `wait`, the server waits for the worker up to `wait_timeout` (capped at its 30 s limit) and the
    HTTP request is given that long plus a margin."""
    server_wait = min(max(wait_timeout, 1.0), 30.0)
    return RequestSpec(
        "POST",
        f"/v1/subjects/{subject_id}/faces",
        params={
            "wait": _bool(wait),
            "largest": _bool(largest),
            "quality_filter": quality_filter,
            "timeout": server_wait if wait else None,
        },
        files={"image": image_part(image)},
        idempotency_key=idempotency_key,
        timeout=max(client_timeout, server_wait + 15) if wait else client_timeout,
    )


def spec_usage(
    from_: date | datetime | str | None, to: date | datetime | str | None, granularity: str | None
) -> RequestSpec:
    """`to` defaults to today (UTC), `from_` to the first day of `to`'s month."""
    until = _date(to) or datetime.now(UTC).date().isoformat()
    return RequestSpec(
        "GET",
        "/v1/usage",
        params={"from": _date(from_) or _month_start(until), "to": until, "granularity": granularity},
    )


def _month_start(day: str) -> str:
    """The first day of `day`'s month; of this month when `day` is no date (the server then says why)."""
    try:
        return date.fromisoformat(day).replace(day=1).isoformat()
    except ValueError:
        return datetime.now(UTC).date().replace(day=1).isoformat()


def patch_body(**fields: Any) -> dict[str, Any]:
    return _drop_none(fields)


def face_or_job(response: httpx.Response) -> Face | Job:
    """An enrollment answer: the Face when it was indexed at once (201), else its queued Job."""
    body = json_of(response)
    if response.status_code == 201:
        return Face.from_dict(body)
    return Job.from_dict(body["job"])


def finished_face(job: Job) -> Face:
    """The Face a finished enrollment job made, or the error it failed with."""
    if job.status == "failed" or job.face is None:
        raise job_failure(job.error, job.id)
    return job.face


# Why a job fails when its image is not the cause: the service ran out of retries, the subject was deleted,
# or the tenant was suspended while the job was queued.
JOB_FAILURES_NOT_ABOUT_THE_IMAGE = frozenset({"INTERNAL_ERROR", "SUBJECT_DELETED", "TENANT_INACTIVE"})


def job_failure(job_error: dict[str, Any] | None, job_id: str) -> VisorError:
    from visor._errors import FaceRejectedError, JobFailedError

    error = job_error or {}
    reasons = error.get("reasons") or ([error["reason"]] if error.get("reason") else [])
    detail = str(error.get("detail") or f"job {job_id} failed")
    if reasons and not JOB_FAILURES_NOT_ABOUT_THE_IMAGE.intersection(reasons):
        return FaceRejectedError(
            detail,
            status=422,
            type="face-rejected",
            title="No usable face",
            body={"reasons": reasons, **error},
        )
    return JobFailedError(detail, type="job-failed", title="Job failed", body=error)
