import io
import json
import logging

import pytest


def test_every_response_carries_a_request_id(client):
    response = client.get("/healthz")

    assert len(response["X-Request-ID"]) >= 16


def test_a_sane_incoming_request_id_is_kept_so_clients_can_correlate(client):
    response = client.get("/healthz", headers={"X-Request-ID": "client-trace-0001"})

    assert response["X-Request-ID"] == "client-trace-0001"


def test_an_unusable_incoming_request_id_is_replaced(client):
    response = client.get("/healthz", headers={"X-Request-ID": "bad id\nwith newline"})

    assert response["X-Request-ID"] != "bad id\nwith newline"


def test_an_unknown_route_is_a_problem_json_404(client):
    response = client.get("/v1/no-such-thing")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 404
    assert body["type"].endswith("/not-found")
    assert body["request_id"] == response["X-Request-ID"]


@pytest.fixture
def log_stream():
    """The configured JSON handler's formatter and filters, writing into a buffer the test can read."""
    configured = logging.getLogger().handlers[0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(configured.formatter)
    for log_filter in configured.filters:
        handler.addFilter(log_filter)
    logging.getLogger().addHandler(handler)
    yield stream
    logging.getLogger().removeHandler(handler)


def test_log_lines_are_json_and_carry_the_request_id(client, log_stream):
    response = client.get("/v1/no-such-thing")

    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    not_found = [line for line in lines if line.get("logger") == "django.request"]
    assert not_found, "the 404 should have been logged by django.request"
    assert not_found[-1]["request_id"] == response["X-Request-ID"]
    assert not_found[-1]["level"] == "WARNING"


@pytest.mark.django_db
def test_the_openapi_schema_and_its_rendered_docs_are_served(client):
    schema = client.get("/api/schema", headers={"Accept": "application/vnd.oai.openapi+json"})
    docs = client.get("/api/docs")

    assert schema.status_code == 200
    assert json.loads(schema.content)["openapi"].startswith("3.")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content.lower()


def test_logging_is_configured_with_the_json_formatter():
    formatter = logging.getLogger().handlers[0].formatter

    assert type(formatter).__name__ == "JsonFormatter"
