"""docs/quickstart.md, executed in document order: ```python blocks, and ```sh lines where they can run.

Shell lines: `manage.py ...` runs through call_command (its printed api_key becomes VISOR_API_KEY),
`visor ...` runs through the CLI's main(); `make run` is stood in for by live_server + the Celery worker,
`pip install ./sdk` by tests/sdk/conftest.py, and `export` by the environment the test sets.
"""

import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest
import visor
from django.core.management import call_command
from visor.cli import main as visor_main

from tenants.models import Plan
from tenants.services import DEFAULT_PLAN_NAME
from tests.face_images import person_image

pytestmark = pytest.mark.django_db(transaction=True)
QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"
STOOD_IN = ("make run", "export ", "pip install")


def _blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in document order."""
    return re.findall(r"```(\w+)\n(.*?)```", QUICKSTART.read_text(), flags=re.DOTALL)


def _close_clients(namespace: dict) -> None:
    for value in namespace.values():
        if isinstance(value, visor.Client):
            value.close()


def test_every_quickstart_snippet_runs_against_a_live_server(
    live_server, celery_worker, monkeypatch, tmp_path, request
):
    # Transactional tests start from an empty database: bring the default plan create_tenant uses.
    Plan.objects.get_or_create(
        name=DEFAULT_PLAN_NAME,
        defaults={"allows_overage": True, "requests_per_second": 1000, "burst": 1000},
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISOR_BASE_URL", live_server.url)
    monkeypatch.delenv("VISOR_API_KEY", raising=False)
    for name, image in {
        "alice.jpg": person_image(1),
        "probe.jpg": person_image(1, offset=(-20, 10)),
        "bob.jpg": person_image(2),
        "bob-2.jpg": person_image(2, offset=(15, -5)),
    }.items():
        (tmp_path / name).write_bytes(image)

    blocks = _blocks()
    assert [language for language, _ in blocks] == ["sh", "python", "sh", "python"]
    cli_outputs = []
    printed = io.StringIO()
    namespace: dict = {}
    # A script's clients close when its process ends; here the test ends instead. One left open keeps a
    # live-server thread, and its database connection, waiting on the kept-alive socket.
    request.addfinalizer(lambda: _close_clients(namespace))
    for language, block in blocks:
        if language == "python":
            with contextlib.redirect_stdout(printed):
                exec(compile(block, str(QUICKSTART), "exec"), namespace)
            continue
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if not command or command.startswith(STOOD_IN):
                continue
            words = shlex.split(command)
            if words[:2] == [".venv/bin/python", "manage.py"]:
                out = io.StringIO()
                call_command(*words[2:], stdout=out)
                monkeypatch.setenv("VISOR_API_KEY", json.loads(out.getvalue())["api_key"])
            elif words[0] == "visor":
                out, err = io.StringIO(), io.StringIO()
                code = visor_main(words[1:], stdout=out, stderr=err)
                assert code == 0, f"{command!r} exited {code}: {err.getvalue()}"
                cli_outputs.append(out.getvalue())
            else:
                pytest.fail(f"the quickstart has a shell line this test cannot run: {command!r}")

    lines = printed.getvalue().splitlines()
    assert lines[0].startswith("alice "), printed.getvalue()
    assert lines[-1] == "job.succeeded"
    assert len(cli_outputs) == 3
    assert "bob" in cli_outputs[1]
    assert "Staff" in cli_outputs[2]
