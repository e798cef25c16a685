import base64
import json
import uuid

import pytest

from identity import services
from identity.face_pipeline import get_face_pipeline
from identity.models import Subject
from tenants.actors import Actor
from tenants.rls import tenant_transaction

TESTS = Actor.system("tests")


def _crafted_cursor(payload) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


pytestmark = pytest.mark.django_db


def test_a_gallery_is_created_and_records_the_model_version(tenant_api):
    response = tenant_api.post(
        "/v1/galleries", {"name": "Lobby", "description": "Front door"}, content_type="application/json"
    )

    body = response.json()
    assert response.status_code == 201
    assert uuid.UUID(body["id"])
    assert body["name"] == "Lobby"
    assert body["description"] == "Front door"
    assert body["model_version"] == get_face_pipeline().model_version  # the configured model, with its hash
    assert body["subject_count"] == 0
    assert body["face_count"] == 0


def test_a_gallery_counts_the_subjects_added_and_removed(tenant_api):
    gallery = tenant_api.create_gallery()
    subjects = [tenant_api.create_subject(gallery["id"], f"emp-{n}") for n in range(3)]
    other = tenant_api.create_gallery("Other")
    tenant_api.create_subject(other["id"], "emp-0")
    tenant_api.post(
        f"/v1/galleries/{gallery['id']}/subjects", {"external_id": "emp-0"}, content_type="application/json"
    )  # a conflict adds nobody

    tenant_api.delete(f"/v1/subjects/{subjects[0]['id']}")

    assert tenant_api.get(f"/v1/galleries/{gallery['id']}").json()["subject_count"] == 2
    assert tenant_api.get(f"/v1/galleries/{other['id']}").json()["subject_count"] == 1


def test_two_overlapping_deletes_of_one_subject_count_it_once(tenant_api):
    gallery = tenant_api.create_gallery()
    kept = tenant_api.create_subject(gallery["id"], "emp-kept")
    doomed = tenant_api.create_subject(gallery["id"], "emp-doomed")
    with tenant_transaction(tenant_api.tenant.id):
        # Both requests read the subject before either deleted it.
        first, second = (Subject.objects.get(id=doomed["id"]) for _ in range(2))
        services.delete_subject(tenant=tenant_api.tenant, actor=TESTS, subject=first)
        services.delete_subject(tenant=tenant_api.tenant, actor=TESTS, subject=second)

    assert tenant_api.get(f"/v1/galleries/{gallery['id']}").json()["subject_count"] == 1
    assert tenant_api.get(f"/v1/subjects/{kept['id']}").status_code == 200


def test_a_gallery_without_a_name_is_a_validation_problem(tenant_api):
    response = tenant_api.post("/v1/galleries", {"description": "no name"}, content_type="application/json")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/validation-error")
    assert "name" in body["errors"]


def test_galleries_are_listed_with_cursor_pagination(tenant_api):
    created = [tenant_api.create_gallery(f"g{index}")["id"] for index in range(3)]

    first = tenant_api.get("/v1/galleries?limit=2").json()
    second = tenant_api.get(f"/v1/galleries?limit=2&cursor={first['next_cursor']}").json()

    assert [item["id"] for item in first["data"] + second["data"]] == created
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        # Well-formed base64 JSON of the wrong shape or types: a number, a list or an object as the id.
        _crafted_cursor(["2026-01-01T00:00:00+00:00", 123]),
        _crafted_cursor(["2026-01-01T00:00:00+00:00", ["x"]]),
        _crafted_cursor([{"a": 1}, "6f1f7a2e-8a4d-4c5e-9d2b-1f0e3c4b5a69"]),
        _crafted_cursor(["2026-01-01T00:00:00+00:00"]),
        _crafted_cursor(None),
    ],
)
def test_a_malformed_cursor_is_a_validation_problem(tenant_api, cursor):
    response = tenant_api.get(f"/v1/galleries?cursor={cursor}")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert "cursor" in response.json()["errors"]


