"""The `visor` CLI through its main(), against the live server: tables, --json, exit codes, enroll-dir."""

import io
import json

import cv2
import numpy as np
import pytest
from visor.cli import STATE_FILE, main

from tests.face_images import encode, face_photo, person_image

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def visor_cli(visor_server, monkeypatch):
    monkeypatch.setenv("VISOR_API_KEY", visor_server.key)
    monkeypatch.setenv("VISOR_BASE_URL", visor_server.url)

    def run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), stdout=out, stderr=err)
        return code, out.getvalue(), err.getvalue()

    return run


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
