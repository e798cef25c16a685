"""The operator console: tenants, plans, API keys, usage and the audit log.

Every change goes through tenants.services, with the signed-in operator recorded as the actor. Staff
requests here run on row-level security's operator path (tenants.middleware.OperatorConsoleMiddleware), so
the console sees every tenant's data. New API keys are shown once, on the page that answers the request
that made them (never in a message, which would be stored in the session).
"""

from datetime import timedelta

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.template.response import TemplateResponse
from django.utils import timezone

from tenants import charts, selectors, services
from tenants.forms import ApiKeyIssueForm, TenantOnboardingForm
from tenants.models import ApiKey, AuditEvent, Invoice, InvoiceLine, Plan, Tenant, UsageRecord
from tenants.services import IssuedApiKey

ISSUED_KEYS_TEMPLATE = "admin/tenants/issued_api_keys.html"


def _form_page(model_admin, request, *, form, title: str) -> TemplateResponse:
    return TemplateResponse(
        request,
        "admin/tenants/form_page.html",
        {
            **model_admin.admin_site.each_context(request),
            "opts": model_admin.opts,
            "form": form,
            "title": title,
        },
    )


def _issued_keys_page(model_admin, request, *, issued: list[IssuedApiKey], title: str) -> TemplateResponse:
    return TemplateResponse(
        request,
        ISSUED_KEYS_TEMPLATE,
        {
            **model_admin.admin_site.each_context(request),
            "opts": model_admin.opts,
            "issued": issued,
            "title": title,
        },
    )


def _report(model_admin, request, done: list[str], failed: list[str], *, verb: str) -> None:
    if done:
        model_admin.message_user(request, f"{verb}: {', '.join(done)}.", messages.SUCCESS)
    for failure in failed:
        model_admin.message_user(request, failure, messages.ERROR)


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ["prefix", "name", "scopes", "state", "last_used_at", "expires_at", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="State")
    def state(self, api_key: ApiKey) -> str:
        return _key_state(api_key)


