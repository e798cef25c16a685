"""Building blocks of the mask-classifier training: the fit, the threshold and the augmentations."""

import numpy as np
import pytest

from tests.conftest import require_shared_data
from workers.pipeline.alignment import ARCFACE_TEMPLATE
from workers.training.train_mask_classifier import (
    PairedSamples,
    TrainingConfig,
    degrade,
    fit_logistic_regression,
    pick_images,
    pseudo_colour,
    threshold_at_false_positive_rate,
    training_pair,
    validation_threshold,
)


def test_logistic_regression_recovers_the_separating_direction():
    rng = np.random.default_rng(0)
    features = rng.normal(0, 1, (2000, 5)) * [1, 10, 1, 1, 0.1] + [0, 50, 0, 0, 3]
    true_weights = np.array([2.0, 0.0, -1.0, 0.0, 0.0])
    labels = (rng.random(2000) < 1 / (1 + np.exp(-(features @ true_weights - 0.5)))).astype(float)
    weights, bias = fit_logistic_regression(features, labels, penalties=1e-4)
    assert weights == pytest.approx(true_weights, abs=0.25)
    # The standardisation is folded back in: logits on the raw features match the true ones.
    logit_error = (features @ weights + bias) - (features @ true_weights - 0.5)
    assert np.abs(logit_error).mean() < 0.3


def test_threshold_meets_the_false_positive_rate():
    logits = np.random.default_rng(1).normal(0, 1, 1000)
    for rate in (0.0, 0.015, 0.02, 0.5):
        threshold = threshold_at_false_positive_rate(logits, rate)
        assert np.mean(logits >= threshold) <= rate
        assert np.mean(logits >= threshold - 1e-3) > rate - 0.002  # and is not needlessly strict


def test_pseudo_colour_keeps_brightness_and_adds_skin_chroma():
    gray = np.tile(np.linspace(40, 220, 112, dtype=np.uint8), (112, 1))
    crop = np.repeat(gray[..., None], 3, axis=2)
    tinted = pseudo_colour(crop, ARCFACE_TEMPLATE, np.random.default_rng(2))
    assert tinted.shape == crop.shape
    assert tinted.dtype == np.uint8
    red, blue = tinted[..., 2].astype(int), tinted[..., 0].astype(int)
    assert (red - blue)[:, 40:100].mean() > 15, "skin is redder than it is blue"
    luma = tinted.astype(float) @ [0.114, 0.587, 0.299]
    assert np.abs(luma - gray).mean() < 12
    assert np.array_equal(tinted, pseudo_colour(crop, ARCFACE_TEMPLATE, np.random.default_rng(2)))


def test_degrade_keeps_shape_and_type():
    crop = np.random.default_rng(3).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    for seed in range(10):
        out = degrade(crop, np.random.default_rng(seed))
        assert out.shape == crop.shape
        assert out.dtype == np.uint8


@pytest.mark.shared_data
def test_training_pair_masks_only_the_second_crop():
    from workers.pipeline.masks import MaskSynthesizer

    synthesizer = MaskSynthesizer(require_shared_data("mask_templates"))
    image = np.full((250, 250, 3), 120, np.uint8)
    image[80:200, 70:180] = 170  # a flat "face": any strong change in the mouth area is the mask
    landmarks = ARCFACE_TEMPLATE * 1.4 + 47
    config = TrainingConfig(landmark_noise=0.0)
    plain, masked = training_pair(image, landmarks, False, synthesizer, np.random.default_rng(4), config)
    mouth = (slice(86, 98), slice(46, 66))
    assert np.abs(masked[mouth].astype(int) - plain[mouth].astype(int)).mean() > 8
    again = training_pair(image, landmarks, False, synthesizer, np.random.default_rng(4), config)
    assert np.array_equal(again[0], plain)
    assert np.array_equal(again[1], masked)


@pytest.mark.shared_data
def test_pick_images_caps_photos_per_person_and_stays_in_the_split():
    require_shared_data("lfw_a")
    from collections import Counter

    from workers.training.datasets import split_of

    images = pick_images("val", 300, 2, np.random.default_rng(5))
    assert len(images) == 300
    assert max(Counter(image.identity for image in images).values()) <= 2
    assert {split_of(image.identity) for image in images} == {"val"}
    assert images == pick_images("val", 300, 2, np.random.default_rng(5))


def test_validation_threshold_holds_every_condition():
    rng = np.random.default_rng(7)
    coloured = np.tile(np.arange(400) % 2 == 0, 2)
    augmented = PairedSamples(np.zeros((800, 1)), np.repeat([0, 1], 400), coloured)
    as_is = PairedSamples(np.zeros((400, 1)), np.repeat([0, 1], 200), np.zeros(400, bool))
    # Grayscale augmented negatives score highest: they must set the threshold.
    augmented_logits = rng.normal(0, 1, 800) + np.where(~coloured & (augmented.labels == 0), 2.0, 0.0)
    logits = {"augmented": augmented_logits, "as_is": rng.normal(0, 1, 400)}
    threshold = validation_threshold(logits, {"augmented": augmented, "as_is": as_is}, 0.02)
    for kind, samples in (("augmented", augmented), ("as_is", as_is)):
        for condition in (samples.coloured, ~samples.coloured):
            negatives = logits[kind][(samples.labels == 0) & condition]
            if len(negatives):
                assert np.mean(negatives >= threshold) <= 0.02
    gray_negatives = augmented_logits[(augmented.labels == 0) & ~coloured]
    assert np.mean(gray_negatives >= threshold) > 0.01, "the binding condition sits at the rate"
