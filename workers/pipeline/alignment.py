"""Face alignment: a similarity transform from the 5 detected landmarks onto the ArcFace 112x112 template.

The transform is the closed-form least-squares similarity (Umeyama 1991), the same estimator OpenCV's
FaceRecognizerSF.alignCrop uses; unlike cv2.estimateAffinePartial2D it involves no random sampling, so
the same landmarks always give the same crop.
"""

from collections.abc import Sequence

import cv2
import numpy as np

ALIGNED_SIZE = 112
# Right eye, left eye, nose tip, right and left mouth corners (the subject's sides), in YuNet's order.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 rotation + uniform scale + translation that best maps `source` points onto `target` points."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular_values, vt = np.linalg.svd(covariance)
    reflection_fix = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection_fix[1, 1] = -1.0
    rotation = u @ reflection_fix @ vt
    source_variance = (source_centred**2).sum() / len(source)
    if source_variance <= 0:
        raise ValueError("the landmarks coincide; no transform maps them onto the template")
    scale = (singular_values * np.diag(reflection_fix)).sum() / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, np.newaxis]])


def transformed(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(..., 2) points mapped by a 2x3 affine matrix (as cv2.warpAffine maps pixels)."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(landmarks: np.ndarray, *, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The 2x3 matrix taking source-image pixels to the `size` x `size` aligned crop."""
    return similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / ALIGNED_SIZE))


def align_face(image: np.ndarray, landmarks: np.ndarray, *, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The aligned `size` x `size` crop (same dtype and channels as `image`); outside pixels are black."""
    matrix = alignment_matrix(landmarks, size=size)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def align_faces(
    image: np.ndarray, landmarks: Sequence[np.ndarray], *, size: int = ALIGNED_SIZE
) -> np.ndarray:
    """All faces of one image aligned, stacked as an (N, size, size, channels) array ready for batching."""
    channels = image.shape[2] if image.ndim == 3 else 1
    crops = np.empty((len(landmarks), size, size, channels), dtype=image.dtype)
    for index, points in enumerate(landmarks):
        crops[index] = align_face(image, points, size=size).reshape(size, size, channels)
    return crops
