"""Scope checks for API-key requests.

A view declares `required_scopes = {"GET": "read", "POST": "enroll"}` (HEAD and OPTIONS follow GET) or one
`required_scope` for every method. A view that declares neither needs `read` for safe methods and `manage`
for the rest, so a forgotten declaration fails towards less access. `manage` implies every other scope: a key
that may configure its tenant could grant itself any of them.
"""

from rest_framework.permissions import SAFE_METHODS, BasePermission

from tenants.actors import ApiKeyPrincipal
from tenants.models import Scope


def required_scope(view, method: str) -> str:
    declared = getattr(view, "required_scopes", {})
    if method in declared:
        return declared[method]
    if method in {"HEAD", "OPTIONS"} and "GET" in declared:
        return declared["GET"]
    single = getattr(view, "required_scope", None)
    if single is not None:
        return single
    return Scope.READ if method in SAFE_METHODS else Scope.MANAGE


class HasScope(BasePermission):
    """Only API-key requests pass; one without credentials gets 401, one lacking the scope a 403 problem."""

    def has_permission(self, request, view):
        # Imported here, not above: DRF imports this module while `rest_framework.views` is still loading,
        # and tenants.problems imports `rest_framework.views` itself (through infra.problems).
        from tenants.problems import InsufficientScope

        principal = request.user
        if not isinstance(principal, ApiKeyPrincipal):
            return False
        scope = required_scope(view, request.method)
        if not principal.has_scope(scope):
            raise InsufficientScope(
                f"This API key lacks the `{scope}` scope, which {request.method} {request.path} requires.",
                extra={"required_scope": scope},
            )
        return True
