import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from tenants import services
from tenants.actors import Actor
from tenants.models import Plan, Scope
from tenants.rls import operator_transaction


class Command(BaseCommand):
    help = "Create a tenant and its first API key (all scopes). The key is printed once; it is not stored."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True)
        parser.add_argument("--plan", help=f"plan name (default: {services.DEFAULT_PLAN_NAME})")
        parser.add_argument("--slug", help="URL-safe identifier (default: derived from the name)")
        parser.add_argument(
            "--json", action="store_true", help='print {"tenant_id": ..., "slug": ..., "api_key": ...}'
        )

    def handle(self, *args, **options):
        plan_name = options["plan"] or services.DEFAULT_PLAN_NAME
        with operator_transaction():
            try:
                tenant, issued = services.create_tenant_with_api_key(
                    name=options["name"],
                    slug=options["slug"],
                    plan=Plan.objects.get(name=plan_name),
                    key_name="default",
                    scopes=Scope.values,
                    actor=Actor.command("create_tenant"),
                )
            except Plan.DoesNotExist:
                raise CommandError(f"There is no plan named {plan_name!r}.") from None
            except ValidationError as error:
                raise CommandError("; ".join(error.messages)) from None
        if options["json"]:
            self.stdout.write(
                json.dumps({"tenant_id": str(tenant.id), "slug": tenant.slug, "api_key": issued.raw_key})
            )
        else:
            self.stdout.write(
                f"Created tenant {tenant.name!r} (slug {tenant.slug}, id {tenant.id}) on plan "
                f"{tenant.plan.name}.\nAPI key, shown once (it is not stored): {issued.raw_key}"
            )
