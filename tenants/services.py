"""Writes of tenants, plans, API keys, audit events and usage, and the quota and capacity checks.

Services run in the row-level-security scope their caller chose: the operator console and management
commands call them inside `operator_transaction()`, API views and tasks inside `tenant_transaction(...)`.
Audit events are tenant data, so a write that records one outside any scope is refused by the database.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.utils import timezone
from django.utils.crypto import get_random_string
from django.utils.text import slugify

from infra.request_id import current_request_id
from tenants import api_keys, selectors
from tenants.actors import as_actor
from tenants.models import ApiKey, AuditEvent, Operation, Plan, Scope, Tenant, UsageRecord
from tenants.periods import calendar_month
from tenants.problems import CapacityExceeded, QuotaExceeded

DEFAULT_PLAN_NAME = "developer"
# The longest an API key may be issued for: ten years (a datetime could not hold millions of days).
MAX_KEY_LIFETIME_DAYS = 3650
LAST_USED_RESOLUTION = timedelta(minutes=1)
_PREFIX_ATTEMPTS = 5


# --- Audit ------------------------------------------------------------------------------------------------


def record_audit_event(
    *, tenant: Tenant | None, actor, action: str, object_type: str, object_id, details: dict | None = None
) -> AuditEvent:
    """Record a write. `actor` is `request.user` (API key principal or operator), an ApiKey, or an Actor."""
    who = as_actor(actor)
    return AuditEvent.objects.create(
        tenant=tenant,
        actor_type=who.type,
        actor_id=who.id,
        actor_label=who.label,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        request_id=current_request_id.get() or "",
        details=details or {},
    )


# --- Plans ------------------------------------------------------------------------------------------------


@transaction.atomic
def save_plan(*, plan: Plan, actor, changed_fields: list[str]) -> Plan:
    """Create or change a plan (the operator console edits plans as forms)."""
    created = plan.pk is None
    plan.full_clean()
    plan.save()
    record_audit_event(
        tenant=None,
        actor=actor,
        action="plan.created" if created else "plan.updated",
        object_type="plan",
        object_id=plan.pk,
        details={"name": plan.name, "changed": sorted(changed_fields)},
    )
    return plan


# --- Tenants ----------------------------------------------------------------------------------------------


def _available_slug(name: str) -> str:
    base = slugify(name)[:50] or "tenant"
    slug = base
    while Tenant.objects.filter(slug=slug).exists():
        slug = f"{base}-{get_random_string(6, 'abcdefghijklmnopqrstuvwxyz0123456789')}"
    return slug


@transaction.atomic
def create_tenant(*, name: str, actor, plan: Plan | None = None, slug: str | None = None) -> Tenant:
    """Without a plan the tenant gets the default one. Raises ValidationError for a taken or bad slug."""
    if slug is not None and Tenant.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": f"The slug {slug!r} is taken."})
    tenant = Tenant(
        name=name,
        slug=slug if slug is not None else _available_slug(name),
        plan=plan or Plan.objects.get(name=DEFAULT_PLAN_NAME),
        webhook_secret="whsec_" + api_keys.new_secret(),
    )
    tenant.full_clean()
    tenant.save()
    record_audit_event(
        tenant=tenant,
        actor=actor,
        action="tenant.created",
        object_type="tenant",
        object_id=tenant.id,
        details={"slug": tenant.slug, "plan": tenant.plan.name},
    )
    return tenant


TENANT_EDITABLE_FIELDS = (
    "name",
    "plan",
    "default_match_threshold",
    "store_images",
    "image_retention_days",
    "webhook_url",
)


@transaction.atomic
def update_tenant(*, tenant: Tenant, actor, changes: dict) -> Tenant:
    """Change a tenant's name, plan or settings; status changes have their own services."""
    unknown = set(changes) - set(TENANT_EDITABLE_FIELDS)
    if unknown:
        raise ValidationError(f"These tenant fields cannot be changed here: {', '.join(sorted(unknown))}.")
    for field, value in changes.items():
        setattr(tenant, field, value)
    tenant.full_clean()
    tenant.save(update_fields=[*changes, "updated_at"])
    record_audit_event(
        tenant=tenant,
        actor=actor,
        action="tenant.updated",
        object_type="tenant",
        object_id=tenant.id,
        details={"changed": sorted(changes)},
    )
    return tenant


def _change_status(*, tenant: Tenant, actor, status: str, action: str, reason: str) -> Tenant:
    tenant.status = status
    tenant.save(update_fields=["status", "updated_at"])
    record_audit_event(
        tenant=tenant,
        actor=actor,
        action=action,
        object_type="tenant",
        object_id=tenant.id,
        details={"reason": reason} if reason else {},
    )
    return tenant


