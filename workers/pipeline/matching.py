"""Mask-aware scoring of a probe against subjects with original and synthetic-mask templates.

The problem: a masked probe compared with synthetic-masked templates scores higher for EVERY subject, because
the masks themselves look alike. On LFW-a with SFace, the best of 4 masked-vs-synthetic impostor similarities
averages 0.108 against 0.081 for masked-vs-original, and taking each subject's best raw similarity over all
its templates raises the open-set threshold at FPIR 1% from 0.506 to 0.564, which cancels the genuine gain
(docs/accuracy.md, protocol (c)). The fix here is per-kind score normalisation (Z-norm by condition):

1. For each subject, the best similarity per template kind: s_original, s_synthetic.
2. Each is standardised with the impostor mean and standard deviation of its (probe condition, kind):
   z_kind = (s_kind - mean) / std. The statistics are measured once per model on identities no evaluation
   uses (`python -m workers.evaluation.tune`).
3. A masked probe fuses the two: z = ((1 - w) z_original + w z_synthetic - fused_mean) / fused_std (w =
   `synthetic_weight`), the last standardisation making fused and single-kind subjects comparable. An
   unmasked probe uses its original templates only (synthetic masks add nothing there).
4. The result is mapped back onto the cosine scale of unmasked-probe-vs-original comparisons:
   score = mean_ref + std_ref * z. An unmasked probe therefore gets exactly its raw cosine, so the
   existing calibration (workers.pipeline.scoring) and thresholds keep their meaning; masked probes get a
   score with the same impostor mean and spread, and their own calibrated thresholds
   (`MaskAwareCalibration.threshold(probe_masked, far)`, extrapolated to the far lower rates a large
   gallery needs), because the tails differ.

Pure functions only: no database, no model. `score_subjects` takes the template hits a search returned.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from statistics import NormalDist

import numpy as np

ORIGINAL = "original"
SYNTHETIC_MASK = "synthetic_mask"
MASKED, UNMASKED = "masked", "unmasked"
KINDS = (ORIGINAL, SYNTHETIC_MASK)


def condition(probe_masked: bool) -> str:
    return MASKED if probe_masked else UNMASKED


@dataclass(frozen=True)
class ImpostorStats:
    """Mean and standard deviation of impostor scores of one comparison type."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not self.std > 0:
            raise ValueError(f"std must be positive, not {self.std}")


@dataclass(frozen=True)
class MaskAwareCalibration:
    """Everything `score_subjects` needs for one embedding model (and one number of synthetic templates).

    impostor: statistics of the best-per-kind similarity of impostor subjects, keyed (condition, kind),
        condition being "masked" or "unmasked"; ("unmasked", "original") is the reference scale.
    fused: statistics of the fused value (1 - w) z_o + w z_s of impostor subjects, per condition.
    synthetic_weight: w above (0 = ignore synthetic templates, 1 = use only them).
    use_synthetic_for_unmasked: fuse synthetic templates for unmasked probes too (off by default).
    thresholds: score thresholds keyed (condition, false-accept rate), measured on impostor subjects.
    """

    model_version: str
    impostor: Mapping[tuple[str, str], ImpostorStats]
    fused: Mapping[str, ImpostorStats] = field(default_factory=dict)
    synthetic_weight: float = 0.5
    use_synthetic_for_unmasked: bool = False
    thresholds: Mapping[tuple[str, float], float] = field(default_factory=dict)
    synthetic_templates: int = 0  # K the statistics were measured with: what enrollment draws for this model

    @property
    def reference(self) -> ImpostorStats:
        return self.impostor[(UNMASKED, ORIGINAL)]

    def threshold(self, probe_masked: bool, false_accept_rate: float) -> float:
        """The score threshold at `false_accept_rate` per comparison: a calibrated one, or, below the
        calibrated rates, extrapolated on the probit scale through the two lowest.

        Impostor scores on the reference scale are close to Gaussian in their tail (the student's masked
        thresholds at 1e-3 and 1e-4 sit 3.11 and 3.75 standard deviations above the mean; a Gaussian's at
        3.09 and 3.72), so a threshold is linear in the Gaussian quantile of the rate. Checked on protocol (c)
        of docs/accuracy.md: for 5,196 enrolled subjects, FPIR 1% needs 1.9e-6 per comparison, extrapolated
        to 0.510 (student, masked) and 0.507 (SFace, unmasked); measured 0.504 and 0.505.
        """
        cond = condition(probe_masked)
        calibrated = sorted(far for c, far in self.thresholds if c == cond)
        if false_accept_rate in calibrated:
            return self.thresholds[(cond, false_accept_rate)]
        if len(calibrated) < 2 or not 0 < false_accept_rate < calibrated[0]:
            raise KeyError(
                f"no threshold for {(cond, false_accept_rate)}; calibrated: {sorted(self.thresholds)}, "
                f"extrapolated below {calibrated[0] if calibrated else None}"
            )
        low, high = calibrated[0], calibrated[1]
        quantile = NormalDist().inv_cdf
        slope = (self.thresholds[(cond, low)] - self.thresholds[(cond, high)]) / (
            quantile(1 - low) - quantile(1 - high)
        )
        return self.thresholds[(cond, low)] + slope * (quantile(1 - false_accept_rate) - quantile(1 - low))

    def uses_synthetic(self, probe_masked: bool) -> bool:
        return self.synthetic_weight > 0 and (probe_masked or self.use_synthetic_for_unmasked)


