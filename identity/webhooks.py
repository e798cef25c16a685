"""Webhook events for finished jobs: signed, retried for 23 hours (RETRY_DELAYS_SECONDS), every attempt
recorded. Each attempt goes to the tenant's webhook as it is then, signed with its secret as it is then.

Signature: header `Visor-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`.
Receivers recompute it over the raw body and refuse timestamps outside their replay window (the SDK's
`visor.webhooks.verify` uses 5 minutes).
"""

import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime, timedelta

import httpx
from celery.exceptions import SoftTimeLimitExceeded
from django.db import IntegrityError, transaction
from django.utils import timezone

from identity.models import Job, WebhookDelivery
from identity.serializers import job_representation
from tenants.rls import operator_transaction, tenant_transaction

SIGNATURE_HEADER = "Visor-Signature"
DELIVERY_TIMEOUT_SECONDS = 10.0
# The whole attempt, enforced by the delivery task's soft time limit (identity/tasks.py).
DELIVERY_DEADLINE_SECONDS = 30
# How long each retry waits after a failed attempt: seconds at first (a receiver restarting), then every 50
# minutes, so that an event outlives a receiver that is down for most of a day (23.1 h in all; the doubling
# from 2 s this replaces gave up after 4 minutes). Never longer: a retry is a message held until its
# countdown ends, and a Redis broker hands a message not acknowledged within its visibility timeout (an hour,
# REDIS_VISIBILITY_TIMEOUT_SECONDS) to another worker, which would attempt the delivery again at once.
RETRY_DELAYS_SECONDS = (2, 10, 60, 5 * 60, 30 * 60) + (50 * 60,) * 27
# The attempt that ends a delivery as failed; `deliver_webhook` indexes the delays by retries up to it.
MAX_ATTEMPTS = len(RETRY_DELAYS_SECONDS) + 1
UNATTEMPTED_DELIVERY_AFTER = timedelta(minutes=10)
UNATTEMPTED_DELIVERIES_PER_SWEEP = 500
# Every retry chain ends within 23.1 h of its dispatch; one still pending well after that lost its chain (its
# worker killed past the time limit, a message lost after the first attempt) and would wait for ever.
ABANDONED_DELIVERY_AFTER = timedelta(seconds=sum(RETRY_DELAYS_SECONDS)) + timedelta(hours=2)


class DeliveryFailed(Exception):
    """The endpoint did not accept the event; the task retries later."""


