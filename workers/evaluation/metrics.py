"""Verification and identification metrics on score arrays (pure numpy; no data, no models).

Conventions: a higher score means "more likely the same person"; a comparison is accepted when
score >= threshold. A comparison that could not be made (no face found) must be passed as -inf: it is then
a rejection, never silently dropped. A threshold at a false-accept rate accepts at most that fraction of
the impostors (impostors tied at the boundary are all rejected, so the achieved rate never exceeds the
target) and lies halfway between the highest rejected and the lowest accepted impostor score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _array(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if np.isnan(array).any():
        raise ValueError("scores contain NaN; pass -inf for comparisons that could not be made")
    return array


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold with the highest accuracy on these scores (the middle of the best gap)."""
    scores, labels = _array(scores), np.asarray(labels, dtype=bool).ravel()
    finite = np.unique(scores[np.isfinite(scores)])
    if finite.size == 0:
        return 0.0
    candidates = np.concatenate([[finite[0] - 1.0], (finite[:-1] + finite[1:]) / 2, [finite[-1] + 1.0]])
    # Accuracy at every candidate in one pass: sort scores, count genuine below / impostors at-or-above.
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    below = np.searchsorted(sorted_scores, candidates, side="left")
    genuine_below = np.concatenate([[0], np.cumsum(sorted_labels)])[below]
    impostor_below = below - genuine_below
    correct = impostor_below + (labels.sum() - genuine_below)
    return float(candidates[int(np.argmax(correct))])


@dataclass(frozen=True)
class FoldAccuracy:
    mean: float
    std: float
    per_fold: tuple[float, ...]
    thresholds: tuple[float, ...]


def k_fold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> FoldAccuracy:
    """LFW-style accuracy: for each fold, the threshold is chosen on the other folds and tested on it."""
    scores, labels, folds = _array(scores), np.asarray(labels, dtype=bool).ravel(), np.asarray(folds).ravel()
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        test = folds == fold
        threshold = best_threshold(scores[~test], labels[~test])
        thresholds.append(threshold)
        accuracies.append(float(((scores[test] >= threshold) == labels[test]).mean()))
    return FoldAccuracy(
        float(np.mean(accuracies)), float(np.std(accuracies)), tuple(accuracies), tuple(thresholds)
    )


def threshold_at_far(impostor_scores: np.ndarray, false_accept_rate: float) -> float:
    """A threshold accepting at most floor(far * n) impostors (accept: score >= threshold): halfway between
    the highest rejected impostor and the lowest accepted one."""
    impostors = np.sort(_array(impostor_scores))[::-1]
    if impostors.size == 0:
        raise ValueError("no impostor scores")
    allowed = int(np.floor(false_accept_rate * impostors.size + 1e-9))
    if allowed >= impostors.size:
        return float(impostors[-1])
    rejected = impostors[allowed]
    accepted = impostors[:allowed][impostors[:allowed] > rejected]
    if accepted.size:
        # Halfway to the next accepted score: robust to the scores being compared in float32.
        return float((rejected + accepted[-1]) / 2)
    return float(np.nextafter(rejected, np.inf))


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    true_accept_rate: float
    false_accept_rate: float  # achieved on the impostors used (<= the target)
    impostors: int
    genuine: int


def tar_at_far(
    genuine_scores: np.ndarray, impostor_scores: np.ndarray, false_accept_rate: float
) -> OperatingPoint:
    genuine, impostors = _array(genuine_scores), _array(impostor_scores)
    threshold = threshold_at_far(impostors, false_accept_rate)
    return OperatingPoint(
        threshold=threshold,
        true_accept_rate=float((genuine >= threshold).mean()),
        false_accept_rate=float((impostors >= threshold).mean()),
        impostors=int(impostors.size),
        genuine=int(genuine.size),
    )


