"""Galleries of subjects, their enrolled faces and the face templates search runs on.

Every table here is tenant data: it carries `tenant_id` and is under PostgreSQL row-level security (see the
migrations), on top of the explicit tenant scoping in selectors and services.
"""

import uuid

from django.db import models
from django.utils import timezone
from pgvector.django import VectorField

EMBEDDING_DIMENSIONS = 128


class Gallery(models.Model):
    """A search scope, like a collection: identify searches one gallery."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="galleries")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    # The embedding model its templates were made with; templates of different models never mix.
    model_version = models.CharField(max_length=100)
    # Set once the gallery is large enough to get its own approximate (HNSW) index.
    ann_index_name = models.CharField(max_length=63, blank=True, default="")
    # Kept by the subject services in the transaction that adds or removes a subject: identify's default
    # threshold depends on it, and counting a large gallery per request would cost more than the search.
    subject_count = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "created_at", "id"])]

    def __str__(self) -> str:
        return self.name


class Subject(models.Model):
    """A person in a gallery, known to the customer by their own `external_id`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    gallery = models.ForeignKey(Gallery, on_delete=models.CASCADE, related_name="subjects")
    external_id = models.CharField(max_length=200)
    name = models.CharField(max_length=200, blank=True, default="")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["gallery", "external_id"], name="subject_external_id_unique_in_gallery"
            )
        ]
        indexes = [models.Index(fields=["gallery", "created_at", "id"])]

    def __str__(self) -> str:
        return self.external_id


class Face(models.Model):
    """One enrolled face image of a subject. Its templates are what search compares against."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    gallery = models.ForeignKey(Gallery, on_delete=models.CASCADE, related_name="faces")
    subject = models.ForeignKey(Subject, on_delete=models.CASCADE, related_name="faces")
    bbox = models.JSONField()
    landmarks = models.JSONField()
    detection_score = models.FloatField()
    quality_score = models.FloatField()
    quality_issues = models.JSONField(default=list)
    masked = models.BooleanField()
    mask_probability = models.FloatField()
    model_version = models.CharField(max_length=100)
    # S3 key under tenants/<tenant_id>/, or empty when the tenant does not store images.
    image_key = models.CharField(max_length=300, blank=True, default="")
    image_sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["subject", "created_at", "id"])]

    def __str__(self) -> str:
        return f"face {self.id}"


class FaceTemplate(models.Model):
    """An embedding of a face: the original, or one the pipeline synthesised (a masked variant)."""

    class Kind(models.TextChoices):
        ORIGINAL = "original"
        SYNTHETIC_MASK = "synthetic_mask"

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    gallery = models.ForeignKey(Gallery, on_delete=models.CASCADE, related_name="+")
    subject = models.ForeignKey(Subject, on_delete=models.CASCADE, related_name="+")
    face = models.ForeignKey(Face, on_delete=models.CASCADE, related_name="templates")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    embedding = VectorField(dimensions=EMBEDDING_DIMENSIONS)
    model_version = models.CharField(max_length=100)

    class Meta:
        # (gallery, id): the templates added to a gallery since its codes were made (identity.quantised_scan).
        indexes = [models.Index(fields=["gallery", "model_version"]), models.Index(fields=["gallery", "id"])]

    def __str__(self) -> str:
        return f"{self.kind} template of face {self.face_id}"


class QualityFilter(models.TextChoices):
    """How strict enrollment is about the face's quality (the `quality_filter` option, like Rekognition's
    QualityFilter): `auto` applies the enrollment floors, `low` the lenient floors identification uses,
    `none` refuses a face for no quality reason (a face must still be found, and be the only one)."""

    AUTO = "auto"
    LOW = "low"
    NONE = "none"


class Job(models.Model):
    """Asynchronous work a client can poll (`GET /v1/jobs/{id}`) or be told about by webhook."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    class Kind(models.TextChoices):
        ENROLL_FACE = "enroll_face"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    api_key = models.ForeignKey("tenants.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+")
    kind = models.CharField(max_length=30, choices=Kind.choices)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    subject = models.ForeignKey(Subject, null=True, on_delete=models.SET_NULL, related_name="+")
    options = models.JSONField(default=dict)
    # The uploaded image, kept only until the worker has processed it.
    input_image = models.BinaryField(null=True)
    result = models.JSONField(null=True)
    error = models.JSONField(null=True)
    request_id = models.CharField(max_length=128, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # When its task was last sent to the broker: a job unfinished long after is sent again.
    dispatched_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)

    class Meta:
        indexes = [
            models.Index(fields=["tenant", "status", "created_at"]),
            models.Index(
                fields=["dispatched_at"],
                condition=models.Q(status__in=["queued", "running"]),
                name="identity_job_unfinished",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} job {self.id} ({self.status})"


class IdempotentRequest(models.Model):
    """The first answer to a request sent with an `Idempotency-Key`, replayed to its retries."""

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    # method + path + a hash of the body: the same key with a different request is a client error.
    fingerprint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    body = models.JSONField()
    # The enrollment job the request queued: a job that fails through no fault of the request releases it.
    job = models.ForeignKey("Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "key"], name="idempotency_key_unique_per_tenant")
        ]

    def __str__(self) -> str:
        return self.key


class PendingObjectDeletion(models.Model):
    """An S3 object to delete, written in the same transaction that deleted its face (transactional outbox).

    A task deletes the object and then the row; a failure leaves the row for a later sweep, so an object
    is retried until it is gone. A failing row waits longer after each attempt (`retry_at`), so rows that
    keep failing cannot hold newer deletions back behind them.
    """

    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=300)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    retry_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "retry_at"])]

    def __str__(self) -> str:
        return self.key


class WebhookDelivery(models.Model):
    """One event for a tenant's webhook endpoint, with every attempt to deliver it."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("tenants.Tenant", on_delete=models.CASCADE, related_name="+")
    event_type = models.CharField(max_length=50)
    # One event per job and type: a redelivered task cannot announce the same outcome twice.
    source_id = models.CharField(max_length=100)
    url = models.URLField(max_length=2000)
    payload = models.JSONField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempts = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True)
    # When its first delivery task was last sent to the broker: one never attempted long after is sent again.
    dispatched_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "event_type", "source_id"], name="webhook_event_once")
        ]
        indexes = [
            models.Index(
                fields=["dispatched_at"],
                condition=models.Q(status="pending", attempts=[]),
                name="identity_webhook_unattempted",
            )
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.source_id} ({self.status})"