def sign(*, secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def record_job_event(*, job: Job) -> None:
    """The finished job's event, created once if its tenant has a webhook, and its delivery task sent once
    the transaction commits.

    Call it inside the transaction that finishes the job (with `job.tenant` loaded): the event commits
    with the outcome it announces, so a worker that dies after the commit cannot lose it
    (`redispatch_unattempted_deliveries` sends a delivery whose task never ran).
    """
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
    _dispatch_on_commit(
        delivery_id=delivery.id, tenant_id=job.tenant_id, dispatched_at=delivery.dispatched_at
    )


def _dispatch_on_commit(*, delivery_id, tenant_id, dispatched_at: datetime) -> None:
    """Send the delivery's task when the transaction commits, naming the dispatch it belongs to: once the
    sweep sends a delivery again, the earlier message (only slow, not lost) finds itself superseded."""
    from identity.tasks import deliver_webhook

    kwargs = {
        "delivery_id": str(delivery_id),
        "tenant_id": str(tenant_id),
        "dispatched_at": dispatched_at.isoformat(),
    }
    transaction.on_commit(lambda: deliver_webhook.delay(**kwargs))


def attempt_delivery(*, delivery_id: str, tenant_id: str, dispatched_at: str | None = None) -> bool:
    """POST the event once; True when delivered (or already delivered), raises DeliveryFailed otherwise.
    A message of a dispatch the sweep has since replaced (`dispatched_at` no longer the delivery's) attempts
    nothing and returns False: its replacement makes the attempts, one chain of retries, not two."""
    with tenant_transaction(tenant_id):
        delivery = WebhookDelivery.objects.select_related("tenant").get(id=delivery_id, tenant_id=tenant_id)
        if delivery.status != WebhookDelivery.Status.PENDING:
            return delivery.status == WebhookDelivery.Status.DELIVERED
        if dispatched_at is not None and delivery.dispatched_at.isoformat() != dispatched_at:
            return False
        # The tenant's webhook as it is now, like its secret: a URL fixed or removed while an event waits for
        # its next retry is where that retry goes, or the event is not sent at all.
        url, secret = delivery.tenant.webhook_url, delivery.tenant.webhook_secret
    attempt = {"at": timezone.now().isoformat(), "url": url}
    delivered = False
    if not url:
        attempt["error"] = "webhook removed"
    else:
        body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(secret=secret, timestamp=timestamp, body=body),
            "Visor-Event-Id": delivery.payload["id"],
            "User-Agent": "Visor-Webhooks/1",
        }
        try:
            # Only the status is read: a receiver's body, however large or endless, cannot hold the worker.
            with httpx.stream(
                "POST", url, content=body, headers=headers, timeout=DELIVERY_TIMEOUT_SECONDS
            ) as response:
                attempt["status_code"] = response.status_code
            delivered = 200 <= response.status_code < 300
        except httpx.HTTPError as error:
            attempt["error"] = f"{type(error).__name__}: {error}"[:500]
        except SoftTimeLimitExceeded:
            # The timeout above bounds each read, not the whole exchange: a receiver trickling its headers
            # a byte at a time is cut off by the task's time limit, and the attempt counts as failed.
            attempt["error"] = f"no answer within {DELIVERY_DEADLINE_SECONDS} s"
    with tenant_transaction(tenant_id):
        delivery = WebhookDelivery.objects.select_for_update().get(id=delivery_id, tenant_id=tenant_id)
        delivery.attempts = [*delivery.attempts, attempt]
        if delivered:
            delivery.status, delivery.delivered_at = WebhookDelivery.Status.DELIVERED, timezone.now()
        elif not url or len(delivery.attempts) >= MAX_ATTEMPTS:
            delivery.status = WebhookDelivery.Status.FAILED
        delivery.save(update_fields=["attempts", "status", "delivered_at"])
    if not delivered and delivery.status == WebhookDelivery.Status.PENDING:
        raise DeliveryFailed(attempt.get("error") or f"HTTP {attempt.get('status_code')}")
    return delivered


def redispatch_unattempted_deliveries(
    *,
    unattempted_for: timedelta = UNATTEMPTED_DELIVERY_AFTER,
    batch_size: int = UNATTEMPTED_DELIVERIES_PER_SWEEP,
) -> int:
    """Send again the task of every pending delivery never attempted `unattempted_for` after its task was last
    sent, oldest first and at most `batch_size` a sweep; returns how many. Its task went with a killed worker
    or a broker outage; later attempts are the task's own retries. A delivery that was only slow keeps one
    chain of attempts: its first message finds itself superseded (`attempt_delivery`)."""
    now = timezone.now()
    with operator_transaction():
        unattempted = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(
                status=WebhookDelivery.Status.PENDING, attempts=[], dispatched_at__lt=now - unattempted_for
            )
            .order_by("dispatched_at")
            .values_list("id", "tenant_id")[:batch_size]
        )
        WebhookDelivery.objects.filter(id__in=[delivery_id for delivery_id, _ in unattempted]).update(
            dispatched_at=now
        )
        for delivery_id, tenant_id in unattempted:
            _dispatch_on_commit(delivery_id=delivery_id, tenant_id=tenant_id, dispatched_at=now)
    return len(unattempted)


def fail_abandoned_deliveries(*, pending_for: timedelta = ABANDONED_DELIVERY_AFTER) -> int:
    """Mark failed every delivery still pending `pending_for` after its task was last sent, so that no event
    waits for ever and monitoring sees it (its attempts are kept); returns how many."""
    with operator_transaction():
        return WebhookDelivery.objects.filter(
            status=WebhookDelivery.Status.PENDING, dispatched_at__lt=timezone.now() - pending_for
        ).update(status=WebhookDelivery.Status.FAILED)
