"""Celery tasks of the identity API. Each takes ids as keyword arguments and is safe to run twice."""

from datetime import timedelta

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django.db import connection
from django.db.models import Min
from django.utils import timezone

from identity import search, services, webhooks
from identity.models import Gallery, PendingObjectDeletion
from tenants.actors import Actor
from tenants.rls import operator_transaction, tenant_transaction


class EnrollmentTask(Task):
    def on_failure(self, exc, task_id, args, kwargs, einfo):
        """Out of retries, or past the hard time limit: the job is marked failed (clients and webhooks learn
        of it), never left queued."""
        job = {"job_id": kwargs["job_id"], "tenant_id": kwargs["tenant_id"]}
        if isinstance(exc, TimeLimitExceeded):
            services.reject_unprocessable_image(**job, detail="Enrollment ran past its time limit.")
        else:
            services.fail_enrollment_job(**job, detail=f"{type(exc).__name__}: {exc}")


# An enrollment takes well under a second: one past the soft time limit (a decode that never ends) is the
# image's doing, not the infrastructure's, and is not retried; the hard limit catches one that ignores the
# soft one. Both need the prefork pool (the default; thread and solo pools ignore time limits).
@shared_task(
    name="enrollment.enroll_face",
    bind=True,
    base=EnrollmentTask,
    max_retries=5,
    default_retry_delay=2,
    soft_time_limit=120,
    time_limit=150,
)
def enroll_face(self, *, job_id: str, tenant_id: str) -> str:
    try:
        return services.process_face_enrollment(job_id=job_id, tenant_id=tenant_id).status
    except SoftTimeLimitExceeded:
        return services.reject_unprocessable_image(
            job_id=job_id, tenant_id=tenant_id, detail="Enrollment ran past its time limit."
        ).status
    except Exception as error:
        # Rejections end the job; an exception here is infrastructure (database, S3) and worth a retry.
        raise self.retry(exc=error, countdown=2**self.request.retries) from error


@shared_task(name="maintenance.redispatch_stalled_jobs")
def redispatch_stalled_jobs(
    *, stalled_after_seconds: float = services.STALLED_JOB_AFTER.total_seconds()
) -> int:
    """Beat task: jobs whose message was lost with a killed worker are sent again."""
    return services.redispatch_stalled_jobs(stalled_for=timedelta(seconds=stalled_after_seconds))


@shared_task(name="maintenance.purge_expired_idempotency_keys")
def purge_expired_idempotency_keys() -> int:
    """Beat task: Idempotency-Keys are kept for their lifetime (24 h), not forever."""
    return services.purge_expired_idempotency_keys()


# The sweep of pending image deletions runs every 15 minutes (infra/celery.py).
PURGE_RETRY_HORIZON_SECONDS = 600


@shared_task(name="maintenance.purge_deleted_images", bind=True, max_retries=10)
def purge_deleted_images(self, *, tenant_id: str) -> int:
    removed = services.purge_deleted_images(tenant_id=tenant_id)
    with tenant_transaction(tenant_id):
        next_due = PendingObjectDeletion.objects.filter(tenant_id=tenant_id).aggregate(
            next_due=Min("retry_at")
        )["next_due"]
    if next_due is not None:
        wait = max(1.0, (next_due - timezone.now()).total_seconds())
        # Rows due later are left to the sweep: a longer countdown would pass Redis's visibility timeout
        # (the task then runs twice), and every deletion meanwhile starts a chain of its own.
        if wait <= PURGE_RETRY_HORIZON_SECONDS:
            raise self.retry(countdown=wait)
    return removed


@shared_task(name="maintenance.sweep_pending_image_deletions")
def sweep_pending_image_deletions() -> int:
    """Beat task: picks up deletions whose own task gave up (an S3 outage longer than its retries)."""
    with operator_transaction():
        tenant_ids = {str(tid) for tid in PendingObjectDeletion.objects.values_list("tenant_id", flat=True)}
    for tenant_id in tenant_ids:
        purge_deleted_images.delay(tenant_id=tenant_id)
    return len(tenant_ids)


@shared_task(name="maintenance.expire_stored_images")
def expire_stored_images() -> int:
    """Beat task: each tenant's images older than its retention setting are purged from S3."""
    from tenants.models import Tenant

    with operator_transaction():
        tenants = list(Tenant.objects.all())
    expired = 0
    for tenant in tenants:
        with tenant_transaction(tenant.id):
            expired += services.expire_stored_images(tenant=tenant)
    return expired


@shared_task(name="maintenance.erase_closed_tenants")
def erase_closed_tenants() -> int:
    """Beat task: the galleries of closed tenants are deleted, their templates at once and their images
    through the outbox. Returns how many galleries."""
    from tenants.models import Tenant

    with operator_transaction():
        closed = list(
            Tenant.objects.filter(status=Tenant.Status.CLOSED, id__in=Gallery.objects.values("tenant_id"))
        )
    erased = 0
    for tenant in closed:
        with tenant_transaction(tenant.id):
            erased += services.erase_closed_tenant(tenant=tenant, actor=Actor.system("tenant-closure"))
    return erased


@shared_task(name="maintenance.build_gallery_ann_index")
def build_gallery_ann_index(*, gallery_id: str, tenant_id: str) -> str:
    connection.ensure_connection()
    name = search.build_ann_index(gallery_id=gallery_id)
    if name is None:  # the build running now names the index once it is made
        return ""
    with tenant_transaction(tenant_id):
        Gallery.objects.filter(id=gallery_id, tenant_id=tenant_id).update(ann_index_name=name)
    return name


@shared_task(name="maintenance.drop_gallery_ann_index")
def drop_gallery_ann_index(*, gallery_id: str) -> None:
    search.drop_ann_index(gallery_id=gallery_id)


@shared_task(name="maintenance.redispatch_unattempted_webhooks")
def redispatch_unattempted_webhooks(
    *, unattempted_after_seconds: float = webhooks.UNATTEMPTED_DELIVERY_AFTER.total_seconds()
) -> int:
    """Beat task: webhook deliveries whose first task was lost are sent again, and those whose retries were
    lost are marked failed."""
    webhooks.fail_abandoned_deliveries()
    return webhooks.redispatch_unattempted_deliveries(
        unattempted_for=timedelta(seconds=unattempted_after_seconds)
    )


@shared_task(
    name="webhooks.deliver_webhook",
    bind=True,
    max_retries=webhooks.MAX_ATTEMPTS - 1,
    soft_time_limit=webhooks.DELIVERY_DEADLINE_SECONDS,
    time_limit=webhooks.DELIVERY_DEADLINE_SECONDS + 30,
)
def deliver_webhook(self, *, delivery_id: str, tenant_id: str, dispatched_at: str | None = None) -> bool:
    try:
        return webhooks.attempt_delivery(
            delivery_id=delivery_id, tenant_id=tenant_id, dispatched_at=dispatched_at
        )
    except (webhooks.DeliveryFailed, SoftTimeLimitExceeded) as failure:  # the limit outside the POST too
        delays = webhooks.RETRY_DELAYS_SECONDS
        raise self.retry(
            exc=failure, countdown=delays[min(self.request.retries, len(delays) - 1)]
        ) from failure
