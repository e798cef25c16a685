"""Would an IVF index (pgvector ivfflat) search the benchmark data better than HNSW? A NumPy simulation.

    .venv/bin/python -m bench.ivf_recall --templates 1000000

Trains `--lists` spherical k-means centroids on a sample of 50 rows per list (as pgvector's ivfflat does),
assigns every template of the bench/seed.py gallery to its nearest centroid, and reports, per number of
probed lists, recall@10 against exact search and how many vectors a query scans. No database involved: it
only shows how much of the gallery an IVF scan must read for a given recall on this data.
"""

import argparse
import json

import numpy as np

from bench.seed import EmbeddingModel, as_stored, synthetic_gallery, synthetic_probes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=int, default=1_000_000)
    parser.add_argument("--lists", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--probes", default="10,20,40,60,100,150,200")
    args = parser.parse_args()
    model = EmbeddingModel.load()
    data = synthetic_gallery(args.templates, rng=np.random.default_rng(0), model=model)
    probes, _, _ = synthetic_probes(data, args.queries, rng=np.random.default_rng(1000), model=model)
    vectors = as_stored(data.embeddings)
    rng = np.random.default_rng(0)
    sample = vectors[rng.choice(len(vectors), min(len(vectors), 50 * args.lists), replace=False)]
    centroids = sample[rng.choice(len(sample), args.lists, replace=False)].copy()
    for _ in range(10):
        nearest = np.argmax(sample @ centroids.T, axis=1)
        for k in range(args.lists):
            members = sample[nearest == k]
            if len(members):
                centroids[k] = members.sum(axis=0) / np.linalg.norm(members.sum(axis=0))
    assignment = np.concatenate(
        [np.argmax(vectors[s : s + 50_000] @ centroids.T, axis=1) for s in range(0, len(vectors), 50_000)]
    )
    sizes = np.bincount(assignment, minlength=args.lists)
    top10 = np.argpartition(-(probes @ vectors.T), 10, axis=1)[:, :10]
    order = np.argsort(-(probes @ centroids.T), axis=1)
    for probed in (int(p) for p in args.probes.split(",")):
        recall = np.mean(
            [np.isin(assignment[top10[i]], order[i, :probed]).mean() for i in range(len(probes))]
        )
        scanned = np.mean([sizes[order[i, :probed]].sum() for i in range(len(probes))])
        result = {"templates": args.templates, "lists": args.lists, "probes": probed}
        print(
            json.dumps({**result, "recall_at_10": round(float(recall), 4), "vectors_scanned": int(scanned)})
        )


if __name__ == "__main__":
    main()
