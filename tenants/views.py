from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants import selectors
from tenants.models import ApiKey, Plan, Scope, Tenant
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
