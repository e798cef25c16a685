import os
import secrets
import subprocess
import sys

from tests.conftest import REPO_ROOT


def _production_env() -> dict[str, str]:
    # Explicit values: manage.py fills unset variables from var/visor.env, which make run writes with DEBUG=1.
    env = {key: value for key, value in os.environ.items() if key != "SECURE_SSL_REDIRECT"}
    env.update(DEBUG="0", SECRET_KEY=secrets.token_urlsafe(50), ALLOWED_HOSTS="api.example.com")
    return env


def test_check_deploy_is_clean_with_production_settings():
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO_ROOT,
        env=_production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_debug_is_off_unless_asked_for():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; print(settings.DEBUG)",
        ],
        cwd=REPO_ROOT,
        env={**_production_env(), "DJANGO_SETTINGS_MODULE": "infra.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.stdout.strip() == "False", result.stderr


def test_settings_refuse_to_start_without_a_secret_key():
    env = {key: value for key, value in _production_env().items() if key != "SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=REPO_ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "infra.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr
