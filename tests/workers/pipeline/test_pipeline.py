import io
from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.workers.pipeline.conftest import draw_face, encode, face_photo, require_shared_data
from workers.pipeline.alignment import align_face
from workers.pipeline.config import IntakeLimits
from workers.pipeline.embedding import FaceEmbedder
from workers.pipeline.errors import (
    CorruptImage,
    EmptyImage,
    ModelUnavailable,
    TooManyPixels,
    UnsupportedFormat,
)
from workers.pipeline.intake import decode_image
from workers.pipeline.landmark_refiner import LandmarkRefiner
from workers.pipeline.pipeline import FacePipeline, ImageAnalysis, MaskPrediction
from workers.pipeline.quality import QualityIssue


class RecordingMaskClassifier:
    lower_face_tensor = "conv_12_relu"

    def __init__(
        self,
        answer: tuple[bool, float] = (True, 0.87),
        extra_answers: int = 0,
        answers: list[tuple[bool, float]] | None = None,
    ) -> None:
        self.answer = answer
        self.extra_answers = extra_answers
        self.answers = answers
        self.calls: list[np.ndarray] = []

    def predict(self, lower_face):
        self.calls.append(lower_face)
        if self.answers is not None:
            return self.answers
        return [self.answer] * (len(lower_face) + self.extra_answers)


def three_faces_photo() -> np.ndarray:
    image = np.full((480, 960, 3), 200, np.uint8)
    for centre_x, size in [(160, 60), (480, 100), (800, 80)]:
        draw_face(image, centre_x, 240, size)
    return image


@pytest.fixture
def count_embed_calls(monkeypatch):
    calls: list[int] = []
    original_embed = FaceEmbedder.embed

    def counting_embed(self, crops):
        calls.append(len(crops))
        return original_embed(self, crops)

    monkeypatch.setattr(FaceEmbedder, "embed", counting_embed)
    return calls


def test_one_face_is_fully_described(face_pipeline):
    data = encode(face_photo(), "JPEG", quality=92)

    analysis = face_pipeline.analyze(data, purpose="identify", max_faces=5)

    assert (analysis.width, analysis.height) == (640, 480)
    assert analysis.faces_detected == 1
    assert analysis.model_version == face_pipeline.embedder.model_version
    (face,) = analysis.faces
    assert face.detection_score > 0.8
    assert len(face.landmarks) == 5
    assert 0.0 <= face.quality.score <= 1.0
    assert face.mask is None  # no classifier configured
    assert face.embedding.shape == (128,)
    assert face.embedding.dtype == np.float32
    assert np.linalg.norm(face.embedding) == pytest.approx(1.0, abs=1e-6)
    assert face.aligned_crop.shape == (112, 112, 3)
    timings = analysis.timings
    assert min(timings.decode_ms, timings.detect_ms, timings.align_ms, timings.embed_ms) > 0
    assert timings.total_ms >= timings.detect_ms + timings.embed_ms


def test_embedding_is_that_of_the_aligned_crop(face_pipeline):
    data = encode(face_photo(), "PNG")

    face = face_pipeline.analyze(data, purpose="identify").faces[0]

    expected_crop = align_face(decode_image(data), np.asarray(face.landmarks, np.float32))
    np.testing.assert_array_equal(face.aligned_crop, expected_crop)
    np.testing.assert_allclose(face.embedding, face_pipeline.embedder.embed([expected_crop])[0], atol=1e-6)


def test_no_face_gives_an_empty_analysis(face_pipeline):
    analysis = face_pipeline.analyze(encode(np.full((300, 400, 3), 90, np.uint8)), purpose="identify")

    assert analysis.faces == ()
    assert analysis.faces_detected == 0


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        (b"", EmptyImage),
        (b"GIF89a....", UnsupportedFormat),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 8, CorruptImage),
    ],
)
def test_bad_bytes_raise_typed_refusals(face_pipeline, data, refusal):
    with pytest.raises(refusal):
        face_pipeline.analyze(data, purpose="identify")


def test_intake_limits_come_from_the_configuration(pipeline_config):
    small_limits = FacePipeline(replace(pipeline_config, intake=IntakeLimits(max_pixels=100_000)))

    with pytest.raises(TooManyPixels):
        small_limits.analyze(encode(face_photo()), purpose="identify")


