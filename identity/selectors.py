"""Reads of identity data. Every selector takes the tenant; a missing and a foreign object look the same."""

import uuid

from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce

from identity.models import Face, Gallery, Job, Subject
from identity.problems import NotFound


def _as_uuid(value) -> uuid.UUID | None:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        return None


def _get(queryset: QuerySet, object_id, what: str):
    parsed = _as_uuid(object_id)
    if parsed is None:
        raise NotFound(what)
    found = queryset.filter(id=parsed).first()
    if found is None:
        raise NotFound(what)
    return found


def gallery_list(*, tenant) -> QuerySet[Gallery]:
    """Galleries with their `face_count` (and their `subject_count` field)."""
    # A correlated count through the gallery index: COUNT(DISTINCT) over a join of subjects and faces
    # multiplies them (20,000 subjects x 33,000 faces are 6.6e8 rows).
    faces = Face.objects.filter(gallery=OuterRef("pk")).order_by().values("gallery")
    return Gallery.objects.filter(tenant=tenant).annotate(
        face_count=Coalesce(Subquery(faces.annotate(count=Count("*")).values("count")), 0)
    )


def gallery_get(*, tenant, gallery_id) -> Gallery:
    """The gallery alone, as identify and the other routes that only need its id and model use it."""
    return _get(Gallery.objects.filter(tenant=tenant), gallery_id, "gallery")


def gallery_with_counts_get(*, tenant, gallery_id) -> Gallery:
    """The gallery with its `subject_count` and `face_count`, as the gallery routes show it."""
    return _get(gallery_list(tenant=tenant), gallery_id, "gallery")


def subject_list(*, tenant, gallery: Gallery, external_id: str | None = None) -> QuerySet[Subject]:
    subjects = Subject.objects.filter(tenant=tenant, gallery=gallery).annotate(face_count=Count("faces"))
    if external_id is not None:
        subjects = subjects.filter(external_id=external_id)
    return subjects


def subject_get(*, tenant, subject_id) -> Subject:
    subjects = (
        Subject.objects.filter(tenant=tenant).select_related("gallery").annotate(face_count=Count("faces"))
    )
    return _get(subjects, subject_id, "subject")


def face_list(*, tenant, subject: Subject) -> QuerySet[Face]:
    return Face.objects.filter(tenant=tenant, subject=subject).select_related("subject")


def face_get(*, tenant, face_id) -> Face:
    return _get(Face.objects.filter(tenant=tenant).select_related("subject", "gallery"), face_id, "face")


def job_get(*, tenant, job_id) -> Job:
    return _get(Job.objects.filter(tenant=tenant).defer("input_image"), job_id, "job")


def subjects_by_id(*, tenant, subject_ids: list[uuid.UUID]) -> dict[uuid.UUID, Subject]:
    return {subject.id: subject for subject in Subject.objects.filter(tenant=tenant, id__in=subject_ids)}


def face_counts(*, tenant, gallery: Gallery) -> tuple[int, int]:
    """(faces in the gallery, faces of the tenant), for capacity checks."""
    return (
        Face.objects.filter(tenant=tenant, gallery=gallery).count(),
        Face.objects.filter(tenant=tenant).count(),
    )


def pending_enrollments(*, tenant, gallery: Gallery) -> tuple[int, int]:
    """(enrollment jobs of the gallery, of the tenant) still queued or running: faces and `enroll` units
    that quota and capacity checks must count before they exist."""
    pending = Job.objects.filter(
        tenant=tenant, kind=Job.Kind.ENROLL_FACE, status__in=[Job.Status.QUEUED, Job.Status.RUNNING]
    )
    return pending.filter(subject__gallery=gallery).count(), pending.count()
