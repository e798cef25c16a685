"""Celery tasks that belong to no single app."""

import os

from celery import shared_task


@shared_task(name="workers.ping")
def ping(*, payload: str) -> dict:
    """Round-trips through the broker and a worker process; used by readiness checks and tests."""
    return {"payload": payload, "worker_pid": os.getpid()}
