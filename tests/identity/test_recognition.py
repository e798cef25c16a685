from datetime import timedelta

import numpy as np
import pytest
from django.utils import timezone

from identity import search
from identity.face_pipeline import get_face_pipeline
from identity.matching import default_threshold
from identity.models import Face, FaceTemplate, Gallery, IdempotentRequest
from identity.services import create_subject, purge_expired_idempotency_keys
from tenants.actors import Actor
from tenants.models import UsageRecord
from tenants.rls import operator_transaction, tenant_transaction
from tests.conftest import require_shared_data
from tests.face_images import CartoonPerson, draw_face, encode, person_image
from tests.identity.conftest import require_mask_synthesis, upload_file
from workers.pipeline.intake import decode_image

TESTS = Actor.system("tests")
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_worker")]


@pytest.fixture
def enrolled(tenant_api):
    """A gallery with three enrolled subjects, seeds 21, 22 and 23."""
    gallery = tenant_api.create_gallery()
    subjects = {}
    for seed in (21, 22, 23):
        subject = tenant_api.create_subject(gallery["id"], f"emp-{seed}")
        assert tenant_api.enroll(subject["id"], person_image(seed)).status_code == 201
        subjects[seed] = subject
    return gallery, subjects


def _identify(api, gallery_id, image, **options):
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return api.post(f"/v1/galleries/{gallery_id}/identify?{query}", {"image": upload_file(image)})


def test_an_enrolled_person_is_identified(tenant_api, enrolled):
    gallery, subjects = enrolled

    response = _identify(tenant_api, gallery["id"], person_image(22))

    body = response.json()
    assert response.status_code == 200, body
    [face] = body["faces"]
    assert face["match"]["external_id"] == "emp-22"
    assert face["match"]["subject_id"] == subjects[22]["id"]
    # The same photo: far above any threshold (a probe the mask classifier calls masked gets a score fused
    # from original and synthetic-mask templates, so it is not the raw cosine of 1).
    assert face["match"]["similarity"] > 0.7
    assert 0.99 < face["match"]["confidence"] <= 1
    assert face["candidates"][0]["subject_id"] == subjects[22]["id"]
    assert set(face) >= {"bbox", "landmarks", "detection_score", "mask", "quality", "match", "candidates"}
    assert body["model"] == gallery["model_version"]
    assert body["took_ms"] > 0
    timing = response["Server-Timing"]
    assert all(f"{stage};dur=" in timing for stage in ("decode", "detect", "embed", "search"))


def test_the_default_identify_threshold_rises_with_the_gallerys_size(tenant_api, enrolled):
    """A stranger is compared with every enrolled subject: the default threshold keeps the chance that one of
    them matches at 1% (FPIR), so a bigger gallery needs a stricter threshold per comparison."""
    gallery, _ = enrolled
    probe = person_image(22)
    small = _identify(tenant_api, gallery["id"], probe).json()["faces"][0]
    with tenant_transaction(tenant_api.tenant.id):
        gallery_row = Gallery.objects.get(id=gallery["id"])
        for n in range(297):
            create_subject(
                tenant=tenant_api.tenant, actor=TESTS, gallery=gallery_row, external_id=f"visitor-{n}"
            )

    large = _identify(tenant_api, gallery["id"], probe).json()["faces"][0]

    def expected(subjects: int) -> float:
        return default_threshold(
            gallery["model_version"],
            operation="identify",
            probe_masked=small["mask"]["masked"],
            gallery_subjects=subjects,
        )

    assert small["threshold"] == pytest.approx(expected(3), abs=1e-6)
    assert large["threshold"] == pytest.approx(expected(300), abs=1e-6)
    assert large["threshold"] > small["threshold"]
    assert large["match"]["external_id"] == "emp-22"


def test_a_threshold_sent_with_the_request_is_the_one_applied(tenant_api, enrolled):
    gallery, _ = enrolled

    # Generated faces all look alike to the model: a stranger's best candidate is close, but below 0.995.
    face = _identify(tenant_api, gallery["id"], person_image(99), threshold=0.995).json()["faces"][0]

    assert face["threshold"] == 0.995
    assert face["match"] is None
    assert face["candidates"]


