"""Per-key request rate limits: a token bucket per API key, sized by the tenant's plan.

The bucket holds up to `burst` tokens and refills at `requests_per_second`; each request takes one. It lives
in Redis when `REDIS_URL` is set (one Lua script, atomic in Redis) and otherwise in PostgreSQL (one upsert,
atomic on the key's row). Redis failing falls back to PostgreSQL, so limits never silently lapse.

The PostgreSQL upsert runs in autocommit, before the view opens any transaction, so the bucket row is
locked only for that one statement: concurrent requests of a key do not wait on each other's work.

`ApiKeyRateThrottle` is the DRF default throttle. Every answer to an API-key request carries
`RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the bucket is full again;
added by tenants.middleware.RateLimitHeadersMiddleware); a refused one is a 429 problem with `Retry-After`.
"""

import logging
import math
import uuid
from dataclasses import dataclass
from functools import cache

import redis
from django.conf import settings
from django.db import connection
from rest_framework.throttling import BaseThrottle

from tenants import problems
from tenants.models import ApiKey, RateLimitBucket

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_SECONDS = 0.25
REDIS_KEY_PREFIX = "visor:ratelimit:"


@dataclass(frozen=True)
class RateLimitDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: int
    retry_after: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


def _decision(*, allowed: bool, tokens: float, rate: float, burst: int) -> RateLimitDecision:
    return RateLimitDecision(
        allowed=allowed,
        limit=burst,
        remaining=max(0, math.floor(tokens)),
        reset_after=max(0, math.ceil((burst - tokens) / rate)),
        retry_after=0 if allowed else max(1, math.ceil((1 - tokens) / rate)),
    )


# Redis's own clock keeps every API process on the same time line.
_TAKE_TOKEN_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
local available = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if available >= 1 then
  available = available - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(available), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(available)}
"""


@cache
def _redis_script(url: str):
    client = redis.Redis.from_url(
        url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS
    )
    return client.register_script(_TAKE_TOKEN_LUA)


def _take_from_redis(*, url: str, api_key_id: uuid.UUID, rate: float, burst: int) -> RateLimitDecision:
    allowed, tokens = _redis_script(url)(keys=[f"{REDIS_KEY_PREFIX}{api_key_id}"], args=[rate, burst])
    return _decision(allowed=bool(allowed), tokens=float(tokens), rate=rate, burst=burst)


_AVAILABLE_SQL = (
    "LEAST(%(burst)s::float8, bucket.tokens + %(rate)s::float8"
    " * GREATEST(0, extract(epoch FROM statement_timestamp() - bucket.refilled_at)::float8))"
)
_TAKE_TOKEN_SQL = f"""
INSERT INTO {RateLimitBucket._meta.db_table} AS bucket (api_key_id, tokens, refilled_at, last_request_allowed)
VALUES (%(api_key_id)s, %(burst)s::float8 - 1, statement_timestamp(), true)
ON CONFLICT (api_key_id) DO UPDATE SET
    tokens = {_AVAILABLE_SQL} - CASE WHEN {_AVAILABLE_SQL} >= 1 THEN 1 ELSE 0 END,
    refilled_at = GREATEST(bucket.refilled_at, statement_timestamp()),
    last_request_allowed = {_AVAILABLE_SQL} >= 1
RETURNING tokens, last_request_allowed
"""


def _take_from_postgres(*, api_key_id: uuid.UUID, rate: float, burst: int) -> RateLimitDecision:
    with connection.cursor() as cursor:
        cursor.execute(_TAKE_TOKEN_SQL, {"api_key_id": api_key_id, "rate": rate, "burst": burst})
        tokens, allowed = cursor.fetchone()
    return _decision(allowed=allowed, tokens=tokens, rate=rate, burst=burst)


def take_token(*, api_key_id: uuid.UUID, rate: float, burst: int) -> RateLimitDecision:
    if settings.REDIS_URL:
        try:
            return _take_from_redis(url=settings.REDIS_URL, api_key_id=api_key_id, rate=rate, burst=burst)
        except redis.RedisError:
            logger.warning("rate limiting in PostgreSQL: Redis is unavailable", exc_info=True)
    return _take_from_postgres(api_key_id=api_key_id, rate=rate, burst=burst)


class ApiKeyRateThrottle(BaseThrottle):
    """Requests without an API key are not metered here: they are refused by authentication anyway."""

    def allow_request(self, request, view):
        api_key = request.auth
        if not isinstance(api_key, ApiKey):
            return True
        plan = api_key.tenant.plan
        decision = take_token(api_key_id=api_key.id, rate=plan.requests_per_second, burst=plan.burst)
        request._request.rate_limit = decision
        if not decision.allowed:
            raise problems.RateLimited(
                f"This API key may make {plan.requests_per_second:g} requests per second "
                f"(bursts of {plan.burst}); retry in {decision.retry_after} s.",
                extra={"limit": plan.requests_per_second, "burst": plan.burst},
                headers=decision.headers(),
            )
        return True
