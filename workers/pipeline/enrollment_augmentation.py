"""Mask-augmented enrollment: extra "synthetic_mask" templates synthesised from an enrollment photo.

A gallery usually holds unmasked photos while probes are often masked. For each enrolled face we draw
`variants` masks of different types on the ORIGINAL photo (`MaskSynthesizer.apply`, placed from the face's
own YuNet landmarks and box), align each masked photo with the same landmarks and embed it. The templates
are stored next to the original one with kind "synthetic_mask"; `workers.pipeline.matching.score_subjects`
scores them on their own scale, since masked-vs-synthetic-masked impostor similarities run higher than
masked-vs-original ones (the masks themselves look alike).

    templates = synthetic_mask_templates(image_bgr, face.landmarks, face.bbox, synthesizer, pipeline.embedder,
                                         seed=image_sha256)

Everything random (tints, mask height on the nose, cloth pattern) comes from `seed`, so enrolling the same
photo twice gives the same templates. The numbers behind the defaults are in docs/accuracy.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from workers.pipeline.alignment import align_face
from workers.pipeline.detection import BoundingBox
from workers.pipeline.masks import MASK_TYPES, MaskSynthesizer

SYNTHETIC_MASK_KIND = "synthetic_mask"
# Variant j uses mask type j: the most common masks first (RWMFD is mostly blue and white surgical masks,
# then KN95 and cloth), so that every prefix of the list is a sensible set.
DEFAULT_MASK_TYPES: tuple[str, ...] = ("surgical_blue", "surgical", "KN95", "cloth_coloured", "N95", "cloth")
# For a model without a mask-aware calibration. A calibrated model is enrolled with the K its calibration was
# measured with (workers.pipeline.matching): 2 for SFace and the student (on protocol (c), 2 was as good as
# 3 or 4), 1 for the mirror-averaged student (as good as 2 there), 0 for student-v2-flip (on people it never
# trained on, a synthetic template did not help it). docs/accuracy.md.
DEFAULT_VARIANTS = 2


@dataclass(frozen=True)
class AugmentationConfig:
    variants: int = DEFAULT_VARIANTS
    mask_types: tuple[str, ...] = DEFAULT_MASK_TYPES
    # The mask is drawn on a region of the photo around the face box, this fraction of the box size wider on
    # every side: the same result as drawing on the whole photo, without warping a 12-megapixel image.
    context: float = 0.5

    def __post_init__(self) -> None:
        if self.variants < 0:
            raise ValueError(f"variants must be >= 0, not {self.variants}")
        if self.variants and not self.mask_types:
            raise ValueError("mask_types is empty")
        unknown = sorted(set(self.mask_types) - set(MASK_TYPES))
        if unknown:
            raise ValueError(f"unknown mask types {unknown}; choose from {sorted(MASK_TYPES)}")


@dataclass(frozen=True, eq=False)
class SyntheticTemplate:
    kind: str  # always SYNTHETIC_MASK_KIND
    mask_type: str
    embedding: np.ndarray  # (D,) float32, L2-normalised, same model as the pipeline's embedder
    aligned_crop: np.ndarray  # 112x112 BGR uint8, what was embedded


class Embedder:  # the part of workers.pipeline.embedding.FaceEmbedder used here
    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray: ...


def variant_seed(seed: int | str | bytes, variant: int) -> int:
    """A 64-bit seed for one variant, from any caller seed (e.g. the image's SHA-256 hex digest)."""
    if isinstance(seed, int):
        seed = str(seed)
    if isinstance(seed, str):
        seed = seed.encode("utf-8")
    return int.from_bytes(hashlib.sha256(seed + b"|variant|" + str(variant).encode()).digest()[:8], "big")


def _as_box(bbox: BoundingBox | Sequence[float]) -> tuple[float, float, float, float]:
    if isinstance(bbox, BoundingBox):
        return bbox.x, bbox.y, bbox.width, bbox.height
    x, y, w, h = (float(v) for v in bbox)
    return x, y, w, h


def masked_variant_crops(
    image_bgr: np.ndarray,
    landmarks5: np.ndarray | Sequence[Sequence[float]],
    bbox: BoundingBox | Sequence[float],
    synthesizer: MaskSynthesizer,
    *,
    seed: int | str | bytes,
    config: AugmentationConfig = AugmentationConfig(),
    first_variant: int = 0,
) -> list[tuple[str, np.ndarray]]:
    """(mask type, aligned 112x112 BGR crop) of variants `first_variant` .. `config.variants - 1`.

    Variant j always has mask type `config.mask_types[j % len]` and the random draws of `variant_seed(seed,
    j)`, so the first K variants of a larger K are exactly the variants of K.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError("expected a HxWx3 uint8 BGR image")
    landmarks = np.asarray(landmarks5, np.float64).reshape(5, 2)
    x, y, w, h = _as_box(bbox)
    height, width = image_bgr.shape[:2]
    margin_x, margin_y = config.context * w, config.context * h
    # The region covers the box and the landmarks (which may lie outside the box), plus the margin.
    x0 = int(max(0, np.floor(min(x, landmarks[:, 0].min()) - margin_x)))
    y0 = int(max(0, np.floor(min(y, landmarks[:, 1].min()) - margin_y)))
    x1 = int(min(width, np.ceil(max(x + w, landmarks[:, 0].max()) + margin_x)))
    y1 = int(min(height, np.ceil(max(y + h, landmarks[:, 1].max()) + margin_y)))
    region = np.ascontiguousarray(image_bgr[y0:y1, x0:x1])
    offset = np.array([x0, y0], np.float64)
    local_landmarks = landmarks - offset
    local_box = (x - x0, y - y0, w, h)

    variants = []
    for variant in range(first_variant, config.variants):
        mask_type = config.mask_types[variant % len(config.mask_types)]
        rng = np.random.default_rng(variant_seed(seed, variant))
        masked = synthesizer.apply(region, local_landmarks, local_box, rng=rng, mask_type=mask_type)
        variants.append((mask_type, align_face(masked, local_landmarks)))
    return variants


def synthetic_mask_templates(
    image_bgr: np.ndarray,
    landmarks5: np.ndarray | Sequence[Sequence[float]],
    bbox: BoundingBox | Sequence[float],
    synthesizer: MaskSynthesizer,
    embedder: Embedder,
    *,
    seed: int | str | bytes,
    config: AugmentationConfig = AugmentationConfig(),
) -> list[SyntheticTemplate]:
    """`config.variants` masked templates of the face with these landmarks and box (one embed call).

    `embedder` must be the pipeline's (`FacePipeline.embedder`) so the templates share the original's
    model_version. Returns [] when `config.variants` is 0.
    """
    variants = masked_variant_crops(image_bgr, landmarks5, bbox, synthesizer, seed=seed, config=config)
    if not variants:
        return []
    embeddings = embedder.embed(np.stack([crop for _, crop in variants]))
    return [
        SyntheticTemplate(SYNTHETIC_MASK_KIND, mask_type, embedding.astype(np.float32), crop)
        for (mask_type, crop), embedding in zip(variants, embeddings, strict=True)
    ]
