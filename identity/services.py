"""Writes of identity data: galleries, subjects, enrollment, deletion and the metered recognition calls.

Every function is keyword-only and takes the tenant explicitly. Long-running work (the face pipeline) never
runs inside a database transaction; the transactions around it are short and lock the row they change.
"""

import dataclasses
import hashlib
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from identity import quantised_scan, search, selectors, webhooks
from identity.face_pipeline import get_face_pipeline, pipeline_for_model_version
from identity.matching import Candidate, default_threshold, rank_subjects, template_kinds_scored
from identity.models import (
    Face,
    FaceTemplate,
    Gallery,
    IdempotentRequest,
    Job,
    PendingObjectDeletion,
    QualityFilter,
    Subject,
)
from identity.problems import (
    FaceNotUsable,
    GalleryModelMismatch,
    IdempotencyKeyReused,
    InvalidImage,
    SubjectExternalIdConflict,
)
from identity.serializers import face_geometry, face_representation
from tenants.rls import operator_transaction, tenant_transaction
from tenants.services import check_capacity, check_quota, record_audit_event, record_usage
from workers.pipeline.config import RIVAL_FACE_AREA_RATIO, QualityFloors
from workers.pipeline.errors import ImageRejected, ImageTooLarge
from workers.pipeline.intake import decode_image
from workers.pipeline.pipeline import FaceAnalysis, FacePipeline, ImageAnalysis
from workers.pipeline.quality import quality_issues

MAX_ENROLL_FACES_CONSIDERED = 20
# Far longer than any enrollment runs or waits in a healthy queue.
STALLED_JOB_AFTER = timedelta(minutes=10)
STALLED_JOBS_PER_SWEEP = 500
# The task's own retries make at most 6 attempts; the rest is room for redeliveries after a lost worker.
MAX_ENROLLMENT_ATTEMPTS = 10
# How long a retry with the same Idempotency-Key gets the first request's outcome (Stripe keeps keys 24 h).
IDEMPOTENCY_KEY_LIFETIME = timedelta(hours=24)
OBJECT_DELETION_MAX_BACKOFF = timedelta(hours=1)
# The most keys S3's DeleteObjects takes in one request.
S3_DELETE_BATCH = 1000
# Reasons an enrollment job fails that are not about its image (those are the face-rejection reasons).
SUBJECT_DELETED = "SUBJECT_DELETED"
INTERNAL_ERROR = "INTERNAL_ERROR"
TENANT_INACTIVE = "TENANT_INACTIVE"
# A face-rejection reason of the service's own: the image ran past the time limit or took down every
# worker that tried it.
UNPROCESSABLE_IMAGE = "UNPROCESSABLE_IMAGE"
# Failures that say nothing against the request: its Idempotency-Key is released so that a retry with it
# (the SDK's retries use it) makes a new job instead of getting this failure back for the key's lifetime.
FAILURES_WORTH_A_RETRY = (INTERNAL_ERROR, TENANT_INACTIVE)
FAILURES_NOT_ABOUT_THE_IMAGE = (SUBJECT_DELETED, *FAILURES_WORTH_A_RETRY)
# The failures that can end an attempt after it wrote the image (a rejection by the pipeline comes first).
FAILURES_THAT_CAN_FOLLOW_THE_UPLOAD = (*FAILURES_NOT_ABOUT_THE_IMAGE, UNPROCESSABLE_IMAGE)


# --- Idempotency ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientRequest:
    """Who asked for a billable call: the client's `Idempotency-Key` (empty when it sent none), the request
    id, and a fingerprint of what was asked (method, path, options, image bytes)."""

    idempotency_key: str
    request_id: str
    fingerprint: str


def claim_idempotency_key(*, tenant, client_request: ClientRequest) -> tuple[IdempotentRequest, bool]:
    """The record of the request's Idempotency-Key, and whether this request is its first use. A key first
    used for a different request is refused (422): an enrollment before its job is made, a recognition call
    after its analysis but before it is billed. Run it inside the tenant's transaction: a concurrent request
    with the same key waits on the unique index until this transaction ends."""
    try:
        with transaction.atomic():
            return IdempotentRequest.objects.create(
                tenant=tenant,
                key=client_request.idempotency_key,
                fingerprint=client_request.fingerprint,
                status_code=200,
                body={},
            ), True
    except IntegrityError:
        earlier = IdempotentRequest.objects.get(tenant=tenant, key=client_request.idempotency_key)
    if earlier.fingerprint != client_request.fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was first used with a different request; use a new key."
        )
    return earlier, False


def _claim_for_creation(*, tenant, client_request: ClientRequest | None) -> IdempotentRequest | None:
    """The Idempotency-Key claim of a create request, None without a key; its body names what the first
    request created, and is empty on the first use (the creation rolls back with the claim if it fails)."""
    if client_request is None or not client_request.idempotency_key:
        return None
    claim, _ = claim_idempotency_key(tenant=tenant, client_request=client_request)
    return claim


def _remember_creation(claim: IdempotentRequest | None, **created_ids: str) -> None:
    if claim is not None:
        claim.status_code, claim.body = 201, created_ids
        claim.save(update_fields=["status_code", "body"])


