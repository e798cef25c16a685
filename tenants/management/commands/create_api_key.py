import json
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from tenants import selectors, services
from tenants.actors import Actor
from tenants.models import Scope, Tenant
from tenants.rls import operator_transaction

DEFAULT_SCOPES = ",".join([Scope.READ, Scope.ENROLL, Scope.IDENTIFY])


class Command(BaseCommand):
    help = "Issue an API key for a tenant. The key is printed once; it is not stored."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="tenant slug or id")
        parser.add_argument("--name", required=True, help="what the key is for, e.g. 'door controller'")
        parser.add_argument(
            "--scopes",
            default=DEFAULT_SCOPES,
            help=f"comma-separated subset of {','.join(Scope.values)} (default: {DEFAULT_SCOPES})",
        )
        parser.add_argument("--expires-in-days", type=int, help="default: the key does not expire")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, **options):
        days = options["expires_in_days"]
        if days is not None and not 1 <= days <= services.MAX_KEY_LIFETIME_DAYS:
            raise CommandError(f"--expires-in-days must be from 1 to {services.MAX_KEY_LIFETIME_DAYS}.")
        with operator_transaction():
            try:
                issued = services.create_api_key(
                    tenant=selectors.tenant_by_slug_or_id(slug_or_id=options["tenant"]),
                    name=options["name"],
                    scopes=[scope.strip() for scope in options["scopes"].split(",") if scope.strip()],
                    expires_at=timezone.now() + timedelta(days=days) if days else None,
                    actor=Actor.command("create_api_key"),
                )
            except Tenant.DoesNotExist:
                raise CommandError(f"There is no tenant {options['tenant']!r}.") from None
            except ValidationError as error:
                raise CommandError("; ".join(error.messages)) from None
        api_key = issued.api_key
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "api_key_id": str(api_key.id),
                        "tenant_id": str(api_key.tenant_id),
                        "prefix": api_key.prefix,
                        "scopes": api_key.scopes,
                        "expires_at": api_key.expires_at.isoformat() if api_key.expires_at else None,
                        "api_key": issued.raw_key,
                    }
                )
            )
        else:
            self.stdout.write(
                f"Issued {api_key.prefix} ({', '.join(api_key.scopes)}) for {api_key.tenant.slug}.\n"
                f"API key, shown once (it is not stored): {issued.raw_key}"
            )
