"""The committed mask classifier: loading, the predict contract, and accuracy on real and synthetic faces.

The accuracy tests use ../shared/data (LFW-a test identities, RWMFD, mask templates) and skip when it is
absent; nothing from there is stored in the repository.
"""

import numpy as np
import pytest

from tests.workers.pipeline.conftest import face_photo, require_shared_data
from workers.pipeline.alignment import ALIGNED_SIZE, align_face
from workers.pipeline.detection import FaceDetector
from workers.pipeline.errors import ModelUnavailable
from workers.pipeline.mask_classifier import (
    DEFAULT_WEIGHTS_PATH,
    MaskClassifier,
    feature_matrix,
    lower_face_features,
)


@pytest.fixture(scope="module")
def classifier() -> MaskClassifier:
    return MaskClassifier.load()


@pytest.fixture(scope="module")
def detector(pipeline_config) -> FaceDetector:
    return FaceDetector(pipeline_config.detection)


def random_crops(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (ALIGNED_SIZE, ALIGNED_SIZE, 3), dtype=np.uint8) for _ in range(count)]


def test_committed_weights_load_and_match_the_features(classifier):
    assert DEFAULT_WEIGHTS_PATH.is_file()
    assert classifier.weights.shape == lower_face_features(random_crops(1)[0]).shape
    assert np.isfinite(classifier.weights).all()
    assert np.isfinite(classifier.bias)
    held_out = classifier.metadata["metrics"]["test"]["as_is"]
    assert held_out["false_positive_rate"] <= 0.02


def test_predict_returns_one_probability_per_crop(classifier):
    crops = [*random_crops(5), np.zeros((ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)]
    predictions = classifier.predict(crops, np.zeros((6, 128), np.float32))
    assert len(predictions) == 6
    for masked, probability in predictions:
        assert isinstance(masked, bool)
        assert 0.0 <= probability <= 1.0
        assert masked == (probability >= 0.5)
    assert classifier.predict([], np.zeros((0, 128), np.float32)) == []


def test_predict_rejects_bad_input(classifier):
    with pytest.raises(ValueError, match="embeddings"):
        classifier.predict(random_crops(2), np.zeros((3, 128), np.float32))
    with pytest.raises(ValueError, match="112x112"):
        classifier.predict([np.zeros((100, 100, 3), np.uint8)])


def test_features_are_deterministic():
    crops = random_crops(3, seed=4)
    assert np.array_equal(feature_matrix(crops), feature_matrix(crops))


def test_missing_or_foreign_weights_are_a_deployment_fault(tmp_path):
    with pytest.raises(ModelUnavailable):
        MaskClassifier.load(tmp_path / "absent.json")
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"format": "something-else", "weights": [], "bias": 0}')
    with pytest.raises(ModelUnavailable, match="this code reads"):
        MaskClassifier.load(foreign)


def test_save_and_load_round_trip(tmp_path, classifier):
    path = tmp_path / "copy.json"
    classifier.save(path)
    copy = MaskClassifier.load(path)
    crops = random_crops(4, seed=9)
    assert np.allclose(
        [p for _, p in copy.predict(crops)], [p for _, p in classifier.predict(crops)], atol=1e-5
    )


def test_unmasked_cartoon_face_is_not_called_masked(classifier, detector):
    image = face_photo()
    (face,) = detector.detect(image)
    ((masked, probability),) = classifier.predict([align_face(image, face.landmark_array())])
    assert not masked, f"plain generated face called masked (p={probability:.2f})"


@pytest.mark.shared_data
def test_lfw_faces_with_synthetic_masks_are_told_apart(classifier, detector):
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
    false_positives = sum(m for m, _ in classifier.predict(plain))
    detected = sum(m for m, _ in classifier.predict(masked))
    assert false_positives <= 3, f"{false_positives}/{len(plain)} plain LFW faces called masked"
    assert detected >= 0.9 * len(masked), f"only {detected}/{len(masked)} masked faces recognised"


@pytest.mark.shared_data
def test_real_masked_photos_are_recognised(classifier, detector):
    """The largest face of 40 RWMFD photos (real masks of every kind)."""
    require_shared_data("rwmfd_part1")
    from workers.training.datasets import read_bgr, rwmfd_images

    crops = []
    for path in rwmfd_images()[::30][:40]:
        photo = read_bgr(path)
        faces = detector.detect(photo)
        if faces:
            crops.append(align_face(photo, max(faces, key=lambda f: f.bbox.area).landmark_array()))
    detected = sum(m for m, _ in classifier.predict(crops))
    assert detected >= 0.9 * len(crops), f"only {detected}/{len(crops)} real masked faces recognised"
