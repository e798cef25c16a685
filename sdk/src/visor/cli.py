"""The `visor` command line: galleries, subjects, enrollment (one file or a whole directory), identify,
verify and usage, as aligned tables or `--json`."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, TextIO, get_args

from visor._base import QualityFilter
from visor._client import Client
from visor._errors import ConflictError, FaceRejectedError, InvalidImageError, NotFoundError, VisorError
from visor._models import Face, Gallery, Subject

EXIT_OK, EXIT_API_ERROR, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3
STATE_FILE = ".visor-enroll-state.json"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})  # the formats the server accepts
QUALITY_FILTER_ARGUMENT: dict[str, Any] = {
    "choices": get_args(QualityFilter),
    "help": "how strict the server is about face quality: auto (default), low (identification's floors), "
    "none (no refusal for quality)",
}

EPILOG = """\
environment:
  VISOR_API_KEY    API key (or --api-key)
  VISOR_BASE_URL   server URL (or --base-url; default http://127.0.0.1:8000)

exit codes:
  0  success
  1  the API answered with an error (or could not be reached)
  2  usage error: bad arguments, unreadable file
  3  not found; for identify, no face matched anyone; for verify, not the same person

examples:
  visor galleries create Staff
  visor enroll --gallery Staff --subject alice alice1.jpg alice2.jpg
  visor enroll-dir --gallery Staff photos/        # photos/<external_id>/*.jpg, resumable
  visor identify --gallery Staff probe.jpg
  visor verify a.jpg b.jpg --json
"""


class UsageError(Exception):
    """Bad input from the command line (exit code 2)."""


# --- Output -----------------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return value.raw if getattr(value, "raw", None) else _jsonable(asdict(value))
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(_jsonable(value), indent=2, default=str) + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    out.write("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    if not rows:
        out.write("(none)\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M")
    return str(value)


# --- Helpers ----------------------------------------------------------------------------------------------


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def resolve_gallery(client: Client, ref: str) -> Gallery:
    """A gallery by id, or by exact name."""
    if _is_uuid(ref):
        return client.galleries.get(ref)
    named = [g for g in client.galleries.list() if g.name == ref]
    if not named:
        raise NotFoundError(
            f"no gallery with id or name {ref!r}", status=404, type="not-found", title="Not found"
        )
    if len(named) > 1:
        raise UsageError(f"{len(named)} galleries are named {ref!r}; pass the gallery id instead")
    return named[0]


def find_or_create_subject(
    client: Client, gallery_id: str, external_id: str, name: str | None = None
) -> Subject:
    for subject in client.subjects.list(gallery_id=gallery_id, external_id=external_id):
        return subject
    try:
        return client.subjects.create(gallery_id=gallery_id, external_id=external_id, name=name)
    except ConflictError:  # created concurrently by someone else
        for subject in client.subjects.list(gallery_id=gallery_id, external_id=external_id):
            return subject
        raise


def _readable_file(path: str) -> str:
    if os.path.isdir(path):
        raise UsageError(f"not a file: {path}")
    if not os.path.isfile(path):
        raise UsageError(f"no such file: {path}")
    # Opened here, before any request, so an unreadable file is a usage error rather than a traceback
    # after the files before it were uploaded.
    try:
        open(path, "rb").close()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    return path


def _metadata(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        metadata = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"--metadata is not valid JSON: {error}") from None
    if not isinstance(metadata, dict):
        raise UsageError("--metadata must be a JSON object")
    return metadata


# --- Commands ---------------------------------------------------------------------------------------------


def cmd_galleries(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if args.action == "create":
        gallery = client.galleries.create(name=args.name, description=args.description)
        if args.json:
            print_json(gallery, out)
        else:
            out.write(f"created gallery {gallery.name!r} {gallery.id}\n")
    elif args.action == "list":
        galleries = list(client.galleries.list())
        if args.json:
            print_json(galleries, out)
        else:
            rows = [(g.id, g.name, g.subject_count, g.face_count, g.created_at) for g in galleries]
            table(["id", "name", "subjects", "faces", "created"], rows, out)
    else:  # delete
        gallery = resolve_gallery(client, args.gallery)
        client.galleries.delete(gallery.id)
        if args.json:
            print_json({"deleted": gallery.id}, out)
        else:
            out.write(f"deleted gallery {gallery.name!r} {gallery.id}\n")
    return EXIT_OK


def cmd_subjects(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    metadata = _metadata(args.metadata) if args.action == "create" else None
    gallery = resolve_gallery(client, args.gallery)
    if args.action == "create":
        subject = client.subjects.create(
            gallery_id=gallery.id, external_id=args.external_id, name=args.name, metadata=metadata
        )
        if args.json:
            print_json(subject, out)
        else:
            out.write(f"created subject {subject.external_id!r} {subject.id}\n")
        return EXIT_OK
    subjects = list(client.subjects.list(gallery_id=gallery.id, external_id=args.external_id))
    if args.json:
        print_json(subjects, out)
    else:
        rows = [(s.id, s.external_id, s.name or None, s.face_count, s.created_at) for s in subjects]
        table(["id", "external_id", "name", "faces", "created"], rows, out)
    return EXIT_NOT_FOUND if args.external_id and not subjects else EXIT_OK


def cmd_enroll(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    paths = [_readable_file(p) for p in args.paths]
    gallery = resolve_gallery(client, args.gallery)
    subject = find_or_create_subject(client, gallery.id, args.subject, args.name)
    results: list[dict[str, Any]] = []
    for path in paths:
        try:
            face = client.faces.enroll(
                subject_id=subject.id, image=path, largest=args.largest, quality_filter=args.quality_filter
            )
        except FaceRejectedError as error:
            results.append(
                {"file": path, "status": "rejected", "reasons": error.reasons, "detail": error.detail}
            )
        except (VisorError, OSError) as error:
            # One bad file (not an image, a job that failed or timed out) must not cost the files after it.
            results.append({"file": path, "status": "failed", "error": str(error)})
        else:
            assert isinstance(face, Face)
            results.append({"file": path, "status": "enrolled", "face_id": face.id})
    if args.json:
        print_json({"subject": subject, "results": results}, out)
    else:
        out.write(f"subject {subject.external_id!r} {subject.id}\n")
        rows = [
            (r["file"], r["status"], r.get("face_id") or r.get("error") or ", ".join(r.get("reasons", [])))
            for r in results
        ]
        table(["file", "status", "face / reasons"], rows, out)
    return EXIT_OK if all(r["status"] == "enrolled" for r in results) else EXIT_API_ERROR


class EnrollState:
    """`DIR/.visor-enroll-state.json`: files already handled, per gallery, so a rerun skips them."""

    def __init__(self, directory: Path, gallery_id: str) -> None:
        self.path = directory / STATE_FILE
        self.gallery_id = gallery_id
        self._lock = threading.Lock()
        try:
            self._data = json.loads(self.path.read_text())
        except FileNotFoundError:
            self._data = {}
        except ValueError:  # kept, not overwritten: it records what earlier runs enrolled
            raise UsageError(f"{self.path} is not valid JSON; move it away to start afresh") from None
        except OSError as error:
            raise UsageError(f"cannot read {self.path}: {error.strerror}") from None
        if not _is_enroll_state(self._data):
            raise UsageError(f"{self.path} is not an enroll-dir state file; move it away to start afresh")
        self._data.setdefault("version", 1)
        self.files: dict[str, dict[str, Any]] = self._data.setdefault("galleries", {}).setdefault(
            gallery_id, {}
        )
        # Written once before any upload, so a directory the state cannot be saved in fails before anything
        # is enrolled (and billed) without a record.
        self._save()

    def record(self, relpath: str, outcome: dict[str, Any]) -> None:
        with self._lock:
            self.files[relpath] = outcome
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as error:
            raise UsageError(f"cannot write {self.path}: {error.strerror}") from None


def _is_enroll_state(data: Any) -> bool:
    """Whether `data` has the shape EnrollState reads: {"galleries": {id: {relpath: {outcome}}}}."""
    galleries = data.get("galleries", {}) if isinstance(data, dict) else None
    return isinstance(galleries, dict) and all(
        isinstance(files, dict) and all(isinstance(outcome, dict) for outcome in files.values())
        for files in galleries.values()
    )


def _person_files(directory: Path) -> list[tuple[str, Path]]:
    found = []
    for person in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(person.rglob("*")):
            # Hidden files are not photos even when named like one: macOS puts `._IMG.jpg` resource forks
            # next to every file it copies, and thumbnail caches live in hidden folders.
            hidden = any(part.startswith(".") for part in file.relative_to(person).parts)
            if file.is_file() and not hidden and file.suffix.lower() in IMAGE_SUFFIXES:
                found.append((person.name, file))
    return found


def cmd_enroll_dir(client: Client, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        raise UsageError(f"not a directory: {directory}")
    gallery = resolve_gallery(client, args.gallery)
    state = EnrollState(directory, gallery.id)
    files = _person_files(directory)
    retry = {"rejected"} if args.retry_rejected else set()
    todo = [
        (ext, f)
        for ext, f in files
        if state.files.get(f.relative_to(directory).as_posix(), {}).get("status", "")
        not in {"enrolled", "rejected"} - retry
    ]
    skipped = len(files) - len(todo)
    subjects: dict[str, Subject] = {}
    for external_id in sorted({ext for ext, _ in todo}):
        subjects[external_id] = find_or_create_subject(client, gallery.id, external_id)

    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    failures: list[tuple[str, str]] = []
    lock = threading.Lock()
    started = time.monotonic()

    def progress(final: bool = False) -> None:
        done = sum(counts.values())
        line = (
            f"\r[{done}/{len(todo)}] enrolled {counts['enrolled']}, rejected {counts['rejected']}, "
            f"failed {counts['failed']}, skipped {skipped} ({time.monotonic() - started:.0f} s)"
        )
        err.write(line + ("\n" if final else ""))
        err.flush()

    def upload(external_id: str, file: Path) -> tuple[str, dict[str, Any]]:
        relpath = file.relative_to(directory).as_posix()
        subject = subjects[external_id]
        try:
            stat = file.stat()
            # A stable key per (subject, file, options): a rerun after a crash gets the earlier job back, not
            # a duplicate, and a rerun with other options (--retry-rejected --largest) is a new request.
            request = f"{subject.id}/{relpath}/{stat.st_size}/{args.largest}/{args.quality_filter}"
            key = hashlib.sha256(request.encode()).hexdigest()[:40]
            face = client.faces.enroll(
                subject_id=subject.id,
                image=file,
                largest=args.largest,
                quality_filter=args.quality_filter,
                idempotency_key=f"enroll-dir-{key}",
            )
        except FaceRejectedError as error:
            return relpath, {"status": "rejected", "reasons": error.reasons or ["unknown"]}
        except InvalidImageError as error:
            # Not an image the server can read: uploading it again cannot help, so a rerun skips it too.
            return relpath, {"status": "rejected", "reasons": [error.reason or "INVALID_IMAGE"]}
        except (VisorError, OSError) as error:  # OSError: the file became unreadable or was deleted
            return relpath, {"status": "failed", "error": str(error)}
        assert isinstance(face, Face)
        return relpath, {"status": "enrolled", "face_id": face.id, "external_id": external_id}

    def finish(future: Future[tuple[str, dict[str, Any]]]) -> None:
        relpath, outcome = future.result()
        with lock:
            counts[outcome["status"]] += 1
            if outcome["status"] == "failed":
                failures.append((relpath, outcome["error"]))
            else:
                state.record(relpath, outcome)
                reasons.update(outcome.get("reasons", []))
            progress()

    pool = ThreadPoolExecutor(max_workers=max(1, args.workers))
    futures = [pool.submit(upload, ext, f) for ext, f in todo]
    finished: set[Future[tuple[str, dict[str, Any]]]] = set()
    try:
        for future in as_completed(futures):
            finished.add(future)
            finish(future)
    except BaseException:
        # Ctrl-C (or a crash): the queued uploads are cancelled, not run; a plain shutdown would wait for
        # every one of them, each an enrollment billed and never recorded. Those that ran are recorded.
        pool.shutdown(wait=True, cancel_futures=True)
        for future in futures:
            if future not in finished and not future.cancelled() and future.exception() is None:
                finish(future)
        raise
    pool.shutdown()
    progress(final=True)

    summary = {
        "gallery_id": gallery.id,
        "files": len(files),
        "skipped": skipped,
        "enrolled": counts["enrolled"],
        "rejected": counts["rejected"],
        "failed": counts["failed"],
        "rejections_by_reason": dict(reasons.most_common()),
        "failures": [{"file": f, "error": e} for f, e in failures],
        "state_file": str(state.path),
    }
    if args.json:
        print_json(summary, out)
    else:
        table(
            ["files", "skipped", "enrolled", "rejected", "failed"],
            [(len(files), skipped, counts["enrolled"], counts["rejected"], counts["failed"])],
            out,
        )
        if reasons:
            out.write("\nrejections by reason:\n")
            table(["reason", "count"], reasons.most_common(), out)
        if failures:
            out.write("\nfailed (rerun to retry):\n")
            table(["file", "error"], failures, out)
    return EXIT_API_ERROR if failures else EXIT_OK


def cmd_identify(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    image = _readable_file(args.image)
    gallery = resolve_gallery(client, args.gallery)
    result = client.identify(
        gallery_id=gallery.id,
        image=image,
        top_k=args.top_k,
        threshold=args.threshold,
        max_faces=args.max_faces,
    )
    if args.json:
        print_json(result, out)
    else:
        rows = []
        for index, face in enumerate(result.faces, start=1):
            match = face.match
            masked = face.mask.masked if face.mask else None
            if match:
                rows.append(
                    (index, match.external_id, match.name or None, match.similarity, match.confidence, masked)
                )
            else:
                best = face.candidates[0].similarity if face.candidates else None
                rows.append((index, "unknown", None, best, None, masked))
        table(["face", "external_id", "name", "similarity", "confidence", "masked"], rows, out)
    return EXIT_OK if result.matches else EXIT_NOT_FOUND


def cmd_verify(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    result = client.verify(
        image=_readable_file(args.image_a), image2=_readable_file(args.image_b), threshold=args.threshold
    )
    if args.json:
        print_json(result, out)
    else:
        table(
            ["match", "similarity", "confidence", "threshold"],
            [("yes" if result.match else "no", result.similarity, result.confidence, result.threshold)],
            out,
        )
    return EXIT_OK if result.match else EXIT_NOT_FOUND


def cmd_usage(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    usage = client.usage(from_=args.from_, to=args.to, granularity=args.granularity)
    if args.json:
        print_json(usage, out)
        return EXIT_OK
    per_period = usage.by_period()
    operations = sorted({op for units in per_period.values() for op in units} | set(usage.totals))
    rows: list[list[Any]] = [
        [period, *(units.get(op, 0) for op in operations)] for period, units in per_period.items()
    ]
    rows.append(["total", *(usage.totals.get(op, 0) for op in operations)])
    table(["period", *operations], rows, out)
    return EXIT_OK


# --- Parser and entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser = argparse.ArgumentParser(
        prog="visor",
        description="Command line for the Visor face-identification API.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument("--api-key", help="API key (default $VISOR_API_KEY)")
    parser.add_argument("--base-url", help="server URL (default $VISOR_BASE_URL or http://127.0.0.1:8000)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    galleries = commands.add_parser("galleries", help="create, list or delete galleries")
    gactions = galleries.add_subparsers(dest="action", required=True)
    create = gactions.add_parser("create", parents=[common], help="create a gallery")
    create.add_argument("name")
    create.add_argument("--description")
    gactions.add_parser("list", parents=[common], help="list galleries")
    delete = gactions.add_parser("delete", parents=[common], help="delete a gallery (by id or name)")
    delete.add_argument("gallery")

    subjects = commands.add_parser("subjects", help="create or list subjects of a gallery")
    sactions = subjects.add_subparsers(dest="action", required=True)
    screate = sactions.add_parser("create", parents=[common], help="create a subject")
    screate.add_argument("--gallery", required=True, help="gallery id or name")
    screate.add_argument("external_id")
    screate.add_argument("--name")
    screate.add_argument("--metadata", help="JSON object")
    slist = sactions.add_parser("list", parents=[common], help="list subjects")
    slist.add_argument("--gallery", required=True, help="gallery id or name")
    slist.add_argument("--external-id")

    enroll = commands.add_parser(
        "enroll", parents=[common], help="enroll photos of one person (creates the subject if missing)"
    )
    enroll.add_argument("--gallery", required=True, help="gallery id or name")
    enroll.add_argument("--subject", required=True, help="the subject's external id")
    enroll.add_argument("--name", help="display name for a new subject")
    enroll.add_argument("--largest", action="store_true", help="use the largest face when there are several")
    enroll.add_argument("--quality-filter", **QUALITY_FILTER_ARGUMENT)
    enroll.add_argument("paths", nargs="+", metavar="PATH")

    enroll_dir = commands.add_parser(
        "enroll-dir",
        parents=[common],
        help="enroll DIR/<external_id>/*.jpg concurrently; resumable",
        description="Enroll every JPEG, PNG or WebP image under DIR/<external_id>/ (not hidden files). "
        f"Finished files are recorded in DIR/{STATE_FILE} "
        "and skipped on a rerun; failed uploads (network, server) are retried by rerunning.",
    )
    enroll_dir.add_argument("--gallery", required=True, help="gallery id or name")
    enroll_dir.add_argument("directory", metavar="DIR")
    enroll_dir.add_argument("--workers", type=int, default=4, help="concurrent uploads (default 4)")
    enroll_dir.add_argument("--largest", action="store_true")
    enroll_dir.add_argument("--quality-filter", **QUALITY_FILTER_ARGUMENT)
    enroll_dir.add_argument("--retry-rejected", action="store_true", help="try rejected files again")

    identify = commands.add_parser(
        "identify", parents=[common], help="who is in this image? (exit 3: nobody)"
    )
    identify.add_argument("--gallery", required=True, help="gallery id or name")
    identify.add_argument("image", metavar="IMAGE")
    identify.add_argument("--top-k", type=int, default=5)
    identify.add_argument("--threshold", type=float)
    identify.add_argument("--max-faces", type=int, default=10)

    verify = commands.add_parser("verify", parents=[common], help="same person in A and B? (exit 3: no)")
    verify.add_argument("image_a", metavar="A")
    verify.add_argument("image_b", metavar="B")
    verify.add_argument("--threshold", type=float)

    usage = commands.add_parser("usage", parents=[common], help="metered usage")
    usage.add_argument("--from", dest="from_", metavar="DATE")
    usage.add_argument("--to", metavar="DATE")
    usage.add_argument("--granularity", choices=["day", "month"])
    return parser


def main(
    argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    out, err = stdout or sys.stdout, stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    args.json = getattr(args, "json", False)
    try:
        with Client(api_key=args.api_key, base_url=args.base_url) as client:
            if args.command == "galleries":
                return cmd_galleries(client, args, out)
            if args.command == "subjects":
                return cmd_subjects(client, args, out)
            if args.command == "enroll":
                return cmd_enroll(client, args, out)
            if args.command == "enroll-dir":
                return cmd_enroll_dir(client, args, out, err)
            if args.command == "identify":
                return cmd_identify(client, args, out)
            if args.command == "verify":
                return cmd_verify(client, args, out)
            return cmd_usage(client, args, out)
    except UsageError as error:
        err.write(f"visor: error: {error}\n")
        return EXIT_USAGE
    except json.JSONDecodeError as error:  # what the SDK raises for a 2xx answer that is not JSON
        err.write(
            f"visor: the server's answer is not JSON ({error}); "
            "is the base URL the Visor API, not a proxy or a login page?\n"
        )
        return EXIT_API_ERROR
    except NotFoundError as error:
        err.write(f"visor: {error}\n")
        return EXIT_NOT_FOUND
    except VisorError as error:
        if error.status is None and "No API key" in str(error):
            err.write(f"visor: error: {error}\n")
            return EXIT_USAGE
        err.write(f"visor: {error}\n")
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        err.write("\nvisor: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
