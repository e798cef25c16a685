"""Fit the mask-aware matching calibration (workers.pipeline.matching) of one model and K synthetic templates.

    python -m workers.evaluation.tune [--model sface|student] [--synthetic 4] [--limit N]

K = 0 fits a gallery without synthetic templates: impostor statistics and thresholds per probe condition only.

Identity-disjoint protocol on LFW-a (splits of workers.training.datasets):
- "train" identities: gallery = each identity's first image (plain) + its K synthetic-mask templates; probes =
  its other images, masked (mask seed 0) and plain. Every (probe, other subject) comparison is an impostor.
  From them: the impostor mean/std of the best similarity per (probe condition, template kind), the
  impostor mean/std of the fused value for every candidate synthetic weight w, and the score thresholds at
  FAR 1e-3 and 1e-4 per probe condition (~20 million impostor comparisons, so 1e-4 rests on ~2,000).
- "val" identities (the same construction): w is the one maximising the mean of the masked-probe 1:1 TAR
  at FAR 1e-3 and 1e-4 (thresholds from val's own impostors).
- "test" identities are never used here; the evaluation reports on them.
Prints the MaskAwareCalibration to paste into workers/pipeline/matching.py CALIBRATIONS.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np

from workers.evaluation.identification import Gallery, kind_scores
from workers.evaluation.metrics import tar_at_far, threshold_at_far
from workers.pipeline.matching import (
    MASKED,
    ORIGINAL,
    SYNTHETIC_MASK,
    UNMASKED,
    ImpostorStats,
    MaskAwareCalibration,
    fuse_kind_scores,
)

WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))
FARS = (1e-3, 1e-4)
CHUNK = 256


@dataclass(frozen=True, eq=False)
class SplitData:
    gallery: Gallery
    masked_probes: np.ndarray  # (P, D), NaN rows where no face
    plain_probes: np.ndarray  # (P, D)
    identities: list[str]  # (P,) each probe's identity, all enrolled in the gallery

    def genuine_mask(self, block: slice) -> np.ndarray:
        position = {subject: i for i, subject in enumerate(self.gallery.subjects)}
        rows = np.array([position[i] for i in self.identities[block]])
        mask = np.zeros((len(rows), len(self.gallery.subjects)), bool)
        mask[np.arange(len(rows)), rows] = True
        return mask


class _Moments:
    def __init__(self) -> None:
        self.count, self.total, self.squares = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        values = values[np.isfinite(values)].astype(np.float64)
        self.count += values.size
        self.total += float(values.sum())
        self.squares += float((values**2).sum())

    def stats(self) -> ImpostorStats:
        if self.count < 2:
            raise ValueError("too few impostor comparisons to fit statistics")
        mean = self.total / self.count
        return ImpostorStats(mean=mean, std=float(np.sqrt(max(self.squares / self.count - mean**2, 1e-12))))


def _blocks(count: int):
    for start in range(0, count, CHUNK):
        yield slice(start, start + CHUNK)


def _kind_statistics(data: SplitData, synthetic: int) -> dict[tuple[str, str], ImpostorStats]:
    moments = {(c, k): _Moments() for c in (MASKED, UNMASKED) for k in (ORIGINAL, SYNTHETIC_MASK)}
    for block in _blocks(len(data.identities)):
        impostor = ~data.genuine_mask(block)
        for cond, probes in ((MASKED, data.masked_probes), (UNMASKED, data.plain_probes)):
            original, synthetic_best = kind_scores(probes[block], data.gallery, synthetic)
            moments[(cond, ORIGINAL)].add(original[impostor])
            if synthetic_best is not None:
                moments[(cond, SYNTHETIC_MASK)].add(synthetic_best[impostor])
    stats = {key: m.stats() for key, m in moments.items() if m.count}
    return stats


def _calibration(model_version, stats, weight, fused, thresholds, synthetic) -> MaskAwareCalibration:
    return MaskAwareCalibration(
        model_version=model_version,
        impostor=stats,
        fused=fused,
        synthetic_weight=float(weight),
        thresholds=thresholds,
        synthetic_templates=synthetic,
    )


def _fused_statistics(data: SplitData, stats, synthetic: int) -> dict[float, dict[str, ImpostorStats]]:
    """Impostor mean/std of (1 - w) z_o + w z_s for every w in WEIGHTS, per probe condition."""
    moments = {(w, c): _Moments() for w in WEIGHTS for c in (MASKED, UNMASKED)}
    for block in _blocks(len(data.identities)):
        impostor = ~data.genuine_mask(block)
        for cond, probes in ((MASKED, data.masked_probes), (UNMASKED, data.plain_probes)):
            original, synthetic_best = kind_scores(probes[block], data.gallery, synthetic)
            z_o = (original - stats[(cond, ORIGINAL)].mean) / stats[(cond, ORIGINAL)].std
            z_s = (synthetic_best - stats[(cond, SYNTHETIC_MASK)].mean) / stats[(cond, SYNTHETIC_MASK)].std
            for w in WEIGHTS:
                moments[(w, cond)].add(((1 - w) * z_o + w * z_s)[impostor])
    return {w: {c: moments[(w, c)].stats() for c in (MASKED, UNMASKED)} for w in WEIGHTS}


def _masked_scores(data: SplitData, calibration: MaskAwareCalibration, synthetic: int, probe_masked: bool):
    """(genuine, impostor) 1:1 subject scores of the split's masked (or plain) probes."""
    genuine, impostor = [], []
    probes_all = data.masked_probes if probe_masked else data.plain_probes
    for block in _blocks(len(data.identities)):
        mask = data.genuine_mask(block)
        original, synthetic_best = kind_scores(probes_all[block], data.gallery, synthetic)
        scores = fuse_kind_scores(
            original, synthetic_best, probe_masked=probe_masked, calibration=calibration
        )
        scores = np.where(np.isnan(scores), -np.inf, scores)
        genuine.append(scores[mask])
        impostor.append(scores[~mask & np.isfinite(scores)].astype(np.float32))
    return np.concatenate(genuine), np.concatenate(impostor)


