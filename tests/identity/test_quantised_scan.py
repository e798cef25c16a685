"""The 8-bit scan of large galleries: it answers what exact search answers, never returns a template deleted
since its codes were made, finds one added since at once, is made in the background while HNSW answers, and
cannot reach another tenant's rows whatever codes it holds."""

import dataclasses
import threading
import time
import uuid

import numpy as np
import pytest

from bench.seed import as_stored, seed_gallery, synthetic_gallery, synthetic_probes
from identity import quantised_scan, search, services
from identity.models import Face, FaceTemplate, Gallery, Subject
from tenants.actors import Actor
from tenants.rls import tenant_transaction
from tests.identity.conftest import seeded_gallery

OPERATOR = Actor.system("tests")
with_database = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _no_codes_held():
    quantised_scan.forget_all()
    yield
    _join_background_threads()  # codes a search started making must not outlive the test's rows
    quantised_scan.forget_all()


def _join_background_threads() -> None:
    for thread in threading.enumerate():
        if thread.name.startswith(quantised_scan.BACKGROUND_THREAD_PREFIX):
            thread.join(timeout=60)


@pytest.fixture
def large_gallery():
    """A gallery with its own HNSW index: one that production searches through codes."""
    tenant, gallery, data = seeded_gallery(templates=3_000, seed=11)
    name = search.build_ann_index(gallery_id=gallery.id)
    with tenant_transaction(tenant.id):
        Gallery.objects.filter(id=gallery.id).update(ann_index_name=name)
        gallery.refresh_from_db()
    return tenant, gallery, data


@pytest.fixture
def scans(monkeypatch):
    """How many searches went through codes."""
    calls = []
    candidates = quantised_scan.GalleryCodes.candidates

    def counted(self, probe, count):
        calls.append(count)
        return candidates(self, probe, count)

    monkeypatch.setattr(quantised_scan.GalleryCodes, "candidates", counted)
    return calls


def _make_codes(tenant, gallery) -> quantised_scan.GalleryCodes:
    return quantised_scan.make(
        tenant_id=tenant.id, gallery_id=gallery.id, model_version=gallery.model_version
    )


def _search(tenant, gallery, probe, limit: int = 50):
    with tenant_transaction(tenant.id):
        return search.nearest_templates(tenant_id=tenant.id, gallery=gallery, embedding=probe, limit=limit)


def _stored(tenant, gallery) -> np.ndarray:
    with tenant_transaction(tenant.id):
        rows = FaceTemplate.objects.filter(gallery=gallery).values_list("embedding", flat=True)
        return np.array([np.asarray(row, dtype=np.float32) for row in rows])


def _exact_similarities(stored: np.ndarray, probe: np.ndarray, limit: int = 50) -> list[float]:
    return np.sort(stored @ probe)[::-1][:limit].tolist()


def _probes(data, count: int = 12) -> np.ndarray:
    probes, _, _ = synthetic_probes(data, count, rng=np.random.default_rng(5))
    return probes


