import json

import numpy as np
import pytest

from workers.pipeline.calibrate import (
    Pair,
    far_threshold,
    fit_logistic,
    random_impostor_pairs,
    read_pairs,
    ten_fold_accuracy,
)
from workers.pipeline.config import EMBEDDING_MODELS
from workers.pipeline.matching import calibration_for as mask_aware_calibration_for
from workers.pipeline.scoring import (
    SFACE_2021DEC_CALIBRATION,
    SimilarityCalibration,
    calibration_for,
    cosine_similarity,
    match_confidence,
)
from workers.pipeline.student import MODELS_MANIFEST


def test_cosine_similarity_of_vectors_and_matrices():
    a = np.array([3.0, 0.0])
    b = np.array([[0.0, 2.0], [-1.0, 0.0], [5.0, 5.0]])

    assert cosine_similarity(a, a * 7) == pytest.approx(1.0)
    np.testing.assert_allclose(cosine_similarity(a, b), [0.0, -1.0, np.sqrt(0.5)], atol=1e-6)
    assert cosine_similarity(b, b).shape == (3, 3)
    np.testing.assert_allclose(np.diag(cosine_similarity(b, b)), 1.0, atol=1e-6)
    assert cosine_similarity(np.zeros(2), a) == 0.0


def test_confidence_is_a_monotonic_probability():
    calibration = SimilarityCalibration(
        "m", slope=30.0, intercept=-9.0, threshold_far_1e3=0.4, threshold_far_1e4=0.5
    )
    similarities = np.linspace(-1, 1, 201)

    confidences = calibration.confidence(similarities)

    assert np.all(np.diff(confidences) >= 0)
    assert np.all(np.diff(calibration.confidence(np.linspace(-0.2, 0.8, 101))) > 0)
    assert confidences.min() >= 0.0
    assert confidences.max() <= 1.0
    assert calibration.confidence(0.3) == pytest.approx(0.5)
    assert calibration.confidence(-1e6) == 0.0  # no overflow warning, no NaN


def test_sface_calibration_is_consistent():
    calibration = calibration_for(SFACE_2021DEC_CALIBRATION.model_version)

    assert calibration.threshold_for_far(1e-4) > calibration.threshold_for_far(1e-3)
    # An impostor is below 1e-3 FAR territory with good confidence; a same-person match is near certain.
    assert match_confidence(calibration.threshold_for_far(1e-3), calibration.model_version) > 0.8
    assert match_confidence(0.0, calibration.model_version) < 0.01
    with pytest.raises(ValueError, match="false-accept"):
        calibration.threshold_for_far(1e-2)


def test_unknown_model_has_no_calibration():
    with pytest.raises(KeyError, match="calibrate"):
        calibration_for("student-v1-000000000000")


def test_logistic_fit_recovers_known_parameters():
    rng = np.random.default_rng(5)
    similarities = rng.uniform(-0.2, 0.8, 40_000)
    labels = (rng.uniform(size=similarities.size) < 1 / (1 + np.exp(-(20 * similarities - 6)))).astype(float)

    slope, intercept = fit_logistic(similarities, labels)

    assert slope == pytest.approx(20, rel=0.08)
    assert intercept == pytest.approx(-6, rel=0.08)


def test_logistic_fit_assumes_equal_priors_whatever_the_class_balance():
    rng = np.random.default_rng(3)
    genuine, impostor = rng.normal(0.6, 0.1, 600), rng.normal(0.1, 0.1, 600)
    balanced = fit_logistic(np.concatenate([genuine, impostor]), np.r_[np.ones(600), np.zeros(600)])

    # Three times as many genuine pairs, the same distributions: the same calibrated probability.
    skewed = fit_logistic(
        np.concatenate([genuine, genuine, genuine, impostor]), np.r_[np.ones(1800), np.zeros(600)]
    )

    assert skewed == pytest.approx(balanced, rel=1e-6)


def test_far_threshold_lets_through_the_allowed_fraction():
    impostors = np.random.default_rng(6).permutation(np.arange(100_000, dtype=np.float32) / 100_000)

    for far in (1e-3, 1e-4):
        threshold = far_threshold(impostors, far)
        assert (impostors >= threshold).sum() == round(far * impostors.size)


def test_ten_fold_accuracy_of_separable_and_random_scores():
    labels = np.tile(np.repeat([True, False], 30), 10)
    separable = np.where(labels, 0.8, 0.1) + np.random.default_rng(7).normal(0, 0.05, labels.size)
    random_scores = np.random.default_rng(8).uniform(size=labels.size)

    assert ten_fold_accuracy(separable, labels) == (1.0, 0.0)
    assert ten_fold_accuracy(random_scores, labels)[0] < 0.65


def test_impostor_pairs_never_pair_an_identity_with_itself():
    identities = np.array(["a", "a", "b", "c", "c", "c"])

    first, second = random_impostor_pairs(identities, 500, seed=0)

    assert len(first) == len(second) == 500
    assert np.all(identities[first] != identities[second])


def test_pairs_file_is_read_in_the_lfw_format(tmp_path):
    pairs_file = tmp_path / "pairs.txt"
    pairs_file.write_text("1\t1\nAnn\t1\t3\nAnn\t2\tBob_Smith\t12\n")

    assert read_pairs(pairs_file) == [
        Pair("Ann/Ann_0001.jpg", "Ann/Ann_0003.jpg", genuine=True),
        Pair("Ann/Ann_0002.jpg", "Bob_Smith/Bob_Smith_0012.jpg", genuine=False),
    ]


def pinned_model_versions() -> dict[str, str]:
    """The model_version each selectable embedding model reports, from the SHA-256 infra/models.json pins
    for its file (no model file needed)."""
    manifest = json.loads(MODELS_MANIFEST.read_text())
    pinned = {
        spec["file"]: spec["sha256"] for spec in [*manifest["models"].values(), *manifest["built"].values()]
    }
    return {
        name: f"{config.model_name}-{pinned[config.model_path.name][:12]}"
        for name, config in EMBEDDING_MODELS.items()
    }


@pytest.mark.parametrize(("model", "model_version"), sorted(pinned_model_versions().items()))
def test_every_selectable_model_has_its_similarity_and_mask_aware_calibration(model, model_version):
    assert calibration_for(model_version).model_version == model_version
    assert mask_aware_calibration_for(model_version).model_version == model_version
