import math

import cv2
import numpy as np
import pytest

from workers.pipeline.alignment import ARCFACE_TEMPLATE
from workers.pipeline.config import ENROLL_FLOORS, IDENTIFY_FLOORS, QualityConfig
from workers.pipeline.quality import QualityIssue, assess_quality, estimate_pose

# A frontal face in YuNet's landmark geometry: template eyes and mouth, nose tip where YuNet puts it.
EYE_LINE_Y = ARCFACE_TEMPLATE[:2, 1].mean()
MOUTH_LINE_Y = ARCFACE_TEMPLATE[3:, 1].mean()
FRONTAL = ARCFACE_TEMPLATE.copy()
FRONTAL[2] = [ARCFACE_TEMPLATE[:2, 0].mean(), EYE_LINE_Y + 0.553 * (MOUTH_LINE_Y - EYE_LINE_Y)]
INTER_EYE = float(np.hypot(*(FRONTAL[1] - FRONTAL[0])))


def rotated(points: np.ndarray, degrees: float) -> np.ndarray:
    """Rotated about their centroid; positive turns clockwise on screen (image y points down)."""
    angle = math.radians(degrees)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = points.mean(axis=0)
    return (points - centre) @ rotation.T + centre


def with_nose_moved(dx: float, dy: float) -> np.ndarray:
    points = FRONTAL.copy()
    points[2] += [dx * INTER_EYE, dy * INTER_EYE]
    return points


def textured_crop(mean: float = 128.0, blur_sigma: float = 0.0) -> np.ndarray:
    """A 112x112 crop with face-like fine detail (sharpness well above the enroll floor) at a given level."""
    rng = np.random.default_rng(4)
    detail = cv2.resize(
        rng.normal(0, 1, (56, 56)).astype(np.float32), (112, 112), interpolation=cv2.INTER_LINEAR
    )
    gray = np.clip(mean + 25 * detail / detail.std(), 0, 255).astype(np.uint8)
    if blur_sigma:
        gray = cv2.GaussianBlur(gray, (0, 0), blur_sigma)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def test_frontal_face_has_no_pose():
    pose = estimate_pose(FRONTAL)

    assert pose.yaw == pytest.approx(0, abs=0.5)
    assert pose.pitch == pytest.approx(0, abs=0.5)
    assert pose.roll == pytest.approx(0, abs=0.5)


@pytest.mark.parametrize("degrees", [-40, -10, 15, 70])
def test_roll_is_the_eye_line_angle_and_does_not_leak_into_yaw_or_pitch(degrees):
    pose = estimate_pose(rotated(FRONTAL, degrees))

    assert pose.roll == pytest.approx(degrees, abs=0.5)
    assert pose.yaw == pytest.approx(0, abs=0.5)
    assert pose.pitch == pytest.approx(0, abs=0.5)


def test_yaw_follows_the_nose_sideways():
    assert estimate_pose(with_nose_moved(0.2, 0)).yaw == pytest.approx(math.degrees(math.atan(0.4)), abs=0.5)
    assert estimate_pose(with_nose_moved(-0.2, 0)).yaw < -15
    assert abs(estimate_pose(with_nose_moved(0.6, 0)).yaw) > 45


def test_pitch_follows_the_nose_up_and_down():
    assert estimate_pose(with_nose_moved(0, -0.2)).pitch > 15  # nose towards the eyes: chin up
    assert estimate_pose(with_nose_moved(0, 0.2)).pitch < -15


def test_pose_ignores_face_size_and_position():
    moved = FRONTAL * 3.7 + [250, 90]
    for nose_shift in [(0.2, 0), (0, 0.1)]:
        expected = estimate_pose(with_nose_moved(*nose_shift))
        actual = estimate_pose(with_nose_moved(*nose_shift) * 3.7 + [250, 90])
        assert actual.yaw == pytest.approx(expected.yaw, abs=1e-6)
        assert actual.pitch == pytest.approx(expected.pitch, abs=1e-6)
    assert estimate_pose(moved).roll == pytest.approx(estimate_pose(FRONTAL).roll, abs=1e-6)


def test_good_face_has_no_issue_and_a_high_score():
    quality = assess_quality(textured_crop(), FRONTAL * 1.5, 0.95, ENROLL_FLOORS)

    assert quality.issues == ()
    assert quality.score > 0.9
    assert quality.inter_eye_px == pytest.approx(1.5 * INTER_EYE)


@pytest.mark.parametrize(
    ("crop", "landmarks", "detection_score", "issue"),
    [
        (textured_crop(), FRONTAL * 0.4, 0.95, QualityIssue.SMALL_FACE),
        (textured_crop(blur_sigma=3), FRONTAL * 1.5, 0.95, QualityIssue.BLURRY),
        (textured_crop(mean=20), FRONTAL * 1.5, 0.95, QualityIssue.UNDEREXPOSED),
        (textured_crop(mean=240), FRONTAL * 1.5, 0.95, QualityIssue.OVEREXPOSED),
        (textured_crop(), with_nose_moved(0.7, 0) * 1.5, 0.95, QualityIssue.EXTREME_POSE),
        (textured_crop(), rotated(FRONTAL, 75) * 1.5, 0.95, QualityIssue.EXTREME_POSE),
        (textured_crop(), FRONTAL * 1.5, 0.45, QualityIssue.LOW_CONFIDENCE),
    ],
)
def test_each_defect_is_named_and_lowers_the_score(crop, landmarks, detection_score, issue):
    good = assess_quality(textured_crop(), FRONTAL * 1.5, 0.95, IDENTIFY_FLOORS)

    quality = assess_quality(crop, landmarks, detection_score, IDENTIFY_FLOORS)

    assert quality.issues == (issue,)
    assert 0.0 <= quality.score < good.score


def test_enrollment_takes_a_face_turned_as_far_as_its_template_still_matches():
    turned_40 = assess_quality(textured_crop(), with_nose_moved(0.42, 0) * 1.5, 0.95, ENROLL_FLOORS)
    turned_50 = assess_quality(textured_crop(), with_nose_moved(0.6, 0) * 1.5, 0.95, ENROLL_FLOORS)

    assert turned_40.pose.yaw == pytest.approx(40, abs=1)
    assert turned_40.issues == ()
    assert turned_50.issues == (QualityIssue.EXTREME_POSE,)


def test_enrollment_is_stricter_than_identification():
    landmarks = FRONTAL * 0.7  # about 25 px between the eyes
    crop = textured_crop(blur_sigma=1.5)

    enroll = assess_quality(crop, landmarks, 0.7, ENROLL_FLOORS)
    identify = assess_quality(crop, landmarks, 0.7, IDENTIFY_FLOORS)

    assert set(enroll.issues) == {QualityIssue.SMALL_FACE, QualityIssue.BLURRY, QualityIssue.LOW_CONFIDENCE}
    assert identify.issues == ()
    assert enroll.score == identify.score  # the score describes the face, the floors the purpose


def test_a_mask_is_neither_blur_nor_bad_exposure():
    """Masks cover the lower face: a flat black mask must not make a sharp, well-lit face look bad."""
    masked = textured_crop()
    masked[70:, :] = 10

    quality = assess_quality(masked, FRONTAL * 1.5, 0.95, ENROLL_FLOORS)

    assert quality.issues == ()


def test_floors_are_chosen_by_purpose():
    config = QualityConfig()

    assert config.floors_for("enroll") is config.enroll
    assert config.floors_for("identify") is config.identify
    with pytest.raises(ValueError, match="purpose"):
        config.floors_for("search")
