"""HTTP endpoints of the identity API. Thin: parse, call a selector or service, shape the answer."""

import base64
import binascii
import hashlib
import json
import time

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from identity import selectors, services
from identity.models import Job, QualityFilter
from identity.pagination import paginate
from identity.problems import EnrollmentFailed, FaceNotUsable, MissingImage, NotFound
from identity.serializers import (
    DetectOptionsSerializer,
    EnrollOptionsSerializer,
    GalleryCreateSerializer,
    GalleryUpdateSerializer,
    IdentifyOptionsSerializer,
    PaginationSerializer,
    SubjectCreateSerializer,
    SubjectListSerializer,
    SubjectUpdateSerializer,
    VerifyOptionsSerializer,
    analysed_face_representation,
    candidate_representation,
    face_representation,
    gallery_representation,
    job_representation,
    subject_representation,
)
from infra.parsers import ApiJSONParser, ApiMultiPartParser
from tenants.problems import TenantSuspended
from tenants.views import TenantAPIView

JOB_POLL_INTERVAL_SECONDS = 0.1
# Routes that take an image: a multipart upload or JSON with base64 (an urlencoded form cannot carry one).
IMAGE_PARSERS = [ApiMultiPartParser, ApiJSONParser]
MAX_IDEMPOTENCY_KEY_LENGTH = 200


