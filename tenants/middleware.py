from django.urls import reverse

from tenants.rls import operator_transaction


class RateLimitHeadersMiddleware:
    """Adds the RateLimit-* headers of the request's rate-limit decision to whatever the view answered."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        decision = getattr(request, "rate_limit", None)
        if decision is not None:
            for name, value in decision.headers().items():
                response.headers.setdefault(name, value)
        return response


class OperatorConsoleMiddleware:
    """The operator console sees every tenant's data: staff requests to the admin run on the operator path.

    Only staff, and only under the admin's URL; everything else stays scoped by row-level security.
    Must come after AuthenticationMiddleware.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if (
            request.path.startswith(reverse("admin:index"))
            and request.user.is_active
            and request.user.is_staff
        ):
            with operator_transaction():
                return self.get_response(request)
        return self.get_response(request)
