"""Enrollments still queued count against the plan's enroll quota and face limits."""

import pytest

from tenants.rls import operator_transaction
from tests.face_images import person_image
from tests.identity.conftest import upload_file
from tests.tenants.factories import make_plan

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("jobs_not_dispatched")]


@pytest.mark.parametrize(
    ("limits", "status", "problem"),
    [
        ({"included_enroll": 2}, 429, "quota-exceeded"),
        ({"max_gallery_faces": 2}, 409, "capacity-exceeded"),
        ({"max_tenant_faces": 2}, 409, "capacity-exceeded"),
    ],
)
def test_queued_enrollments_count_against_the_plans_limits(tenant_api, limits, status, problem):
    with operator_transaction():
        tenant_api.tenant.plan = make_plan(allows_overage=False, **limits)
        tenant_api.tenant.save(update_fields=["plan"])
    gallery = tenant_api.create_gallery()
    subject = tenant_api.create_subject(gallery["id"], "emp-1")
    path = f"/v1/subjects/{subject['id']}/faces"

    answers = [
        tenant_api.post(
            path, {"image": upload_file(person_image(seed))}, headers={"Idempotency-Key": f"k{seed}"}
        )
        for seed in (1, 2, 3)
    ]
    retry = tenant_api.post(path, {"image": upload_file(person_image(1))}, headers={"Idempotency-Key": "k1"})

    assert [answer.status_code for answer in answers] == [202, 202, status]
    assert answers[2].json()["type"].endswith(f"/{problem}")
    assert retry.status_code == 202, "a retry of a queued enrollment is its first answer, not a new face"
