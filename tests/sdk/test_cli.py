"""The `visor` CLI through its main(), against the live server: tables, --json, exit codes, enroll-dir."""

import io
import json
import threading
from concurrent.futures import as_completed
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
import pytest
import visor.cli
from visor.cli import STATE_FILE, main

from tests.face_images import CartoonPerson, encode, face_photo, person_image

pytestmark = pytest.mark.django_db(transaction=True)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def visor_cli(visor_server, monkeypatch):
    monkeypatch.setenv("VISOR_API_KEY", visor_server.key)
    monkeypatch.setenv("VISOR_BASE_URL", visor_server.url)
    return run_cli


@pytest.fixture
def login_page():
    """A server that answers every request 200 with an HTML page, as a captive proxy does; its `.url` and
    the `.paths` it was asked for."""

    class LoginPage(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.paths.append(self.path)
            page = b"<html><body>Sign in to continue</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), LoginPage)
    server.paths = []
    server.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def face_counts(visor_cli, gallery: str) -> dict[str, int]:
    code, out, err = visor_cli("subjects", "list", "--gallery", gallery, "--json")
    assert code == 0, err
    return {s["external_id"]: s["face_count"] for s in json.loads(out)}


def enroll_state(photos) -> dict[str, dict]:
    (files,) = json.loads((photos / STATE_FILE).read_text())["galleries"].values()
    return files


def test_galleries_subjects_enroll_identify_and_verify(visor_cli, tmp_path):
    for name, image in {
        "ann.jpg": person_image(11),
        "ann-2.jpg": person_image(11, offset=(12, -8)),
        "ben.jpg": person_image(12),
        "nobody.jpg": person_image(13),
    }.items():
        (tmp_path / name).write_bytes(image)

    code, out, _ = visor_cli("galleries", "create", "Staff", "--json")
    assert code == 0
    gallery_id = json.loads(out)["id"]
    code, out, _ = visor_cli("galleries", "list")
    assert code == 0
    assert out.splitlines()[0].split() == ["ID", "NAME", "SUBJECTS", "FACES", "CREATED"]
    assert gallery_id in out

    code, out, _ = visor_cli("enroll", "--gallery", "Staff", "--subject", "ann", str(tmp_path / "ann.jpg"))
    assert code == 0, out
    assert "enrolled" in out
    code, out, _ = visor_cli("subjects", "create", "--gallery", gallery_id, "ben", "--json")
    assert code == 0
    assert json.loads(out)["external_id"] == "ben"
    code, out, _ = visor_cli("subjects", "list", "--gallery", "Staff", "--json")
    assert sorted(s["external_id"] for s in json.loads(out)) == ["ann", "ben"]

    code, out, _ = visor_cli("identify", "--gallery", "Staff", str(tmp_path / "ann-2.jpg"))
    assert code == 0
    assert "ann" in out.splitlines()[1]
    code, out, _ = visor_cli(
        "identify", "--gallery", "Staff", str(tmp_path / "nobody.jpg"), "--json", "--threshold", "0.995"
    )
    assert code == 3
    assert json.loads(out)["faces"][0]["match"] is None

    code, out, _ = visor_cli("verify", str(tmp_path / "ann.jpg"), str(tmp_path / "ann-2.jpg"), "--json")
    assert code == 0
    assert json.loads(out)["match"] is True
    strict = ("--threshold", "0.995")  # cartoon faces all look alike to the model
    assert visor_cli("verify", str(tmp_path / "ann.jpg"), str(tmp_path / "ben.jpg"), *strict)[0] == 3

    code, _, err = visor_cli("identify", "--gallery", "Nope", str(tmp_path / "ann.jpg"))
    assert code == 3
    assert "Nope" in err
    assert visor_cli("identify", "--gallery", "Staff", str(tmp_path / "missing.jpg"))[0] == 2
    assert visor_cli("identify")[0] == 2
    code, _, err = visor_cli("galleries", "delete", "00000000-0000-0000-0000-000000000000")
    assert code == 3
    code, out, _ = visor_cli("galleries", "delete", "Staff")
    assert code == 0


def test_an_api_error_exits_1(visor_cli, monkeypatch):
    monkeypatch.setenv("VISOR_API_KEY", "vsr_wrong")
    code, _, err = visor_cli("galleries", "list")
    assert code == 1
    assert "401" in err


def test_enroll_dir_uploads_concurrently_summarises_rejections_and_resumes(visor_cli, tmp_path):
    photos = tmp_path / "photos"
    for person, images in {
        "p1": [person_image(21), person_image(21, offset=(10, 0))],
        "p2": [person_image(22)],
        "p3": [encode(np.full((480, 640, 3), 200, dtype=np.uint8))],
    }.items():
        (photos / person).mkdir(parents=True)
        for index, image in enumerate(images):
            (photos / person / f"{index}.jpg").write_bytes(image)
    (photos / "README.txt").write_text("not a person folder")
    assert visor_cli("galleries", "create", "Crowd")[0] == 0

    code, out, err = visor_cli("enroll-dir", "--gallery", "Crowd", str(photos), "--workers", "3")
    assert code == 0, out + err
    assert "[4/4]" in err
    assert "NO_FACE" in out
    state = json.loads((photos / STATE_FILE).read_text())
    (files,) = state["galleries"].values()
    assert sorted(files) == ["p1/0.jpg", "p1/1.jpg", "p2/0.jpg", "p3/0.jpg"]
    assert files["p3/0.jpg"] == {"status": "rejected", "reasons": ["NO_FACE"]}

    (photos / "p2" / "1.jpg").write_bytes(person_image(22, offset=(0, 12)))
    code, out, err = visor_cli("enroll-dir", "--gallery", "Crowd", str(photos), "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["files"], summary["skipped"], summary["enrolled"], summary["rejected"]) == (5, 4, 1, 0)

    code, out, _ = visor_cli("subjects", "list", "--gallery", "Crowd", "--json")
    faces = {s["external_id"]: s["face_count"] for s in json.loads(out)}
    assert faces == {"p1": 2, "p2": 2, "p3": 0}


def test_enroll_dir_retries_rejected_photos_under_a_more_lenient_quality_filter(visor_cli, tmp_path):
    photos = tmp_path / "photos"
    (photos / "p1").mkdir(parents=True)
    (photos / "p1" / "0.jpg").write_bytes(encode(cv2.GaussianBlur(face_photo(size=110), (0, 0), 4)))
    assert visor_cli("galleries", "create", "Soft")[0] == 0

    first = visor_cli("enroll-dir", "--gallery", "Soft", str(photos), "--json")
    again = visor_cli(
        "enroll-dir",
        "--gallery",
        "Soft",
        str(photos),
        "--json",
        "--retry-rejected",
        "--quality-filter",
        "low",
    )

    assert json.loads(first[1])["rejected"] == 1, first
    assert json.loads(again[1])["enrolled"] == 1, again
    state = json.loads((photos / STATE_FILE).read_text())
    (files,) = state["galleries"].values()
    assert files["p1/0.jpg"]["status"] == "enrolled"


def test_enroll_goes_on_past_a_file_the_server_refuses_and_exits_1(visor_cli, tmp_path):
    (tmp_path / "a.jpg").write_bytes(person_image(41))
    (tmp_path / "x.heic").write_bytes(b"\x00\x00\x00\x18ftypheic not decodable here")
    (tmp_path / "c.jpg").write_bytes(person_image(41, offset=(10, 0)))
    assert visor_cli("galleries", "create", "Team")[0] == 0

    code, out, err = visor_cli(
        "enroll",
        "--gallery",
        "Team",
        "--subject",
        "ann",
        *(str(tmp_path / f) for f in ["a.jpg", "x.heic", "c.jpg"]),
    )

    assert code == 1, out + err
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:]}
    assert rows == {
        str(tmp_path / "a.jpg"): "enrolled",
        str(tmp_path / "x.heic"): "failed",
        str(tmp_path / "c.jpg"): "enrolled",
    }
    assert "Invalid image" in out
    assert face_counts(visor_cli, "Team") == {"ann": 2}