def _meter_call(*, tenant, api_key, operation: str, client_request: ClientRequest) -> None:
    """Bill a successful recognition call once per client request, inside the tenant's transaction. With an
    Idempotency-Key, the ledger key names its claim too, so that the same key reused after it expired bills
    its new call. Without one, every call is a new ledger key: never the request id, which a client may send
    (X-Request-ID) and repeat."""
    if client_request.idempotency_key:
        claim, _ = claim_idempotency_key(tenant=tenant, client_request=client_request)
        usage_key = f"idempotency:{claim.id}:{client_request.idempotency_key}"
    else:
        usage_key = f"call:{uuid.uuid4()}"
    record_usage(tenant=tenant, api_key=api_key, operation=operation, units=1, idempotency_key=usage_key)


# --- Galleries and subjects -------------------------------------------------------------------------------


@transaction.atomic
def create_gallery(
    *, tenant, actor, name: str, description: str = "", client_request: ClientRequest | None = None
) -> Gallery:
    """A new gallery; a retry with the same Idempotency-Key gets the gallery of its first request."""
    claim = _claim_for_creation(tenant=tenant, client_request=client_request)
    if claim is not None and claim.body:
        return selectors.gallery_get(tenant=tenant, gallery_id=claim.body["gallery_id"])
    gallery = Gallery.objects.create(
        tenant=tenant, name=name, description=description, model_version=get_face_pipeline().model_version
    )
    record_audit_event(
        tenant=tenant, actor=actor, action="gallery.created", object_type="gallery", object_id=str(gallery.id)
    )
    _remember_creation(claim, gallery_id=str(gallery.id))
    return gallery


@transaction.atomic
def update_gallery(
    *, tenant, actor, gallery: Gallery, name: str | None = None, description: str | None = None
) -> Gallery:
    changes = {
        field: value for field, value in (("name", name), ("description", description)) if value is not None
    }
    for field, value in changes.items():
        setattr(gallery, field, value)
    gallery.save(update_fields=[*changes, "updated_at"])
    record_audit_event(
        tenant=tenant,
        actor=actor,
        action="gallery.updated",
        object_type="gallery",
        object_id=str(gallery.id),
        details={"fields": sorted(changes)},
    )
    return gallery


@transaction.atomic
def delete_gallery(*, tenant, actor, gallery: Gallery) -> None:
    _lock_for_deletion(model=Gallery, object_id=gallery.id, tenant_id=tenant.id)
    _schedule_image_deletion(tenant=tenant, faces=Face.objects.filter(tenant=tenant, gallery=gallery))
    had_ann_index = bool(gallery.ann_index_name)
    gallery_id = gallery.id
    gallery.delete()
    record_audit_event(
        tenant=tenant, actor=actor, action="gallery.deleted", object_type="gallery", object_id=str(gallery_id)
    )
    if had_ann_index:
        from identity.tasks import drop_gallery_ann_index

        transaction.on_commit(lambda: drop_gallery_ann_index.delay(gallery_id=str(gallery_id)))


@transaction.atomic
def create_subject(
    *,
    tenant,
    actor,
    gallery: Gallery,
    external_id: str,
    name: str = "",
    metadata: dict | None = None,
    client_request: ClientRequest | None = None,
) -> Subject:
    """A new subject; a retry with the same Idempotency-Key gets the subject of its first request, not a 409
    for the external_id its first request took."""
    claim = _claim_for_creation(tenant=tenant, client_request=client_request)
    if claim is not None and claim.body:
        return selectors.subject_get(tenant=tenant, subject_id=claim.body["subject_id"])
    try:
        with transaction.atomic():
            subject = Subject.objects.create(
                tenant=tenant, gallery=gallery, external_id=external_id, name=name, metadata=metadata or {}
            )
            _count_subjects(tenant=tenant, gallery_id=gallery.id, change=1)
    except IntegrityError:
        raise SubjectExternalIdConflict(
            f"A subject with external_id {external_id!r} already exists in this gallery."
        ) from None
    record_audit_event(
        tenant=tenant, actor=actor, action="subject.created", object_type="subject", object_id=str(subject.id)
    )
    _remember_creation(claim, subject_id=str(subject.id))
    return subject


def _count_subjects(*, tenant, gallery_id, change: int) -> None:
    Gallery.objects.filter(id=gallery_id, tenant=tenant).update(subject_count=F("subject_count") + change)


@transaction.atomic
def update_subject(
    *,
    tenant,
    actor,
    subject: Subject,
    external_id: str | None = None,
    name: str | None = None,
    metadata: dict | None = None,
) -> Subject:
    changes = {
        field: value
        for field, value in (("external_id", external_id), ("name", name), ("metadata", metadata))
        if value is not None
    }
    for field, value in changes.items():
        setattr(subject, field, value)
    try:
        with transaction.atomic():
            subject.save(update_fields=[*changes, "updated_at"])
    except IntegrityError:
        raise SubjectExternalIdConflict(
            f"A subject with external_id {external_id!r} already exists in this gallery."
        ) from None
    record_audit_event(
        tenant=tenant,
        actor=actor,
        action="subject.updated",
        object_type="subject",
        object_id=str(subject.id),
        details={"fields": sorted(changes)},
    )
    return subject


@transaction.atomic
def delete_subject(*, tenant, actor, subject: Subject) -> None:
    # The gallery first, as everywhere (`_hold_off_deletion`): a gallery's deletion cascades to its subjects.
    _key_share_lock(model=Gallery, object_id=subject.gallery_id, tenant_id=tenant.id)
    _lock_for_deletion(model=Subject, object_id=subject.id, tenant_id=tenant.id)
    _schedule_image_deletion(tenant=tenant, faces=Face.objects.filter(tenant=tenant, subject=subject))
    subject_id = subject.id
    # A concurrent delete of the same subject may have removed it already: count only what this one did.
    _, deleted = subject.delete()
    _count_subjects(tenant=tenant, gallery_id=subject.gallery_id, change=-deleted.get(Subject._meta.label, 0))
    record_audit_event(
        tenant=tenant, actor=actor, action="subject.deleted", object_type="subject", object_id=str(subject_id)
    )


