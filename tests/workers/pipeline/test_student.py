"""The masked-face student: SFace's graph patched with the committed fine-tuned tensors.

Needs the third-party SFace file in var/models (skipped with a message when it is absent); never torch.
"""

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from workers.pipeline.alignment import ARCFACE_TEMPLATE
from workers.pipeline.config import DEFAULT_MODEL_DIR, SFACE_FILE, embedding_config
from workers.pipeline.embedding import FaceEmbedder
from workers.pipeline.student import (
    DELTA_FILE,
    STUDENTS,
    CommittedStudent,
    StudentBuildError,
    build_student_model,
    load_delta,
    patch_initializers,
    pinned_sha256,
)

TEACHER = DEFAULT_MODEL_DIR / SFACE_FILE


@pytest.fixture(scope="module")
def teacher_path() -> Path:
    if not TEACHER.is_file():
        pytest.skip(f"{TEACHER} is absent: the student is built from the SFace model (fetch models first)")
    return TEACHER


@pytest.fixture(scope="module", params=STUDENTS, ids=lambda student: student.name)
def student(request) -> CommittedStudent:
    return request.param


@pytest.fixture(scope="module")
def student_path(teacher_path, student, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("student") / student.file
    build_student_model(teacher_path=teacher_path, delta_path=student.delta_path, output_path=output)
    return output


def aligned_faces(masked: bool) -> np.ndarray:
    """Four generated 112x112 'aligned' faces (features at the ArcFace template points), optionally with a
    mask-like patch over nose and mouth."""
    crops = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        crop = np.full((112, 112, 3), rng.integers(40, 90), np.uint8)
        skin = tuple(int(v) for v in rng.integers([90, 120, 150], [190, 210, 240]))
        cv2.ellipse(crop, (56, 66), (int(rng.integers(36, 44)), 52), 0, 0, 360, skin, -1, cv2.LINE_AA)
        eye_r, eye_l, nose, mouth_r, mouth_l = ((round(x), round(y)) for x, y in ARCFACE_TEMPLATE.tolist())
        for x, y in (eye_r, eye_l):
            cv2.ellipse(crop, (x, y), (7, 4), 0, 0, 360, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(crop, (x, y), 3, (40, 30, 20), -1, cv2.LINE_AA)
            cv2.line(crop, (x - 9, y - 10), (x + 9, y - 11), (40, 50, 70), 2, cv2.LINE_AA)
        cv2.line(crop, (nose[0], nose[1] - 14), nose, (110, 130, 180), 2, cv2.LINE_AA)
        cv2.line(crop, mouth_r, mouth_l, (80, 80, 170), 3, cv2.LINE_AA)
        if masked:
            outline = np.array([[22, 64], [56, 60], [90, 64], [84, 100], [56, 110], [28, 100]], np.int32)
            cv2.fillPoly(crop, [outline], (225, 190, 140), cv2.LINE_AA)
        crops.append(crop)
    return np.stack(crops)


def test_committed_delta_is_small_fp16_and_names_its_teacher(student):
    assert student.delta_path.is_file(), (
        f"{student.delta_path} is missing (workers.training.distill writes it)"
    )
    assert student.delta_path.stat().st_size < 6 * 1024 * 1024
    teacher_sha256, deltas = load_delta(student.delta_path)
    assert len(teacher_sha256) == 64
    assert deltas
    assert all(d.dtype == np.float16 for d in deltas.values())
    # The big projection stays SFace's, so no third-party-sized tensor is committed.
    assert "pre_fc1_weight" not in deltas


def test_build_is_deterministic_and_gives_the_pinned_model(teacher_path, student, student_path, tmp_path):
    again = tmp_path / "again.onnx"
    sha256 = build_student_model(teacher_path=teacher_path, delta_path=student.delta_path, output_path=again)
    assert sha256 == hashlib.sha256(student_path.read_bytes()).hexdigest() == pinned_sha256(student.name)
    assert again.read_bytes() == student_path.read_bytes()
    assert sha256 != hashlib.sha256(teacher_path.read_bytes()).hexdigest()


STUDENT_MODEL_NAME = "visor-masked-student"


def test_student_embeddings_are_normalised_deterministic_and_not_the_teachers(teacher_path, student_path):
    student = FaceEmbedder(student_path, model_name=STUDENT_MODEL_NAME)
    teacher = FaceEmbedder(teacher_path)
    assert student.embedding_dim == teacher.embedding_dim == 128
    assert student.model_version.startswith(f"{STUDENT_MODEL_NAME}-")
    for masked in (False, True):
        crops = aligned_faces(masked)
        embeddings = student.embed(crops)
        assert embeddings.shape == (4, 128)
        assert embeddings.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(embeddings, student.embed(crops))
        agreement = np.sum(embeddings * teacher.embed(crops), axis=1)
        # Fine-tuned, not replaced: close to SFace, but not SFace.
        assert agreement.max() < 0.9999
        assert agreement.min() > 0.3


def test_the_first_student_shares_sfaces_lower_face_activations(teacher_path, tmp_path):
    """Its distillation left conv_1 .. conv_12 as they were (student-v2 fine-tunes from conv_8 on; the mask
    classifier was measured again on its activations, docs/distillation.md)."""
    student_path = tmp_path / "student.onnx"
    build_student_model(teacher_path=teacher_path, delta_path=DELTA_FILE, output_path=student_path)
    student = FaceEmbedder(student_path, lower_face_tensor="conv_12_relu")
    teacher = FaceEmbedder(teacher_path, lower_face_tensor="conv_12_relu")
    crops = aligned_faces(True)

    np.testing.assert_array_equal(student.describe(crops).lower_face, teacher.describe(crops).lower_face)


@pytest.mark.parametrize(
    ("model", "file", "name", "flip_average"),
    [
        ("student", "visor-masked-student.onnx", STUDENT_MODEL_NAME, False),
        ("student-v2-flip", "visor-masked-student-v2.onnx", "visor-masked-student-v2-flip", True),
    ],
)
def test_a_students_embedding_config_is_sfaces_input_contract_with_its_own_file(
    model, file, name, flip_average
):
    config = embedding_config(model, DEFAULT_MODEL_DIR)
    assert config.model_path == DEFAULT_MODEL_DIR / file
    assert config.model_name == name
    assert config.flip_average is flip_average
    assert (config.channel_order, config.input_mean, config.input_scale) == ("rgb", 0.0, 1.0)
    assert config.lower_face_tensor == "conv_12_relu"


def test_refuses_another_teacher(tmp_path):
    impostor = tmp_path / "not-sface.onnx"
    impostor.write_bytes(b"\x08\x06")  # a valid protobuf header, but not the file the delta was trained on
    with pytest.raises(StudentBuildError, match="SHA-256"):
        build_student_model(teacher_path=impostor, delta_path=DELTA_FILE, output_path=tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


def test_patching_without_deltas_is_the_identity(teacher_path):
    model = teacher_path.read_bytes()
    assert patch_initializers(model, {}) == model
    with pytest.raises(StudentBuildError, match="no initializers"):
        patch_initializers(model, {"no_such_tensor": np.zeros(1, np.float16)})
    with pytest.raises(StudentBuildError, match="shape"):
        patch_initializers(model, {"conv_1_relu_gamma": np.zeros((3, 1, 1), np.float16)})
