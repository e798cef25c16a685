import contextlib
import hashlib
import hmac
import json
import threading
import time
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from django.utils import timezone

from identity import webhooks
from identity.models import WebhookDelivery
from tenants.rls import operator_transaction
from tests.face_images import person_image

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_worker")]


class Receiver:
    """A webhook endpoint on loopback that fails the first `failures` deliveries; with `endless_body` it
    accepts each one with a 200 whose body never ends. A refusal is answered once `answer_refusals` is set
    (at once unless the test clears it), and `refusing` is set while one waits."""

    def __init__(self, failures: int = 0, *, endless_body: bool = False):
        self.failures = failures
        self.received: list[tuple[dict, bytes]] = []
        self.refusing, self.answer_refusals = threading.Event(), threading.Event()
        self.answer_refusals.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failures > 0:
                    receiver.failures -= 1
                    receiver.refusing.set()
                    receiver.answer_refusals.wait(30)
                    self.send_response(503)
                elif endless_body:
                    receiver.received.append((dict(self.headers), body))
                    self.send_response(200)
                    self.end_headers()
                    with contextlib.suppress(OSError):  # the client hangs up
                        while True:
                            self.wfile.write(b"x" * 65536)
                            time.sleep(0.01)
                    return
                else:
                    receiver.received.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.received