def test_max_faces_keeps_the_largest(face_pipeline):
    analysis = face_pipeline.analyze(encode(three_faces_photo()), purpose="identify", max_faces=2)

    assert analysis.faces_detected == 3
    assert [round(face.bbox.x / 320) for face in analysis.faces] == [1, 2]  # sizes 100, then 80


@pytest.mark.parametrize(
    ("purpose", "max_faces", "message"), [("search", 1, "purpose"), ("identify", 0, "max_faces")]
)
def test_invalid_arguments_are_programming_errors(face_pipeline, purpose, max_faces, message):
    with pytest.raises(ValueError, match=message):
        face_pipeline.analyze(encode(face_photo()), purpose=purpose, max_faces=max_faces)


def test_purpose_selects_the_quality_floors(face_pipeline):
    small_face = encode(face_photo(size=30), "PNG")  # about 21 px between the eyes

    enroll = face_pipeline.analyze(small_face, purpose="enroll").faces[0]
    identify = face_pipeline.analyze(small_face, purpose="identify").faces[0]

    assert QualityIssue.SMALL_FACE in enroll.quality.issues
    assert QualityIssue.SMALL_FACE not in identify.quality.issues
    assert enroll.quality.score == identify.quality.score


def test_batch_embeds_every_face_in_one_call_and_matches_single_analysis(face_pipeline, count_embed_calls):
    images = [encode(three_faces_photo(), "PNG"), b"", encode(face_photo(), "PNG")]

    results = face_pipeline.analyze_batch(images, purpose="identify")

    assert count_embed_calls == [4]
    assert isinstance(results[1], EmptyImage)
    assert [len(result.faces) for result in (results[0], results[2])] == [3, 1]
    for data, result in [(images[0], results[0]), (images[2], results[2])]:
        single = face_pipeline.analyze(data, purpose="identify")
        assert isinstance(result, ImageAnalysis)
        for batched_face, single_face in zip(result.faces, single.faces, strict=True):
            np.testing.assert_allclose(batched_face.embedding, single_face.embedding, atol=1e-5)


def test_mask_classifier_sees_the_lower_face_of_every_crop_from_the_embedding_run(pipeline_config):
    classifier = RecordingMaskClassifier(answer=(True, 0.87))
    pipeline = FacePipeline(pipeline_config, mask_classifier=classifier)

    analysis = pipeline.analyze(encode(three_faces_photo(), "PNG"), purpose="identify")

    (lower_face,) = classifier.calls
    crops = np.stack([face.aligned_crop for face in analysis.faces])
    np.testing.assert_array_equal(lower_face, pipeline.embedder.describe(crops).lower_face)
    assert lower_face.shape == (3, 512)
    assert [face.mask for face in analysis.faces] == [MaskPrediction(masked=True, probability=0.87)] * 3
    assert analysis.timings.mask_ms > 0


def test_a_mask_classifier_reading_another_feature_map_is_refused(pipeline_config):
    classifier = RecordingMaskClassifier()
    classifier.lower_face_tensor = "conv_6_relu"

    with pytest.raises(ValueError, match="conv_6_relu"):
        FacePipeline(pipeline_config, mask_classifier=classifier)


def test_a_mask_classifier_answering_the_wrong_number_of_faces_is_caught(pipeline_config):
    pipeline = FacePipeline(pipeline_config, mask_classifier=RecordingMaskClassifier(extra_answers=1))

    with pytest.raises(RuntimeError, match="mask classifier"):
        pipeline.analyze(encode(face_photo()), purpose="identify")


