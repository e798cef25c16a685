"""Similarity between embeddings and its calibrated mapping to a match confidence.

A calibration belongs to one exact embedding model (its model_version, hash included): cosine values of
different models are not comparable. The constants below are produced by `python -m
workers.pipeline.calibrate` (see that module for the protocol); rerun it for any new model.
"""

from dataclasses import dataclass

import numpy as np


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Cosine similarity of embeddings; inputs need not be normalised.

    Two vectors give a float; a (D,) vector and an (N, D) matrix give (N,); (N, D) and (M, D) give (N, M).
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    a_unit = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), np.finfo(np.float32).tiny)
    b_unit = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), np.finfo(np.float32).tiny)
    similarity = a_unit @ b_unit.T
    return float(similarity) if similarity.ndim == 0 else similarity


@dataclass(frozen=True)
class SimilarityCalibration:
    """Logistic mapping cosine -> P(same person), and the cosine thresholds at fixed false-accept rates.

    The probability assumes equal priors of genuine and impostor comparisons (it is fitted on a balanced
    set); thresholds are absolute and do not depend on that assumption.
    """

    model_version: str
    slope: float
    intercept: float
    threshold_far_1e3: float
    threshold_far_1e4: float

    def confidence(self, similarity: float | np.ndarray) -> float | np.ndarray:
        logits = self.slope * np.asarray(similarity, dtype=np.float64) + self.intercept
        probability = 0.5 * (1.0 + np.tanh(0.5 * logits))  # the logistic function, without exp overflow
        return float(probability) if probability.ndim == 0 else probability

    def threshold_for_far(self, false_accept_rate: float) -> float:
        thresholds = {1e-3: self.threshold_far_1e3, 1e-4: self.threshold_far_1e4}
        if false_accept_rate not in thresholds:
            raise ValueError(
                f"calibrated false-accept rates are {sorted(thresholds)}, not {false_accept_rate}"
            )
        return thresholds[false_accept_rate]


# Measured on LFW-a (grayscale, all 13,233 images, a face found in every one) through this pipeline (YuNet,
# alignment, SFace), by `python -m workers.pipeline.calibrate` (seed 0):
# - logistic regression of genuine vs impostor on the cosine of the 6,000 pairs of the standard pairs.txt;
#   P(same) = 0.5 at cosine 0.316. 10-fold pairs.txt accuracy of plain SFace: 99.43% +- 0.31%.
# - FAR thresholds from 200,000 random cross-identity image pairs (1e-4: the 20 highest impostors). True
#   accept rate at FAR 1e-3: 98.2% of pairs.txt genuine pairs (99.7% of all 242,257 same-identity pairs);
#   at FAR 1e-4: 96.2% (99.2%). Unmasked faces only: masked probes need their own thresholds (matching.py).
SFACE_2021DEC_CALIBRATION = SimilarityCalibration(
    model_version="sface-2021dec-0ba9fbfa01b5",
    slope=37.1687,
    intercept=-11.7630,
    threshold_far_1e3=0.3687,
    threshold_far_1e4=0.4267,
)

# The student trained on the LFW "train" split, so it is calibrated on the other identities only: `python -m
# workers.pipeline.calibrate --model student --exclude-split train` (3,783 images of 1,699 identities, a face
# found in all). The 1,068 pairs.txt pairs of those identities (830 genuine, 238 impostor, classes weighted
# equally): 10-fold accuracy 99.29% +- 0.88%; P(same) = 0.5 at cosine 0.306. FAR thresholds from 200,000
# random cross-identity pairs; TAR over all 51,885 same-identity pairs: 99.8% at FAR 1e-3, 99.5% at 1e-4.
STUDENT_30BAB81A449B_CALIBRATION = SimilarityCalibration(
    model_version="visor-masked-student-30bab81a449b",
    slope=37.4580,
    intercept=-11.4498,
    threshold_far_1e3=0.3621,
    threshold_far_1e4=0.4206,
)

# The student with mirror averaging, same protocol (`--model student-flip --exclude-split train`): 10-fold
# accuracy on those 1,068 pairs 99.56% +- 0.59%; P(same) = 0.5 at cosine 0.305. TAR over all 51,885
# same-identity pairs: 99.8% at FAR 1e-3, 99.6% at 1e-4.
STUDENT_FLIP_30BAB81A449B_CALIBRATION = SimilarityCalibration(
    model_version="visor-masked-student-flip-30bab81a449b",
    slope=39.6201,
    intercept=-12.0697,
    threshold_far_1e3=0.3650,
    threshold_far_1e4=0.4184,
)

# The second student (conv_8 .. conv_14 fine-tuned) with mirror averaging, same protocol (`--model
# student-v2-flip --exclude-split train`): 10-fold accuracy on those 1,068 pairs 99.56% +- 0.59%;
# P(same) = 0.5 at cosine 0.302. TAR over all 51,885 same-identity pairs: 99.8% at FAR 1e-3, 99.6% at 1e-4.
STUDENT_V2_FLIP_36B27D984706_CALIBRATION = SimilarityCalibration(
    model_version="visor-masked-student-v2-flip-36b27d984706",
    slope=40.5935,
    intercept=-12.2627,
    threshold_far_1e3=0.3636,
    threshold_far_1e4=0.4208,
)

CALIBRATIONS = {
    calibration.model_version: calibration
    for calibration in (
        SFACE_2021DEC_CALIBRATION,
        STUDENT_30BAB81A449B_CALIBRATION,
        STUDENT_FLIP_30BAB81A449B_CALIBRATION,
        STUDENT_V2_FLIP_36B27D984706_CALIBRATION,
    )
}


def calibration_for(model_version: str) -> SimilarityCalibration:
    try:
        return CALIBRATIONS[model_version]
    except KeyError:
        raise KeyError(
            f"no similarity calibration for model {model_version!r}; run python -m workers.pipeline.calibrate"
        ) from None


def match_confidence(similarity: float | np.ndarray, model_version: str) -> float | np.ndarray:
    """P(same person) for a cosine similarity between two embeddings of `model_version`."""
    return calibration_for(model_version).confidence(similarity)