def test_a_gallery_is_renamed_and_deleted(tenant_api):
    gallery = tenant_api.create_gallery("Old")

    renamed = tenant_api.patch(f"/v1/galleries/{gallery['id']}", {"name": "New"})
    deleted = tenant_api.delete(f"/v1/galleries/{gallery['id']}")

    assert renamed.json()["name"] == "New"
    assert deleted.status_code == 204
    assert tenant_api.get(f"/v1/galleries/{gallery['id']}").status_code == 404


def test_a_misspelt_field_is_refused_and_changes_nothing(tenant_api):
    gallery = tenant_api.create_gallery("Lobby")
    subject = tenant_api.create_subject(gallery["id"], "emp-1")

    answers = {
        "gallery patch": tenant_api.patch(f"/v1/galleries/{gallery['id']}", {"nmae": "Typo"}),
        "subject patch": tenant_api.patch(f"/v1/subjects/{subject['id']}", {"name": "Ada", "meta": {}}),
        "subject create": tenant_api.post(
            f"/v1/galleries/{gallery['id']}/subjects",
            {"external_id": "emp-2", "nmae": "Typo"},
            content_type="application/json",
        ),
    }

    for answer in answers.values():
        assert answer.status_code == 400, answer.content
        assert answer["Content-Type"] == "application/problem+json"
    assert answers["gallery patch"].json()["errors"] == {"nmae": ["Unknown field."]}
    assert answers["subject patch"].json()["errors"] == {"meta": ["Unknown field."]}
    assert tenant_api.get(f"/v1/galleries/{gallery['id']}").json()["name"] == "Lobby"
    assert tenant_api.get(f"/v1/subjects/{subject['id']}").json()["name"] == subject["name"]
    listed = tenant_api.get(f"/v1/galleries/{gallery['id']}/subjects").json()["data"]
    assert [listed_subject["external_id"] for listed_subject in listed] == ["emp-1"]


def test_a_missing_a_malformed_and_another_tenants_gallery_look_the_same(tenant_api, other_tenant_api):
    foreign = other_tenant_api.create_gallery("Theirs")

    answers = [
        tenant_api.get(f"/v1/galleries/{gallery_id}")
        for gallery_id in (foreign["id"], str(uuid.uuid4()), "not-a-uuid")
    ]

    assert {response.status_code for response in answers} == {404}
    bodies = [
        {key: value for key, value in response.json().items() if key not in {"instance", "request_id"}}
        for response in answers
    ]
    assert bodies[0] == bodies[1] == bodies[2]


def test_subjects_are_unique_per_gallery_by_external_id(tenant_api):
    gallery = tenant_api.create_gallery()
    tenant_api.create_subject(gallery["id"], "emp-1", name="Ada")

    duplicate = tenant_api.post(
        f"/v1/galleries/{gallery['id']}/subjects", {"external_id": "emp-1"}, content_type="application/json"
    )
    elsewhere = tenant_api.create_subject(tenant_api.create_gallery("Other")["id"], "emp-1")

    assert duplicate.status_code == 409
    assert duplicate.json()["type"].endswith("/conflict")
    assert elsewhere["external_id"] == "emp-1"


def test_subjects_are_found_by_external_id_updated_and_deleted(tenant_api):
    gallery = tenant_api.create_gallery()
    ada = tenant_api.create_subject(gallery["id"], "emp-1", name="Ada", metadata={"team": "ops"})
    tenant_api.create_subject(gallery["id"], "emp-2")

    found = tenant_api.get(f"/v1/galleries/{gallery['id']}/subjects?external_id=emp-1").json()["data"]
    updated = tenant_api.patch(
        f"/v1/subjects/{ada['id']}", {"name": "Ada L.", "metadata": {"team": "dev"}}
    ).json()
    deleted = tenant_api.delete(f"/v1/subjects/{ada['id']}")

    assert [subject["id"] for subject in found] == [ada["id"]]
    assert updated["name"] == "Ada L."
    assert updated["metadata"] == {"team": "dev"}
    assert deleted.status_code == 204
    assert tenant_api.get(f"/v1/subjects/{ada['id']}").status_code == 404


