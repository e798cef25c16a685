"""DRF authentication with API keys: `Authorization: Bearer vsr_live_xxxxxxxx_<secret>`.

On success `request.user` is an `ApiKeyPrincipal` (not a Django user), `request.auth` the ApiKey and
`request.tenant` the caller's tenant. The key, its tenant and the tenant's plan are read on every request
(no caching), so a revoked key or a suspended tenant stops working with the very next request.

Authentication reads only control-plane tables, outside any tenant transaction; views then open
`tenant_transaction(request.tenant.id)` around their tenant data work (see tenants/views.py).
"""

from django.utils import timezone
from rest_framework import authentication, exceptions

from tenants import api_keys, selectors
from tenants.actors import ApiKeyPrincipal

KEYWORD = "Bearer"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header or header[0].lower() != KEYWORD.lower():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Send the API key as `Authorization: Bearer <key>`.")
        principal = self._principal(header[1])
        request._request.tenant = principal.tenant
        return principal, principal.api_key

    def authenticate_header(self, request):
        # Naming the scheme makes DRF answer 401 (not 403) to a request without valid credentials.
        return f'{KEYWORD} realm="visor"'

    def _principal(self, raw_key: str) -> ApiKeyPrincipal:
        # Imported here, not above: DRF imports this module while `rest_framework.views` is still loading,
        # and these modules import `rest_framework.views` themselves (through infra.problems).
        from tenants import services
        from tenants.problems import TenantSuspended

        parts = api_keys.split_key(raw_key)
        api_key = selectors.api_key_for_authentication(prefix=parts[0]) if parts else None
        if api_key is None or not api_keys.secret_matches(parts[1], api_key.secret_hash):
            raise exceptions.AuthenticationFailed("The API key is not valid.")
        now = timezone.now()
        if api_key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("The API key has been revoked.")
        if not api_key.is_usable_at(now):
            raise exceptions.AuthenticationFailed("The API key has expired.")
        tenant = api_key.tenant
        if not tenant.is_active:
            raise TenantSuspended(
                f"The tenant {tenant.slug!r} is {tenant.status}; its API keys are not accepted."
            )
        services.mark_api_key_used(api_key=api_key, now=now)
        return ApiKeyPrincipal(api_key=api_key, tenant=tenant)
