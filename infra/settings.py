"""Django settings. Every value comes from the environment; see the configuration table in README.md."""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from infra.env import sqlalchemy_postgres_url
from workers.pipeline.config import DEFAULT_EMBEDDING_MODEL

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        raise ImproperlyConfigured(
            f"{name} is not set. `make run` sets it for local use; in production set it in the environment."
        )
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY")
# Server-side pepper of API key hashes (HMAC-SHA256); see tenants/api_keys.py.
API_KEY_PEPPER = env_str("API_KEY_PEPPER")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "tenants",
    "identity",
]

MIDDLEWARE = [
    "infra.request_id.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Staff requests to the operator console see every tenant (row-level security's operator path).
    "tenants.middleware.OperatorConsoleMiddleware",
    "tenants.middleware.RateLimitHeadersMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "infra.urls"
WSGI_APPLICATION = "infra.wsgi.application"
ASGI_APPLICATION = "infra.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        **dj_database_url.parse(
            env_str("DATABASE_URL"),
            conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60),
            # A kept connection is checked before a request uses it: after a database failover the first
            # request of every thread would otherwise fail on its dead connection.
            conn_health_checks=True,
        ),
        "TEST": {"NAME": os.environ.get("DATABASE_TEST_NAME", "test_visor")},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "var" / "static"))
STORAGES = {
    "default": {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env_str("S3_BUCKET", "visor"),
            "endpoint_url": os.environ.get("S3_ENDPOINT_URL") or None,
            "access_key": os.environ.get("S3_ACCESS_KEY_ID") or None,
            "secret_key": os.environ.get("S3_SECRET_ACCESS_KEY") or None,
            "region_name": os.environ.get("S3_REGION", "us-east-1"),
            "addressing_style": "path",
            # Keys derive from ids, so a retried write must replace its object, never get a suffixed twin;
            # overwriting also spares every write an existence check.
            "file_overwrite": True,
            "default_acl": None,
            "querystring_auth": True,
        },
    },
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

# --- Security: production defaults, relaxed only where DEBUG says so ---------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
VISOR_MAX_IMAGE_BYTES = env_int("VISOR_MAX_IMAGE_BYTES", 10 * 1024 * 1024)
VISOR_MAX_IMAGE_PIXELS = env_int("VISOR_MAX_IMAGE_PIXELS", 40_000_000)
# Base64 bodies are a third larger than the image they carry.
DATA_UPLOAD_MAX_MEMORY_SIZE = VISOR_MAX_IMAGE_BYTES * 4 // 3 + 1024 * 1024
FILE_UPLOAD_MAX_MEMORY_SIZE = DATA_UPLOAD_MAX_MEMORY_SIZE
# A JSON body may carry two base64 images (verify's `image_base64` and `image2_base64`).
VISOR_MAX_JSON_BODY_BYTES = 2 * (VISOR_MAX_IMAGE_BYTES * 4 // 3) + 1024 * 1024
# A form may carry two images too (verify's `image` and `image2`), as raw bytes.
VISOR_MAX_MULTIPART_BODY_BYTES = 2 * VISOR_MAX_IMAGE_BYTES + 1024 * 1024
# URL-encoded forms carry only gallery and subject fields (images come as multipart or JSON).
VISOR_MAX_FORM_BODY_BYTES = 1024 * 1024

# --- API ---------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "infra.parsers.ApiJSONParser",
        "infra.parsers.ApiFormParser",
        "infra.parsers.ApiMultiPartParser",
    ],
    "EXCEPTION_HANDLER": "infra.problems.problem_exception_handler",
    "UNAUTHENTICATED_USER": None,
    # Every API view needs an API key with the view's scope, and is rate limited per key by its plan.
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.permissions.HasScope"],
    "DEFAULT_THROTTLE_CLASSES": ["tenants.ratelimit.ApiKeyRateThrottle"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Visor API",
    "DESCRIPTION": "Face identification that keeps working when people wear masks.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery ------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL")
REDIS_URL = os.environ.get("REDIS_URL") or None
# A Redis broker hands a message not acknowledged within this many seconds to another worker.
REDIS_VISIBILITY_TIMEOUT_SECONDS = 3600
CELERY_BROKER_TRANSPORT_OPTIONS = (
    {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_SECONDS} if CELERY_BROKER_URL.startswith("redis") else {}
)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "maintenance"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Task results live in the main database; the test worker, pointed at the test database, keeps this one.
CELERY_RESULT_BACKEND = env_str(
    "CELERY_RESULT_BACKEND", "db+" + sqlalchemy_postgres_url(env_str("DATABASE_URL"))
)
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_TIMEZONE = "UTC"

# --- Face pipeline -----------------------------------------------------------------------------------
VISOR_MODEL_DIR = Path(os.environ.get("VISOR_MODEL_DIR", BASE_DIR / "var" / "models"))
VISOR_ONNX_THREADS = env_int("VISOR_ONNX_THREADS", 2)
# Memory each API process may give to the 8-bit codes of large galleries (identity.quantised_scan): 1,000,000
# templates take 140 MB.
VISOR_SCAN_CACHE_MB = env_int("VISOR_SCAN_CACHE_MB", 512)
# "student-v2-flip" (the mask-robust embedding fine-tuned from conv_8 on, with mirror averaging,
# docs/distillation.md), "student-flip", "student" or "sface"; galleries keep the model their templates were
# made with until `manage.py reembed` moves them over.
VISOR_EMBEDDING_MODEL = os.environ.get("VISOR_EMBEDDING_MODEL", DEFAULT_EMBEDDING_MODEL)
# MaskTheFace's RGBA templates (MIT) for the synthetic-mask templates drawn at enrollment. Without them
# enrollment stores the original template only, and masked probes match less well (docs/accuracy.md).
VISOR_MASK_TEMPLATES_DIR = Path(
    os.environ.get("VISOR_MASK_TEMPLATES_DIR", BASE_DIR.parent / "shared" / "data" / "mask_templates")
)
# Synthetic-mask templates per enrolled face; unset: the number the model's mask-aware calibration assumes.
VISOR_ENROLL_MASK_VARIANTS = (
    env_int("VISOR_ENROLL_MASK_VARIANTS", 0) if os.environ.get("VISOR_ENROLL_MASK_VARIANTS") else None
)

# --- Billing -----------------------------------------------------------------------------------------
VISOR_INVOICE_EXPORTER = os.environ.get("VISOR_INVOICE_EXPORTER", "tenants.exporters.FileExporter")
VISOR_INVOICE_EXPORT_DIR = Path(os.environ.get("VISOR_INVOICE_EXPORT_DIR", BASE_DIR / "var" / "invoices"))

# --- Logging: one JSON object per line, every line carrying the request id --------------------------
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "infra.request_id.RequestIdLogFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    },
    "handlers": {
        "stdout": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"]},
    },
    "root": {"handlers": ["stdout"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
