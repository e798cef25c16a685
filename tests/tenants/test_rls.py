"""Row-level security keeps tenants apart in the database itself, whatever the application code does."""

import pytest
from django.apps import apps
from django.db import DatabaseError, connection
from django.db.migrations.state import ProjectState

from tenants.models import ApiKey, AuditEvent, Tenant, UsageRecord
from tenants.rls import (
    EnableTenantRowLevelSecurity,
    UseStatementLevelTenantSettings,
    operator_transaction,
    tenant_transaction,
)
from tenants.services import record_audit_event, record_usage
from tests.tenants.factories import TEST_ACTOR, api_client_for, make_api_key, make_tenant

# Tables with a tenant column that are deliberately not under row-level security: keys are looked up
# before the tenant is known.
CONTROL_PLANE_MODELS = {ApiKey}


def _audited(tenant, action: str) -> AuditEvent:
    with tenant_transaction(tenant.id):
        return record_audit_event(
            tenant=tenant, actor=TEST_ACTOR, action=action, object_type="probe", object_id=1
        )


def _tenant_ids_seen_by_raw_sql() -> set:
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT tenant_id FROM tenants_auditevent")
        return {row[0] for row in cursor.fetchall()}


def _current_settings() -> tuple[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(current_setting('visor.tenant_id', true), ''),"
            " coalesce(current_setting('visor.operator', true), '')"
        )
        return cursor.fetchone()


@pytest.fixture
def two_tenants(db):
    tenant_a, tenant_b = make_tenant(name="Alpha"), make_tenant(name="Bravo")
    _audited(tenant_a, "probe.a")
    _audited(tenant_b, "probe.b")
    return tenant_a, tenant_b


def test_an_unscoped_orm_query_inside_tenant_a_sees_none_of_tenant_b_rows(two_tenants):
    tenant_a, _ = two_tenants

    with tenant_transaction(tenant_a.id):
        events = list(AuditEvent.objects.all())  # deliberately no tenant filter: RLS must do it

    assert {event.tenant_id for event in events} == {tenant_a.id}
    assert "probe.a" in {event.action for event in events}


def test_a_raw_select_inside_tenant_a_sees_none_of_tenant_b_rows(two_tenants):
    tenant_a, _ = two_tenants

    with tenant_transaction(tenant_a.id):
        seen = _tenant_ids_seen_by_raw_sql()

    assert seen == {tenant_a.id}


def test_with_no_tenant_set_a_query_sees_no_rows(two_tenants):
    assert AuditEvent.objects.count() == 0
    assert _tenant_ids_seen_by_raw_sql() == set()


def test_the_operator_path_sees_every_tenant(two_tenants):
    tenant_a, tenant_b = two_tenants

    with operator_transaction():
        seen = _tenant_ids_seen_by_raw_sql()

    assert {tenant_a.id, tenant_b.id} <= seen


def test_writing_another_tenants_row_is_refused_by_the_database(two_tenants):
    tenant_a, tenant_b = two_tenants

    with pytest.raises(DatabaseError, match="row-level security"), tenant_transaction(tenant_a.id):
        UsageRecord.objects.create(tenant=tenant_b, operation="identify", units=1, idempotency_key="sneaky")


def test_updating_another_tenants_rows_changes_nothing(two_tenants):
    tenant_a, tenant_b = two_tenants

    with tenant_transaction(tenant_a.id):
        changed = AuditEvent.objects.filter(tenant=tenant_b).update(action="tampered")

    with operator_transaction():
        actions = set(AuditEvent.objects.filter(tenant=tenant_b).values_list("action", flat=True))
    assert changed == 0
    assert "tampered" not in actions


def test_a_nested_scope_restores_the_outer_one_when_it_ends(two_tenants):
    tenant_a, tenant_b = two_tenants

    with operator_transaction():
        with tenant_transaction(tenant_a.id):
            inside = _tenant_ids_seen_by_raw_sql()
        after = _tenant_ids_seen_by_raw_sql()

    assert inside == {tenant_a.id}, "a tenant scope inside the operator path is held to its tenant"
    assert {tenant_a.id, tenant_b.id} <= after
    assert _current_settings() == ("", "")


def test_a_failed_scope_rolls_its_settings_back_with_its_work(two_tenants):
    tenant_a, _ = two_tenants

    with pytest.raises(RuntimeError), tenant_transaction(tenant_a.id):
        raise RuntimeError("the unit of work failed")

    assert _current_settings() == ("", "")
    assert AuditEvent.objects.count() == 0


def test_an_api_request_leaves_no_tenant_set_on_the_connection(two_tenants):
    _, raw_key = make_api_key(tenant=two_tenants[0])

    assert api_client_for(raw_key).get("/v1/tenant").status_code == 200

    assert _current_settings() == ("", "")


