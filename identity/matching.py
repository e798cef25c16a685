"""From template hits to per-subject candidates, with calibrated scores, confidences and thresholds.

A subject may have several templates: one "original" per enrolled face, plus the "synthetic_mask" ones the
pipeline draws for it. Comparing a masked probe with synthetic-masked templates inflates every subject's
similarity (the masks look alike), so a subject's score is not its best raw cosine: it is the mask-aware
fusion of `workers.pipeline.matching.score_subjects`, on the cosine scale of unmasked comparisons (an
unmasked probe's score is exactly its best cosine with an original template). Thresholds are such scores,
calibrated per probe condition (masked or not) for a target false-accept rate.
"""

import uuid
from dataclasses import dataclass

from identity.search import TemplateHit
from workers.pipeline import matching as mask_aware
from workers.pipeline.scoring import calibration_for

VERIFY_FALSE_ACCEPT_RATE = 1e-3
# A 1:N search makes one comparison per enrolled subject: a stranger is wrongly matched with probability
# about (subjects x the false-accept rate per comparison). The default identify threshold keeps that chance,
# the false-positive identification rate (FPIR), at 1% whatever the gallery's size, and never uses a
# looser per-comparison rate than 1e-4.
IDENTIFY_FALSE_POSITIVE_IDENTIFICATION_RATE = 0.01
IDENTIFY_MAX_FALSE_ACCEPT_RATE = 1e-4


def identify_false_accept_rate(gallery_subjects: int) -> float:
    """The per-comparison false-accept rate that keeps a gallery of this many subjects at the target FPIR."""
    return min(
        IDENTIFY_MAX_FALSE_ACCEPT_RATE, IDENTIFY_FALSE_POSITIVE_IDENTIFICATION_RATE / max(1, gallery_subjects)
    )


def default_threshold(
    model_version: str, *, operation: str, probe_masked: bool, gallery_subjects: int = 0
) -> float:
    """The calibrated score threshold of `operation`: 1:1 verify at FAR 1e-3; identify at the rate
    `identify_false_accept_rate` gives for a gallery of `gallery_subjects`."""
    if operation == "verify":
        false_accept_rate = VERIFY_FALSE_ACCEPT_RATE
    elif operation == "identify":
        false_accept_rate = identify_false_accept_rate(gallery_subjects)
    else:
        raise ValueError(f"no default threshold for {operation!r}")
    return mask_aware.calibration_for(model_version).threshold(probe_masked, false_accept_rate)


def template_kinds_scored(model_version: str, *, probe_masked: bool) -> tuple[str, ...]:
    """The template kinds `rank_subjects` scores for such a probe; it ignores the others."""
    if mask_aware.calibration_for(model_version).uses_synthetic(probe_masked):
        return (mask_aware.ORIGINAL, mask_aware.SYNTHETIC_MASK)
    return (mask_aware.ORIGINAL,)


@dataclass(frozen=True)
class Candidate:
    subject_id: uuid.UUID
    # The calibrated score (see the module docstring) that thresholds apply to.
    similarity: float
    confidence: float
    matched_template_kind: str


def rank_subjects(
    hits: list[TemplateHit], *, model_version: str, probe_masked: bool, top_k: int
) -> list[Candidate]:
    """The `top_k` best subjects of one probe's template hits, best first."""
    scored = mask_aware.score_subjects(
        probe_masked,
        ((hit.subject_id, hit.kind, hit.similarity) for hit in hits),
        mask_aware.calibration_for(model_version),
    )[:top_k]
    to_confidence = calibration_for(model_version).confidence
    return [
        Candidate(
            subject_id=subject.subject_id,
            similarity=round(subject.score, 6),
            confidence=round(float(to_confidence(subject.score)), 6),
            matched_template_kind=subject.best_kind,
        )
        for subject in scored
    ]