@transaction.atomic
def delete_face(*, tenant, actor, face: Face) -> None:
    _schedule_image_deletion(tenant=tenant, faces=Face.objects.filter(tenant=tenant, id=face.id))
    face_id = face.id
    face.delete()
    record_audit_event(
        tenant=tenant, actor=actor, action="face.deleted", object_type="face", object_id=str(face_id)
    )


def _schedule_image_deletion(*, tenant, faces) -> None:
    """Templates go with their rows at once; stored images go through the outbox, retried until gone."""
    _schedule_object_deletion(
        tenant=tenant, keys=list(faces.exclude(image_key="").values_list("image_key", flat=True))
    )


def _schedule_object_deletion(*, tenant, keys: list[str]) -> None:
    PendingObjectDeletion.objects.bulk_create(PendingObjectDeletion(tenant=tenant, key=key) for key in keys)
    if keys:
        from identity.tasks import purge_deleted_images

        tenant_id = str(tenant.id)
        transaction.on_commit(lambda: purge_deleted_images.delay(tenant_id=tenant_id))


# --- Enrollment ------------------------------------------------------------------------------------------


def image_key(*, tenant_id: uuid.UUID, face_id: uuid.UUID) -> str:
    return f"tenants/{tenant_id}/faces/{face_id}"


def enrolled_face_id(job_id: str) -> uuid.UUID:
    """The id of the face a job enrolls, the same in every attempt, and so is its image's key."""
    return uuid.uuid5(uuid.UUID(job_id), "face")


def refuse_oversized_image(*, size: int) -> None:
    """Refuse an uploaded file over the image limit before its bytes are read into memory."""
    limit = get_face_pipeline().config.intake.max_bytes
    if size > limit:
        raise InvalidImage(ImageTooLarge(f"The image is {size:,} bytes; the limit is {limit:,} bytes."))


def validate_image(*, image_bytes: bytes) -> None:
    """Refuse an unusable file at once (4xx) rather than as a failed job later."""
    try:
        decode_image(image_bytes, limits=get_face_pipeline().config.intake)
    except ImageRejected as rejection:
        raise InvalidImage(rejection) from None


@transaction.atomic
def request_face_enrollment(
    *,
    tenant,
    api_key,
    subject: Subject,
    image_bytes: bytes,
    largest: bool,
    quality_filter: QualityFilter,
    client_request: ClientRequest,
) -> Job:
    """Queue the enrollment of the face in `image_bytes`; a retry with the same Idempotency-Key gets the job
    of its first request and creates nothing."""
    if client_request.idempotency_key:
        claim, first_use = claim_idempotency_key(tenant=tenant, client_request=client_request)
        if not first_use:
            return selectors.job_get(tenant=tenant, job_id=claim.body["job_id"])
    validate_image(image_bytes=image_bytes)
    # Jobs still queued count as the faces and units they will make: checked only at the stored faces and
    # the ledger, a client could queue any number of enrollments past its limits before one finished.
    pending_in_gallery, pending = selectors.pending_enrollments(tenant=tenant, gallery=subject.gallery)
    check_quota(tenant=tenant, operation="enroll", units=pending + 1)
    gallery_faces, tenant_faces = selectors.face_counts(tenant=tenant, gallery=subject.gallery)
    check_capacity(
        tenant=tenant,
        gallery_faces=gallery_faces + pending_in_gallery + 1,
        tenant_faces=tenant_faces + pending + 1,
    )
    job = Job.objects.create(
        tenant=tenant,
        api_key=api_key,
        kind=Job.Kind.ENROLL_FACE,
        subject=subject,
        options={"largest": largest, "quality_filter": quality_filter.value},
        input_image=image_bytes,
        request_id=client_request.request_id,
    )
    if client_request.idempotency_key:
        claim.status_code, claim.body, claim.job = 202, {"job_id": str(job.id)}, job
        claim.save(update_fields=["status_code", "body", "job"])
    _dispatch_enrollment(job)
    return job


def _dispatch_enrollment(job: Job) -> None:
    from identity.tasks import enroll_face

    job_id, tenant_id = str(job.id), str(job.tenant_id)
    transaction.on_commit(lambda: enroll_face.delay(job_id=job_id, tenant_id=tenant_id))


@dataclass(frozen=True)
class EnrollmentOutcome:
    face: Face | None
    rejection: dict | None


