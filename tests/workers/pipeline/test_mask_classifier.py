"""The committed mask classifier: loading, the predict contract, and accuracy on real and synthetic faces.

The accuracy tests use ../shared/data (LFW-a test identities, RWMFD, mask templates) and skip when it is
absent; nothing from there is stored in the repository.
"""

import numpy as np
import pytest

from tests.workers.pipeline.conftest import require_shared_data
from workers.pipeline.alignment import ALIGNED_SIZE, align_face
from workers.pipeline.detection import FaceDetector
from workers.pipeline.embedding import FaceEmbedder
from workers.pipeline.errors import ModelUnavailable
from workers.pipeline.mask_classifier import DEFAULT_WEIGHTS_PATH, LOWER_FACE_TENSOR, MaskClassifier


@pytest.fixture(scope="module")
def classifier() -> MaskClassifier:
    return MaskClassifier.load()


@pytest.fixture(scope="module")
def detector(pipeline_config) -> FaceDetector:
    return FaceDetector(pipeline_config.detection)


@pytest.fixture(scope="module")
def embedder(pipeline_config) -> FaceEmbedder:
    return FaceEmbedder.from_config(pipeline_config.embedding)


def random_crops(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, ALIGNED_SIZE, ALIGNED_SIZE, 3), dtype=np.uint8)


def called_masked(classifier, embedder, crops) -> list[bool]:
    return [masked for masked, _ in classifier.predict(embedder.describe(crops).lower_face)]


def test_committed_weights_load_and_fit_the_embedding_models_feature_map(
    classifier, embedder, pipeline_config
):
    assert DEFAULT_WEIGHTS_PATH.is_file()
    assert pipeline_config.embedding.lower_face_tensor == classifier.lower_face_tensor == LOWER_FACE_TENSOR
    assert classifier.weights.shape == embedder.describe(random_crops(1)).lower_face.shape[1:]
    assert np.isfinite(classifier.weights).all()
    assert np.isfinite(classifier.bias)
    held_out = classifier.metadata["metrics"]["test"]["as_is"]
    assert held_out["false_positive_rate"] <= 0.02


def test_predict_returns_one_probability_per_face(classifier, embedder):
    crops = np.concatenate([random_crops(5), np.zeros((1, ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)])
    predictions = classifier.predict(embedder.describe(crops).lower_face)
    assert len(predictions) == 6
    for masked, probability in predictions:
        assert isinstance(masked, bool)
        assert 0.0 <= probability <= 1.0
        assert masked == (probability >= 0.5)
    assert classifier.predict(np.zeros((0, 512), np.float32)) == []


def test_predict_rejects_features_of_another_shape(classifier):
    with pytest.raises(ValueError, match="lower-face activations"):
        classifier.predict(np.zeros((2, 128), np.float32))
    with pytest.raises(ValueError, match="lower-face activations"):
        classifier.predict(np.zeros(512, np.float32))


def test_missing_or_foreign_weights_are_a_deployment_fault(tmp_path):
    with pytest.raises(ModelUnavailable):
        MaskClassifier.load(tmp_path / "absent.json")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(
        '{"format": "visor-mask-classifier/1", "features": "lower-face-v1", "weights": [], "bias": 0}'
    )
    with pytest.raises(ModelUnavailable, match="this code reads"):
        MaskClassifier.load(foreign)


def test_save_and_load_round_trip(tmp_path, classifier, embedder):
    path = tmp_path / "copy.json"
    classifier.save(path)
    copy = MaskClassifier.load(path)
    lower_face = embedder.describe(random_crops(4, seed=9)).lower_face
    np.testing.assert_allclose(
        copy.probabilities(lower_face), classifier.probabilities(lower_face), atol=1e-9
    )


@pytest.mark.shared_data
def test_lfw_faces_with_synthetic_masks_are_told_apart(classifier, embedder, detector):
    """Test identities only; masks drawn on the full photo (not the aligned crop training used)."""
    require_shared_data("lfw_a")
    from workers.pipeline.masks import MaskSynthesizer
    from workers.training.datasets import lfw_images, read_bgr

    synthesizer = MaskSynthesizer(require_shared_data("mask_templates"))
    rng = np.random.default_rng(11)
    images = lfw_images("test")
    plain, masked = [], []
    for index in rng.permutation(len(images))[:50]:
        photo = read_bgr(images[index].path)
        faces = detector.detect(photo)
        if not faces:
            continue
        face = max(faces, key=lambda f: f.bbox.area)
        landmarks = face.landmark_array()
        plain.append(align_face(photo, landmarks))
        masked.append(align_face(synthesizer.apply(photo, landmarks, face.bbox, rng=rng), landmarks))
    assert len(plain) >= 45
    false_positives = sum(called_masked(classifier, embedder, plain))
    detected = sum(called_masked(classifier, embedder, masked))
    assert false_positives <= 3, f"{false_positives}/{len(plain)} plain LFW faces called masked"
    assert detected >= 0.9 * len(masked), f"only {detected}/{len(masked)} masked faces recognised"


@pytest.mark.shared_data
def test_real_masked_photos_are_recognised(classifier, embedder, detector):
    """The largest face of 40 RWMFD photos (real masks of every kind)."""
    require_shared_data("rwmfd_part1")
    from workers.training.datasets import read_bgr, rwmfd_images

    crops = []
    for path in rwmfd_images()[::30][:40]:
        photo = read_bgr(path)
        faces = detector.detect(photo)
        if faces:
            crops.append(align_face(photo, max(faces, key=lambda f: f.bbox.area).landmark_array()))
    detected = sum(called_masked(classifier, embedder, crops))
    assert detected >= 0.95 * len(crops), f"only {detected}/{len(crops)} real masked faces recognised"
