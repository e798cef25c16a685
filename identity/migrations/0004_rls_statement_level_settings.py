from django.db import migrations

from tenants.rls import UseStatementLevelTenantSettings


class Migration(migrations.Migration):
    dependencies = [("identity", "0003_job_dispatched_at")]

    operations = [
        UseStatementLevelTenantSettings(model)
        for model in (
            "Gallery",
            "Subject",
            "Face",
            "FaceTemplate",
            "Job",
            "IdempotentRequest",
            "PendingObjectDeletion",
            "WebhookDelivery",
        )
    ]