def _settled_delivery(timeout: float = 30, **lookup) -> WebhookDelivery:
    """The delivery once the worker has saved the attempt that the receiver saw.

    The receiver has the body as soon as it answers, and the worker saves the attempt only after the answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        with operator_transaction():
            delivery = WebhookDelivery.objects.get(**lookup)
        if delivery.status != WebhookDelivery.Status.PENDING or time.monotonic() > deadline:
            return delivery
        time.sleep(0.1)


@pytest.fixture
def receiver():
    endpoint = Receiver(failures=1)
    yield endpoint
    endpoint.server.shutdown()


def test_a_finished_job_is_announced_with_a_verifiable_signature_and_retried_after_a_failure(
    tenant_api, receiver
):
    tenant = tenant_api.tenant
    with operator_transaction():
        tenant.webhook_url = receiver.url
        tenant.save(update_fields=["webhook_url"])
    gallery = tenant_api.create_gallery()
    subject = tenant_api.create_subject(gallery["id"], "emp-1")

    face = tenant_api.enroll(subject["id"], person_image(61)).json()
    [(headers, body)] = receiver.wait_for(1)

    event = json.loads(body)
    assert event["type"] == "job.succeeded"
    assert event["data"]["job"]["result"]["face"]["id"] == face["id"]
    timestamp, signature = (part.split("=", 1)[1] for part in headers["Visor-Signature"].split(","))
    expected = hmac.new(
        tenant.webhook_secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(signature, expected)
    assert abs(time.time() - int(timestamp)) < 120
    delivery = _settled_delivery(source_id=event["data"]["job"]["id"])
    assert delivery.status == "delivered"
    assert [attempt.get("status_code") for attempt in delivery.attempts] == [503, 204]


@pytest.fixture
def reliable_receiver():
    endpoint = Receiver()
    yield endpoint
    endpoint.server.shutdown()


def _set_webhook(tenant, url: str) -> None:
    with operator_transaction():
        tenant.webhook_url = url
        tenant.save(update_fields=["webhook_url"])


def test_the_event_is_recorded_in_the_transaction_that_finishes_the_job(tenant_api, reliable_receiver):
    _set_webhook(tenant_api.tenant, reliable_receiver.url)
    subject = tenant_api.create_subject(tenant_api.create_gallery()["id"], "emp-1")

    response = tenant_api.enroll(subject["id"], person_image(62))

    assert response.status_code == 201
    # No task stands between the finished job and its event: it is there the moment the job is.
    with operator_transaction():
        (delivery,) = WebhookDelivery.objects.filter(tenant=tenant_api.tenant)
    assert delivery.event_type == "job.succeeded"
    assert delivery.payload["data"]["job"]["result"]["face"]["id"] == response.json()["id"]
    assert len(reliable_receiver.wait_for(1)) == 1


def test_a_receiver_whose_answer_never_ends_does_not_hold_the_worker(tenant_api):
    endless = Receiver(endless_body=True)
    _set_webhook(tenant_api.tenant, endless.url)
    subject = tenant_api.create_subject(tenant_api.create_gallery()["id"], "emp-1")

    assert tenant_api.enroll(subject["id"], person_image(63)).status_code == 201
    delivery = _settled_delivery(tenant=tenant_api.tenant)

    endless.server.shutdown()
    assert delivery.status == "delivered"
    assert [attempt.get("status_code") for attempt in delivery.attempts] == [200]


def test_a_retry_goes_to_the_webhook_as_the_tenant_has_it_now(tenant_api, reliable_receiver):
    broken = Receiver(failures=1)
    with _first_attempt_refused_by(broken, tenant_api, seed=7):
        _set_webhook(tenant_api.tenant, reliable_receiver.url)
    [(_, body)] = reliable_receiver.wait_for(1)
    delivery = _settled_delivery(tenant=tenant_api.tenant)

    broken.server.shutdown()
    assert json.loads(body)["type"] == "job.succeeded"
    assert delivery.status == "delivered"
    assert delivery.attempts[0]["url"] == broken.url
    assert delivery.attempts[-1]["url"] == reliable_receiver.url


def test_an_event_waiting_for_a_retry_is_dropped_when_the_webhook_is_removed(tenant_api):
    broken = Receiver(failures=1)
    with _first_attempt_refused_by(broken, tenant_api, seed=8):
        _set_webhook(tenant_api.tenant, "")
    delivery = _settled_delivery(tenant=tenant_api.tenant)

    broken.server.shutdown()
    assert delivery.status == "failed"
    assert [attempt.get("status_code", attempt.get("error")) for attempt in delivery.attempts] == [
        503,
        "webhook removed",
    ]
    assert broken.received == []


@contextlib.contextmanager
def _first_attempt_refused_by(broken: Receiver, tenant_api, *, seed: int):
    """Inside: the first attempt to deliver an enrollment's event has reached `broken`, which answers it
    (503) when the block ends, so that what the block changes is in place before any retry."""
    broken.answer_refusals.clear()
    _set_webhook(tenant_api.tenant, broken.url)
    subject = tenant_api.create_subject(tenant_api.create_gallery()["id"], "emp-1")
    assert tenant_api.enroll(subject["id"], person_image(seed)).status_code == 201
    assert broken.refusing.wait(30), "the event never reached the receiver"
    try:
        yield
    finally:
        broken.answer_refusals.set()


def test_a_tenant_without_a_webhook_gets_no_events(tenant_api):
    subject = tenant_api.create_subject(tenant_api.create_gallery()["id"], "emp-1")

    assert tenant_api.enroll(subject["id"], person_image(63)).status_code == 201

    with operator_transaction():
        assert not WebhookDelivery.objects.filter(tenant=tenant_api.tenant).exists()


def _unattempted_delivery(tenant, url: str, *, dispatched_minutes_ago: float) -> WebhookDelivery:
    """A delivery of an event to the tenant's webhook `url` whose task was sent and never ran."""
    _set_webhook(tenant, url)
    event_id = str(uuid.uuid4())
    with operator_transaction():
        return WebhookDelivery.objects.create(
            tenant=tenant,
            event_type="job.succeeded",
            source_id=event_id,
            url=url,
            payload={"id": event_id, "type": "job.succeeded", "data": {}},
            dispatched_at=timezone.now() - timedelta(minutes=dispatched_minutes_ago),
        )


def _delivery(delivery_id) -> WebhookDelivery:
    with operator_transaction():
        return WebhookDelivery.objects.get(id=delivery_id)


def test_a_delivery_whose_task_was_lost_is_sent_again_by_the_sweep(tenant_api, reliable_receiver):
    lost = _unattempted_delivery(tenant_api.tenant, reliable_receiver.url, dispatched_minutes_ago=30)
    recent = _unattempted_delivery(tenant_api.tenant, reliable_receiver.url, dispatched_minutes_ago=1)

    assert webhooks.redispatch_unattempted_deliveries() == 1

    [(headers, body)] = reliable_receiver.wait_for(1)
    assert json.loads(body)["id"] == lost.payload["id"] == headers["Visor-Event-Id"]
    assert _settled_delivery(id=lost.id).status == WebhookDelivery.Status.DELIVERED
    # One sent a minute ago may be waiting in the queue: it is left alone.
    assert (_delivery(recent.id).attempts, _delivery(recent.id).dispatched_at) == ([], recent.dispatched_at)
    assert webhooks.redispatch_unattempted_deliveries() == 0


