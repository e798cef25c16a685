import math

import cv2
import numpy as np
import pytest

from tests.workers.pipeline.conftest import face_photo
from workers.pipeline.alignment import (
    ALIGNED_SIZE,
    ARCFACE_TEMPLATE,
    align_face,
    align_faces,
    alignment_matrix,
    similarity_transform,
    transformed,
)
from workers.pipeline.detection import FaceDetector


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    angle = math.radians(angle_deg)
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return np.hstack([rotation, np.array(shift)[:, None]])


def landmarks_in_photo(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    """Where the template's points would be in a photo related to the aligned crop by this similarity."""
    return apply(similarity(angle_deg, scale, shift), ARCFACE_TEMPLATE)


@pytest.mark.parametrize(
    ("angle", "scale", "shift"), [(0, 1, (0, 0)), (25, 2.7, (300, 140)), (-140, 0.6, (-5, 80))]
)
def test_similarity_transform_recovers_a_known_transform(angle, scale, shift):
    source = np.random.default_rng(1).uniform(0, 100, (5, 2))
    expected = similarity(angle, scale, shift)

    np.testing.assert_allclose(similarity_transform(source, apply(expected, source)), expected, atol=1e-9)


@pytest.mark.parametrize(
    ("angle", "scale", "shift"), [(0, 1, (0, 0)), (-30, 3.2, (410, 95)), (170, 0.4, (60, 60))]
)
def test_landmarks_map_onto_the_template(angle, scale, shift):
    landmarks = landmarks_in_photo(angle, scale, shift)

    np.testing.assert_allclose(apply(alignment_matrix(landmarks), landmarks), ARCFACE_TEMPLATE, atol=1e-6)


def test_least_squares_fit_never_mirrors_the_face():
    swapped_eyes = ARCFACE_TEMPLATE[[1, 0, 2, 4, 3]]

    matrix = alignment_matrix(swapped_eyes)

    assert np.linalg.det(matrix[:, :2]) > 0


def test_coincident_landmarks_are_refused():
    with pytest.raises(ValueError, match="coincide"):
        alignment_matrix(np.full((5, 2), 10.0))


def test_warped_crop_puts_the_landmark_pixels_on_the_template():
    landmarks = landmarks_in_photo(20, 2.5, (150, 60))
    photo = np.zeros((500, 500, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(photo, (round(x), round(y)), 4, (255, 255, 255), -1)

    crop = align_face(photo, landmarks)

    assert crop.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3)
    assert crop.dtype == np.uint8
    for x, y in ARCFACE_TEMPLATE:
        assert crop[round(y), round(x)].min() > 200
    assert crop.mean() < 30  # and nothing else came along


def test_batch_alignment_equals_one_by_one_and_is_deterministic():
    photo = np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    all_landmarks = [landmarks_in_photo(a, s, t) for a, s, t in [(5, 1.5, (50, 40)), (-15, 1.1, (200, 100))]]

    crops = align_faces(photo, all_landmarks)

    assert crops.shape == (2, ALIGNED_SIZE, ALIGNED_SIZE, 3)
    for crop, landmarks in zip(crops, all_landmarks, strict=True):
        np.testing.assert_array_equal(crop, align_face(photo, landmarks))
    np.testing.assert_array_equal(crops, align_faces(photo, all_landmarks))
    assert align_faces(photo, []).shape == (0, ALIGNED_SIZE, ALIGNED_SIZE, 3)


def test_crop_matches_opencv_face_recognizer_alignment(pipeline_config):
    """Same template and estimator as cv2.FaceRecognizerSF.alignCrop, which SFace was evaluated with."""
    photo = face_photo()
    face = FaceDetector(pipeline_config.detection).detect(photo)[0]
    reference = cv2.FaceRecognizerSF.create(str(pipeline_config.embedding.model_path), "")
    detection_row = np.array(
        [face.bbox.x, face.bbox.y, face.bbox.width, face.bbox.height, *np.ravel(face.landmarks), face.score],
        np.float32,
    )

    expected = reference.alignCrop(photo, detection_row)
    crop = align_face(photo, face.landmark_array())

    assert np.abs(crop.astype(int) - expected.astype(int)).max() <= 1


def test_points_are_transformed_as_opencv_maps_them():
    matrix = cv2.getRotationMatrix2D((40.0, 30.0), 25.0, 1.3)
    points = np.array([[0.0, 0.0], [12.5, 7.0], [80.0, 60.0]])

    expected = cv2.transform(points[np.newaxis], matrix)[0]

    np.testing.assert_allclose(transformed(points, matrix), expected, atol=1e-9)