def _wait_for_codes(tenant, gallery, *, other_than=None, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = quantised_scan.codes_for(tenant_id=tenant.id, gallery=gallery)
        if codes is not None and codes is not other_than:
            return codes
        time.sleep(0.1)
    raise AssertionError(f"no new codes of gallery {gallery.id} after {timeout} s")


def test_the_best_codes_hold_the_exact_ten_nearest_templates():
    data = synthetic_gallery(30_000, rng=np.random.default_rng(3))
    ids = np.arange(len(data.embeddings), dtype=np.int64) + 1
    codes = quantised_scan.coded(
        tenant_id=uuid.uuid4(),
        gallery_id=uuid.uuid4(),
        model_version="test",
        template_ids=ids,
        embeddings=data.embeddings,
        through_id=len(ids),
    )

    for probe in _probes(data, count=100):
        exact = ids[np.argsort(data.embeddings @ probe)[::-1][:10]]
        assert set(exact) <= set(codes.candidates(probe, 50).tolist())
    assert codes.codes.shape == (128, len(ids))
    assert codes.codes.dtype == np.int8


@with_database
def test_a_large_gallery_with_codes_gets_exact_search_answers_through_them(large_gallery, scans, monkeypatch):
    monkeypatch.setattr(quantised_scan, "LOAD_CHUNK", 700)  # made from several chunks, as a large gallery is
    tenant, gallery, data = large_gallery
    codes = _make_codes(tenant, gallery)
    stored = as_stored(data.embeddings)

    for probe in _probes(data):
        hits = _search(tenant, gallery, probe)
        assert [hit.similarity for hit in hits] == pytest.approx(_exact_similarities(stored, probe), abs=1e-5)
    assert len(codes.template_ids) == len(data.embeddings)
    assert len(scans) == len(_probes(data))


@with_database
def test_templates_deleted_after_the_codes_were_made_are_never_returned(large_gallery, scans):
    tenant, gallery, data = large_gallery
    _make_codes(tenant, gallery)
    probe = _probes(data)[0]
    best_faces = list(dict.fromkeys(hit.face_id for hit in _search(tenant, gallery, probe)))[:5]

    with tenant_transaction(tenant.id):
        for face in Face.objects.filter(id__in=best_faces):
            services.delete_face(tenant=tenant, actor=OPERATOR, face=face)
    hits = _search(tenant, gallery, probe)

    assert not {hit.face_id for hit in hits} & set(best_faces)
    remaining = _stored(tenant, gallery)
    assert [hit.similarity for hit in hits] == pytest.approx(_exact_similarities(remaining, probe), abs=1e-5)
    assert len(scans) == 2


@with_database
def test_templates_added_after_the_codes_were_made_are_found_at_once(large_gallery, scans):
    tenant, gallery, _ = large_gallery
    codes = _make_codes(tenant, gallery)
    with tenant_transaction(tenant.id):
        faces_before = set(Face.objects.filter(gallery=gallery).values_list("id", flat=True))
    added = synthetic_gallery(300, rng=np.random.default_rng(12))
    seed_gallery(tenant=tenant, gallery=gallery, data=added)

    hits = _search(tenant, gallery, added.embeddings[0])

    assert hits[0].face_id not in faces_before
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [hit.similarity for hit in hits] == pytest.approx(
        _exact_similarities(_stored(tenant, gallery), added.embeddings[0]), abs=1e-5
    )
    assert quantised_scan.codes_for(tenant_id=tenant.id, gallery=gallery) is codes
    assert len(scans) == 1


@with_database
def test_the_first_search_is_answered_by_hnsw_while_the_codes_are_made_in_the_background(
    large_gallery, scans
):
    tenant, gallery, data = large_gallery
    probe = _probes(data)[0]
    stored = as_stored(data.embeddings)

    first = _search(tenant, gallery, probe)
    codes = _wait_for_codes(tenant, gallery)
    later = _search(tenant, gallery, probe)

    assert scans == [quantised_scan.CANDIDATE_FACTOR * 50]
    assert len(codes.template_ids) == len(data.embeddings)
    assert first[0].similarity == pytest.approx(_exact_similarities(stored, probe, 1)[0], abs=1e-5)
    assert [hit.similarity for hit in later] == pytest.approx(_exact_similarities(stored, probe), abs=1e-5)


@with_database
def test_codes_are_made_again_once_most_of_their_candidates_are_gone(large_gallery):
    tenant, gallery, data = large_gallery
    codes = _make_codes(tenant, gallery)
    with tenant_transaction(tenant.id):
        doomed = list(Subject.objects.filter(gallery=gallery).order_by("id")[: data.subjects * 9 // 10])
        FaceTemplate.objects.filter(gallery=gallery, subject__in=doomed).delete()

    _search(tenant, gallery, _probes(data)[0])
    remade = _wait_for_codes(tenant, gallery, other_than=codes)

    assert len(remade.template_ids) == len(_stored(tenant, gallery))
    assert len(remade.template_ids) < len(codes.template_ids) / 5


@with_database
@pytest.mark.parametrize("owner", ["the same tenant", "another tenant"])
def test_codes_of_another_gallery_cannot_reach_its_templates(large_gallery, owner):
    other_tenant, other_gallery, other_data = large_gallery
    if owner == "the same tenant":
        tenant, data = other_tenant, synthetic_gallery(600, rng=np.random.default_rng(13))
        with tenant_transaction(tenant.id):
            gallery = services.create_gallery(tenant=tenant, actor=OPERATOR, name="own")
        seed_gallery(tenant=tenant, gallery=gallery, data=data)
    else:
        tenant, gallery, data = seeded_gallery(templates=600, seed=13)
    with tenant_transaction(tenant.id):
        Gallery.objects.filter(id=gallery.id).update(ann_index_name=search.ann_index_name(gallery.id))
        gallery.refresh_from_db()
        own_subjects = set(Subject.objects.filter(gallery=gallery).values_list("id", flat=True))
    with tenant_transaction(other_tenant.id):
        foreign_faces = set(Face.objects.filter(gallery=other_gallery).values_list("id", flat=True))
    # A cache that handed this gallery's searches the other gallery's codes.
    other_codes = _make_codes(other_tenant, other_gallery)
    quantised_scan.keep(dataclasses.replace(other_codes, tenant_id=tenant.id, gallery_id=gallery.id))

    probe = other_data.embeddings[0]
    hits = _search(tenant, gallery, probe)

    assert {hit.subject_id for hit in hits} <= own_subjects
    assert not {hit.face_id for hit in hits} & foreign_faces
    # This gallery's rows are newer than the other's codes: they are all scored, as added since.
    assert [hit.similarity for hit in hits] == pytest.approx(
        _exact_similarities(as_stored(data.embeddings), probe), abs=1e-5
    )


def test_codes_are_made_again_after_many_additions_or_when_too_few_candidates_are_left():
    small = quantised_scan.coded(
        tenant_id=uuid.uuid4(),
        gallery_id=uuid.uuid4(),
        model_version="test",
        template_ids=np.arange(10, dtype=np.int64),
        embeddings=np.full((10, 128), 0.05, dtype=np.float32),
        through_id=10,
    )
    large = dataclasses.replace(small, template_ids=np.arange(1_000_000, dtype=np.int64))

    assert not small.needs_remaking(added=5_000, live_candidates=10, wanted=50)
    assert small.needs_remaking(added=5_001, live_candidates=10, wanted=50)
    assert small.needs_remaking(added=0, live_candidates=9, wanted=50)
    assert not large.needs_remaking(added=20_000, live_candidates=100, wanted=50)
    assert large.needs_remaking(added=20_001, live_candidates=100, wanted=50)
    assert large.needs_remaking(added=0, live_candidates=49, wanted=50)


def test_the_least_recently_searched_codes_make_room_within_the_budget(settings):
    def codes_of(templates: int) -> quantised_scan.GalleryCodes:
        return quantised_scan.coded(
            tenant_id=uuid.uuid4(),
            gallery_id=uuid.uuid4(),
            model_version="test",
            template_ids=np.arange(templates, dtype=np.int64),
            embeddings=np.full((templates, 128), 0.05, dtype=np.float32),
            through_id=templates,
        )

    def is_held(codes) -> bool:
        return quantised_scan.held(tenant_id=codes.tenant_id, gallery_id=codes.gallery_id) is not None

    settings.VISOR_SCAN_CACHE_MB = 1
    first, second, third = codes_of(3_000), codes_of(3_000), codes_of(3_000)  # 420,000 bytes each
    for codes in (first, second):
        quantised_scan.keep(codes)
    is_held(first)  # searched: the least recently searched is now `second`
    quantised_scan.keep(third)
    too_large = codes_of(8_000)
    quantised_scan.keep(too_large)

    assert [is_held(codes) for codes in (first, second, third, too_large)] == [True, False, True, False]


@with_database
def test_a_gallery_too_large_for_the_budget_is_searched_without_codes_and_not_retried_each_search(
    settings, monkeypatch
):
    tenant, gallery, data = seeded_gallery(templates=7_800, seed=21)  # 1,092,000 bytes of codes
    with tenant_transaction(tenant.id):
        Gallery.objects.filter(id=gallery.id).update(ann_index_name=search.ann_index_name(gallery.id))
        gallery.refresh_from_db()
    settings.VISOR_SCAN_CACHE_MB = 1
    made = []
    make = quantised_scan.make
    monkeypatch.setattr(quantised_scan, "make", lambda **kwargs: made.append(kwargs) or make(**kwargs))

    assert (
        quantised_scan.make(tenant_id=tenant.id, gallery_id=gallery.id, model_version=gallery.model_version)
        is None
    )
    answers = [_search(tenant, gallery, probe) for probe in data.embeddings[:5]]
    _join_background_threads()

    assert len(made) == 1
    assert [hits[0].similarity for hits in answers] == pytest.approx([1.0] * 5, abs=1e-5)
    assert quantised_scan.held(tenant_id=tenant.id, gallery_id=gallery.id) is None


@with_database
def test_codes_of_an_earlier_model_are_dropped_and_made_again_for_the_gallerys_model(
    large_gallery, scans, monkeypatch
):
    tenant, gallery, data = large_gallery
    _make_codes(tenant, gallery)
    gallery.model_version = "a newer model"
    requested = []
    monkeypatch.setattr(quantised_scan, "remake_in_background", lambda **kwargs: requested.append(kwargs))

    hits = _search(tenant, gallery, data.embeddings[0])

    assert hits == []  # no template of the newer model yet
    assert scans == []
    assert quantised_scan.held(tenant_id=tenant.id, gallery_id=gallery.id) is None
    assert [kwargs["model_version"] for kwargs in requested] == ["a newer model"]


def test_templates_can_only_be_added_in_a_transaction_that_holds_off_the_codes():
    with pytest.raises(RuntimeError, match="transaction"):
        quantised_scan.hold_off_codes(gallery_id=uuid.uuid4())
