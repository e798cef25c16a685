"""The API with the two identify fixes docs/performance.md proposes, for benchmarking them before they land.

    .venv/bin/python -m gunicorn bench.patched_wsgi --bind=127.0.0.1:8001 --workers=2 --threads=4
    .venv/bin/python -m bench.identify_http --base-url http://127.0.0.1:8001

Started beside `make run` (same database, broker and S3 through var/visor.env), with the same gunicorn
settings as `make run`. The two patches, applied when the workers import the app:

1. `selectors.gallery_get` without its per-request counts. The real one annotates COUNT(DISTINCT subject) and
   COUNT(DISTINCT face) over two LEFT JOINs, i.e. it builds subjects x faces rows: for a gallery of 33,000
   faces of 20,000 subjects that is 6.6e8 rows, minutes per identify. Here the counts are None (the benchmark
   reads only the gallery's id from the answers that show them).
2. `search.nearest_templates` with `enable_sort = off` around the query of a gallery that has an HNSW index.
   The planner multiplies the selectivities of `gallery_id`, `tenant_id` and the row-level-security clause
   as if they were independent; once other tenants' rows dominate the table it expects a few hundred rows
   and sorts the gallery exactly instead of using its HNSW index.
"""

from infra.env import load_local_env

load_local_env()

from infra.wsgi import application  # noqa: E402  (sets Django up)


def _patch() -> None:
    from django.db import connection

    from identity import search, selectors
    from identity.models import Gallery

    original_nearest_templates = search.nearest_templates

    def gallery_get(*, tenant, gallery_id) -> Gallery:
        gallery = selectors._get(Gallery.objects.filter(tenant=tenant), gallery_id, "gallery")
        gallery.subject_count = gallery.face_count = None
        return gallery

    def nearest_templates(*, gallery, **kwargs):
        if not gallery.ann_index_name:
            return original_nearest_templates(gallery=gallery, **kwargs)
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('enable_sort', 'off', true)")
        try:
            return original_nearest_templates(gallery=gallery, **kwargs)
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('enable_sort', 'on', true)")

    selectors.gallery_get = gallery_get
    search.nearest_templates = nearest_templates


_patch()

__all__ = ["application"]
