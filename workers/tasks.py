"""Celery tasks that belong to no single app."""

import os
import re
import time
from pathlib import Path

from celery import shared_task


@shared_task(name="workers.ping")
def ping(*, payload: str) -> dict:
    """Round-trips through the broker and a worker process; used by readiness checks and tests."""
    return {"payload": payload, "worker_pid": os.getpid()}


@shared_task(name="workers.sleep_then_record")
def sleep_then_record(*, seconds: float, marker: str) -> dict:
    """Sleeps, then returns: a task long enough to kill a worker in the middle of (deployment checks).

    When VISOR_TEST_MARKER_DIR is set it appends `started <pid>` and `done <pid>` to <dir>/<marker>.log, so
    a test can count executions; otherwise it only sleeps (at most 60 s).
    """
    marker_dir = os.environ.get("VISOR_TEST_MARKER_DIR")
    log = Path(marker_dir) / (re.sub(r"[^A-Za-z0-9_.-]", "_", marker) + ".log") if marker_dir else None

    def record(event: str) -> None:
        if log is not None:
            with log.open("a") as handle:
                handle.write(f"{event} {os.getpid()}\n")

    record("started")
    time.sleep(min(float(seconds), 60.0))
    record("done")
    return {"marker": marker, "worker_pid": os.getpid()}
