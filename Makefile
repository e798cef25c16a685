# Visor: `make run` starts the whole service on embedded defaults; `make test` runs the test suite.
PYTHON ?= python3
UV_VERSION := 0.13.9
BOOTSTRAP := var/bootstrap
UV := $(BOOTSTRAP)/bin/uv
VENV_PY := .venv/bin/python
export UV_PYTHON_DOWNLOADS := never

.PHONY: install models run test lint fmt clean

$(UV):
	$(PYTHON) -m venv $(BOOTSTRAP)
	$(BOOTSTRAP)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python $(PYTHON)
	touch $@

models: | $(UV)
	$(BOOTSTRAP)/bin/python infra/fetch_models.py

install: .venv/.synced models

run: install
	$(VENV_PY) -m infra.devstack run

test: install lint
	@test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || echo "chromium could not be installed; tests/e2e will skip" >&2
	$(VENV_PY) -m infra.devstack test -- $(PYTEST_ARGS)

lint: .venv/.synced
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

fmt: .venv/.synced
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf .venv $(BOOTSTRAP)
