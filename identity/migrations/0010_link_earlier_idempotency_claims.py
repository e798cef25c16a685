from django.db import migrations

from tenants.rls import OPERATOR_SETTING

# Claims made before the column existed name their job only in the answer they replay.
LINK_EARLIER_CLAIMS = f"""
    SELECT set_config('{OPERATOR_SETTING}', 'on', true);
    UPDATE identity_idempotentrequest SET job_id = (body->>'job_id')::uuid
    WHERE body ? 'job_id' AND EXISTS (SELECT 1 FROM identity_job WHERE id = (body->>'job_id')::uuid);
    SELECT set_config('{OPERATOR_SETTING}', '', true);
"""


class Migration(migrations.Migration):
    """Apart from the column's migration: an UPDATE there would leave trigger events pending for its DDL."""

    dependencies = [
        ("identity", "0009_idempotent_request_job"),
    ]

    operations = [
        migrations.RunSQL(LINK_EARLIER_CLAIMS, reverse_sql=migrations.RunSQL.noop),
    ]
