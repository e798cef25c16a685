"""Face quality: a score in [0, 1] and the Rekognition-style reasons that lower it.

Measurements are taken where they stay meaningful for masked faces. Sharpness and exposure are read on the
upper band of the aligned 112x112 crop (brows, eyes and nose bridge), which a mask never covers: a plain
mask fabric would otherwise read as blur, and a black or white mask as bad exposure. The aligned crop also
normalises face size, so the same sharpness floor applies to a face of any resolution.

The score is a property of the face alone (the same for enrollment and identification): the product of
per-measurement factors, each 1 when that measurement is good and 0 when it is hopeless. The issues, on the
other hand, come from the floors of the purpose (strict for enrollment, lenient for identification).
"""

import math
from dataclasses import dataclass, replace
from enum import StrEnum

import cv2
import numpy as np

from workers.pipeline.alignment import ALIGNED_SIZE
from workers.pipeline.config import QualityFloors

# Rows and columns of the aligned crop (at 112 px) showing brows, eyes and the nose bridge.
_UPPER_FACE_ROWS = slice(28, 66)
_UPPER_FACE_COLUMNS = slice(18, 94)

# Head-model proportions for pose from 2-D landmarks: how far the nose tip stands in front of the eyes,
# relative to the inter-eye distance, and relative to the eye-to-mouth distance.
_NOSE_DEPTH_PER_EYE_DISTANCE = 0.5
_NOSE_DEPTH_PER_EYE_MOUTH_DISTANCE = 0.43
# Where YuNet puts the nose tip between the eye line (0) and the mouth line (1) on a frontal face: the median
# over 400 random LFW faces (mostly frontal news photos). The ArcFace template's 0.495 would read as a
# systematic 8 degrees chin-down, because YuNet marks the nose tip lower than the template does.
_FRONTAL_NOSE_HEIGHT = 0.553


class QualityIssue(StrEnum):
    SMALL_FACE = "SMALL_FACE"
    BLURRY = "BLURRY"
    UNDEREXPOSED = "UNDEREXPOSED"
    OVEREXPOSED = "OVEREXPOSED"
    EXTREME_POSE = "EXTREME_POSE"
    LOW_CONFIDENCE = "LOW_CONFIDENCE"


@dataclass(frozen=True)
class HeadPose:
    """Degrees. Yaw > 0: face turned towards the image's right; pitch > 0: chin up; roll > 0: the eye line
    descends towards the image's right (clockwise on screen)."""

    yaw: float
    pitch: float
    roll: float


@dataclass(frozen=True)
class FaceQuality:
    score: float
    issues: tuple[QualityIssue, ...]
    inter_eye_px: float
    sharpness: float
    brightness: float
    pose: HeadPose


