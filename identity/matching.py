"""From template hits to per-subject candidates, with calibrated confidences and thresholds.

A subject may have several templates (several enrolled faces, and masked variants the pipeline synthesised
for each); a subject's score is its best template's similarity. Thresholds are cosine similarities of the
gallery's embedding model, calibrated for a target false-accept rate.
"""

import uuid
from dataclasses import dataclass

from identity.search import TemplateHit
from workers.pipeline.scoring import calibration_for

# A 1:N search makes one comparison per enrolled subject, so its false-accept rate per comparison must be
# far lower than a 1:1 check's for a stranger to come back unknown in a gallery of thousands.
DEFAULT_FALSE_ACCEPT_RATE = {"verify": 1e-3, "identify": 1e-4}


@dataclass(frozen=True)
class Candidate:
    subject_id: uuid.UUID
    similarity: float
    confidence: float
    matched_template_kind: str


def default_threshold(model_version: str, *, operation: str) -> float:
    return calibration_for(model_version).threshold_for_far(DEFAULT_FALSE_ACCEPT_RATE[operation])


def confidence(similarity: float, model_version: str) -> float:
    return float(calibration_for(model_version).confidence(similarity))


def rank_subjects(hits: list[TemplateHit], *, model_version: str, top_k: int) -> list[Candidate]:
    best: dict[uuid.UUID, TemplateHit] = {}
    for hit in hits:
        if hit.subject_id not in best or hit.similarity > best[hit.subject_id].similarity:
            best[hit.subject_id] = hit
    ranked = sorted(best.values(), key=lambda hit: hit.similarity, reverse=True)[:top_k]
    return [
        Candidate(
            subject_id=hit.subject_id,
            similarity=round(hit.similarity, 6),
            confidence=round(confidence(hit.similarity, model_version), 6),
            matched_template_kind=hit.kind,
        )
        for hit in ranked
    ]