def test_people_enrolled_unmasked_are_identified_wearing_masks_and_strangers_are_not(tenant_api):
    pipeline = require_mask_synthesis()
    photos = require_shared_data("lfw_a", "lfw")
    gallery = tenant_api.create_gallery()
    enrolled = ("Colin_Powell", "Donald_Rumsfeld", "Gerhard_Schroeder", "Ariel_Sharon")
    subject_ids = {}
    for name in enrolled:
        subject = tenant_api.create_subject(gallery["id"], name)
        assert (
            tenant_api.enroll(subject["id"], (photos / name / f"{name}_0001.jpg").read_bytes()).status_code
            == 201
        )
        subject_ids[name] = subject["id"]

    def masked_photo(name: str) -> bytes:
        image_bytes = (photos / name / f"{name}_0002.jpg").read_bytes()
        [face] = pipeline.analyze(image_bytes, purpose="identify").faces
        rng = np.random.default_rng(7)
        return encode(
            pipeline.mask_synthesizer.apply(
                decode_image(image_bytes),
                np.asarray(face.landmarks),
                face.bbox,
                rng=rng,
                mask_type="surgical",
            )
        )

    for name in ("Colin_Powell", "Gerhard_Schroeder"):
        [probe] = _identify(tenant_api, gallery["id"], masked_photo(name)).json()["faces"]
        assert probe["mask"]["masked"] is True
        assert probe["match"]["subject_id"] == subject_ids[name]
    [stranger] = _identify(tenant_api, gallery["id"], masked_photo("Tony_Blair")).json()["faces"]
    assert stranger["mask"]["masked"] is True
    assert stranger["match"] is None


def test_nobody_above_the_threshold_is_an_unknown_person_not_an_error(tenant_api, enrolled):
    gallery, _ = enrolled

    response = _identify(tenant_api, gallery["id"], person_image(99), threshold=0.995)

    [face] = response.json()["faces"]
    assert response.status_code == 200
    assert face["match"] is None
    assert len(face["candidates"]) == 3, "candidates are still listed for an unknown person"


def test_top_k_limits_the_candidates(tenant_api, enrolled):
    gallery, _ = enrolled

    [face] = _identify(tenant_api, gallery["id"], person_image(21), top_k=2).json()["faces"]

    assert len(face["candidates"]) == 2


def test_every_face_in_the_photo_is_identified_up_to_max_faces(tenant_api, enrolled):
    gallery, _ = enrolled
    image = np.full((480, 900, 3), 200, dtype=np.uint8)
    draw_face(image, 230, 240, 110, CartoonPerson.from_seed(21))
    draw_face(image, 670, 240, 110, CartoonPerson.from_seed(23))

    both = _identify(tenant_api, gallery["id"], encode(image)).json()["faces"]
    one = _identify(tenant_api, gallery["id"], encode(image), max_faces=1).json()["faces"]

    assert len(both) == 2
    assert len(one) == 1


def test_a_photo_without_faces_answers_an_empty_list(tenant_api, enrolled):
    gallery, _ = enrolled

    response = _identify(tenant_api, gallery["id"], encode(np.full((300, 300, 3), 90, dtype=np.uint8)))

    assert response.status_code == 200
    assert response.json()["faces"] == []


def test_identify_with_an_invalid_option_is_a_validation_problem(tenant_api, enrolled):
    gallery, _ = enrolled

    response = _identify(tenant_api, gallery["id"], person_image(21), top_k=0)

    assert response.status_code == 400
    assert "top_k" in response.json()["errors"]


def test_each_identify_call_is_metered_once(tenant_api, enrolled):
    gallery, _ = enrolled

    for _ in range(2):
        _identify(tenant_api, gallery["id"], person_image(21))

    with tenant_transaction(tenant_api.tenant.id):
        assert UsageRecord.objects.filter(operation="identify").count() == 2
        assert UsageRecord.objects.filter(operation="enroll").count() == 3


@pytest.mark.parametrize(
    ("headers", "metered"),
    [
        ({"Idempotency-Key": "gate-3-frame-1"}, 1),
        # The client's request id is kept for its tracing, but bills nothing once: a client may repeat it.
        ({"X-Request-ID": "gate-3-trace-0001"}, 2),
    ],
    ids=["same-idempotency-key", "same-request-id"],
)
def test_a_repeated_identify_is_metered_once_only_under_the_same_idempotency_key(
    tenant_api, enrolled, headers, metered
):
    gallery, _ = enrolled
    for _ in range(2):
        response = tenant_api.post(
            f"/v1/galleries/{gallery['id']}/identify",
            {"image": upload_file(person_image(21))},
            headers=headers,
        )
        assert response.status_code == 200

    with tenant_transaction(tenant_api.tenant.id):
        assert UsageRecord.objects.filter(operation="identify").count() == metered


@pytest.mark.parametrize(
    ("route", "first", "second"),
    [
        ("identify", {"image": 21}, {"image": 22}),
        ("verify", {"image": 31, "image2": 31}, {"image": 31, "image2": 32}),
        ("detect", {"image": 41}, {"image": 42}),
    ],
)
def test_an_idempotency_key_reused_for_a_different_request_is_refused_and_not_billed(
    tenant_api, enrolled, route, first, second
):
    gallery, _ = enrolled
    path = f"/v1/galleries/{gallery['id']}/identify" if route == "identify" else f"/v1/{route}"
    operation = "identify" if route == "identify" else route

    def send(images: dict, key: str = "turnstile-7-frame-1"):
        form = {field: upload_file(person_image(seed)) for field, seed in images.items()}
        return tenant_api.post(path, form, headers={"Idempotency-Key": key})

    assert send(first).status_code == 200
    refused = send(second)
    assert send(first).status_code == 200  # the genuine retry still answers

    assert refused.status_code == 422
    assert refused["Content-Type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/idempotency-key-reused")
    with tenant_transaction(tenant_api.tenant.id):
        assert UsageRecord.objects.filter(operation=operation).count() == 1


