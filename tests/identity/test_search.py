"""Nearest-template search: exact for small galleries, the gallery's own HNSW index for large ones, always
inside the tenant's rows, with the same answers as exact search."""

import threading

import numpy as np
import pytest
from django.db import IntegrityError, connection, connections

from bench.seed import as_stored
from identity import search, selectors
from identity.models import Gallery, Subject
from tenants.rls import tenant_transaction
from tests.identity.conftest import seeded_gallery

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def indexed_beside_a_larger_tenant():
    """A gallery of 1,500 templates with its HNSW index, in a table where another tenant's gallery holds
    ten times as many rows (the planner then expects few rows of the small gallery)."""
    tenant, gallery, data = seeded_gallery(templates=1_500, seed=1)
    seeded_gallery(templates=15_000, seed=2)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {search._TABLE}")
    name = search.build_ann_index(gallery_id=gallery.id)
    with tenant_transaction(tenant.id):
        Gallery.objects.filter(id=gallery.id).update(ann_index_name=name)
        gallery.refresh_from_db()
    return tenant, gallery, data


def _probes(data, count: int = 20) -> np.ndarray:
    rng = np.random.default_rng(7)
    picked = data.embeddings[rng.choice(len(data.embeddings), count, replace=False)]
    noisy = picked + rng.normal(scale=0.05, size=picked.shape)
    return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)


def test_an_indexed_gallery_is_searched_through_its_own_hnsw_index(indexed_beside_a_larger_tenant):
    tenant, gallery, data = indexed_beside_a_larger_tenant

    with tenant_transaction(tenant.id):
        plan = search.nearest_templates_plan(
            tenant_id=tenant.id, gallery=gallery, embedding=data.embeddings[0], limit=50
        )

    assert any(f"Index Scan using {gallery.ann_index_name}" in line for line in plan), plan


def test_one_subjects_templates_are_found_through_the_btree_not_the_hnsw_index(
    indexed_beside_a_larger_tenant,
):
    tenant, gallery, data = indexed_beside_a_larger_tenant
    with tenant_transaction(tenant.id):
        subject = Subject.objects.filter(gallery=gallery).first()
        plan = search.nearest_templates_plan(
            tenant_id=tenant.id,
            gallery=gallery,
            embedding=data.embeddings[0],
            limit=50,
            subject_id=subject.id,
        )

    assert not any(gallery.ann_index_name in line for line in plan), plan


def test_the_index_returns_what_exact_search_returns_and_only_the_gallerys_rows(
    indexed_beside_a_larger_tenant, settings
):
    settings.VISOR_SCAN_CACHE_MB = 0  # HNSW alone (tests/identity/test_quantised_scan.py: the scan)
    tenant, gallery, data = indexed_beside_a_larger_tenant
    stored = as_stored(data.embeddings)
    with tenant_transaction(tenant.id):
        gallery_subjects = set(Subject.objects.filter(gallery=gallery).values_list("id", flat=True))

    for probe in _probes(data):
        with tenant_transaction(tenant.id):
            hits = search.nearest_templates(tenant_id=tenant.id, gallery=gallery, embedding=probe, limit=50)

        exact_top10 = np.sort(stored @ probe)[::-1][:10]
        assert [hit.similarity for hit in hits[:10]] == pytest.approx(exact_top10.tolist(), abs=1e-5)
        assert {hit.subject_id for hit in hits} <= gallery_subjects
        assert len(hits) == 50


def test_gallery_counts_are_its_own_subjects_and_faces(indexed_beside_a_larger_tenant):
    tenant, gallery, data = indexed_beside_a_larger_tenant

    with tenant_transaction(tenant.id):
        counted = selectors.gallery_with_counts_get(tenant=tenant, gallery_id=gallery.id)

    assert (counted.subject_count, counted.face_count) == (data.subjects, data.faces)


def _index_state(name: str) -> tuple[bool, str] | None:
    """Whether the index is valid, and its access method; None when there is no such index."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indisvalid, am.amname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_am am ON am.oid = c.relam WHERE c.relname = %s",
            [name],
        )
        return cursor.fetchone()


def test_an_index_left_invalid_by_an_interrupted_build_is_rebuilt():
    _, gallery, _ = seeded_gallery(templates=50, seed=3)
    name = search.ann_index_name(gallery.id)
    # A concurrent build that fails part-way leaves its index behind, invalid, as a crash would.
    with pytest.raises(IntegrityError), connection.cursor() as cursor:
        cursor.execute(
            f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {search._TABLE} (gallery_id) "
            f"WHERE gallery_id = '{gallery.id}'"
        )
    assert _index_state(name) == (False, "btree")

    assert search.build_ann_index(gallery_id=gallery.id) == name

    assert _index_state(name) == (True, "hnsw")


def test_a_build_that_finds_another_running_leaves_at_once_without_waiting_for_it():
    _, gallery, _ = seeded_gallery(templates=50, seed=4)
    name = search.ann_index_name(gallery.id)
    locked, release = threading.Event(), threading.Event()

    def another_build_running():
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("SELECT pg_advisory_lock(hashtext(%s))", [name])
                locked.set()
                release.wait(timeout=30)
                cursor.execute("SELECT pg_advisory_unlock(hashtext(%s))", [name])
        finally:
            connections.close_all()

    holder = threading.Thread(target=another_build_running)
    holder.start()
    assert locked.wait(timeout=30)
    try:
        while_running = search.build_ann_index(gallery_id=gallery.id)
        state_while_running = _index_state(name)
    finally:
        release.set()
        holder.join(timeout=30)

    assert while_running is None
    assert state_while_running is None, "nothing built beside the running build"
    assert search.build_ann_index(gallery_id=gallery.id) == name, "once it ended, a build runs"
