"""Search latency and recall@10 against exact search, at a given gallery size.

Runs against the stack `make run` started (or whatever DATABASE_URL points at):

    .venv/bin/python -m bench.search --templates 1000000 --keep --recall-only    # seed, build, recall
    .venv/bin/python -m bench.search --templates 1000000 --keep                  # + latency, quiet machine

It seeds a tenant with one gallery of realistic synthetic templates (bench/seed.py: drawn from a model fitted
to real SFace embeddings), builds the gallery's HNSW index with the app's own `search.build_ann_index` when
the gallery is large enough to get one in production, then runs `search.nearest_templates` (the exact code
identify runs, with identify's fetch size) for every probe and compares its first 10 templates with exact
search over every row of the gallery (NumPy, on the vectors exactly as stored). A large gallery is searched
through its 8-bit codes, as by a process that holds them (`--search scan`, the codes made first with the
app's `quantised_scan.make`), or through its HNSW index alone (`--search hnsw`, as before a process has made
the codes, or with VISOR_SCAN_CACHE_MB=0); `--skip-hnsw-build` measures the scan without building the HNSW
index (43 minutes at 1,000,000 templates on this VM). A returned template counts
as a true neighbour when its similarity is at least the exact 10th-best similarity (minus 1e-5, float4
rounding), so ties cannot lower recall.

With --keep the gallery stays (reused by the next run with the same --templates and --seed: the generator is
deterministic, and a fingerprint in the gallery's description guards against a changed generator). Latency is
only measured after the 1-minute load average has dropped below 0.8 (bench/quiet.py), after a warm-up pass
of separate probes. Results are appended to bench/results/search.jsonl; docs/performance.md quotes them.
"""

import argparse
import hashlib
import json
import os
import re
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "search.jsonl"


def _setup_django() -> None:
    from infra.env import load_local_env

    load_local_env()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "infra.settings")
    import django

    django.setup()


def percentile(values, fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def exact_top(stored: np.ndarray, probes: np.ndarray, k: int = 10, chunk: int = 64) -> np.ndarray:
    """(probes, k): the k best similarities of each probe over every stored row (brute force), best first."""
    out = np.empty((len(probes), k), dtype=np.float32)
    for start in range(0, len(probes), chunk):
        scores = probes[start : start + chunk] @ stored.T
        top = -np.partition(-scores, k - 1, axis=1)[:, :k]
        out[start : start + chunk] = -np.sort(-top, axis=1)
    return out


def _fingerprint(data, seed: int) -> str:
    digest = hashlib.sha256(data.embeddings[:2000].tobytes() + data.embeddings[-2000:].tobytes())
    return f"bench seed={seed} templates={len(data.embeddings)} sha={digest.hexdigest()[:16]}"


def _index_facts(name: str) -> dict:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size(c.oid), pg_get_indexdef(c.oid) FROM pg_class c WHERE c.relname = %s",
            [name],
        )
        row = cursor.fetchone()
        cursor.execute("SELECT current_setting('shared_buffers'), version()")
        shared_buffers, version = cursor.fetchone()
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        pgvector = cursor.fetchone()[0]
    return {
        "index_bytes": row[0] if row else None,
        "index_definition": row[1] if row else None,
        "shared_buffers": shared_buffers,
        "postgres": version.split(" on ")[0],
        "pgvector": pgvector,
    }


def _option(facts: dict, name: str) -> int | None:
    found = re.search(rf"\b{name}='(\d+)'", facts.get("index_definition") or "")
    return int(found.group(1)) if found else None


