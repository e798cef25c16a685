"""`Client` (blocking) and `AsyncClient` (asyncio), both on httpx."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import date, datetime
from typing import Any, TypeVar

import httpx

from visor._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    GATEWAY_ERRORS,
    BaseClient,
    QualityFilter,
    RequestSpec,
    RetryPolicy,
    already_deleted,
    face_or_job,
    finished_face,
    json_of,
    patch_body,
    raise_for_problem,
    spec_detect,
    spec_enroll,
    spec_identify,
    spec_usage,
    spec_verify,
)
from visor._errors import APIConnectionError, WaitTimeoutError
from visor._images import ImageInput
from visor._models import (
    DetectResult,
    Face,
    Gallery,
    IdentifyResult,
    Invoice,
    Job,
    Subject,
    Tenant,
    Usage,
    VerifyResult,
)

T = TypeVar("T")
DateLike = date | datetime | str | None
PAGE_SIZE = 100


def _page_spec(path: str, params: dict[str, Any], cursor: str | None, page_size: int) -> RequestSpec:
    return RequestSpec("GET", path, params={**params, "limit": page_size, "cursor": cursor})


def _next_poll(interval: float, max_interval: float) -> float:
    return min(max_interval, interval * 1.5)


# --- Blocking client --------------------------------------------------------------------------------------


class Client(BaseClient):
    """Blocking Visor client. `api_key` and `base_url` default to $VISOR_API_KEY and $VISOR_BASE_URL.

    Every POST carries an `Idempotency-Key` (generated unless given) that is reused when the request is
    retried: connection errors, 429 (after `Retry-After`) and 5xx are retried with exponential backoff.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(api_key, base_url, timeout, max_retries, retry_policy)
        self._http = http_client or httpx.Client()
        self._owns_http = http_client is None
        self.galleries = Galleries(self)
        self.subjects = Subjects(self)
        self.faces = Faces(self)
        self.jobs = Jobs(self)
        self.invoices = Invoices(self)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def request(self, spec: RequestSpec) -> httpx.Response:
        """Send `spec` with retries; raise a VisorError subclass for an error answer."""
        spec = self._prepare(spec)
        attempt, answer_lost = 0, False
        while True:
            try:
                response = self._http.send(self._build(self._http, spec))
            except httpx.TransportError as error:
                delay = self.retry_policy.delay_for(attempt, None)
                if delay is None:
                    raise APIConnectionError(f"cannot reach {self.base_url}: {error!r}") from error
                answer_lost = True
            else:
                delay = self.retry_policy.delay_for(attempt, response)
                if delay is None:
                    if not already_deleted(spec, response, answer_lost=answer_lost):
                        raise_for_problem(response)
                    return response
                answer_lost = answer_lost or response.status_code in GATEWAY_ERRORS
                response.close()
            time.sleep(delay)
            attempt += 1

    def _json(self, spec: RequestSpec) -> Any:
        return json_of(self.request(spec))

    def _paginate(
        self, path: str, params: dict[str, Any], parse: Callable[[dict[str, Any]], T], page_size: int
    ) -> Iterator[T]:
        cursor: str | None = None
        while True:
            page = self._json(_page_spec(path, params, cursor, page_size))
            for item in page.get("data") or []:
                yield parse(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def identify(
        self,
        *,
        gallery_id: str,
        image: ImageInput,
        top_k: int = 5,
        threshold: float | None = None,
        max_faces: int = 10,
    ) -> IdentifyResult:
        """Who is in `image`? One entry per face found; `.match` is None for a stranger."""
        return IdentifyResult.from_dict(
            self._json(spec_identify(gallery_id, image, top_k, threshold, max_faces))
        )

    def verify(
        self,
        *,
        image: ImageInput,
        subject_id: str | None = None,
        image2: ImageInput | None = None,
        threshold: float | None = None,
    ) -> VerifyResult:
        """Is `image` the same person as `image2` (or as the enrolled subject `subject_id`)?"""
        return VerifyResult.from_dict(self._json(spec_verify(image, image2, subject_id, threshold)))

    def detect(self, *, image: ImageInput, max_faces: int = 10) -> DetectResult:
        return DetectResult.from_dict(self._json(spec_detect(image, max_faces)))

    def usage(self, *, from_: DateLike = None, to: DateLike = None, granularity: str | None = None) -> Usage:
        """Metered usage of the days `from_`..`to` (default: this month so far), per "day" or "month"."""
        return Usage.from_dict(self._json(spec_usage(from_, to, granularity)))

    def tenant(self) -> Tenant:
        """The caller's tenant, plan, settings and this month's usage."""
        return Tenant.from_dict(self._json(RequestSpec("GET", "/v1/tenant")))


class _Resource:
    def __init__(self, client: Client) -> None:
        self._client = client


class Galleries(_Resource):
    def create(self, *, name: str, description: str | None = None) -> Gallery:
        body = patch_body(name=name, description=description)
        return Gallery.from_dict(self._client._json(RequestSpec("POST", "/v1/galleries", json=body)))

    def list(self, *, page_size: int = PAGE_SIZE) -> Iterator[Gallery]:
        """Every gallery, fetching pages lazily."""
        return self._client._paginate("/v1/galleries", {}, Gallery.from_dict, page_size)

    def get(self, gallery_id: str) -> Gallery:
        return Gallery.from_dict(self._client._json(RequestSpec("GET", f"/v1/galleries/{gallery_id}")))

    def update(self, gallery_id: str, *, name: str | None = None, description: str | None = None) -> Gallery:
        spec = RequestSpec(
            "PATCH", f"/v1/galleries/{gallery_id}", json=patch_body(name=name, description=description)
        )
        return Gallery.from_dict(self._client._json(spec))

    def delete(self, gallery_id: str) -> None:
        self._client.request(RequestSpec("DELETE", f"/v1/galleries/{gallery_id}"))


class Subjects(_Resource):
    def create(
        self,
        *,
        gallery_id: str,
        external_id: str,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Subject:
        body = patch_body(external_id=external_id, name=name, metadata=metadata)
        spec = RequestSpec("POST", f"/v1/galleries/{gallery_id}/subjects", json=body)
        return Subject.from_dict(self._client._json(spec))

    def list(
        self, *, gallery_id: str, external_id: str | None = None, page_size: int = PAGE_SIZE
    ) -> Iterator[Subject]:
        return self._client._paginate(
            f"/v1/galleries/{gallery_id}/subjects", {"external_id": external_id}, Subject.from_dict, page_size
        )

    def get(self, subject_id: str) -> Subject:
        return Subject.from_dict(self._client._json(RequestSpec("GET", f"/v1/subjects/{subject_id}")))

    def update(
        self,
        subject_id: str,
        *,
        external_id: str | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Subject:
        body = patch_body(external_id=external_id, name=name, metadata=metadata)
        return Subject.from_dict(
            self._client._json(RequestSpec("PATCH", f"/v1/subjects/{subject_id}", json=body))
        )

    def delete(self, subject_id: str) -> None:
        self._client.request(RequestSpec("DELETE", f"/v1/subjects/{subject_id}"))


class Faces(_Resource):
    def enroll(
        self,
        *,
        subject_id: str,
        image: ImageInput,
        wait: bool = True,
        largest: bool = False,
        quality_filter: QualityFilter | None = None,
        idempotency_key: str | None = None,
        timeout: float = 60.0,
    ) -> Face | Job:
        """Enroll a face from `image`.

        With `wait=True` (default) returns the enrolled Face or raises FaceRejectedError (`.reasons`);
        with `wait=False` returns the queued Job at once (see `client.jobs.wait`). `largest=True` enrolls
        the largest of several faces; `quality_filter` is "auto" (the server's default: enrollment floors),
        "low" (identification's lenient floors) or "none" (no refusal for quality).
        """
        started = time.monotonic()
        spec = spec_enroll(
            subject_id=subject_id,
            image=image,
            wait=wait,
            largest=largest,
            quality_filter=quality_filter,
            idempotency_key=idempotency_key,
            wait_timeout=timeout,
            client_timeout=self._client.timeout,
        )
        answer = face_or_job(self._client.request(spec))
        if isinstance(answer, Face) or not wait:
            return answer
        remaining = max(1.0, timeout - (time.monotonic() - started))
        return finished_face(self._client.jobs.wait(answer.id, timeout=remaining))

    def list(self, *, subject_id: str, page_size: int = PAGE_SIZE) -> Iterator[Face]:
        return self._client._paginate(f"/v1/subjects/{subject_id}/faces", {}, Face.from_dict, page_size)

    def get(self, face_id: str) -> Face:
        return Face.from_dict(self._client._json(RequestSpec("GET", f"/v1/faces/{face_id}")))

    def delete(self, face_id: str) -> None:
        self._client.request(RequestSpec("DELETE", f"/v1/faces/{face_id}"))


class Jobs(_Resource):
    def get(self, job_id: str) -> Job:
        return Job.from_dict(self._client._json(RequestSpec("GET", f"/v1/jobs/{job_id}")))

    def wait(
        self, job_id: str, *, timeout: float = 60.0, poll_interval: float = 0.25, max_interval: float = 5.0
    ) -> Job:
        """Poll until the job succeeded or failed (returned, not raised); WaitTimeoutError after `timeout`."""
        deadline = time.monotonic() + timeout
        interval = poll_interval
        while True:
            job = self.get(job_id)
            if job.done:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeoutError(f"job {job_id} still {job.status} after {timeout:g} s", body=job.raw)
            time.sleep(min(interval, remaining))
            interval = _next_poll(interval, max_interval)


class Invoices(_Resource):
    def list(self, *, page_size: int = PAGE_SIZE) -> Iterator[Invoice]:
        return self._client._paginate("/v1/invoices", {}, Invoice.from_dict, page_size)

    def get(self, invoice_id: str) -> Invoice:
        return Invoice.from_dict(self._client._json(RequestSpec("GET", f"/v1/invoices/{invoice_id}")))

    def csv(self, invoice_id: str) -> str:
        """The invoice as CSV text (one row per line, then monthly price, subtotal and total)."""
        return self._client.request(RequestSpec("GET", f"/v1/invoices/{invoice_id}.csv")).text


# --- Async client -----------------------------------------------------------------------------------------


class AsyncClient(BaseClient):
    """The asyncio twin of `Client`: the same surface, with `await` (and `async for` over lists)."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(api_key, base_url, timeout, max_retries, retry_policy)
        self._http = http_client or httpx.AsyncClient()
        self._owns_http = http_client is None
        self.galleries = AsyncGalleries(self)
        self.subjects = AsyncSubjects(self)
        self.faces = AsyncFaces(self)
        self.jobs = AsyncJobs(self)
        self.invoices = AsyncInvoices(self)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def request(self, spec: RequestSpec) -> httpx.Response:
        spec = self._prepare(spec)
        attempt, answer_lost = 0, False
        while True:
            try:
                response = await self._http.send(self._build(self._http, spec))
            except httpx.TransportError as error:
                delay = self.retry_policy.delay_for(attempt, None)
                if delay is None:
                    raise APIConnectionError(f"cannot reach {self.base_url}: {error!r}") from error
                answer_lost = True
            else:
                delay = self.retry_policy.delay_for(attempt, response)
                if delay is None:
                    if not already_deleted(spec, response, answer_lost=answer_lost):
                        raise_for_problem(response)
                    return response
                answer_lost = answer_lost or response.status_code in GATEWAY_ERRORS
                await response.aclose()
            await asyncio.sleep(delay)
            attempt += 1

    async def _json(self, spec: RequestSpec) -> Any:
        return json_of(await self.request(spec))

    async def _paginate(
        self, path: str, params: dict[str, Any], parse: Callable[[dict[str, Any]], T], page_size: int
    ) -> AsyncIterator[T]:
        cursor: str | None = None
        while True:
            page = await self._json(_page_spec(path, params, cursor, page_size))
            for item in page.get("data") or []:
                yield parse(item)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def identify(
        self,
        *,
        gallery_id: str,
        image: ImageInput,
        top_k: int = 5,
        threshold: float | None = None,
        max_faces: int = 10,
    ) -> IdentifyResult:
        spec = spec_identify(gallery_id, image, top_k, threshold, max_faces)
        return IdentifyResult.from_dict(await self._json(spec))

    async def verify(
        self,
        *,
        image: ImageInput,
        subject_id: str | None = None,
        image2: ImageInput | None = None,
        threshold: float | None = None,
    ) -> VerifyResult:
        return VerifyResult.from_dict(await self._json(spec_verify(image, image2, subject_id, threshold)))

    async def detect(self, *, image: ImageInput, max_faces: int = 10) -> DetectResult:
        return DetectResult.from_dict(await self._json(spec_detect(image, max_faces)))

    async def usage(
        self, *, from_: DateLike = None, to: DateLike = None, granularity: str | None = None
    ) -> Usage:
        return Usage.from_dict(await self._json(spec_usage(from_, to, granularity)))

    async def tenant(self) -> Tenant:
        return Tenant.from_dict(await self._json(RequestSpec("GET", "/v1/tenant")))


class _AsyncResource:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client


class AsyncGalleries(_AsyncResource):
    async def create(self, *, name: str, description: str | None = None) -> Gallery:
        body = patch_body(name=name, description=description)
        return Gallery.from_dict(await self._client._json(RequestSpec("POST", "/v1/galleries", json=body)))

    def list(self, *, page_size: int = PAGE_SIZE) -> AsyncIterator[Gallery]:
        return self._client._paginate("/v1/galleries", {}, Gallery.from_dict, page_size)

    async def get(self, gallery_id: str) -> Gallery:
        return Gallery.from_dict(await self._client._json(RequestSpec("GET", f"/v1/galleries/{gallery_id}")))

    async def update(
        self, gallery_id: str, *, name: str | None = None, description: str | None = None
    ) -> Gallery:
        spec = RequestSpec(
            "PATCH", f"/v1/galleries/{gallery_id}", json=patch_body(name=name, description=description)
        )
        return Gallery.from_dict(await self._client._json(spec))

    async def delete(self, gallery_id: str) -> None:
        await self._client.request(RequestSpec("DELETE", f"/v1/galleries/{gallery_id}"))


class AsyncSubjects(_AsyncResource):
    async def create(
        self,
        *,
        gallery_id: str,
        external_id: str,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Subject:
        body = patch_body(external_id=external_id, name=name, metadata=metadata)
        spec = RequestSpec("POST", f"/v1/galleries/{gallery_id}/subjects", json=body)
        return Subject.from_dict(await self._client._json(spec))

    def list(
        self, *, gallery_id: str, external_id: str | None = None, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[Subject]:
        return self._client._paginate(
            f"/v1/galleries/{gallery_id}/subjects", {"external_id": external_id}, Subject.from_dict, page_size
        )

    async def get(self, subject_id: str) -> Subject:
        return Subject.from_dict(await self._client._json(RequestSpec("GET", f"/v1/subjects/{subject_id}")))

    async def update(
        self,
        subject_id: str,
        *,
        external_id: str | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Subject:
        body = patch_body(external_id=external_id, name=name, metadata=metadata)
        return Subject.from_dict(
            await self._client._json(RequestSpec("PATCH", f"/v1/subjects/{subject_id}", json=body))
        )

    async def delete(self, subject_id: str) -> None:
        await self._client.request(RequestSpec("DELETE", f"/v1/subjects/{subject_id}"))


class AsyncFaces(_AsyncResource):
    async def enroll(
        self,
        *,
        subject_id: str,
        image: ImageInput,
        wait: bool = True,
        largest: bool = False,
        quality_filter: QualityFilter | None = None,
        idempotency_key: str | None = None,
        timeout: float = 60.0,
    ) -> Face | Job:
        started = time.monotonic()
        spec = spec_enroll(
            subject_id=subject_id,
            image=image,
            wait=wait,
            largest=largest,
            quality_filter=quality_filter,
            idempotency_key=idempotency_key,
            wait_timeout=timeout,
            client_timeout=self._client.timeout,
        )
        answer = face_or_job(await self._client.request(spec))
        if isinstance(answer, Face) or not wait:
            return answer
        remaining = max(1.0, timeout - (time.monotonic() - started))
        return finished_face(await self._client.jobs.wait(answer.id, timeout=remaining))

    def list(self, *, subject_id: str, page_size: int = PAGE_SIZE) -> AsyncIterator[Face]:
        return self._client._paginate(f"/v1/subjects/{subject_id}/faces", {}, Face.from_dict, page_size)

    async def get(self, face_id: str) -> Face:
        return Face.from_dict(await self._client._json(RequestSpec("GET", f"/v1/faces/{face_id}")))

    async def delete(self, face_id: str) -> None:
        await self._client.request(RequestSpec("DELETE", f"/v1/faces/{face_id}"))


class AsyncJobs(_AsyncResource):
    async def get(self, job_id: str) -> Job:
        return Job.from_dict(await self._client._json(RequestSpec("GET", f"/v1/jobs/{job_id}")))

    async def wait(
        self, job_id: str, *, timeout: float = 60.0, poll_interval: float = 0.25, max_interval: float = 5.0
    ) -> Job:
        deadline = time.monotonic() + timeout
        interval = poll_interval
        while True:
            job = await self.get(job_id)
            if job.done:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeoutError(f"job {job_id} still {job.status} after {timeout:g} s", body=job.raw)
            await asyncio.sleep(min(interval, remaining))
            interval = _next_poll(interval, max_interval)


class AsyncInvoices(_AsyncResource):
    def list(self, *, page_size: int = PAGE_SIZE) -> AsyncIterator[Invoice]:
        return self._client._paginate("/v1/invoices", {}, Invoice.from_dict, page_size)

    async def get(self, invoice_id: str) -> Invoice:
        return Invoice.from_dict(await self._client._json(RequestSpec("GET", f"/v1/invoices/{invoice_id}")))

    async def csv(self, invoice_id: str) -> str:
        return (await self._client.request(RequestSpec("GET", f"/v1/invoices/{invoice_id}.csv"))).text
