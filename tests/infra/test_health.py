import copy
import json
import secrets

import pytest

from infra.devstack import Supervisor, free_port, start_s3


def test_healthz_answers_while_the_process_is_alive(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ready_when_database_broker_storage_and_models_are_up(client):
    response = client.get("/readyz")

    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ready"
    assert set(body["checks"]) == {"database", "broker", "object_storage", "models"}
    assert all(check["ok"] for check in body["checks"].values())


@pytest.fixture
def disposable_s3(tmp_path, settings):
    """A second, real S3 server that the test can stop; the app is pointed at it."""
    supervisor = Supervisor(log_dir=tmp_path / "log")
    secret = secrets.token_urlsafe(16)
    endpoint = start_s3(
        supervisor, data_dir=tmp_path / "s3", s3_port=free_port(), bucket="readiness", secret_key=secret
    )
    storages = copy.deepcopy(settings.STORAGES)
    storages["default"]["OPTIONS"].update(
        endpoint_url=endpoint, bucket_name="readiness", access_key="visor", secret_key=secret
    )
    settings.STORAGES = storages
    yield supervisor
    supervisor.stop_all()


@pytest.mark.django_db
def test_readyz_answers_503_naming_object_storage_once_the_s3_server_is_stopped(client, disposable_s3):
    assert client.get("/readyz").status_code == 200

    disposable_s3.stop_all()
    response = client.get("/readyz")

    body = json.loads(response.content)
    assert response.status_code == 503
    assert body["status"] == "unavailable"
    assert body["down"] == ["object_storage"]
    assert body["checks"]["object_storage"]["error"]
    assert body["checks"]["database"]["ok"] is True
