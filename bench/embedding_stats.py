"""Fit the distribution the benchmarks draw synthetic templates from, to real SFace embeddings of LFW.

    .venv/bin/python -m bench.embedding_stats     # ~4 min on one core; writes bench/embedding_stats.npz

Runs the production face pipeline (`workers.pipeline.FacePipeline`, YuNet + SFace from var/models) on LFW-a
photos of `--people` identities with at least two photos (up to `--per-person` photos each, pasted on a
grey canvas as the identify benchmark does), and the enrollment augmentation (`synthetic_mask_templates`)
on the first photo of `--mask-people` of them. It stores only derived statistics, never images or
per-image embeddings:

- `mean`: mean of the unit-norm embeddings;
- `between`: a (128, 128) factor B with B B^T = covariance of identity centres (between-identity scatter);
- `within`: a factor W with W W^T = covariance of a photo around its identity's centre;
- `mask_offset[j]`, `mask_factor[j]`: mean and covariance factor of (masked - unmasked embedding) of the same
  photo with mask type `mask_types[j]` (the first two are what enrollment stores as synthetic_mask
  templates; the others are used for masked probes, a mask the gallery never saw);
- real similarity percentiles (genuine, impostor, photo vs its masked version) to check the generator.

bench/seed.py draws from this model; `python -m bench.seed --check` compares the generated similarity
distributions with the real ones stored here.
"""

import argparse
import time
from pathlib import Path

import numpy as np

STATS_PATH = Path(__file__).with_name("embedding_stats.npz")
LFW_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw_a" / "lfw"
MASK_TYPES = ("surgical_blue", "surgical", "KN95", "cloth_coloured")
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def _factor(covariance: np.ndarray) -> np.ndarray:
    """A factor F with F F^T = covariance, negative eigenvalues (estimation noise) clipped to zero."""
    values, vectors = np.linalg.eigh((covariance + covariance.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))).astype(np.float32)


def _on_canvas(path: Path) -> np.ndarray:
    import cv2

    face = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
    canvas = np.full((480, 640, 3), 128, dtype=np.uint8)
    canvas[115:365, 195:445] = face
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=1200)
    parser.add_argument("--per-person", type=int, default=4)
    parser.add_argument("--mask-people", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=STATS_PATH)
    args = parser.parse_args()

    import cv2

    from workers.pipeline.config import DEFAULT_MODEL_DIR, PipelineConfig
    from workers.pipeline.enrollment_augmentation import AugmentationConfig, synthetic_mask_templates
    from workers.pipeline.masks import MaskSynthesizer
    from workers.pipeline.pipeline import FacePipeline

    pipeline = FacePipeline(
        PipelineConfig.for_model_dir(DEFAULT_MODEL_DIR, intra_op_threads=args.threads, inter_op_threads=1)
    )
    synthesizer = MaskSynthesizer()
    augmentation = AugmentationConfig(variants=len(MASK_TYPES), mask_types=MASK_TYPES)

    people = sorted(p for p in LFW_DIR.iterdir() if len(list(p.glob("*.jpg"))) >= 2)
    rng = np.random.default_rng(0)
    people = [
        people[i] for i in sorted(rng.choice(len(people), size=min(args.people, len(people)), replace=False))
    ]
    started = time.perf_counter()
    embeddings: list[np.ndarray] = []
    owner: list[int] = []
    masked_pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (plain, (types, 128) masked)
    for index, person in enumerate(people):
        for photo_index, path in enumerate(sorted(person.glob("*.jpg"))[: args.per_person]):
            canvas = _on_canvas(path)
            _, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
            try:
                analysis = pipeline.analyze(encoded.tobytes(), purpose="identify", max_faces=1)
            except Exception:  # an unreadable photo: skip it
                continue
            if not analysis.faces:
                continue
            face = analysis.faces[0]
            embeddings.append(face.embedding)
            owner.append(index)
            if photo_index == 0 and index < args.mask_people:
                synthetic = synthetic_mask_templates(
                    canvas,
                    face.landmarks,
                    face.bbox,
                    synthesizer,
                    pipeline.embedder,
                    seed=path.name,
                    config=augmentation,
                )
                masked_pairs.append((face.embedding, np.stack([t.embedding for t in synthetic])))
        if index % 100 == 99:
            print(
                f"{index + 1}/{len(people)} people, {len(embeddings)} faces, "
                f"{time.perf_counter() - started:.0f}s"
            )

    vectors = np.stack(embeddings).astype(np.float64)
    owners = np.asarray(owner)
    # Identities with at least two detected photos.
    counts = np.bincount(owners, minlength=len(people))
    keep = counts[owners] >= 2
    vectors, owners = vectors[keep], owners[keep]
    ids, owners = np.unique(owners, return_inverse=True)
    counts = np.bincount(owners)
    centres = np.stack([vectors[owners == i].mean(axis=0) for i in range(len(ids))])
    residuals = vectors - centres[owners]
    # Unbiased within-identity covariance (each identity loses one degree of freedom to its mean).
    within = residuals.T @ residuals / (len(vectors) - len(ids))
    # Covariance of identity means = between + within / n_i on average.
    between = np.cov(centres, rowvar=False) - within * np.mean(1.0 / counts)

    plain = np.stack([p for p, _ in masked_pairs]).astype(np.float64)
    masked = np.stack([m for _, m in masked_pairs]).astype(np.float64)  # (N, types, 128)
    offsets = masked - plain[:, None, :]
    mask_offset = offsets.mean(axis=0)
    mask_factor = np.stack([_factor(np.cov(offsets[:, j, :], rowvar=False)) for j in range(len(MASK_TYPES))])

    similarity = vectors @ vectors.T
    same = owners[:, None] == owners[None, :]
    upper = np.triu(np.ones_like(same), k=1).astype(bool)
    genuine = similarity[same & upper]
    impostor = similarity[~same & upper]
    masked_vs_plain = np.einsum("nd,ntd->nt", plain, masked)

    np.savez_compressed(
        args.output,
        mean=vectors.mean(axis=0).astype(np.float32),
        between=_factor(between),
        within=_factor(within),
        mask_types=np.array(MASK_TYPES),
        mask_offset=mask_offset.astype(np.float32),
        mask_factor=mask_factor,
        percentiles=np.array(PERCENTILES, dtype=np.float32),
        genuine=np.percentile(genuine, PERCENTILES).astype(np.float32),
        impostor=np.percentile(impostor, PERCENTILES).astype(np.float32),
        masked_vs_plain=np.percentile(masked_vs_plain, PERCENTILES, axis=0).T.astype(np.float32),
        sizes=np.array([len(vectors), len(ids), len(masked_pairs)]),
        model_version=np.array(pipeline.model_version),
    )
    print(
        f"{len(vectors)} photos of {len(ids)} identities, {len(masked_pairs)} masked, "
        f"{time.perf_counter() - started:.0f}s -> {args.output}"
    )
    print("genuine  percentiles", np.round(np.percentile(genuine, PERCENTILES), 3))
    print("impostor percentiles", np.round(np.percentile(impostor, PERCENTILES), 3))
    for j, kind in enumerate(MASK_TYPES):
        print(f"{kind:15s} vs plain", np.round(np.percentile(masked_vs_plain[:, j], PERCENTILES), 3))
    values = np.linalg.eigvalsh(between)[::-1]
    share = np.cumsum(np.clip(values, 0, None)) / np.clip(values, 0, None).sum()
    print("between-identity variance: 90% in", int(np.searchsorted(share, 0.9)) + 1, "of 128 directions")


if __name__ == "__main__":
    main()