def test_an_identify_whose_first_attempt_was_rejected_may_be_retried_with_the_same_key(tenant_api, enrolled):
    gallery, _ = enrolled
    path = f"/v1/galleries/{gallery['id']}/identify"
    headers = {"Idempotency-Key": "kiosk-2-frame-9"}

    rejected = tenant_api.post(path, {"image": upload_file(b"not an image")}, headers=headers)
    corrected = tenant_api.post(path, {"image": upload_file(person_image(21))}, headers=headers)

    assert rejected.status_code in (400, 415, 422)
    assert corrected.status_code == 200
    with tenant_transaction(tenant_api.tenant.id):
        assert UsageRecord.objects.filter(operation="identify").count() == 1


def test_a_key_reused_after_it_expired_serves_and_bills_a_new_call(tenant_api, enrolled):
    gallery, _ = enrolled
    path = f"/v1/galleries/{gallery['id']}/identify"
    headers = {"Idempotency-Key": "door-1-frame-1"}
    assert tenant_api.post(path, {"image": upload_file(person_image(21))}, headers=headers).status_code == 200
    with operator_transaction():
        IdempotentRequest.objects.filter(key="door-1-frame-1").update(
            created_at=timezone.now() - timedelta(days=2)
        )
    purge_expired_idempotency_keys()

    later = tenant_api.post(path, {"image": upload_file(person_image(22))}, headers=headers)

    assert later.status_code == 200
    with tenant_transaction(tenant_api.tenant.id):
        assert UsageRecord.objects.filter(operation="identify").count() == 2


def test_an_overlong_idempotency_key_is_a_validation_error(tenant_api):
    response = tenant_api.post(
        "/v1/detect", {"image": upload_file(person_image(41))}, headers={"Idempotency-Key": "k" * 201}
    )

    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["errors"]


def test_verify_two_images_of_the_same_person(tenant_api):
    response = tenant_api.post(
        "/v1/verify", {"image": upload_file(person_image(31)), "image2": upload_file(person_image(31))}
    )

    body = response.json()
    assert response.status_code == 200, body
    assert body["match"] is True
    assert body["similarity"] > 0.99
    assert set(body) >= {"match", "similarity", "confidence", "threshold"}


def test_verify_against_a_subjects_templates(tenant_api, enrolled):
    _, subjects = enrolled

    same = tenant_api.post(
        "/v1/verify", {"image": upload_file(person_image(23)), "subject_id": subjects[23]["id"]}
    )
    other = tenant_api.post(
        "/v1/verify?threshold=0.995",
        {"image": upload_file(person_image(21)), "subject_id": subjects[23]["id"]},
    )

    assert same.json()["match"] is True
    assert other.json()["match"] is False


def test_verify_needs_exactly_one_of_image2_and_subject_id(tenant_api):
    response = tenant_api.post("/v1/verify", {"image": upload_file(person_image(31))})

    assert response.status_code == 400
    assert "image2" in response.json()["errors"]


def test_detect_reports_faces_with_mask_and_quality_without_searching(tenant_api):
    response = tenant_api.post("/v1/detect", {"image": upload_file(person_image(41))})

    body = response.json()
    assert response.status_code == 200, body
    [face] = body["faces"]
    assert face["detection_score"] > 0.5
    assert set(face["mask"]) == {"masked", "probability"}
    assert set(face["quality"]) == {"score", "issues"}
    assert body["image"] == {"width": 640, "height": 480}


def test_verify_finds_a_subjects_original_templates_behind_many_nearer_synthetic_ones(tenant_api, enrolled):
    _, subjects = enrolled
    subject_id = subjects[23]["id"]
    probe_image = person_image(23, offset=(40, 20))  # another photo: its original scores under 1
    probe = get_face_pipeline().analyze(probe_image, purpose="identify", max_faces=1).faces[0]
    with tenant_transaction(tenant_api.tenant.id):
        [face] = Face.objects.filter(subject_id=subject_id)
        FaceTemplate.objects.bulk_create(
            FaceTemplate(
                tenant_id=face.tenant_id,
                gallery_id=face.gallery_id,
                subject_id=face.subject_id,
                face=face,
                kind=FaceTemplate.Kind.SYNTHETIC_MASK,
                embedding=probe.embedding,  # nearer the probe than any original can be
                model_version=face.model_version,
            )
            for _ in range(search.MIN_TEMPLATES_FETCHED + 10)
        )

    response = tenant_api.post("/v1/verify", {"image": upload_file(probe_image), "subject_id": subject_id})

    assert response.status_code == 200, response.content
    assert response.json()["match"] is True