def _gallery(args, data):
    """(tenant, gallery, seed seconds or None when reused)."""
    from identity.models import FaceTemplate, Gallery
    from tenants.actors import Actor
    from tenants.models import Tenant
    from tenants.rls import operator_transaction, tenant_transaction
    from tenants.services import create_tenant

    name = f"bench-search-{args.templates}-s{args.seed}"
    fingerprint = _fingerprint(data, args.seed)
    with operator_transaction():
        tenant = Tenant.objects.filter(name=name).first()
    if tenant is not None:
        with tenant_transaction(tenant.id):
            gallery = Gallery.objects.filter(tenant=tenant, description=fingerprint).first()
            rows = FaceTemplate.objects.filter(gallery=gallery).count() if gallery else 0
        if gallery is not None and rows == args.templates:
            print(f"reusing gallery {gallery.id} ({rows} templates)", flush=True)
            return tenant, gallery, None
        with tenant_transaction(tenant.id):
            Gallery.objects.filter(tenant=tenant).delete()
    else:
        with operator_transaction():
            tenant = create_tenant(name=name, actor=Actor.system("bench"))
    with tenant_transaction(tenant.id):
        gallery = Gallery.objects.create(
            tenant=tenant, name="bench", description=fingerprint, model_version="bench-synthetic"
        )
    from bench.seed import seed_gallery

    started = time.perf_counter()

    def progress(done: int) -> None:
        if done % 150_000 < 30_000 or done == args.templates:
            print(f"seeded {done} templates, {time.perf_counter() - started:.0f}s", flush=True)

    seed_gallery(tenant=tenant, gallery=gallery, data=data, progress=progress)
    with connection_cursor() as cursor:
        cursor.execute(f"ANALYZE {FaceTemplate._meta.db_table}")
    return tenant, gallery, time.perf_counter() - started


def connection_cursor():
    from django.db import connection

    return connection.cursor()


def _ensure_index(args, tenant, gallery) -> float | None:
    """Build the gallery's HNSW index with the app's code if it has none (or --rebuild); build seconds."""
    from identity import search
    from identity.models import Gallery
    from tenants.rls import tenant_transaction

    if args.templates < search.ANN_MIN_TEMPLATES:
        return None
    name = search.ann_index_name(gallery.id)
    if args.skip_hnsw_build:
        # Marked large, as the index build would: searches go through the codes.
        with tenant_transaction(tenant.id):
            Gallery.objects.filter(id=gallery.id).update(ann_index_name=name)
        return None
    with connection_cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [name])
        exists = cursor.fetchone() is not None
    if exists and not args.rebuild and gallery.ann_index_name:
        return None
    if exists:
        search.drop_ann_index(gallery_id=gallery.id)
    print("building the HNSW index ...", flush=True)
    # pgvector says so (NOTICE) when the graph outgrows maintenance_work_mem and the build goes on disk.
    connection_cursor().close()
    from django.db import connection

    connection.connection.add_notice_handler(
        lambda notice: print("NOTICE:", notice.message_primary, flush=True)
    )
    started = time.perf_counter()
    name = search.build_ann_index(gallery_id=gallery.id)
    seconds = time.perf_counter() - started
    print(f"built {name} in {seconds:.0f}s", flush=True)
    with tenant_transaction(tenant.id):
        Gallery.objects.filter(id=gallery.id).update(ann_index_name=name)
    gallery.ann_index_name = name
    return seconds


def _plan(tenant, gallery, probe, limit: int) -> str:
    """The scans PostgreSQL picks for identify's search (search.nearest_templates, EXPLAINed)."""
    from identity import search
    from tenants.rls import tenant_transaction

    with tenant_transaction(tenant.id):
        lines = search.nearest_templates_plan(
            tenant_id=tenant.id, gallery=gallery, embedding=probe, limit=limit
        )
    return "; ".join(line.split("  (")[0] for line in lines)


