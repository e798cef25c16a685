from django.urls import path

from tenants.views import CurrentTenantApi

app_name = "tenants"
urlpatterns = [
    path("tenant", CurrentTenantApi.as_view(), name="current-tenant"),
]