def _validated(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _image_from(request, field: str) -> bytes | None:
    upload = request.FILES.get(field)
    if upload is not None:
        services.refuse_oversized_image(size=upload.size)
        return upload.read()
    encoded = request.data.get(f"{field}_base64") if hasattr(request.data, "get") else None
    if encoded is None:
        return None
    if not isinstance(encoded, str):
        raise MissingImage(f"{field}_base64", error="Send the image's bytes as a base64 string.")
    payload = encoded.split(",", 1)[-1] if encoded.startswith("data:") else encoded
    try:
        # Line breaks are allowed: the `base64` tool and MIME wrap their output at 76 columns.
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise MissingImage(
            f"{field}_base64", error="This is not valid base64 (RFC 4648's standard alphabet, padded)."
        ) from None


def _required_image(request, field: str = "image") -> bytes:
    image = _image_from(request, field)
    if image is None:
        raise MissingImage(field)
    return image


def _options(request) -> dict:
    """Options may come as query parameters or as form/JSON fields; query parameters win."""
    body = (
        {
            key: value
            for key, value in request.data.items()
            if not key.endswith("image") and not key.endswith("_base64") and not key.startswith("image")
        }
        if hasattr(request.data, "items")
        else {}
    )
    return {**body, **request.query_params.dict()}


def _client_request(request, *, options: dict, images: tuple[bytes | None, ...]) -> services.ClientRequest:
    """The request's Idempotency-Key and request id, and a fingerprint of what it asks: method, path, the
    options that change the answer, and the image bytes."""
    digest = hashlib.sha256(f"{request.method} {request.path}".encode())
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    for image in images:
        digest.update(b"\x00" if image is None else hashlib.sha256(image).digest())
    idempotency_key = request.headers.get("Idempotency-Key", "").strip()
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ValidationError(
            {"Idempotency-Key": [f"At most {MAX_IDEMPOTENCY_KEY_LENGTH} characters; a UUID is a good key."]}
        )
    return services.ClientRequest(
        idempotency_key=idempotency_key,
        request_id=request._request.request_id,
        fingerprint=digest.hexdigest(),
    )


def _server_timing(stage_ms: dict[str, float]) -> str:
    """Where the time of a recognition call went, as a standard Server-Timing header."""
    return ", ".join(f"{name.removesuffix('_ms')};dur={value:.1f}" for name, value in stage_ms.items())


class GalleryListView(TenantAPIView):
    required_scopes = {"GET": "read", "POST": "manage"}

    @extend_schema(request=GalleryCreateSerializer, responses={201: dict})
    def post(self, request):
        data = _validated(GalleryCreateSerializer, request.data)
        client_request = _client_request(request, options=data, images=())
        with self.tenant_transaction():
            gallery = services.create_gallery(
                tenant=self.tenant, actor=request.user, client_request=client_request, **data
            )
            gallery = selectors.gallery_with_counts_get(tenant=self.tenant, gallery_id=gallery.id)
        return Response(gallery_representation(gallery), status=status.HTTP_201_CREATED)

    @extend_schema(operation_id="v1_galleries_list", parameters=[PaginationSerializer], responses={200: dict})
    def get(self, request):
        page = _validated(PaginationSerializer, request.query_params)
        with self.tenant_transaction():
            body = paginate(
                selectors.gallery_list(tenant=self.tenant), represent=gallery_representation, **page
            )
        return Response(body)


class GalleryDetailView(TenantAPIView):
    required_scopes = {"GET": "read", "PATCH": "manage", "DELETE": "manage"}

    @extend_schema(responses={200: dict})
    def get(self, request, gallery_id):
        with self.tenant_transaction():
            gallery = selectors.gallery_with_counts_get(tenant=self.tenant, gallery_id=gallery_id)
        return Response(gallery_representation(gallery))

    @extend_schema(request=GalleryUpdateSerializer, responses={200: dict})
    def patch(self, request, gallery_id):
        data = _validated(GalleryUpdateSerializer, request.data)
        with self.tenant_transaction():
            gallery = selectors.gallery_get(tenant=self.tenant, gallery_id=gallery_id)
            services.update_gallery(tenant=self.tenant, actor=request.user, gallery=gallery, **data)
            gallery = selectors.gallery_with_counts_get(tenant=self.tenant, gallery_id=gallery_id)
        return Response(gallery_representation(gallery))

    @extend_schema(responses={204: None})
    def delete(self, request, gallery_id):
        with self.tenant_transaction():
            gallery = selectors.gallery_get(tenant=self.tenant, gallery_id=gallery_id)
            services.delete_gallery(tenant=self.tenant, actor=request.user, gallery=gallery)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SubjectListView(TenantAPIView):
    required_scopes = {"GET": "read", "POST": "enroll"}

    @extend_schema(request=SubjectCreateSerializer, responses={201: dict})
    def post(self, request, gallery_id):
        data = _validated(SubjectCreateSerializer, request.data)
        client_request = _client_request(request, options=data, images=())
        with self.tenant_transaction():
            gallery = selectors.gallery_get(tenant=self.tenant, gallery_id=gallery_id)
            subject = services.create_subject(
                tenant=self.tenant, actor=request.user, gallery=gallery, client_request=client_request, **data
            )
            subject = selectors.subject_get(tenant=self.tenant, subject_id=subject.id)
        return Response(subject_representation(subject), status=status.HTTP_201_CREATED)

    @extend_schema(parameters=[SubjectListSerializer], responses={200: dict})
    def get(self, request, gallery_id):
        page = _validated(SubjectListSerializer, request.query_params)
        external_id = page.pop("external_id")
        with self.tenant_transaction():
            gallery = selectors.gallery_get(tenant=self.tenant, gallery_id=gallery_id)
            subjects = selectors.subject_list(tenant=self.tenant, gallery=gallery, external_id=external_id)
            body = paginate(subjects, represent=subject_representation, **page)
        return Response(body)


class SubjectDetailView(TenantAPIView):
    required_scopes = {"GET": "read", "PATCH": "enroll", "DELETE": "enroll"}

    @extend_schema(responses={200: dict})
    def get(self, request, subject_id):
        with self.tenant_transaction():
            subject = selectors.subject_get(tenant=self.tenant, subject_id=subject_id)
        return Response(subject_representation(subject))

    @extend_schema(request=SubjectUpdateSerializer, responses={200: dict})
    def patch(self, request, subject_id):
        data = _validated(SubjectUpdateSerializer, request.data)
        with self.tenant_transaction():
            subject = selectors.subject_get(tenant=self.tenant, subject_id=subject_id)
            services.update_subject(tenant=self.tenant, actor=request.user, subject=subject, **data)
            subject = selectors.subject_get(tenant=self.tenant, subject_id=subject_id)
        return Response(subject_representation(subject))

    @extend_schema(responses={204: None})
    def delete(self, request, subject_id):
        with self.tenant_transaction():
            subject = selectors.subject_get(tenant=self.tenant, subject_id=subject_id)
            services.delete_subject(tenant=self.tenant, actor=request.user, subject=subject)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SubjectFacesView(TenantAPIView):
    required_scopes = {"GET": "read", "POST": "enroll"}
    parser_classes = IMAGE_PARSERS

    @extend_schema(
        parameters=[
            EnrollOptionsSerializer,
            OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER),
        ],
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
            },
            "application/json": {"type": "object", "properties": {"image_base64": {"type": "string"}}},
        },
        responses={201: dict, 202: dict},
    )
    def post(self, request, subject_id):
        options = _validated(EnrollOptionsSerializer, _options(request))
        image = _required_image(request)
        quality_filter = QualityFilter(options["quality_filter"])
        fingerprinted = {"largest": options["largest"]}
        # Only a non-default filter joins the Idempotency-Key fingerprint, so a retry of a request made
        # before the option existed still matches its first use.
        if quality_filter != QualityFilter.AUTO:
            fingerprinted["quality_filter"] = quality_filter.value
        client_request = _client_request(request, options=fingerprinted, images=(image,))
        with self.tenant_transaction():
            subject = selectors.subject_get(tenant=self.tenant, subject_id=subject_id)
            job = services.request_face_enrollment(
                tenant=self.tenant,
                api_key=self.api_key,
                subject=subject,
                image_bytes=image,
                largest=options["largest"],
                quality_filter=quality_filter,
                client_request=client_request,
            )
        if options["wait"]:
            job = self._wait_for(job, timeout=options["timeout"])
        return self._answer(job)

    def _wait_for(self, job: Job, *, timeout: float) -> Job:
        deadline = time.monotonic() + timeout
        while job.status in (Job.Status.QUEUED, Job.Status.RUNNING) and time.monotonic() < deadline:
            time.sleep(JOB_POLL_INTERVAL_SECONDS)
            with self.tenant_transaction():
                job = selectors.job_get(tenant=self.tenant, job_id=job.id)
        return job

    def _answer(self, job: Job) -> Response:
        headers = {"Location": f"/v1/jobs/{job.id}"}
        if job.status == Job.Status.SUCCEEDED:
            return Response(job.result["face"], status=status.HTTP_201_CREATED, headers=headers)
        if job.status == Job.Status.FAILED:
            reason = job.error["reason"]
            if reason == services.SUBJECT_DELETED:
                raise NotFound("subject")
            if reason == services.INTERNAL_ERROR:
                raise EnrollmentFailed(job.error["detail"], job_id=str(job.id))
            if reason == services.TENANT_INACTIVE:
                raise TenantSuspended(job.error["detail"])
            raise FaceNotUsable(job.error["detail"], reasons=job.error.get("reasons") or [reason])
        return Response({"job": job_representation(job)}, status=status.HTTP_202_ACCEPTED, headers=headers)

    @extend_schema(parameters=[PaginationSerializer], responses={200: dict})
    def get(self, request, subject_id):
        page = _validated(PaginationSerializer, request.query_params)
        with self.tenant_transaction():
            subject = selectors.subject_get(tenant=self.tenant, subject_id=subject_id)
            body = paginate(
                selectors.face_list(tenant=self.tenant, subject=subject),
                represent=face_representation,
                **page,
            )
        return Response(body)


class FaceDetailView(TenantAPIView):
    required_scopes = {"GET": "read", "DELETE": "enroll"}

    @extend_schema(responses={200: dict})
    def get(self, request, face_id):
        with self.tenant_transaction():
            face = selectors.face_get(tenant=self.tenant, face_id=face_id)
        return Response(face_representation(face))

    @extend_schema(responses={204: None})
    def delete(self, request, face_id):
        with self.tenant_transaction():
            face = selectors.face_get(tenant=self.tenant, face_id=face_id)
            services.delete_face(tenant=self.tenant, actor=request.user, face=face)
        return Response(status=status.HTTP_204_NO_CONTENT)


class IdentifyView(TenantAPIView):
    required_scopes = {"POST": "identify"}
    parser_classes = IMAGE_PARSERS

    @extend_schema(
        parameters=[IdentifyOptionsSerializer],
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
            }
        },
        responses={200: dict},
    )
    def post(self, request, gallery_id):
        options = _validated(IdentifyOptionsSerializer, _options(request))
        image = _required_image(request)
        with self.tenant_transaction():
            gallery = selectors.gallery_get(tenant=self.tenant, gallery_id=gallery_id)
        result = services.identify(
            tenant=self.tenant,
            api_key=self.api_key,
            gallery=gallery,
            image_bytes=image,
            client_request=_client_request(request, options=options, images=(image,)),
            **options,
        )
        return Response(
            {
                "faces": [
                    {
                        **analysed_face_representation(item.face),
                        "match": candidate_representation(item.match, result.subjects)
                        if item.match
                        else None,
                        "candidates": [candidate_representation(c, result.subjects) for c in item.candidates],
                        "threshold": round(item.threshold, 6),
                    }
                    for item in result.faces
                ],
                "model": result.model_version,
                "took_ms": result.took_ms,
            },
            headers={"Server-Timing": _server_timing(result.stage_ms)},
        )