@pytest.mark.django_db(transaction=True)
def test_the_settings_end_with_the_transaction_so_a_pooled_connection_carries_no_tenant():
    tenant = make_tenant()
    _audited(tenant, "probe")

    with tenant_transaction(tenant.id):
        assert AuditEvent.objects.filter(action="probe").count() == 1

    # Same connection, next (autocommit) statement: nothing of the tenant is visible any more.
    assert not connection.in_atomic_block
    assert AuditEvent.objects.count() == 0


def test_the_application_role_is_subject_to_row_level_security(db):
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
        is_superuser, bypasses_rls = cursor.fetchone()

    assert is_superuser is False
    assert bypasses_rls is False


def _tenant_data_tables() -> list[str]:
    return sorted(
        model._meta.db_table
        for model in apps.get_models()
        if model not in CONTROL_PLANE_MODELS
        and any(
            field.name == "tenant" and field.is_relation and field.related_model is Tenant
            for field in model._meta.get_fields()
        )
    )


def test_every_tenant_data_table_is_under_forced_row_level_security_with_the_isolation_policy(db):
    tables = _tenant_data_tables()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                   EXISTS (SELECT 1 FROM pg_policies p WHERE p.tablename = c.relname AND p.policyname = %s)
            FROM pg_class c
            WHERE c.relname = ANY(%s) AND c.relkind = 'r'
            """,
            ["tenant_isolation", tables],
        )
        found = {
            name: (enabled, forced, has_policy) for name, enabled, forced, has_policy in cursor.fetchall()
        }

    assert {"tenants_auditevent", "tenants_usagerecord"} <= set(tables)
    assert set(found) == set(tables), "every tenant data model has a table"
    assert {table: state for table, state in found.items() if state != (True, True, True)} == {}


def _policy_conditions(tables: list[str]) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tablename, qual FROM pg_policies WHERE policyname = 'tenant_isolation'"
            " AND tablename = ANY(%s)",
            [tables],
        )
        return dict(cursor.fetchall())


def test_every_policy_reads_the_tenant_settings_once_per_statement_not_per_row(db):
    tables = _tenant_data_tables()
    tenant = make_tenant()

    conditions = _policy_conditions(tables)
    with tenant_transaction(tenant.id), connection.cursor() as cursor:
        cursor.execute("EXPLAIN SELECT count(*) FROM tenants_usagerecord")
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert set(conditions) == set(tables)
    # pg_policies shows each current_setting() inside a scalar subquery: an InitPlan, evaluated once.
    assert {t: c for t, c in conditions.items() if c.count("( SELECT") != 2} == {}
    assert "InitPlan" in plan


def test_the_policy_rewrite_is_reversible_and_admits_the_same_rows(db):
    table = "rls_rewrite_probe"
    tenant, other = make_tenant(), make_tenant()
    state = ProjectState()
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, tenant_id uuid NOT NULL)")
        cursor.execute(
            f"INSERT INTO {table} (tenant_id) VALUES (%s), (%s), (%s)", [tenant.id, other.id, other.id]
        )
    with connection.schema_editor() as editor:
        EnableTenantRowLevelSecurity(table).database_forwards("tenants", editor, state, state)

    def visible() -> tuple[int, int, int]:
        counts = []
        for scope in (tenant_transaction(tenant.id), tenant_transaction(other.id), operator_transaction()):
            with scope, connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {table}")
                counts.append(cursor.fetchone()[0])
        return tuple(counts)

    rewrite = UseStatementLevelTenantSettings(table)
    with connection.schema_editor() as editor:
        rewrite.database_backwards("tenants", editor, state, state)
    per_row = (_policy_conditions([table])[table], visible())
    with connection.schema_editor() as editor:
        rewrite.database_forwards("tenants", editor, state, state)
    per_statement = (_policy_conditions([table])[table], visible())

    assert "SELECT" not in per_row[0]
    assert "SELECT" in per_statement[0]
    assert per_row[1] == per_statement[1] == (1, 2, 3)


def test_the_migration_operation_is_reversible(db):
    operation = EnableTenantRowLevelSecurity("rls_probe")
    state = ProjectState()
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE rls_probe (id serial PRIMARY KEY, tenant_id uuid NOT NULL)")

    with connection.schema_editor() as editor:
        operation.database_forwards("tenants", editor, state, state)
    enabled = _rls_state("rls_probe")
    with connection.schema_editor() as editor:
        operation.database_backwards("tenants", editor, state, state)
    disabled = _rls_state("rls_probe")

    assert enabled == (True, True, 1)
    assert disabled == (False, False, 0)


def _rls_state(table: str) -> tuple[bool, bool, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relrowsecurity, relforcerowsecurity,"
            " (SELECT count(*) FROM pg_policies WHERE tablename = %s) FROM pg_class WHERE relname = %s",
            [table, table],
        )
        return cursor.fetchone()


def test_usage_can_only_be_recorded_inside_a_scope(db):
    tenant = make_tenant()

    with pytest.raises(DatabaseError, match="row-level security"):
        record_usage(tenant=tenant, api_key=None, operation="identify", units=1, idempotency_key="unscoped")