def fuse_kind_scores(
    best_original: np.ndarray | float,
    best_synthetic: np.ndarray | float,
    *,
    probe_masked: bool,
    calibration: MaskAwareCalibration,
) -> np.ndarray:
    """Vectorised core of `score_subjects`: subject scores from each subject's best similarity per kind.

    Arrays broadcast; NaN marks a subject without templates of that kind (a subject with neither gets NaN).
    """
    cond = condition(probe_masked)
    original = np.asarray(best_original, np.float64)
    synthetic = np.asarray(best_synthetic, np.float64)
    stats_o = calibration.impostor[(cond, ORIGINAL)]
    z_original = (original - stats_o.mean) / stats_o.std
    if calibration.uses_synthetic(probe_masked):
        stats_s = calibration.impostor[(cond, SYNTHETIC_MASK)]
        z_synthetic = (synthetic - stats_s.mean) / stats_s.std
        w = calibration.synthetic_weight
        fused_stats = calibration.fused[cond]
        fused = ((1 - w) * z_original + w * z_synthetic - fused_stats.mean) / fused_stats.std
        z = np.where(np.isnan(z_synthetic), z_original, np.where(np.isnan(z_original), z_synthetic, fused))
    else:
        z = z_original
    reference = calibration.reference
    return reference.mean + reference.std * z


@dataclass(frozen=True)
class SubjectScore:
    subject_id: Hashable
    score: float  # on the unmasked-vs-original cosine scale (see the module docstring)
    best_similarity: float  # the best raw cosine over the templates used
    best_kind: str  # the template kind of that best raw cosine


def score_subjects(
    probe_masked: bool,
    hits: Iterable[tuple[Hashable, str, float]],
    calibration: MaskAwareCalibration,
) -> list[SubjectScore]:
    """Subjects best first, from (subject_id, template kind, cosine similarity) hits of one probe.

    Unknown kinds raise ValueError. Synthetic templates of an unmasked probe are ignored unless the
    calibration says otherwise. Hits with several templates of a kind per subject are fine (best kept).
    """
    best: dict[Hashable, dict[str, float]] = {}
    for subject_id, kind, similarity in hits:
        if kind not in KINDS:
            raise ValueError(f"unknown template kind {kind!r}; expected one of {KINDS}")
        if kind == SYNTHETIC_MASK and not calibration.uses_synthetic(probe_masked):
            continue
        per_kind = best.setdefault(subject_id, {})
        per_kind[kind] = max(per_kind.get(kind, -math.inf), float(similarity))
    if not best:
        return []
    subjects = list(best)
    original = np.array([best[s].get(ORIGINAL, np.nan) for s in subjects])
    synthetic = np.array([best[s].get(SYNTHETIC_MASK, np.nan) for s in subjects])
    scores = fuse_kind_scores(original, synthetic, probe_masked=probe_masked, calibration=calibration)
    results = []
    for subject, score in zip(subjects, scores, strict=True):
        kind = max(best[subject], key=best[subject].__getitem__)
        results.append(SubjectScore(subject, float(score), best[subject][kind], kind))
    results.sort(key=lambda result: result.score, reverse=True)
    return results