def test_ctrl_c_during_enroll_dir_cancels_the_queued_uploads_and_records_those_that_ran(
    visor_cli, tmp_path, monkeypatch
):
    photos = tmp_path / "photos"
    for seed in [11, 12, 21, 22]:  # faces the other tests enroll
        (photos / f"p{seed}").mkdir(parents=True)
        (photos / f"p{seed}" / "0.jpg").write_bytes(person_image(seed))
    assert visor_cli("galleries", "create", "Crowd")[0] == 0

    def ctrl_c_after_the_first_upload(futures):
        yield next(as_completed(futures))
        raise KeyboardInterrupt

    monkeypatch.setattr(visor.cli, "as_completed", ctrl_c_after_the_first_upload)
    code, _, err = visor_cli("enroll-dir", "--gallery", "Crowd", str(photos), "--workers", "1")

    assert code == 130
    assert "interrupted" in err
    recorded = enroll_state(photos)
    assert 1 <= len(recorded) < 4  # the first upload, and the one running at Ctrl-C; never the queued ones
    assert all(outcome["status"] == "enrolled" for outcome in recorded.values())
    enrolled = {external_id for external_id, faces in face_counts(visor_cli, "Crowd").items() if faces}
    assert enrolled == {relpath.split("/")[0] for relpath in recorded}