def process_face_enrollment(*, job_id: str, tenant_id: str) -> Job:
    """Run a queued enrollment job to completion. Safe to call again: a finished job is returned as it is."""
    with tenant_transaction(tenant_id):
        job = (
            Job.objects.select_for_update(of=("self",))
            .select_related("tenant")
            .get(id=job_id, tenant_id=tenant_id)
        )
        if job.status in (Job.Status.SUCCEEDED, Job.Status.FAILED):
            return job
        if not job.tenant.is_active:
            return _finish_job(job_id=job_id, tenant_id=tenant_id, face=None, error=_inactive(job.tenant))
        if job.attempts >= MAX_ENROLLMENT_ATTEMPTS:
            # Each attempt killed its worker (out of memory, say) before it could fail: redelivered and
            # re-sent for ever, it would take a worker down every time.
            return reject_unprocessable_image(
                job_id=job_id,
                tenant_id=tenant_id,
                detail=f"Enrollment was attempted {job.attempts} times and never finished.",
            )
        job.status, job.started_at, job.attempts = Job.Status.RUNNING, timezone.now(), job.attempts + 1
        job.save(update_fields=["status", "started_at", "attempts"])
        subject_id = job.subject_id
        image_bytes, largest = bytes(job.input_image or b""), bool(job.options.get("largest"))
        quality_filter = QualityFilter(job.options.get("quality_filter", QualityFilter.AUTO))
        gallery_version = (
            Gallery.objects.filter(subjects__id=job.subject_id, tenant_id=tenant_id)
            .values_list("model_version", flat=True)
            .first()
        )

    pipeline = get_face_pipeline()
    try:
        analysis = pipeline.analyze(image_bytes, purpose="enroll", max_faces=MAX_ENROLL_FACES_CONSIDERED)
    except ImageRejected as rejection:
        return _finish_job(
            job_id=job_id,
            tenant_id=tenant_id,
            face=None,
            error={"reason": rejection.code, "detail": rejection.detail},
        )
    chosen, rejection = _choose_enrollment_face(
        analysis, largest=largest, floors=_enrollment_floors(pipeline, quality_filter)
    )
    if rejection:
        return _finish_job(job_id=job_id, tenant_id=tenant_id, face=None, error=rejection)
    image_sha256 = hashlib.sha256(image_bytes).hexdigest()
    template_sets = [_face_templates(pipeline, image_bytes, analysis, chosen, seed=image_sha256)]
    # A gallery not yet re-embedded after a model change is searched with its own model: the new face must
    # be findable there now, and with the current model once `reembed` switches the gallery over.
    gallery_pipeline = pipeline_for_model_version(gallery_version) if gallery_version else None
    if gallery_pipeline is not None and gallery_pipeline.model_version != pipeline.model_version:
        template_sets.append(
            _face_templates(gallery_pipeline, image_bytes, analysis, chosen, seed=image_sha256)
        )

    face_id = enrolled_face_id(job_id)
    with tenant_transaction(tenant_id):
        _hold_off_deletion(subject_id=subject_id, tenant_id=tenant_id)
        job = (
            Job.objects.select_for_update(of=("self",))
            .select_related("tenant", "subject")
            .get(id=job_id, tenant_id=tenant_id)
        )
        if job.status != Job.Status.RUNNING:
            return job
        if not job.tenant.is_active:  # suspended while its face was analysed
            return _finish_job(job_id=job_id, tenant_id=tenant_id, face=None, error=_inactive(job.tenant))
        if job.subject is None:
            return _finish_job(
                job_id=job_id,
                tenant_id=tenant_id,
                face=None,
                error={"reason": SUBJECT_DELETED, "detail": "The subject was deleted."},
            )
        stored_key = ""
        if job.tenant.store_images:
            # Written before the face row commits; the key is derived from the job, so a retry overwrites it.
            stored_key = image_key(tenant_id=job.tenant_id, face_id=face_id)
            default_storage.save(stored_key, ContentFile(image_bytes))
        face = _store_face(
            job=job,
            face_id=face_id,
            analysis=analysis,
            chosen=chosen,
            template_sets=template_sets,
            image_sha256=image_sha256,
            stored_key=stored_key,
        )
        record_usage(
            tenant=job.tenant,
            api_key=job.api_key,
            operation="enroll",
            units=1,
            idempotency_key=f"job:{job_id}",
        )
        return _finish_job(job_id=job_id, tenant_id=tenant_id, face=face, error=None)


def _inactive(tenant) -> dict:
    """The failure of a job whose tenant was suspended or closed after it was queued: the work is not done,
    and so not billed."""
    return {
        "reason": TENANT_INACTIVE,
        "detail": f"The tenant is {tenant.status}; its queued enrollments are not processed.",
    }


def _hold_off_deletion(*, subject_id: uuid.UUID | None, tenant_id) -> None:
    """Key-share-lock the subject's gallery, then the subject, until the caller's transaction ends (what the
    face's foreign keys would lock at its insert, taken before the image is written). A deletion takes the
    row's update lock before it reads which images to delete (`_lock_for_deletion`), so it waits for a face
    being added and then deletes its image too, and an enrollment that comes second finds the subject gone.
    Every path takes the gallery before the subject and both before the job, so none waits on another; a key
    share lock leaves the rows' ordinary updates (face and subject counts) free."""
    gallery_id = (
        Subject.objects.filter(id=subject_id, tenant_id=tenant_id)
        .values_list("gallery_id", flat=True)
        .first()
    )
    if gallery_id is None:
        return
    _key_share_lock(model=Gallery, object_id=gallery_id, tenant_id=tenant_id)
    _key_share_lock(model=Subject, object_id=subject_id, tenant_id=tenant_id)


def _key_share_lock(*, model, object_id, tenant_id) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {model._meta.db_table} WHERE id = %s AND tenant_id = %s FOR KEY SHARE",
            [object_id, tenant_id],
        )


def _lock_for_deletion(*, model, object_id, tenant_id) -> None:
    """The row's update lock: see `_hold_off_deletion`."""
    list(
        model.objects.select_for_update()
        .filter(id=object_id, tenant_id=tenant_id)
        .values_list("id", flat=True)
    )


def reject_unprocessable_image(*, job_id: str, tenant_id: str, detail: str) -> Job:
    """End a job whose image no worker could process (each attempt ran out of time or took its worker
    down). The image is the likely cause, so its Idempotency-Key is kept: a retry gets this answer, not a
    new job that would do the same."""
    return _finish_job(
        job_id=job_id,
        tenant_id=tenant_id,
        face=None,
        error={"reason": UNPROCESSABLE_IMAGE, "detail": f"{detail} The image could not be processed."},
    )


