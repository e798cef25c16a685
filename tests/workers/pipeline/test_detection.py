import random
from dataclasses import replace

import cv2
import numpy as np
import pytest

from tests.workers.pipeline.conftest import draw_face, face_photo, require_shared_data
from workers.pipeline import detection
from workers.pipeline.detection import (
    TURNED_SEARCH_MIN_SCORE,
    BoundingBox,
    DetectedFace,
    FaceDetector,
    nearest_face,
    non_maximum_suppression,
)
from workers.pipeline.intake import decode_image


@pytest.fixture(scope="module")
def detector(pipeline_config):
    return FaceDetector(pipeline_config.detection)


@pytest.fixture
def network_inputs(detector, monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the inputs the detector gives YuNet during the test, in order."""
    shapes = []
    run = detector._session.run

    def recording_run(names, feed):
        shapes.extend(tensor.shape for tensor in feed.values())
        return run(names, feed)

    monkeypatch.setattr(detector._session, "run", recording_run)
    return shapes


def test_cartoon_face_is_found_with_landmarks_in_yunet_order(detector):
    image = np.full((480, 640, 3), 200, np.uint8)
    parts = draw_face(image, 320, 240, 100)

    faces = detector.detect(image)

    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.8
    right_eye, left_eye, nose, mouth_right, mouth_left = face.landmark_array()
    # The subject's right eye is on the image's left: YuNet's first landmark has the smaller x.
    # The eyes are 70 px apart; YuNet puts a cartoon's eye points within ~15 px of the irises.
    assert np.hypot(*(right_eye - parts["image_left_eye"])) < 20
    assert np.hypot(*(left_eye - parts["image_right_eye"])) < 20
    assert np.hypot(*(nose - parts["nose"])) < 25
    assert mouth_right[0] < mouth_left[0]
    assert np.hypot(*((mouth_right + mouth_left) / 2 - parts["mouth"])) < 25
    box = face.bbox
    for x, y in face.landmarks:
        assert box.x < x < box.x + box.width
        assert box.y < y < box.y + box.height


def test_plain_and_noisy_images_have_no_faces(detector):
    rng = np.random.default_rng(0)
    assert detector.detect(np.full((480, 640, 3), 128, np.uint8)) == []
    assert detector.detect(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)) == []


def test_decoding_matches_opencv_reference(detector, pipeline_config):
    """Our own decoding of the raw outputs reproduces cv2.FaceDetectorYN on the same 640x640 input."""
    image = np.full((640, 640, 3), 190, np.uint8)
    draw_face(image, 200, 220, 90)
    draw_face(image, 470, 400, 55)
    config = pipeline_config.detection
    reference = cv2.FaceDetectorYN.create(
        str(config.model_path), "", (640, 640), config.score_threshold, config.nms_iou_threshold, 5000
    )

    _, expected = reference.detect(image)
    faces = detector.detect(image)

    assert expected is not None
    assert len(faces) == len(expected) == 2
    expected = expected[np.argsort(-expected[:, 14])]
    for face, row in zip(faces, expected, strict=True):
        assert face.score == pytest.approx(row[14], abs=1e-3)
        assert (face.bbox.x, face.bbox.y, face.bbox.width, face.bbox.height) == pytest.approx(
            row[:4], abs=0.05
        )
        np.testing.assert_allclose(face.landmark_array().ravel(), row[4:14], atol=0.05)


def test_a_landscape_photo_is_one_network_input_of_its_own_shape_like_opencvs(
    detector, pipeline_config, network_inputs
):
    """A 640x480 photo is not padded to 640x640: the network sees 640x480, as FaceDetectorYN set to that
    size does, and finds the same faces."""
    image = np.full((480, 640, 3), 190, np.uint8)
    draw_face(image, 200, 220, 90)
    draw_face(image, 500, 400, 55)  # near the bottom edge, where a square input would add padding
    config = pipeline_config.detection
    reference = cv2.FaceDetectorYN.create(
        str(config.model_path), "", (640, 480), config.score_threshold, config.nms_iou_threshold, 5000
    )

    faces = detector.detect(image)
    _, expected = reference.detect(image)

    assert network_inputs == [(1, 3, 480, 640)]
    assert expected is not None
    assert len(faces) == len(expected) == 2
    expected = expected[np.argsort(-expected[:, 14])]
    for face, row in zip(faces, expected, strict=True):
        assert face.score == pytest.approx(row[14], abs=1e-3)
        np.testing.assert_allclose(face.landmark_array().ravel(), row[4:14], atol=0.05)


def test_an_odd_sized_region_is_padded_to_the_grid_of_the_largest_stride(detector, network_inputs):
    image = np.full((301, 433, 3), 200, np.uint8)  # upscaled by 640 / 433: 640 x 445, padded to 640 x 448
    parts = draw_face(image, 300, 150, 60)

    faces = detector.detect(image)

    assert network_inputs == [(1, 3, 448, 640)]
    assert len(faces) == 1
    assert np.hypot(*(faces[0].landmark_array()[0] - parts["image_left_eye"])) < 15


@pytest.mark.parametrize(("width", "height", "centre"), [(1000, 400, (820, 200)), (360, 900, (180, 640))])
def test_letterboxed_coordinates_are_in_source_pixels(detector, width, height, centre):
    image = np.full((height, width, 3), 200, np.uint8)
    parts = draw_face(image, *centre, 70)

    faces = detector.detect(image)

    assert len(faces) == 1
    assert np.hypot(*(faces[0].landmark_array()[0] - parts["image_left_eye"])) < 15
    assert np.hypot(*(faces[0].landmark_array()[1] - parts["image_right_eye"])) < 15


def test_several_faces_are_all_returned_best_first(detector):
    image = np.full((480, 900, 3), 200, np.uint8)
    for centre_x in (150, 450, 750):
        draw_face(image, centre_x, 240, 80)

    faces = detector.detect(image)

    assert len(faces) == 3
    assert sorted(round(face.bbox.x / 300) for face in faces) == [0, 1, 2]
    assert [face.score for face in faces] == sorted((face.score for face in faces), reverse=True)


def test_score_threshold_is_configurable(pipeline_config):
    strict = FaceDetector(replace(pipeline_config.detection, score_threshold=0.99))

    assert strict.detect(face_photo()) == []


def test_tiles_find_a_small_face_in_a_large_photo(detector, pipeline_config):
    image = np.full((3000, 4000, 3), 200, np.uint8)
    parts = draw_face(image, 2500, 1700, 50)  # an 80 px wide face: 13 px once the photo is shrunk to 640
    whole_image_only = FaceDetector(
        replace(pipeline_config.detection, tile_size=100_000, score_threshold=0.3)
    )

    assert whole_image_only.detect(image) == []
    faces = detector.detect(image)
    assert len(faces) == 1
    assert np.hypot(*(faces[0].landmark_array()[0] - parts["image_left_eye"])) < 15


def test_a_face_in_overlapping_tiles_is_reported_once(detector):
    # Tiles of 1280 px over 4000 x 3000 start at x = 0, 907, 1813, 2720 and y = 0, 860, 1720: (1100, 1070)
    # lies in four tiles at once.
    image = np.full((3000, 4000, 3), 200, np.uint8)
    draw_face(image, 1100, 1070, 50)

    assert len(detector.detect(image)) == 1


def test_a_face_filling_the_frame_is_found_by_the_close_up_passes(detector, network_inputs):
    """A close-up too large for the whole-image pass is found once the photo is shrunk inside a border, and
    its points are in the photo's own pixels."""
    image = np.full((600, 600, 3), 200, np.uint8)
    parts = draw_face(image, 300, 300, 300)

    faces = detector.detect(image)

    # The whole-image pass (640 px) finds nothing; the photo at 256 px in a 512 px frame, then at 160 px in a
    # 320 px frame, is searched again.
    assert network_inputs == [(1, 3, 640, 640), (1, 3, 512, 512), (1, 3, 320, 320)]
    assert len(faces) == 1
    # Within 15% of the face's size of the drawn eyes (a border left unsubtracted would put them ~300 px off).
    assert np.hypot(*(faces[0].landmark_array()[0] - parts["image_left_eye"])) < 45
    assert np.hypot(*(faces[0].landmark_array()[1] - parts["image_right_eye"])) < 45
    box = faces[0].bbox
    assert box.x < parts["image_left_eye"][0] < parts["image_right_eye"][0] < box.x + box.width


def test_a_photo_with_a_face_gets_no_close_up_passes(detector, network_inputs):
    assert len(detector.detect(face_photo())) == 1
    assert network_inputs == [(1, 3, 480, 640)]


def test_a_face_tilted_past_what_yunet_finds_is_found_turned_with_points_in_the_photos_pixels(
    detector, network_inputs
):
    image = np.full((480, 640, 3), 200, np.uint8)
    parts = draw_face(image, 320, 240, 120)
    tilt = cv2.getRotationMatrix2D((320, 240), 50, 1.0)
    tilted = cv2.warpAffine(image, tilt, (640, 480), borderValue=(200, 200, 200))
    eyes = np.array([parts["image_left_eye"], parts["image_right_eye"]], float) @ tilt[:, :2].T + tilt[:, 2]

    faces = detector.detect(tilted)

    # The whole-image pass and the two close-up passes find nothing; the photo turned by 40 degrees either way
    # (on a canvas holding all of it, 799 x 780, fed at 640 x 625) is searched.
    assert network_inputs == [
        (1, 3, 480, 640),
        (1, 3, 448, 512),
        (1, 3, 288, 320),
        (1, 3, 640, 640),
        (1, 3, 640, 640),
    ]
    assert len(faces) == 1
    assert faces[0].score >= TURNED_SEARCH_MIN_SCORE
    np.testing.assert_allclose(faces[0].landmark_array()[:2], eyes, atol=20)
    # The box keeps the face's size (the hull of the turned box would be about 1.4 times wider).
    (upright,) = detector.detect(image)
    assert faces[0].bbox.width == pytest.approx(upright.bbox.width, rel=0.2)
    assert faces[0].bbox.height == pytest.approx(upright.bbox.height, rel=0.2)


def test_a_thin_strip_is_shrunk_before_it_is_turned(detector, network_inputs, monkeypatch):
    """Turned whole, a 40,000 px strip would need a 30,000 x 26,000 px canvas per angle (2.4 GB)."""
    turned_shapes = []
    turn = detection._turned

    def recording_turn(image, degrees):
        turned, back = turn(image, degrees)
        turned_shapes.append(turned.shape[:2])
        return turned, back

    monkeypatch.setattr(detection, "_turned", recording_turn)

    assert detector.detect(np.full((1, 40_000, 3), 120, np.uint8)) == []
    assert len(turned_shapes) == 2
    assert max(max(shape) for shape in turned_shapes) <= 640
    assert max(max(shape[2:]) for shape in network_inputs) <= 640


@pytest.mark.shared_data
def test_masked_faces_tilted_by_45_degrees_are_found(detector):
    """Masked LFW test faces tilted by 45 degrees: the upright passes alone find about a fifth of them."""
    from workers.evaluation.lfw import lfw_canvas
    from workers.pipeline.masks import MaskSynthesizer
    from workers.training.datasets import lfw_images

    photos = lfw_images("test", require_shared_data("lfw_a"))[::40][:40]
    synthesizer = MaskSynthesizer(require_shared_data("mask_templates"))
    rng = np.random.default_rng(0)
    found = tried = 0
    for photo in photos:
        canvas = lfw_canvas(photo.path)
        faces = detector.detect(canvas)
        if not faces:
            continue
        masked = synthesizer.apply(canvas, faces[0].landmark_array(), faces[0].bbox, rng=rng)
        tilt = cv2.getRotationMatrix2D((320, 240), 45 if rng.random() < 0.5 else -45, 1.0)
        tried += 1
        found += bool(detector.detect(cv2.warpAffine(masked, tilt, (640, 480), borderValue=(128, 128, 128))))

    assert tried >= 30
    assert found / tried >= 0.9


@pytest.mark.shared_data
def test_masked_close_ups_are_found(detector):
    """Masked LFW test faces cropped square, 2.5 inter-ocular distances wide, at 600 px: the whole-image
    pass alone finds about a quarter of them."""
    from workers.pipeline.masks import MaskSynthesizer
    from workers.training.datasets import lfw_images

    photos = lfw_images("test", require_shared_data("lfw_a"))[::40][:40]
    synthesizer = MaskSynthesizer(require_shared_data("mask_templates"))
    rng = np.random.default_rng(0)
    found = tried = 0
    for photo in photos:
        image = cv2.imread(str(photo.path))
        faces = detector.detect(image)
        if not faces:
            continue
        points = faces[0].landmark_array()
        masked = synthesizer.apply(image, points, faces[0].bbox, rng=rng)
        half = 1.25 * np.linalg.norm(points[1] - points[0])
        x0, y0 = (np.maximum(points.mean(axis=0) - half, 0)).astype(int)
        close_up = cv2.resize(masked[y0 : y0 + int(2 * half), x0 : x0 + int(2 * half)], (600, 600))
        tried += 1
        found += bool(detector.detect(close_up))

    assert tried >= 30
    assert found / tried >= 0.95


def test_non_maximum_suppression_keeps_distinct_boxes_best_first():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.7, 0.9, 0.8, 0.6], np.float32)

    assert non_maximum_suppression(boxes, scores, iou_threshold=0.3) == [1, 2]
    assert non_maximum_suppression(boxes, scores, iou_threshold=0.99) == [1, 2, 0, 3]


