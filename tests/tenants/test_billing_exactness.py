"""Usage is exact under concurrency (issue #6): two tenants send many identify and enrollment calls at once,
a share of them retried with the same Idempotency-Key and some rejected, while the Celery worker enrolling
their faces is SIGKILLed mid-task and a new one takes over; afterwards each tenant's usage is exactly its
distinct successful billable operations, in the ledger, in GET /v1/usage and on the draft invoice.

Everything is real and in processes of its own, as deployed: the API under gunicorn, Celery workers, the face
pipeline, PostgreSQL and S3. The kill takes the whole worker (its main process and pool processes) while an
enrollment runs; the messages it had taken are lost with it, and the beat task that sends stalled jobs again
(identity.services.redispatch_stalled_jobs) hands them to the new worker.
"""

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
import pytest
from django.conf import settings
from django.db.models import Count, Sum
from django.utils import timezone
from sqlalchemy.pool import NullPool

from identity.models import Face, Job
from infra.celery import app
from infra.devstack import free_port
from infra.env import sqlalchemy_postgres_url
from tenants.models import Tenant, UsageRecord
from tenants.rls import operator_transaction, tenant_transaction
from tests.face_images import encode, person_image
from tests.tenants.factories import make_api_key, make_plan, make_tenant

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

PARALLEL_CALLS = 8
NO_FACE = encode(np.full((320, 320, 3), 90, dtype=np.uint8))
CORRUPT = b"this is plain text, not a JPEG"
OK, CREATED, ACCEPTED = frozenset({200}), frozenset({201}), frozenset({202})
BAD_REQUEST, UNSUPPORTED_MEDIA_TYPE = frozenset({400}), frozenset({415})


@dataclass(frozen=True)
class Workload:
    """What one tenant sends. Every request with an Idempotency-Key carries its own face image."""

    identify_keys: int  # distinct identify requests with an Idempotency-Key
    identify_retried_at_once: int  # of those, sent a second time while the first is in flight
    identify_retried_later: int  # of those, sent again after their answer
    identify_without_key: int  # billed each: keyed by their request id
    enrollments: int  # distinct enrollments, each with an Idempotency-Key
    enrollments_retried_at_once: int
    enrollments_retried_later: int

    @property
    def billable_identifies(self) -> int:
        # One more: the photo without a face, a successful call (200, no faces) billed per image.
        return self.identify_keys + self.identify_without_key + 1


# Different numbers per tenant, so that usage leaking from one tenant to the other could not go unseen.
WORKLOADS = {
    "Acme": Workload(
        identify_keys=9,
        identify_retried_at_once=4,
        identify_retried_later=2,
        identify_without_key=2,
        enrollments=7,
        enrollments_retried_at_once=3,
        enrollments_retried_later=2,
    ),
    "Globex": Workload(
        identify_keys=6,
        identify_retried_at_once=3,
        identify_retried_later=1,
        identify_without_key=1,
        enrollments=5,
        enrollments_retried_at_once=2,
        enrollments_retried_later=1,
    ),
}
# (units, billable, amount) per line and the total, under _billing_plan: 5 identifies and 2 enrollments
# included, then 5.00 and 20.00 per 1,000, plus 10.00 a month. Acme's 7 x 5.00 / 1,000 = 0.035 and Globex's
# 3 x 5.00 / 1,000 = 0.015 round half-up to the cent.
EXPECTED_INVOICES = {
    "Acme": {"identify": (12, 7, "0.04"), "enroll": (7, 5, "0.10"), "total": "10.14"},
    "Globex": {"identify": (8, 3, "0.02"), "enroll": (5, 3, "0.06"), "total": "10.08"},
}


@dataclass
class Caller:
    name: str
    tenant: Tenant
    http: httpx.Client
    gallery_id: str
    subject_ids: list[str]
    workload: Workload

    def identify(self, image: bytes, *, key: str | None = None, query: str = "") -> httpx.Response:
        return self.http.post(
            f"/v1/galleries/{self.gallery_id}/identify{query}",
            files={"image": ("probe.jpg", image, "image/jpeg")},
            headers={"Idempotency-Key": key} if key else {},
        )

    def enroll(self, number: int, image: bytes, *, key: str | None = None) -> httpx.Response:
        subject_id = self.subject_ids[number % len(self.subject_ids)]
        return self.http.post(
            f"/v1/subjects/{subject_id}/faces",
            files={"image": ("face.jpg", image, "image/jpeg")},
            headers={"Idempotency-Key": key} if key else {},
        )


