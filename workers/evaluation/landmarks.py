"""How well masked faces' landmarks are placed, by YuNet alone and with the landmark refiner.

    .venv/bin/python -m workers.evaluation.landmarks [--photos 300] [--output var/landmarks.json]

Measurements in inter-ocular distances (IOD) of the face, per landmark (right eye, left eye, nose tip,
right and left mouth corner):
- error, on LFW test people (never trained on): a synthetic mask is drawn at the landmarks YuNet finds on
  the plain photo (placed on a 640x480 canvas, as the evaluation does), and the points found on the masked
  photo, by YuNet and after refinement, are compared with the plain photo's. For scale: YuNet on the same
  plain photo re-encoded as JPEG (quality 70) or shifted by a few pixels. Measured twice: on the upright
  canvas, and with the canvas turned by up to +-25 degrees (real photos have tilted heads; LFW-a's are
  upright).
- disagreement with itself, on those masked photos and on the largest face of every real masked photo of
  RWMFD (inter-ocular distance of at least 25 px): the points found on the photo against those found on
  its mirror image, and against those found on the photo turned (+-10 degrees), scaled (0.8-1.25) and
  moved (+-8 px) about the face, mapped back. No ground truth exists for real masks; a localiser that
  disagrees with itself less is steadier, not necessarily right, so this says whether the refiner behaves
  on real masks as it does on the synthetic ones. A mirror-averaged localiser agrees with its mirrored
  self by construction, so the perturbation is the fairer test of the two; its share of faces moved by
  more than 0.2 IOD counts outright failures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from workers.evaluation.lfw import lfw_canvas
from workers.pipeline.alignment import transformed
from workers.pipeline.config import DEFAULT_MODEL_DIR, YUNET_FILE, DetectionConfig
from workers.pipeline.detection import DetectedFace, FaceDetector, nearest_face
from workers.pipeline.landmark_refiner import MIRRORED_ORDER, LandmarkRefiner, inter_ocular_distance
from workers.pipeline.masks import MaskSynthesizer
from workers.training.datasets import LFW_DIR, RWMFD_DIR, lfw_images, read_bgr, rwmfd_images

MIN_RWMFD_INTER_OCULAR = 25.0


class Localisers:
    def __init__(self, model_dir: Path) -> None:
        self.detector = FaceDetector(DetectionConfig(model_path=Path(model_dir) / YUNET_FILE))
        self.refiner = LandmarkRefiner()

    def nearest_face(self, image: np.ndarray, near: np.ndarray) -> DetectedFace | None:
        return nearest_face(self.detector.detect(image), near)

    def nearest(self, image: np.ndarray, near: np.ndarray) -> np.ndarray | None:
        face = self.nearest_face(image, near)
        return None if face is None else face.landmark_array()

    def both(self, image: np.ndarray, near: np.ndarray) -> dict[str, np.ndarray] | None:
        found = self.nearest(image, near)
        if found is None:
            return None
        return {"yunet": found, "refined": self.refiner.refine(image, [found])[0]}

    def mirror_disagreement(self, image: np.ndarray, points: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        width = image.shape[1]
        mirrored = np.ascontiguousarray(image[:, ::-1])
        seen = self.both(mirrored, _mirror(points["yunet"], width).mean(axis=0))
        if seen is None:
            return {}
        return _disagreement({name: _mirror(found, width) for name, found in seen.items()}, points)

    def perturbation_disagreement(
        self, image: np.ndarray, points: dict[str, np.ndarray], rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        centre = points["yunet"].mean(axis=0)
        angle = float(rng.uniform(-10.0, 10.0))
        scale = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, scale)
        matrix[:, 2] += rng.uniform(-8.0, 8.0, 2)
        size = (image.shape[1], image.shape[0])
        moved = cv2.warpAffine(image, matrix, size, borderMode=cv2.BORDER_REPLICATE)
        seen = self.both(moved, transformed(centre, matrix))
        if seen is None:
            return {}
        back = cv2.invertAffineTransform(matrix)
        return _disagreement({name: transformed(found, back) for name, found in seen.items()}, points)


def _disagreement(found_again: dict[str, np.ndarray], points: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per localiser, how far the points found again (mapped back into the photo) lie from `points`, in the
    face's inter-ocular distances; nothing when what was found again is another face."""
    if not _same_face(found_again["yunet"], points["yunet"]):
        return {}
    inter_ocular = inter_ocular_distance(points["yunet"])
    return {name: np.linalg.norm(found_again[name] - points[name], axis=1) / inter_ocular for name in points}


def _same_face(found: np.ndarray, reference: np.ndarray) -> bool:
    """Whether points found again belong to the face of `reference`, not to another face of the photo."""
    distance = np.linalg.norm(found.mean(axis=0) - reference.mean(axis=0))
    return bool(distance <= inter_ocular_distance(reference))


def _mirror(points: np.ndarray, width: int) -> np.ndarray:
    flipped = points.copy()
    flipped[:, 0] = width - 1 - flipped[:, 0]
    return flipped[MIRRORED_ORDER]


def _summary(rows: list[np.ndarray]) -> dict:
    if not rows:
        return {"faces": 0}
    values = np.stack(rows)
    per_face = values.mean(axis=1)
    return {
        "faces": len(rows),
        "mean_per_point": values.mean(axis=0).round(4).tolist(),
        "mean": round(float(values.mean()), 4),
        "median_face": round(float(np.median(per_face)), 4),
        "faces_over_0.2": round(float((per_face > 0.2).mean()), 4),
    }


def _tilted(canvas: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = canvas.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), float(rng.uniform(-25.0, 25.0)), 1.0)
    return cv2.warpAffine(canvas, matrix, (width, height), borderValue=(128, 128, 128))


