"""Seed a gallery with many synthetic templates, fast, for the search and identify benchmarks.

Embeddings mimic a real gallery: one unit-norm centre per subject and templates scattered around it (the
spread is chosen so that same-subject cosine is ~0.7 and cross-subject ~0, as SFace gives on LFW). Rows
are written with COPY inside the tenant's transaction, so row-level security checks every one of them.
"""

import uuid

import numpy as np
from django.db import connection
from django.utils import timezone

from identity.models import Face, FaceTemplate, Gallery, Subject
from tenants.rls import tenant_transaction

TEMPLATE_SPREAD = 0.055


def synthetic_embeddings(
    count: int, *, subjects: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (count, 128) float32 unit rows, subject index per row)."""
    centres = rng.standard_normal((subjects, 128)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    owner = rng.integers(0, subjects, size=count)
    vectors = centres[owner] + rng.standard_normal((count, 128)).astype(np.float32) * TEMPLATE_SPREAD
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, owner


def _insert(table: str, columns: dict[str, str], rows, chunk: int = 10_000) -> None:
    """Bulk INSERT ... SELECT FROM unnest(arrays): COPY is refused on tables under row-level security."""
    names, types = list(columns), list(columns.values())
    selects = ", ".join(f"%s::{kind}[]" for kind in types)
    sql = f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({selects})"
    rows = list(rows)
    with connection.cursor() as cursor:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            cursor.execute(sql, [list(column) for column in zip(*part, strict=True)])


def seed_gallery(
    *, tenant, gallery: Gallery, embeddings: np.ndarray, owner: np.ndarray, batch: int = 50_000
) -> None:
    subject_ids = [uuid.uuid4() for _ in range(int(owner.max()) + 1)]
    now = timezone.now()
    with tenant_transaction(tenant.id):
        _insert(
            Subject._meta.db_table,
            {
                "id": "uuid",
                "tenant_id": "uuid",
                "gallery_id": "uuid",
                "external_id": "text",
                "name": "text",
                "metadata": "jsonb",
                "created_at": "timestamptz",
                "updated_at": "timestamptz",
            },
            (
                (sid, tenant.id, gallery.id, f"seed-{index}", "", "{}", now, now)
                for index, sid in enumerate(subject_ids)
            ),
        )
    for start in range(0, len(embeddings), batch):
        chunk = range(start, min(start + batch, len(embeddings)))
        face_ids = [uuid.uuid4() for _ in chunk]
        with tenant_transaction(tenant.id):
            _insert(
                Face._meta.db_table,
                {
                    "id": "uuid",
                    "tenant_id": "uuid",
                    "gallery_id": "uuid",
                    "subject_id": "uuid",
                    "bbox": "jsonb",
                    "landmarks": "jsonb",
                    "detection_score": "float8",
                    "quality_score": "float8",
                    "quality_issues": "jsonb",
                    "masked": "bool",
                    "mask_probability": "float8",
                    "model_version": "text",
                    "image_key": "text",
                    "image_sha256": "text",
                    "created_at": "timestamptz",
                },
                (
                    (
                        face_ids[i - start],
                        tenant.id,
                        gallery.id,
                        subject_ids[owner[i]],
                        "{}",
                        "{}",
                        0.9,
                        0.9,
                        "[]",
                        False,
                        0.0,
                        gallery.model_version,
                        "",
                        "0" * 64,
                        now,
                    )
                    for i in chunk
                ),
            )
            _insert(
                FaceTemplate._meta.db_table,
                {
                    "tenant_id": "uuid",
                    "gallery_id": "uuid",
                    "subject_id": "uuid",
                    "face_id": "uuid",
                    "kind": "text",
                    "embedding": "vector",
                    "model_version": "text",
                },
                (
                    (
                        tenant.id,
                        gallery.id,
                        subject_ids[owner[i]],
                        face_ids[i - start],
                        "original",
                        "[" + ",".join(f"{v:.6f}" for v in embeddings[i]) + "]",
                        gallery.model_version,
                    )
                    for i in chunk
                ),
            )
