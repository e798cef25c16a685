import contextlib
import dataclasses

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants import billing_selectors, billing_services, exporters, selectors
from tenants.models import ApiKey, Invoice, Plan, Scope, Tenant
from tenants.rls import tenant_transaction


class TenantAPIView(APIView):
    """Base of the tenant API's views: the caller's tenant and key, and the transaction for its data.

    Authentication, the scope check and the rate limit run first, outside any transaction, on control-plane
    tables. The handler wraps its reads and writes of tenant data in `self.tenant_transaction()`; outside one,
    row-level security shows no tenant data and refuses inserts, so a forgotten scope fails closed.

    A view is deliberately not one long transaction: `transaction.on_commit` work (queuing a Celery task)
    must run when its unit of work commits, not when the response leaves, and CPU-heavy face analysis should
    not hold a transaction (and its locks) open.
    """

    @property
    def tenant(self) -> Tenant:
        return self.request.user.tenant

    @property
    def api_key(self) -> ApiKey:
        return self.request.auth

    def tenant_transaction(self):
        return tenant_transaction(self.tenant.id)


class _PlanSerializer(serializers.ModelSerializer):
    class Meta:
        model = Plan
        fields = [
            "name",
            "requests_per_second",
            "burst",
            "max_gallery_faces",
            "max_tenant_faces",
            "allows_overage",
        ]


class _TenantSettingsSerializer(serializers.ModelSerializer):
    class Meta:
        model = Tenant
        fields = ["default_match_threshold", "store_images", "image_retention_days", "webhook_url"]


class _ApiKeySerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiKey
        fields = ["id", "name", "prefix", "scopes", "expires_at", "last_used_at", "created_at"]


class _QuotaUsageSerializer(serializers.Serializer):
    used = serializers.IntegerField()
    included = serializers.IntegerField()


class CurrentTenantApi(TenantAPIView):
    """The caller's tenant: its plan, settings and this month's usage, and the key used to ask."""

    required_scope = Scope.READ

    class OutputSerializer(serializers.Serializer):
        id = serializers.UUIDField(source="tenant.id")
        slug = serializers.CharField(source="tenant.slug")
        name = serializers.CharField(source="tenant.name")
        status = serializers.CharField(source="tenant.status")
        plan = _PlanSerializer(source="tenant.plan")
        settings = _TenantSettingsSerializer(source="tenant")
        api_key = _ApiKeySerializer()
        usage_this_month = serializers.DictField(child=_QuotaUsageSerializer(), source="usage")

    @extend_schema(responses=OutputSerializer)
    def get(self, request):
        with self.tenant_transaction():
            usage = selectors.quota_usage_this_month(tenant=self.tenant)
        return Response(
            self.OutputSerializer({"tenant": self.tenant, "api_key": self.api_key, "usage": usage}).data
        )


# --- Usage and invoices (docs/billing.md) -----------------------------------------------------------------

MAX_USAGE_RANGE_DAYS = 366


class UsageApi(TenantAPIView):
    """The caller's tenant's usage per day or month, operation and API key, from the DailyUsage aggregates."""

    required_scope = Scope.READ

    class InputSerializer(serializers.Serializer):
        def get_fields(self):
            # `from` is a Python keyword, so the fields cannot be class attributes.
            return {
                "from": serializers.DateField(),
                "to": serializers.DateField(),
                "granularity": serializers.ChoiceField(choices=["day", "month"], default="day"),
            }

        def validate(self, attrs):
            if attrs["to"] < attrs["from"]:
                raise serializers.ValidationError({"to": ["`to` must not be before `from`."]})
            if (attrs["to"] - attrs["from"]).days >= MAX_USAGE_RANGE_DAYS:
                raise serializers.ValidationError(
                    {"to": [f"The range may span at most {MAX_USAGE_RANGE_DAYS} days."]}
                )
            return attrs

    @extend_schema(
        operation_id="v1_usage_retrieve",
        parameters=[
            OpenApiParameter("from", OpenApiTypes.DATE, required=True),
            OpenApiParameter("to", OpenApiTypes.DATE, required=True),
            OpenApiParameter("granularity", str, enum=["day", "month"]),
        ],
        responses={200: dict},
    )
    def get(self, request):
        query = self.InputSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        with self.tenant_transaction():
            report = billing_selectors.usage_report(
                tenant=self.tenant,
                first_day=query.validated_data["from"],
                last_day=query.validated_data["to"],
                granularity=query.validated_data["granularity"],
            )
        return Response(
            {
                "from": report.first_day.isoformat(),
                "to": report.last_day.isoformat(),
                "granularity": report.granularity,
                "data": [dataclasses.asdict(row) for row in report.rows],
                "totals": report.totals,
            }
        )


class _InvoiceApi(TenantAPIView):
    required_scope = Scope.READ

    def _current_invoice(self, invoice_id):
        """The tenant's invoice, a draft recomputed first; 404 for another tenant's or a missing one."""
        with self.tenant_transaction():
            invoice = billing_selectors.invoice_of_tenant(tenant=self.tenant, invoice_id=invoice_id)
            if invoice is None:
                raise NotFound("The invoice does not exist.")
            if invoice.status == Invoice.Status.DRAFT:
                # Finalized since it was read (the hour after its month closes): shown as it now is.
                with contextlib.suppress(billing_services.InvoiceIsFinal):
                    billing_services.refresh_draft_invoice(
                        tenant=self.tenant, period_start=invoice.period_start
                    )
                invoice = billing_selectors.invoice_of_tenant(tenant=self.tenant, invoice_id=invoice_id)
        return invoice


class InvoiceListApi(TenantAPIView):
    """The tenant's invoices, newest first; this month's draft is recomputed from the ledger on each call."""

    required_scope = Scope.READ

    @extend_schema(operation_id="v1_invoices_list", responses={200: dict})
    def get(self, request):
        with self.tenant_transaction():
            billing_services.refresh_draft_invoice(tenant=self.tenant, period_start=timezone.now())
            invoices = billing_selectors.invoices_of_tenant(tenant=self.tenant)
            return Response({"data": [exporters.invoice_document(invoice) for invoice in invoices]})


class InvoiceDetailApi(_InvoiceApi):
    @extend_schema(operation_id="v1_invoices_retrieve", responses={200: dict})
    def get(self, request, invoice_id):
        return Response(exporters.invoice_document(self._current_invoice(invoice_id)))


class InvoiceCsvApi(_InvoiceApi):
    def perform_content_negotiation(self, request, force=False):
        """The route answers CSV (a plain HttpResponse) and its errors as problem JSON, whatever the client
        accepts: DRF would refuse `Accept: text/csv` with 406, as no renderer of its own makes CSV."""
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(operation_id="v1_invoices_csv", responses={(200, "text/csv"): str})
    def get(self, request, invoice_id):
        invoice = self._current_invoice(invoice_id)
        response = HttpResponse(exporters.invoice_csv(invoice), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{exporters.invoice_file_stem(invoice)}.csv"'
        return response