def test_enroll_dir_counts_a_photo_deleted_mid_run_as_failed_and_enrolls_the_others(
    visor_cli, tmp_path, monkeypatch
):
    photos = tmp_path / "photos"
    (photos / "p1").mkdir(parents=True)
    (photos / "p1" / "0.jpg").write_bytes(person_image(61))
    (photos / "p1" / "1.jpg").write_bytes(person_image(61, offset=(10, 0)))
    assert visor_cli("galleries", "create", "Crowd")[0] == 0
    find_or_create_subject = visor.cli.find_or_create_subject

    def and_delete_a_photo_once_listed(*args, **kwargs):
        (photos / "p1" / "1.jpg").unlink(missing_ok=True)
        return find_or_create_subject(*args, **kwargs)

    monkeypatch.setattr(visor.cli, "find_or_create_subject", and_delete_a_photo_once_listed)
    code, out, err = visor_cli("enroll-dir", "--gallery", "Crowd", str(photos), "--json")

    assert code == 1, err
    summary = json.loads(out)
    assert (summary["enrolled"], summary["failed"]) == (1, 1)
    assert summary["failures"][0]["file"] == "p1/1.jpg"
    assert "No such file" in summary["failures"][0]["error"]
    assert sorted(enroll_state(photos)) == ["p1/0.jpg"]  # a failed file is retried by the next run


