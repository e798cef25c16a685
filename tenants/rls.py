"""Row-level security: PostgreSQL, not only the application, keeps each tenant's data to itself.

Every tenant data table has a `tenant_id` column and the `tenant_isolation` policy added by
`EnableTenantRowLevelSecurity` in its app's migration. The policy admits a row when its tenant is the one set
for the current transaction (`visor.tenant_id`) or when the transaction is on the operator path
(`visor.operator = on`). With neither set a query sees no rows and an insert is refused, so code that forgets
to scope itself fails closed. The app role owns the tables, which is why the policy is FORCEd: owners bypass
plain row-level security. Superusers bypass even forced policies, so the app must not connect as one.

Both settings are transaction-local (`set_config(..., true)`): they end with the transaction, so a pooled
connection (CONN_MAX_AGE) never carries one tenant's setting into the next request or task. A scope nested
in another restores the outer one when it exits.

Control-plane tables (Plan, Tenant, ApiKey, RateLimitBucket) are deliberately not under row-level security:
an API key is looked up before the tenant is known.
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection, transaction
from django.db.migrations.operations.base import Operation

TENANT_SETTING = "visor.tenant_id"
OPERATOR_SETTING = "visor.operator"
POLICY_NAME = "tenant_isolation"

# Each setting is read in a scalar subquery, which PostgreSQL evaluates once per statement (an InitPlan);
# called bare, current_setting() runs for every row, which made counting a 20,000-subject gallery 15 ms
# instead of 4.
_POLICY_CONDITION = (
    f"tenant_id = (SELECT NULLIF(current_setting('{TENANT_SETTING}', true), '')::uuid)"
    f" OR (SELECT current_setting('{OPERATOR_SETTING}', true) = 'on')"
)
# The condition of migrations before the one above, restored when those are unapplied.
_PER_ROW_POLICY_CONDITION = (
    f"tenant_id = NULLIF(current_setting('{TENANT_SETTING}', true), '')::uuid"
    f" OR current_setting('{OPERATOR_SETTING}', true) = 'on'"
)


def _set_local(values: dict[str, str]) -> None:
    assignments = ", ".join("set_config(%s, %s, true)" for _ in values)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {assignments}", [item for pair in values.items() for item in pair])


def _current(names: list[str]) -> dict[str, str]:
    readings = ", ".join("coalesce(current_setting(%s, true), '')" for _ in names)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {readings}", names)
        return dict(zip(names, cursor.fetchone(), strict=True))


@contextmanager
def _scoped_transaction(values: dict[str, str]) -> Iterator[None]:
    # The outermost transaction needs no restoring: its commit or rollback ends the settings.
    outer = _current(list(values)) if connection.in_atomic_block else None
    with transaction.atomic():
        _set_local(values)
        yield
        # Only reached on success; on an exception the rollback to the savepoint restores the outer values
        # itself, and the aborted transaction would refuse this statement anyway.
        if outer is not None:
            _set_local(outer)


def tenant_transaction(tenant_id: uuid.UUID | str):
    """A transaction (or savepoint) in which tenant data of `tenant_id`, and only of it, is visible.

    It also leaves the operator path for its duration, so tenant-scoped code called from an operator task is
    held to its tenant.
    """
    return _scoped_transaction({TENANT_SETTING: str(uuid.UUID(str(tenant_id))), OPERATOR_SETTING: ""})


def operator_transaction():
    """A transaction in which every tenant's data is visible: the operator console, management commands and
    maintenance tasks that span tenants. Never for work done on behalf of an API key."""
    return _scoped_transaction({TENANT_SETTING: "", OPERATOR_SETTING: "on"})


class EnableTenantRowLevelSecurity(Operation):
    """Migration operation: put a tenant data table under forced row-level security, reversibly.

    `EnableTenantRowLevelSecurity("Gallery")` names a model of the migration's own app (declared earlier in
    the same migration or before); any other string is taken as a table name. The table needs a `tenant_id`
    uuid column.
    """

    reversible = True
    reduces_to_sql = True

    def __init__(self, model_name_or_table: str):
        self.model_name_or_table = model_name_or_table

    def deconstruct(self):
        return self.__class__.__name__, [self.model_name_or_table], {}

    def state_forwards(self, app_label, state):
        """Row-level security lives only in the database; the model state does not change."""

    def _table(self, app_label: str, state) -> str:
        model_key = (app_label, self.model_name_or_table.lower())
        if model_key in state.models:
            return state.apps.get_model(*model_key)._meta.db_table
        return self.model_name_or_table

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        table = schema_editor.quote_name(self._table(app_label, to_state))
        schema_editor.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        schema_editor.execute(
            f"CREATE POLICY {POLICY_NAME} ON {table}"
            f" USING ({_POLICY_CONDITION}) WITH CHECK ({_POLICY_CONDITION})"
        )

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        table = schema_editor.quote_name(self._table(app_label, from_state))
        schema_editor.execute(f"DROP POLICY {POLICY_NAME} ON {table}")
        schema_editor.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")

    def describe(self):
        return f"Enable forced row-level security on {self.model_name_or_table}"

    @property
    def migration_name_fragment(self):
        return f"rls_{self.model_name_or_table.lower()}"


class UseStatementLevelTenantSettings(EnableTenantRowLevelSecurity):
    """Migration operation: rewrite a table's `tenant_isolation` policy to the condition that reads the
    tenant settings once per statement (`_POLICY_CONDITION`); the rows it admits are the same."""

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        self._alter(schema_editor, self._table(app_label, to_state), _POLICY_CONDITION)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        self._alter(schema_editor, self._table(app_label, from_state), _PER_ROW_POLICY_CONDITION)

    @staticmethod
    def _alter(schema_editor, table: str, condition: str) -> None:
        schema_editor.execute(
            f"ALTER POLICY {POLICY_NAME} ON {schema_editor.quote_name(table)}"
            f" USING ({condition}) WITH CHECK ({condition})"
        )

    def describe(self):
        return f"Read the tenant settings once per statement in {self.model_name_or_table}'s policy"

    @property
    def migration_name_fragment(self):
        return f"rls_statement_settings_{self.model_name_or_table.lower()}"