def fail_enrollment_job(*, job_id: str, tenant_id: str, detail: str) -> Job:
    """End a job whose processing kept failing on infrastructure errors."""
    return _finish_job(
        job_id=job_id,
        tenant_id=tenant_id,
        face=None,
        error={"reason": INTERNAL_ERROR, "detail": "Enrollment failed after retries: " + detail},
    )


def redispatch_stalled_jobs(
    *, stalled_for: timedelta = STALLED_JOB_AFTER, batch_size: int = STALLED_JOBS_PER_SWEEP
) -> int:
    """Send again the task of every job still queued or running `stalled_for` after it was last sent, oldest
    first and at most `batch_size` a sweep; returns how many. A worker killed mid-task can take its message
    with it (kombu's SQLAlchemy transport never redelivers it, Redis only after its visibility timeout), and
    the job would wait forever. Processing is idempotent, so a job whose message was only slow runs once and
    its duplicate finds it finished."""
    now = timezone.now()
    with operator_transaction():
        stalled = list(
            Job.objects.select_for_update(skip_locked=True)
            .filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING], dispatched_at__lt=now - stalled_for)
            .order_by("dispatched_at")
            .only("id", "tenant_id")[:batch_size]
        )
        Job.objects.filter(id__in=[job.id for job in stalled]).update(dispatched_at=now)
        for job in stalled:
            _dispatch_enrollment(job)
    return len(stalled)


def purge_expired_idempotency_keys(*, older_than: timedelta = IDEMPOTENCY_KEY_LIFETIME) -> int:
    """Forget Idempotency-Keys older than their lifetime (a later request may reuse one); returns how many."""
    with operator_transaction():
        deleted, _ = IdempotentRequest.objects.filter(created_at__lt=timezone.now() - older_than).delete()
    return deleted


def _enrollment_floors(pipeline: FacePipeline, quality_filter: QualityFilter) -> QualityFloors | None:
    """The floors a face must clear to be enrolled under `quality_filter`; None: no quality refusal."""
    return {
        QualityFilter.AUTO: pipeline.config.quality.enroll,
        QualityFilter.LOW: pipeline.config.quality.identify,
        QualityFilter.NONE: None,
    }[quality_filter]


def _choose_enrollment_face(
    analysis: ImageAnalysis, *, largest: bool, floors: QualityFloors | None
) -> tuple[FaceAnalysis | None, dict | None]:
    """The face to enroll, or why none is. The stored face keeps the issues the enrollment floors find
    whatever `floors` decided, so a face enrolled under a lenient filter still says what is wrong with it."""
    if not analysis.faces:
        return None, {"reason": "NO_FACE", "detail": "No face was found in the image."}
    face = analysis.faces[0]  # largest first
    # A passer-by far behind the person photographed leaves no doubt about whom the photo is of.
    rivals = [
        other for other in analysis.faces[1:] if other.bbox.area >= RIVAL_FACE_AREA_RATIO * face.bbox.area
    ]
    if rivals and not largest:
        return None, {
            "reason": "MULTIPLE_FACES",
            "detail": f"{analysis.faces_detected} faces were found, {1 + len(rivals)} of similar size; "
            "send one face, or ?largest=true to enroll the largest.",
        }
    refusing = quality_issues(face.quality, face.detection_score, floors) if floors is not None else ()
    if refusing:
        issues = [str(issue) for issue in refusing]
        return None, {
            "reason": issues[0],
            "reasons": issues,
            "detail": "The face is not good enough to enroll: " + ", ".join(issues) + ".",
            "quality": {"score": round(face.quality.score, 4)},
        }
    return face, None


@dataclass(frozen=True, eq=False)
class TemplateSet:
    """The templates one embedding model makes of one face: its original and its synthetic-mask ones."""

    model_version: str
    embeddings: list[tuple[str, np.ndarray]]  # (FaceTemplate.Kind, (D,) float32)


def _store_face(
    *,
    job: Job,
    face_id: uuid.UUID,
    analysis: ImageAnalysis,
    chosen: FaceAnalysis,
    template_sets: list[TemplateSet],
    image_sha256: str,
    stored_key: str,
) -> Face:
    subject = job.subject
    gallery = Gallery.objects.get(id=subject.gallery_id, tenant_id=job.tenant_id)
    mask = chosen.mask
    face = Face.objects.create(
        id=face_id,
        tenant_id=job.tenant_id,
        gallery=gallery,
        subject=subject,
        **face_geometry(chosen),
        detection_score=round(chosen.detection_score, 6),
        quality_score=round(chosen.quality.score, 6),
        quality_issues=[str(issue) for issue in chosen.quality.issues],
        masked=bool(mask.masked) if mask else False,
        mask_probability=round(mask.probability, 6) if mask else 0.0,
        model_version=analysis.model_version,
        image_key=stored_key,
        image_sha256=image_sha256,
    )
    _store_templates(face=face, template_sets=template_sets)
    return face


def _face_templates(
    pipeline: FacePipeline, image_bytes: bytes, analysis: ImageAnalysis, face: FaceAnalysis, *, seed: str
) -> TemplateSet:
    """`pipeline`'s templates of `face`, found in this image by any pipeline (they share the detector)."""
    original = (
        face.embedding
        if analysis.model_version == pipeline.model_version
        else pipeline.embedder.embed([face.aligned_crop])[0]
    )
    synthetic = pipeline.synthetic_templates(image_bytes, face, seed=seed)
    return TemplateSet(
        pipeline.model_version,
        [(FaceTemplate.Kind.ORIGINAL, original)]
        + [(FaceTemplate.Kind.SYNTHETIC_MASK, template.embedding) for template in synthetic],
    )