def _run_probes(tenant, gallery, probes, limit: int):
    """(latency ms, the first 10 similarities) per probe, through search.nearest_templates."""
    from identity import search
    from tenants.rls import tenant_transaction

    latencies, similarities = [], []
    for probe in probes:
        began = time.perf_counter()
        with tenant_transaction(tenant.id):
            hits = search.nearest_templates(
                tenant_id=tenant.id, gallery=gallery, embedding=probe, limit=limit
            )
        latencies.append((time.perf_counter() - began) * 1000)
        similarities.append([hit.similarity for hit in hits[:10]])
    return latencies, similarities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the gallery for the next run")
    parser.add_argument("--rebuild", action="store_true", help="drop and rebuild the HNSW index")
    parser.add_argument("--recall-only", action="store_true", help="no quiet-machine wait, no warm-up")
    parser.add_argument(
        "--ef-search",
        type=lambda text: [int(v) for v in text.split(",")],
        default=None,
        help="comma-separated hnsw.ef_search values to sweep (default: the app's HNSW_EF_SEARCH)",
    )
    parser.add_argument("--limit", type=int, default=None, help="templates fetched (default: identify's)")
    parser.add_argument("--m", type=int, default=None, help="experiment: build with this HNSW m")
    parser.add_argument("--ef-construction", type=int, default=None, help="experiment: build ef_construction")
    parser.add_argument(
        "--search", choices=["scan", "hnsw"], default="scan", help="how a large gallery is searched"
    )
    parser.add_argument("--skip-hnsw-build", action="store_true", help="scan only: no HNSW index is built")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.skip_hnsw_build and args.search != "scan":
        parser.error("--skip-hnsw-build measures the scan: it needs --search scan")
    _setup_django()

    from django.conf import settings

    from bench.quiet import environment, load_average, wait_for_quiet
    from bench.seed import EmbeddingModel, as_stored, synthetic_gallery, synthetic_probes
    from identity import quantised_scan, search
    from identity.models import Gallery
    from tenants.rls import tenant_transaction
    from workers.pipeline.scoring import SFACE_2021DEC_CALIBRATION

    # Experiments only: the app's build constants are overridden in this process (recorded with the result).
    search.HNSW_M = args.m or search.HNSW_M
    search.HNSW_EF_CONSTRUCTION = args.ef_construction or search.HNSW_EF_CONSTRUCTION
    model = EmbeddingModel.load()
    rng = np.random.default_rng(args.seed)
    data = synthetic_gallery(args.templates, rng=rng, model=model)
    probe_rng = np.random.default_rng(args.seed + 1000)
    probes, kinds, _ = synthetic_probes(data, args.queries + args.warmup, rng=probe_rng, model=model)
    warmup, probes, kinds = probes[: args.warmup], probes[args.warmup :], kinds[args.warmup :]

    tenant, gallery, seed_seconds = _gallery(args, data)
    index_seconds = _ensure_index(args, tenant, gallery)
    with tenant_transaction(tenant.id):
        gallery = Gallery.objects.get(id=gallery.id)
    scanned = bool(gallery.ann_index_name) and args.search == "scan"
    codes_facts = {}
    if scanned:
        began = time.perf_counter()
        codes = quantised_scan.make(
            tenant_id=tenant.id, gallery_id=gallery.id, model_version=gallery.model_version
        )
        if codes is None:
            raise SystemExit(
                "the gallery's codes do not fit in VISOR_SCAN_CACHE_MB: raise it, or --search hnsw"
            )
        codes_facts = {
            "codes_seconds": round(time.perf_counter() - began, 1),
            "codes_bytes": codes.nbytes,
            "candidates": quantised_scan.CANDIDATE_FACTOR,
        }
        print(
            f"made the codes of {len(codes.template_ids)} templates in {codes_facts['codes_seconds']}s",
            flush=True,
        )
    else:
        settings.VISOR_SCAN_CACHE_MB = 0

    print("exact search ...", flush=True)
    stored = as_stored(data.embeddings)
    exact = exact_top(stored, probes)
    del stored

    # identify fetches max(MIN_TEMPLATES_FETCHED, top_k * TEMPLATES_PER_SUBJECT_FETCHED); top_k defaults to 5.
    limit = args.limit or max(search.MIN_TEMPLATES_FETCHED, 5 * search.TEMPLATES_PER_SUBJECT_FETCHED)
    facts = _index_facts(gallery.ann_index_name) if gallery.ann_index_name else {}
    # identify's threshold for an unmasked probe at FAR 1e-4, on the SFace scale the data was fitted to.
    match_threshold = SFACE_2021DEC_CALIBRATION.threshold_far_1e4
    default_ef = search.HNSW_EF_SEARCH
    for ef in [default_ef] if scanned else args.ef_search or [default_ef]:
        search.HNSW_EF_SEARCH = ef
        quiet = None
        if not args.recall_only:
            quiet = wait_for_quiet()
            _run_probes(tenant, gallery, warmup, limit)
        load_start = load_average()
        began = time.perf_counter()
        latencies, similarities = _run_probes(tenant, gallery, probes, limit)
        wall = time.perf_counter() - began
        load_end = load_average()
        pairs = list(zip(similarities, exact, strict=True))
        recalls = [sum(s >= truth[9] - 1e-5 for s in found) / 10 for found, truth in pairs]
        # The best template found is the exact best: identify's top candidate and its score are exact.
        top1 = [float(bool(found) and found[0] >= truth[0] - 1e-5) for found, truth in pairs]
        # Of the exact top 10, the templates at or above identify's threshold (those that can make a match).
        above_expected = sum(int((truth >= match_threshold).sum()) for _, truth in pairs)
        above_found = sum(
            min(int((truth >= match_threshold).sum()), sum(s >= match_threshold for s in found))
            for found, truth in pairs
        )
        by_kind = {
            kind: round(statistics.mean(r for r, k in zip(recalls, kinds, strict=True) if k == kind), 4)
            for kind in sorted(set(kinds))
        }
        result = {
            "bench": "search",
            "templates": args.templates,
            "subjects": data.subjects,
            "faces": data.faces,
            "data": "lfw-fitted (bench/embedding_stats.npz)",
            "queries": len(probes),
            "limit": limit,
            "index": (
                "8-bit scan of every template + exact re-rank in PostgreSQL"
                if scanned
                else "hnsw (partial, per gallery)"
                if gallery.ann_index_name
                else "exact"
            ),
            **codes_facts,
            # What the index was built with (it may be an earlier run's).
            "hnsw_m": _option(facts, "m"),
            "hnsw_ef_construction": _option(facts, "ef_construction"),
            "hnsw_ef_search": max(ef, 4 * limit),
            "seed_seconds": round(seed_seconds, 1) if seed_seconds is not None else None,
            "index_build_seconds": round(index_seconds, 1) if index_seconds is not None else None,
            **facts,
            "plan": "identity.quantised_scan" if scanned else _plan(tenant, gallery, probes[0], limit),
            "timed": not args.recall_only,
            "p50_ms": round(statistics.median(latencies), 2),
            "p95_ms": round(percentile(latencies, 0.95), 2),
            "p99_ms": round(percentile(latencies, 0.99), 2),
            "mean_ms": round(statistics.mean(latencies), 2),
            "qps_c1": round(len(probes) / wall, 1),
            "recall_at_10": round(statistics.mean(recalls), 4),
            "recall_at_10_min": min(recalls),
            "recall_at_10_by_probe": by_kind,
            "top1_exact": round(statistics.mean(top1), 4),
            "match_threshold": match_threshold,
            "recall_at_10_above_threshold": round(above_found / above_expected, 4)
            if above_expected
            else None,
            "quiet_wait": quiet,
            "load_start": load_start,
            "load_end": load_end,
            **environment(),
            "note": args.note,
        }
        print(json.dumps(result), flush=True)
        RESULTS.parent.mkdir(exist_ok=True)
        with RESULTS.open("a") as handle:
            handle.write(json.dumps(result) + "\n")
    search.HNSW_EF_SEARCH = default_ef

    if not args.keep:
        with tenant_transaction(tenant.id):
            Gallery.objects.filter(id=gallery.id).delete()
        search.drop_ann_index(gallery_id=gallery.id)


if __name__ == "__main__":
    main()