def test_the_sweep_sends_at_most_its_batch_oldest_first(tenant_api, reliable_receiver):
    url = reliable_receiver.url
    oldest = _unattempted_delivery(tenant_api.tenant, url, dispatched_minutes_ago=50)
    older = _unattempted_delivery(tenant_api.tenant, url, dispatched_minutes_ago=40)
    old = _unattempted_delivery(tenant_api.tenant, url, dispatched_minutes_ago=30)

    assert webhooks.redispatch_unattempted_deliveries(batch_size=2) == 2

    received = reliable_receiver.wait_for(2)
    assert sorted(json.loads(body)["id"] for _, body in received) == sorted(
        [oldest.payload["id"], older.payload["id"]]
    )
    assert _delivery(old.id).dispatched_at == old.dispatched_at
    # Saved before the test ends: the database is emptied after each test, which a worker still saving an
    # attempt would deadlock with.
    assert {_settled_delivery(id=sent.id).status for sent in (oldest, older)} == {"delivered"}


def test_a_failing_receiver_is_retried_for_most_of_a_day_and_no_retry_outwaits_the_brokers_redelivery(
    settings,
):
    delays = webhooks.RETRY_DELAYS_SECONDS

    assert delays[0] <= 2, "a receiver that blinked gets the event at once"
    assert sum(delays) >= 20 * 3600
    assert max(delays) < settings.REDIS_VISIBILITY_TIMEOUT_SECONDS


def test_an_attempt_cut_off_by_the_tasks_time_limit_is_recorded_as_failed_and_retried(
    tenant_api, monkeypatch
):
    # A receiver that trickles its headers a byte at a time never trips the per-read timeout; the delivery
    # task's soft time limit interrupts it (raised here where Celery would raise it).
    delivery = _unattempted_delivery(
        tenant_api.tenant, "https://receiver.example/hooks", dispatched_minutes_ago=0
    )

    def trickling_receiver(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(webhooks.httpx, "stream", trickling_receiver)

    with pytest.raises(webhooks.DeliveryFailed, match="no answer within 30 s"):
        webhooks.attempt_delivery(delivery_id=str(delivery.id), tenant_id=str(tenant_api.tenant.id))

    recorded = _delivery(delivery.id)
    assert recorded.status == WebhookDelivery.Status.PENDING, "retried later like any failed attempt"
    assert [attempt["error"] for attempt in recorded.attempts] == ["no answer within 30 s"]


def test_a_superseded_message_of_a_pending_delivery_makes_no_attempt(tenant_api):
    delivery = _unattempted_delivery(
        tenant_api.tenant, "https://receiver.example/hooks", dispatched_minutes_ago=0
    )
    superseded = (delivery.dispatched_at - timedelta(minutes=11)).isoformat()

    attempted = webhooks.attempt_delivery(
        delivery_id=str(delivery.id), tenant_id=str(tenant_api.tenant.id), dispatched_at=superseded
    )

    assert attempted is False
    assert _delivery(delivery.id).attempts == [], "its replacement makes the attempts, one chain of retries"


def test_a_delivery_whose_retries_were_lost_is_marked_failed_not_left_pending_for_ever(tenant_api):
    url = "https://receiver.example/hooks"
    chain_lost = _unattempted_delivery(tenant_api.tenant, url, dispatched_minutes_ago=26 * 60)
    still_retrying = _unattempted_delivery(tenant_api.tenant, url, dispatched_minutes_ago=20 * 60)
    with operator_transaction():
        WebhookDelivery.objects.filter(id__in=[chain_lost.id, still_retrying.id]).update(
            attempts=[{"at": "2026-12-01T00:00:00+00:00", "url": url, "status_code": 503}]
        )

    assert webhooks.fail_abandoned_deliveries() == 1

    assert _delivery(chain_lost.id).status == WebhookDelivery.Status.FAILED
    assert len(_delivery(chain_lost.id).attempts) == 1, "its attempts are kept"
    assert _delivery(still_retrying.id).status == WebhookDelivery.Status.PENDING
