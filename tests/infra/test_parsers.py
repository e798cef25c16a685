import io
import json
from urllib.parse import urlencode

import pytest
from django.core.files.uploadedfile import InMemoryUploadedFile

from tests.identity.conftest import make_tenant_api

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    return make_tenant_api("Acme")


@pytest.mark.parametrize(
    "depth", [33, 900, 100_000]
)  # past the limit; Python's recursion limit; the parser's
def test_a_json_body_nested_past_the_limit_is_a_malformed_request_problem(api, depth):
    body = "[" * depth + "]" * depth

    response = api.post("/v1/galleries", body, content_type="application/json")

    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert response.json()["type"].endswith("/malformed-request")
    assert "nested more than 32 levels deep" in response.json()["detail"]


def test_a_json_body_nested_to_the_limit_is_parsed(api):
    body = '{"name": "Lobby", "description": ' + "[" * 31 + "]" * 31 + "}"

    response = api.post("/v1/galleries", body, content_type="application/json")

    assert response.status_code == 400
    assert response.json()["type"].endswith("/validation-error"), "parsed, then refused as not a string"
    assert "description" in response.json()["errors"]


def test_a_json_body_over_the_limit_is_refused_unread_with_413(api, settings):
    settings.VISOR_MAX_JSON_BODY_BYTES = 1000

    too_large = api.post("/v1/galleries", {"name": "x" * 1000}, content_type="application/json")
    within = api.post("/v1/galleries", {"name": "x" * 100}, content_type="application/json")

    assert too_large.status_code == 413
    assert too_large["Content-Type"] == "application/problem+json"
    assert too_large.json()["type"].endswith("/request-too-large")
    assert within.status_code == 201


def test_the_json_limit_leaves_room_for_two_base64_images_of_the_largest_size(settings):
    base64_image = (settings.VISOR_MAX_IMAGE_BYTES + 2) // 3 * 4
    envelope = json.dumps({"image_base64": "", "image2_base64": "", "threshold": 0.5})

    assert 2 * base64_image + len(envelope) <= settings.VISOR_MAX_JSON_BODY_BYTES


def test_a_form_body_over_the_limit_is_refused_from_its_length_with_413(api, settings):
    settings.VISOR_MAX_MULTIPART_BODY_BYTES = 1000

    too_large = api.post("/v1/detect", {"image": _upload(b"\xff\xd8\xff" + b"\x00" * 2000)})
    subject_form = api.post("/v1/galleries", {"name": "x" * 2000})

    for response in (too_large, subject_form):
        assert response.status_code == 413
        assert response["Content-Type"] == "application/problem+json"
        assert response.json()["type"].endswith("/request-too-large")


def test_an_uploaded_image_over_the_image_limit_is_refused_unread_with_413(api, settings, monkeypatch):
    limit = settings.VISOR_MAX_IMAGE_BYTES
    read = []
    monkeypatch.setattr(InMemoryUploadedFile, "read", lambda self, *args: read.append(self) or b"")

    response = api.post("/v1/detect", {"image": _upload(b"\xff\xd8\xff" + b"\x00" * limit)})

    assert response.status_code == 413
    assert response.json()["type"].endswith("/invalid-image")
    assert response.json()["reason"] == "IMAGE_TOO_LARGE"
    assert read == [], "refused from its size, not read"


def test_the_form_limit_leaves_room_for_two_images_of_the_largest_size(settings):
    assert 2 * settings.VISOR_MAX_IMAGE_BYTES + 64 * 1024 <= settings.VISOR_MAX_MULTIPART_BODY_BYTES


def _upload(data: bytes) -> io.BytesIO:
    """A file for the test client to send (not an uploaded-file object: those are patched above)."""
    upload = io.BytesIO(data)
    upload.name = "photo.jpg"
    return upload


def test_a_url_encoded_form_over_the_limit_is_refused_from_its_length_with_413(api, settings):
    settings.VISOR_MAX_FORM_BODY_BYTES = 1000

    too_large = api.post(
        "/v1/galleries", urlencode({"name": "x" * 2000}), content_type="application/x-www-form-urlencoded"
    )
    within = api.post(
        "/v1/galleries", urlencode({"name": "x" * 100}), content_type="application/x-www-form-urlencoded"
    )

    assert too_large.status_code == 413
    assert too_large.json()["type"].endswith("/request-too-large")
    assert within.status_code == 201
