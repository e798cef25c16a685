"""The environment is the only source of configuration.

`make run` writes the environment it started its services with to var/visor.env; `load_local_env()` adds
those values to os.environ (never overriding what is already set) so that `python manage.py ...` run in the
same checkout reaches the same database, broker and S3 server with no flags. Production has no such file.
"""

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCAL_ENV_FILE = ROOT / "var" / "visor.env"


def write_env_file(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in sorted(values.items())))
    path.chmod(0o600)


def load_local_env(path: Path = LOCAL_ENV_FILE) -> None:
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        key, separator, value = line.partition("=")
        if separator and key and not line.startswith("#"):
            os.environ.setdefault(key.strip(), value.strip())


def sqlalchemy_postgres_url(database_url: str) -> str:
    """The same database as a SQLAlchemy URL on psycopg 3 (Celery's broker and result backend use it)."""
    scheme, separator, rest = database_url.partition("://")
    if scheme not in {"postgres", "postgresql", "postgresql+psycopg"} or not separator:
        raise ValueError(f"not a PostgreSQL URL: {scheme}://...")
    return f"postgresql+psycopg://{rest}"