def fit_mask_aware(
    model_version: str, train: SplitData, val: SplitData, synthetic: int, *, weights=WEIGHTS
) -> tuple[MaskAwareCalibration, dict]:
    """The calibration for K = `synthetic` templates, and a report of how it was chosen.

    K = 0 is a gallery of original templates only: a masked probe is then scored by its best cosine with them
    on its own impostor scale, and gets its own thresholds.
    """
    if synthetic < 0:
        raise ValueError(f"synthetic must be >= 0, not {synthetic}")
    stats = _kind_statistics(train, synthetic)
    report: dict = {"synthetic_templates": synthetic}
    best_weight, fused = 0.0, {}
    if synthetic:
        fused_by_weight = _fused_statistics(train, stats, synthetic)
        objective = {
            float(w): _val_objective(
                val, _calibration(model_version, stats, w, fused_by_weight[w], {}, synthetic), synthetic
            )
            for w in weights
        }
        best_weight = max(objective, key=lambda w: (objective[w]["objective"], -abs(w - 0.5)))
        fused = fused_by_weight[best_weight]
        report |= {"synthetic_weight": best_weight, "weight_search_on_val": objective}
    else:
        report["val"] = _val_objective(val, _calibration(model_version, stats, 0.0, {}, {}, 0), 0)
    calibration = _calibration(model_version, stats, best_weight, fused, {}, synthetic)
    thresholds = {}
    for probe_masked in (True, False):
        _, impostor = _masked_scores(train, calibration, synthetic, probe_masked=probe_masked)
        for far in FARS:
            thresholds[(MASKED if probe_masked else UNMASKED, far)] = threshold_at_far(impostor, far)
        if probe_masked:
            impostor_count = int(impostor.size)
    calibration = _calibration(model_version, stats, best_weight, fused, thresholds, synthetic)
    report |= {
        "train_impostor_comparisons_masked": impostor_count,
        "calibration": calibration_to_json(calibration),
    }
    return calibration, report


def _val_objective(val: SplitData, calibration: MaskAwareCalibration, synthetic: int) -> dict[str, float]:
    """Masked-probe 1:1 TAR on val at FAR 1e-3 and 1e-4 (val's own thresholds), and their mean."""
    genuine, impostor = _masked_scores(val, calibration, synthetic, probe_masked=True)
    tars = [tar_at_far(genuine, impostor, far).true_accept_rate for far in FARS]
    return {"tar_far_1e-3": tars[0], "tar_far_1e-4": tars[1], "objective": float(np.mean(tars))}


def calibration_to_json(calibration: MaskAwareCalibration) -> dict:
    return {
        "model_version": calibration.model_version,
        "synthetic_templates": calibration.synthetic_templates,
        "synthetic_weight": calibration.synthetic_weight,
        "impostor": {f"{c}/{k}": [s.mean, s.std] for (c, k), s in calibration.impostor.items()},
        "fused": {c: [s.mean, s.std] for c, s in calibration.fused.items()},
        "thresholds": {f"{c}@{far:g}": t for (c, far), t in calibration.thresholds.items()},
    }


def calibration_source(calibration: MaskAwareCalibration) -> str:
    """Python source of the calibration, for workers/pipeline/matching.py."""

    def stats(s: ImpostorStats) -> str:
        return f"ImpostorStats({s.mean:.5f}, {s.std:.5f})"

    impostor = ",\n".join(
        f"        ({c.upper()}, {k.upper()}): {stats(s)}"
        for (c, k), s in sorted(calibration.impostor.items())
    )
    fused = "".join(f"        {c.upper()}: {stats(s)},\n" for c, s in sorted(calibration.fused.items()))
    thresholds = ",\n".join(
        f"        ({c.upper()}, {far:g}): {t:.5f}" for (c, far), t in sorted(calibration.thresholds.items())
    )
    return (
        "MaskAwareCalibration(\n"
        f'    model_version="{calibration.model_version}",\n'
        f"    impostor={{\n{impostor},\n    }},\n"
        + (f"    fused={{\n{fused}    }},\n" if fused else "")
        + f"    synthetic_weight={calibration.synthetic_weight},\n"
        f"    thresholds={{\n{thresholds},\n    }},\n"
        f"    synthetic_templates={calibration.synthetic_templates},\n"
        ")"
    )


def main(argv: list[str] | None = None) -> None:
    from workers.evaluation.protocols import Evaluation, EvaluationConfig

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="sface")
    parser.add_argument("--synthetic", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    evaluation = Evaluation(EvaluationConfig(limit=args.limit, threads=args.threads))
    run = evaluation.model_run(args.model)
    calibration, report = run.calibration(args.synthetic)
    print(json.dumps(report, indent=2))
    print(calibration_source(calibration))


if __name__ == "__main__":
    main()
