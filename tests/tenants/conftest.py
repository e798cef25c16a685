import pytest
from django.contrib.auth import get_user_model


@pytest.fixture
def operator_user(db):
    return get_user_model().objects.create_superuser(
        "operator", "operator@example.com", "a-long-test-passphrase"
    )


@pytest.fixture
def console(client, operator_user):
    """A Django test client signed in to the operator console as a staff superuser."""
    client.force_login(operator_user)
    return client
