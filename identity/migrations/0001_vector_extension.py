from django.db import migrations
from pgvector.django import VectorExtension


class Migration(migrations.Migration):
    """Face templates are pgvector columns. On managed PostgreSQL the extension may need a DBA to install it
    once (it is not a trusted extension); then this is a no-op."""

    initial = True
    dependencies = []
    operations = [VectorExtension()]
