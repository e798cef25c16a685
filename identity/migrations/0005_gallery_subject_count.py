from django.db import migrations, models

# Row-level security hides every row from a transaction without a tenant; the operator path sees them all.
COUNT_EXISTING_SUBJECTS = """
    SELECT set_config('visor.operator', 'on', true);
    UPDATE identity_gallery AS gallery
    SET subject_count = (SELECT count(*) FROM identity_subject WHERE gallery_id = gallery.id);
    SELECT set_config('visor.operator', '', true);
"""


class Migration(migrations.Migration):
    dependencies = [("identity", "0004_rls_statement_level_settings")]

    operations = [
        migrations.AddField(
            model_name="gallery",
            name="subject_count",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.RunSQL(COUNT_EXISTING_SUBJECTS, migrations.RunSQL.noop),
    ]
