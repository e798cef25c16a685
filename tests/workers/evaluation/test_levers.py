"""The mask levers the API calls: mask-aware subject scoring (pure) and mask-augmented enrollment."""

from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from tests.workers.pipeline.conftest import face_photo
from workers.evaluation.identification import Gallery
from workers.evaluation.tune import SplitData, fit_mask_aware
from workers.pipeline.enrollment_augmentation import (
    SYNTHETIC_MASK_KIND,
    AugmentationConfig,
    masked_variant_crops,
    synthetic_mask_templates,
    variant_seed,
)
from workers.pipeline.matching import (
    MASKED,
    ORIGINAL,
    SYNTHETIC_MASK,
    UNMASKED,
    ImpostorStats,
    MaskAwareCalibration,
    calibration_for,
    cohort_normalise,
    cohort_shift,
    fuse_kind_scores,
    max_similarity_subjects,
    score_subjects,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
TEMPLATES = REPO_ROOT.parent / "shared" / "data" / "mask_templates"

CALIBRATION = MaskAwareCalibration(
    model_version="test-model",
    impostor={
        (UNMASKED, ORIGINAL): ImpostorStats(0.10, 0.10),
        (UNMASKED, SYNTHETIC_MASK): ImpostorStats(0.12, 0.10),
        (MASKED, ORIGINAL): ImpostorStats(0.10, 0.08),
        (MASKED, SYNTHETIC_MASK): ImpostorStats(0.55, 0.05),
    },
    fused={MASKED: ImpostorStats(0.0, 0.8), UNMASKED: ImpostorStats(0.0, 0.9)},
    synthetic_weight=0.5,
    thresholds={(MASKED, 1e-3): 0.40, (UNMASKED, 1e-3): 0.36},
)


def test_unmasked_probe_keeps_its_raw_cosine_and_ignores_synthetic_templates():
    hits = [("a", ORIGINAL, 0.42), ("a", SYNTHETIC_MASK, 0.95), ("b", ORIGINAL, 0.30)]
    scores = score_subjects(False, hits, CALIBRATION)
    assert [s.subject_id for s in scores] == ["a", "b"]
    assert scores[0].score == pytest.approx(0.42)
    assert scores[0].best_kind == ORIGINAL
    assert scores[1].score == pytest.approx(0.30)


def test_masked_probe_fuses_standardised_kinds_onto_the_reference_scale():
    # z_o = (0.5 - 0.1) / 0.08 = 5; z_s = (0.65 - 0.55) / 0.05 = 2;
    # fused = (0.5 * 5 + 0.5 * 2 - 0) / 0.8 = 4.375
    [score] = score_subjects(True, [("a", ORIGINAL, 0.5), ("a", SYNTHETIC_MASK, 0.65)], CALIBRATION)
    assert score.score == pytest.approx(0.10 + 0.10 * 4.375)
    assert score.best_similarity == pytest.approx(0.65)
    assert score.best_kind == SYNTHETIC_MASK


def test_a_subject_with_one_kind_uses_that_kinds_standard_score():
    [only_synthetic] = score_subjects(True, [("a", SYNTHETIC_MASK, 0.60)], CALIBRATION)
    assert only_synthetic.score == pytest.approx(0.10 + 0.10 * 1.0)
    [only_original] = score_subjects(True, [("a", ORIGINAL, 0.26)], CALIBRATION)
    assert only_original.score == pytest.approx(0.10 + 0.10 * 2.0)


def test_mask_aware_scoring_stops_inflated_synthetic_impostors_winning():
    # The impostor's masked-vs-synthetic 0.62 is ordinary for impostors (z = 1.4); the true subject's
    # masked-vs-original 0.45 is far above impostor level (z = 4.4). The naive max picks the impostor.
    hits = [
        ("impostor", SYNTHETIC_MASK, 0.62),
        ("impostor", ORIGINAL, 0.15),
        ("true", SYNTHETIC_MASK, 0.60),
        ("true", ORIGINAL, 0.45),
    ]
    assert max_similarity_subjects(hits)[0].subject_id == "impostor"
    assert score_subjects(True, hits, CALIBRATION)[0].subject_id == "true"


def test_several_templates_of_a_kind_keep_the_best_and_unknown_kinds_are_refused():
    hits = [("a", SYNTHETIC_MASK, 0.50), ("a", SYNTHETIC_MASK, 0.70), ("a", ORIGINAL, 0.1)]
    [score] = score_subjects(True, hits, CALIBRATION)
    assert score.best_similarity == pytest.approx(0.70)
    with pytest.raises(ValueError, match="unknown template kind"):
        score_subjects(True, [("a", "selfie", 0.5)], CALIBRATION)
    assert score_subjects(True, [], CALIBRATION) == []


def test_vectorised_fusion_matches_score_subjects():
    rng = np.random.default_rng(3)
    original, synthetic = rng.uniform(-0.2, 0.9, 50), rng.uniform(0.2, 0.95, 50)
    synthetic[::7] = np.nan
    vectorised = fuse_kind_scores(original, synthetic, probe_masked=True, calibration=CALIBRATION)
    for i in range(50):
        hits = [(i, ORIGINAL, original[i])] + (
            [] if np.isnan(synthetic[i]) else [(i, SYNTHETIC_MASK, synthetic[i])]
        )
        [one] = score_subjects(True, hits, CALIBRATION)
        assert one.score == pytest.approx(vectorised[i])


def test_cohort_shift_is_the_mean_of_the_next_best_scores():
    scores = np.array([[0.9, 0.1, 0.5, 0.3, -np.inf], [0.2, np.nan, np.nan, np.nan, np.nan]])
    shift = cohort_shift(scores, 2)
    assert shift[0] == pytest.approx((0.5 + 0.3) / 2)
    assert np.isnan(shift[1])  # a single subject has no cohort
    assert cohort_shift(scores, 10)[0] == pytest.approx((0.5 + 0.3 + 0.1) / 3)


def test_cohort_normalise_shifts_every_score_and_keeps_the_order():
    results = score_subjects(
        False, [("a", ORIGINAL, 0.7), ("b", ORIGINAL, 0.3), ("c", ORIGINAL, 0.1)], CALIBRATION
    )
    normalised = cohort_normalise(results, cohort_size=2, offset=0.15)
    assert [r.subject_id for r in normalised] == ["a", "b", "c"]
    assert normalised[0].score == pytest.approx(0.7 - 0.2 + 0.15)
    assert normalised[0].best_similarity == pytest.approx(0.7)
    assert cohort_normalise(results[:1], cohort_size=2, offset=0.15) == results[:1]


def test_the_shipped_calibration_matches_the_enrollment_default():
    calibration = calibration_for("sface-2021dec-0ba9fbfa01b5")
    assert calibration.synthetic_templates == AugmentationConfig().variants
    for probe_masked in (True, False):
        assert calibration.threshold(probe_masked, 1e-4) > calibration.threshold(probe_masked, 1e-3)
    with pytest.raises(KeyError, match="no mask-aware calibration"):
        calibration_for("some-other-model-000000000000")


def test_thresholds_are_per_mask_condition():
    assert CALIBRATION.threshold(True, 1e-3) == 0.40
    assert CALIBRATION.threshold(False, 1e-3) == 0.36


def test_thresholds_below_the_calibrated_rates_follow_a_gaussian_tail_through_the_two_lowest():
    calibration = calibration_for("visor-masked-student-30bab81a449b")
    quantile = NormalDist().inv_cdf
    at_1e3, at_1e4 = calibration.threshold(True, 1e-3), calibration.threshold(True, 1e-4)
    slope = (at_1e4 - at_1e3) / (quantile(1 - 1e-4) - quantile(1 - 1e-3))

    at_1e6 = calibration.threshold(True, 1e-6)

    assert at_1e6 == pytest.approx(at_1e4 + slope * (quantile(1 - 1e-6) - quantile(1 - 1e-4)))
    assert at_1e3 < at_1e4 < at_1e6 < calibration.threshold(True, 1e-7)
    # Protocol (c), docs/accuracy.md: 5,196 enrolled subjects reach FPIR 1% at 0.504 (measured).
    assert calibration.threshold(True, 0.01 / 5196) == pytest.approx(0.504, abs=0.01)


def test_rates_above_the_calibrated_ones_are_not_guessed():
    with pytest.raises(KeyError):
        CALIBRATION.threshold(True, 1e-2)
    with pytest.raises(KeyError):
        CALIBRATION.threshold(True, 0)


def _toy_splits() -> tuple[SplitData, SplitData]:
    """Synthetic embeddings where every masked face shares a 'mask' direction, as real ones do."""
    rng = np.random.default_rng(0)
    dim, subjects, per_subject = 32, 120, 4
    identity = rng.normal(size=(subjects, dim))
    mask_direction = rng.normal(size=dim) * 1.5

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    def split(offset):
        ids = identity[offset : offset + subjects // 2]
        n = len(ids)
        original = unit(ids + rng.normal(scale=0.7, size=ids.shape))
        synthetic = unit(ids[:, None] + mask_direction + rng.normal(scale=0.7, size=(n, 2, dim)))
        probe_ids = np.repeat(np.arange(n), per_subject)
        plain = unit(ids[probe_ids] + rng.normal(scale=0.9, size=(len(probe_ids), dim)))
        masked = unit(
            ids[probe_ids] * 0.7 + mask_direction + rng.normal(scale=0.9, size=(len(probe_ids), dim))
        )
        names = [f"s{offset + i}" for i in range(n)]
        return SplitData(Gallery(names, original, synthetic), masked, plain, [names[i] for i in probe_ids])

    return split(0), split(subjects // 2)


def test_fit_recovers_statistics_and_keeps_the_false_accept_rate():
    train, val = _toy_splits()
    calibration, report = fit_mask_aware("toy", train, val, synthetic=2)
    # Masked-vs-synthetic impostors share the mask direction: their mean is far above masked-vs-original.
    assert (
        calibration.impostor[(MASKED, SYNTHETIC_MASK)].mean
        > calibration.impostor[(MASKED, ORIGINAL)].mean + 0.2
    )
    assert 0.0 <= calibration.synthetic_weight <= 1.0
    assert set(report["weight_search_on_val"]) == {round(w, 2) for w in np.linspace(0, 1, 11)}
    # The masked threshold at FAR 1e-3 lets at most 0.1% of the training impostors through.
    from workers.evaluation.tune import _masked_scores

    _, impostors = _masked_scores(train, calibration, 2, probe_masked=True)
    assert (impostors >= calibration.threshold(True, 1e-3)).mean() <= 1e-3
    assert calibration.threshold(False, 1e-4) >= calibration.threshold(False, 1e-3)


def test_a_fit_without_synthetic_templates_scores_masked_probes_on_their_own_scale():
    from workers.evaluation.tune import _masked_scores

    train, val = _toy_splits()
    calibration, report = fit_mask_aware("toy", train, val, synthetic=0)

    assert calibration.synthetic_templates == 0
    assert not calibration.uses_synthetic(True)
    assert set(calibration.impostor) == {(MASKED, ORIGINAL), (UNMASKED, ORIGINAL)}
    assert 0 < report["val"]["tar_far_1e-3"] <= 1
    _, impostors = _masked_scores(train, calibration, 0, probe_masked=True)
    assert (impostors >= calibration.threshold(True, 1e-3)).mean() <= 1e-3
    # Their impostor scores are mapped onto the unmasked-vs-original scale, so one score means one thing.
    assert impostors.mean() == pytest.approx(calibration.reference.mean, abs=1e-4)
    assert impostors.std() == pytest.approx(calibration.reference.std, rel=1e-3)


# -- enrollment augmentation --------------------------------------------------------------------------------


def test_augmentation_config_is_validated_and_seeds_are_stable():
    with pytest.raises(ValueError, match="unknown mask types"):
        AugmentationConfig(mask_types=("balaclava",))
    with pytest.raises(ValueError, match="variants must be"):
        AugmentationConfig(variants=-1)
    assert variant_seed("abc", 0) == variant_seed("abc", 0)
    assert variant_seed("abc", 0) != variant_seed("abc", 1)
    assert variant_seed(7, 2) == variant_seed("7", 2)


@pytest.fixture(scope="module")
def synthesizer():
    if not (TEMPLATES / "masks.cfg").is_file():
        pytest.skip(f"{TEMPLATES} is absent: mask synthesis needs the shared mask templates")
    from workers.pipeline.masks import MaskSynthesizer

    return MaskSynthesizer(TEMPLATES)


@pytest.fixture(scope="module")
def detected_face():
    from tests.workers.pipeline.conftest import MODEL_DIR
    from workers.pipeline.config import PipelineConfig
    from workers.pipeline.detection import FaceDetector

    if not (MODEL_DIR / "face_detection_yunet_2023mar.onnx").exists():
        pytest.skip("the YuNet model is not in var/models")
    image = face_photo(640, 480, 90)
    [face] = FaceDetector(PipelineConfig.for_model_dir(MODEL_DIR).detection).detect(image)
    return image, face


def test_variants_are_deterministic_prefixes_and_cover_the_lower_face(synthesizer, detected_face):
    image, face = detected_face
    four = masked_variant_crops(
        image,
        face.landmark_array(),
        face.bbox,
        synthesizer,
        seed="photo-1",
        config=AugmentationConfig(variants=4),
    )
    two = masked_variant_crops(
        image,
        face.landmark_array(),
        face.bbox,
        synthesizer,
        seed="photo-1",
        config=AugmentationConfig(variants=2),
    )
    assert [t for t, _ in four] == ["surgical_blue", "surgical", "KN95", "cloth_coloured"]
    for (type_a, crop_a), (type_b, crop_b) in zip(two, four[:2], strict=False):
        assert type_a == type_b
        assert np.array_equal(crop_a, crop_b)
    from workers.pipeline.alignment import align_face

    plain = align_face(image, face.landmark_array()).astype(np.int16)
    for _, crop in four:
        assert crop.shape == (112, 112, 3)
        changed = np.abs(crop.astype(np.int16) - plain).sum(axis=2) > 30
        assert changed[75:105, 35:77].mean() > 0.5  # mouth and chin covered
        assert changed[30:55, 20:92].mean() < 0.05  # eyes untouched
    other = masked_variant_crops(
        image,
        face.landmark_array(),
        face.bbox,
        synthesizer,
        seed="photo-2",
        config=AugmentationConfig(variants=4),
    )
    assert not all(np.array_equal(a, b) for (_, a), (_, b) in zip(other, four, strict=True))


def test_drawing_on_the_face_region_equals_drawing_on_the_whole_photo(synthesizer, detected_face):
    image, face = detected_face
    from workers.pipeline.alignment import align_face

    config = AugmentationConfig(variants=1)
    [(mask_type, crop)] = masked_variant_crops(
        image, face.landmark_array(), face.bbox, synthesizer, seed=5, config=config
    )
    rng = np.random.default_rng(variant_seed(5, 0))
    whole = synthesizer.apply(image, face.landmark_array(), face.bbox, rng=rng, mask_type=mask_type)
    reference = align_face(whole, face.landmark_array())
    assert np.abs(crop.astype(np.int16) - reference).mean() < 1.0


def test_synthetic_mask_templates_embed_every_variant_in_one_call(synthesizer, detected_face):
    image, face = detected_face
    calls = []

    class FakeEmbedder:
        def embed(self, crops):
            calls.append(len(crops))
            return np.ones((len(crops), 4), np.float32) / 2

    templates = synthetic_mask_templates(
        image,
        face.landmark_array(),
        face.bbox,
        synthesizer,
        FakeEmbedder(),
        seed="x",
        config=AugmentationConfig(variants=3),
    )
    assert calls == [3]
    assert [t.kind for t in templates] == [SYNTHETIC_MASK_KIND] * 3
    assert templates[0].embedding.dtype == np.float32
    none = synthetic_mask_templates(
        image,
        face.landmark_array(),
        face.bbox,
        synthesizer,
        FakeEmbedder(),
        seed="x",
        config=AugmentationConfig(variants=0),
    )
    assert none == []
    assert calls == [3]


def test_the_printed_calibration_is_the_source_of_every_shipped_one():
    from workers.evaluation.tune import calibration_source
    from workers.pipeline import matching

    namespace = vars(matching)
    for calibration in matching.CALIBRATIONS.values():
        assert eval(calibration_source(calibration), namespace) == calibration
