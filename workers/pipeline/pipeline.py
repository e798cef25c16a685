"""The face pipeline: image bytes in; faces with boxes, landmarks, quality, mask state and embeddings out.

decode -> detect -> align -> quality -> embed (one batched call for every face of the request, which also
yields the lower-face activations) -> mask -> refine (faces called masked are aligned again from the
landmark refiner's points and embedded again: YuNet places every landmark of a masked face less well).
Sessions are created once per process (see onnx_session), so building several FacePipeline objects with
the same configuration is cheap; the pipeline itself holds no per-request state and is thread-safe.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from workers.pipeline.alignment import align_faces
from workers.pipeline.config import PipelineConfig, QualityFloors
from workers.pipeline.detection import BoundingBox, DetectedFace, FaceDetector
from workers.pipeline.embedding import FaceEmbedder
from workers.pipeline.enrollment_augmentation import (
    DEFAULT_VARIANTS,
    AugmentationConfig,
    SyntheticTemplate,
    synthetic_mask_templates,
)
from workers.pipeline.errors import ImageRejected
from workers.pipeline.intake import decode_image
from workers.pipeline.landmark_refiner import LandmarkRefiner
from workers.pipeline.masks import MaskSynthesizer
from workers.pipeline.matching import CALIBRATIONS as MASK_AWARE_CALIBRATIONS
from workers.pipeline.quality import FaceQuality, assess_quality

Purpose = Literal["enroll", "identify"]


class MaskClassifier(Protocol):
    # The feature map it reads; the embedding model must expose it (EmbeddingConfig.lower_face_tensor).
    lower_face_tensor: str

    def predict(self, lower_face: np.ndarray) -> list[tuple[bool, float]]:
        """(masked, probability of a mask) per row of FaceDescriptors.lower_face."""
        ...


@dataclass(frozen=True)
class MaskPrediction:
    masked: bool
    probability: float


@dataclass(frozen=True, eq=False)
class FaceAnalysis:
    bbox: BoundingBox
    landmarks: tuple[tuple[float, float], ...]
    detection_score: float
    quality: FaceQuality
    # None when the pipeline runs without a mask classifier.
    mask: MaskPrediction | None
    # (D,) float32, L2-normalised; compare only with embeddings of the same ImageAnalysis.model_version.
    embedding: np.ndarray
    # The 112x112 BGR uint8 crop the embedding was computed from: aligned from `landmarks` (YuNet's), or for a
    # face called masked, from the landmark refiner's points when the pipeline has one.
    aligned_crop: np.ndarray


@dataclass(frozen=True)
class StageTimings:
    """Milliseconds per stage. In a batch, embed and mask are shared and split by each image's face count."""

    decode_ms: float
    detect_ms: float
    align_ms: float
    quality_ms: float
    embed_ms: float
    mask_ms: float
    # Landmark refinement, alignment and embedding again of the faces called masked.
    refine_ms: float

    @property
    def total_ms(self) -> float:
        return (
            self.decode_ms
            + self.detect_ms
            + self.align_ms
            + self.quality_ms
            + self.embed_ms
            + self.mask_ms
            + self.refine_ms
        )


@dataclass(frozen=True, eq=False)
class ImageAnalysis:
    width: int
    height: int
    # The `max_faces` largest faces, largest first.
    faces: tuple[FaceAnalysis, ...]
    # How many faces the detector found before `max_faces` was applied.
    faces_detected: int
    model_version: str
    timings: StageTimings


@dataclass(frozen=True, eq=False)
class _PreparedImage:
    """An image taken up to the embedding stage."""

    width: int
    height: int
    # Decoded, kept until the masked faces are aligned again; None when the pipeline has no landmark refiner.
    image: np.ndarray | None
    faces: list[DetectedFace]
    faces_detected: int
    crops: np.ndarray
    qualities: list[FaceQuality]
    decode_ms: float
    detect_ms: float
    align_ms: float
    quality_ms: float


