"""Fixtures for the SDK tests: a real Visor (pytest-django's live_server + a Celery worker) and a tenant key.

The SDK is its own distribution under sdk/; until the root project installs it (see sdk/README.md), these
tests import it from sdk/src.
"""

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

SDK_SRC = Path(__file__).resolve().parents[2] / "sdk" / "src"
if str(SDK_SRC) not in sys.path:
    sys.path.insert(0, str(SDK_SRC))

import visor  # noqa: E402

from tests.identity.conftest import make_tenant_api  # noqa: E402


@dataclass
class Server:
    url: str
    key: str
    tenant: object

    def client(self, **options) -> visor.Client:
        return visor.Client(api_key=self.key, base_url=self.url, **options)


@pytest.fixture
def visor_server(live_server, celery_worker, transactional_db) -> Server:
    api = make_tenant_api("SDK Co")
    return Server(url=live_server.url, key=api.key, tenant=api.tenant)


@pytest.fixture
def client(visor_server) -> Iterator[visor.Client]:
    with visor_server.client() as client:
        yield client


class RecordingTransport(httpx.BaseTransport):
    """Sends every request to the real server (through `inner`) and records it; `fault` may answer instead.

    `fault(request, attempt)` returns None to pass the request through, an httpx.Response to answer without
    the server, or the string "drop-after-send" to forward the request and then fail as if the connection
    broke before the answer arrived.
    """

    def __init__(self, fault: Callable[[httpx.Request, int], object] | None = None, inner=None) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.fault = fault
        self.requests: list[httpx.Request] = []
        self.statuses: list[int | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        action = self.fault(request, len(self.requests)) if self.fault else None
        if isinstance(action, httpx.Response):
            self.statuses.append(action.status_code)
            return action
        try:
            response = self.inner.handle_request(request)
        except httpx.TransportError:
            self.statuses.append(None)
            raise
        if action == "drop-after-send":
            response.read()
            response.close()
            self.statuses.append(None)
            raise httpx.ReadError("connection dropped after the request was sent", request=request)
        self.statuses.append(response.status_code)
        return response

    def close(self) -> None:
        self.inner.close()
