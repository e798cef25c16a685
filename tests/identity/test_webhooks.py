import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from identity.models import WebhookDelivery
from tenants.rls import operator_transaction
from tests.face_images import person_image

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_worker")]


class Receiver:
    """A webhook endpoint on loopback that fails the first `failures` deliveries."""

    def __init__(self, failures: int = 0):
        self.failures = failures
        self.received: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failures > 0:
                    receiver.failures -= 1
                    self.send_response(503)
                else:
                    receiver.received.append((dict(self.headers), body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        return self.received


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
    with operator_transaction():
        delivery = WebhookDelivery.objects.get(source_id=event["data"]["job"]["id"])
    assert delivery.status == "delivered"
    assert [attempt.get("status_code") for attempt in delivery.attempts] == [503, 204]
