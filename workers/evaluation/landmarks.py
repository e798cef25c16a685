"""How well masked faces' landmarks are placed, by YuNet alone and with the landmark refiner.

    .venv/bin/python -m workers.evaluation.landmarks [--photos 300] [--output var/landmarks.json]

Two measurements, in inter-ocular distances (IOD) of the face, per landmark (right eye, left eye, nose
tip, right and left mouth corner):
- error, on LFW test people (never trained on): a synthetic mask is drawn at the landmarks YuNet finds on
  the plain photo (placed on a 640x480 canvas, as the evaluation does), and the points found on the masked
  photo, by YuNet and after refinement, are compared with the plain photo's. For scale: YuNet on the same
  plain photo re-encoded as JPEG (quality 70) or shifted by a few pixels.
- mirror disagreement, on those masked photos and on the largest face of every real masked photo of RWMFD
  (inter-ocular distance of at least 25 px): the points found on the photo against those found on its
  mirror image, mapped back. No ground truth exists for real masks; a localiser that disagrees with itself
  less is steadier, not necessarily right, so this says whether the refiner behaves on real masks as it
  does on the synthetic ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from workers.evaluation.lfw import lfw_canvas
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
        inter_ocular = inter_ocular_distance(points["yunet"])
        return {
            name: np.linalg.norm(_mirror(seen[name], width) - points[name], axis=1) / inter_ocular
            for name in points
        }


def _mirror(points: np.ndarray, width: int) -> np.ndarray:
    flipped = points.copy()
    flipped[:, 0] = width - 1 - flipped[:, 0]
    return flipped[MIRRORED_ORDER]


def _summary(rows: list[np.ndarray]) -> dict:
    values = np.stack(rows)
    return {
        "faces": len(rows),
        "mean_per_point": values.mean(axis=0).round(4).tolist(),
        "mean": round(float(values.mean()), 4),
    }


def measure(
    *, photos: int, lfw_dir: Path, rwmfd_dir: Path, model_dir: Path, rwmfd_photos: int | None = None
) -> dict:
    localisers = Localisers(model_dir)
    synthesizer = MaskSynthesizer()
    rng = np.random.default_rng(0)
    test_photos = lfw_images("test", lfw_dir)
    chosen = test_photos[:: max(1, len(test_photos) // photos)][:photos]
    errors: dict[str, list[np.ndarray]] = {"yunet": [], "refined": [], "yunet_plain_jpeg_or_shift": []}
    synthetic_mirror: dict[str, list[np.ndarray]] = {"yunet": [], "refined": []}
    for photo in chosen:
        canvas = lfw_canvas(photo.path)
        plain_face = localisers.nearest_face(canvas, np.array([320.0, 240.0]))
        if plain_face is None:
            continue
        plain = plain_face.landmark_array()
        inter_ocular = inter_ocular_distance(plain)
        again = _re_detected(localisers, canvas, plain, rng)
        if again is not None:
            errors["yunet_plain_jpeg_or_shift"].append(np.linalg.norm(again - plain, axis=1) / inter_ocular)
        masked = synthesizer.apply(canvas, plain, plain_face.bbox, rng=rng)
        found = localisers.both(masked, plain.mean(axis=0))
        if found is None or np.linalg.norm(found["yunet"].mean(axis=0) - plain.mean(axis=0)) > inter_ocular:
            continue
        for name, points in found.items():
            errors[name].append(np.linalg.norm(points - plain, axis=1) / inter_ocular)
        for name, values in localisers.mirror_disagreement(masked, found).items():
            synthetic_mirror[name].append(values)
    real_mirror: dict[str, list[np.ndarray]] = {"yunet": [], "refined": []}
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
    return {
        "error_against_plain_photo_iod": {name: _summary(rows) for name, rows in errors.items()},
        "mirror_disagreement_iod": {
            "lfw_synthetic_masks": {name: _summary(rows) for name, rows in synthetic_mirror.items()},
            "rwmfd_real_masks": {name: _summary(rows) for name, rows in real_mirror.items()},
        },
    }


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
