from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenants import selectors, services
from tenants.actors import Actor
from tenants.models import Tenant
from tenants.rls import operator_transaction


class Command(BaseCommand):
    help = "Suspend a tenant (its API keys are refused from the next request on), or reactivate it."

    def add_arguments(self, parser):
        parser.add_argument("tenant", help="tenant slug or id")
        parser.add_argument("--reactivate", action="store_true", help="make a suspended tenant active again")
        parser.add_argument("--reason", default="", help="recorded in the audit log")

    def handle(self, *args, **options):
        change = services.reactivate_tenant if options["reactivate"] else services.suspend_tenant
        with operator_transaction():
            try:
                tenant = change(
                    tenant=selectors.tenant_by_slug_or_id(slug_or_id=options["tenant"]),
                    reason=options["reason"],
                    actor=Actor.command("suspend_tenant"),
                )
            except Tenant.DoesNotExist:
                raise CommandError(f"There is no tenant {options['tenant']!r}.") from None
            except ValidationError as error:
                raise CommandError("; ".join(error.messages)) from None
        self.stdout.write(f"Tenant {tenant.slug} is now {tenant.status}.")
