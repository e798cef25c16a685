"""Test fixtures shared by the whole suite.

`make test` starts PostgreSQL (with pgvector) and an S3 server on free ports and passes them in the
environment (see infra/devstack.py); the `celery_worker` fixture starts a real worker process against the
test database. Nothing here mocks a service that can run on this machine.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def require_shared_data(*parts: str) -> Path:
    """The path inside ../shared/data, or a clear skip when that data is not on this machine."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: this test needs the shared evaluation data next to the repository")
    return path


def _test_database_url() -> str:
    parts = urlsplit(os.environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + settings.DATABASES["default"]["NAME"]))


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker):
    """A real `celery worker` process on every queue, connected to the test database."""
    log_dir = Path(os.environ.get("VISOR_TEST_LOG_DIR", REPO_ROOT / "var" / "log"))
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": _test_database_url(),
        "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
    }
    log = (log_dir / "test-worker.log").open("ab")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "infra",
            "worker",
            "--loglevel=INFO",
            "--concurrency=2",
            "--queues=enrollment,identify,maintenance,webhooks",
            "--hostname=test-worker@%h",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    from workers.tasks import ping

    try:
        ping.apply_async(kwargs={"payload": "warm-up"}).get(timeout=90)
    except Exception as error:
        _kill_process_group(process)
        pytest.fail(f"the Celery worker did not answer ({error!r}); see {log_dir / 'test-worker.log'}")
    yield process
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        _kill_process_group(process)


def _kill_process_group(process: subprocess.Popen) -> None:
    """Kill the worker and its pool processes: a pool process outliving its parent would keep a connection
    to the test database, which then cannot be dropped."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
