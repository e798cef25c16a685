"""The distillation script's evaluation arithmetic and its masked training views (the training itself needs
torch)."""

import numpy as np
import pytest

from tests.conftest import require_shared_data
from workers.pipeline.alignment import align_face
from workers.pipeline.config import DEFAULT_MODEL_DIR
from workers.pipeline.intake import decode_image
from workers.pipeline.masks import MaskSynthesizer
from workers.training.distill import FaceSet, MaskedViews, Models, _rank1_hits, mcnemar


def test_rank1_hits_mark_the_probes_whose_nearest_gallery_face_is_the_same_person():
    gallery = np.eye(3, dtype=np.float32)
    probes = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.6, 0.5, 0.0]], np.float32)

    hits = _rank1_hits(gallery, np.array(["ada", "bob", "cy"]), probes, np.array(["ada", "cy", "bob"]))

    assert hits.tolist() == [True, True, False]


def test_mcnemar_counts_the_discordant_probes_and_gives_the_exact_two_sided_p_value():
    a = np.array([True] * 20 + [False] * 8 + [True] * 50)
    b = np.array([False] * 20 + [True] * 8 + [True] * 50)

    result = mcnemar(a, b)

    assert (result["only_a_right"], result["only_b_right"]) == (20, 8)
    assert result["p_value"] == pytest.approx(0.0357, abs=5e-4)
    assert mcnemar(a, a)["p_value"] == 1.0


@pytest.fixture(scope="module")
def models():
    require_shared_data("lfw_a")
    return Models(DEFAULT_MODEL_DIR, threads=1)


def _plain_faces(models: Models, lfw_dir, paths: list[str]) -> FaceSet:
    """What prepare_faces holds for these photos, without its cache."""
    images = [decode_image((lfw_dir / "lfw" / path).read_bytes()) for path in paths]
    faces = [models.central_face(image) for image in images]
    landmarks = np.stack([face.landmark_array() for face in faces]).astype(np.float32)
    crops = np.stack([align_face(image, points) for image, points in zip(images, landmarks, strict=True)])
    return FaceSet(
        paths=np.array(paths),
        identities=np.array([path.split("/")[0] for path in paths]),
        landmarks=landmarks,
        bboxes=np.array([[f.bbox.x, f.bbox.y, f.bbox.width, f.bbox.height] for f in faces], np.float32),
        crops=crops,
        teacher=np.zeros((len(paths), 128), np.float32),  # MaskedViews does not read it
        missing=(),
    )


def test_masks_drawn_on_the_photo_cover_the_lower_face_of_a_crop_aligned_again_at_the_same_place(models):
    lfw_dir = require_shared_data("lfw_a")
    templates = require_shared_data("mask_templates")
    paths = [
        "Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
        "Abdullah_Gul/Abdullah_Gul_0001.jpg",
        "Adam_Sandler/Adam_Sandler_0001.jpg",
    ]
    faces = _plain_faces(models, lfw_dir, paths)
    views = MaskedViews(MaskSynthesizer(templates), on_photo=True, models=models, lfw_dir=lfw_dir)

    masked = views.crops(faces, slice(0, 3), seed=0, variant=0)

    assert masked.shape == faces.crops.shape
    assert masked.dtype == np.uint8
    difference = np.abs(masked.astype(np.int16) - faces.crops.astype(np.int16)).mean(axis=(2, 3))
    brow_and_eyes, mouth_and_chin = difference[:, 20:45].mean(axis=1), difference[:, 80:105].mean(axis=1)
    # Aligned again, the eyes land about where they were: on these photos the rows above the eyes differ by
    # 3-10 grey levels from the plain crop's, and by 13-24 when the plain crop is shifted by 6 px.
    assert np.all(brow_and_eyes < 12)
    # ... but from the masked photo's own points, not the plain crop masked in place (which differs by 0).
    assert np.all(brow_and_eyes > 1)
    assert np.all(mouth_and_chin > 2 * brow_and_eyes)
    assert np.array_equal(views.crops(faces, slice(0, 3), seed=0, variant=0), masked)
    assert not np.array_equal(views.crops(faces, slice(0, 3), seed=0, variant=1), masked)
