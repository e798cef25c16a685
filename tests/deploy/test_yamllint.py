"""yamllint over every deployment YAML file."""

from tests.deploy.conftest import INFRA, YAMLLINT_CONFIG, require_tool, run_tool


def test_yamllint_is_clean():
    yamllint = require_tool("yamllint")
    result = run_tool(
        [
            yamllint,
            "--strict",
            "-c",
            str(YAMLLINT_CONFIG),
            "-f",
            "parsable",
            str(INFRA / "docker-compose.yml"),
            str(INFRA / "k8s"),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr
