from django.urls import path

from tenants.views import CurrentTenantApi, InvoiceCsvApi, InvoiceDetailApi, InvoiceListApi, UsageApi

app_name = "tenants"
urlpatterns = [
    path("tenant", CurrentTenantApi.as_view(), name="current-tenant"),
    path("usage", UsageApi.as_view(), name="usage"),
    path("invoices", InvoiceListApi.as_view(), name="invoices"),
    path("invoices/<uuid:invoice_id>", InvoiceDetailApi.as_view(), name="invoice"),
    path("invoices/<uuid:invoice_id>.csv", InvoiceCsvApi.as_view(), name="invoice-csv"),
]
