import pytest
from django.db import connection


@pytest.mark.django_db
def test_embedded_postgres_has_pgvector_0_8_or_newer():
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        (version,) = cursor.fetchone()
    assert tuple(int(part) for part in version.split(".")[:2]) >= (0, 8)


@pytest.mark.django_db
def test_a_vector_column_stores_values_and_orders_by_distance():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE probe (label text, embedding vector(3))")
        cursor.executemany(
            "INSERT INTO probe VALUES (%s, %s::vector)",
            [("far", "[10,10,10]"), ("near", "[1,1,1.5]"), ("middle", "[3,3,3]")],
        )
        cursor.execute("SELECT label, embedding::text FROM probe ORDER BY embedding <-> '[1,1,1]' LIMIT 3")
        rows = cursor.fetchall()
    assert [label for label, _ in rows] == ["near", "middle", "far"]
    assert rows[0][1] == "[1,1,1.5]"


@pytest.mark.django_db
def test_the_application_role_is_not_a_superuser():
    """Row-level security does not apply to superusers, so the app must never connect as one."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        (is_superuser,) = cursor.fetchone()
    assert is_superuser is False
