"""Mask synthesis on generated faces: placement, reproducibility, lighting, and the missing-templates path.

Template-dependent tests need ../shared/data/mask_templates and skip with a message when it is absent; the
geometry tests need nothing but numpy.
"""

import numpy as np
import pytest

from tests.workers.pipeline.conftest import draw_face, require_shared_data
from workers.pipeline.alignment import ALIGNED_SIZE, align_face
from workers.pipeline.detection import BoundingBox
from workers.pipeline.masks import (
    MASK_TYPES,
    MaskSynthesizer,
    MaskTemplatesUnavailable,
    derive_anchors,
    pose_for_yaw,
    templates_available,
    typical_box,
    yaw_ratio,
)

SIZE = 100  # draw_face's unit: the head is ~1.6 * SIZE wide
CENTRE = (200, 190)


def cartoon_face(brightness: float = 1.0, grayscale: bool = False) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A 400x400 cartoon face, its five landmarks in YuNet order and a YuNet-like (x, y, w, h) box."""
    image = np.full((400, 400, 3), 200, np.uint8)
    parts = draw_face(image, *CENTRE, SIZE)
    mouth_x, mouth_y = parts["mouth"]
    landmarks = np.array(
        [
            parts["image_left_eye"],  # the subject's right eye
            parts["image_right_eye"],
            parts["nose"],
            (mouth_x - 0.25 * SIZE, mouth_y),
            (mouth_x + 0.25 * SIZE, mouth_y),
        ],
        np.float64,
    )
    box = (CENTRE[0] - 0.8 * SIZE, CENTRE[1] - 0.8 * SIZE, 1.6 * SIZE, 1.85 * SIZE)
    image = np.clip(image * brightness, 0, 255).astype(np.uint8)
    if grayscale:
        image = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)
    return image, landmarks, box


@pytest.fixture(scope="module")
def synthesizer() -> MaskSynthesizer:
    return MaskSynthesizer(require_shared_data("mask_templates"))


def changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return np.abs(before.astype(int) - after.astype(int)).max(axis=2) > 0


# --- geometry (no templates needed) ---


def test_anchors_lie_between_nose_bridge_and_chin_inside_the_box():
    _, landmarks, box = cartoon_face()
    a, b, c, d, e, f = derive_anchors(landmarks, box)
    eye_y, nose_y, mouth_y = landmarks[0, 1], landmarks[2, 1], landmarks[3, 1]
    x, y, w, h = box
    assert eye_y < b[1] < nose_y, "b is on the nose bridge"
    assert [a[1], c[1]] == pytest.approx([nose_y, nose_y]), "a/c at nose-tip height"
    assert a[0] < landmarks[0, 0], "the cheek lies outside the eye"
    assert c[0] > landmarks[1, 0], "the cheek lies outside the eye"
    assert x <= a[0]
    assert c[0] <= x + w
    assert min(d[1], f[1]) > mouth_y, "the jaw points are below the mouth"
    assert d[0] > a[0], "the jaw is narrower than the cheeks"
    assert f[0] < c[0], "the jaw is narrower than the cheeks"
    assert mouth_y < e[1] <= y + h, "chin below the mouth, not below the box"
    assert abs(e[0] - CENTRE[0]) < 2


def test_yaw_picks_the_turned_template():
    _, landmarks, _ = cartoon_face()
    assert pose_for_yaw(yaw_ratio(landmarks)) == "frontal"
    turned_left, turned_right = landmarks.copy(), landmarks.copy()
    turned_left[2, 0] -= 0.25 * SIZE  # nose towards the eye on the image's left
    turned_right[2, 0] += 0.25 * SIZE
    assert pose_for_yaw(yaw_ratio(turned_left)) == "left"
    assert pose_for_yaw(yaw_ratio(turned_right)) == "right"


def test_typical_box_surrounds_the_landmarks():
    _, landmarks, _ = cartoon_face()
    x, y, w, h = typical_box(landmarks)
    assert x < landmarks[:, 0].min()
    assert x + w > landmarks[:, 0].max()
    assert y < landmarks[:, 1].min()
    assert y + h > landmarks[:, 1].max()


def test_missing_templates_raise_a_clear_error(tmp_path):
    assert not templates_available(tmp_path)
    with pytest.raises(MaskTemplatesUnavailable, match=r"masks\.cfg"):
        MaskSynthesizer(tmp_path)


# --- synthesis (needs the shared templates) ---


def test_every_template_and_texture_loads(synthesizer):
    assert len(synthesizer.templates) == 21
    assert all(t.rgba.shape[2] == 4 and t.anchors.shape == (6, 2) for t in synthesizer.templates.values())
    assert {t.pose for t in synthesizer.templates.values()} == {"frontal", "left", "right"}
    assert len(synthesizer.textures) == 27


@pytest.mark.parametrize("mask_type", sorted(MASK_TYPES))
def test_mask_covers_nose_to_chin_and_nothing_else(synthesizer, mask_type):
    image, landmarks, box = cartoon_face()
    out = synthesizer.apply(image, landmarks, box, rng=np.random.default_rng(3), mask_type=mask_type)
    assert out.shape == image.shape
    assert out.dtype == np.uint8
    diff = changed(image, out)
    rows, cols = np.nonzero(diff)
    x, y, w, h = box
    eye_y = landmarks[:2, 1].min()
    assert rows.min() > eye_y, "nothing changes at or above the eyes"
    assert rows.max() < y + 1.1 * h, "nothing changes far below the chin"
    # The gas respirator's filter cartridges really do stick out past the cheeks.
    side_margin = 0.45 * w if mask_type == "gas" else 0.15 * w
    assert cols.min() > x - side_margin, "nothing changes far left of the box"
    assert cols.max() < x + w + side_margin, "nothing changes far right of the box"
    # The mouth and the nose tip are hidden.
    mouth = np.round(landmarks[3:].mean(axis=0)).astype(int)
    nose = np.round(landmarks[2]).astype(int)
    for point in (mouth, nose + np.array([0, 5])):
        assert diff[point[1], point[0]], f"{mask_type} leaves {point} uncovered"


def test_bounding_box_objects_are_accepted(synthesizer):
    image, landmarks, (x, y, w, h) = cartoon_face()
    from_tuple = synthesizer.apply(image, landmarks, (x, y, w, h), rng=np.random.default_rng(5))
    from_box = synthesizer.apply(image, landmarks, BoundingBox(x, y, w, h), rng=np.random.default_rng(5))
    assert np.array_equal(from_tuple, from_box)


def test_same_seed_same_mask_and_types_differ(synthesizer):
    image, landmarks, box = cartoon_face()
    first = synthesizer.apply(image, landmarks, box, rng=np.random.default_rng(7))
    again = synthesizer.apply(image, landmarks, box, rng=np.random.default_rng(7))
    assert np.array_equal(first, again)
    by_type = {
        t: synthesizer.apply(image, landmarks, box, rng=np.random.default_rng(7), mask_type=t)
        for t in MASK_TYPES
    }
    names = sorted(by_type)
    for i, one in enumerate(names):
        for other in names[i + 1 :]:
            assert not np.array_equal(by_type[one], by_type[other]), f"{one} and {other} look identical"


def test_white_mask_is_dimmed_in_a_dark_photo(synthesizer):
    def mask_luma(brightness: float) -> float:
        image, landmarks, box = cartoon_face(brightness)
        out = synthesizer.apply(
            image, landmarks, box, rng=np.random.default_rng(1), mask_type="surgical", bridge_fraction=0.5
        )
        return float(out[changed(image, out)].mean())

    bright, dark = mask_luma(1.0), mask_luma(0.35)
    assert dark < 0.55 * bright, f"white mask glows in the dark photo ({dark:.0f} vs {bright:.0f})"


def test_grayscale_photo_gets_a_grayscale_mask(synthesizer):
    image, landmarks, box = cartoon_face(grayscale=True)
    out = synthesizer.apply(image, landmarks, box, rng=np.random.default_rng(2), mask_type="surgical_blue")
    assert changed(image, out).any()
    assert np.array_equal(out[..., 0], out[..., 1])
    assert np.array_equal(out[..., 1], out[..., 2])


def test_aligned_crop_is_masked_below_the_eyes(synthesizer):
    image, landmarks, _ = cartoon_face()
    crop = align_face(image, landmarks)
    for seed in range(5):
        out = synthesizer.apply_aligned(crop, rng=np.random.default_rng(seed))
        assert out.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
        assert out.dtype == np.uint8
        diff = changed(crop, out)
        assert not diff[:45].any(), "the eye band (template eyes at y=51.6) is untouched"
        assert diff[88:96, 50:62].all(), "the mouth (template y=92) is covered"
    with pytest.raises(ValueError, match="aligned crop"):
        synthesizer.apply_aligned(image, rng=np.random.default_rng(0))
