"""`python manage.py reembed --gallery <id>`: recompute a gallery's templates after a model change."""

from django.core.management.base import BaseCommand, CommandError

from identity.models import Gallery
from identity.services import reembed_gallery
from tenants.rls import operator_transaction


class Command(BaseCommand):
    help = "Recompute a gallery's templates from its stored images with the running model, without downtime."

    def add_arguments(self, parser):
        parser.add_argument("--gallery", required=True, help="Gallery id")

    def handle(self, *args, gallery: str, **options):
        with operator_transaction():
            found = Gallery.objects.select_related("tenant").filter(id=gallery).first()
        if found is None:
            raise CommandError(f"No gallery {gallery}.")
        report = reembed_gallery(
            tenant=found.tenant,
            gallery_id=found.id,
            progress=lambda done, total: self.stdout.write(f"\r{done}/{total} faces", ending=""),
        )
        if report.faces_without_image:
            raise CommandError(
                f"{report.faces_without_image} faces have no stored image (the tenant does not store images, "
                "or retention removed them); their templates cannot be recomputed. Nothing was switched."
            )
        self.stdout.write(
            f"\nGallery {report.gallery_id}: {report.faces_reembedded} faces re-embedded, "
            f"{report.from_version} -> {report.to_version}."
        )
