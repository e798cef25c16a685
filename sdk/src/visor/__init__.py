"""Python SDK for the Visor face-identification API.

import visor
client = visor.Client()            # $VISOR_API_KEY, $VISOR_BASE_URL
result = client.identify(gallery_id=gallery.id, image="probe.jpg")
"""

from visor import webhooks
from visor._base import DEFAULT_BASE_URL, QualityFilter, RetryPolicy, __version__
from visor._client import AsyncClient, Client
from visor._errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    CapacityExceededError,
    ConflictError,
    FaceRejectedError,
    InvalidImageError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    ServerError,
    ValidationError,
    VisorError,
    WaitTimeoutError,
)
from visor._models import (
    BoundingBox,
    DetectedFace,
    DetectResult,
    Face,
    Gallery,
    IdentifiedFace,
    IdentifyResult,
    Invoice,
    InvoiceLine,
    Job,
    Mask,
    Match,
    Quality,
    Subject,
    Tenant,
    Usage,
    UsageRow,
    VerifyResult,
)
from visor.webhooks import WebhookVerificationError

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BoundingBox",
    "CapacityExceededError",
    "Client",
    "ConflictError",
    "DetectResult",
    "DetectedFace",
    "Face",
    "FaceRejectedError",
    "Gallery",
    "IdentifiedFace",
    "IdentifyResult",
    "InvalidImageError",
    "Invoice",
    "InvoiceLine",
    "Job",
    "JobFailedError",
    "Mask",
    "Match",
    "NotFoundError",
    "PermissionDeniedError",
    "Quality",
    "QualityFilter",
    "QuotaExceededError",
    "RateLimitError",
    "RetryPolicy",
    "ServerError",
    "Subject",
    "Tenant",
    "Usage",
    "UsageRow",
    "ValidationError",
    "VerifyResult",
    "VisorError",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "__version__",
    "webhooks",
]
