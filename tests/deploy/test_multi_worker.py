"""Two real `celery -A infra worker` processes on separate queues; one is killed with SIGKILL; every task
still completes exactly once.

The workers and the producer use a private broker (another Redis database, or the test database for the
SQLAlchemy transport) so that the suite's all-queue `celery_worker` cannot take these tasks. "Exactly once"
is read from the workers' own logs: Celery logs `Task <name>[<id>] succeeded` once per execution.

The mid-task kill needs a task that runs long enough to be interrupted. The app has none yet; the test
for it skips until `workers.sleep_then_record` exists (the exact task is in docs/deploy.md, "Workers").
"""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.conf import settings

from infra.celery import app
from tests.deploy.conftest import REPO_ROOT

SLOW_TASK = "workers.sleep_then_record"
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def broker_url(request) -> str:
    url = settings.CELERY_BROKER_URL
    if url.startswith("redis"):
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path="/13"))
    # SQLAlchemy transport: its tables in the test database, which no other worker polls.
    request.getfixturevalue("django_db_setup")
    from infra.env import sqlalchemy_postgres_url

    parts = urlsplit(os.environ["DATABASE_URL"])
    test_db = urlunsplit(parts._replace(path="/" + settings.DATABASES["default"]["NAME"]))
    return "sqla+" + sqlalchemy_postgres_url(test_db)


class Workers:
    """Starts named workers; each in its own session so that SIGKILL can take the whole process group."""

    def __init__(self, broker_url: str, log_dir: Path):
        self.broker_url = broker_url
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.connection = app.connection_for_write(broker_url)

    def start(self, name: str, queue: str) -> subprocess.Popen:
        env = {
            **os.environ,
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
            "VISOR_TEST_MARKER_DIR": str(self.log_dir),
        }
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "infra",
            "worker",
            "-Q",
            queue,
            "--prefetch-multiplier=1",
            "--concurrency=1",
            "--loglevel=INFO",
            f"--hostname={name}@%h",
            "--without-mingle",
            "--without-gossip",
        ]
        if extra := os.environ.get("VISOR_DEPLOY_TEST_INCLUDE"):
            # Lets the mid-task test run before the lead adds the slow task to workers/tasks.py.
            argv.append(f"--include={extra}")
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdout=(self.log_dir / f"{name}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        self.send("workers.ping", queue, payload=f"warm-up-{name}").get(timeout=90)
        return process

    def send(self, task: str, queue: str, **kwargs):
        return app.send_task(task, kwargs=kwargs, queue=queue, connection=self.connection)

    def kill(self, name: str) -> None:
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def children(self, name: str) -> set[int]:
        parent = self.processes[name].pid
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.add(int(stat.parent.name))
        return found

    def successes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for log in self.log_dir.glob("*.log"):
            for task_id in re.findall(r"Task [\w.]+\[([0-9a-f-]{36})\] succeeded", log.read_text()):
                counts[task_id] = counts.get(task_id, 0) + 1
        return counts

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.connection.release()


@pytest.fixture
def workers(broker_url, tmp_path):
    started = Workers(broker_url, tmp_path)
    yield started
    started.stop()


def test_tasks_on_separate_queues_complete_exactly_once_when_a_worker_is_sigkilled(workers):
    workers.start("maint", "maintenance")
    workers.start("hooks", "webhooks")
    before = [workers.send("workers.ping", "maintenance", payload=f"m{i}") for i in range(3)]
    other = [workers.send("workers.ping", "webhooks", payload=f"w{i}") for i in range(3)]
    maint_children, hooks_children = workers.children("maint"), workers.children("hooks")
    assert {r.get(timeout=60)["worker_pid"] for r in before} <= maint_children
    assert {r.get(timeout=60)["worker_pid"] for r in other} <= hooks_children

    workers.kill("maint")
    queued = [workers.send("workers.ping", "maintenance", payload=f"q{i}") for i in range(5)]
    meanwhile = [workers.send("workers.ping", "webhooks", payload=f"x{i}") for i in range(5)]
    # The surviving worker keeps serving its queue; the dead one's tasks wait in the broker, not lost.
    assert {r.get(timeout=60)["worker_pid"] for r in meanwhile} <= hooks_children
    assert not any(r.ready() for r in queued)

    workers.start("maint2", "maintenance")
    replacement = workers.children("maint2")
    assert {r.get(timeout=90)["worker_pid"] for r in queued} <= replacement

    successes = workers.successes()
    for result in before + other + queued + meanwhile:
        assert successes.get(result.id) == 1, f"task {result.id} ran {successes.get(result.id, 0)} times"


def test_task_interrupted_by_sigkill_is_redelivered_and_completes_once(workers, tmp_path):
    if SLOW_TASK not in app.tasks and not os.environ.get("VISOR_DEPLOY_TEST_INCLUDE"):
        pytest.skip(
            f"{SLOW_TASK} is not in the app yet: add it to workers/tasks.py (docs/deploy.md, 'Workers') "
            "to test redelivery of a task whose worker process is SIGKILLed mid-task"
        )
    workers.start("maint", "maintenance")
    workers.start("hooks", "webhooks")
    killed_marker, other_marker = f"killed-{uuid.uuid4().hex}", f"other-{uuid.uuid4().hex}"
    interrupted = workers.send(SLOW_TASK, "maintenance", seconds=4, marker=killed_marker)
    untouched = workers.send(SLOW_TASK, "webhooks", seconds=1, marker=other_marker)
    marker_file = tmp_path / f"{killed_marker}.log"
    deadline = time.monotonic() + 60
    while not (marker_file.exists() and marker_file.read_text().startswith("started")):
        assert time.monotonic() < deadline, "the slow task never started"
        time.sleep(0.1)
    victim = int(marker_file.read_text().split()[1])
    # SIGKILL the pool process running the task, as the kernel's OOM killer would.
    os.kill(victim, signal.SIGKILL)

    assert interrupted.get(timeout=120)["marker"] == killed_marker
    assert untouched.get(timeout=60)["marker"] == other_marker
    events = marker_file.read_text().split("\n")
    assert sum(line.startswith("started") for line in events) == 2  # the kill, then the redelivery
    assert sum(line.startswith("done") for line in events) == 1
    other_events = (tmp_path / f"{other_marker}.log").read_text().split("\n")
    assert sum(line.startswith("done") for line in other_events) == 1
    successes = workers.successes()
    assert successes.get(interrupted.id) == 1
    assert successes.get(untouched.id) == 1
