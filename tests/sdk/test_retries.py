"""Retries, backoff and idempotency keys against the real server; faults are injected in the transport."""

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import visor

from tenants.models import Plan
from tests.face_images import person_image
from tests.identity.conftest import make_tenant_api
from tests.sdk.conftest import RecordingTransport

pytestmark = pytest.mark.django_db(transaction=True)
FAST = visor.RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.05)


@contextmanager
def _client(server, transport, policy=FAST) -> Iterator[visor.Client]:
    # The SDK leaves a caller's own HTTP client open; one left open keeps a live-server thread, and its
    # database connection, waiting on the kept-alive socket.
    with (
        httpx.Client(transport=transport) as http,
        server.client(http_client=http, retry_policy=policy) as client,
    ):
        yield client


def test_a_404_is_not_retried(visor_server):
    transport = RecordingTransport()
    with _client(visor_server, transport) as client, pytest.raises(visor.NotFoundError):
        client.galleries.get("00000000-0000-0000-0000-000000000000")
    assert transport.statuses == [404]


def test_a_post_retried_after_a_dropped_connection_reuses_its_idempotency_key_and_enrolls_once(visor_server):
    def drop_first_enrollment(request, attempt):
        return "drop-after-send" if request.url.path.endswith("/faces") and attempt <= 3 else None

    transport = RecordingTransport(drop_first_enrollment)
    with _client(visor_server, transport) as client:
        gallery = client.galleries.create(name="Staff")
        subject = client.subjects.create(gallery_id=gallery.id, external_id="ann")
        face = client.faces.enroll(subject_id=subject.id, image=person_image(7))
        faces = list(client.faces.list(subject_id=subject.id))

    posts = [r for r in transport.requests if r.method == "POST" and r.url.path.endswith("/faces")]
    assert len(posts) == 2, transport.statuses
    keys = {r.headers["Idempotency-Key"] for r in posts}
    assert len(keys) == 1
    assert keys != {""}
    assert [f.id for f in faces] == [face.id]
    # Every POST carries a key, and different calls get different keys.
    all_keys = [r.headers.get("Idempotency-Key") for r in transport.requests if r.method == "POST"]
    assert all(all_keys)
    assert len(set(all_keys)) == 3


def test_a_5xx_is_retried_with_the_same_idempotency_key(visor_server):
    def fail_once(request, attempt):
        return httpx.Response(503, json={"title": "Unavailable"}) if attempt == 1 else None

    transport = RecordingTransport(fail_once)
    with _client(visor_server, transport) as client:
        gallery = client.galleries.create(name="Once")
        assert [g.id for g in client.galleries.list()] == [gallery.id]
    assert transport.statuses[:2] == [503, 201]
    assert (
        transport.requests[0].headers["Idempotency-Key"] == transport.requests[1].headers["Idempotency-Key"]
    )


def test_a_5xx_that_persists_raises_server_error_after_the_retries(visor_server):
    transport = RecordingTransport(lambda request, attempt: httpx.Response(502, text="bad gateway"))
    with _client(visor_server, transport) as client, pytest.raises(visor.ServerError) as error:
        client.tenant()
    assert error.value.status == 502
    assert len(transport.requests) == 1 + FAST.max_retries


def test_rate_limited_requests_wait_for_retry_after_and_then_succeed(
    live_server, celery_worker, transactional_db
):
    api = make_tenant_api("Tight")
    Plan.objects.filter(pk=api.tenant.plan_id).update(requests_per_second=1, burst=1)
    transport = RecordingTransport()
    started = time.monotonic()
    with (
        httpx.Client(transport=transport) as http,
        visor.Client(api_key=api.key, base_url=live_server.url, http_client=http) as client,
    ):
        for _ in range(3):
            client.tenant()
    assert 429 in transport.statuses
    assert transport.statuses.count(200) == 3
    assert time.monotonic() - started >= 1.0


def test_a_rate_limit_is_raised_when_retries_are_exhausted(live_server, celery_worker, transactional_db):
    api = make_tenant_api("Tight")
    Plan.objects.filter(pk=api.tenant.plan_id).update(requests_per_second=0.01, burst=1)
    with visor.Client(api_key=api.key, base_url=live_server.url) as client:
        client.tenant()
        with pytest.raises(visor.RateLimitError) as error:
            client.tenant()
    assert error.value.status == 429
    assert error.value.retry_after
    assert error.value.retry_after > 60


