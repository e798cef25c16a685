"""Do the enrollment quality floors refuse faces whose templates would still work?

An enrollment refused for quality leaves the person unfindable until the customer sends another photo; an
enrollment accepted with a slightly worse template costs a little accuracy. This measures the second cost on
LFW-a: for people outside the student's training split with 2+ photos, each photo (on a 640x480 canvas, as
a client would send it) goes through the production pipeline with the enrollment floors, and its template is
compared with the person's other photos. The table gives, per quality measurement bucket, how many photos
fall in it and the share of same-person pairs at or above the model's FAR 1e-3 threshold.

    .venv/bin/python -m workers.evaluation.enrollment_floors --model student-flip --people 700
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from workers.evaluation.lfw import identity_of, jpeg, lfw_canvas, lfw_index, stable_fraction
from workers.pipeline.config import (
    DEFAULT_EMBEDDING_MODEL,
    RIVAL_FACE_AREA_RATIO,
    PipelineConfig,
    embedding_config,
)
from workers.pipeline.pipeline import FaceAnalysis, FacePipeline
from workers.pipeline.scoring import calibration_for
from workers.training.datasets import LFW_DIR, split_of


def enrollment_faces(
    pipeline: FacePipeline, lfw_dir: Path, *, people: int, per_person: int
) -> tuple[list[str], list[FaceAnalysis], Counter]:
    """The largest face of each photo with its identity, and how many photos had several faces and how many
    of those a face large enough to make enrollment ambiguous (RIVAL_FACE_AREA_RATIO)."""
    index = lfw_index(lfw_dir)
    eligible = [name for name in index if len(index[name]) >= 2 and split_of(name) != "train"]
    chosen = sorted(eligible, key=stable_fraction)[:people]
    identities, faces, several = [], [], Counter()
    for name in chosen:
        for relative in index[name][:per_person]:
            photo = jpeg(lfw_canvas(lfw_dir / "lfw" / relative))
            analysis = pipeline.analyze(photo, purpose="enroll")
            if analysis.faces:
                identities.append(identity_of(relative))
                faces.append(analysis.faces[0])
            if len(analysis.faces) > 1:
                largest = analysis.faces[0].bbox.area
                several["several faces"] += 1
                several["a rival face"] += any(
                    other.bbox.area >= RIVAL_FACE_AREA_RATIO * largest for other in analysis.faces[1:]
                )
    return identities, faces, several


def bucket_rows(
    identities: Sequence[str],
    faces: Sequence[FaceAnalysis],
    threshold: float,
    buckets: Sequence[tuple[str, Callable[[FaceAnalysis], bool]]],
) -> list[tuple[str, int, float]]:
    """(bucket, photos in it, share of its same-person pairs at or above `threshold`) for every bucket."""
    names = np.asarray(identities)
    embeddings = np.stack([face.embedding for face in faces])
    similarities = embeddings @ embeddings.T
    rows = []
    for label, belongs in buckets:
        members = [i for i, face in enumerate(faces) if belongs(face)]
        genuine = [similarities[i, j] for i in members for j in np.flatnonzero(names == names[i]) if j != i]
        rows.append(
            (label, len(members), float(np.mean(np.asarray(genuine) >= threshold)) if genuine else 0.0)
        )
    return rows


def yaw_between(low: float, high: float) -> Callable[[FaceAnalysis], bool]:
    return lambda face: low <= abs(face.quality.pose.yaw) < high


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lfw-dir", type=Path, default=LFW_DIR)
    parser.add_argument("--model", default=DEFAULT_EMBEDDING_MODEL)
    parser.add_argument("--people", type=int, default=700)
    parser.add_argument("--per-person", type=int, default=4)
    args = parser.parse_args(argv)

    config = replace(PipelineConfig(), embedding=embedding_config(args.model), intra_op_threads=1)
    pipeline = FacePipeline(config)
    identities, faces, several = enrollment_faces(
        pipeline, args.lfw_dir, people=args.people, per_person=args.per_person
    )
    threshold = calibration_for(pipeline.model_version).threshold_far_1e3
    buckets = [("accepted (no issue)", lambda face: not face.quality.issues)]
    buckets += [
        (f"refused {issue}", lambda face, issue=issue: issue in {str(i) for i in face.quality.issues})
        for issue in ("EXTREME_POSE", "BLURRY", "SMALL_FACE", "LOW_CONFIDENCE", "UNDEREXPOSED", "OVEREXPOSED")
    ]
    buckets += [
        (f"yaw {low}-{high}", yaw_between(low, high))
        for low, high in ((0, 15), (15, 30), (30, 40), (40, 45), (45, 50), (50, 90))
    ]
    people = len(set(identities))
    print(f"{len(faces)} photos of {people} people, {pipeline.model_version}, threshold {threshold:.4f}")
    print(
        f"{several['several faces']} photos with several faces, {several['a rival face']} of them ambiguous"
    )
    print("| photos | count | same-person pairs matched at FAR 1e-3 |\n| --- | --- | --- |")
    for label, count, matched in bucket_rows(identities, faces, threshold, buckets):
        print(f"| {label} | {count} | {matched:.1%} |")


if __name__ == "__main__":
    main()