def test_enroll_dir_skips_hidden_and_bmp_files_and_never_uploads_an_invalid_image_twice(visor_cli, tmp_path):
    photos = tmp_path / "photos"
    (photos / "p1" / ".thumbnails").mkdir(parents=True)
    (photos / "p2").mkdir()
    (photos / "p1" / "0.jpg").write_bytes(person_image(71))
    (photos / "p1" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")  # AppleDouble fork
    (photos / "p1" / ".thumbnails" / "0.jpg").write_bytes(person_image(71, offset=(10, 0)))
    (photos / "p1" / "scan.bmp").write_bytes(
        encode(face_photo(size=110, person=CartoonPerson.from_seed(71)), "BMP")
    )
    (photos / "p2" / "broken.jpg").write_bytes(b"not an image at all")
    assert visor_cli("galleries", "create", "Crowd")[0] == 0

    code, out, err = visor_cli("enroll-dir", "--gallery", "Crowd", str(photos), "--json")
    again = visor_cli("enroll-dir", "--gallery", "Crowd", str(photos), "--json")

    assert code == 0, out + err
    summary = json.loads(out)
    assert (summary["files"], summary["enrolled"], summary["rejected"], summary["failed"]) == (2, 1, 1, 0)
    assert enroll_state(photos)["p2/broken.jpg"] == {"status": "rejected", "reasons": ["UNSUPPORTED_FORMAT"]}
    assert again[0] == 0, again
    rerun = json.loads(again[1])
    assert (rerun["skipped"], rerun["enrolled"], rerun["rejected"], rerun["failed"]) == (2, 0, 0, 0)
    assert face_counts(visor_cli, "Crowd") == {"p1": 1, "p2": 0}


@pytest.mark.parametrize(
    "state_file",
    [
        pytest.param(lambda path: path.write_text('{"galleries": {"g": {"0.jpg": {'), id="not JSON"),
        pytest.param(lambda path: path.write_text("[]"), id="a JSON array"),
        pytest.param(lambda path: path.write_text('{"galleries": {"g": []}}'), id="galleries not objects"),
        pytest.param(lambda path: path.mkdir(), id="a directory"),
    ],
)
def test_a_state_file_enroll_dir_cannot_read_is_a_one_line_usage_error(visor_cli, tmp_path, state_file):
    photos = tmp_path / "photos"
    (photos / "p1").mkdir(parents=True)
    (photos / "p1" / "0.jpg").write_bytes(person_image(81))
    state_file(photos / STATE_FILE)
    before = (photos / STATE_FILE).read_text() if (photos / STATE_FILE).is_file() else None
    assert visor_cli("galleries", "create", "Crowd")[0] == 0

    code, _, err = visor_cli("enroll-dir", "--gallery", "Crowd", str(photos))

    assert code == 2
    assert err.startswith("visor: error: ")
    assert str(photos / STATE_FILE) in err
    assert err.count("\n") == 1
    assert face_counts(visor_cli, "Crowd") == {}
    if (photos / STATE_FILE).is_file():
        assert (photos / STATE_FILE).read_text() == before, "kept as it was, not overwritten"


def test_a_directory_enroll_dir_cannot_save_its_state_in_fails_before_uploading_anything(visor_cli, tmp_path):
    photos = tmp_path / "photos"
    (photos / "p1").mkdir(parents=True)
    (photos / "p1" / "0.jpg").write_bytes(person_image(82))
    # A read-only directory, as far as root (who ignores chmod) is concerned: the state is written here first.
    (photos / STATE_FILE).with_suffix(".tmp").mkdir()
    assert visor_cli("galleries", "create", "Crowd")[0] == 0

    code, _, err = visor_cli("enroll-dir", "--gallery", "Crowd", str(photos))

    assert code == 2
    assert err.startswith(f"visor: error: cannot write {photos / STATE_FILE}")
    assert err.count("\n") == 1
    assert face_counts(visor_cli, "Crowd") == {}


def test_a_directory_given_as_an_image_is_a_usage_error_naming_it(tmp_path):
    code, _, err = run_cli("--api-key", "vsr_unused", "identify", "--gallery", "Staff", str(tmp_path))

    assert code == 2
    assert err == f"visor: error: not a file: {tmp_path}\n"


@pytest.mark.parametrize("metadata", ["{not json", "[1, 2]"])
def test_metadata_that_is_not_a_json_object_is_a_usage_error_before_anything_is_sent(login_page, metadata):
    server = ("--api-key", "vsr_unused", "--base-url", login_page.url)
    code, _, err = run_cli(*server, "subjects", "create", "--gallery", "Staff", "ann", "--metadata", metadata)

    assert code == 2
    assert err.startswith("visor: error: --metadata ")
    assert login_page.paths == []


def test_an_answer_that_is_not_json_is_an_api_error_not_a_usage_error(login_page):
    code, _, err = run_cli("--api-key", "vsr_unused", "--base-url", login_page.url, "galleries", "list")

    assert code == 1
    assert err.startswith("visor: the server's answer is not JSON")
    assert err.count("\n") == 1
