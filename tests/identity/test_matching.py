import uuid

import pytest

from identity.matching import default_threshold, rank_subjects
from identity.search import TemplateHit
from workers.pipeline import matching as mask_aware
from workers.pipeline.scoring import calibration_for

SFACE = "sface-2021dec-0ba9fbfa01b5"
ALICE, BOB = uuid.UUID(int=1), uuid.UUID(int=2)


def hit(subject, kind, similarity):
    return TemplateHit(subject_id=subject, face_id=uuid.uuid4(), kind=kind, similarity=similarity)


def test_an_unmasked_probe_is_scored_by_its_best_original_cosine_alone():
    hits = [hit(ALICE, "original", 0.61), hit(ALICE, "synthetic_mask", 0.9), hit(BOB, "original", 0.2)]

    alice, bob = rank_subjects(hits, model_version=SFACE, probe_masked=False, top_k=5)

    assert (alice.subject_id, alice.similarity, alice.matched_template_kind) == (ALICE, 0.61, "original")
    assert alice.confidence == pytest.approx(calibration_for(SFACE).confidence(0.61), abs=1e-6)
    assert bob.similarity == 0.2


def test_a_masked_probe_fuses_original_and_synthetic_templates_on_their_own_scales():
    # Masked-vs-synthetic-masked similarities run high for everybody (the masks look alike): Bob's one high
    # synthetic similarity must not outrank Alice, who is close on both kinds.
    hits = [
        hit(ALICE, "original", 0.45),
        hit(ALICE, "synthetic_mask", 0.50),
        hit(BOB, "original", 0.05),
        hit(BOB, "synthetic_mask", 0.55),
    ]

    ranked = rank_subjects(hits, model_version=SFACE, probe_masked=True, top_k=5)

    assert [candidate.subject_id for candidate in ranked] == [ALICE, BOB]
    assert ranked[1].matched_template_kind == "synthetic_mask"
    assert ranked[0].similarity > default_threshold(SFACE, operation="identify", probe_masked=True)
    assert ranked[1].similarity < default_threshold(SFACE, operation="verify", probe_masked=True)


def test_top_k_keeps_the_best_subjects():
    hits = [hit(uuid.UUID(int=n), "original", n / 100) for n in range(1, 30)]

    ranked = rank_subjects(hits, model_version=SFACE, probe_masked=False, top_k=3)

    assert [candidate.subject_id.int for candidate in ranked] == [29, 28, 27]


def test_identify_thresholds_are_stricter_than_verify_ones_in_both_mask_conditions():
    for probe_masked in (False, True):
        assert default_threshold(SFACE, operation="identify", probe_masked=probe_masked) > default_threshold(
            SFACE, operation="verify", probe_masked=probe_masked
        )


@pytest.mark.parametrize("probe_masked", [False, True])
def test_the_identify_threshold_keeps_a_stranger_unmatched_in_99_percent_of_searches_at_any_gallery_size(
    probe_masked,
):
    calibration = mask_aware.calibration_for(SFACE)

    def threshold(subjects: int) -> float:
        return default_threshold(
            SFACE, operation="identify", probe_masked=probe_masked, gallery_subjects=subjects
        )

    # Up to 100 subjects: 1e-4 per comparison; beyond, 1% over all the gallery's subjects.
    assert threshold(1) == threshold(100) == calibration.threshold(probe_masked, 1e-4)
    assert threshold(5_000) == calibration.threshold(probe_masked, 0.01 / 5_000)
    assert threshold(100) < threshold(1_000) < threshold(10_000) < threshold(100_000)


def test_a_model_without_calibration_is_refused_rather_than_guessed():
    with pytest.raises(KeyError, match="calibration"):
        rank_subjects([hit(ALICE, "original", 0.5)], model_version="unknown-000", probe_masked=False, top_k=1)
