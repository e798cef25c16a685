"""Train the mask classifier (workers/pipeline/weights/mask_classifier.json) and measure it.

    .venv/bin/python -m workers.training.train_mask_classifier   # ~7 minutes, single-threaded

Seeded and deterministic: the same data, code and seed give the same weights.

Features: each aligned crop's lower-face activations from SFace's conv_12 feature map
(`FaceEmbedder.describe`, the same run that embeds the face in production; SFace and the student share it).

Data (identity-disjoint splits of workers.training.datasets; at most 2 photos per person; faces found by
the production detector and aligned by the production aligner):
- train: `train_images` LFW-a photos of training identities. Each gives a pair: the plain aligned face
  (label 0) and the same face with a synthetic mask (label 1, MaskSynthesizer.apply_aligned placed from the
  face's own landmarks, random type, tint, height, shape, scale and shift), both augmented (below).
- val and test: `eval_images` photos each, of validation and test identities, in two versions:
  "as is" (the photo exactly as the pipeline sees it, and the same photo with a mask drawn on the full
  photo by MaskSynthesizer.apply, then aligned) and "augmented" (pairs made like the training ones).
- Decision threshold: the strictest of the thresholds that call at most `validation_false_positive_rate`
  of the validation plain faces masked, taken separately on the as-is, augmented-grayscale and
  augmented-skin-tinted faces, so that no condition exceeds it. It is below the product's 2% bound, for
  margin. Test numbers are reported, never used.
- RWMFD (real masked photos; never used for fitting or the threshold): every face the production detector
  finds, aligned like in production. The headline is the faces the pipeline would identify without a
  quality issue (identification floors), less the dozen that show no mask or no face
  (datasets.RWMFD_NOT_MASKED); the raw number for those faces, every detection and the largest face per
  photo are reported too. RWMFD recall was looked at while choosing features and penalties, so it is a
  development number, not an untouched test.

Augmentation, applied alike to both classes so that it cannot become the cue:
- landmark noise before alignment (masked faces are aligned from less accurate landmarks) and mirroring;
- LFW-a is grayscale, production photos are colour: half the pairs are tinted with a random skin colour
  (chroma fading in dark and blown-out pixels, redder lips, uneven low-frequency chroma) before the mask
  is drawn, so that what separates the classes is the mask, not colour as such;
- exposure and gamma, downscaling (RWMFD faces are often tiny), blur, noise and JPEG compression.

One L2 penalty for all 512 features (on standardised features); 0.1, 0.01 and 0.03 gave the same validation
and RWMFD numbers within 0.1 point.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from workers.pipeline.alignment import ALIGNED_SIZE, align_face, alignment_matrix, transformed
from workers.pipeline.config import DetectionConfig, QualityConfig, embedding_config
from workers.pipeline.detection import BoundingBox, DetectedFace, FaceDetector
from workers.pipeline.embedding import FaceEmbedder
from workers.pipeline.mask_classifier import DEFAULT_WEIGHTS_PATH, LOWER_FACE_TENSOR, MaskClassifier
from workers.pipeline.masks import MaskSynthesizer
from workers.pipeline.quality import assess_quality
from workers.training.datasets import (
    LfwImage,
    Split,
    lfw_images,
    read_bgr,
    rwmfd_face_is_masked,
    rwmfd_images,
)

# YuNet landmark order is subject-relative; mirroring a face swaps the eyes and the mouth corners.
MIRRORED_LANDMARK_ORDER = [1, 0, 2, 4, 3]


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 20240611
    train_images: int = 3000
    eval_images: int = 1000  # per held-out split (val and test)
    images_per_identity: int = 2
    colour_fraction: float = 0.5
    landmark_noise: float = 0.04  # standard deviation, as a fraction of the inter-ocular distance
    mask_anchor_jitter: float = 0.05  # the same, for the six mask anchors: mask shapes beyond the templates
    penalty: float = 0.01  # L2, on standardised features
    validation_false_positive_rate: float = 0.015


@dataclass(frozen=True)
class LfwFace:
    image: np.ndarray  # the LFW-a photo, BGR
    landmarks: np.ndarray  # (5, 2) YuNet landmarks
    bbox: BoundingBox


@dataclass(frozen=True)
class PairedSamples:
    crops: np.ndarray  # (2N, 112, 112, 3) uint8: plain faces, then their masked versions
    labels: np.ndarray  # (2N,) 0 = plain, 1 = masked
    coloured: np.ndarray  # (2N,) bool: tinted with a skin colour


def pick_images(split: Split, count: int, per_identity: int, rng: np.random.Generator) -> list[LfwImage]:
    """`count` photos of `split`, at most `per_identity` per person, so no one face dominates."""
    by_identity: dict[str, list[LfwImage]] = {}
    for image in lfw_images(split):
        by_identity.setdefault(image.identity, []).append(image)
    candidates = []
    for identity in sorted(by_identity):
        images = by_identity[identity]
        candidates += [images[i] for i in sorted(rng.permutation(len(images))[:per_identity])]
    chosen = rng.permutation(len(candidates))[:count]
    return [candidates[i] for i in sorted(chosen)]


def central_face(image: np.ndarray, detector: FaceDetector) -> DetectedFace | None:
    """LFW-a photos are centred on the labelled person; other detections are bystanders."""
    faces = detector.detect(image)
    if not faces:
        return None
    centre = np.array(image.shape[1::-1]) / 2
    return min(
        faces,
        key=lambda f: np.abs(
            np.array([f.bbox.x + f.bbox.width / 2, f.bbox.y + f.bbox.height / 2]) - centre
        ).sum(),
    )


def pseudo_colour(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A grayscale crop tinted like skin: random skin chroma, faded in dark and blown-out pixels, redder lips,
    uneven low-frequency chroma and a white-balance cast."""
    luma = crop[..., 0].astype(np.float32)
    # Cr and Cb of skin: centred on what RWMFD faces measure (median Cr 146, Cb 116), spread towards
    # darker and redder skin.
    red_difference = np.clip(rng.normal(148, 5), 136, 162) - 128
    blue_difference = np.clip(rng.normal(112, 6), 98, 126) - 128
    saturation = np.clip((luma - 15) / 50, 0, 1) * np.clip((252 - luma) / 30, 0, 1)

    def low_frequency_noise(amplitude: float) -> np.ndarray:
        noise = rng.normal(0, 1, (ALIGNED_SIZE, ALIGNED_SIZE)).astype(np.float32)
        return cv2.GaussianBlur(noise, (0, 0), 12) * amplitude * 12

    mouth = (landmarks[3] + landmarks[4]) / 2
    mouth_width = float(np.linalg.norm(landmarks[4] - landmarks[3])) + 1
    ys, xs = np.mgrid[0:ALIGNED_SIZE, 0:ALIGNED_SIZE]
    lips = np.exp(
        -(((xs - mouth[0]) / (0.55 * mouth_width)) ** 2 + ((ys - mouth[1] - 2) / (0.22 * mouth_width)) ** 2)
    )
    red = red_difference + low_frequency_noise(4) + lips * rng.uniform(4, 14)
    blue = blue_difference + low_frequency_noise(4) - lips * rng.uniform(0, 5)
    ycrcb = np.dstack([luma, 128 + red * saturation, 128 + blue * saturation])
    bgr = cv2.cvtColor(np.clip(ycrcb, 0, 255).astype(np.uint8), cv2.COLOR_YCrCb2BGR).astype(np.float32)
    return np.clip(bgr * rng.normal(1, 0.04, 3), 0, 255).astype(np.uint8)


