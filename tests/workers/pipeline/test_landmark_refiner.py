"""The masked-face landmark refiner: its geometry on generated faces, its accuracy on masked LFW photos."""

import cv2
import numpy as np
import pytest

from tests.workers.pipeline.conftest import MODEL_DIR, face_photo, require_shared_data
from workers.pipeline.config import YUNET_FILE, DetectionConfig
from workers.pipeline.detection import FaceDetector
from workers.pipeline.errors import ModelUnavailable
from workers.pipeline.landmark_refiner import MIN_INTER_OCULAR_PX, LandmarkRefiner, _plausible


@pytest.fixture(scope="module")
def refiner() -> LandmarkRefiner:
    return LandmarkRefiner()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(DetectionConfig(model_path=MODEL_DIR / YUNET_FILE))


def test_refined_points_are_five_image_points_per_face(refiner, detector):
    photo = face_photo()
    (face,) = detector.detect(photo)

    (points,) = refiner.refine(photo, [face.landmark_array()])

    assert points.shape == (5, 2)
    assert points.dtype == np.float32
    inter_ocular = np.linalg.norm(face.landmark_array()[0] - face.landmark_array()[1])
    # A correction, not a different face: every point stays within an inter-ocular distance of YuNet's.
    assert np.linalg.norm(points - face.landmark_array(), axis=1).max() < inter_ocular
    assert refiner.refine(photo, []) == []


def test_refined_points_move_with_the_face(refiner, detector):
    photo = face_photo()
    (face,) = detector.detect(photo)
    shift = np.array([23.0, 17.0])
    shifted = np.full_like(photo, 200)
    shifted[17:, 23:] = photo[:-17, :-23]

    (points,) = refiner.refine(photo, [face.landmark_array()])
    (shifted_points,) = refiner.refine(shifted, [face.landmark_array() + shift])

    np.testing.assert_allclose(shifted_points, points + shift, atol=1e-3)


def test_a_grey_photo_is_refined_alike_in_one_or_three_channels(refiner, detector):
    grey = cv2.cvtColor(face_photo(), cv2.COLOR_BGR2GRAY)
    three_channels = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    (face,) = detector.detect(three_channels)

    refined = [
        refiner.refine(image, [face.landmark_array()])[0]
        for image in (three_channels, grey, grey[:, :, None])
    ]

    np.testing.assert_array_equal(refined[1], refined[0])
    np.testing.assert_array_equal(refined[2], refined[0])


def test_an_implausible_refinement_is_dropped_for_the_detected_points():
    detected = np.array([[100, 100], [140, 100], [120, 122], [104, 140], [136, 140]], np.float64)
    widened = detected.copy()
    widened[0, 0], widened[1, 0] = 86, 154  # YuNet often squeezes a masked face's eyes: 68 px apart, not 40
    spread = detected.copy()
    spread[0, 0], spread[1, 0] = 55, 185  # 130 px apart
    collapsed = detected.copy()
    collapsed[1, 0] = 110  # 10 px apart

    assert _plausible(detected + 3.0, detected)
    assert _plausible(widened, detected)
    assert not _plausible(np.full((5, 2), np.nan), detected)
    assert not _plausible(spread, detected)
    assert not _plausible(collapsed, detected)
    assert not _plausible(detected + np.array([0.0, 70.0]), detected)  # 1.75 inter-ocular distances away


def test_faces_smaller_than_any_trained_on_keep_their_detected_points(refiner, detector):
    photo = face_photo(size=100)
    (face,) = detector.detect(photo)
    shrunk = cv2.resize(photo, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)
    small_points = face.landmark_array() * 0.2
    assert np.linalg.norm(small_points[1] - small_points[0]) < MIN_INTER_OCULAR_PX

    (kept,) = refiner.refine(shrunk, [small_points])
    (moved,) = refiner.refine(photo, [face.landmark_array()])

    np.testing.assert_array_equal(kept, small_points)
    assert not np.array_equal(moved, face.landmark_array())


def test_missing_weights_are_a_deployment_fault(tmp_path):
    with pytest.raises(ModelUnavailable, match="landmark refiner"):
        LandmarkRefiner(tmp_path / "absent.onnx")


def test_masked_lfw_faces_get_landmarks_closer_to_those_of_the_unmasked_photo(refiner, detector):
    """On test people (never trained on), with a synthetic mask drawn at the plain photo's landmarks, the
    refined points are much nearer those landmarks than YuNet's points on the masked photo."""
    from workers.evaluation.lfw import lfw_canvas
    from workers.pipeline.masks import MaskSynthesizer
    from workers.training.datasets import lfw_images

    photos = lfw_images("test", require_shared_data("lfw_a"))[::40][:50]
    synthesizer = MaskSynthesizer(require_shared_data("mask_templates"))
    rng = np.random.default_rng(0)
    yunet_errors, refined_errors = [], []
    for photo in photos:
        canvas = lfw_canvas(photo.path)
        plain = detector.detect(canvas)
        if not plain:
            continue
        truth = plain[0].landmark_array()
        masked = synthesizer.apply(canvas, truth, plain[0].bbox, rng=rng)
        found = [f for f in detector.detect(masked) if np.linalg.norm(f.landmark_array() - truth) < 60]
        if not found:
            continue
        inter_ocular = np.linalg.norm(truth[0] - truth[1])
        (refined,) = refiner.refine(masked, [found[0].landmark_array()])
        yunet_errors.append(np.linalg.norm(found[0].landmark_array() - truth, axis=1).mean() / inter_ocular)
        refined_errors.append(np.linalg.norm(refined - truth, axis=1).mean() / inter_ocular)

    assert len(yunet_errors) >= 40
    assert np.mean(refined_errors) < 0.6 * np.mean(yunet_errors)