def cohort_shift(scores: np.ndarray, cohort_size: int) -> np.ndarray:
    """Per probe (row of a probes x subjects matrix): the mean of its scores ranked 2 .. cohort_size + 1.

    Scores that are NaN or -inf (no template) are not cohort members; a row with no member gets NaN.
    """
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    finite = np.where(np.isfinite(scores), scores, -np.inf)
    take = min(cohort_size + 1, finite.shape[1])
    if take < 2:
        return np.full(scores.shape[0], np.nan)
    top = -np.partition(-finite, take - 1, axis=1)[:, :take]
    top = -np.sort(-top, axis=1)[:, 1:]
    members = np.isfinite(top)
    counts = members.sum(axis=1)
    sums = np.where(members, top, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def cohort_normalise(results: list[SubjectScore], *, cohort_size: int, offset: float) -> list[SubjectScore]:
    """Shift a probe's subject scores (best first) by its cohort mean minus `offset`; the order is unchanged.

    The cohort is the probe's own next-best subjects (ranks 2 .. cohort_size + 1): a probe that resembles
    everybody (a heavy mask, a blurred face) has a high cohort mean and is pulled down, so one threshold fits
    all probes better. With no cohort (a single subject in the hits) the scores are returned unchanged.
    """
    if cohort_size < 1 or len(results) < 2:
        return results
    shift = float(cohort_shift(np.array([[r.score for r in results]]), cohort_size)[0])
    if not math.isfinite(shift):
        return results
    return [replace(r, score=r.score - shift + offset) for r in results]


def max_similarity_subjects(hits: Iterable[tuple[Hashable, str, float]]) -> list[SubjectScore]:
    """The naive rule (a subject's score = its best raw similarity over all templates), for comparison."""
    best: dict[Hashable, tuple[float, str]] = {}
    for subject_id, kind, similarity in hits:
        if subject_id not in best or similarity > best[subject_id][0]:
            best[subject_id] = (float(similarity), kind)
    results = [SubjectScore(s, sim, sim, kind) for s, (sim, kind) in best.items()]
    results.sort(key=lambda result: result.score, reverse=True)
    return results


# Measured by `python -m workers.evaluation.tune --model sface --synthetic 2` on the LFW-a "train" split
# identities (4,040 subjects, ~21.8 million masked impostor comparisons; w chosen on "val"), for galleries
# enrolled with workers.pipeline.enrollment_augmentation's defaults (K = 2 synthetic templates per face).
# Keyed by model_version: calibrations of different models are not interchangeable.
SFACE_2021DEC_K2 = MaskAwareCalibration(
    model_version="sface-2021dec-0ba9fbfa01b5",
    impostor={
        (MASKED, ORIGINAL): ImpostorStats(0.08095, 0.08982),
        (MASKED, SYNTHETIC_MASK): ImpostorStats(0.09564, 0.09669),
        (UNMASKED, ORIGINAL): ImpostorStats(0.08790, 0.09005),
        (UNMASKED, SYNTHETIC_MASK): ImpostorStats(0.09191, 0.08875),
    },
    fused={
        MASKED: ImpostorStats(0.00000, 0.97603),
        UNMASKED: ImpostorStats(0.00000, 0.96035),
    },
    synthetic_weight=0.5,
    thresholds={
        (MASKED, 0.0001): 0.42626,
        (MASKED, 0.001): 0.36799,
        (UNMASKED, 0.0001): 0.42511,
        (UNMASKED, 0.001): 0.36811,
    },
    synthetic_templates=2,
)
# The same fit for the distilled student (`--model student --synthetic 2`, from the full run behind
# docs/accuracy.md; w chosen on "val": 0.8). The student trained on "train" identities without identity
# labels, so their impostor statistics are kept; protocol (c) reports test-split identities separately.
STUDENT_30BAB81A449B_K2 = MaskAwareCalibration(
    model_version="visor-masked-student-30bab81a449b",
    impostor={
        (MASKED, ORIGINAL): ImpostorStats(0.09605, 0.08914),
        (MASKED, SYNTHETIC_MASK): ImpostorStats(0.11485, 0.09532),
        (UNMASKED, ORIGINAL): ImpostorStats(0.08960, 0.09031),
        (UNMASKED, SYNTHETIC_MASK): ImpostorStats(0.10572, 0.08856),
    },
    fused={
        MASKED: ImpostorStats(0.00000, 0.99020),
        UNMASKED: ImpostorStats(0.00000, 0.97859),
    },
    synthetic_weight=0.8,
    thresholds={
        (MASKED, 0.0001): 0.42801,
        (MASKED, 0.001): 0.37068,
        (UNMASKED, 0.0001): 0.42876,
        (UNMASKED, 0.001): 0.37125,
    },
    synthetic_templates=2,
)
# The student with mirror averaging (`--model student-flip --synthetic 1`, w chosen on "val": 0.4). With
# mirror-averaged embeddings one synthetic template per face matched two on protocol (c) (rank-1 89.36% vs
# 89.37%, FNIR at FPIR 1% 28.60% vs 29.04%) for a third less enrollment compute, so galleries of this
# model are enrolled with one (FacePipeline takes K from here).
STUDENT_FLIP_30BAB81A449B_K1 = MaskAwareCalibration(
    model_version="visor-masked-student-flip-30bab81a449b",
    impostor={
        (MASKED, ORIGINAL): ImpostorStats(0.09781, 0.08917),
        (MASKED, SYNTHETIC_MASK): ImpostorStats(0.11315, 0.09561),
        (UNMASKED, ORIGINAL): ImpostorStats(0.09117, 0.09030),
        (UNMASKED, SYNTHETIC_MASK): ImpostorStats(0.10291, 0.08874),
    },
    fused={
        MASKED: ImpostorStats(0.00000, 0.98551),
        UNMASKED: ImpostorStats(0.00000, 0.96785),
    },
    synthetic_weight=0.4,
    thresholds={
        (MASKED, 0.0001): 0.43084,
        (MASKED, 0.001): 0.37280,
        (UNMASKED, 0.0001): 0.43130,
        (UNMASKED, 0.001): 0.37300,
    },
    synthetic_templates=1,
)
# The second student with mirror averaging needs no synthetic template (`--model student-v2-flip --synthetic
# 0`). With one (w = 0.8, the best of 11 weights on val) masked 1:1 TAR on val rose from 94.79% / 89.84% to
# 95.30% / 90.51% at FAR 1e-3 / 1e-4, but on people no model or weight was chosen on it lost: protocol (c)'s
# test split rank-1 84.82% alone against 84.29%, FNIR at FPIR 1% 40.58% against 42.93%, and masked rank-1
# among the distillation test people 91.17% against 90.15% (19 probes against 10). The student already maps
# masked faces onto their plain embeddings; a synthetic template cost 40% of an enrollment's compute and
# half the gallery's templates (docs/accuracy.md). A masked probe is scored by its best original cosine on
# the masked impostors' scale, with its own thresholds, fitted on masked faces aligned as the service aligns
# them, from the landmark refiner's points (`python -m workers.evaluation.tune --model
# student-v2-flip+refiner --synthetic 0`; val masked 1:1 TAR 98.57% / 95.72% at FAR 1e-3 / 1e-4, against
# 94.79% / 89.84% from YuNet's points).
STUDENT_V2_FLIP_36B27D984706_K0 = MaskAwareCalibration(
    model_version="visor-masked-student-v2-flip-36b27d984706",
    impostor={
        (MASKED, ORIGINAL): ImpostorStats(0.10078, 0.08827),
        (UNMASKED, ORIGINAL): ImpostorStats(0.09002, 0.09023),
    },
    synthetic_weight=0.0,
    thresholds={
        (MASKED, 0.0001): 0.43295,
        (MASKED, 0.001): 0.37286,
        (UNMASKED, 0.0001): 0.42991,
        (UNMASKED, 0.001): 0.37179,
    },
    synthetic_templates=0,
)
CALIBRATIONS: dict[str, MaskAwareCalibration] = {
    c.model_version: c
    for c in (
        SFACE_2021DEC_K2,
        STUDENT_30BAB81A449B_K2,
        STUDENT_FLIP_30BAB81A449B_K1,
        STUDENT_V2_FLIP_36B27D984706_K0,
    )
}


def calibration_for(model_version: str) -> MaskAwareCalibration:
    try:
        return CALIBRATIONS[model_version]
    except KeyError:
        raise KeyError(
            f"no mask-aware calibration for model {model_version!r}; run python -m workers.evaluation.tune"
        ) from None
