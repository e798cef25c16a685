"""Is this face masked? Logistic regression on hand-made features of the aligned crop's lower face.

Features (all from the 112x112 aligned BGR crop; the lower face is where a mask sits, the upper band of
brows and eyes is the face's own reference for brightness, contrast and skin colour):
- HOG of the lower face at half resolution (mouth and nostril edges versus fabric folds and mask outlines);
- an 11x7 thumbnail of the lower face, normalised by the upper band's brightness and contrast;
- brightness, contrast and fine-texture ratios between lower face and upper band;
- colour: how much of the lower face is far, in YCrCb chroma, from the upper band's skin colour. On a
  grayscale photo these are all zero and the decision rests on the other features.

The SFace embedding is accepted (the pipeline's interface) but not used: SFace is trained to ignore masks
(a person's masked and unmasked embeddings have cosine ~0.8 on LFW). Alone it found 8% of the RWMFD masked
faces at the validation threshold; added to these features it changed RWMFD recall by under half a point
(94.5-95.3% either way); and it would tie this classifier to one embedding model.

Weights come from `python -m workers.training.train_mask_classifier` (synthetic masks on LFW training
identities). The stored bias already includes the decision threshold chosen on validation identities, so
`probability >= 0.5` is the operating point and `masked` is exactly that comparison.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import cv2
import numpy as np

from workers.pipeline.alignment import ALIGNED_SIZE
from workers.pipeline.errors import ModelUnavailable

DEFAULT_WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "mask_classifier.json"
WEIGHTS_FORMAT = "visor-mask-classifier/1"
FEATURES_VERSION = "lower-face-v1"

# Regions of the 112x112 aligned crop (ArcFace template: eyes at y~52, nose tip y~72, mouth y~92).
_UPPER_BAND = (slice(24, 56), slice(20, 92))  # brows and eyes: never covered by a mask
_SKIN_REFERENCE = (slice(36, 60), slice(20, 92))  # eyes and the cheeks just under them
_LOWER_FACE = (slice(56, 112), slice(12, 100))  # nose to chin
_MOUTH_CHIN = (slice(70, 108), slice(26, 86))  # where a mask is on every face, however it is worn
_THUMBNAIL_SIZE = (11, 7)  # (width, height)
_HOG_CELL = 8
_HOG_BINS = 9
# Chroma distances (YCrCb units) from the face's skin colour: lips and shadows stay under the first, blue,
# green, purple or saturated masks pass the second.
_CHROMA_DISTANCES = (10.0, 20.0)


# Length of each feature group, in vector order. HOG: a 28x48 px window at half resolution is 3x6 cells of
# 8 px, i.e. 2x5 blocks of 2x2 cells with _HOG_BINS bins each.
_GROUP_LENGTHS = {
    "hog": 2 * 5 * 4 * _HOG_BINS,
    "thumbnail": _THUMBNAIL_SIZE[0] * _THUMBNAIL_SIZE[1],
    "ratios": 5,
    "colour": 4,
}
# Where each group sits in the vector; training regularises the groups differently.
FEATURE_GROUPS: dict[str, slice] = {
    name: slice(end - length, end)
    for (name, length), end in zip(_GROUP_LENGTHS.items(), accumulate(_GROUP_LENGTHS.values()), strict=True)
}
FEATURE_LENGTH = sum(_GROUP_LENGTHS.values())


def lower_face_features(crop_bgr: np.ndarray) -> np.ndarray:
    """The feature vector (float32) of one aligned 112x112 BGR uint8 crop."""
    if crop_bgr.shape != (ALIGNED_SIZE, ALIGNED_SIZE, 3) or crop_bgr.dtype != np.uint8:
        raise ValueError(f"expected a {ALIGNED_SIZE}x{ALIGNED_SIZE}x3 uint8 crop, got {crop_bgr.shape}")
    gray = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY)
    return np.concatenate(
        [_lower_face_hog(gray), _lower_face_thumbnail(gray), _lower_to_upper_ratios(gray), _colour(crop_bgr)]
    ).astype(np.float32)


def feature_matrix(crops: Sequence[np.ndarray]) -> np.ndarray:
    if not len(crops):
        return np.zeros((0, FEATURE_LENGTH), np.float32)
    return np.stack([lower_face_features(crop) for crop in crops])


def hog(gray: np.ndarray, cell: int = _HOG_CELL, bins: int = _HOG_BINS) -> np.ndarray:
    """Dalal-Triggs HOG: unsigned orientations, 2x2-cell blocks, L2-Hys normalisation (OpenCV 5 dropped its
    HOGDescriptor)."""
    gray = gray.astype(np.float32)
    dx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=1)
    dy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=1)
    magnitude = np.sqrt(dx * dx + dy * dy)
    position = (np.arctan2(dy, dx) % np.pi) / np.pi * bins
    lower_bin = np.floor(position)
    upper_weight = position - lower_bin
    lower_bin = lower_bin.astype(np.int64) % bins
    rows, cols = gray.shape[0] // cell, gray.shape[1] // cell
    height, width = rows * cell, cols * cell
    votes = np.zeros((height, width, bins), np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    votes[ys, xs, lower_bin[:height, :width]] += magnitude[:height, :width] * (
        1 - upper_weight[:height, :width]
    )
    votes[ys, xs, (lower_bin[:height, :width] + 1) % bins] += (
        magnitude[:height, :width] * upper_weight[:height, :width]
    )
    cells = votes.reshape(rows, cell, cols, cell, bins).sum(axis=(1, 3))
    blocks = np.concatenate([cells[:-1, :-1], cells[1:, :-1], cells[:-1, 1:], cells[1:, 1:]], axis=2)
    blocks = blocks / np.sqrt((blocks**2).sum(axis=2, keepdims=True) + 1e-2)
    return np.minimum(blocks, 0.25).ravel()


def _lower_face_hog(gray: np.ndarray) -> np.ndarray:
    # Half resolution: RWMFD faces are often small and blurry, and full-resolution gradients would mostly
    # see JPEG noise and fabric weave.
    half = cv2.resize(gray, (ALIGNED_SIZE // 2, ALIGNED_SIZE // 2), interpolation=cv2.INTER_AREA)
    return hog(half[28:56, 4:52])


def _upper_band_level(gray: np.ndarray) -> tuple[float, float]:
    upper = gray[_UPPER_BAND].astype(np.float32)
    # +8 keeps a flat (overexposed, or blank) upper band from blowing the ratios up.
    return float(upper.mean()), float(upper.std()) + 8.0


def _lower_face_thumbnail(gray: np.ndarray) -> np.ndarray:
    mean, spread = _upper_band_level(gray)
    thumbnail = cv2.resize(gray[_LOWER_FACE], _THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA)
    return (thumbnail.astype(np.float32).ravel() - mean) / spread


def _lower_to_upper_ratios(gray: np.ndarray) -> np.ndarray:
    mean, spread = _upper_band_level(gray)
    lower = gray[_MOUTH_CHIN].astype(np.float32)
    texture = np.abs(cv2.Laplacian(cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.0), cv2.CV_32F))
    return np.array(
        [
            (lower.mean() - mean) / spread,
            lower.std() / spread,
            np.log((texture[_MOUTH_CHIN].mean() + 1) / (texture[_UPPER_BAND].mean() + 1)),
            (np.percentile(lower, 10) - mean) / spread,
            (np.percentile(lower, 90) - mean) / spread,
        ]
    )


def _colour(crop_bgr: np.ndarray) -> np.ndarray:
    ycrcb = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    luma, chroma = ycrcb[..., 0], ycrcb[..., 1:] - 128
    # The face's own skin colour: median chroma of the well-exposed pixels around the eyes (dark or blown
    # pixels carry no reliable chroma).
    reference_luma, reference_chroma = luma[_SKIN_REFERENCE].ravel(), chroma[_SKIN_REFERENCE].reshape(-1, 2)
    exposed = (reference_luma > 50) & (reference_luma < 235)
    skin = np.median(reference_chroma[exposed], axis=0) if exposed.sum() > 20 else np.zeros(2)
    lower_luma, lower_chroma = luma[_MOUTH_CHIN].ravel(), chroma[_MOUTH_CHIN].reshape(-1, 2)
    reliable = (lower_luma > 35) & (lower_luma < 245)
    distance = np.linalg.norm(lower_chroma - skin, axis=1) * reliable
    near, far = _CHROMA_DISTANCES
    return np.array(
        [
            np.mean(distance > near),
            np.mean(distance > far),
            np.minimum(distance, 40).mean() / 10,
            np.linalg.norm(skin) / 10,  # how colourful the skin reference is: 0 on a grayscale photo
        ]
    )


@dataclass(frozen=True)
class MaskClassifier:
    """logit = features . weights + bias; `probability >= 0.5` is the validated operating point."""

    weights: np.ndarray
    bias: float
    metadata: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | str | None = None) -> MaskClassifier:
        path = Path(path) if path else DEFAULT_WEIGHTS_PATH
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ModelUnavailable(f"cannot read mask classifier weights {path}: {error}") from error
        if stored.get("format") != WEIGHTS_FORMAT or stored.get("features") != FEATURES_VERSION:
            raise ModelUnavailable(
                f"{path} holds {stored.get('format')}/{stored.get('features')}, "
                f"this code reads {WEIGHTS_FORMAT}/{FEATURES_VERSION}"
            )
        return cls(
            np.asarray(stored["weights"], np.float64), float(stored["bias"]), stored.get("metadata", {})
        )

    def save(self, path: Path | str) -> None:
        document = {
            "format": WEIGHTS_FORMAT,
            "features": FEATURES_VERSION,
            "bias": self.bias,
            "weights": [float(w) for w in self.weights],
            "metadata": self.metadata,
        }
        Path(path).write_text(json.dumps(document, indent=1) + "\n")

    def probabilities_from_features(self, features: np.ndarray) -> np.ndarray:
        logits = np.asarray(features, np.float64) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))

    def predict(
        self, aligned_crops: Sequence[np.ndarray], embeddings: np.ndarray | None = None
    ) -> list[tuple[bool, float]]:
        """(masked, probability) per aligned 112x112 BGR uint8 crop.

        `embeddings` is the pipeline's (N, D) SFace batch; only its length is checked, see the module notes.
        """
        if embeddings is not None and len(embeddings) != len(aligned_crops):
            raise ValueError(f"{len(aligned_crops)} crops but {len(embeddings)} embeddings")
        if not len(aligned_crops):
            return []
        probabilities = self.probabilities_from_features(feature_matrix(aligned_crops))
        return [(bool(p >= 0.5), float(p)) for p in probabilities]
