"""Where a masked face's nose, mouth and eyes really are: a small network of Visor's own corrects YuNet.

YuNet regresses all five landmarks from the whole face, so a mask moves every one of them, the eyes included.
Measured on LFW test people with a synthetic mask drawn at the landmarks of the plain photo, YuNet's points
on the masked photo are off by 0.11-0.15 inter-ocular distances on average (the same photo re-encoded or
shifted moves them by 0.04), and on real masked faces (RWMFD) they are as unstable: detected on a mirrored
photo they disagree with themselves by 0.15-0.19 IOD, as on the synthetic ones (0.14-0.18). The embedding
then sees a face aligned a few pixels off, which costs more than the mask itself: masked rank-1 among 830
test people is 86.2% from YuNet's points and 95.0% from the plain photo's (436 probes, student-v2-flip).

The refiner looks at the face aligned from the current points (grey, 56x56) and says where the five
points of the plain face would be in that crop; two passes are made. Trained on synthetic masks over LFW
training people (`workers.training.landmark_refiner`, the recipe of the committed weights). It is run
only on faces the mask classifier calls masked. A refinement that is not a plausible correction (points
not finite, eyes three times closer or further apart, a point moved by more than 1.5 inter-ocular
distances) is dropped for YuNet's points (the network's output is unbounded), and faces whose eyes are
under 20 px apart, smaller than any it was trained on, keep YuNet's points.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from workers.pipeline.alignment import ALIGNED_SIZE, ARCFACE_TEMPLATE, alignment_matrix, transformed
from workers.pipeline.errors import ModelUnavailable
from workers.pipeline.onnx_session import load_model

DEFAULT_WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "masked_landmark_refiner.onnx"
# The network reads the 112x112 aligned crop in grey, averaged down 2x2 (LFW-a, its training data, is grey).
INPUT_SIZE = ALIGNED_SIZE // 2
# It outputs each point's offset from ARCFACE_TEMPLATE in aligned-crop pixels, divided by this.
OFFSET_SCALE = 8.0
# The second pass starts from a crop the first has nearly aligned. On 436 masked test probes one and two
# passes had the same rank-1 within 3 probes; two gave a slightly higher mean genuine cosine (0.583, 0.581).
PASSES = 2
# Smaller faces keep YuNet's points: the training faces' eyes were at least about 22 px apart (LFW-a placed
# at half size), and on RWMFD faces under 12 px a fifth of the refinements changed the eyes' distance by half
# or moved a point further than the eyes are apart (from 25 px, under 1%).
MIN_INTER_OCULAR_PX = 20.0
# YuNet's point order: right eye, left eye, nose tip, right and left mouth corners; a mirror swaps the sides.
MIRRORED_ORDER = [1, 0, 2, 4, 3]


def network_input(crops_gray: np.ndarray) -> np.ndarray:
    """(N, 1, 56, 56) float32 network input from (N, 112, 112) grey uint8 aligned crops."""
    crops = np.asarray(crops_gray, np.float32)
    count = crops.shape[0]
    pooled = crops.reshape(count, INPUT_SIZE, 2, INPUT_SIZE, 2).mean(axis=(2, 4))
    return ((pooled - 127.5) / 128.0)[:, np.newaxis].astype(np.float32)


class LandmarkRefiner:
    def __init__(
        self,
        model_path: Path | str = DEFAULT_WEIGHTS_PATH,
        *,
        intra_op_threads: int = 1,
        inter_op_threads: int = 1,
        thread_spinning: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelUnavailable(f"the landmark refiner's weights are missing: {self.model_path}")
        session = load_model(
            self.model_path,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            thread_spinning=thread_spinning,
        ).session
        self._session = session
        self._input_name = session.get_inputs()[0].name

    def refine(self, image: np.ndarray, landmarks: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Refined (5, 2) landmarks, in `image` pixels, of the masked faces with these YuNet `landmarks`."""
        detected = [np.asarray(points, np.float64).reshape(5, 2) for points in landmarks]
        if not detected:
            return []
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        refined = list(detected)
        refinable = [
            i for i, points in enumerate(detected) if inter_ocular_distance(points) >= MIN_INTER_OCULAR_PX
        ]
        if refinable:
            passes = self._refine_passes(image, [detected[i] for i in refinable])
            for index, points in zip(refinable, passes, strict=True):
                refined[index] = points
        return [points.astype(np.float32) for points in refined]

    def _refine_passes(self, image: np.ndarray, detected: list[np.ndarray]) -> list[np.ndarray]:
        current = detected
        for _ in range(PASSES):
            matrices = [alignment_matrix(points) for points in current]
            crops = np.stack([grey_aligned_crop(image, matrix) for matrix in matrices])
            (offsets,) = self._session.run(None, {self._input_name: network_input(crops)})
            in_crop = offsets.reshape(-1, 5, 2).astype(np.float64) * OFFSET_SCALE + ARCFACE_TEMPLATE
            refined = [_to_image(points, matrix) for points, matrix in zip(in_crop, matrices, strict=True)]
            current = [
                points if _plausible(points, yunet) else yunet
                for points, yunet in zip(refined, detected, strict=True)
            ]
        return current


def inter_ocular_distance(points: np.ndarray) -> float:
    """Pixels between the two eyes of five YuNet-ordered landmarks."""
    return float(np.linalg.norm(points[1] - points[0]))


def _plausible(refined: np.ndarray, detected: np.ndarray) -> bool:
    """Whether `refined` can be a correction of `detected`, not a different or collapsed face.

    The bounds are wide on purpose: under a mask YuNet itself often squeezes the eyes. A check refusing eyes
    spread by more than half changed 28 faces of protocol (c) (the three looked at: eyes 1.5-1.8 times
    further apart once refined) and lost 0.18 points of rank-1, so only what no face could be is refused."""
    if not np.isfinite(refined).all():
        return False
    detected_eyes, refined_eyes = inter_ocular_distance(detected), inter_ocular_distance(refined)
    if not detected_eyes / 3 <= refined_eyes <= 3 * detected_eyes:
        return False
    return float(np.linalg.norm(refined - detected, axis=1).max()) <= 1.5 * max(detected_eyes, refined_eyes)


def grey_aligned_crop(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The aligned crop in grey, warped first and converted after, as the training data were (only the face
    is converted, never the whole photo)."""
    crop = cv2.warpAffine(image, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), flags=cv2.INTER_LINEAR)
    return crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)


def _to_image(crop_points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    return transformed(crop_points, cv2.invertAffineTransform(matrix))
