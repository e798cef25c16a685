"""Calibrate the embedding model's cosine similarity on LFW: confidence mapping and FAR thresholds.

    python -m workers.pipeline.calibrate [--model sface|student] [--exclude-split train] [--lfw-dir DIR]
                                         [--model-dir DIR] [--impostor-pairs 200000]

Protocol (the numbers in scoring.py come from exactly this):
1. Every LFW image goes through the production pipeline (decode, YuNet, alignment, embedding); the face
   nearest the image centre is the labelled one (LFW crops are centred on it).
2. Standard 10-fold verification accuracy on pairs.txt (threshold chosen on 9 folds, tested on the 10th).
3. Logistic regression of genuine (1) vs impostor (0) on the cosine of the 6,000 pairs.txt pairs.
4. Thresholds at FAR 1e-3 and 1e-4 from random cross-identity image pairs (200,000 by default, so that
   1e-4 rests on ~20 impostors above it; pairs.txt's 3,000 impostors cannot estimate it), with the true
   accept rate at each threshold over pairs.txt's genuine pairs and over every same-identity pair.
A model trained on LFW (the student saw the "train" split of workers.training.datasets) is calibrated with
`--exclude-split train`: every image, pair and impostor of a training identity is left out.
Embeddings are cached in var/calibration/ per model version (checkpointed while they are computed), so a
rerun only redoes the statistics.
"""

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.pipeline.config import DEFAULT_MODEL_DIR, EMBEDDING_MODELS, REPO_ROOT, PipelineConfig
from workers.pipeline.pipeline import FaceAnalysis, FacePipeline, ImageAnalysis

DEFAULT_LFW_DIR = REPO_ROOT.parent / "shared" / "data" / "lfw_a"
CACHE_DIR = REPO_ROOT / "var" / "calibration"


@dataclass(frozen=True)
class Pair:
    first: str
    second: str
    genuine: bool


def read_pairs(pairs_file: Path) -> list[Pair]:
    """pairs.txt in LFW's View-2 format, as image paths relative to the lfw/ folder, in file order."""
    lines = pairs_file.read_text().splitlines()[1:]
    pairs = []
    for line in lines:
        fields = line.split()
        if len(fields) == 3:
            name, first, second = fields
            pairs.append(Pair(_image_path(name, first), _image_path(name, second), genuine=True))
        elif len(fields) == 4:
            first_name, first, second_name, second = fields
            pairs.append(
                Pair(_image_path(first_name, first), _image_path(second_name, second), genuine=False)
            )
    return pairs


def _image_path(name: str, number: str) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def embed_images(pipeline: FacePipeline, image_root: Path, image_paths: list[str], cache: Path) -> np.ndarray:
    """(N, D) embeddings of the face nearest each image's centre; NaN rows where no face was found.

    Progress is saved to `cache` every 500 images: an interrupted run resumes where it stopped.
    """
    embeddings = np.full((len(image_paths), pipeline.embedder.embedding_dim), np.nan, dtype=np.float32)
    completed = 0
    if cache.exists():
        saved = np.load(cache)
        if list(saved["paths"]) == image_paths:
            embeddings, completed = saved["embeddings"], int(saved["completed"])
    started, resumed_at = time.perf_counter(), completed
    for index in range(completed, len(image_paths)):
        analysis = pipeline.analyze((image_root / image_paths[index]).read_bytes(), purpose="identify")
        if analysis.faces:
            embeddings[index] = _central_face(analysis).embedding
        if (index + 1) % 500 == 0 or index + 1 == len(image_paths):
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(
                cache, paths=np.array(image_paths), embeddings=embeddings, completed=index + 1
            )
            rate = (index + 1 - resumed_at) / (time.perf_counter() - started)
            print(f"embedded {index + 1}/{len(image_paths)} images ({rate:.1f}/s)", file=sys.stderr)
    return embeddings


