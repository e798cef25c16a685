"""Tenant A's key against every tenant-owned route, with tenant B's object ids: nothing leaks or changes.

The routes come from the URL conf, so a new route is covered the day it is added.
"""

import re

import numpy as np
import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone

from identity.models import Face, FaceTemplate, Gallery, Job, Subject
from tenants.billing_services import refresh_draft_invoice
from tenants.periods import calendar_month
from tenants.rls import operator_transaction, tenant_transaction
from tests.face_images import person_image
from tests.identity.conftest import upload_file

pytestmark = pytest.mark.django_db

OBJECT_PARAMETERS = {"gallery_id", "subject_id", "face_id", "job_id", "invoice_id"}


def _v1_routes() -> list[tuple[str, type]]:
    routes = []

    def walk(patterns, prefix):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern) and hasattr(pattern.callback, "view_class"):
                routes.append((prefix + str(pattern.pattern), pattern.callback.view_class))

    walk(get_resolver().url_patterns, "/")
    return [(route, view) for route, view in routes if route.startswith("/v1/")]


def _methods(view_class) -> list[str]:
    return [method for method in ("get", "post", "patch", "put", "delete") if hasattr(view_class, method)]


@pytest.fixture
def victim(other_tenant_api):
    """Tenant B's objects, made directly in its tenant transaction."""
    tenant = other_tenant_api.tenant
    with tenant_transaction(tenant.id):
        gallery = Gallery.objects.create(tenant=tenant, name="B", model_version="sface-2021dec-0ba9fbfa01b5")
        subject = Subject.objects.create(tenant=tenant, gallery=gallery, external_id="b-1")
        face = Face.objects.create(
            tenant=tenant,
            gallery=gallery,
            subject=subject,
            bbox={},
            landmarks={},
            detection_score=0.9,
            quality_score=0.9,
            masked=False,
            mask_probability=0.0,
            model_version=gallery.model_version,
            image_sha256="0" * 64,
        )
        embedding = np.ones(128, dtype=np.float32) / np.sqrt(128)
        FaceTemplate.objects.create(
            tenant=tenant,
            gallery=gallery,
            subject=subject,
            face=face,
            kind="original",
            embedding=embedding,
            model_version=gallery.model_version,
        )
        job = Job.objects.create(tenant=tenant, kind=Job.Kind.ENROLL_FACE, subject=subject)
        invoice = refresh_draft_invoice(tenant=tenant, period_start=calendar_month(timezone.now()).start)
    return {
        "gallery_id": gallery.id,
        "subject_id": subject.id,
        "face_id": face.id,
        "job_id": job.id,
        "invoice_id": invoice.id,
    }


def _snapshot() -> list:
    with operator_transaction():
        return [list(model.objects.order_by("pk").values()) for model in (Gallery, Subject, Face, Job)] + [
            list(FaceTemplate.objects.order_by("pk").values_list("id", "face_id", "kind"))
        ]


def test_the_matrix_covers_every_tenant_object_route():
    parametrised = [route for route, _ in _v1_routes() if "<" in route]

    assert len(parametrised) >= 7
    for route in parametrised:
        assert set(re.findall(r"<(?:\w+:)?(\w+)>", route)) <= OBJECT_PARAMETERS, route


def test_tenant_a_cannot_see_change_or_delete_tenant_b_objects_on_any_route(tenant_api, victim):
    before = _snapshot()
    calls = 0
    for route, view_class in _v1_routes():
        if "<" not in route:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", lambda parameter: str(victim[parameter.group(1)]), route)
        for method in _methods(view_class):
            if method == "get":
                response = tenant_api.get(path)
            elif method == "delete":
                response = tenant_api.delete(path)
            elif method == "patch":  # a body every PATCH route takes: refused for the object, not the body
                response = tenant_api.patch(path, {"name": "stolen"})
            elif path.endswith("/subjects"):
                response = tenant_api.post(path, {"name": "x", "external_id": "x"})
            else:
                response = tenant_api.post(path, {"image": upload_file(person_image(71))})
            calls += 1
            assert response.status_code in (403, 404), (method, path, response.status_code, response.content)
            assert response["Content-Type"] == "application/problem+json"

    assert calls >= 12
    assert _snapshot() == before


def test_verify_against_another_tenants_subject_is_404_and_changes_nothing(tenant_api, victim):
    before = _snapshot()

    response = tenant_api.post(
        "/v1/verify", {"image": upload_file(person_image(72)), "subject_id": str(victim["subject_id"])}
    )

    assert response.status_code == 404
    assert _snapshot() == before
