"""Tenants, their plans and API keys (the control plane), and the tenant data this app owns.

Control-plane tables (Plan, Tenant, ApiKey, RateLimitBucket) are NOT under row-level security: an API key
has to be looked up before anyone knows which tenant is calling. They hold no customer content.
Tenant data (AuditEvent, UsageRecord, and every table of the identity app) carries `tenant_id` and is under
forced row-level security; see tenants/rls.py.
"""

import uuid
from datetime import datetime

from django.contrib.postgres.fields import ArrayField
from django.core.validators import MinValueValidator
from django.db import models


class Operation(models.TextChoices):
    """Billable operations. Plans include a number of units of each per calendar month (UTC)."""

    ENROLL = "enroll", "Enroll"
    IDENTIFY = "identify", "Identify"
    VERIFY = "verify", "Verify"
    DETECT = "detect", "Detect"
    STORED_FACE_MONTHS = "stored_face_months", "Stored face-months"


class Scope(models.TextChoices):
    """What an API key may do. `manage` implies every other scope (see tenants/permissions.py)."""

    READ = "read", "Read"
    ENROLL = "enroll", "Enroll"
    IDENTIFY = "identify", "Identify"
    MANAGE = "manage", "Manage"


class Plan(models.Model):
    name = models.CharField(max_length=64, unique=True)
    monthly_price = models.DecimalField(
        max_digits=12, decimal_places=4, default=0, validators=[MinValueValidator(0)]
    )
    currency = models.CharField(max_length=3, default="USD", help_text="ISO 4217 code, e.g. USD.")

    included_enroll = models.PositiveBigIntegerField(default=0)
    included_identify = models.PositiveBigIntegerField(default=0)
    included_verify = models.PositiveBigIntegerField(default=0)
    included_detect = models.PositiveBigIntegerField(default=0)
    included_stored_face_months = models.PositiveBigIntegerField(default=0)

    overage_enroll_per_1000 = models.DecimalField(
        max_digits=12, decimal_places=4, default=0, validators=[MinValueValidator(0)]
    )
    overage_identify_per_1000 = models.DecimalField(
        max_digits=12, decimal_places=4, default=0, validators=[MinValueValidator(0)]
    )
    overage_verify_per_1000 = models.DecimalField(
        max_digits=12, decimal_places=4, default=0, validators=[MinValueValidator(0)]
    )
    overage_detect_per_1000 = models.DecimalField(
        max_digits=12, decimal_places=4, default=0, validators=[MinValueValidator(0)]
    )
    overage_stored_face_months_per_1000 = models.DecimalField(
        max_digits=12, decimal_places=4, default=0, validators=[MinValueValidator(0)]
    )
    allows_overage = models.BooleanField(
        default=False, help_text="Past the included units, bill overage instead of refusing the request."
    )

    # Fractional rates are allowed: 0.1 is one request every ten seconds.
    requests_per_second = models.FloatField(default=10, validators=[MinValueValidator(0.001)])
    burst = models.PositiveIntegerField(
        default=20, validators=[MinValueValidator(1)], help_text="Requests a key may make at once."
    )
    max_gallery_faces = models.PositiveIntegerField(default=10_000, help_text="Faces per gallery.")
    max_tenant_faces = models.PositiveBigIntegerField(default=10_000, help_text="Faces across the tenant.")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=models.Q(requests_per_second__gt=0), name="plan_rate_positive"),
            models.CheckConstraint(condition=models.Q(burst__gte=1), name="plan_burst_positive"),
            models.CheckConstraint(
                condition=models.Q(currency__regex=r"^[A-Z]{3}$"), name="plan_currency_iso"
            ),
            # A negative price would put negative amounts on invoices and exports.
            models.CheckConstraint(
                condition=models.Q(
                    monthly_price__gte=0,
                    overage_enroll_per_1000__gte=0,
                    overage_identify_per_1000__gte=0,
                    overage_verify_per_1000__gte=0,
                    overage_detect_per_1000__gte=0,
                    overage_stored_face_months_per_1000__gte=0,
                ),
                name="plan_prices_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def included_units(self, operation: str) -> int:
        return getattr(self, f"included_{Operation(operation).value}")


class Tenant(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        CLOSED = "closed", "Closed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=63, unique=True)
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tenants")

    default_match_threshold = models.FloatField(
        null=True, blank=True, help_text="Empty: the calibrated default of the running model."
    )
    store_images = models.BooleanField(
        default=False, help_text="Keep enrolled photos in object storage (off: only templates are kept)."
    )
    image_retention_days = models.PositiveIntegerField(default=30)
    webhook_url = models.URLField(blank=True, default="")
    webhook_secret = models.CharField(max_length=128, help_text="Signs webhook deliveries (HMAC-SHA256).")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(default_match_threshold__isnull=True)
                | models.Q(default_match_threshold__gte=-1, default_match_threshold__lte=1),
                name="tenant_threshold_is_a_similarity",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.status == self.Status.ACTIVE


class ApiKey(models.Model):
    """A tenant's credential. The full key is `<prefix>_<secret>`; only HMAC(pepper, secret) is stored."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=32, unique=True)
    secret_hash = models.CharField(max_length=64)
    scopes = ArrayField(models.CharField(max_length=16, choices=Scope.choices))
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix} ({self.name})"

    def is_usable_at(self, moment: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > moment)


class RateLimitBucket(models.Model):
    """The PostgreSQL token bucket of one API key, used when no Redis is configured.

    Control-plane state with no customer content, keyed by the key, so it is not under row-level security.
    """

    api_key = models.OneToOneField(ApiKey, on_delete=models.CASCADE, primary_key=True, related_name="+")
    tokens = models.FloatField()
    refilled_at = models.DateTimeField()
    # Whether the request that last touched the bucket was admitted; the atomic upsert returns it.
    last_request_allowed = models.BooleanField()

    def __str__(self) -> str:
        return f"{self.tokens:.1f} tokens"


class AuditEvent(models.Model):
    """One write by an operator, an API key or the system. Tenant data: under row-level security.

    `tenant` is empty for operator actions that belong to no tenant (plans); only the operator path sees
    those.
    """

    class ActorType(models.TextChoices):
        OPERATOR = "operator", "Operator"
        API_KEY = "api_key", "API key"
        SYSTEM = "system", "System"

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    actor_type = models.CharField(max_length=16, choices=ActorType.choices)
    actor_id = models.CharField(max_length=64, blank=True, default="")
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=100)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    request_id = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "created_at"])]

    def __str__(self) -> str:
        return f"{self.action} {self.object_type}:{self.object_id} by {self.actor_label}"


class UsageRecord(models.Model):
    """The metering ledger: one row per billable unit of work. Tenant data: under row-level security.

    Written idempotently (unique per tenant, operation and idempotency key) so a retried request or task is
    counted once. Quotas read it; the billing app builds aggregates and invoices on it.
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage_records")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    operation = models.CharField(max_length=32, choices=Operation.choices)
    units = models.PositiveIntegerField()
    idempotency_key = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "operation", "idempotency_key"], name="usage_record_counted_once"
            ),
        ]
        indexes = [models.Index(fields=["tenant", "operation", "created_at"])]

    def __str__(self) -> str:
        return f"{self.units} {self.operation}"