def test_connection_errors_are_retried_then_raised(visor_server):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = RecordingTransport()
    with (
        httpx.Client(transport=transport) as http,
        visor.Client(
            api_key="k", base_url=f"http://127.0.0.1:{port}", http_client=http, retry_policy=FAST
        ) as client,
        pytest.raises(visor.APIConnectionError),
    ):
        client.galleries.create(name="x")
    assert len(transport.requests) == 1 + FAST.max_retries
    assert len({r.headers["Idempotency-Key"] for r in transport.requests}) == 1


def _drop_the_first_answer_to(method: str):
    """A fault that forwards the first `method` request and loses its answer, as a broken connection does."""
    dropped = []

    def fault(request, attempt):
        if request.method == method and not dropped:
            dropped.append(request)
            return "drop-after-send"
        return None

    return fault


def test_a_create_whose_answer_was_lost_is_retried_without_making_a_second_one(visor_server):
    transport = RecordingTransport(_drop_the_first_answer_to("POST"))
    with _client(visor_server, transport) as client:
        gallery = client.galleries.create(name="Staff")
        galleries = list(client.galleries.list())
    subject_transport = RecordingTransport(_drop_the_first_answer_to("POST"))
    with _client(visor_server, subject_transport) as client:
        subject = client.subjects.create(gallery_id=gallery.id, external_id="ann", name="Ann")
        subjects = list(client.subjects.list(gallery_id=gallery.id))

    assert transport.statuses[:2] == [None, 201]
    assert [listed.id for listed in galleries] == [gallery.id]
    assert subject_transport.statuses[:2] == [None, 201], "the first subject again, not a 409"
    assert [(listed.id, listed.name) for listed in subjects] == [(subject.id, "Ann")]


def test_a_delete_whose_answer_was_lost_succeeds_when_its_retry_finds_nothing_left(visor_server):
    transport = RecordingTransport(_drop_the_first_answer_to("DELETE"))
    with _client(visor_server, transport) as client:
        gallery = client.galleries.create(name="Gone")
        client.galleries.delete(gallery.id)
        with pytest.raises(visor.NotFoundError):
            client.galleries.get(gallery.id)
        with pytest.raises(visor.NotFoundError):
            client.galleries.delete(gallery.id)  # a first attempt that finds nothing is still an error

    deletes = zip(transport.requests, transport.statuses, strict=True)
    assert [status for request, status in deletes if request.method == "DELETE"] == [None, 404, 404]


def test_a_503_waits_as_long_as_its_retry_after_says():
    policy = visor.RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.05)
    enrollment_failed = httpx.Response(
        503, headers={"Retry-After": "30"}, json={"type": "https://visor.dev/problems/enrollment-failed"}
    )

    delay = policy.delay_for(0, enrollment_failed)

    assert 30 <= delay <= 30.25


def test_a_delete_that_finds_nothing_after_an_error_answer_is_not_found(visor_server):
    def unavailable_first(request, attempt):
        return httpx.Response(503, json={"title": "Unavailable"}) if attempt == 1 else None

    transport = RecordingTransport(unavailable_first)
    with _client(visor_server, transport) as client, pytest.raises(visor.NotFoundError):
        client.galleries.delete("00000000-0000-0000-0000-000000000000")  # never existed

    assert transport.statuses == [503, 404], "the 503 deleted nothing: the 404 is the answer"


def test_a_delete_whose_answer_a_proxy_lost_succeeds_when_its_retry_finds_nothing_left(visor_server):
    def gateway_timeout_after_the_first_delete(request, attempt):
        if request.method == "DELETE" and attempt == 2:
            inner = httpx.HTTPTransport()
            inner.handle_request(request).close()  # the API deletes it; the proxy's answer is a 504
            inner.close()
            return httpx.Response(504, text="gateway timeout")
        return None

    transport = RecordingTransport(gateway_timeout_after_the_first_delete)
    with _client(visor_server, transport) as client:
        gallery = client.galleries.create(name="Behind a proxy")
        client.galleries.delete(gallery.id)
        with pytest.raises(visor.NotFoundError):
            client.galleries.get(gallery.id)

    assert transport.statuses[1:3] == [504, 404]