def estimate_pose(landmarks: np.ndarray) -> HeadPose:
    """Yaw, pitch and roll from the 5 landmarks (YuNet order) with a weak-perspective head model.

    Roll is the angle of the eye line. In the roll-corrected frame, yaw comes from how far the nose tip is
    off the face's vertical midline (halfway between the eyes' and the mouth corners' midpoints), relative to
    the inter-eye distance; pitch from where the nose tip sits between the eye line and the mouth line,
    compared with a frontal face. Reliable to roughly +-10 degrees, which is what quality floors need.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    right_eye, left_eye = points[0], points[1]
    eye_vector = left_eye - right_eye
    inter_eye = float(np.hypot(*eye_vector))
    if inter_eye == 0:
        return HeadPose(yaw=90.0, pitch=0.0, roll=0.0)
    roll = math.atan2(eye_vector[1], eye_vector[0])
    cos_roll, sin_roll = math.cos(roll), math.sin(roll)
    unroll = np.array([[cos_roll, sin_roll], [-sin_roll, cos_roll]])
    upright = (points - (right_eye + left_eye) / 2) @ unroll.T
    nose = upright[2]
    mouth_centre = (upright[3] + upright[4]) / 2
    midline_x = mouth_centre[0] / 2
    yaw = math.atan((nose[0] - midline_x) / inter_eye / _NOSE_DEPTH_PER_EYE_DISTANCE)
    if mouth_centre[1] > 0:
        nose_height = nose[1] / mouth_centre[1]
        pitch = math.atan((_FRONTAL_NOSE_HEIGHT - nose_height) / _NOSE_DEPTH_PER_EYE_MOUTH_DISTANCE)
    else:
        pitch = math.pi / 2
    return HeadPose(yaw=math.degrees(yaw), pitch=math.degrees(pitch), roll=math.degrees(roll))


def upper_face(aligned_crop: np.ndarray) -> np.ndarray:
    """The grayscale brows-eyes-nose-bridge band of an aligned BGR crop."""
    scale = aligned_crop.shape[0] / ALIGNED_SIZE
    rows = slice(round(_UPPER_FACE_ROWS.start * scale), round(_UPPER_FACE_ROWS.stop * scale))
    columns = slice(round(_UPPER_FACE_COLUMNS.start * scale), round(_UPPER_FACE_COLUMNS.stop * scale))
    return cv2.cvtColor(aligned_crop[rows, columns], cv2.COLOR_BGR2GRAY)


def sharpness(aligned_crop: np.ndarray) -> float:
    """Variance of the Laplacian over the upper face of the aligned crop."""
    return float(cv2.Laplacian(upper_face(aligned_crop), cv2.CV_32F).var())


def brightness(aligned_crop: np.ndarray) -> float:
    """Mean gray level (0..255) over the upper face of the aligned crop."""
    return float(upper_face(aligned_crop).mean())


def assess_quality(
    aligned_crop: np.ndarray, landmarks: np.ndarray, detection_score: float, floors: QualityFloors
) -> FaceQuality:
    points = np.asarray(landmarks, dtype=np.float64)
    inter_eye_px = float(np.hypot(*(points[1] - points[0])))
    face_sharpness = sharpness(aligned_crop)
    face_brightness = brightness(aligned_crop)
    pose = estimate_pose(points)

    factors = (
        _ramp(inter_eye_px, zero_at=8.0, one_at=40.0),
        _ramp(face_sharpness, zero_at=5.0, one_at=150.0),
        min(
            _ramp(face_brightness, zero_at=15.0, one_at=70.0),
            _ramp(face_brightness, zero_at=250.0, one_at=200.0),
        ),
        _ramp(abs(pose.yaw), zero_at=75.0, one_at=15.0),
        _ramp(abs(pose.pitch), zero_at=60.0, one_at=10.0),
        _ramp(abs(pose.roll), zero_at=90.0, one_at=20.0),
        _ramp(detection_score, zero_at=0.3, one_at=0.8),
    )
    measured = FaceQuality(
        score=round(math.prod(factors), 4),
        issues=(),
        inter_eye_px=inter_eye_px,
        sharpness=face_sharpness,
        brightness=face_brightness,
        pose=pose,
    )
    return replace(measured, issues=quality_issues(measured, detection_score, floors))


def quality_issues(
    quality: FaceQuality, detection_score: float, floors: QualityFloors
) -> tuple[QualityIssue, ...]:
    """The issues `floors` find in a face's measurements (the same face judged for another purpose)."""
    issues = []
    if quality.inter_eye_px < floors.min_inter_eye_px:
        issues.append(QualityIssue.SMALL_FACE)
    if quality.sharpness < floors.min_sharpness:
        issues.append(QualityIssue.BLURRY)
    if quality.brightness < floors.min_brightness:
        issues.append(QualityIssue.UNDEREXPOSED)
    if quality.brightness > floors.max_brightness:
        issues.append(QualityIssue.OVEREXPOSED)
    pose = quality.pose
    if (
        abs(pose.yaw) > floors.max_yaw_deg
        or abs(pose.pitch) > floors.max_pitch_deg
        or abs(pose.roll) > floors.max_roll_deg
    ):
        issues.append(QualityIssue.EXTREME_POSE)
    if detection_score < floors.min_detection_score:
        issues.append(QualityIssue.LOW_CONFIDENCE)
    return tuple(issues)


def _ramp(value: float, *, zero_at: float, one_at: float) -> float:
    """0 at `zero_at`, 1 at `one_at`, linear in between and clamped outside (works in either direction)."""
    return min(1.0, max(0.0, (value - zero_at) / (one_at - zero_at)))
