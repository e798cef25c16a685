"""Nearest-template search in pgvector, one gallery at a time.

A single HNSW index over every tenant's templates, filtered afterwards by gallery, silently returns short or
wrong lists (the filter runs after the approximate scan). So small galleries are searched exactly (a
sequential scan of the gallery's rows through its b-tree index), and a gallery that grows past
`ANN_MIN_TEMPLATES` gets its own partial HNSW index (`WHERE gallery_id = '<id>'`), searched with iterative
scans so that any remaining filter (model version during a re-embed) cannot shorten the list. Once a
process holds the 8-bit codes of such a gallery (identity.quantised_scan), it scans them all instead, and
PostgreSQL scores the best of them exactly, with every template added since: HNSW's recall falls as a gallery
grows, the scan's does not. Recall against exact search is measured by bench/search.py
(docs/performance.md).
"""

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from django.db import connection, transaction

from identity import quantised_scan
from identity.models import FaceTemplate, Gallery

ANN_MIN_TEMPLATES = 20_000
# Face embeddings spread identities over most of the 128 dimensions (they are trained to), so the nearest
# impostors of a probe are barely closer than the rest and HNSW needs a dense graph: on LFW-fitted data
# (bench/search.py, docs/performance.md) m = 32 / ef_construction = 256 reaches recall@10 0.985 at ef_search
# 200 and 0.999 at 400 for 100,000 templates, where m = 16 / 128 needed ef_search 800. Costs: ~4x the build
# time and ~25 % more index than m = 16. ef_search 300 keeps recall@10 above 0.99 at 100,000 templates
# (0.995, the exact best template found for every probe) for three quarters of the time of 400 (p50 10.8 vs
# 14.5 ms): identify spends that on embedding each face together with its mirror image.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 256
HNSW_EF_SEARCH = 300
# In-memory build (~1.7 kB of graph per template at m = 32: 2 GB holds ~1.2 M templates), with this many
# parallel workers besides the leader: set it to the database's vCPUs - 1.
HNSW_BUILD_MAINTENANCE_WORK_MEM = "2GB"
HNSW_BUILD_PARALLEL_WORKERS = 1
TEMPLATES_PER_SUBJECT_FETCHED = 8
MIN_TEMPLATES_FETCHED = 50

_TABLE = FaceTemplate._meta.db_table
_LARGEST_ID = 2**63 - 1


@dataclass(frozen=True)
class TemplateHit:
    subject_id: uuid.UUID
    face_id: uuid.UUID
    kind: str
    similarity: float


def ann_index_name(gallery_id: uuid.UUID | str) -> str:
    return f"identity_tpl_hnsw_{uuid.UUID(str(gallery_id)).hex}"


def _vector_literal(embedding: np.ndarray) -> str:
    return "[" + ",".join(f"{value:.7g}" for value in np.asarray(embedding, dtype=np.float32)) + "]"


def nearest_templates(
    *,
    tenant_id: uuid.UUID,
    gallery: Gallery,
    embedding: np.ndarray,
    limit: int,
    subject_id: uuid.UUID | None = None,
    kinds: tuple[str, ...] | None = None,
) -> list[TemplateHit]:
    """The `limit` templates most similar (cosine) to `embedding` in the gallery (of the subject, of the given
    kinds), most similar first.

    Runs inside the caller's tenant transaction; the explicit tenant filter duplicates what row-level
    security enforces, so that a policy mistake can never widen a search.
    """
    codes = (
        quantised_scan.codes_for(tenant_id=tenant_id, gallery=gallery)
        if gallery.ann_index_name and subject_id is None and kinds is None
        else None
    )
    if codes is None:
        rows = _nearest_rows(tenant_id, gallery, embedding, limit, subject_id, kinds, explain=False)
    else:
        rows = _rescored_rows(tenant_id, gallery, embedding, limit, codes)
    hits = [
        TemplateHit(subject_id=row[0], face_id=row[1], kind=row[2], similarity=float(row[3])) for row in rows
    ]
    # relaxed_order may return neighbours slightly out of order.
    hits.sort(key=lambda hit: hit.similarity, reverse=True)
    return hits


