"""The Celery application. Tasks live on named queues; workers choose which queues they serve."""

import os

from celery import Celery
from celery.signals import before_task_publish, task_postrun, task_prerun, worker_process_init
from kombu import Exchange, Queue
from kombu.transport import sqlalchemy as sqlalchemy_transport

from infra.request_id import current_request_id

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra.settings")

QUEUES = ("enrollment", "identify", "maintenance", "webhooks")

# The SQLAlchemy transport polls its tables, once a second by default; it hands every transport option to
# create_engine(), so the interval cannot be passed as an option and is set on the class instead.
sqlalchemy_transport.Transport.polling_interval = 0.1

app = Celery("visor")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]
app.conf.task_create_missing_queues = False
app.conf.task_routes = {
    "workers.ping": {"queue": "maintenance"},
    "workers.sleep_then_record": {"queue": "maintenance"},
    "enrollment.*": {"queue": "enrollment"},
    "identify.*": {"queue": "identify"},
    "maintenance.*": {"queue": "maintenance"},
    "webhooks.*": {"queue": "webhooks"},
}
app.autodiscover_tasks(["workers", "identity", "tenants"])
app.conf.beat_schedule = {
    "redispatch-stalled-jobs": {"task": "maintenance.redispatch_stalled_jobs", "schedule": 60},
    "redispatch-unattempted-webhooks": {
        "task": "maintenance.redispatch_unattempted_webhooks",
        "schedule": 60,
    },
    "purge-expired-idempotency-keys": {
        "task": "maintenance.purge_expired_idempotency_keys",
        "schedule": 3600,
    },
    "sweep-pending-image-deletions": {
        "task": "maintenance.sweep_pending_image_deletions",
        "schedule": 15 * 60,
    },
    # Hourly, though retention is counted in days: beat's schedule lives on an emptyDir in the containers,
    # and an interval starts again with every restart, so a 6-hour one could be put off by each release.
    "expire-stored-images": {"task": "maintenance.expire_stored_images", "schedule": 3600},
    "erase-closed-tenants": {"task": "maintenance.erase_closed_tenants", "schedule": 10 * 60},
    "snapshot-stored-faces": {"task": "maintenance.snapshot_stored_faces", "schedule": 3600},
    "aggregate-usage": {"task": "maintenance.aggregate_usage", "schedule": 10 * 60},
    # Hourly: the month's invoices are final within an hour of its close, and a missed run catches up.
    "finalize-invoices": {"task": "maintenance.finalize_invoices", "schedule": 3600},
}


@worker_process_init.connect
def _drop_inherited_broker_connections(**_):
    """kombu's SQLAlchemy transport caches its engines on a class, so a forked pool process inherits the
    parent's pooled broker connections; two processes speaking on one socket corrupt both sessions.
    Disposing without closing leaves the parent's connections to the parent."""
    for engine, _session_factory in sqlalchemy_transport.Channel._engines.values():
        engine.dispose(close=False)


@before_task_publish.connect
def _propagate_request_id(headers=None, **_):
    request_id = current_request_id.get()
    if headers is not None and request_id:
        headers["visor_request_id"] = request_id


_task_tokens: dict[str, object] = {}


@task_prerun.connect
def _bind_request_id(task_id=None, task=None, **_):
    request_id = getattr(task.request, "visor_request_id", None) or task_id
    _task_tokens[task_id] = current_request_id.set(request_id)


@task_postrun.connect
def _unbind_request_id(task_id=None, **_):
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        current_request_id.reset(token)
