from decimal import Decimal

from django.db import migrations

# Free, so that `create_tenant` works out of the box, and roomy enough to evaluate Visor for real: a pilot
# gallery of tens of thousands of people enrolled from a photo folder, and identify traffic from a few
# gates. Operators add paid plans in the console.
DEVELOPER_PLAN = {
    "name": "developer",
    "monthly_price": Decimal("0"),
    "currency": "USD",
    "included_enroll": 50_000,
    "included_identify": 100_000,
    "included_verify": 100_000,
    "included_detect": 100_000,
    "included_stored_face_months": 50_000,
    "allows_overage": False,
    "requests_per_second": 50,
    "burst": 100,
    "max_gallery_faces": 100_000,
    "max_tenant_faces": 100_000,
}


def create_developer_plan(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.get_or_create(name=DEVELOPER_PLAN["name"], defaults=DEVELOPER_PLAN)


def delete_developer_plan(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.filter(name=DEVELOPER_PLAN["name"], tenants__isnull=True).delete()


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]
    operations = [migrations.RunPython(create_developer_plan, delete_developer_plan)]
