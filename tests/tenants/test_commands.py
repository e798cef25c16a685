import io
import json

import pytest
from django.core.management import CommandError, call_command

from tenants.api_keys import split_key
from tenants.models import ApiKey, AuditEvent, Scope, Tenant
from tenants.rls import operator_transaction
from tests.tenants.factories import api_client_for, make_api_key, make_plan, make_tenant


def _run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_create_tenant_json_prints_exactly_the_id_slug_and_a_working_key_with_every_scope():
    output = _run("create_tenant", "--name", "Acme", "--json")

    created = json.loads(output)
    assert set(created) == {"tenant_id", "slug", "api_key"}
    tenant = Tenant.objects.get(id=created["tenant_id"])
    assert (tenant.slug, tenant.name, tenant.plan.name) == (created["slug"], "Acme", "developer")
    assert ApiKey.objects.get(prefix=split_key(created["api_key"])[0]).scopes == Scope.values
    response = api_client_for(created["api_key"]).get("/v1/tenant")
    assert response.status_code == 200
    assert response.json()["slug"] == created["slug"]


@pytest.mark.django_db
def test_create_tenant_takes_a_plan_and_a_slug_and_is_audited_as_a_command():
    make_plan(name="enterprise")

    created = json.loads(
        _run("create_tenant", "--name", "Big Co", "--plan", "enterprise", "--slug", "bigco", "--json")
    )

    tenant = Tenant.objects.get(id=created["tenant_id"])
    assert (tenant.slug, tenant.plan.name) == ("bigco", "enterprise")
    with operator_transaction():
        actors = set(AuditEvent.objects.filter(tenant=tenant).values_list("actor_label", flat=True))
    assert actors == {"manage.py create_tenant"}


@pytest.mark.django_db
def test_create_tenant_names_an_unknown_plan():
    with pytest.raises(CommandError, match="no plan named 'gold'"):
        _run("create_tenant", "--name", "Acme", "--plan", "gold")


@pytest.mark.django_db
def test_create_api_key_issues_a_key_with_the_given_scopes_and_expiry():
    tenant = make_tenant()

    issued = json.loads(
        _run(
            "create_api_key",
            "--tenant",
            tenant.slug,
            "--name",
            "door",
            "--scopes",
            "read,identify",
            "--expires-in-days",
            "30",
            "--json",
        )
    )

    assert issued["tenant_id"] == str(tenant.id)
    assert issued["scopes"] == ["read", "identify"]
    assert issued["expires_at"] is not None
    assert issued["api_key"].startswith(issued["prefix"] + "_")
    assert api_client_for(issued["api_key"]).get("/v1/tenant").status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("days", ["0", "3651", "3000000"])
def test_create_api_key_refuses_an_expiry_outside_one_day_to_ten_years(days):
    tenant = make_tenant()

    with pytest.raises(CommandError, match="from 1 to 3650"):
        _run("create_api_key", "--tenant", tenant.slug, "--name", "n", "--expires-in-days", days)


@pytest.mark.django_db
def test_create_api_key_finds_the_tenant_by_id_and_refuses_unknown_scopes():
    tenant = make_tenant()

    by_id = json.loads(_run("create_api_key", "--tenant", str(tenant.id), "--name", "n", "--json"))
    with pytest.raises(CommandError, match="unknown: fly"):
        _run("create_api_key", "--tenant", tenant.slug, "--name", "n", "--scopes", "read,fly")

    assert by_id["scopes"] == ["read", "enroll", "identify"]


@pytest.mark.django_db
def test_revoke_api_key_stops_the_key():
    _, raw_key = make_api_key()

    _run("revoke_api_key", split_key(raw_key)[0])

    assert api_client_for(raw_key).get("/v1/tenant").status_code == 401


@pytest.mark.django_db
def test_suspend_tenant_and_reactivate_it():
    tenant, raw_key = make_api_key()
    client = api_client_for(raw_key)

    _run("suspend_tenant", tenant.slug, "--reason", "abuse report")
    suspended = client.get("/v1/tenant").status_code
    _run("suspend_tenant", tenant.slug, "--reactivate")
    reactivated = client.get("/v1/tenant").status_code

    assert (suspended, reactivated) == (403, 200)


@pytest.mark.django_db
def test_commands_name_an_unknown_tenant_or_key():
    with pytest.raises(CommandError, match="no tenant"):
        _run("suspend_tenant", "nobody")
    with pytest.raises(CommandError, match="no API key"):
        _run("revoke_api_key", "vsr_live_00000000")