def _store_templates(*, face: Face, template_sets: list[TemplateSet]) -> None:
    quantised_scan.hold_off_codes(gallery_id=face.gallery_id)
    FaceTemplate.objects.bulk_create(
        FaceTemplate(
            tenant_id=face.tenant_id,
            gallery_id=face.gallery_id,
            subject_id=face.subject_id,
            face=face,
            kind=kind,
            embedding=embedding.astype(np.float32),
            model_version=template_set.model_version,
        )
        for template_set in template_sets
        for kind, embedding in template_set.embeddings
    )


def _finish_job(*, job_id: str, tenant_id: str, face: Face | None, error: dict | None) -> Job:
    with tenant_transaction(tenant_id):
        job = (
            Job.objects.select_for_update(of=("self",))
            .select_related("tenant")
            .get(id=job_id, tenant_id=tenant_id)
        )
        if job.status in (Job.Status.SUCCEEDED, Job.Status.FAILED):
            return job
        job.status = Job.Status.FAILED if error else Job.Status.SUCCEEDED
        job.result = {"face": face_representation(face)} if face else None
        job.error = error
        job.input_image = None
        job.finished_at = timezone.now()
        job.save(update_fields=["status", "result", "error", "input_image", "finished_at"])
        if error and error["reason"] in FAILURES_WORTH_A_RETRY:
            IdempotentRequest.objects.filter(tenant_id=tenant_id, job_id=job_id).delete()
        if error and (error["reason"] in FAILURES_THAT_CAN_FOLLOW_THE_UPLOAD or job.attempts > 1):
            # An earlier attempt may have written the image and then lost its transaction (a database error, a
            # killed worker); no face will ever point at that object. A first attempt's rejection cannot have.
            _schedule_object_deletion(
                tenant=job.tenant, keys=[image_key(tenant_id=job.tenant_id, face_id=enrolled_face_id(job_id))]
            )
        if face is not None:
            transaction.on_commit(
                lambda: _maybe_build_ann_index(gallery_id=str(face.gallery_id), tenant_id=tenant_id)
            )
        webhooks.record_job_event(job=job)
    return job


def _maybe_build_ann_index(*, gallery_id: str, tenant_id: str) -> None:
    from identity.tasks import build_gallery_ann_index

    with tenant_transaction(tenant_id):
        gallery = Gallery.objects.get(id=gallery_id, tenant_id=tenant_id)
        if gallery.ann_index_name:
            return
        templates = FaceTemplate.objects.filter(gallery=gallery).count()
    if templates >= search.ANN_MIN_TEMPLATES:
        build_gallery_ann_index.delay(gallery_id=gallery_id, tenant_id=tenant_id)


# --- Recognition: identify, verify, detect ---------------------------------------------------------------


@dataclass(frozen=True)
class IdentifiedFace:
    face: FaceAnalysis
    match: Candidate | None
    candidates: list[Candidate]
    # The score `match` had to reach.
    threshold: float


@dataclass(frozen=True)
class Identification:
    faces: list[IdentifiedFace]
    subjects: dict
    model_version: str
    took_ms: float
    # Milliseconds per stage (decode, detect, align, quality, embed, mask, refine, search) for Server-Timing.
    stage_ms: dict[str, float]


def _require_quota(*, tenant, operation: str) -> None:
    with tenant_transaction(tenant.id):
        check_quota(tenant=tenant, operation=operation)


def _gallery_pipeline(gallery: Gallery) -> FacePipeline:
    pipeline = pipeline_for_model_version(gallery.model_version)
    if pipeline is None:
        raise GalleryModelMismatch(
            f"The gallery's templates were made with {gallery.model_version}, which this service no longer "
            f"runs. Re-embed the gallery (manage.py reembed --gallery {gallery.id})."
        )
    return pipeline


def _analyze(pipeline: FacePipeline, image_bytes: bytes, *, max_faces: int) -> ImageAnalysis:
    try:
        return pipeline.analyze(image_bytes, purpose="identify", max_faces=max_faces)
    except ImageRejected as rejection:
        raise InvalidImage(rejection) from None


def identify(
    *,
    tenant,
    api_key,
    gallery: Gallery,
    image_bytes: bytes,
    top_k: int,
    threshold: float | None,
    max_faces: int,
    client_request: ClientRequest,
) -> Identification:
    _require_quota(tenant=tenant, operation="identify")
    started = time.perf_counter()
    analysis = _analyze(_gallery_pipeline(gallery), image_bytes, max_faces=max_faces)
    search_started = time.perf_counter()
    identified = []
    fetch = max(search.MIN_TEMPLATES_FETCHED, top_k * search.TEMPLATES_PER_SUBJECT_FETCHED)
    with tenant_transaction(tenant.id):
        thresholds = _thresholds(
            tenant=tenant,
            model_version=gallery.model_version,
            operation="identify",
            requested=threshold,
            gallery_subjects=gallery.subject_count,
        )
        for face in analysis.faces:
            hits = search.nearest_templates(
                tenant_id=tenant.id, gallery=gallery, embedding=face.embedding, limit=fetch
            )
            probe_masked = _probe_masked(face)
            candidates = rank_subjects(
                hits, model_version=gallery.model_version, probe_masked=probe_masked, top_k=top_k
            )
            face_threshold = thresholds[probe_masked]
            match = candidates[0] if candidates and candidates[0].similarity >= face_threshold else None
            identified.append(
                IdentifiedFace(face=face, match=match, candidates=candidates, threshold=face_threshold)
            )
        subject_ids = [candidate.subject_id for item in identified for candidate in item.candidates]
        subjects = selectors.subjects_by_id(tenant=tenant, subject_ids=subject_ids)
        _meter_call(tenant=tenant, api_key=api_key, operation="identify", client_request=client_request)
    search_ms = (time.perf_counter() - search_started) * 1000
    return Identification(
        faces=identified,
        subjects=subjects,
        model_version=analysis.model_version,
        took_ms=round((time.perf_counter() - started) * 1000, 1),
        stage_ms={**dataclasses.asdict(analysis.timings), "search_ms": search_ms},
    )


