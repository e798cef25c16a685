import hashlib
import re
import shutil
from dataclasses import replace

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from tests.workers.pipeline.conftest import face_photo
from workers.pipeline.alignment import align_face
from workers.pipeline.config import DEFAULT_MODEL_DIR, STUDENT_FILE, embedding_config
from workers.pipeline.detection import FaceDetector
from workers.pipeline.embedding import MAX_FACES_PER_RUN, FaceEmbedder
from workers.pipeline.errors import ModelUnavailable
from workers.pipeline.onnx_session import BATCH_DIMENSION_NAME


@pytest.fixture(scope="module")
def embedder(pipeline_config):
    return FaceEmbedder.from_config(pipeline_config.embedding)


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Three different 112x112 crops: structured noise, so every embedding differs."""
    rng = np.random.default_rng(3)
    noise = rng.integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    return np.stack([cv2.resize(tile, (112, 112), interpolation=cv2.INTER_CUBIC) for tile in noise])


@pytest.fixture
def session_runs(monkeypatch) -> list[tuple[list[str], tuple[int, ...]]]:
    """(requested output names, input shape) of every onnxruntime run during the test."""
    runs = []
    original_run = ort.InferenceSession.run

    def recording_run(self, output_names, feed, *args, **kwargs):
        runs.append((list(output_names), next(iter(feed.values())).shape))
        return original_run(self, output_names, feed, *args, **kwargs)

    monkeypatch.setattr(ort.InferenceSession, "run", recording_run)
    return runs


@pytest.fixture(scope="module")
def face_crop(pipeline_config) -> np.ndarray:
    photo = face_photo()
    face = FaceDetector(pipeline_config.detection).detect(photo)[0]
    return align_face(photo, face.landmark_array())


def test_embeddings_are_unit_length_float32(embedder, crops):
    embeddings = embedder.embed(list(crops))

    assert embeddings.shape == (3, 128)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    assert np.abs(embeddings @ embeddings.T - np.eye(3)).max() > 0.01  # different crops, different vectors


def test_same_input_gives_identical_output(embedder, crops):
    np.testing.assert_array_equal(embedder.embed(list(crops)), embedder.embed(list(crops)))


def test_batch_equals_one_at_a_time(embedder, crops):
    batch = embedder.embed(crops)
    singles = np.concatenate([embedder.embed([crop]) for crop in crops])

    np.testing.assert_allclose(batch, singles, atol=1e-5)


def test_a_batch_is_one_session_run(embedder, crops, session_runs):
    embedder.embed(np.concatenate([crops, crops]))

    assert [shape for _, shape in session_runs] == [(6, 3, 112, 112)]


@pytest.mark.parametrize("flip_average", [False, True], ids=["plain", "mirror-averaged"])
def test_a_crowd_is_embedded_in_runs_of_bounded_size_with_the_same_result(
    pipeline_config, crops, session_runs, flip_average
):
    embedder = FaceEmbedder.from_config(replace(pipeline_config.embedding, flip_average=flip_average))
    crowd = np.concatenate([crops] * 7)[: MAX_FACES_PER_RUN + 5]

    embeddings = embedder.embed(crowd)
    descriptors = embedder.describe(crowd)

    images_per_face = 2 if flip_average else 1
    sizes = [shape[0] for _, shape in session_runs]
    assert sizes == [images_per_face * n for n in (MAX_FACES_PER_RUN, 5, MAX_FACES_PER_RUN, 5)]
    one_at_a_time = [embedder.describe(crowd[i : i + 1]) for i in range(len(crowd))]
    np.testing.assert_allclose(embeddings, np.concatenate([d.embeddings for d in one_at_a_time]), atol=1e-5)
    np.testing.assert_array_equal(descriptors.embeddings, embeddings)
    np.testing.assert_allclose(
        descriptors.lower_face, np.concatenate([d.lower_face for d in one_at_a_time]), rtol=1e-4, atol=1e-5
    )


def test_the_pinned_batch_dimension_of_the_export_is_freed(embedder):
    session = embedder._loaded().session

    assert session.get_inputs()[0].shape[0] == BATCH_DIMENSION_NAME
    assert len(session.get_inputs()) == 1  # the weights are no longer listed as graph inputs


def test_no_crops_give_an_empty_matrix(embedder):
    assert embedder.embed([]).shape == (0, 128)


@pytest.mark.parametrize(
    "bad_crop",
    [np.zeros((112, 112, 3), np.float32), np.zeros((96, 96, 3), np.uint8), np.zeros((112, 112), np.uint8)],
)
def test_wrong_crops_are_refused(embedder, bad_crop):
    with pytest.raises(ValueError, match="aligned uint8 crops"):
        embedder.embed([bad_crop])


def test_matches_opencv_face_recognizer(embedder, face_crop, pipeline_config):
    """SFace wants RGB: OpenCV's FaceRecognizerSF.feature feeds it blobFromImage(swapRB=true)."""
    reference = cv2.FaceRecognizerSF.create(str(pipeline_config.embedding.model_path), "")
    expected = reference.feature(face_crop).ravel()
    expected /= np.linalg.norm(expected)
    bgr_fed = FaceEmbedder(pipeline_config.embedding.model_path, channel_order="bgr")

    assert float(embedder.embed([face_crop])[0] @ expected) > 0.9999
    assert float(bgr_fed.embed([face_crop])[0] @ expected) < 0.99  # the check can tell the two apart


