"""Vectorised 1:N scoring: probes against a gallery of subjects with original and synthetic templates.

The per-subject rule is a function of each subject's best similarity per template kind, exactly what the
API's `workers.pipeline.matching.fuse_kind_scores` (mask-aware) or a plain max (naive) compute, applied to
(probes x subjects) matrices instead of one probe's hit list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from workers.evaluation.metrics import IdentificationScores
from workers.pipeline.matching import cohort_shift

# (best original similarity, best synthetic similarity or None) -> subject scores, all (P, S); NaN = no score.
SubjectScorer = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
CHUNK = 256


@dataclass(frozen=True, eq=False)
class Gallery:
    subjects: list[str]
    original: np.ndarray  # (S, D); NaN rows where enrollment found no face
    synthetic: np.ndarray | None = None  # (S, K, D) synthetic-mask templates, variant order

    @property
    def max_synthetic(self) -> int:
        return 0 if self.synthetic is None else self.synthetic.shape[1]

    def without(self, identities: set[str]) -> Gallery:
        keep = [i for i, subject in enumerate(self.subjects) if subject not in identities]
        return Gallery(
            [self.subjects[i] for i in keep],
            self.original[keep],
            None if self.synthetic is None else self.synthetic[keep],
        )


def naive_max(best_original: np.ndarray, best_synthetic: np.ndarray | None) -> np.ndarray:
    """A subject's best raw similarity over all its templates (the no-lever rule)."""
    return best_original if best_synthetic is None else np.fmax(best_original, best_synthetic)


def kind_scores(probes: np.ndarray, gallery: Gallery, synthetic: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(P, S) best similarity per kind: originals, and the first `synthetic` synthetic templates (or None)."""
    original = probes @ gallery.original.T
    if synthetic <= 0:
        return original, None
    if synthetic > gallery.max_synthetic:
        raise ValueError(
            f"the gallery has {gallery.max_synthetic} synthetic templates per subject, not {synthetic}"
        )
    templates = gallery.synthetic[:, :synthetic]  # (S, K, D)
    per_template = np.einsum("pd,skd->psk", probes, templates, optimize=True)
    with np.errstate(invalid="ignore"):
        best = np.nanmax(np.where(np.isnan(per_template), -np.inf, per_template), axis=2)
    best[np.isinf(best)] = np.nan
    return original, best


def subject_scores(probes: np.ndarray, gallery: Gallery, scorer: SubjectScorer, synthetic: int) -> np.ndarray:
    original, synthetic_best = kind_scores(probes, gallery, synthetic)
    return scorer(original, synthetic_best)


def search(
    mated_probes: np.ndarray,
    mated_identities: list[str],
    non_mated_probes: np.ndarray,
    gallery: Gallery,
    scorer: SubjectScorer,
    synthetic: int = 0,
    cohort_size: int = 0,
) -> IdentificationScores:
    """Open-set search results; probes with no face (NaN rows) and unscorable subjects count as -inf.

    `cohort_size` > 0 shifts each probe's scores by its cohort mean (workers.pipeline.matching.cohort_shift).
    """
    position = {subject: i for i, subject in enumerate(gallery.subjects)}
    missing = [identity for identity in mated_identities if identity not in position]
    if missing:
        raise ValueError(f"mated probes of identities not in the gallery: {missing[:3]}")
    true_scores = np.full(len(mated_probes), -np.inf)
    best_other = np.full(len(mated_probes), -np.inf)
    for start in range(0, len(mated_probes), CHUNK):
        block = slice(start, start + CHUNK)
        scores = _cohort(
            _finite(subject_scores(mated_probes[block], gallery, scorer, synthetic)), cohort_size
        )
        rows = np.arange(scores.shape[0])
        columns = np.array([position[i] for i in mated_identities[block]])
        true_scores[block] = scores[rows, columns]
        scores[rows, columns] = -np.inf
        best_other[block] = scores.max(axis=1) if scores.shape[1] else -np.inf
    top = np.full(len(non_mated_probes), -np.inf)
    for start in range(0, len(non_mated_probes), CHUNK):
        block = slice(start, start + CHUNK)
        scores = _cohort(
            _finite(subject_scores(non_mated_probes[block], gallery, scorer, synthetic)), cohort_size
        )
        top[block] = scores.max(axis=1) if scores.shape[1] else -np.inf
    return IdentificationScores(true_scores, best_other, top)


def pair_scores(
    probes: np.ndarray, gallery: Gallery, scorer: SubjectScorer, synthetic: int, subject_rows: np.ndarray
) -> np.ndarray:
    """1:1 scores of probe i against subject subject_rows[i] (-inf where not scorable)."""
    scores = np.full(len(probes), -np.inf)
    for start in range(0, len(probes), CHUNK * 8):
        block = slice(start, start + CHUNK * 8)
        sub = Gallery(
            [gallery.subjects[r] for r in subject_rows[block]],
            gallery.original[subject_rows[block]],
            None if gallery.synthetic is None else gallery.synthetic[subject_rows[block]],
        )
        original, synthetic_best = _diagonal_kind_scores(probes[block], sub, synthetic)
        scores[block] = _finite(scorer(original, synthetic_best))
    return scores


def _diagonal_kind_scores(probes: np.ndarray, gallery: Gallery, synthetic: int):
    original = np.einsum("pd,pd->p", probes, gallery.original)
    if synthetic <= 0:
        return original, None
    per_template = np.einsum("pd,pkd->pk", probes, gallery.synthetic[:, :synthetic])
    with np.errstate(invalid="ignore"):
        best = np.nanmax(np.where(np.isnan(per_template), -np.inf, per_template), axis=1)
    best[np.isinf(best)] = np.nan
    return original, best


def _cohort(scores: np.ndarray, cohort_size: int) -> np.ndarray:
    if cohort_size <= 0 or scores.size == 0:
        return scores
    shift = cohort_shift(scores, cohort_size)
    return scores - np.where(np.isfinite(shift), shift, 0.0)[:, np.newaxis]


def _finite(scores: np.ndarray) -> np.ndarray:
    scores = np.array(scores, dtype=np.float64)
    scores[np.isnan(scores)] = -np.inf
    return scores
