"""Webhook events for finished jobs: signed, retried with exponential backoff, every attempt recorded.

Signature: header `Visor-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
Receivers recompute it over the raw body and refuse timestamps outside their replay window (the SDK's
`visor.webhooks.verify` uses 5 minutes).
"""

import hashlib
import hmac
import json
import time
import uuid

import httpx
from django.db import IntegrityError, transaction
from django.utils import timezone

from identity.models import Job, WebhookDelivery
from identity.serializers import job_representation
from tenants.rls import tenant_transaction

SIGNATURE_HEADER = "Visor-Signature"
DELIVERY_TIMEOUT_SECONDS = 10.0
MAX_ATTEMPTS = 8


class DeliveryFailed(Exception):
    """The endpoint did not accept the event; the task retries later."""


def sign(*, secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def record_job_event(*, job_id: str, tenant_id: str) -> uuid.UUID | None:
    """Create the job's event once, if its tenant has a webhook; returns the delivery to attempt."""
    with tenant_transaction(tenant_id):
        job = Job.objects.select_related("tenant").defer("input_image").get(id=job_id, tenant_id=tenant_id)
        url = job.tenant.webhook_url
        if not url or job.status not in (Job.Status.SUCCEEDED, Job.Status.FAILED):
            return None
        event_type = f"job.{job.status}"
        payload = {
            "id": str(uuid.uuid5(job.id, event_type)),
            "type": event_type,
            "created_at": timezone.now().isoformat(),
            "data": {"job": job_representation(job)},
        }
        try:
            with transaction.atomic():
                delivery = WebhookDelivery.objects.create(
                    tenant=job.tenant, event_type=event_type, source_id=str(job.id), url=url, payload=payload
                )
        except IntegrityError:
            delivery = WebhookDelivery.objects.get(
                tenant=job.tenant, event_type=event_type, source_id=str(job.id)
            )
        return delivery.id


def attempt_delivery(*, delivery_id: str, tenant_id: str) -> bool:
    """POST the event once; True when delivered (or already delivered), raises DeliveryFailed otherwise."""
    with tenant_transaction(tenant_id):
        delivery = WebhookDelivery.objects.select_related("tenant").get(id=delivery_id, tenant_id=tenant_id)
        if delivery.status != WebhookDelivery.Status.PENDING:
            return delivery.status == WebhookDelivery.Status.DELIVERED
        secret = delivery.tenant.webhook_secret
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=body),
        "Visor-Event-Id": delivery.payload["id"],
        "User-Agent": "Visor-Webhooks/1",
    }
    attempt = {"at": timezone.now().isoformat()}
    try:
        response = httpx.post(delivery.url, content=body, headers=headers, timeout=DELIVERY_TIMEOUT_SECONDS)
        attempt["status_code"] = response.status_code
        delivered = 200 <= response.status_code < 300
    except httpx.HTTPError as error:
        attempt["error"] = f"{type(error).__name__}: {error}"[:500]
        delivered = False
    with tenant_transaction(tenant_id):
        delivery = WebhookDelivery.objects.select_for_update().get(id=delivery_id, tenant_id=tenant_id)
        delivery.attempts = [*delivery.attempts, attempt]
        if delivered:
            delivery.status, delivery.delivered_at = WebhookDelivery.Status.DELIVERED, timezone.now()
        elif len(delivery.attempts) >= MAX_ATTEMPTS:
            delivery.status = WebhookDelivery.Status.FAILED
        delivery.save(update_fields=["attempts", "status", "delivered_at"])
    if not delivered and delivery.status == WebhookDelivery.Status.PENDING:
        raise DeliveryFailed(attempt.get("error") or f"HTTP {attempt.get('status_code')}")
    return delivered