def test_model_version_names_the_model_and_its_weights(embedder, pipeline_config):
    digest = hashlib.sha256(pipeline_config.embedding.model_path.read_bytes()).hexdigest()

    assert embedder.model_version == f"sface-2021dec-{digest[:12]}"


def test_another_model_file_gets_its_own_name_and_session(embedder, pipeline_config, tmp_path, crops):
    student_path = tmp_path / "student.onnx"
    shutil.copyfile(pipeline_config.embedding.model_path, student_path)

    student = FaceEmbedder(student_path, model_name="student-v1")

    assert re.fullmatch(r"student-v1-[0-9a-f]{12}", student.model_version)
    assert student._loaded().session is not embedder._loaded().session
    np.testing.assert_array_equal(student.embed(crops), embedder.embed(crops))


def test_one_session_per_model_and_process(embedder, pipeline_config):
    again = FaceEmbedder.from_config(pipeline_config.embedding)

    assert again._loaded().session is embedder._loaded().session


def test_missing_model_is_a_deployment_error(tmp_path):
    with pytest.raises(ModelUnavailable, match="cannot read model"):
        FaceEmbedder(tmp_path / "absent.onnx").embed([])


def test_describe_adds_the_lower_face_activations_to_the_same_embeddings_in_one_run(
    embedder, crops, session_runs
):
    descriptors = embedder.describe(crops)

    assert [names for names, _ in session_runs] == [["fc1", "conv_12_relu"]]
    np.testing.assert_array_equal(descriptors.embeddings, embedder.embed(crops))
    assert descriptors.lower_face.shape == (3, 512)
    assert descriptors.lower_face.dtype == np.float32
    assert (descriptors.lower_face >= 0).mean() > 0.5  # PReLU activations, mostly positive
    assert np.abs(descriptors.lower_face[0] - descriptors.lower_face[1]).max() > 0.01


def test_lower_face_is_the_mean_of_the_feature_map_from_the_nose_down(embedder, face_crop):
    session = embedder._loaded().session
    tensor = face_crop[np.newaxis, ..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    (feature_map,) = session.run(["conv_12_relu"], {session.get_inputs()[0].name: tensor})

    assert feature_map.shape == (1, 512, 14, 14)
    np.testing.assert_allclose(
        embedder.describe([face_crop]).lower_face[0], feature_map[0, :, 8:, :].mean(axis=(1, 2)), rtol=1e-5
    )


def test_describe_of_no_crops_is_empty(embedder):
    descriptors = embedder.describe([])
    assert descriptors.embeddings.shape == (0, 128)
    assert descriptors.lower_face.shape == (0, 512)


def test_a_lower_face_tensor_the_model_lacks_is_a_deployment_error(pipeline_config):
    embedder = FaceEmbedder(pipeline_config.embedding.model_path, lower_face_tensor="no_such_layer")
    with pytest.raises(ModelUnavailable, match="no_such_layer"):
        embedder.load()


def test_describe_needs_a_lower_face_tensor(pipeline_config, crops):
    with pytest.raises(ValueError, match="lower_face_tensor"):
        FaceEmbedder(pipeline_config.embedding.model_path).describe(crops)


@pytest.fixture(scope="module")
def mirror_averaging(pipeline_config) -> FaceEmbedder:
    return FaceEmbedder.from_config(replace(pipeline_config.embedding, flip_average=True))


def test_mirror_averaging_embeds_a_face_and_its_mirror_image_alike(mirror_averaging, embedder, face_crop):
    mirrored = np.ascontiguousarray(face_crop[:, ::-1])

    averaged, of_mirror = mirror_averaging.embed(np.stack([face_crop, mirrored]))

    np.testing.assert_allclose(averaged, of_mirror, atol=1e-5)
    assert float(embedder.embed([face_crop])[0] @ embedder.embed([mirrored])[0]) < 0.99  # SFace alone differs


def test_mirror_averaging_is_the_normalised_sum_of_both_embeddings_in_one_run(
    mirror_averaging, embedder, crops, session_runs
):
    averaged = mirror_averaging.embed(crops)

    assert [shape[0] for _, shape in session_runs] == [6]
    expected = embedder.embed(crops) + embedder.embed(np.ascontiguousarray(crops[:, :, ::-1]))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(averaged, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(averaged, axis=1), 1.0, atol=1e-6)


def test_mirror_averaging_describes_the_lower_face_of_the_crop_itself(mirror_averaging, embedder, crops):
    descriptors = mirror_averaging.describe(crops)

    np.testing.assert_array_equal(descriptors.embeddings, mirror_averaging.embed(crops))
    np.testing.assert_allclose(descriptors.lower_face, embedder.describe(crops).lower_face, rtol=1e-5)


def test_mirror_averaging_is_its_own_model_version():
    if not (DEFAULT_MODEL_DIR / STUDENT_FILE).is_file():
        pytest.skip("the student is built by `make install` (python -m workers.pipeline.student)")
    versions = {
        name: FaceEmbedder.from_config(embedding_config(name)).model_version
        for name in ("student", "student-flip")
    }

    assert versions["student-flip"] != versions["student"]
    assert versions["student-flip"].startswith("visor-masked-student-flip-")
    assert versions["student-flip"][-12:] == versions["student"][-12:]  # the same weights
