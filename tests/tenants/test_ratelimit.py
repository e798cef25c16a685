"""Per-key token buckets, in PostgreSQL and in Redis. The Redis tests use the real Redis at
redis://127.0.0.1:6379/15 and skip, saying so, when none is reachable there."""

import time

import pytest
import redis

from infra.devstack import free_port, redis_reachable
from tenants.api_keys import split_key
from tenants.models import ApiKey, RateLimitBucket
from tenants.ratelimit import REDIS_KEY_PREFIX, take_token
from tests.tenants.factories import api_client_for, make_api_key, make_plan, make_tenant

REDIS_TEST_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture(params=["postgres", "redis"])
def backend(request, settings, db):
    """Runs a test once per bucket store; `settings.REDIS_URL` chooses it, as in production."""
    if request.param == "redis":
        if not redis_reachable(REDIS_TEST_URL):
            pytest.skip(f"no Redis at {REDIS_TEST_URL}: the Redis rate-limit backend is not tested here")
        settings.REDIS_URL = REDIS_TEST_URL
    else:
        settings.REDIS_URL = None
    return request.param


def _key_with_plan(**plan) -> str:
    _, raw_key = make_api_key(tenant=make_tenant(plan=make_plan(**plan)))
    return raw_key


def _api_key(raw_key: str) -> ApiKey:
    return ApiKey.objects.get(prefix=split_key(raw_key)[0])


def test_requests_past_the_burst_get_a_429_problem_with_retry_after_and_ratelimit_headers(backend):
    # One token per 100 s: no refill can blur the count however slow the machine is.
    client = api_client_for(_key_with_plan(requests_per_second=0.01, burst=2))

    first, second, third = (client.get("/v1/tenant") for _ in range(3))

    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 429]
    assert (first["RateLimit-Limit"], first["RateLimit-Remaining"]) == ("2", "1")
    assert (second["RateLimit-Limit"], second["RateLimit-Remaining"]) == ("2", "0")
    assert int(second["RateLimit-Reset"]) > 100
    body = third.json()
    assert third["Content-Type"] == "application/problem+json"
    assert body["type"].endswith("/rate-limited")
    assert 1 <= int(third["Retry-After"]) <= 100
    assert third["RateLimit-Limit"] == "2"
    assert third["RateLimit-Remaining"] == "0"
    assert int(third["RateLimit-Reset"]) >= 1


def test_the_bucket_refills_at_the_plans_rate(backend):
    api_key_id = _api_key(make_api_key()[1]).id

    admitted = [take_token(api_key_id=api_key_id, rate=1, burst=2).allowed for _ in range(3)]
    time.sleep(1.1)
    after_refill = take_token(api_key_id=api_key_id, rate=1, burst=2)

    assert admitted == [True, True, False]
    assert after_refill.allowed


def test_each_key_has_its_own_bucket(backend):
    tenant = make_tenant(plan=make_plan(requests_per_second=0.01, burst=1))
    _, first_key = make_api_key(tenant=tenant)
    _, second_key = make_api_key(tenant=tenant)

    assert api_client_for(first_key).get("/v1/tenant").status_code == 200
    assert api_client_for(first_key).get("/v1/tenant").status_code == 429
    assert api_client_for(second_key).get("/v1/tenant").status_code == 200


def test_the_bucket_lives_where_the_configuration_says(backend):
    raw_key = _key_with_plan()

    api_client_for(raw_key).get("/v1/tenant")

    in_redis = redis_reachable(REDIS_TEST_URL) and redis.Redis.from_url(REDIS_TEST_URL).exists(
        f"{REDIS_KEY_PREFIX}{_api_key(raw_key).id}"
    )
    in_postgres = RateLimitBucket.objects.filter(api_key=_api_key(raw_key)).exists()
    assert (in_redis, in_postgres) == ((True, False) if backend == "redis" else (False, True))


def test_with_redis_down_the_limit_still_holds_in_postgresql(settings, db):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    client = api_client_for(_key_with_plan(requests_per_second=0.01, burst=1))

    statuses = [client.get("/v1/tenant").status_code for _ in range(2)]

    assert statuses == [200, 429]
    assert RateLimitBucket.objects.count() == 1