def test_faces_called_masked_are_aligned_from_refined_landmarks_and_embedded_again(pipeline_config):
    refiner = LandmarkRefiner()
    # Faces come largest first: the middle face, the right one, the left one.
    classifier = RecordingMaskClassifier(answers=[(True, 0.9), (False, 0.1), (True, 0.8)])
    pipeline = FacePipeline(pipeline_config, mask_classifier=classifier, landmark_refiner=refiner)
    photo = three_faces_photo()

    analysis = pipeline.analyze(encode(photo, "PNG"), purpose="identify")

    masked, unmasked = [analysis.faces[0], analysis.faces[2]], analysis.faces[1]
    yunet_points = [np.array(face.landmarks) for face in masked]
    refined_crops = [align_face(photo, points) for points in refiner.refine(photo, yunet_points)]
    for face, crop in zip(masked, refined_crops, strict=True):
        np.testing.assert_array_equal(face.aligned_crop, crop)
        np.testing.assert_allclose(face.embedding, pipeline.embedder.embed(crop[np.newaxis])[0], atol=1e-5)
        assert not np.array_equal(crop, align_face(photo, np.array(face.landmarks)))
    np.testing.assert_array_equal(unmasked.aligned_crop, align_face(photo, np.array(unmasked.landmarks)))
    assert analysis.timings.refine_ms > 0


def test_without_masked_faces_nothing_is_refined(pipeline_config, count_embed_calls, monkeypatch):
    refined: list[int] = []
    original_refine = LandmarkRefiner.refine
    monkeypatch.setattr(
        LandmarkRefiner,
        "refine",
        lambda self, image, landmarks: (
            refined.append(len(landmarks)) or original_refine(self, image, landmarks)
        ),
    )
    classifier = RecordingMaskClassifier(answer=(False, 0.2))
    pipeline = FacePipeline(pipeline_config, mask_classifier=classifier, landmark_refiner=LandmarkRefiner())

    pipeline.analyze(encode(three_faces_photo(), "PNG"), purpose="identify")

    assert refined == []
    assert count_embed_calls == []  # describe() embedded the faces; nothing was embedded again


def test_in_a_batch_each_masked_face_is_realigned_in_its_own_image(pipeline_config, count_embed_calls):
    refiner = LandmarkRefiner()
    # Faces in batch order: the three-face photo's (largest first), then the single face.
    answers = [(False, 0.1), (False, 0.2), (True, 0.7), (True, 0.9)]
    pipeline = FacePipeline(
        pipeline_config, mask_classifier=RecordingMaskClassifier(answers=answers), landmark_refiner=refiner
    )
    photos = [three_faces_photo(), face_photo()]

    first, rejected, second = pipeline.analyze_batch(
        [encode(photos[0], "PNG"), b"not an image", encode(photos[1], "PNG")], purpose="identify"
    )

    assert isinstance(rejected, CorruptImage | UnsupportedFormat)
    assert count_embed_calls == [2]  # the two masked faces, embedded again together
    faces = [(photos[0], face) for face in first.faces] + [(photos[1], face) for face in second.faces]
    for (photo, face), (masked, _) in zip(faces, answers, strict=True):
        detected = np.array(face.landmarks)
        points = refiner.refine(photo, [detected])[0] if masked else detected
        np.testing.assert_array_equal(face.aligned_crop, align_face(photo, points))


def test_a_landmark_refiner_needs_the_mask_classifier(pipeline_config):
    with pytest.raises(ValueError, match="mask classifier"):
        FacePipeline(pipeline_config, landmark_refiner=LandmarkRefiner())


def test_the_real_mask_classifier_fits_the_interface(pipeline_config):
    mask_classifier = pytest.importorskip("workers.pipeline.mask_classifier")
    try:
        classifier = mask_classifier.MaskClassifier.load()
    except ModelUnavailable as error:
        pytest.skip(f"the mask classifier's weights are not there yet: {error}")
    pipeline = FacePipeline(pipeline_config, mask_classifier=classifier)

    (face,) = pipeline.analyze(encode(face_photo()), purpose="identify").faces

    assert face.mask is not None
    assert 0.0 <= face.mask.probability <= 1.0
    assert face.mask.masked == (face.mask.probability >= 0.5)


def test_exif_rotated_upload_is_analysed_upright(face_pipeline):
    sideways = cv2.rotate(face_photo(), cv2.ROTATE_90_COUNTERCLOCKWISE)  # what a phone sensor stores
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buffer = io.BytesIO()
    Image.fromarray(cv2.cvtColor(sideways, cv2.COLOR_BGR2RGB)).save(buffer, "JPEG", exif=exif, quality=92)

    analysis = face_pipeline.analyze(buffer.getvalue(), purpose="identify")

    assert (analysis.width, analysis.height) == (640, 480)
    (face,) = analysis.faces
    assert abs(face.quality.pose.roll) < 10