def nearest_templates_plan(
    *,
    tenant_id: uuid.UUID,
    gallery: Gallery,
    embedding: np.ndarray,
    limit: int,
    subject_id: uuid.UUID | None = None,
) -> list[str]:
    """The scans PostgreSQL chooses for `nearest_templates` with the same arguments (EXPLAIN lines)."""
    rows = _nearest_rows(tenant_id, gallery, embedding, limit, subject_id, None, explain=True)
    return [row[0].strip() for row in rows if "Scan" in row[0]]


def _nearest_rows(
    tenant_id, gallery: Gallery, embedding: np.ndarray, limit: int, subject_id, kinds, *, explain: bool
) -> list[tuple]:
    """The rows of the nearest-templates query, or of its EXPLAIN, run with the search's planner settings."""
    # The gallery id is inlined (it is a UUID, never user text) so the planner can match the partial index.
    gallery_literal = str(uuid.UUID(str(gallery.id)))
    subject_filter = "AND subject_id = %(subject_id)s" if subject_id else ""
    kind_filter = "AND kind = ANY(%(kinds)s)" if kinds else ""
    sql = f"""
        SELECT subject_id, face_id, kind, 1 - (embedding <=> %(probe)s::vector) AS similarity
        FROM {_TABLE}
        WHERE gallery_id = '{gallery_literal}' AND tenant_id = %(tenant_id)s
              AND model_version = %(model_version)s {subject_filter} {kind_filter}
        ORDER BY embedding <=> %(probe)s::vector
        LIMIT %(limit)s
    """
    params = {
        "probe": _vector_literal(embedding),
        "tenant_id": tenant_id,
        "model_version": gallery.model_version,
        "subject_id": subject_id,
        "kinds": list(kinds or ()),
        "limit": limit,
    }
    with (
        transaction.atomic(),
        connection.cursor() as cursor,
        _search_settings(cursor, gallery=gallery, limit=limit, subject_id=subject_id),
    ):
        cursor.execute(("EXPLAIN " if explain else "") + sql, params)
        return cursor.fetchall()


def _rescored_rows(
    tenant_id, gallery: Gallery, embedding: np.ndarray, limit: int, codes: quantised_scan.GalleryCodes
) -> list[tuple]:
    """The nearest-templates rows among the codes' candidates and the templates added since the codes."""
    candidates = codes.candidates(embedding, quantised_scan.CANDIDATE_FACTOR * limit)
    scope = "tenant_id = %(tenant_id)s AND model_version = %(model_version)s"
    # Both parts must be read through one index each, which the planner's estimates cannot see (a new
    # gallery has no statistics; a gallery's newest rows are few), and it picked plans that walk a whole
    # gallery instead (20-60 ms at 30 k-1 M templates, against well under a millisecond):
    # - the candidates by primary key: the gallery, tenant and model are tested as one IS TRUE condition,
    #   which no index can serve, so that the gallery's own indexes are not walked for them;
    # - the added templates as one range of the (gallery_id, id) index: bounded on both sides by row
    #   comparisons (an equality on gallery_id beside them starts the walk at the gallery's first row) and
    #   ordered as that index is, with sorting off, so that neither the primary key (through every newer row
    #   of other galleries) nor the gallery's or tenant's index is walked.
    sql = f"""
        WITH scored AS (
            SELECT subject_id, face_id, kind, embedding <=> %(probe)s::vector AS distance, false AS added
            FROM {_TABLE}
            WHERE id = ANY(%(candidates)s::bigint[]) AND (gallery_id = %(gallery_id)s AND {scope}) IS TRUE
            UNION ALL (
                SELECT subject_id, face_id, kind, embedding <=> %(probe)s::vector, true
                FROM {_TABLE}
                WHERE (gallery_id, id) > (%(gallery_id)s, %(through_id)s)
                      AND (gallery_id, id) <= (%(gallery_id)s, %(last_id)s) AND {scope}
                ORDER BY gallery_id, id
            )
        )
        SELECT subject_id, face_id, kind, 1 - distance,
               count(*) FILTER (WHERE added) OVER (), count(*) FILTER (WHERE NOT added) OVER ()
        FROM scored ORDER BY distance LIMIT %(limit)s
    """
    params = {
        "probe": _vector_literal(embedding),
        "candidates": candidates.tolist(),
        "through_id": codes.through_id,
        "last_id": _LARGEST_ID,
        "gallery_id": gallery.id,
        "tenant_id": tenant_id,
        "model_version": gallery.model_version,
        "limit": limit,
    }
    with (
        transaction.atomic(),
        connection.cursor() as cursor,
        _planner_settings(cursor, enable_sort="off", enable_incremental_sort="off"),
    ):
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    added, live_candidates = (rows[0][4], rows[0][5]) if rows else (0, 0)
    if codes.needs_remaking(added=added, live_candidates=live_candidates, wanted=limit):
        quantised_scan.remake_in_background(
            tenant_id=tenant_id, gallery_id=gallery.id, model_version=gallery.model_version
        )
    return [row[:4] for row in rows]