def _key_state(api_key: ApiKey) -> str:
    if api_key.revoked_at is not None:
        return "revoked"
    return "active" if api_key.is_usable_at(timezone.now()) else "expired"


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "status", "plan", "usage_this_month", "created_at"]
    list_filter = ["status", "plan"]
    search_fields = ["name", "slug", "=id"]
    fields = [
        "id",
        "slug",
        "name",
        "status",
        "plan",
        "default_match_threshold",
        "store_images",
        "image_retention_days",
        "webhook_url",
        "webhook_secret",
        "created_at",
        "updated_at",
    ]
    readonly_fields = ["id", "slug", "status", "webhook_secret", "created_at", "updated_at"]
    inlines = [ApiKeyInline]
    actions = ["suspend_tenants", "reactivate_tenants", "close_tenants"]
    change_form_template = "admin/tenants/tenant/change_form.html"
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_queryset(self, request):
        return selectors.tenants_with_usage_this_month()

    def has_delete_permission(self, request, obj=None):
        # Tenants are closed, not deleted: their audit trail and usage must outlive them.
        return False

    @admin.display(description="Usage this month (used / included)")
    def usage_this_month(self, tenant: Tenant) -> str:
        used = selectors.usage_annotations(tenant)
        parts = [
            f"{operation} {units:,} / {tenant.plan.included_units(operation):,}"
            for operation, units in used.items()
            if units
        ]
        return " · ".join(parts) or "none"

    def add_view(self, request, form_url="", extra_context=None):
        """Create a tenant and issue its first API key in one step."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TenantOnboardingForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                tenant, issued = services.create_tenant_with_api_key(
                    name=form.cleaned_data["name"],
                    slug=form.cleaned_data["slug"] or None,
                    plan=form.cleaned_data["plan"],
                    key_name=form.cleaned_data["key_name"],
                    scopes=form.cleaned_data["scopes"],
                    actor=request.user,
                )
            except ValidationError as error:
                form.add_error(None, error)
            else:
                return _issued_keys_page(
                    self, request, issued=[issued], title=f"Tenant {tenant.name} created"
                )
        return _form_page(self, request, form=form, title="Create a tenant and its first API key")

    def change_view(self, request, object_id, form_url="", extra_context=None):
        tenant = self.get_object(request, object_id)
        if tenant is not None:
            extra_context = {
                **(extra_context or {}),
                "usage_chart": charts.usage_chart(selectors.daily_usage(tenant=tenant, days=30)),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        # Only reached for changes (adding goes through add_view above), after the form has validated them.
        services.update_tenant(
            tenant=obj,
            actor=request.user,
            changes={field: form.cleaned_data[field] for field in form.changed_data},
        )

    def _change_status(self, request, queryset, change, verb: str) -> None:
        done, failed = [], []
        for tenant in queryset:
            try:
                change(tenant=tenant, actor=request.user)
                done.append(tenant.slug)
            except ValidationError as error:
                failed.append(f"{tenant.slug}: {'; '.join(error.messages)}")
        _report(self, request, done, failed, verb=verb)

    @admin.action(description="Suspend the selected tenants (their keys stop working at once)")
    def suspend_tenants(self, request, queryset):
        self._change_status(request, queryset, services.suspend_tenant, "Suspended")

    @admin.action(description="Reactivate the selected tenants")
    def reactivate_tenants(self, request, queryset):
        self._change_status(request, queryset, services.reactivate_tenant, "Reactivated")

    @admin.action(
        description="Close the selected tenants for good (revokes their keys, erases their galleries)"
    )
    def close_tenants(self, request, queryset):
        self._change_status(request, queryset, services.close_tenant, "Closed")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "tenant", "scopes", "state", "last_used_at", "expires_at", "created_at"]
    list_filter = ["tenant"]
    list_select_related = ["tenant"]
    search_fields = ["prefix", "name", "tenant__slug"]
    fields = [
        "id",
        "tenant",
        "name",
        "prefix",
        "scopes",
        "expires_at",
        "last_used_at",
        "revoked_at",
        "created_at",
    ]
    readonly_fields = fields
    actions = ["revoke_keys", "rotate_keys"]

    @admin.display(description="State")
    def state(self, api_key: ApiKey) -> str:
        return _key_state(api_key)

    def has_change_permission(self, request, obj=None):
        # A key's secret, tenant and scopes never change; revoke or rotate it instead.
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_revoke_permission(self, request):
        return request.user.has_perm("tenants.change_apikey")

    def add_view(self, request, form_url="", extra_context=None):
        """Issue a key for an existing tenant."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ApiKeyIssueForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            days = form.cleaned_data["expires_in_days"]
            try:
                issued = services.create_api_key(
                    tenant=form.cleaned_data["tenant"],
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_at=timezone.now() + timedelta(days=days) if days else None,
                    actor=request.user,
                )
            except ValidationError as error:
                form.add_error(None, error)
            else:
                return _issued_keys_page(self, request, issued=[issued], title="API key issued")
        return _form_page(self, request, form=form, title="Issue an API key")

    @admin.action(description="Revoke the selected keys (they stop working at once)", permissions=["revoke"])
    def revoke_keys(self, request, queryset):
        revoked = [
            services.revoke_api_key(api_key=api_key, actor=request.user).prefix
            for api_key in queryset.select_related("tenant")
        ]
        _report(self, request, revoked, [], verb="Revoked")

    @admin.action(
        description="Rotate the selected keys (issue replacements, revoke these)", permissions=["revoke"]
    )
    def rotate_keys(self, request, queryset):
        issued = []
        for api_key in queryset.select_related("tenant"):
            try:
                issued.append(services.rotate_api_key(api_key=api_key, actor=request.user))
            except ValidationError as refusal:
                self.message_user(request, f"{refusal.message} It was not rotated.", messages.WARNING)
        if not issued:
            return None
        return _issued_keys_page(self, request, issued=issued, title="API keys rotated")


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "monthly_price",
        "currency",
        "requests_per_second",
        "burst",
        "allows_overage",
        "max_gallery_faces",
        "max_tenant_faces",
    ]
    fieldsets = [
        (None, {"fields": ["name", "monthly_price", "currency", "allows_overage"]}),
        (
            "Included units per month",
            {
                "fields": [
                    "included_enroll",
                    "included_identify",
                    "included_verify",
                    "included_detect",
                    "included_stored_face_months",
                ]
            },
        ),
        (
            "Overage price per 1,000 units",
            {
                "fields": [
                    "overage_enroll_per_1000",
                    "overage_identify_per_1000",
                    "overage_verify_per_1000",
                    "overage_detect_per_1000",
                    "overage_stored_face_months_per_1000",
                ]
            },
        ),
        ("Limits", {"fields": ["requests_per_second", "burst", "max_gallery_faces", "max_tenant_faces"]}),
    ]

    def has_delete_permission(self, request, obj=None):
        # Tenants reference their plan; a plan that should no longer be sold is simply not chosen.
        return False

    def save_model(self, request, obj, form, change):
        services.save_plan(plan=obj, actor=request.user, changed_fields=form.changed_data)


class _ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(_ReadOnlyAdmin):
    list_display = ["created_at", "tenant", "actor_type", "actor_label", "action", "object_type", "object_id"]
    list_filter = ["actor_type", "action", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["=object_id", "=request_id", "actor_label", "action"]
    date_hierarchy = "created_at"


@admin.register(UsageRecord)
class UsageRecordAdmin(_ReadOnlyAdmin):
    list_display = ["created_at", "tenant", "operation", "units", "api_key", "idempotency_key"]
    list_filter = ["operation", "tenant"]
    list_select_related = ["tenant", "api_key"]
    search_fields = ["=idempotency_key"]
    date_hierarchy = "created_at"


# --- Billing ----------------------------------------------------------------------------------------------
# Tenant list's "usage this month" column and the tenant page's usage chart (above) already cover usage.


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    fields = ["operation", "units", "included", "billable", "unit_price_per_1000", "amount"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Invoice)
class InvoiceAdmin(_ReadOnlyAdmin):
    """Read-only: invoices are computed by tenants.billing_services, and final ones never change."""

    list_display = ["period_start", "tenant", "status", "total", "currency", "finalized_at"]
    list_filter = ["status", "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["=id", "tenant__slug"]
    date_hierarchy = "period_start"
    inlines = [InvoiceLineInline]
