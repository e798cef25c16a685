"""The problem types (RFC 9457) of authentication, scopes, rate limits, quotas and capacity."""

from infra.problems import Problem


class TenantSuspended(Problem):
    status_code = 403
    problem_type = "tenant-suspended"
    title = "The tenant is not active"


class InsufficientScope(Problem):
    status_code = 403
    problem_type = "insufficient-scope"
    title = "The API key lacks a required scope"


class RateLimited(Problem):
    status_code = 429
    problem_type = "rate-limited"
    title = "Too many requests"


class QuotaExceeded(Problem):
    """The monthly included units are used up and the plan does not allow overage.

    429 rather than 402: the request may succeed again later (when the quota resets, given in `resets_at` and
    `Retry-After`) and HTTP clients already know to back off on 429, while 402 has no standard semantics.
    The `quota-exceeded` type tells it apart from a rate limit.
    """

    status_code = 429
    problem_type = "quota-exceeded"
    title = "Monthly quota exceeded"


class CapacityExceeded(Problem):
    """A gallery or the tenant holds as many faces as the plan allows; deleting faces makes room."""

    status_code = 409
    problem_type = "capacity-exceeded"
    title = "Plan capacity exceeded"