@contextmanager
def _search_settings(cursor, *, gallery: Gallery, limit: int, subject_id) -> Iterator[None]:
    """Planner settings for one search. They are transaction-local; enable_sort is undone afterwards, as the
    caller's transaction goes on, and the two hnsw settings are left: only HNSW scans read them."""
    # Only the gallery's own partial HNSW index can use these two.
    cursor.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
    cursor.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(max(HNSW_EF_SEARCH, 4 * limit))])
    # The planner multiplies the selectivities of the gallery, tenant and row-level-security filters as if
    # they were independent; once other galleries' rows dominate the table it expects a few hundred rows and
    # sorts the whole gallery exactly (minutes at 1 M templates) instead of walking its index. One subject's
    # few templates, by contrast, are best found through the b-tree and sorted.
    if not gallery.ann_index_name or subject_id is not None:
        yield
        return
    with _planner_settings(cursor, enable_sort="off"):
        yield


@contextmanager
def _planner_settings(cursor, **values: str) -> Iterator[None]:
    """Planner settings for the statements inside, undone afterwards: they are transaction-local and the
    caller's transaction goes on."""
    names = list(values)
    reads = ", ".join(["current_setting(%s)"] * len(names))
    writes = ", ".join(["set_config(%s, %s, true)"] * len(names))
    cursor.execute(f"SELECT {reads}, {writes}", names + [item for pair in values.items() for item in pair])
    previous = cursor.fetchone()[: len(names)]
    yield
    cursor.execute("SELECT " + writes, [item for pair in zip(names, previous, strict=True) for item in pair])


def build_ann_index(*, gallery_id: uuid.UUID | str) -> str | None:
    """Create the gallery's partial HNSW index without blocking writes (must run outside a transaction);
    its name, or None when another build of it is running now.

    The graph is built in memory while it fits in maintenance_work_mem (a build that spills to disk is
    several times slower), in parallel with HNSW_BUILD_PARALLEL_WORKERS workers besides the leader. A parallel
    build keeps the graph in dynamic shared memory: the database's /dev/shm must hold maintenance_work_mem.

    A build interrupted by a dying worker or database leaves an invalid index behind, which the planner never
    uses and IF NOT EXISTS would keep for ever (the gallery searched exactly, slowly): the next build drops it
    and starts again. One build of a gallery runs at a time (a session advisory lock), so the index a build
    finds invalid is never another one's still in progress; a build that finds the lock taken leaves at
    once, since waiting for it would hold a snapshot the running build's CREATE INDEX CONCURRENTLY waits for.
    """
    name = ann_index_name(gallery_id)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [name])
        if not cursor.fetchone()[0]:
            return None
        try:
            cursor.execute(f"SET maintenance_work_mem = '{HNSW_BUILD_MAINTENANCE_WORK_MEM}'")
            cursor.execute(f"SET max_parallel_maintenance_workers = {int(HNSW_BUILD_PARALLEL_WORKERS)}")
            try:
                if _ann_index_is_invalid(cursor, name):
                    cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
                cursor.execute(
                    f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {_TABLE} "
                    f"USING hnsw (embedding vector_cosine_ops) "
                    f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) "
                    f"WHERE gallery_id = '{uuid.UUID(str(gallery_id))}'"
                )
            finally:
                # Session state: do not leave it on a pooled connection.
                cursor.execute("RESET maintenance_work_mem")
                cursor.execute("RESET max_parallel_maintenance_workers")
        finally:
            cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [name])
    return name


def _ann_index_is_invalid(cursor, name: str) -> bool:
    cursor.execute(
        "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND pg_table_is_visible(c.oid)",
        [name],
    )
    row = cursor.fetchone()
    return bool(row and row[0])


def drop_ann_index(*, gallery_id: uuid.UUID | str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {ann_index_name(gallery_id)}")
