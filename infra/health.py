"""Liveness and readiness.

`/healthz` only says the process answers. `/readyz` checks every dependency a request needs and answers
503 naming the ones that are down, so orchestrators stop routing traffic to an instance that cannot serve.
"""

import hashlib
import json
import time
from collections.abc import Callable
from functools import cache

import boto3
from botocore.config import Config
from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from kombu import Connection

from infra.env import ROOT

CHECK_TIMEOUT_SECONDS = 2.0


def check_database() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    return None if row else "the vector extension is not installed"


def check_broker() -> str | None:
    with Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=CHECK_TIMEOUT_SECONDS,
        transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    ) as broker:
        broker.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)
    return None


def check_object_storage() -> str | None:
    options = settings.STORAGES["default"]["OPTIONS"]
    client = boto3.client(
        "s3",
        endpoint_url=options["endpoint_url"],
        aws_access_key_id=options["access_key"],
        aws_secret_access_key=options["secret_key"],
        region_name=options["region_name"],
        config=Config(
            connect_timeout=CHECK_TIMEOUT_SECONDS,
            read_timeout=CHECK_TIMEOUT_SECONDS,
            retries={"max_attempts": 1},
        ),
    )
    client.head_bucket(Bucket=options["bucket_name"])
    return None


@cache
def _verified_model_files() -> tuple[str, ...]:
    """Hashing the model files (about 120 MB) takes a moment, so a process verifies them once."""
    manifest = json.loads((ROOT / "infra" / "models.json").read_text())
    problems = []
    # "built" models (the students) are made by `make models` from a fetched one plus committed weights.
    for spec in [*manifest["models"].values(), *manifest["built"].values()]:
        path = settings.VISOR_MODEL_DIR / spec["file"]
        if not path.exists():
            problems.append(f"{spec['file']} is missing (run `make models`)")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != spec["sha256"]:
            problems.append(f"{spec['file']} does not match its pinned sha256")
    return tuple(problems)


def check_models() -> str | None:
    problems = _verified_model_files()
    if problems:
        _verified_model_files.cache_clear()
        return "; ".join(problems)
    return None


READINESS_CHECKS: dict[str, Callable[[], str | None]] = {
    "database": check_database,
    "broker": check_broker,
    "object_storage": check_object_storage,
    "models": check_models,
}


def run_checks() -> dict[str, dict]:
    results = {}
    for name, check in READINESS_CHECKS.items():
        started = time.perf_counter()
        try:
            problem = check()
        except Exception as error:  # a readiness probe reports any failure instead of raising it
            problem = f"{type(error).__name__}: {error}"
        results[name] = {"ok": problem is None, "took_ms": round((time.perf_counter() - started) * 1000, 1)}
        if problem:
            results[name]["error"] = problem
    return results


def healthz(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    results = run_checks()
    down = [name for name, result in results.items() if not result["ok"]]
    body = {"status": "unavailable" if down else "ready", "checks": results}
    if down:
        body["down"] = down
    return JsonResponse(body, status=503 if down else 200)
