"""infra/Dockerfile: hadolint clean, and the properties issue #8 asks of the image."""

import re

import pytest

from tests.deploy.conftest import INFRA, require_tool, run_tool

DOCKERFILE = INFRA / "Dockerfile"


@pytest.fixture(scope="module")
def stages() -> list[str]:
    text = DOCKERFILE.read_text()
    # Join continuation lines so that each instruction is one line.
    text = re.sub(r"\\\n", " ", text)
    return re.split(r"(?m)^FROM ", text)[1:]


def test_hadolint_is_clean():
    hadolint = require_tool("hadolint")
    result = run_tool([hadolint, "--failure-threshold", "warning", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_slim_builder_and_runtime(stages):
    assert len(stages) == 2
    assert "AS builder" in stages[0]
    assert "AS runtime" in stages[1]
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in DOCKERFILE.read_text()


def test_builder_syncs_the_lock_without_dev_and_verifies_models(stages):
    builder = stages[0]
    assert "uv sync --locked --no-dev" in builder
    assert "python infra/fetch_models.py" in builder
    assert "collectstatic" in builder


def test_runtime_has_no_compilers_and_runs_as_non_root(stages):
    runtime = stages[1]
    assert not re.search(r"\b(gcc|g\+\+|build-essential|clang|apt-get install)\b", runtime)
    assert "uv " not in runtime.replace("--from=builder", "")
    users = re.findall(r"(?m)^USER (\S+)", runtime)
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert "COPY --from=builder /app/var/models" in runtime
    assert "COPY --from=builder /app/var/static" in runtime


def test_healthcheck_and_entrypoint_roles(stages):
    runtime = stages[1]
    assert "HEALTHCHECK" in runtime
    assert "/healthz" in (INFRA / "docker" / "healthcheck.py").read_text()
    entrypoint = (INFRA / "docker" / "entrypoint.sh").read_text()
    for role in ("api)", "worker)", "beat)", "migrate)"):
        assert role in entrypoint
    assert "gunicorn infra.wsgi" in entrypoint
    assert "celery -A infra worker" in entrypoint
    assert "--prefetch-multiplier=1" in entrypoint
    assert "celery -A infra beat" in entrypoint


def test_entrypoint_is_valid_posix_shell():
    result = run_tool(["sh", "-n", str(INFRA / "docker" / "entrypoint.sh")])
    assert result.returncode == 0, result.stderr