def _probe_masked(face: FaceAnalysis) -> bool:
    return bool(face.mask and face.mask.masked)


def _thresholds(
    *, tenant, model_version: str, operation: str, requested: float | None, gallery_subjects: int = 0
) -> dict[bool, float]:
    """The threshold per probe condition (masked or not): the request's, else the tenant's, else the
    calibrated default (for identify, one that depends on the gallery's size)."""
    fixed = requested if requested is not None else tenant.default_match_threshold
    if fixed is not None:
        return {False: fixed, True: fixed}
    return {
        masked: default_threshold(
            model_version, operation=operation, probe_masked=masked, gallery_subjects=gallery_subjects
        )
        for masked in (False, True)
    }


@dataclass(frozen=True)
class Verification:
    match: bool
    similarity: float
    confidence: float
    threshold: float
    model_version: str


def _single_face(analysis: ImageAnalysis, which: str) -> FaceAnalysis:
    if not analysis.faces:
        raise FaceNotUsable(f"No face was found in {which}.", reasons=["NO_FACE"])
    return analysis.faces[0]


def verify(
    *,
    tenant,
    api_key,
    image_bytes: bytes,
    image2_bytes: bytes | None,
    subject: Subject | None,
    threshold: float | None,
    client_request: ClientRequest,
) -> Verification:
    _require_quota(tenant=tenant, operation="verify")
    pipeline = _gallery_pipeline(subject.gallery) if subject is not None else get_face_pipeline()
    model_version = pipeline.model_version
    probe = _single_face(_analyze(pipeline, image_bytes, max_faces=1), "image")
    probe_masked = _probe_masked(probe)
    if subject is not None:
        gallery = subject.gallery
        with tenant_transaction(tenant.id):
            # Only the kinds that will be scored: many nearer templates of an ignored kind would otherwise
            # fill the fetch and leave nothing to compare.
            hits = search.nearest_templates(
                tenant_id=tenant.id,
                gallery=gallery,
                embedding=probe.embedding,
                limit=search.MIN_TEMPLATES_FETCHED,
                subject_id=subject.id,
                kinds=template_kinds_scored(model_version, probe_masked=probe_masked),
            )
        if not hits:
            raise FaceNotUsable(
                "The subject has no enrolled faces to compare with.", reasons=["NO_TEMPLATES"]
            )
    else:
        other = _single_face(_analyze(pipeline, image2_bytes, max_faces=1), "image2")
        # The second image plays the enrolled side: its plain embedding is an "original" template.
        hits = [
            search.TemplateHit(
                subject_id=uuid.UUID(int=0),
                face_id=uuid.UUID(int=0),
                kind=FaceTemplate.Kind.ORIGINAL,
                similarity=float(np.dot(probe.embedding, other.embedding)),
            )
        ]
    [candidate] = rank_subjects(hits, model_version=model_version, probe_masked=probe_masked, top_k=1)
    threshold = _thresholds(
        tenant=tenant, model_version=model_version, operation="verify", requested=threshold
    )[probe_masked]
    with tenant_transaction(tenant.id):
        _meter_call(tenant=tenant, api_key=api_key, operation="verify", client_request=client_request)
    return Verification(
        match=candidate.similarity >= threshold,
        similarity=candidate.similarity,
        confidence=candidate.confidence,
        threshold=threshold,
        model_version=model_version,
    )


def detect(
    *, tenant, api_key, image_bytes: bytes, max_faces: int, client_request: ClientRequest
) -> ImageAnalysis:
    _require_quota(tenant=tenant, operation="detect")
    analysis = _analyze(get_face_pipeline(), image_bytes, max_faces=max_faces)
    with tenant_transaction(tenant.id):
        _meter_call(tenant=tenant, api_key=api_key, operation="detect", client_request=client_request)
    return analysis


# --- Storage hygiene -------------------------------------------------------------------------------------


@transaction.atomic
def expire_stored_images(*, tenant) -> int:
    """Schedule deletion of the tenant's images older than its retention; templates stay searchable."""
    cutoff = timezone.now() - timedelta(days=tenant.image_retention_days)
    expired = Face.objects.filter(tenant=tenant, created_at__lt=cutoff).exclude(image_key="")
    _schedule_image_deletion(tenant=tenant, faces=expired)
    return expired.update(image_key="")


def erase_closed_tenant(*, tenant, actor) -> int:
    """Delete every gallery of a closed tenant, as its own deletions would (templates at once, images through
    the outbox); returns how many. A closed tenant is closed for good, and a customer who leaves expects their
    people's faces to leave with them, not to be kept, and billed as stored faces, for ever."""
    if tenant.status != tenant.Status.CLOSED:
        raise ValueError(f"tenant {tenant.id} is not closed")
    galleries = list(Gallery.objects.filter(tenant=tenant))
    for gallery in galleries:
        delete_gallery(tenant=tenant, actor=actor, gallery=gallery)
    return len(galleries)


