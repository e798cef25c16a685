"""The landmark measurement on a few shared-data photos (skips without ../shared/data)."""

from tests.conftest import require_shared_data
from workers.evaluation.landmarks import measure
from workers.pipeline.config import DEFAULT_MODEL_DIR


def test_refined_points_are_nearer_the_plain_photos_upright_and_tilted_and_every_set_is_measured():
    report = measure(
        photos=24,
        lfw_dir=require_shared_data("lfw_a"),
        rwmfd_dir=require_shared_data("rwmfd_part1"),
        model_dir=DEFAULT_MODEL_DIR,
        rwmfd_photos=30,
    )

    errors = report["error_against_plain_photo_iod"]
    assert errors["yunet"]["faces"] >= 18
    assert errors["refined"]["mean"] < errors["yunet"]["mean"]
    assert errors["yunet_plain_jpeg_or_shift"]["mean"] < errors["yunet"]["mean"]
    tilted = report["error_against_plain_photo_iod_tilted_25"]
    assert tilted["yunet"]["faces"] >= 18
    assert tilted["refined"]["mean"] < tilted["yunet"]["mean"]
    perturbed = report["perturbation_disagreement_iod"]["rwmfd_real_masks"]
    assert perturbed["yunet"]["faces"] == perturbed["refined"]["faces"] > 0
    # The same face found again after a turn, scale and shift, its points mapped back: a few pixels off, not
    # another face or a wrong mapping (all RWMFD: YuNet's median 0.11 IOD, the refiner's 0.05).
    assert perturbed["refined"]["median_face"] < 0.15
    assert perturbed["yunet"]["median_face"] < 0.25
    for data_set in ("lfw_synthetic_masks", "rwmfd_real_masks"):
        measured = report["mirror_disagreement_iod"][data_set]
        assert measured["yunet"]["faces"] == measured["refined"]["faces"] > 0
        assert len(measured["refined"]["mean_per_point"]) == 5
