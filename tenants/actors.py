"""Who does something: the API-key principal of a request, an operator, or the system.

`as_actor()` accepts what callers naturally hold (`request.user` of an API request or of the console, an
ApiKey, or an explicit `Actor`) so that other apps can pass it straight to `record_audit_event`.
"""

from dataclasses import dataclass
from typing import ClassVar

from django.contrib.auth.models import AbstractBaseUser

from tenants.models import ApiKey, AuditEvent, Scope, Tenant


@dataclass(frozen=True)
class ApiKeyPrincipal:
    """`request.user` of a request authenticated with an API key. Not a Django user."""

    api_key: ApiKey
    tenant: Tenant

    is_authenticated: ClassVar[bool] = True
    is_anonymous: ClassVar[bool] = False

    def has_scope(self, scope: str) -> bool:
        # A `manage` key can configure its tenant, which is the power to grant any scope; it implies them all.
        return scope in self.api_key.scopes or Scope.MANAGE in self.api_key.scopes

    def __str__(self) -> str:
        return self.api_key.prefix


@dataclass(frozen=True)
class Actor:
    type: str
    id: str
    label: str

    @classmethod
    def operator(cls, user: AbstractBaseUser) -> "Actor":
        return cls(type=AuditEvent.ActorType.OPERATOR, id=str(user.pk), label=user.get_username())

    @classmethod
    def command(cls, name: str) -> "Actor":
        """An operator at the command line; management commands have no user account to name."""
        return cls(type=AuditEvent.ActorType.OPERATOR, id="", label=f"manage.py {name}")

    @classmethod
    def key(cls, api_key: ApiKey) -> "Actor":
        return cls(type=AuditEvent.ActorType.API_KEY, id=str(api_key.id), label=api_key.prefix)

    @classmethod
    def system(cls, label: str) -> "Actor":
        return cls(type=AuditEvent.ActorType.SYSTEM, id="", label=label)


def as_actor(who: "Actor | ApiKeyPrincipal | ApiKey | AbstractBaseUser") -> Actor:
    if isinstance(who, Actor):
        return who
    if isinstance(who, ApiKeyPrincipal):
        return Actor.key(who.api_key)
    if isinstance(who, ApiKey):
        return Actor.key(who)
    if isinstance(who, AbstractBaseUser) and who.is_authenticated:
        return Actor.operator(who)
    raise TypeError(f"cannot record {who!r} as the actor of an audit event")