@pytest.mark.shared_data
def test_masked_faces_are_found_in_most_rwmfd_photos(detector):
    """RWMFD: real photos of masked people; every one shows at least one face."""
    image_dir = require_shared_data("rwmfd_part1", "images")
    sample = random.Random(0).sample(sorted(image_dir.glob("*/*")), 120)

    found = sum(bool(detector.detect(decode_image(path.read_bytes()))) for path in sample)

    # Measured on all 1,194 images: 97.6% at the default threshold.
    assert found / len(sample) >= 0.95


@pytest.mark.shared_data
def test_lfw_faces_are_found_at_the_centre(detector):
    image_dir = require_shared_data("lfw_a", "lfw")
    sample = random.Random(0).sample(sorted(image_dir.glob("*/*.jpg")), 40)

    for path in sample:
        image = decode_image(path.read_bytes())
        centres = [
            (f.bbox.x + f.bbox.width / 2, f.bbox.y + f.bbox.height / 2) for f in detector.detect(image)
        ]
        assert any(abs(x - 125) < 40 and abs(y - 125) < 40 for x, y in centres), path.name


def test_nearest_face_is_the_one_whose_landmarks_centre_is_closest():
    def face_at(x: float, y: float) -> DetectedFace:
        points = tuple((x + dx, y + dy) for dx, dy in [(-10, -5), (10, -5), (0, 5), (-8, 15), (8, 15)])
        return DetectedFace(BoundingBox(x - 20, y - 20, 40, 50), 0.9, points)

    left, right = face_at(100, 100), face_at(300, 120)

    assert nearest_face([left, right], np.array([260.0, 100.0])) is right
    assert nearest_face([left, right], np.array([150.0, 90.0])) is left
    assert nearest_face([], np.array([0.0, 0.0])) is None
