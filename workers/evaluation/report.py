"""Run the protocols and write the results: JSON, a markdown report and SVG curves.

    python -m workers.evaluation [--limit N] [--protocols a,b,c,d,e] [--model sface|student|sface,student]
                                 [--output docs/accuracy.md]

(`python manage.py evaluate` takes the same options.) The markdown report keeps any hand-written text found
between NOTES_START and NOTES_END in the previous version of the file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from workers.evaluation.plots import det_svg, roc_svg
from workers.evaluation.protocols import PROTOCOLS, Evaluation, EvaluationConfig, ProtocolResult
from workers.pipeline.config import DEFAULT_EMBEDDING_MODEL, REPO_ROOT

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "accuracy.md"
NOTES_START, NOTES_END = "<!-- notes:start -->", "<!-- notes:end -->"

# (protocol, metric, comparison, target, description)
TARGETS = (
    ("a", "accuracy", ">=", 0.99, "(a) LFW 10-fold accuracy, unmasked"),
    ("b", "tar_far_0.001", ">=", 0.90, "(b) masked-vs-unmasked pairs, TAR @ FAR 1e-3"),
    ("c", "rank1", ">=", 0.95, "(c) open-set, masked probes: rank-1"),
    ("c", "fnir_at_fpir_1%", "<=", 0.10, "(c) open-set, masked probes: FNIR @ FPIR 1%"),
    ("d", "rwmfd_recall", ">=", 0.98, "(d) mask classifier: recall on RWMFD"),
    ("d", "lfw_unmasked_called_masked", "<=", 0.02, "(d) mask classifier: unmasked LFW called masked"),
    ("e", "detection_rate", ">=", 0.95, "(e) RWMFD images with a face found"),
)
COLUMNS = {
    "a": ("accuracy", "accuracy_std", "non_train_accuracy", "tar_far_1e-3_pairs", "pairs_without_face"),
    "b": (
        "accuracy",
        "non_train_accuracy",
        "tar_far_0.01",
        "tar_far_0.001",
        "test_tar_far_0.001",
        "test_tar_far_0.0001",
        "test_tar_at_calibrated_0.001",
        "test_far_at_calibrated_0.001",
        "test_tar_at_calibrated_0.0001",
        "test_far_at_calibrated_0.0001",
        "pairs_without_face",
    ),
    "c": (
        "rank1",
        "rank1_ci95",
        "fnir_at_fpir_1%",
        "fnir_at_fpir_1%_ci95",
        "test_rank1",
        "test_fnir_at_fpir_1%",
        "unseen_mask_rank1",
        "unseen_mask_fnir_at_fpir_1%",
        "rwmfd_fpir_at_threshold",
        "threshold",
        "mated_probes_without_face",
        "non_mated_probes_without_face",
    ),
    "d": (
        "lfw_precision",
        "lfw_recall",
        "lfw_unmasked_called_masked",
        "rwmfd_recall",
        "lfw_plain_faces",
        "lfw_masked_faces",
        "rwmfd_faces",
    ),
    "e": ("detection_rate", "images", "faces"),
}
TITLES = {
    "a": "(a) LFW pairs, unmasked (10-fold)",
    "b": "(b) LFW pairs, second image masked",
    "c": "(c) Open-set identification, masked probes",
    "d": "(d) Mask classifier",
    "e": "(e) Face detection on RWMFD (real masked photos)",
}
RATE_PREFIXES = (
    "accuracy",
    "non_train_accuracy",
    "tar",
    "test_",
    "rank1",
    "fnir",
    "unseen_mask_",
    "lfw_",
    "rwmfd_recall",
    "rwmfd_fpir",
    "detection_rate",
    "fpir",
)


def run_evaluation(
    *,
    protocols: list[str],
    models: list[str],
    output: Path = DEFAULT_OUTPUT,
    config: EvaluationConfig | None = None,
    command: str = "",
    log: Callable[[str], None] | None = None,
) -> dict:
    """Run the protocols and write `output` (.md), its .json twin and SVG plots in `<output stem>/`."""
    config = config or EvaluationConfig()
    unknown = sorted(set(protocols) - set(PROTOCOLS))
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; choose from {','.join(PROTOCOLS)}")
    started = time.perf_counter()
    evaluation = Evaluation(config, log=log)
    results: dict[str, ProtocolResult] = {}
    for protocol in protocols:
        protocol_started = time.perf_counter()
        (log or print)(f"protocol ({protocol}) ...")
        result = getattr(evaluation, f"protocol_{protocol}")(models)
        result.seconds = time.perf_counter() - protocol_started
        results[protocol] = result
    model_versions = {name: run.model_version for name, run in evaluation._runs.items()}
    timings = {}
    for run in evaluation._runs.values():
        for key, seconds in run.extractor.seconds.items():
            timings[f"{run.name}:{key}"] = round(seconds, 1)
    document = {
        "meta": {
            "command": command,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "limit": config.limit,
            "models": models,
            "model_versions": model_versions,
            "synthetic_counts": list(config.synthetic_counts),
            "threads": config.threads,
            "python": platform.python_version(),
            "seconds_total": round(time.perf_counter() - started, 1),
            "seconds_per_protocol": {p: round(r.seconds, 1) for p, r in results.items()},
            "seconds_extraction": timings,
            "lfw_identities_used": len(evaluation.identities),
            "pairs_used": len(evaluation.pairs),
        },
        "targets": _targets(results),
        "protocols": {p: {"rows": r.rows, "extra": r.extra} for p, r in results.items()},
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    plots = _write_plots(results, output.parent / output.stem)
    document["meta"]["plots"] = [str(p.relative_to(output.parent)) for p in plots]
    output.with_suffix(".json").write_text(json.dumps(_jsonable(document), indent=2) + "\n")
    output.write_text(_markdown(document, _previous_notes(output)))
    return document


def _best(protocol: str, metric: str, comparison: str, rows: dict[str, dict]) -> tuple[str, float] | None:
    candidates = [
        (name, row[metric])
        for name, row in rows.items()
        if metric in row and not name.startswith("unmasked probes") and _finite(row[metric])
    ]
    if not candidates:
        return None
    if protocol == "c":  # one configuration for both (c) numbers: the one with the lowest FNIR @ FPIR 1%
        name = min(
            rows,
            key=lambda n: (
                rows[n].get("fnir_at_fpir_1%", math.inf) if not n.startswith("unmasked probes") else math.inf
            ),
        )
        return name, rows[name][metric]
    if protocol == "d":  # one classifier for both (d) numbers: on the served model's activations if measured
        preference = (f"mask_classifier on {DEFAULT_EMBEDDING_MODEL}", "mask_classifier")
        name = next((n for n in preference if n in rows), next(iter(rows)))
        return name, rows[name][metric]
    pick = max if comparison == ">=" else min
    return pick(candidates, key=lambda item: item[1])


def _targets(results: dict[str, ProtocolResult]) -> list[dict]:
    out = []
    for protocol, metric, comparison, target, description in TARGETS:
        if protocol not in results:
            continue
        rows = results[protocol].rows
        baseline = rows.get("baseline", {}).get(metric)
        best = _best(protocol, metric, comparison, rows)
        entry = {
            "protocol": protocol,
            "metric": metric,
            "description": description,
            "target": target,
            "comparison": comparison,
            "baseline": baseline,
            "best_configuration": best[0] if best else None,
            "best": best[1] if best else None,
        }
        if best is not None:
            met = best[1] >= target if comparison == ">=" else best[1] <= target
            entry["met"] = bool(met)
            entry["gap"] = float(target - best[1]) if comparison == ">=" else float(best[1] - target)
        out.append(entry)
    return out


def _write_plots(results: dict[str, ProtocolResult], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for protocol, result in results.items():
        for kind, curves in result.curves.items():
            curves = _plot_selection(protocol, curves, result.rows)
            if not curves:
                continue
            path = directory / f"{protocol}-{kind}.svg"
            title = TITLES[protocol]
            path.write_text(roc_svg(curves, title) if kind == "roc" else det_svg(curves, title))
            written.append(path)
    return written


def _plot_selection(protocol: str, curves: dict, rows: dict) -> dict:
    """The baseline, every model alone, and each model's best lever (a plot of 20 curves reads badly)."""
    if protocol not in ("b", "c"):
        return curves
    metric = "tar_far_0.001" if protocol == "b" else "fnir_at_fpir_1%"
    sign = -1 if protocol == "b" else 1
    keep = [name for name in curves if "synthetic" not in name]
    models = {name.split(" + ")[0] for name in curves if "synthetic" in name}
    for model in sorted(models):
        for scoring in ("max", "mask-aware"):
            candidates = [n for n in curves if n.startswith(f"{model} + ") and n.endswith(scoring)]
            if candidates:
                keep.append(min(candidates, key=lambda n: sign * rows[n].get(metric, math.inf)))
    return {name: curves[name] for name in keep}


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _format(metric: str, value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"{_format(metric, value[0])} - {_format(metric, value[1])}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if metric.startswith(RATE_PREFIXES) and not metric.endswith("faces"):
            return f"{100 * value:.2f}%"
        return f"{value:.4f}"
    return str(value)


def _markdown(document: dict, notes: str) -> str:
    meta = document["meta"]
    lines = [
        "# Visor accuracy",
        "",
        "Generated by `workers.evaluation` (do not edit the tables by hand; text between the notes markers is"
        " kept on regeneration).",
        "",
        f"- Command: `{meta['command'] or 'python -m workers.evaluation'}`",
        f"- Created: {meta['created']}; limit: {meta['limit'] or 'none (full protocols)'}; "
        f"LFW identities used: {meta['lfw_identities_used']:,}; pairs: {meta['pairs_used']:,}",
        f"- Models: {', '.join(f'{k} = `{v}`' for k, v in meta['model_versions'].items())}",
        f"- Runtime: {meta['seconds_total']:,.0f} s in total; per protocol "
        + ", ".join(f"({p}) {s:,.0f} s" for p, s in meta["seconds_per_protocol"].items())
        + (
            f"; face extraction this run: {meta['seconds_extraction']}"
            if meta["seconds_extraction"]
            else " (every face and embedding came from var/eval-cache)"
        ),
        "",
        NOTES_START,
        notes.strip("\n"),
        NOTES_END,
        "",
        "## Targets",
        "",
        "| Target | Required | Naive baseline | Best measured | Configuration | Met |",
        "|---|---|---|---|---|---|",
    ]
    for target in document["targets"]:
        metric = target["metric"]
        lines.append(
            f"| {target['description']} | {target['comparison']} {_format(metric, target['target'])} "
            f"| {_format(metric, target['baseline'])} | {_format(metric, target['best'])} "
            f"| {target['best_configuration'] or '-'} | "
            + (
                "-"
                if "met" not in target
                else "**yes**"
                if target["met"]
                else f"no (short by {_format(metric, target['gap'])})"
            )
            + " |"
        )
    for protocol, data in document["protocols"].items():
        rows = data["rows"]
        columns = [c for c in COLUMNS[protocol] if any(c in row for row in rows.values())]
        lines += ["", f"## {TITLES[protocol]}", ""]
        lines.append("| Configuration | " + " | ".join(columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for name, row in rows.items():
            label = f"**{name}**" if name == "baseline" else name
            lines.append(f"| {label} | " + " | ".join(_format(c, row.get(c)) for c in columns) + " |")
        extra = {k: v for k, v in data["extra"].items() if k != "calibrations"}
        if extra:
            lines += ["", "Details: " + "; ".join(f"{k} = {_format(k, v)}" for k, v in extra.items())]
        for plot in meta.get("plots", []):
            if Path(plot).name.startswith(f"{protocol}-"):
                lines += ["", f"![{TITLES[protocol]}]({plot})"]
    lines.append("")
    return "\n".join(lines)


def _previous_notes(output: Path) -> str:
    if not output.is_file():
        return "\n_No notes yet._\n"
    text = output.read_text()
    if NOTES_START in text and NOTES_END in text:
        return text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0]
    return "\n_No notes yet._\n"


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m workers.evaluation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--limit", type=int, default=None, help="about N identities and N pairs (quick runs)")
    parser.add_argument(
        "--protocols", default=",".join(PROTOCOLS), help="comma-separated subset of a,b,c,d,e"
    )
    parser.add_argument(
        "--model",
        default="sface",
        help="sface, student, or both: sface,student; NAME+refiner also re-aligns the faces the mask "
        "classifier calls masked (the landmark refiner), as the service does",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="markdown report (JSON and SVGs beside)"
    )
    parser.add_argument("--synthetic", default="1,2,3,4", help="numbers K of synthetic templates to measure")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--cohort",
        type=int,
        default=20,
        help="(c): also measure cohort normalisation over N subjects (0: off)",
    )
    parser.add_argument("--lfw-dir", type=Path, default=None)
    parser.add_argument("--rwmfd-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="model files (default var/models): e.g. a candidate model",
    )
    return parser


def options_to_call(options: dict) -> dict:
    """Keyword arguments of run_evaluation from parsed options (shared with the Django command)."""
    overrides = {
        key: Path(options[key])
        for key in ("lfw_dir", "rwmfd_dir", "cache_dir", "model_dir")
        if options.get(key) is not None
    }
    synthetic = tuple(int(k) for k in str(options.get("synthetic") or "").split(",") if k.strip())
    config = EvaluationConfig(
        limit=options.get("limit"),
        threads=options.get("threads") or 1,
        cohort_size=options.get("cohort") if options.get("cohort") is not None else 20,
        synthetic_counts=synthetic,
        **overrides,
    )
    return {
        "protocols": [p.strip() for p in options["protocols"].split(",") if p.strip()],
        "models": [m.strip() for m in options["model"].split(",") if m.strip()],
        "output": Path(options["output"]),
        "config": config,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    options = vars(build_parser().parse_args(argv))
    document = run_evaluation(
        **options_to_call(options), command="python -m workers.evaluation " + shlex.join(argv)
    )
    for target in document["targets"]:
        print(
            f"{target['description']}: baseline {target['baseline']}, best {target['best']} "
            f"({target['best_configuration']}), met: {target.get('met')}"
        )