def measure(
    *, photos: int, lfw_dir: Path, rwmfd_dir: Path, model_dir: Path, rwmfd_photos: int | None = None
) -> dict:
    localisers = Localisers(model_dir)
    synthesizer = MaskSynthesizer()
    rng = np.random.default_rng(0)
    test_photos = lfw_images("test", lfw_dir)
    chosen = test_photos[:: max(1, len(test_photos) // photos)][:photos]
    errors: dict[str, list[np.ndarray]] = {"yunet": [], "refined": []}
    plain_noise: list[np.ndarray] = []
    tilted_errors: dict[str, list[np.ndarray]] = {"yunet": [], "refined": []}
    synthetic_mirror: dict[str, list[np.ndarray]] = {"yunet": [], "refined": []}
    for photo in chosen:
        canvas = lfw_canvas(photo.path)
        found = _masked_points(localisers, synthesizer, canvas, rng, plain_noise)
        if found is None:
            continue
        masked, plain, points = found
        for name, values in _errors(points, plain).items():
            errors[name].append(values)
        for name, values in localisers.mirror_disagreement(masked, points).items():
            synthetic_mirror[name].append(values)
        tilted = _masked_points(localisers, synthesizer, _tilted(canvas, rng), rng, None)
        if tilted is not None:
            for name, values in _errors(tilted[2], tilted[1]).items():
                tilted_errors[name].append(values)
    real_mirror: dict[str, list[np.ndarray]] = {"yunet": [], "refined": []}
    real_perturbed: dict[str, list[np.ndarray]] = {"yunet": [], "refined": []}
    for path in rwmfd_images(rwmfd_dir)[:rwmfd_photos]:
        image = read_bgr(path)
        faces = localisers.detector.detect(image)
        if not faces:
            continue
        largest = max(faces, key=lambda face: face.bbox.area).landmark_array()
        if inter_ocular_distance(largest) < MIN_RWMFD_INTER_OCULAR:
            continue
        found = {"yunet": largest, "refined": localisers.refiner.refine(image, [largest])[0]}
        for name, values in localisers.mirror_disagreement(image, found).items():
            real_mirror[name].append(values)
        for name, values in localisers.perturbation_disagreement(image, found, rng).items():
            real_perturbed[name].append(values)
    return {
        "error_against_plain_photo_iod": {
            **{name: _summary(rows) for name, rows in errors.items()},
            "yunet_plain_jpeg_or_shift": _summary(plain_noise),
        },
        "error_against_plain_photo_iod_tilted_25": {
            name: _summary(rows) for name, rows in tilted_errors.items()
        },
        "mirror_disagreement_iod": {
            "lfw_synthetic_masks": {name: _summary(rows) for name, rows in synthetic_mirror.items()},
            "rwmfd_real_masks": {name: _summary(rows) for name, rows in real_mirror.items()},
        },
        "perturbation_disagreement_iod": {
            "rwmfd_real_masks": {name: _summary(rows) for name, rows in real_perturbed.items()}
        },
    }


def _masked_points(
    localisers: Localisers,
    synthesizer: MaskSynthesizer,
    canvas: np.ndarray,
    rng: np.random.Generator,
    plain_noise: list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]] | None:
    """(masked photo, plain photo's points, points found on the masked photo) for a mask drawn at the plain
    photo's points; `plain_noise` also collects YuNet's own error on the plain photo re-encoded or shifted."""
    plain_face = localisers.nearest_face(canvas, np.array([canvas.shape[1] / 2, canvas.shape[0] / 2]))
    if plain_face is None:
        return None
    plain = plain_face.landmark_array()
    inter_ocular = inter_ocular_distance(plain)
    if plain_noise is not None:
        again = _re_detected(localisers, canvas, plain, rng)
        if again is not None:
            plain_noise.append(np.linalg.norm(again - plain, axis=1) / inter_ocular)
    masked = synthesizer.apply(canvas, plain, plain_face.bbox, rng=rng)
    found = localisers.both(masked, plain.mean(axis=0))
    if found is None or not _same_face(found["yunet"], plain):
        return None
    return masked, plain, found


def _errors(points: dict[str, np.ndarray], plain: np.ndarray) -> dict[str, np.ndarray]:
    inter_ocular = inter_ocular_distance(plain)
    return {name: np.linalg.norm(found - plain, axis=1) / inter_ocular for name, found in points.items()}


def _re_detected(localisers: Localisers, canvas: np.ndarray, plain: np.ndarray, rng) -> np.ndarray | None:
    """YuNet's points on the same plain photo, JPEG-compressed or shifted by a few pixels (mapped back)."""
    if rng.random() < 0.5:
        encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 70])[1]
        return localisers.nearest(cv2.imdecode(encoded, cv2.IMREAD_COLOR), plain.mean(axis=0))
    dx, dy = (int(v) for v in rng.integers(1, 6, 2))
    shift = np.array([dx, dy], np.float32)
    shifted = np.full_like(canvas, 128)
    shifted[dy:, dx:] = canvas[:-dy, :-dx]
    found = localisers.nearest(shifted, plain.mean(axis=0) + shift)
    return None if found is None else found - shift


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=300, help="LFW test photos")
    parser.add_argument("--rwmfd-photos", type=int, default=None, help="the first N RWMFD photos (all)")
    parser.add_argument("--lfw-dir", type=Path, default=LFW_DIR)
    parser.add_argument("--rwmfd-dir", type=Path, default=RWMFD_DIR)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    report = measure(
        photos=args.photos,
        lfw_dir=args.lfw_dir,
        rwmfd_dir=args.rwmfd_dir,
        model_dir=args.model_dir,
        rwmfd_photos=args.rwmfd_photos,
    )
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