def _central_face(analysis: ImageAnalysis) -> FaceAnalysis:
    def distance_to_centre(face: FaceAnalysis) -> float:
        return math.hypot(
            face.bbox.x + face.bbox.width / 2 - analysis.width / 2,
            face.bbox.y + face.bbox.height / 2 - analysis.height / 2,
        )

    return min(analysis.faces, key=distance_to_centre)


def fit_logistic(similarities: np.ndarray, labels: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Maximum-likelihood (slope, intercept) of P(genuine) = 1 / (1 + exp(-(slope * s + intercept))).

    The classes are weighted to equal total weight, so the probability assumes equal priors even when the
    pairs are not balanced (pairs.txt is; a subset of its identities is not).
    """
    design = np.stack([similarities, np.ones_like(similarities)], axis=1).astype(np.float64)
    genuine_share = labels.mean()
    sample_weight = np.where(labels > 0.5, 0.5 / genuine_share, 0.5 / (1 - genuine_share))
    weights = np.zeros(2)
    for _ in range(iterations):
        probabilities = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (sample_weight * (labels - probabilities))
        hessian = (design * (sample_weight * probabilities * (1 - probabilities))[:, None]).T @ design
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        weights += step
        if np.abs(step).max() < 1e-10:
            break
    return float(weights[0]), float(weights[1])


def best_threshold(similarities: np.ndarray, labels: np.ndarray) -> float:
    """The cosine threshold (accept >= threshold) with the highest accuracy on these pairs."""
    candidates = np.unique(similarities)
    midpoints = np.concatenate([[candidates[0] - 1e-6], (candidates[:-1] + candidates[1:]) / 2])
    accuracies = [((similarities >= t) == labels).mean() for t in midpoints]
    return float(midpoints[int(np.argmax(accuracies))])


def ten_fold_accuracy(
    similarities: np.ndarray, labels: np.ndarray, folds: int = 10, fold_of: np.ndarray | None = None
) -> tuple[float, float]:
    """Accuracy over `folds` folds (consecutive equal blocks of the pairs unless `fold_of` assigns them)."""
    if fold_of is None:
        fold_of = np.repeat(np.arange(folds), len(similarities) // folds)
    accuracies = []
    for fold in range(folds):
        train, test = fold_of != fold, fold_of == fold
        threshold = best_threshold(similarities[train], labels[train])
        accuracies.append(((similarities[test] >= threshold) == labels[test]).mean())
    return float(np.mean(accuracies)), float(np.std(accuracies))


def far_threshold(impostor_similarities: np.ndarray, false_accept_rate: float) -> float:
    """The smallest threshold (accept >= threshold) at which at most that fraction of impostors pass."""
    ordered = np.sort(impostor_similarities)[::-1]
    allowed = int(np.floor(false_accept_rate * len(ordered)))
    return float(np.nextafter(ordered[allowed], np.float32(np.inf)))


def random_impostor_pairs(identities: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    first, second = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    while len(first) < count:
        a = rng.integers(0, len(identities), size=count)
        b = rng.integers(0, len(identities), size=count)
        different = identities[a] != identities[b]
        first, second = np.concatenate([first, a[different]]), np.concatenate([second, b[different]])
    return first[:count], second[:count]


def all_genuine_similarities(embeddings: np.ndarray, identities: np.ndarray) -> np.ndarray:
    similarities = []
    for identity in np.unique(identities):
        members = embeddings[identities == identity]
        if len(members) > 1:
            gram = members @ members.T
            similarities.append(gram[np.triu_indices(len(members), k=1)])
    return np.concatenate(similarities)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lfw-dir", type=Path, default=DEFAULT_LFW_DIR)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--impostor-pairs", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=sorted(EMBEDDING_MODELS), default="sface")
    parser.add_argument(
        "--exclude-split",
        choices=("train", "val", "test"),
        help="leave out the identities of this split of workers.training.datasets (those a model trained on)",
    )
    args = parser.parse_args(argv)

    pipeline = FacePipeline(
        PipelineConfig.for_model_dir(
            args.model_dir, embedding_model=args.model, intra_op_threads=args.threads
        )
    )
    image_root = args.lfw_dir / "lfw"
    image_paths = sorted(str(path.relative_to(image_root)) for path in image_root.glob("*/*.jpg"))
    if args.exclude_split:
        from workers.training.datasets import split_of

        image_paths = [path for path in image_paths if split_of(path.split("/")[0]) != args.exclude_split]
    scope = f"-without-{args.exclude_split}" if args.exclude_split else ""
    cache = CACHE_DIR / f"{pipeline.model_version}{scope}-lfw-embeddings.npz"
    embeddings = embed_images(pipeline, image_root, image_paths, cache)
    found = ~np.isnan(embeddings).any(axis=1)
    identities = np.array([path.split("/")[0] for path in image_paths])

    index_of = {path: index for index, path in enumerate(image_paths)}
    all_pairs = read_pairs(args.lfw_dir / "pairs.txt")
    # pairs.txt's own folds are consecutive blocks; a pair keeps its fold when others are excluded.
    kept = [i for i, pair in enumerate(all_pairs) if pair.first in index_of and pair.second in index_of]
    pairs = [all_pairs[i] for i in kept]
    pair_folds = np.array(kept) * 10 // len(all_pairs)
    first = np.array([index_of[pair.first] for pair in pairs])
    second = np.array([index_of[pair.second] for pair in pairs])
    labels = np.array([pair.genuine for pair in pairs])
    # A pair with an undetected face counts as a rejection (similarity -1), never silently dropped.
    pair_similarities = np.where(
        found[first] & found[second], np.sum(embeddings[first] * embeddings[second], axis=1), -1.0
    )
    accuracy, accuracy_std = ten_fold_accuracy(pair_similarities, labels, fold_of=pair_folds)
    slope, intercept = fit_logistic(pair_similarities, labels.astype(np.float64))

    usable = np.flatnonzero(found)
    impostor_a, impostor_b = random_impostor_pairs(identities[usable], args.impostor_pairs, args.seed)
    impostor_similarities = np.sum(embeddings[usable[impostor_a]] * embeddings[usable[impostor_b]], axis=1)
    genuine_all = all_genuine_similarities(embeddings[usable], identities[usable])
    genuine_pairs = pair_similarities[labels]

    report = {
        "model_version": pipeline.model_version,
        "excluded_split": args.exclude_split,
        "pairs": len(pairs),
        "images": len(image_paths),
        "images_without_face": int((~found).sum()),
        "pairs_10fold_accuracy": accuracy,
        "pairs_10fold_accuracy_std": accuracy_std,
        "logistic_slope": slope,
        "logistic_intercept": intercept,
        "confidence_half_at_cosine": -intercept / slope,
        "impostor_pairs": len(impostor_similarities),
        "genuine_pairs_all": len(genuine_all),
    }
    for far, name in ((1e-3, "1e3"), (1e-4, "1e4")):
        threshold = far_threshold(impostor_similarities, far)
        report[f"threshold_far_{name}"] = threshold
        report[f"tar_pairs_at_far_{name}"] = float((genuine_pairs >= threshold).mean())
        report[f"tar_all_genuine_at_far_{name}"] = float((genuine_all >= threshold).mean())
        report[f"far_pairs_txt_at_far_{name}"] = float((pair_similarities[~labels] >= threshold).mean())
    report_path = CACHE_DIR / f"{pipeline.model_version}{scope}-report.json"
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(
        "\nSimilarityCalibration(\n"
        f'    model_version="{pipeline.model_version}",\n'
        f"    slope={slope:.4f},\n"
        f"    intercept={intercept:.4f},\n"
        f"    threshold_far_1e3={report['threshold_far_1e3']:.4f},\n"
        f"    threshold_far_1e4={report['threshold_far_1e4']:.4f},\n"
        ")"
    )


if __name__ == "__main__":
    main()