def purge_deleted_images(*, tenant_id: str, batch_size: int = S3_DELETE_BATCH) -> int:
    """Delete the outbox's S3 objects that are due, those that never failed first, in one DeleteObjects
    request; each row goes only once its object is gone, and a failed one waits longer before each new
    attempt. Returns how many went."""
    with tenant_transaction(tenant_id):
        pending = list(
            PendingObjectDeletion.objects.filter(tenant_id=tenant_id, retry_at__lte=timezone.now()).order_by(
                "retry_at", "id"
            )[:batch_size]
        )
    for item in pending:
        if not item.key.startswith(f"tenants/{tenant_id}/"):
            raise ValueError(f"refusing to delete {item.key!r} outside tenant {tenant_id}'s prefix")
    if not pending:
        return 0
    failures = _delete_objects(sorted({item.key for item in pending}))
    failed = [item for item in pending if item.key in failures]
    with tenant_transaction(tenant_id):
        PendingObjectDeletion.objects.filter(
            tenant_id=tenant_id, id__in=[item.id for item in pending if item.key not in failures]
        ).delete()
        for item in failed:  # kept, with the attempt counted, for a later try
            PendingObjectDeletion.objects.filter(tenant_id=tenant_id, id=item.id).update(
                attempts=item.attempts + 1,
                last_error=failures[item.key][:2000],
                retry_at=timezone.now() + object_deletion_backoff(attempts=item.attempts + 1),
            )
    return len(pending) - len(failed)


def _delete_objects(keys: list[str]) -> dict[str, str]:
    """Delete up to S3_DELETE_BATCH objects in one request; the error of each key that was not deleted (a key
    that does not exist counts as deleted)."""
    try:
        answer = default_storage.bucket.delete_objects(
            Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True}
        )
    except Exception as error:  # the request as a whole failed (S3 unreachable, denied): every key stays
        return {key: f"{type(error).__name__}: {error}" for key in keys}
    return {
        failure["Key"]: f"{failure.get('Code')}: {failure.get('Message')}"
        for failure in answer.get("Errors", [])
    }


def object_deletion_backoff(*, attempts: int) -> timedelta:
    """How long a deletion that has failed `attempts` times waits for its next try: 10 s doubling, at most
    an hour, so a short S3 outage is bridged within minutes and a lasting fault costs a try an hour."""
    return min(OBJECT_DELETION_MAX_BACKOFF, timedelta(seconds=10 * 2 ** min(attempts - 1, 20)))


# --- Re-embedding after a model change -------------------------------------------------------------------


@dataclass(frozen=True)
class ReembedReport:
    gallery_id: uuid.UUID
    from_version: str
    to_version: str
    faces_reembedded: int
    faces_without_image: int


def reembed_gallery(*, tenant, gallery_id, progress=None) -> ReembedReport:
    """Recompute the gallery's templates with the running model from its stored images, without downtime.

    New templates are written next to the old ones under the new model version while identify keeps using
    the gallery's current version; one short transaction then switches the gallery over and drops the old
    templates. Faces whose image is not stored cannot be re-embedded: the switch is refused while any remain.
    """
    pipeline = get_face_pipeline()
    with tenant_transaction(tenant.id):
        gallery = selectors.gallery_get(tenant=tenant, gallery_id=gallery_id)
        faces = list(
            Face.objects.filter(tenant=tenant, gallery=gallery).exclude(model_version=pipeline.model_version)
        )
    without_image = [face for face in faces if not face.image_key]
    if without_image:
        return ReembedReport(gallery.id, gallery.model_version, pipeline.model_version, 0, len(without_image))
    for done, face in enumerate(faces, start=1):
        with default_storage.open(face.image_key, "rb") as handle:
            image_bytes = handle.read()
        analysis = pipeline.analyze(image_bytes, purpose="identify", max_faces=MAX_ENROLL_FACES_CONSIDERED)
        templates = _face_templates(
            pipeline, image_bytes, analysis, _same_face(analysis, face), seed=face.image_sha256
        )
        with tenant_transaction(tenant.id):
            FaceTemplate.objects.filter(face=face, model_version=pipeline.model_version).delete()
            _store_templates(face=face, template_sets=[templates])
        if progress:
            progress(done, len(faces))
    with tenant_transaction(tenant.id):
        old_version = gallery.model_version
        Gallery.objects.filter(id=gallery.id).update(
            model_version=pipeline.model_version, updated_at=timezone.now()
        )
        Face.objects.filter(gallery=gallery).update(model_version=pipeline.model_version)
        FaceTemplate.objects.filter(gallery=gallery).exclude(model_version=pipeline.model_version).delete()
    return ReembedReport(gallery.id, old_version, pipeline.model_version, len(faces), 0)


def _same_face(analysis: ImageAnalysis, face: Face) -> FaceAnalysis:
    """The detected face closest to the one enrolled (the image may hold several)."""
    if not analysis.faces:
        raise FaceNotUsable(
            f"No face is found any more in the stored image of face {face.id}.", reasons=["NO_FACE"]
        )
    enrolled = face.bbox

    def distance(candidate: FaceAnalysis) -> float:
        box = candidate.bbox
        return abs(box.x - enrolled["x"]) + abs(box.y - enrolled["y"]) + abs(box.width - enrolled["width"])

    return min(analysis.faces, key=distance)