@pytest.mark.shared_data
def test_lfw_pairs_are_told_apart(face_pipeline):
    lfw = require_shared_data("lfw_a")
    lines = (lfw / "pairs.txt").read_text().splitlines()[1:]
    pairs = lines[:20] + lines[300:320]  # the first fold's first 20 genuine and 20 impostor pairs

    def embedding(name: str, number: str) -> np.ndarray:
        data = (lfw / "lfw" / name / f"{name}_{int(number):04d}.jpg").read_bytes()
        faces = face_pipeline.analyze(data, purpose="identify").faces
        return min(faces, key=lambda f: abs(f.bbox.x + f.bbox.width / 2 - 125)).embedding

    similarities, genuine = [], []
    for line in pairs:
        fields = line.split()
        if len(fields) == 3:
            first, second = embedding(fields[0], fields[1]), embedding(fields[0], fields[2])
        else:
            first, second = embedding(fields[0], fields[1]), embedding(fields[2], fields[3])
        similarities.append(float(first @ second))
        genuine.append(len(fields) == 3)
    similarities, genuine = np.array(similarities), np.array(genuine)

    assert similarities[genuine].mean() - similarities[~genuine].mean() > 0.4
    assert max(((similarities >= t) == genuine).mean() for t in similarities) >= 0.95


def test_synthetic_mask_templates_cover_the_face_deterministically(pipeline_config):
    from workers.pipeline.enrollment_augmentation import AugmentationConfig
    from workers.pipeline.masks import MaskSynthesizer

    pipeline = FacePipeline(
        pipeline_config,
        mask_synthesizer=MaskSynthesizer(require_shared_data("mask_templates")),
        augmentation=AugmentationConfig(variants=2),
    )
    photo = encode(face_photo())
    [face] = pipeline.analyze(photo, purpose="enroll").faces

    templates = pipeline.synthetic_templates(photo, face, seed="image-sha")

    assert [t.mask_type for t in templates] == ["surgical_blue", "surgical"]
    for template in templates:
        assert template.embedding.shape == face.embedding.shape
        assert np.linalg.norm(template.embedding) == pytest.approx(1.0, abs=1e-5)
        assert float(template.embedding @ face.embedding) < 0.999, "the mask must change the embedding"
        changed = np.abs(template.aligned_crop.astype(np.int16) - face.aligned_crop).sum(axis=2) > 30
        assert changed[75:105, 35:77].mean() > 0.5  # mouth and chin covered
        assert changed[30:55, 20:92].mean() < 0.05  # eyes untouched
    again = pipeline.synthetic_templates(photo, face, seed="image-sha")
    assert all(np.array_equal(a.embedding, b.embedding) for a, b in zip(templates, again, strict=True))


def test_without_a_mask_synthesizer_no_synthetic_templates_are_made(face_pipeline):
    photo = encode(face_photo())
    [face] = face_pipeline.analyze(photo, purpose="enroll").faces

    assert face_pipeline.synthetic_templates(photo, face, seed="image-sha") == []


def test_enrollment_draws_as_many_synthetic_templates_as_the_models_calibration_assumes(pipeline_config):
    from workers.pipeline.config import STUDENT_FILE, STUDENT_V2_FILE, embedding_config
    from workers.pipeline.enrollment_augmentation import DEFAULT_VARIANTS, AugmentationConfig

    model_dir = pipeline_config.embedding.model_path.parent
    if not all((model_dir / student).is_file() for student in (STUDENT_FILE, STUDENT_V2_FILE)):
        pytest.skip("the students are built by `make install` (python -m workers.pipeline.student)")

    def variants(embedding) -> int:
        return FacePipeline(replace(pipeline_config, embedding=embedding)).augmentation.variants

    models = ("sface", "student", "student-flip", "student-v2-flip")
    calibrated = {model: variants(embedding_config(model, model_dir)) for model in models}

    assert calibrated == {"sface": 2, "student": 2, "student-flip": 1, "student-v2-flip": 0}
    assert variants(replace(pipeline_config.embedding, model_name="uncalibrated")) == DEFAULT_VARIANTS
    chosen = AugmentationConfig(variants=3)
    assert FacePipeline(pipeline_config, augmentation=chosen).augmentation is chosen
