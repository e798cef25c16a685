import hashlib
import hmac
from datetime import timedelta

import pytest
from django.conf import settings
from django.forms.models import model_to_dict
from django.utils import timezone

from tenants import services
from tenants.api_keys import split_key
from tenants.models import ApiKey
from tenants.rls import operator_transaction
from tests.tenants.factories import TEST_ACTOR, api_client_for, make_api_key, make_tenant

TENANT_URL = "/v1/tenant"


def _problem(response) -> dict:
    assert response["Content-Type"] == "application/problem+json"
    return response.json()


@pytest.mark.django_db
def test_only_an_hmac_of_the_secret_is_stored_and_the_full_key_appears_in_no_column():
    _, raw_key = make_api_key()
    prefix, secret = split_key(raw_key)

    api_key = ApiKey.objects.get(prefix=prefix)

    assert len(secret) >= 43, "at least 32 random bytes, URL-safe base64"
    assert api_key.secret_hash != secret
    assert (
        api_key.secret_hash
        == hmac.new(settings.API_KEY_PEPPER.encode(), secret.encode(), hashlib.sha256).hexdigest()
    )
    stored = " ".join(str(value) for value in model_to_dict(api_key).values())
    assert secret not in stored
    assert raw_key.startswith("vsr_live_")
    assert prefix == api_key.prefix


@pytest.mark.django_db
def test_the_secret_is_compared_in_constant_time(monkeypatch):
    _, raw_key = make_api_key()
    comparisons = []
    real_compare = hmac.compare_digest

    def spy(left, right):
        comparisons.append((left, right))
        return real_compare(left, right)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    response = api_client_for(raw_key).get(TENANT_URL)

    assert response.status_code == 200
    stored_hash = ApiKey.objects.get(prefix=split_key(raw_key)[0]).secret_hash
    assert comparisons, "the secret's hash was compared with hmac.compare_digest"
    assert comparisons[-1][1] == stored_hash


@pytest.mark.django_db
def test_the_full_key_is_returned_once_and_cannot_be_read_back():
    tenant = make_tenant()
    with operator_transaction():
        issued = services.create_api_key(tenant=tenant, actor=TEST_ACTOR, name="door", scopes=["read"])

    reloaded = ApiKey.objects.get(id=issued.api_key.id)

    assert issued.raw_key.startswith(reloaded.prefix + "_")
    assert not any(issued.raw_key in str(value) for value in model_to_dict(reloaded).values())


@pytest.mark.django_db
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer vsr_live_abcdefgh_" + "x" * 43,
        "Bearer not-a-key",
        "Basic dXNlcjpwYXNz",
    ],
    ids=["missing", "empty-bearer", "unknown-key", "malformed", "other-scheme"],
)
def test_requests_without_a_valid_key_get_a_401_problem_naming_the_bearer_scheme(client, authorization):
    headers = {"Authorization": authorization} if authorization else {}

    response = client.get(TENANT_URL, headers=headers)

    assert response.status_code == 401
    assert _problem(response)["type"].endswith("/unauthenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.django_db
def test_a_wrong_secret_for_a_real_prefix_is_refused():
    _, raw_key = make_api_key()
    prefix, secret = split_key(raw_key)
    forged = f"{prefix}_{secret[:-4]}AAAA"

    response = api_client_for(forged).get(TENANT_URL)

    assert response.status_code == 401


@pytest.mark.django_db
def test_a_revoked_key_is_refused_from_the_next_request():
    _, raw_key = make_api_key()
    client = api_client_for(raw_key)
    assert client.get(TENANT_URL).status_code == 200

    with operator_transaction():
        services.revoke_api_key(api_key=ApiKey.objects.get(prefix=split_key(raw_key)[0]), actor=TEST_ACTOR)
    response = client.get(TENANT_URL)

    assert response.status_code == 401
    assert "revoked" in _problem(response)["detail"]


@pytest.mark.django_db
def test_an_expired_key_is_refused():
    _, raw_key = make_api_key(expires_at=timezone.now() - timedelta(seconds=1))

    response = api_client_for(raw_key).get(TENANT_URL)

    assert response.status_code == 401
    assert "expired" in _problem(response)["detail"]


@pytest.mark.django_db
def test_a_key_that_has_not_expired_yet_works():
    _, raw_key = make_api_key(expires_at=timezone.now() + timedelta(days=1))

    assert api_client_for(raw_key).get(TENANT_URL).status_code == 200


@pytest.mark.django_db
def test_a_key_without_the_views_scope_gets_a_403_problem_naming_the_scope():
    _, raw_key = make_api_key(scopes=["identify", "enroll"])

    response = api_client_for(raw_key).get(TENANT_URL)

    body = _problem(response)
    assert response.status_code == 403
    assert body["type"].endswith("/insufficient-scope")
    assert body["required_scope"] == "read"
    assert "`read`" in body["detail"]


@pytest.mark.django_db
def test_suspending_a_tenant_stops_its_keys_at_once_and_reactivating_restores_them():
    tenant, raw_key = make_api_key()
    client = api_client_for(raw_key)
    assert client.get(TENANT_URL).status_code == 200

    with operator_transaction():
        services.suspend_tenant(tenant=tenant, actor=TEST_ACTOR)
    suspended = client.get(TENANT_URL)
    with operator_transaction():
        services.reactivate_tenant(tenant=tenant, actor=TEST_ACTOR)
    reactivated = client.get(TENANT_URL)

    assert suspended.status_code == 403
    assert _problem(suspended)["type"].endswith("/tenant-suspended")
    assert reactivated.status_code == 200


@pytest.mark.django_db
def test_a_closed_tenants_keys_are_revoked():
    tenant, raw_key = make_api_key()

    with operator_transaction():
        services.close_tenant(tenant=tenant, actor=TEST_ACTOR)
    response = api_client_for(raw_key).get(TENANT_URL)

    assert response.status_code == 401
    assert not ApiKey.objects.filter(tenant=tenant, revoked_at__isnull=True).exists()


@pytest.mark.django_db
def test_last_used_at_is_kept_to_the_minute_without_a_write_per_request():
    _, raw_key = make_api_key()
    api_key = ApiKey.objects.get(prefix=split_key(raw_key)[0])
    client = api_client_for(raw_key)
    assert api_key.last_used_at is None

    client.get(TENANT_URL)
    first = ApiKey.objects.get(id=api_key.id).last_used_at
    client.get(TENANT_URL)
    within_the_minute = ApiKey.objects.get(id=api_key.id).last_used_at
    ApiKey.objects.filter(id=api_key.id).update(last_used_at=first - timedelta(minutes=2))
    client.get(TENANT_URL)
    after_a_minute = ApiKey.objects.get(id=api_key.id).last_used_at

    assert first is not None
    assert within_the_minute == first
    assert after_a_minute > first
