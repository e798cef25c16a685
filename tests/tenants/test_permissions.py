import pytest

from tenants.permissions import required_scope
from tests.tenants.factories import api_client_for, make_api_key


class _DeclaresPerMethod:
    required_scopes = {"GET": "read", "POST": "enroll"}


class _DeclaresOne:
    required_scope = "identify"


class _DeclaresNothing:
    pass


@pytest.mark.parametrize(
    ("view", "method", "expected"),
    [
        (_DeclaresPerMethod, "GET", "read"),
        (_DeclaresPerMethod, "POST", "enroll"),
        (_DeclaresPerMethod, "HEAD", "read"),
        (_DeclaresPerMethod, "OPTIONS", "read"),
        (_DeclaresOne, "GET", "identify"),
        (_DeclaresOne, "POST", "identify"),
        (_DeclaresNothing, "GET", "read"),
        (_DeclaresNothing, "POST", "manage"),
        (_DeclaresNothing, "DELETE", "manage"),
    ],
)
def test_the_required_scope_comes_from_the_view_and_defaults_towards_less_access(view, method, expected):
    assert required_scope(view(), method) == expected


@pytest.mark.django_db
def test_manage_implies_every_other_scope():
    _, raw_key = make_api_key(scopes=["manage"])

    assert api_client_for(raw_key).get("/v1/tenant").status_code == 200