class FacePipeline:
    """Built once per process. `mask_classifier` is injected (the Django layer passes
    workers.pipeline.mask_classifier.MaskClassifier.load()); without one, every face's `mask` is None.
    `mask_synthesizer` enables mask-augmented enrollment templates (`synthetic_templates`); without an
    `augmentation`, a face gets as many as the embedding model's mask-aware calibration was measured with.
    `landmark_refiner` (which needs the mask classifier) re-aligns the faces called masked."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        mask_classifier: MaskClassifier | None = None,
        mask_synthesizer: MaskSynthesizer | None = None,
        augmentation: AugmentationConfig | None = None,
        landmark_refiner: LandmarkRefiner | None = None,
    ) -> None:
        self.config = config
        self.mask_synthesizer = mask_synthesizer
        runtime_options = {
            "intra_op_threads": config.intra_op_threads,
            "inter_op_threads": config.inter_op_threads,
            "thread_spinning": config.thread_spinning,
        }
        self.detector = FaceDetector(config.detection, **runtime_options)
        self.embedder = FaceEmbedder.from_config(config.embedding, **runtime_options)
        self.embedder.load()
        calibration = MASK_AWARE_CALIBRATIONS.get(self.embedder.model_version)
        self.augmentation = augmentation or AugmentationConfig(
            variants=calibration.synthetic_templates if calibration else DEFAULT_VARIANTS
        )
        tensor = config.embedding.lower_face_tensor
        if mask_classifier is not None and mask_classifier.lower_face_tensor != tensor:
            raise ValueError(
                f"the mask classifier reads {mask_classifier.lower_face_tensor!r}, the embedding model is "
                f"configured with {tensor!r}"
            )
        self.mask_classifier = mask_classifier
        if landmark_refiner is not None and mask_classifier is None:
            raise ValueError(
                "the landmark refiner re-aligns the faces the mask classifier calls masked: pass both"
            )
        self.landmark_refiner = landmark_refiner

    @property
    def model_version(self) -> str:
        return self.embedder.model_version

    def analyze(self, image_bytes: bytes, *, purpose: Purpose, max_faces: int = 100) -> ImageAnalysis:
        """Analyse one image; raises an ImageRejected subclass when the image cannot be used."""
        result = self.analyze_batch([image_bytes], purpose=purpose, max_faces=max_faces)[0]
        if isinstance(result, ImageRejected):
            raise result
        return result

    def analyze_batch(
        self, images: Sequence[bytes], *, purpose: Purpose, max_faces: int = 100
    ) -> list[ImageAnalysis | ImageRejected]:
        """Analyse several images, embedding all their faces in one call.

        A rejected image does not fail the batch: its slot holds the ImageRejected it raised.
        """
        floors = self.config.quality.floors_for(purpose)
        if max_faces < 1:
            raise ValueError(f"max_faces must be at least 1, not {max_faces}")
        prepared: list[_PreparedImage | ImageRejected] = []
        for image_bytes in images:
            try:
                prepared.append(self._prepare(image_bytes, floors, max_faces))
            except ImageRejected as rejection:
                prepared.append(rejection)
        ready = [item for item in prepared if isinstance(item, _PreparedImage)]
        crops = [crop for item in ready for crop in item.crops]

        started = time.perf_counter()
        if self.mask_classifier is None:
            embeddings, lower_face = self.embedder.embed(crops), None
        else:
            descriptors = self.embedder.describe(crops)
            embeddings, lower_face = descriptors.embeddings, descriptors.lower_face
        embed_ms = _elapsed_ms(started)
        started = time.perf_counter()
        masks = self._classify_masks(lower_face, len(crops))
        mask_ms = _elapsed_ms(started)
        started = time.perf_counter()
        crops, embeddings = self._realign_masked_faces(ready, crops, embeddings, masks)
        refine_ms = _elapsed_ms(started)

        results: list[ImageAnalysis | ImageRejected] = []
        first_face = 0
        for item in prepared:
            if isinstance(item, ImageRejected):
                results.append(item)
                continue
            face_range = range(first_face, first_face + len(item.faces))
            first_face = face_range.stop
            share = len(face_range) / len(crops) if crops else 0.0
            results.append(
                ImageAnalysis(
                    width=item.width,
                    height=item.height,
                    faces=tuple(
                        FaceAnalysis(
                            bbox=face.bbox,
                            landmarks=face.landmarks,
                            detection_score=face.score,
                            quality=quality,
                            mask=masks[index],
                            embedding=embeddings[index],
                            aligned_crop=crops[index],
                        )
                        for face, quality, index in zip(item.faces, item.qualities, face_range, strict=True)
                    ),
                    faces_detected=item.faces_detected,
                    model_version=self.model_version,
                    timings=StageTimings(
                        decode_ms=item.decode_ms,
                        detect_ms=item.detect_ms,
                        align_ms=item.align_ms,
                        quality_ms=item.quality_ms,
                        embed_ms=embed_ms * share,
                        mask_ms=mask_ms * share,
                        refine_ms=refine_ms * share,
                    ),
                )
            )
        return results

    def synthetic_templates(
        self, image_bytes: bytes, face: FaceAnalysis, *, seed: str
    ) -> list[SyntheticTemplate]:
        """Templates of `face` (found in this image) wearing synthetic masks, for mask-robust enrollment.

        Deterministic for a given `seed` (the image's SHA-256 makes a retried enrollment store the same
        templates). Empty when the pipeline has no mask synthesizer.
        """
        if self.mask_synthesizer is None or not self.augmentation.variants:
            return []
        image = decode_image(image_bytes, limits=self.config.intake)
        return synthetic_mask_templates(
            image,
            face.landmarks,
            face.bbox,
            self.mask_synthesizer,
            self.embedder,
            seed=seed,
            config=self.augmentation,
        )

    def _prepare(self, image_bytes: bytes, floors: QualityFloors, max_faces: int) -> _PreparedImage:
        started = time.perf_counter()
        image = decode_image(image_bytes, limits=self.config.intake)
        decode_ms = _elapsed_ms(started)

        started = time.perf_counter()
        detected = self.detector.detect(image)
        # Like Rekognition's MaxFaces: keep the largest faces, the ones a person in the photo most likely is.
        faces = sorted(detected, key=lambda face: face.bbox.area, reverse=True)[:max_faces]
        detect_ms = _elapsed_ms(started)

        started = time.perf_counter()
        crops = align_faces(image, [face.landmark_array() for face in faces])
        align_ms = _elapsed_ms(started)

        started = time.perf_counter()
        qualities = [
            assess_quality(crop, face.landmark_array(), face.score, floors)
            for face, crop in zip(faces, crops, strict=True)
        ]
        quality_ms = _elapsed_ms(started)
        return _PreparedImage(
            width=image.shape[1],
            height=image.shape[0],
            image=image if self.landmark_refiner is not None else None,
            faces=faces,
            faces_detected=len(detected),
            crops=crops,
            qualities=qualities,
            decode_ms=decode_ms,
            detect_ms=detect_ms,
            align_ms=align_ms,
            quality_ms=quality_ms,
        )

    def _realign_masked_faces(
        self,
        ready: list[_PreparedImage],
        crops: list[np.ndarray],
        embeddings: np.ndarray,
        masks: list[MaskPrediction | None],
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """The crops and embeddings with every masked face aligned from refined landmarks, embedded again."""
        if self.landmark_refiner is None:
            return crops, embeddings
        rows, realigned = [], []
        first_face = 0
        for item in ready:
            masked = [i for i in range(len(item.faces)) if (mask := masks[first_face + i]) and mask.masked]
            if masked:
                detected = [item.faces[i].landmark_array() for i in masked]
                refined = self.landmark_refiner.refine(item.image, detected)
                moved = [
                    (i, points)
                    for i, points, before in zip(masked, refined, detected, strict=True)
                    if not np.array_equal(points, before)
                ]
                realigned.extend(align_faces(item.image, [points for _, points in moved]))
                rows.extend(first_face + i for i, _ in moved)
            first_face += len(item.faces)
        if not rows:
            return crops, embeddings
        crops, embeddings = list(crops), embeddings.copy()
        for row, crop, embedding in zip(rows, realigned, self.embedder.embed(realigned), strict=True):
            crops[row], embeddings[row] = crop, embedding
        return crops, embeddings

    def _classify_masks(self, lower_face: np.ndarray | None, faces: int) -> list[MaskPrediction | None]:
        if self.mask_classifier is None or lower_face is None or not faces:
            return [None] * faces
        predictions = self.mask_classifier.predict(lower_face)
        if len(predictions) != faces:
            raise RuntimeError(f"the mask classifier answered {len(predictions)} times for {faces} faces")
        return [MaskPrediction(masked=bool(masked), probability=float(p)) for masked, p in predictions]


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