@dataclass(frozen=True)
class Call:
    """One HTTP request of the workload and what the specification expects of it."""

    caller: str
    operation: str  # identify | enroll
    label: str  # the Idempotency-Key, or what makes the request special
    send: object  # () -> httpx.Response
    expected: frozenset[int]  # the statuses the specification allows


def _billing_plan():
    # Included units well inside the workload, so that the invoice lines have units, billable units and money.
    return make_plan(
        allows_overage=True,
        monthly_price=Decimal("10"),
        included_identify=5,
        overage_identify_per_1000=Decimal("5.0000"),
        included_enroll=2,
        overage_enroll_per_1000=Decimal("20.0000"),
    )


def _caller(name: str, base_url: str, workload: Workload) -> Caller:
    tenant, raw_key = make_api_key(tenant=make_tenant(name=name, plan=_billing_plan(), store_images=True))
    http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {raw_key}"}, timeout=120)
    gallery = http.post("/v1/galleries", json={"name": f"{name} staff"}).json()
    subject_ids = [
        http.post(f"/v1/galleries/{gallery['id']}/subjects", json={"external_id": f"emp-{n}"}).json()["id"]
        for n in range(3)
    ]
    return Caller(name, tenant, http, gallery["id"], subject_ids, workload)


def _first_wave(callers: list[Caller]) -> list[Call]:
    """Every first request, each retry "at once" right after its original (the pool sends neighbours
    together), in a shuffled order."""
    groups: list[list[Call]] = []
    for offset, caller in enumerate(callers):
        w, seed = caller.workload, 1000 * (offset + 1)
        for n in range(w.identify_keys):
            key, image = f"{caller.name}-identify-{n}", person_image(seed + n)
            call = Call(caller.name, "identify", key, _bound(caller.identify, image, key=key), OK)
            groups.append([call, call] if n < w.identify_retried_at_once else [call])
        for n in range(w.identify_without_key):
            image = person_image(seed + 100 + n)
            groups.append([Call(caller.name, "identify", f"no key {n}", _bound(caller.identify, image), OK)])
        groups.append([Call(caller.name, "identify", "no face", _bound(caller.identify, NO_FACE), OK)])
        # Rejected at once, so never billed.
        for label, payload, query, expected in (
            ("corrupt file", CORRUPT, "", UNSUPPORTED_MEDIA_TYPE),
            ("empty file", b"", "", BAD_REQUEST),
            ("top_k=0", person_image(seed), "?top_k=0", BAD_REQUEST),
        ):
            send = _bound(caller.identify, payload, query=query)
            groups.append([Call(caller.name, "identify", label, send, expected)])
        for n in range(w.enrollments):
            key, image = f"{caller.name}-enroll-{n}", _enrollment_image(offset, n)
            send = _bound(caller.enroll, n, image, key=key)
            first = Call(caller.name, "enroll", key, send, ACCEPTED)
            # A retry that comes after the job finished gets the face itself.
            retry = Call(caller.name, "enroll", key, send, ACCEPTED | CREATED)
            groups.append([first, retry] if n < w.enrollments_retried_at_once else [first])
        # Accepted, then its job fails (not billed).
        groups.append([Call(caller.name, "enroll", "no face", _bound(caller.enroll, 0, NO_FACE), ACCEPTED)])
        send = _bound(caller.enroll, 0, CORRUPT)
        groups.append([Call(caller.name, "enroll", "corrupt file", send, UNSUPPORTED_MEDIA_TYPE)])
    random.Random(6).shuffle(groups)
    return [call for group in groups for call in group]


def _late_retries(callers: list[Caller]) -> list[Call]:
    """Retries sent after the first answer and after the jobs finished: same key and payload."""
    calls = []
    for offset, caller in enumerate(callers):
        w, seed = caller.workload, 1000 * (offset + 1)
        for n in range(w.identify_retried_later):
            key, image = f"{caller.name}-identify-{n}", person_image(seed + n)
            calls.append(Call(caller.name, "identify", key, _bound(caller.identify, image, key=key), OK))
        for n in range(w.enrollments_retried_later):
            key, image = f"{caller.name}-enroll-{n}", _enrollment_image(offset, n)
            calls.append(Call(caller.name, "enroll", key, _bound(caller.enroll, n, image, key=key), CREATED))
    return calls


def _enrollment_image(caller_offset: int, number: int) -> bytes:
    # Seeds 1-12 draw faces that pass the enrollment quality gate (some seeds come out LOW_CONFIDENCE).
    return person_image(1 + 7 * caller_offset + number)


def _bound(method, *args, **kwargs):
    return lambda: method(*args, **kwargs)


