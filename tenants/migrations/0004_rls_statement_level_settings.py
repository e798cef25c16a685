from django.db import migrations

from tenants.rls import UseStatementLevelTenantSettings


class Migration(migrations.Migration):
    dependencies = [("tenants", "0003_billing")]

    operations = [
        UseStatementLevelTenantSettings(model)
        for model in ("AuditEvent", "UsageRecord", "DailyUsage", "Invoice", "InvoiceLine")
    ]
