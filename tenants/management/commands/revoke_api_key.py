from django.core.management.base import BaseCommand, CommandError

from tenants import services
from tenants.actors import Actor
from tenants.models import ApiKey
from tenants.rls import operator_transaction


class Command(BaseCommand):
    help = "Revoke an API key by its public prefix (vsr_live_xxxxxxxx); it stops working at once."

    def add_arguments(self, parser):
        parser.add_argument("prefix")

    def handle(self, *args, **options):
        with operator_transaction():
            try:
                api_key = ApiKey.objects.select_related("tenant").get(prefix=options["prefix"])
            except ApiKey.DoesNotExist:
                raise CommandError(f"There is no API key with prefix {options['prefix']!r}.") from None
            services.revoke_api_key(api_key=api_key, actor=Actor.command("revoke_api_key"))
        self.stdout.write(
            f"Revoked {api_key.prefix} of {api_key.tenant.slug} at {api_key.revoked_at.isoformat()}."
        )
