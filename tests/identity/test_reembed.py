"""A model change never interrupts identify: a gallery keeps its model until `manage.py reembed` moves it."""

import numpy as np
import pytest
from django.core.management import call_command

from identity.face_pipeline import get_face_pipeline
from identity.models import FaceTemplate, Gallery
from tenants.rls import operator_transaction
from tests.face_images import person_image
from tests.identity.conftest import upload_file

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("celery_worker")]


def identify(api, gallery_id, image):
    response = api.post(f"/v1/galleries/{gallery_id}/identify", {"image": upload_file(image)})
    assert response.status_code == 200, response.json()
    [face] = response.json()["faces"]
    return response.json()["model"], face["match"]


def template_versions(gallery_id) -> dict[str, int]:
    with operator_transaction():
        rows = FaceTemplate.objects.filter(gallery_id=gallery_id, kind="original").values_list(
            "model_version", flat=True
        )
        return {version: list(rows).count(version) for version in set(rows)}


def test_a_gallery_keeps_working_through_a_model_change_and_reembed(tenant_api, settings):
    # The worker process runs the configured model; this process (API, reembed) switches between both.
    worker_model = settings.VISOR_EMBEDDING_MODEL
    other_model = "student" if worker_model == "sface" else "sface"
    worker_version = get_face_pipeline().model_version
    settings.VISOR_EMBEDDING_MODEL = other_model
    other_version = get_face_pipeline().model_version
    gallery = tenant_api.create_gallery()
    assert gallery["model_version"] == other_version
    subjects = {}
    for seed in (21, 22):
        subjects[seed] = tenant_api.create_subject(gallery["id"], f"emp-{seed}")
        assert tenant_api.enroll(subjects[seed]["id"], person_image(seed)).status_code == 201

    # The worker embeds with its own model, and also with the gallery's, so the faces are findable now.
    assert template_versions(gallery["id"]) == {worker_version: 2, other_version: 2}
    for configured in (other_model, worker_model):
        settings.VISOR_EMBEDDING_MODEL = configured
        model, match = identify(tenant_api, gallery["id"], person_image(22))
        assert (model, match["subject_id"]) == (other_version, subjects[22]["id"])

    call_command("reembed", gallery=gallery["id"])  # to the worker's model: the templates exist already

    assert template_versions(gallery["id"]) == {worker_version: 2}
    model, match = identify(tenant_api, gallery["id"], person_image(21))
    assert (model, match["subject_id"]) == (worker_version, subjects[21]["id"])

    settings.VISOR_EMBEDDING_MODEL = other_model
    call_command("reembed", gallery=gallery["id"])  # back: recomputed from the stored images

    with operator_transaction():
        assert Gallery.objects.get(id=gallery["id"]).model_version == other_version
        embeddings = FaceTemplate.objects.filter(gallery_id=gallery["id"]).values_list("embedding", flat=True)
        assert all(np.linalg.norm(np.asarray(e)) == pytest.approx(1.0, abs=1e-3) for e in embeddings)
    assert template_versions(gallery["id"]) == {other_version: 2}
    for seed in (21, 22):
        model, match = identify(tenant_api, gallery["id"], person_image(seed))
        assert (model, match["subject_id"]) == (other_version, subjects[seed]["id"])
