"""infra/docker-compose.yml: valid for the Compose client (no engine needed) and the whole stack."""

import yaml

from tests.deploy.conftest import INFRA, require_tool, run_tool

COMPOSE = INFRA / "docker-compose.yml"


def test_docker_compose_config_accepts_the_file():
    compose = require_tool("docker-compose")
    result = run_tool([compose, "-f", str(COMPOSE), "config", "--quiet"])
    assert result.returncode == 0, result.stderr


def test_stack_has_every_service_and_the_one_shots_gate_the_app():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"api", "worker", "beat", "migrate", "postgres", "redis", "s3", "createbucket"} <= set(services)
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    assert "-s3" in services["s3"]["command"]
    for name in ("api", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["createbucket"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["migrate"]


def test_env_file_has_every_required_setting_and_no_real_secret():
    env = dict(
        line.split("=", 1)
        for line in (INFRA / "docker" / "compose.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in (
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "S3_ENDPOINT_URL",
        "S3_BUCKET",
        "SECRET_KEY",
        "API_KEY_PEPPER",
        "ALLOWED_HOSTS",
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
    ):
        assert env.get(name), name
    for name in ("SECRET_KEY", "API_KEY_PEPPER", "S3_SECRET_ACCESS_KEY"):
        assert "local-only" in env[name], f"{name} must be an obvious placeholder"