def _lock_status(tenant: Tenant) -> None:
    """Lock the tenant's row until the transaction ends and read its status afresh: a status change decided
    on an object loaded earlier could undo a closure made meanwhile (two operators at once)."""
    tenant.status = Tenant.objects.select_for_update().values_list("status", flat=True).get(id=tenant.id)


@transaction.atomic
def suspend_tenant(*, tenant: Tenant, actor, reason: str = "") -> Tenant:
    """Its keys stop working with the next request: authentication reads the status every time."""
    _lock_status(tenant)
    if tenant.status == Tenant.Status.CLOSED:
        raise ValidationError("A closed tenant cannot be suspended.")
    return _change_status(
        tenant=tenant, actor=actor, status=Tenant.Status.SUSPENDED, action="tenant.suspended", reason=reason
    )


@transaction.atomic
def reactivate_tenant(*, tenant: Tenant, actor, reason: str = "") -> Tenant:
    _lock_status(tenant)
    if tenant.status == Tenant.Status.CLOSED:
        raise ValidationError("A closed tenant stays closed; create a new tenant instead.")
    return _change_status(
        tenant=tenant, actor=actor, status=Tenant.Status.ACTIVE, action="tenant.reactivated", reason=reason
    )


@transaction.atomic
def close_tenant(*, tenant: Tenant, actor, reason: str = "") -> Tenant:
    """Final: the tenant's keys are revoked too, so reopening it could not bring them back. Its stored faces
    are billed no more, and identity's `erase_closed_tenants` sweep deletes its galleries and images."""
    _lock_status(tenant)
    for api_key in ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True):
        revoke_api_key(api_key=api_key, actor=actor)
    return _change_status(
        tenant=tenant, actor=actor, status=Tenant.Status.CLOSED, action="tenant.closed", reason=reason
    )


# --- API keys ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedApiKey:
    """A new key and its full secret form: the only time the secret is available. Show it once."""

    api_key: ApiKey
    raw_key: str


def _validated_scopes(scopes) -> list[str]:
    chosen = list(dict.fromkeys(scopes))
    unknown = set(chosen) - set(Scope.values)
    if not chosen or unknown:
        raise ValidationError(
            f"Scopes must be a non-empty subset of {', '.join(Scope.values)}"
            + (f"; unknown: {', '.join(sorted(unknown))}." if unknown else ".")
        )
    return chosen


@transaction.atomic
def create_api_key(
    *, tenant: Tenant, actor, name: str, scopes, expires_at: datetime | None = None
) -> IssuedApiKey:
    scopes = _validated_scopes(scopes)
    _lock_status(tenant)  # a closure running now revokes every key, this one included once it waits
    if tenant.status == Tenant.Status.CLOSED:
        raise ValidationError("A closed tenant gets no new API keys; create a new tenant instead.")
    secret = api_keys.new_secret()
    for attempt in range(_PREFIX_ATTEMPTS):
        try:
            # A savepoint, so that the rare prefix collision can be retried inside the caller's transaction.
            with transaction.atomic():
                api_key = ApiKey.objects.create(
                    tenant=tenant,
                    name=name,
                    prefix=api_keys.new_prefix(),
                    secret_hash=api_keys.hash_secret(secret),
                    scopes=scopes,
                    expires_at=expires_at,
                )
            break
        except IntegrityError:
            if attempt == _PREFIX_ATTEMPTS - 1:
                raise
    record_audit_event(
        tenant=tenant,
        actor=actor,
        action="api_key.created",
        object_type="api_key",
        object_id=api_key.id,
        details={"prefix": api_key.prefix, "name": name, "scopes": scopes},
    )
    return IssuedApiKey(api_key=api_key, raw_key=f"{api_key.prefix}_{secret}")


@transaction.atomic
def revoke_api_key(*, api_key: ApiKey, actor) -> ApiKey:
    """Idempotent: revoking a revoked key keeps its first revocation time and records nothing."""
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        record_audit_event(
            tenant=api_key.tenant,
            actor=actor,
            action="api_key.revoked",
            object_type="api_key",
            object_id=api_key.id,
            details={"prefix": api_key.prefix},
        )
    return api_key


@transaction.atomic
def rotate_api_key(*, api_key: ApiKey, actor) -> IssuedApiKey:
    """Issue a replacement with the same name, scopes and remaining lifetime, and revoke the old key at once
    (rotation is what one does with a key that may have leaked). A revoked or expired key is refused: its
    replacement would have no lifetime left."""
    if not api_key.is_usable_at(timezone.now()):
        raise ValidationError(f"The key {api_key.prefix} is revoked or expired; issue a new key instead.")
    issued = create_api_key(
        tenant=api_key.tenant,
        actor=actor,
        name=api_key.name,
        scopes=api_key.scopes,
        expires_at=api_key.expires_at,
    )
    revoke_api_key(api_key=api_key, actor=actor)
    record_audit_event(
        tenant=api_key.tenant,
        actor=actor,
        action="api_key.rotated",
        object_type="api_key",
        object_id=api_key.id,
        details={"prefix": api_key.prefix, "replaced_by": issued.api_key.prefix},
    )
    return issued


@transaction.atomic
def create_tenant_with_api_key(
    *, name: str, actor, key_name: str, scopes, plan: Plan | None = None, slug: str | None = None
) -> tuple[Tenant, IssuedApiKey]:
    """A tenant and its first key in one step, so that onboarding never leaves a tenant without a key."""
    tenant = create_tenant(name=name, actor=actor, plan=plan, slug=slug)
    return tenant, create_api_key(tenant=tenant, actor=actor, name=key_name, scopes=scopes)


def mark_api_key_used(*, api_key: ApiKey, now: datetime) -> None:
    """Keep `last_used_at` to the minute without a write on every request."""
    if api_key.last_used_at is not None and now - api_key.last_used_at < LAST_USED_RESOLUTION:
        return
    # The guard in the UPDATE keeps concurrent requests from all writing the same minute.
    stale = now - LAST_USED_RESOLUTION
    ApiKey.objects.filter(id=api_key.id).exclude(last_used_at__gt=stale).update(last_used_at=now)
    api_key.last_used_at = now


# --- Usage, quotas and capacity ---------------------------------------------------------------------------


def record_usage(
    *,
    tenant: Tenant,
    api_key: ApiKey | None,
    operation: str,
    units: int,
    idempotency_key: str,
    at: datetime | None = None,
) -> bool:
    """Meter `units` of `operation` once per idempotency key; False when that key was already counted.

    `at` dates the record (the day it is billed in): now, unless the usage belongs to a moment already past,
    such as a snapshot's day. Run it inside the tenant's transaction (row-level security checks the row's
    tenant).
    """
    operation = Operation(operation).value
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {UsageRecord._meta.db_table}
                (tenant_id, api_key_id, operation, units, idempotency_key, created_at)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (tenant_id, operation, idempotency_key) DO NOTHING
            RETURNING id
            """,
            [
                tenant.id,
                api_key.id if api_key else None,
                operation,
                units,
                idempotency_key,
                at or timezone.now(),
            ],
        )
        return cursor.fetchone() is not None


def check_quota(*, tenant: Tenant, operation: str, units: int = 1, now: datetime | None = None) -> None:
    """Raise QuotaExceeded (429) when `units` more of `operation` would pass the plan's monthly included
    units and the plan does not allow overage. Call it inside the tenant's transaction, before the work.

    Units are the plan's: face-months for stored faces, whose ledger face-days are converted as the invoice
    converts them (tenants.billing.month_units). Concurrent requests can each pass the check at the edge of
    the quota, so a month may end a few units over; the ledger still counts every one.
    """
    plan = tenant.plan
    if plan.allows_overage:
        return
    now = now or timezone.now()
    month = calendar_month(now)
    included = plan.included_units(operation)
    used = selectors.units_used_this_month(tenant=tenant, operation=operation, now=now)
    if used + units <= included:
        return
    resets_at = month.end
    raise QuotaExceeded(
        f"The monthly quota of {included} {Operation(operation).label.lower()} units of plan {plan.name!r} "
        f"is used up ({used} used); it resets at {resets_at.isoformat()}.",
        extra={"quota": operation, "limit": included, "used": used, "resets_at": resets_at.isoformat()},
        headers={"Retry-After": str(max(1, int((resets_at - now).total_seconds())))},
    )


def check_capacity(
    *, tenant: Tenant, gallery_faces: int | None = None, tenant_faces: int | None = None
) -> None:
    """Raise CapacityExceeded (409) when the face counts a write would leave pass the plan's limits.

    Pass the counts as they would be after the write (current count plus the faces being added).
    """
    plan = tenant.plan
    for count, limit, what in (
        (gallery_faces, plan.max_gallery_faces, "gallery"),
        (tenant_faces, plan.max_tenant_faces, "tenant"),
    ):
        if count is not None and count > limit:
            raise CapacityExceeded(
                f"Plan {plan.name!r} allows {limit} faces per {what}; this would make {count}.",
                extra={"limit_name": f"max_{what}_faces", "limit": limit, "requested": count},
            )
