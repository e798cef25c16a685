import os

import pytest

from workers.tasks import ping


@pytest.mark.django_db(transaction=True)
def test_a_task_travels_through_the_broker_to_a_worker_process_and_back(celery_worker):
    result = ping.apply_async(kwargs={"payload": "round trip"}).get(timeout=60)

    assert result["payload"] == "round trip"
    assert result["worker_pid"] != os.getpid()


def test_tasks_are_routed_to_named_queues():
    from infra.celery import QUEUES, app

    assert {queue.name for queue in app.conf.task_queues} == set(QUEUES)
    route = app.amqp.router.route({}, ping.name)
    assert route["queue"].name == "maintenance"
    assert {queue.routing_key for queue in app.conf.task_queues} == set(QUEUES), "one routing key per queue"
