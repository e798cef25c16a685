from datetime import UTC, date, datetime, timedelta

import pytest
from django.utils import timezone

from tenants import billing_services
from tenants.billing_services import rebuild_daily_usage
from tenants.periods import calendar_month
from tenants.rls import tenant_transaction
from tests.tenants.billing_helpers import record_usage_at
from tests.tenants.factories import api_client_for, make_api_key

MISSING_INVOICE = "00000000-0000-4000-8000-000000000000"


def _without_instance(problem: dict) -> dict:
    """A problem body less the parts that name the request (its path and id)."""
    return {key: value for key, value in problem.items() if key not in {"instance", "request_id"}}


def _usage_on(tenant, day: date, *, key: str, api_key=None, operation="identify") -> None:
    at = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    record_usage_at(tenant, operation=operation, units=1, key=key, at=at, api_key=api_key)
    with tenant_transaction(tenant.id):
        rebuild_daily_usage(tenant=tenant, day=day)


@pytest.mark.django_db
def test_usage_is_reported_per_day_operation_and_key_with_totals():
    tenant, raw_key = make_api_key(scopes=["read"])
    api_key = tenant.api_keys.get()
    _usage_on(tenant, date(2026, 3, 9), key="request:1", api_key=api_key)
    _usage_on(tenant, date(2026, 3, 10), key="request:2", api_key=api_key)
    _usage_on(tenant, date(2026, 3, 10), key="request:3", operation="verify")
    _usage_on(tenant, date(2026, 4, 1), key="request:4", api_key=api_key)

    body = api_client_for(raw_key).get("/v1/usage?from=2026-03-01&to=2026-03-31").json()

    assert body == {
        "from": "2026-03-01",
        "to": "2026-03-31",
        "granularity": "day",
        "data": [
            {"period": "2026-03-09", "operation": "identify", "api_key_prefix": api_key.prefix, "units": 1},
            {"period": "2026-03-10", "operation": "identify", "api_key_prefix": api_key.prefix, "units": 1},
            {"period": "2026-03-10", "operation": "verify", "api_key_prefix": "", "units": 1},
        ],
        "totals": {"identify": 2, "verify": 1},
    }


@pytest.mark.django_db
def test_usage_per_month_sums_the_days_of_each_month():
    tenant, raw_key = make_api_key(scopes=["read"])
    for day, key in (
        (date(2026, 3, 9), "request:1"),
        (date(2026, 3, 31), "request:2"),
        (date(2026, 4, 1), "r:3"),
    ):
        _usage_on(tenant, day, key=key)

    body = api_client_for(raw_key).get("/v1/usage?from=2026-03-01&to=2026-04-30&granularity=month").json()

    assert [(row["period"], row["units"]) for row in body["data"]] == [("2026-03", 2), ("2026-04", 1)]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("from=2026-02-30&to=2026-03-01", "from"),
        ("to=2026-03-01", "from"),
        ("from=2026-03-02&to=2026-03-01", "to"),
        ("from=2025-01-01&to=2026-03-01", "to"),
        ("from=2026-03-01&to=2026-03-02&granularity=week", "granularity"),
    ],
)
def test_bad_usage_queries_are_validation_problems(query, field):
    _, raw_key = make_api_key(scopes=["read"])

    response = api_client_for(raw_key).get(f"/v1/usage?{query}")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert field in response.json()["errors"]


@pytest.mark.django_db
def test_invoices_list_this_months_draft_and_serve_it_as_json_and_csv():
    tenant, raw_key = make_api_key(scopes=["read"])
    _usage_on(tenant, timezone.now().astimezone(UTC).date(), key="request:1")
    client = api_client_for(raw_key)

    listed = client.get("/v1/invoices").json()["data"]
    invoice = client.get(f"/v1/invoices/{listed[0]['id']}").json()
    csv_response = client.get(f"/v1/invoices/{listed[0]['id']}.csv")

    assert [item["status"] for item in listed] == ["draft"]
    assert invoice == listed[0]
    identify = next(line for line in invoice["lines"] if line["operation"] == "identify")
    assert identify["units"] == 1
    assert (invoice["total"], invoice["finalized_at"]) == ("0.00", None)
    assert csv_response["Content-Type"].startswith("text/csv")
    csv_lines = csv_response.content.decode().splitlines()
    assert csv_lines[0] == "operation,units,included,billable,unit_price_per_1000,amount"
    assert csv_lines[-1] == "total,,,,,0.00"


@pytest.mark.django_db
def test_an_invoice_finalized_while_it_is_being_read_is_served_final(monkeypatch):
    tenant, raw_key = make_api_key(scopes=["read"])
    last_month = calendar_month(calendar_month(timezone.now()).start - timedelta(days=1))
    with tenant_transaction(tenant.id):
        draft = billing_services.refresh_draft_invoice(tenant=tenant, period_start=last_month.start)
    refresh = billing_services.refresh_draft_invoice

    def finalized_just_before(*, tenant, period_start):
        billing_services.finalize_invoice(tenant=tenant, period_start=period_start, now=timezone.now())
        return refresh(tenant=tenant, period_start=period_start)

    monkeypatch.setattr(billing_services, "refresh_draft_invoice", finalized_just_before)
    response = api_client_for(raw_key).get(f"/v1/invoices/{draft.id}")

    assert response.status_code == 200
    assert response.json()["status"] == "final"


@pytest.mark.django_db
def test_another_tenants_invoice_is_not_found_like_a_missing_one():
    _, owner_key = make_api_key(scopes=["read"])
    _, other_key = make_api_key(scopes=["read"])
    invoice_id = api_client_for(owner_key).get("/v1/invoices").json()["data"][0]["id"]
    other = api_client_for(other_key)

    foreign, missing = other.get(f"/v1/invoices/{invoice_id}"), other.get(f"/v1/invoices/{MISSING_INVOICE}")

    assert foreign.status_code == missing.status_code == 404
    assert _without_instance(foreign.json()) == _without_instance(missing.json())
    assert other.get(f"/v1/invoices/{invoice_id}.csv").status_code == 404


@pytest.mark.django_db
def test_the_csv_invoice_is_served_to_a_client_that_asks_for_csv_and_its_errors_stay_problems():
    _, raw_key = make_api_key(scopes=["read"])
    client = api_client_for(raw_key)
    invoice_id = client.get("/v1/invoices").json()["data"][0]["id"]

    csv_response = client.get(f"/v1/invoices/{invoice_id}.csv", HTTP_ACCEPT="text/csv")
    missing = client.get(f"/v1/invoices/{MISSING_INVOICE}.csv", HTTP_ACCEPT="text/csv")

    assert csv_response.status_code == 200
    assert csv_response["Content-Type"].startswith("text/csv")
    assert csv_response.content.decode().splitlines()[-1] == "total,,,,,0.00"
    assert missing.status_code == 404
    assert missing["Content-Type"] == "application/problem+json"
