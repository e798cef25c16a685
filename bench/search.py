"""Search latency and recall@10 against exact search, at a given gallery size.

Runs against the stack `make run` started (or whatever DATABASE_URL points at):

    .venv/bin/python -m bench.search --templates 100000 --queries 300

It seeds a throw-away tenant with one gallery of synthetic templates (bench/seed.py), builds the gallery's
HNSW index when the gallery is large enough to get one in production, then times `search.nearest_templates`
(the exact code identify runs) and compares its top 10 with brute-force exact search in NumPy. Results are
appended to bench/results/search.jsonl; docs/performance.md quotes them.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np


def _setup_django() -> None:
    from infra.env import load_local_env

    load_local_env()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra.settings")
    import django

    django.setup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _setup_django()

    from bench.seed import seed_gallery, synthetic_embeddings
    from identity import search
    from identity.models import Gallery
    from tenants.actors import Actor
    from tenants.rls import operator_transaction, tenant_transaction
    from tenants.services import create_tenant

    rng = np.random.default_rng(args.seed)
    embeddings, owner = synthetic_embeddings(args.templates, subjects=max(1, args.templates // 4), rng=rng)
    with operator_transaction():
        tenant = create_tenant(name=f"bench-search-{args.templates}", actor=Actor.system("bench"))
    with tenant_transaction(tenant.id):
        gallery = Gallery.objects.create(tenant=tenant, name="bench", model_version="bench-synthetic")

    started = time.perf_counter()
    seed_gallery(tenant=tenant, gallery=gallery, embeddings=embeddings, owner=owner)
    seed_seconds = time.perf_counter() - started
    index_seconds = None
    if args.templates >= search.ANN_MIN_TEMPLATES:
        started = time.perf_counter()
        name = search.build_ann_index(gallery_id=gallery.id)
        index_seconds = time.perf_counter() - started
        with tenant_transaction(tenant.id):
            Gallery.objects.filter(id=gallery.id).update(ann_index_name=name)
        gallery.ann_index_name = name

    probes = embeddings[rng.integers(0, len(embeddings), size=args.queries)]
    probes = probes + rng.standard_normal(probes.shape).astype(np.float32) * 0.04
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    latencies, recalls = [], []
    for probe in probes:
        exact = set(np.argsort(-(embeddings @ probe))[:10].tolist())
        began = time.perf_counter()
        with tenant_transaction(tenant.id):
            # The same fetch size identify uses for its default top_k of 5; recall is judged on the first 10.
            hits = search.nearest_templates(
                tenant_id=tenant.id, gallery=gallery, embedding=probe, limit=search.MIN_TEMPLATES_FETCHED
            )[:10]
        latencies.append((time.perf_counter() - began) * 1000)
        found = {round(hit.similarity, 4) for hit in hits}
        expected = {round(float(embeddings[i] @ probe), 4) for i in exact}
        recalls.append(len(found & expected) / 10)

    latencies.sort()
    result = {
        "templates": args.templates,
        "queries": args.queries,
        "index": "hnsw (partial, per gallery)" if gallery.ann_index_name else "exact",
        "seed_seconds": round(seed_seconds, 1),
        "index_build_seconds": round(index_seconds, 1) if index_seconds is not None else None,
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 2),
        "recall_at_10": round(statistics.mean(recalls), 4),
    }
    print(json.dumps(result))
    output = Path(__file__).parent / "results" / "search.jsonl"
    output.parent.mkdir(exist_ok=True)
    with output.open("a") as handle:
        handle.write(json.dumps(result) + "\n")

    with tenant_transaction(tenant.id):
        Gallery.objects.filter(id=gallery.id).delete()
    search.drop_ann_index(gallery_id=gallery.id)


if __name__ == "__main__":
    main()