def degrade(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exposure, resolution, blur, noise and JPEG as cameras and the web produce them."""
    image = crop.astype(np.float32)
    image = 255 * (image / 255) ** rng.uniform(0.6, 1.6) * rng.uniform(0.6, 1.25) + rng.uniform(-20, 20)
    image = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        side = int(rng.uniform(24, ALIGNED_SIZE))
        small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (ALIGNED_SIZE, ALIGNED_SIZE), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 2.0))
    if rng.random() < 0.3:
        image = np.clip(image + rng.normal(0, rng.uniform(2, 8), image.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.6:
        _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 95))])
        image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return image


def training_pair(
    image: np.ndarray,
    landmarks: np.ndarray,
    coloured: bool,
    synthesizer: MaskSynthesizer,
    rng: np.random.Generator,
    config: TrainingConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """(plain, masked) aligned crops of one face, each with its own alignment noise and degradation."""
    crops = []
    for masked in (False, True):
        inter_ocular = float(np.linalg.norm(landmarks[1] - landmarks[0]))
        noisy = landmarks + rng.normal(0, config.landmark_noise * inter_ocular, landmarks.shape)
        matrix = alignment_matrix(noisy)
        crop = cv2.warpAffine(image, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), flags=cv2.INTER_LINEAR)
        crop_landmarks = transformed(landmarks, matrix)
        if rng.random() < 0.5:
            crop = np.ascontiguousarray(crop[:, ::-1])
            crop_landmarks = crop_landmarks[MIRRORED_LANDMARK_ORDER]
            crop_landmarks[:, 0] = ALIGNED_SIZE - 1 - crop_landmarks[:, 0]
        if coloured:
            crop = pseudo_colour(crop, crop_landmarks, rng)
        if masked:
            crop = synthesizer.apply_aligned(
                crop, rng=rng, landmarks5=crop_landmarks, anchor_jitter=config.mask_anchor_jitter
            )
        crops.append(degrade(crop, rng))
    return crops[0], crops[1]


def paired_samples(
    faces: list[LfwFace],
    synthesizer: MaskSynthesizer,
    rng: np.random.Generator,
    config: TrainingConfig,
) -> PairedSamples:
    plain, masked, coloured = [], [], []
    for face in faces:
        tinted = bool(rng.random() < config.colour_fraction)
        pair = training_pair(face.image, face.landmarks, tinted, synthesizer, rng, config)
        plain.append(pair[0])
        masked.append(pair[1])
        coloured.append(tinted)
    labels = np.repeat([0, 1], len(plain))
    return PairedSamples(np.stack(plain + masked), labels, np.tile(coloured, 2))


def as_is_samples(
    faces: list[LfwFace], synthesizer: MaskSynthesizer, rng: np.random.Generator
) -> PairedSamples:
    """Each photo as the pipeline sees it, and with a mask drawn on the full photo (not on the crop)."""
    plain = [align_face(face.image, face.landmarks) for face in faces]
    masked = [
        align_face(synthesizer.apply(face.image, face.landmarks, face.bbox, rng=rng), face.landmarks)
        for face in faces
    ]
    labels = np.repeat([0, 1], len(plain))
    return PairedSamples(np.stack(plain + masked), labels, np.zeros(len(labels), bool))


def fit_logistic_regression(
    features: np.ndarray, labels: np.ndarray, penalties: float | np.ndarray
) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton's method on standardised features.

    `penalties` is the L2 weight, one for all features or one per feature. Returns weights and bias for
    the raw features (the standardisation is folded in).
    """
    mean, scale = features.mean(axis=0), features.std(axis=0) + 1e-6
    design = np.hstack([(features - mean) / scale, np.ones((len(features), 1))])
    penalty = np.diag(np.append(np.broadcast_to(penalties, mean.shape), 0.0))  # the intercept is not shrunk
    coefficients = np.zeros(design.shape[1])
    for _ in range(50):
        probabilities = 1 / (1 + np.exp(-design @ coefficients))
        gradient = design.T @ (probabilities - labels) / len(labels) + penalty @ coefficients
        curvature = probabilities * (1 - probabilities)
        hessian = (design * curvature[:, None]).T @ design / len(labels) + penalty
        step = np.linalg.solve(hessian, gradient)
        coefficients -= step
        if np.abs(step).max() < 1e-9:
            break
    weights = coefficients[:-1] / scale
    return weights, float(coefficients[-1] - mean @ weights)


def threshold_at_false_positive_rate(negative_logits: np.ndarray, rate: float) -> float:
    """A logit threshold that calls at most `rate` of these negatives positive (logit >= threshold).

    Halfway between the last negative allowed above it and the first kept below, so that rounding in a
    later recomputation of the logits cannot move a negative across.
    """
    ordered = np.sort(negative_logits)[::-1]
    allowed = int(np.floor(rate * len(ordered)))
    if allowed >= len(ordered):
        return float(ordered[-1])
    if allowed == 0:
        return float(ordered[0] + 1e-6)
    return float((ordered[allowed - 1] + ordered[allowed]) / 2)


def validation_threshold(
    logits: dict[str, np.ndarray], samples: dict[str, PairedSamples], rate: float
) -> float:
    """The strictest per-condition threshold over the validation conditions (see the module notes)."""
    augmented, as_is = samples["augmented"], samples["as_is"]
    conditions = [
        logits["as_is"][as_is.labels == 0],
        logits["augmented"][(augmented.labels == 0) & ~augmented.coloured],
        logits["augmented"][(augmented.labels == 0) & augmented.coloured],
    ]
    return max(threshold_at_false_positive_rate(negatives, rate) for negatives in conditions)


def rates(called: np.ndarray, samples: PairedSamples) -> dict[str, float | int]:
    plain, masked = samples.labels == 0, samples.labels == 1
    measured = {
        "false_positive_rate": float(called[plain].mean()),
        "recall": float(called[masked].mean()),
        "plain_faces": int(plain.sum()),
        "masked_faces": int(masked.sum()),
    }
    if samples.coloured.any():
        measured["false_positive_rate_grayscale"] = float(called[plain & ~samples.coloured].mean())
        measured["false_positive_rate_skin_tinted"] = float(called[plain & samples.coloured].mean())
    return measured


def lower_face_features(crops: np.ndarray, embedder: FaceEmbedder, batch: int = 64) -> np.ndarray:
    """(N, 512) lower-face activations of aligned crops, as the production pipeline computes them."""
    return np.concatenate(
        [embedder.describe(crops[start : start + batch]).lower_face for start in range(0, len(crops), batch)]
    )


def evaluate_rwmfd(
    classifier: MaskClassifier, detector: FaceDetector, embedder: FaceEmbedder
) -> dict[str, float | int]:
    """Recall on real masked photos, every face as production sees it (production detector and aligner).

    "audited": the faces without quality issues, less the few that show no mask (RWMFD_NOT_MASKED); the
    unmasked ones among them also give a (tiny) false-positive count on real colour faces.
    """
    floors = QualityConfig().identify
    called, clean, largest, masked = [], [], [], []
    for path in rwmfd_images():
        image = read_bgr(path)
        faces = detector.detect(image)
        if not faces:
            continue
        crops = [align_face(image, face.landmark_array()) for face in faces]
        predictions = classifier.predict(embedder.describe(crops).lower_face)
        biggest = max(range(len(faces)), key=lambda i: faces[i].bbox.area)
        for index, (face, crop, (called_masked, _)) in enumerate(zip(faces, crops, predictions, strict=True)):
            box = face.bbox
            quality = assess_quality(crop, face.landmark_array(), face.score, floors)
            called.append(called_masked)
            clean.append(not quality.issues)
            largest.append(index == biggest)
            masked.append(
                rwmfd_face_is_masked(path, box.x + box.width / 2, box.y + box.height / 2, box.width)
            )
    called_array, clean_array, largest_array = np.array(called), np.array(clean), np.array(largest)
    audited = clean_array & np.array(masked)
    not_masked = clean_array & ~np.array(masked)
    return {
        "recall_faces_without_quality_issues": float(called_array[clean_array].mean()),
        "faces_without_quality_issues": int(clean_array.sum()),
        "recall_masked_faces_audited": float(called_array[audited].mean()),
        "masked_faces_audited": int(audited.sum()),
        "listed_not_masked_called_masked": int(called_array[not_masked].sum()),
        "listed_not_masked": int(not_masked.sum()),
        "recall_largest_face_per_photo": float(called_array[largest_array].mean()),
        "photos_with_a_face": int(largest_array.sum()),
        "recall_all_detections": float(called_array.mean()),
        "detections": len(called_array),
    }


def detect_faces(images: list[LfwImage], detector: FaceDetector) -> list[LfwFace]:
    faces = []
    for item in images:
        image = read_bgr(item.path)
        face = central_face(image, detector)
        if face is not None:
            faces.append(LfwFace(image, face.landmark_array().astype(np.float64), face.bbox))
    return faces


def train(config: TrainingConfig, output: Path) -> dict:
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:5.0f} s] {message}", flush=True)

    # LFW-a faces are large (eyes ~40 px apart in a 250 px photo): one pass at the photo's own scale finds
    # them, without the enlarged second pass production adds for thumbnails.
    lfw_detector = FaceDetector(replace(DetectionConfig(), max_upscale=1.0), intra_op_threads=1)
    embedder = FaceEmbedder.from_config(embedding_config("sface"), intra_op_threads=1)
    if embedder.lower_face_tensor != LOWER_FACE_TENSOR:
        raise ValueError(f"SFace's configured lower_face_tensor is not {LOWER_FACE_TENSOR!r}")
    synthesizer = MaskSynthesizer()
    # Per split, per kind ("augmented" pairs; "as_is" photos for val and test): the samples.
    samples: dict[str, dict[str, PairedSamples]] = {}
    split_sizes = {"train": config.train_images, "val": config.eval_images, "test": config.eval_images}
    for (split, count), seed in zip(
        split_sizes.items(), np.random.SeedSequence(config.seed).spawn(3), strict=True
    ):
        rng = np.random.default_rng(seed)
        faces = detect_faces(pick_images(split, count, config.images_per_identity, rng), lfw_detector)
        samples[split] = {"augmented": paired_samples(faces, synthesizer, rng, config)}
        if split != "train":
            samples[split]["as_is"] = as_is_samples(faces, synthesizer, rng)
        log(f"{split}: {len(faces)} faces")

    features = {
        split: {
            kind: lower_face_features(kind_samples.crops, embedder) for kind, kind_samples in by_kind.items()
        }
        for split, by_kind in samples.items()
    }
    weights, bias = fit_logistic_regression(
        features["train"]["augmented"],
        samples["train"]["augmented"].labels,
        config.penalty,
    )
    validation_logits = {kind: f @ weights + bias for kind, f in features["val"].items()}
    threshold = validation_threshold(validation_logits, samples["val"], config.validation_false_positive_rate)
    classifier = MaskClassifier(weights, bias - threshold)
    metrics: dict = {
        split: {
            kind: rates(classifier.probabilities(features[split][kind]) >= 0.5, kind_samples)
            for kind, kind_samples in by_kind.items()
        }
        for split, by_kind in samples.items()
    }
    log("fitted; measuring on RWMFD")
    metrics["rwmfd"] = evaluate_rwmfd(
        classifier, FaceDetector(DetectionConfig(), intra_op_threads=1), embedder
    )
    metrics["training_seconds"] = round(time.monotonic() - started, 1)
    log("done")
    classifier = replace(
        classifier,
        metadata={"config": asdict(config), "features_from": embedder.model_version, "metrics": metrics},
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    classifier.save(output)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_WEIGHTS_PATH)
    parser.add_argument("--seed", type=int, default=TrainingConfig.seed)
    parser.add_argument("--train-images", type=int, default=TrainingConfig.train_images)
    parser.add_argument("--eval-images", type=int, default=TrainingConfig.eval_images)
    args = parser.parse_args(argv)
    # Single-threaded everywhere (OpenCV and onnxruntime): reproducible, and polite to other jobs.
    cv2.setNumThreads(1)
    config = TrainingConfig(seed=args.seed, train_images=args.train_images, eval_images=args.eval_images)
    metrics = train(config, args.output)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
