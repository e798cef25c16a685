"""Typed refusals of the face pipeline.

Every refusal of a client's image is an `ImageRejected` subclass carrying a stable machine `code` (what the
API returns in its problem response and what clients branch on) and the HTTP status it maps to. The human
`detail` may change wording between releases; the code may not.
"""

from typing import ClassVar


class ImageRejected(Exception):
    """The submitted image cannot be processed; the client has to send a different one."""

    code: ClassVar[str] = "IMAGE_REJECTED"
    http_status: ClassVar[int] = 422

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r})"


class EmptyImage(ImageRejected):
    code = "EMPTY_IMAGE"
    http_status = 400


class ImageTooLarge(ImageRejected):
    """The encoded file exceeds the byte limit."""

    code = "IMAGE_TOO_LARGE"
    http_status = 413


class TooManyPixels(ImageRejected):
    """The header announces more pixels than allowed (decompression-bomb guard); nothing was decoded."""

    code = "TOO_MANY_PIXELS"
    http_status = 413


class UnsupportedFormat(ImageRejected):
    """The bytes are not JPEG, PNG or WebP (decided by magic bytes, never by file name)."""

    code = "UNSUPPORTED_FORMAT"
    http_status = 415


class CorruptImage(ImageRejected):
    """The format is supported but the file is truncated or malformed."""

    code = "CORRUPT_IMAGE"
    http_status = 422


class ModelUnavailable(RuntimeError):
    """A model file is missing or unreadable: a deployment fault, never the client's."""
