"""The identity API's problem types (RFC 9457); each `problem_type` is a stable contract with clients."""

from infra.problems import Problem
from workers.pipeline.errors import ImageRejected


class NotFound(Problem):
    """A missing object and another tenant's object are indistinguishable by design."""

    status_code = 404
    problem_type = "not-found"
    title = "Not found"

    def __init__(self, what: str = "resource"):
        super().__init__(f"The {what} does not exist.")


class SubjectExternalIdConflict(Problem):
    status_code = 409
    problem_type = "conflict"
    title = "Conflict"


class IdempotencyKeyReused(Problem):
    status_code = 422
    problem_type = "idempotency-key-reused"
    title = "Idempotency key reused with a different request"


class InvalidImage(Problem):
    """The uploaded image cannot be used at all (empty, too large, not an image, corrupt)."""

    problem_type = "invalid-image"
    title = "Invalid image"

    def __init__(self, rejection: ImageRejected):
        super().__init__(rejection.detail, extra={"reason": rejection.code})
        self.status_code = rejection.http_status


class MissingImage(Problem):
    status_code = 400
    problem_type = "validation-error"
    title = "Your request parameters did not validate"

    def __init__(self, field: str = "image", *, error: str = "An image is required."):
        super().__init__(
            "Send the image as multipart field `image` or as JSON `image_base64`.",
            extra={"errors": {field: [error]}},
        )


class FaceNotUsable(Problem):
    """The image decoded, but no face in it can be enrolled or compared; `reasons` say why."""

    status_code = 422
    problem_type = "face-rejected"
    title = "No usable face"

    def __init__(self, detail: str, *, reasons: list[str]):
        super().__init__(detail, extra={"reasons": reasons})


class EnrollmentFailed(Problem):
    """The service could not finish an enrollment (its job ran out of retries on an infrastructure error).
    Not the image's fault, unlike a face-rejected problem: the same request may be sent again later, with
    the same Idempotency-Key too (the failure released it)."""

    status_code = 503
    problem_type = "enrollment-failed"
    title = "Enrollment failed"
    retry_after_seconds = 30

    def __init__(self, detail: str, *, job_id: str):
        super().__init__(
            detail, extra={"job_id": job_id}, headers={"Retry-After": str(self.retry_after_seconds)}
        )


class GalleryModelMismatch(Problem):
    """The gallery's templates come from another embedding model than the one the service runs."""

    status_code = 409
    problem_type = "gallery-needs-reembed"
    title = "Gallery needs re-embedding"
