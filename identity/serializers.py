"""Request validation and response shapes of the identity API. No business logic lives here."""

from rest_framework import serializers

from identity.matching import Candidate
from identity.models import Face, Gallery, Job, QualityFilter, Subject
from infra.parsers import MAX_JSON_DEPTH, json_depth


def unstorable_text(value) -> str | None:
    """Why a parsed JSON value cannot be stored, or None when it can: PostgreSQL text and jsonb hold no
    U+0000, and unpaired surrogates are not UTF-8. (CharField refuses both itself.) Walks the value without
    recursion, since its depth is the client's choice."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, str):
            if "\x00" in item:
                return "Text may not contain the NUL character (U+0000)."
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "Text may not contain unpaired UTF-16 surrogates (such as \\ud800 alone)."
    return None


class RejectUnknownFieldsSerializer(serializers.Serializer):
    """A request body whose unknown fields are refused: a misspelt field in a PATCH would otherwise be
    ignored and answered 200 with nothing changed."""

    def validate(self, attrs):
        if hasattr(self.initial_data, "keys"):
            unknown = sorted(set(self.initial_data.keys()) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return attrs


class GalleryCreateSerializer(RejectUnknownFieldsSerializer):
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class GalleryUpdateSerializer(RejectUnknownFieldsSerializer):
    name = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=5000)


class MetadataField(serializers.JSONField):
    """A JSON object, also when a form sends it as text, which DRF parses without the JSON body's depth limit
    (infra.parsers)."""

    def to_internal_value(self, data):
        too_deep = serializers.ValidationError(f"metadata may nest at most {MAX_JSON_DEPTH} levels deep.")
        try:
            value = super().to_internal_value(data)
        except RecursionError:
            raise too_deep from None
        if json_depth(value) > MAX_JSON_DEPTH:
            raise too_deep
        return value


class SubjectCreateSerializer(RejectUnknownFieldsSerializer):
    external_id = serializers.CharField(max_length=200)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    metadata = MetadataField(required=False, default=dict)

    def validate_metadata(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("metadata must be a JSON object.")
        unstorable = unstorable_text(value)
        if unstorable:
            raise serializers.ValidationError(unstorable)
        return value


class SubjectUpdateSerializer(SubjectCreateSerializer):
    external_id = serializers.CharField(max_length=200, required=False)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    metadata = MetadataField(required=False)


class EnrollOptionsSerializer(serializers.Serializer):
    wait = serializers.BooleanField(required=False, default=False)
    largest = serializers.BooleanField(required=False, default=False)
    quality_filter = serializers.ChoiceField(
        choices=QualityFilter.choices, required=False, default=QualityFilter.AUTO
    )
    timeout = serializers.FloatField(required=False, default=30.0, min_value=1.0, max_value=120.0)


class IdentifyOptionsSerializer(serializers.Serializer):
    top_k = serializers.IntegerField(required=False, default=5, min_value=1, max_value=100)
    threshold = serializers.FloatField(
        required=False, allow_null=True, default=None, min_value=-1.0, max_value=1.0
    )
    max_faces = serializers.IntegerField(required=False, default=10, min_value=1, max_value=100)


class VerifyOptionsSerializer(serializers.Serializer):
    subject_id = serializers.UUIDField(required=False, allow_null=True, default=None)
    threshold = serializers.FloatField(
        required=False, allow_null=True, default=None, min_value=-1.0, max_value=1.0
    )


class DetectOptionsSerializer(serializers.Serializer):
    max_faces = serializers.IntegerField(required=False, default=10, min_value=1, max_value=100)


class PaginationSerializer(serializers.Serializer):
    limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=500)
    cursor = serializers.CharField(required=False, allow_blank=True, default="")


class SubjectListSerializer(PaginationSerializer):
    external_id = serializers.CharField(max_length=200, required=False, allow_blank=True, default=None)


# --- Responses -------------------------------------------------------------------------------------------


def gallery_representation(gallery: Gallery) -> dict:
    return {
        "id": str(gallery.id),
        "name": gallery.name,
        "description": gallery.description,
        "model_version": gallery.model_version,
        "subject_count": getattr(gallery, "subject_count", None),
        "face_count": getattr(gallery, "face_count", None),
        "created_at": gallery.created_at.isoformat(),
        "updated_at": gallery.updated_at.isoformat(),
    }


def subject_representation(subject: Subject) -> dict:
    return {
        "id": str(subject.id),
        "gallery_id": str(subject.gallery_id),
        "external_id": subject.external_id,
        "name": subject.name,
        "metadata": subject.metadata,
        "face_count": getattr(subject, "face_count", None),
        "created_at": subject.created_at.isoformat(),
        "updated_at": subject.updated_at.isoformat(),
    }


def face_representation(face: Face) -> dict:
    return {
        "id": str(face.id),
        "subject_id": str(face.subject_id),
        "gallery_id": str(face.gallery_id),
        "bbox": face.bbox,
        "landmarks": face.landmarks,
        "detection_score": face.detection_score,
        "mask": {"masked": face.masked, "probability": face.mask_probability},
        "quality": {"score": face.quality_score, "issues": face.quality_issues},
        "model_version": face.model_version,
        "image_stored": bool(face.image_key),
        "created_at": face.created_at.isoformat(),
    }


def job_representation(job: Job) -> dict:
    return {
        "id": str(job.id),
        "kind": job.kind,
        "status": job.status,
        "subject_id": str(job.subject_id) if job.subject_id else None,
        "result": job.result,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def candidate_representation(candidate: Candidate, subjects: dict) -> dict:
    subject = subjects.get(candidate.subject_id)
    return {
        "subject_id": str(candidate.subject_id),
        "external_id": subject.external_id if subject else None,
        "name": subject.name if subject else None,
        "similarity": candidate.similarity,
        "confidence": candidate.confidence,
    }


LANDMARK_NAMES = ("right_eye", "left_eye", "nose", "mouth_right", "mouth_left")


def face_geometry(face) -> dict:
    """Box and named landmarks of a face the pipeline found, in source-image pixels."""
    box = face.bbox
    return {
        "bbox": {
            "x": round(box.x, 1),
            "y": round(box.y, 1),
            "width": round(box.width, 1),
            "height": round(box.height, 1),
        },
        "landmarks": {
            name: [round(x, 1), round(y, 1)]
            for name, (x, y) in zip(LANDMARK_NAMES, face.landmarks, strict=True)
        },
    }


def analysed_face_representation(face) -> dict:
    """A face as the pipeline saw it in a probe image (identify, detect)."""
    return {
        **face_geometry(face),
        "detection_score": round(face.detection_score, 4),
        "mask": {"masked": face.mask.masked, "probability": round(face.mask.probability, 4)}
        if face.mask
        else None,
        "quality": {
            "score": round(face.quality.score, 4),
            "issues": [str(issue) for issue in face.quality.issues],
        },
    }