class VerifyView(TenantAPIView):
    required_scopes = {"POST": "identify"}
    parser_classes = IMAGE_PARSERS

    @extend_schema(
        parameters=[VerifyOptionsSerializer],
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "image2": {"type": "string", "format": "binary"},
                    "subject_id": {"type": "string", "format": "uuid"},
                },
            }
        },
        responses={200: dict},
    )
    def post(self, request):
        options = _validated(VerifyOptionsSerializer, _options(request))
        image = _required_image(request)
        image2 = _image_from(request, "image2")
        if (image2 is None) == (options["subject_id"] is None):
            raise ValidationError({"image2": ["Send exactly one of `image2` and `subject_id`."]})
        with self.tenant_transaction():
            subject = (
                selectors.subject_get(tenant=self.tenant, subject_id=options["subject_id"])
                if options["subject_id"]
                else None
            )
        result = services.verify(
            tenant=self.tenant,
            api_key=self.api_key,
            image_bytes=image,
            image2_bytes=image2,
            subject=subject,
            threshold=options["threshold"],
            client_request=_client_request(request, options=options, images=(image, image2)),
        )
        return Response(
            {
                "match": result.match,
                "similarity": result.similarity,
                "confidence": result.confidence,
                "threshold": result.threshold,
                "model": result.model_version,
            }
        )


class DetectView(TenantAPIView):
    required_scopes = {"POST": "identify"}
    parser_classes = IMAGE_PARSERS

    @extend_schema(
        parameters=[DetectOptionsSerializer],
        request={
            "multipart/form-data": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
            }
        },
        responses={200: dict},
    )
    def post(self, request):
        options = _validated(DetectOptionsSerializer, _options(request))
        image = _required_image(request)
        started = time.perf_counter()
        analysis = services.detect(
            tenant=self.tenant,
            api_key=self.api_key,
            image_bytes=image,
            client_request=_client_request(request, options=options, images=(image,)),
            **options,
        )
        return Response(
            {
                "faces": [analysed_face_representation(face) for face in analysis.faces],
                "image": {"width": analysis.width, "height": analysis.height},
                "model": analysis.model_version,
                "took_ms": round((time.perf_counter() - started) * 1000, 1),
            }
        )


class JobDetailView(TenantAPIView):
    required_scopes = {"GET": "read"}

    @extend_schema(responses={200: dict})
    def get(self, request, job_id):
        with self.tenant_transaction():
            job = selectors.job_get(tenant=self.tenant, job_id=job_id)
        return Response(job_representation(job))