class DailyUsage(models.Model):
    """Units per tenant, operation, API key and UTC day, summed from the UsageRecord ledger. Tenant data.

    A cache of the ledger, never written directly: `tenants.billing.rebuild_daily_usage` replaces a day's rows
    from the ledger, so the ledger stays the single source of truth. The key is identified by its prefix
    (unique and never reused) and is "" for usage no key caused (the stored-faces snapshot).
    """

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    day = models.DateField()
    operation = models.CharField(max_length=32, choices=Operation.choices)
    api_key_prefix = models.CharField(max_length=32, blank=True, default="")
    units = models.PositiveBigIntegerField()

    class Meta:
        verbose_name_plural = "daily usage"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "day", "operation", "api_key_prefix"], name="daily_usage_one_row_per_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.day} {self.units} {self.operation}"


class Invoice(models.Model):
    """A tenant's bill for one calendar month (UTC). Tenant data: under row-level security.

    A draft is recomputed from the ledger while its month is open; after the month closes it is finalized
    and from then on never changes (the services refuse, and a database trigger refuses any write).
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        FINAL = "final", "Final"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    period_start = models.DateTimeField(help_text="First instant of the month, UTC (inclusive).")
    period_end = models.DateTimeField(help_text="First instant of the next month, UTC (exclusive).")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    currency = models.CharField(max_length=3)
    monthly_price = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    subtotal = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    total = models.DecimalField(max_digits=14, decimal_places=2, default=0)
    plan_snapshot = models.JSONField(default=dict, help_text="The plan's name, prices and included units.")
    computed_at = models.DateTimeField()
    finalized_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "period_start"], name="invoice_one_per_tenant_month"),
            models.CheckConstraint(
                condition=models.Q(status="draft", finalized_at__isnull=True)
                | models.Q(status="final", finalized_at__isnull=False),
                name="invoice_finalized_at_iff_final",
            ),
        ]
        ordering = ["-period_start"]

    def __str__(self) -> str:
        return f"{self.period_start:%Y-%m} {self.status} {self.total} {self.currency}"


class InvoiceLine(models.Model):
    """One billable operation on an invoice. Tenant data (carries tenant_id for row-level security)."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    operation = models.CharField(max_length=32, choices=Operation.choices)
    units = models.PositiveBigIntegerField()
    included = models.PositiveBigIntegerField()
    billable = models.PositiveBigIntegerField()
    unit_price_per_1000 = models.DecimalField(max_digits=12, decimal_places=4)
    amount = models.DecimalField(max_digits=14, decimal_places=2)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["invoice", "operation"], name="invoice_line_one_per_operation"),
        ]

    def __str__(self) -> str:
        return f"{self.operation}: {self.amount}"