def _send(calls: list[Call]) -> list[tuple[Call, httpx.Response]]:
    with ThreadPoolExecutor(max_workers=PARALLEL_CALLS) as pool:
        return list(zip(calls, pool.map(lambda call: call.send(), calls), strict=True))


# --- The system under test: API and workers as processes of their own -------------------------------------


class Stack:
    """The API under gunicorn and Celery workers, each a process of its own on the test database, with a
    broker of their own (kombu's tables in the test database) so that the suite's `celery_worker`, which
    serves every queue of the shared broker, cannot take this test's tasks: only the worker killed here may
    hold an enrollment when it dies."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        database_url = urlunsplit(
            urlsplit(os.environ["DATABASE_URL"])._replace(path="/" + settings.DATABASES["default"]["NAME"])
        )
        self.broker_url = "sqla+" + sqlalchemy_postgres_url(database_url)
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": self.broker_url,
            "CELERY_RESULT_BACKEND": settings.CELERY_RESULT_BACKEND,
        }
        # Unpooled, so that no connection of this process outlives the test and holds the test database open.
        self.connection = app.connection_for_write(self.broker_url, transport_options={"poolclass": NullPool})
        self.processes: dict[str, subprocess.Popen] = {}
        self.api_url = ""

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=settings.BASE_DIR,
            env=self.env,
            stdout=(self.log_dir / f"{name}.log").open("ab"),
            stderr=subprocess.STDOUT,
            # Its own process group, so that one SIGKILL takes the worker and its pool processes at once.
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def start_api(self) -> None:
        port = free_port()
        self._spawn(
            "api", ["gunicorn", "infra.wsgi", f"--bind=127.0.0.1:{port}", "--threads=8", "--timeout=120"]
        )
        self.api_url = f"http://127.0.0.1:{port}"

    def start_worker(self, name: str) -> None:
        self._spawn(
            name,
            [
                "celery",
                "-A",
                "infra",
                "worker",
                "--concurrency=2",
                "--loglevel=INFO",
                "--queues=enrollment,identify,maintenance,webhooks",
                f"--hostname={name}@%h",
                "--without-mingle",
                "--without-gossip",
            ],
        )

    def wait_until_up(self, *names: str) -> None:
        for name in names:
            if name == "api":
                deadline = time.monotonic() + 90
                while not _answers(f"{self.api_url}/healthz"):
                    assert self.processes["api"].poll() is None, f"the API exited; see {self.log_dir}/api.log"
                    assert time.monotonic() < deadline, f"the API did not start; see {self.log_dir}/api.log"
                    time.sleep(0.2)
            else:
                self.send("workers.ping", "maintenance", payload=name).get(timeout=90)

    def send(self, task: str, queue: str, **kwargs):
        return app.send_task(task, kwargs=kwargs, queue=queue, connection=self.connection)

    def kill(self, name: str) -> None:
        process = self.processes[name]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

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


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def stack(transactional_db, tmp_path):
    started = Stack(tmp_path)
    started.start_api()
    started.start_worker("worker-1")
    started.wait_until_up("api", "worker-1")
    yield started
    started.stop()


def _running_enrollments() -> list[uuid.UUID]:
    """Jobs running now that will succeed (not the photo without a face)."""
    with operator_transaction():
        running = Job.objects.filter(status=Job.Status.RUNNING).exclude(input_image=NO_FACE)
        return list(running.values_list("id", flat=True))


def _kill_workers_mid_enrollment(stack: Stack, *, timeout: float) -> tuple[str, list[uuid.UUID]]:
    """SIGKILL the running worker as soon as an enrollment runs, and start a new one; again while the kill
    caught only jobs that finished between the look and the kill. Returns the worker left running and the
    jobs interrupted."""
    deadline, kills = time.monotonic() + timeout, 0
    while True:
        while not (running := _running_enrollments()):
            assert time.monotonic() < deadline, f"no enrollment job ran within {timeout} s"
            time.sleep(0.02)
        stack.kill(f"worker-{kills + 1}")
        kills += 1
        stack.start_worker(f"worker-{kills + 1}")
        with operator_transaction():
            still_running = Job.objects.filter(id__in=running, status=Job.Status.RUNNING)
            if interrupted := list(still_running.values_list("id", flat=True)):
                return f"worker-{kills + 1}", interrupted


def _wait_for_jobs(tenants, *, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        with operator_transaction():
            jobs = {job.id: job for job in Job.objects.filter(tenant__in=tenants)}
        if all(job.status in (Job.Status.SUCCEEDED, Job.Status.FAILED) for job in jobs.values()):
            return jobs
        assert time.monotonic() < deadline, {job.id: job.status for job in jobs.values()}
        time.sleep(0.2)


# --- What was billed --------------------------------------------------------------------------------------


def _ledger(tenant) -> dict[str, tuple[int, int]]:
    """Records and units per operation."""
    with tenant_transaction(tenant.id):
        rows = UsageRecord.objects.filter(tenant=tenant).values("operation")
        return {
            row["operation"]: (row["records"], row["units"])
            for row in rows.annotate(records=Count("id"), units=Sum("units"))
        }


def _enroll_usage_keys(tenant) -> set[str]:
    with tenant_transaction(tenant.id):
        return set(
            UsageRecord.objects.filter(tenant=tenant, operation="enroll").values_list(
                "idempotency_key", flat=True
            )
        )


def _faces(tenant) -> int:
    with tenant_transaction(tenant.id):
        return Face.objects.filter(tenant=tenant).count()


def _job_id(response: httpx.Response) -> str:
    return response.headers["Location"].rsplit("/", 1)[1]


def test_usage_equals_the_distinct_successful_operations_under_concurrency_retries_and_a_killed_worker(stack):
    first_day = timezone.now().astimezone(UTC).date()
    callers = [_caller(name, stack.api_url, workload) for name, workload in WORKLOADS.items()]

    with ThreadPoolExecutor(max_workers=1) as background:
        answers = background.submit(_send, _first_wave(callers))
        survivor, interrupted = _kill_workers_mid_enrollment(stack, timeout=60)
        answered = answers.result()
    stack.wait_until_up(survivor)
    # The dead worker took its messages with it (kombu's SQLAlchemy transport never redelivers them). The
    # beat task that sends stalled jobs again recovers them; it waits ten minutes before calling a job
    # stalled, which this test shortens to nothing, so jobs that are merely queued get a duplicate delivery.
    assert stack.send("maintenance.redispatch_stalled_jobs", "maintenance", stalled_after_seconds=0).get(
        timeout=60
    ) >= len(interrupted)
    jobs = _wait_for_jobs([caller.tenant for caller in callers], timeout=120)
    answered += _send(_late_retries(callers))
    stack.send("maintenance.aggregate_usage", "maintenance").get(timeout=60)

    for call, response in answered:
        assert response.status_code in call.expected, (call.caller, call.label, response.text)
    # The enrollments the kill interrupted ran again on the new worker, to success.
    assert [(jobs[job_id].status, jobs[job_id].attempts >= 2) for job_id in interrupted] == [
        (Job.Status.SUCCEEDED, True)
    ] * len(interrupted)
    today = timezone.now().astimezone(UTC).date()
    for caller in callers:
        w, invoice_expected = caller.workload, EXPECTED_INVOICES[caller.name]
        job_ids = {}
        for call, response in answered:
            if (
                call.caller == caller.name
                and call.operation == "enroll"
                and call.label.startswith(caller.name)
            ):
                job_ids.setdefault(call.label, set()).add(uuid.UUID(_job_id(response)))
        # Every retry was answered with the job of its first request; no retry made a job of its own.
        assert sorted(len(ids) for ids in job_ids.values()) == [1] * w.enrollments
        enrolled = set().union(*job_ids.values())
        tenant_jobs = [job for job in jobs.values() if job.tenant_id == caller.tenant.id]
        assert {job.id for job in tenant_jobs if job.status == Job.Status.SUCCEEDED} == enrolled
        assert [job.error["reason"] for job in tenant_jobs if job.status == Job.Status.FAILED] == ["NO_FACE"]
        assert _faces(caller.tenant) == w.enrollments

        # The ledger: one record per distinct successful operation, each enrollment keyed by its job.
        assert _ledger(caller.tenant) == {
            "identify": (w.billable_identifies, w.billable_identifies),
            "enroll": (w.enrollments, w.enrollments),
        }, caller.name
        assert _enroll_usage_keys(caller.tenant) == {f"job:{job_id}" for job_id in enrolled}

        # The API: the daily aggregates and this month's draft invoice say the same.
        usage = caller.http.get(f"/v1/usage?from={first_day}&to={today}").json()
        assert usage["totals"] == {"identify": w.billable_identifies, "enroll": w.enrollments}
        [invoice] = caller.http.get("/v1/invoices").json()["data"]
        lines = {
            line["operation"]: (line["units"], line["billable"], line["amount"]) for line in invoice["lines"]
        }
        assert lines["identify"] == invoice_expected["identify"]
        assert lines["enroll"] == invoice_expected["enroll"]
        assert invoice["total"] == invoice_expected["total"]
        caller.http.close()