def roc_points(
    genuine_scores: np.ndarray, impostor_scores: np.ndarray, max_points: int = 400
) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, TAR) at thresholds through every impostor score (thinned to ~max_points, log-spaced in FAR)."""
    genuine, impostors = np.sort(_array(genuine_scores)), np.sort(_array(impostor_scores))[::-1]
    count = impostors.size
    # Accepting the top i impostors (i = 1..n): threshold = impostors[i - 1].
    ranks = np.unique(np.geomspace(1, count, num=max_points).astype(int))
    thresholds = impostors[ranks - 1]
    far = np.searchsorted(-impostors, -thresholds, side="right") / count
    tar = 1.0 - np.searchsorted(genuine, thresholds, side="left") / genuine.size
    return far, tar


@dataclass(frozen=True)
class IdentificationScores:
    """Per-search results of an open-set 1:N evaluation.

    mated_true: score of the probe's own subject (-inf when the probe had no face).
    mated_best_other: best score among the other enrolled subjects (-inf when none or no face).
    non_mated_top: best score over the gallery for probes of people not enrolled (-inf when no face).
    """

    mated_true: np.ndarray
    mated_best_other: np.ndarray
    non_mated_top: np.ndarray

    def __post_init__(self) -> None:
        for name in ("mated_true", "mated_best_other", "non_mated_top"):
            object.__setattr__(self, name, _array(getattr(self, name)))
        if self.mated_true.shape != self.mated_best_other.shape:
            raise ValueError("mated_true and mated_best_other differ in length")


def rank1_rate(scores: IdentificationScores) -> float:
    """Fraction of mated searches whose own subject scores strictly above every other subject (ties miss)."""
    hit = (scores.mated_true > scores.mated_best_other) & np.isfinite(scores.mated_true)
    return float(hit.mean()) if hit.size else float("nan")


def fnir_at_threshold(scores: IdentificationScores, threshold: float) -> float:
    """Mated searches NOT returning their subject at rank 1 with score >= threshold."""
    hit = (scores.mated_true > scores.mated_best_other) & (scores.mated_true >= threshold)
    return float(1.0 - hit.mean()) if hit.size else float("nan")


def fpir_at_threshold(scores: IdentificationScores, threshold: float) -> float:
    """Non-mated searches returning any candidate with score >= threshold."""
    return float((scores.non_mated_top >= threshold).mean()) if scores.non_mated_top.size else float("nan")


@dataclass(frozen=True)
class IdentificationPoint:
    threshold: float
    fnir: float
    fpir: float  # achieved (<= the target)
    mated_searches: int
    non_mated_searches: int


def fnir_at_fpir(scores: IdentificationScores, fpir: float) -> IdentificationPoint:
    """FNIR at the threshold that lets at most `fpir` of the non-mated searches through (NIST FRVT 1:N)."""
    threshold = threshold_at_far(scores.non_mated_top, fpir)
    return IdentificationPoint(
        threshold=threshold,
        fnir=fnir_at_threshold(scores, threshold),
        fpir=fpir_at_threshold(scores, threshold),
        mated_searches=int(scores.mated_true.size),
        non_mated_searches=int(scores.non_mated_top.size),
    )


def bootstrap_interval(
    scores: IdentificationScores,
    statistic,
    *,
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(IdentificationScores)`, resampling the mated searches
    and the non-mated searches independently (the FPIR threshold moves with the non-mated sample)."""
    rng = np.random.default_rng(seed)
    mated, non_mated = scores.mated_true.size, scores.non_mated_top.size
    values = []
    for _ in range(resamples):
        m = rng.integers(0, mated, mated)
        n = rng.integers(0, non_mated, non_mated)
        values.append(
            statistic(
                IdentificationScores(
                    scores.mated_true[m], scores.mated_best_other[m], scores.non_mated_top[n]
                )
            )
        )
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def det_points(scores: IdentificationScores, max_points: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) at thresholds through the non-mated top scores (the identification DET curve)."""
    top = np.sort(scores.non_mated_top[np.isfinite(scores.non_mated_top)])[::-1]
    if top.size == 0:
        return np.zeros(0), np.zeros(0)
    ranks = np.unique(np.geomspace(1, top.size, num=max_points).astype(int))
    thresholds = top[ranks - 1]
    fpir = np.array([fpir_at_threshold(scores, t) for t in thresholds])
    fnir = np.array([fnir_at_threshold(scores, t) for t in thresholds])
    return fpir, fnir


def precision_recall(predicted: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of boolean predictions of the positive class."""
    predicted, actual = np.asarray(predicted, bool).ravel(), np.asarray(actual, bool).ravel()
    true_positive = int((predicted & actual).sum())
    precision = true_positive / int(predicted.sum()) if predicted.any() else float("nan")
    recall = true_positive / int(actual.sum()) if actual.any() else float("nan")
    return float(precision), float(recall)
