from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from infra import health

handler400 = "infra.problems.bad_request_view"
handler403 = "infra.problems.permission_denied_view"
handler404 = "infra.problems.not_found_view"
handler500 = "infra.problems.server_error_view"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("admin/", admin.site.urls),
    path("v1/", include("tenants.urls")),
    path("v1/", include("identity.urls")),
]