# JSON escapes, as a client sends them.
@pytest.mark.parametrize("text", ["\\u0000", "\\ud800"], ids=["nul", "unpaired-surrogate"])
@pytest.mark.parametrize("where", ["key", "nested value"])
def test_subject_metadata_that_postgresql_cannot_store_is_a_validation_problem(tenant_api, text, where):
    gallery = tenant_api.create_gallery()
    subject = tenant_api.create_subject(gallery["id"], "emp-1")
    metadata = f'{{"{text}": 1}}' if where == "key" else f'{{"badge": {{"notes": ["a{text}b"]}}}}'

    created = tenant_api.post(
        f"/v1/galleries/{gallery['id']}/subjects",
        f'{{"external_id": "emp-2", "metadata": {metadata}}}',
        content_type="application/json",
    )
    created_by_form = tenant_api.post(
        f"/v1/galleries/{gallery['id']}/subjects", {"external_id": "emp-3", "metadata": metadata}
    )
    updated = tenant_api.patch(f"/v1/subjects/{subject['id']}", f'{{"metadata": {metadata}}}')

    for response in (created, created_by_form, updated):
        assert response.status_code == 400, response.content
        assert response["Content-Type"] == "application/problem+json"
        assert "metadata" in response.json()["errors"]
    assert tenant_api.get(f"/v1/galleries/{gallery['id']}/subjects").json()["data"] == [subject]


@pytest.mark.parametrize("depth", [40, 5000])  # past the limit; past Python's recursion limit
def test_subject_metadata_sent_by_form_nested_past_the_limit_is_a_validation_problem(tenant_api, depth):
    gallery = tenant_api.create_gallery()
    metadata = '{"badge": ' + "[" * depth + "]" * depth + "}"

    response = tenant_api.post(
        f"/v1/galleries/{gallery['id']}/subjects", {"external_id": "emp-1", "metadata": metadata}
    )

    assert response.status_code == 400
    assert response.json()["errors"]["metadata"] == ["metadata may nest at most 32 levels deep."]


def test_an_external_id_filter_with_a_nul_character_is_a_validation_problem(tenant_api):
    gallery = tenant_api.create_gallery()

    response = tenant_api.get(f"/v1/galleries/{gallery['id']}/subjects?external_id=emp%001")

    assert response.status_code == 400
    assert "external_id" in response.json()["errors"]


def test_subject_metadata_must_be_an_object(tenant_api):
    gallery = tenant_api.create_gallery()

    response = tenant_api.post(
        f"/v1/galleries/{gallery['id']}/subjects",
        {"external_id": "x", "metadata": [1, 2]},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert "metadata" in response.json()["errors"]


def test_every_identity_route_needs_an_api_key(client):
    response = client.get("/v1/galleries")

    assert response.status_code == 401
    assert response["Content-Type"] == "application/problem+json"


def test_a_create_retried_with_its_idempotency_key_answers_the_first_result_and_creates_nothing_twice(
    tenant_api,
):
    key = {"Idempotency-Key": "create-lobby-1"}
    first = tenant_api.post("/v1/galleries", {"name": "Lobby"}, content_type="application/json", headers=key)
    retried = tenant_api.post(
        "/v1/galleries", {"name": "Lobby"}, content_type="application/json", headers=key
    )
    other_request = tenant_api.post(
        "/v1/galleries", {"name": "Annex"}, content_type="application/json", headers=key
    )
    subject_path = f"/v1/galleries/{first.json()['id']}/subjects"
    subject_key = {"Idempotency-Key": "create-ada-1"}
    subjects = [
        tenant_api.post(
            subject_path, {"external_id": "emp-1"}, content_type="application/json", headers=subject_key
        )
        for _ in range(2)
    ]

    assert (first.status_code, retried.status_code) == (201, 201)
    assert retried.json()["id"] == first.json()["id"]
    assert other_request.status_code == 422
    assert other_request.json()["type"].endswith("/idempotency-key-reused")
    assert [gallery["name"] for gallery in tenant_api.get("/v1/galleries").json()["data"]] == ["Lobby"]
    assert [response.status_code for response in subjects] == [201, 201], "not a 409 for its own external_id"
    assert subjects[1].json()["id"] == subjects[0].json()["id"]
    assert len(tenant_api.get(subject_path).json()["data"]) == 1
