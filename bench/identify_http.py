"""End-to-end identify over HTTP against a gallery of 100,000 templates.

Against the stack `make run` started (restart it after code changes so gunicorn loads them):

    .venv/bin/python -m bench.identify_http --templates 100000 --requests 300

It creates a throw-away tenant (unlimited "bench" plan) and gallery, enrolls `--enrolled` LFW people
through the API (their first photo, on a 640x480 canvas), fills the gallery up to `--templates` templates in
total with realistic synthetic ones (bench/seed.py; the enrolled faces' own templates count), and builds the
gallery's HNSW index with the app's maintenance task. Probes are 640x480 JPEGs with one face: another photo
of an enrolled person, or a person who is not enrolled, a quarter of them wearing a synthetic mask
(MaskSynthesizer, a mask type enrollment never draws). After a warm-up and once the machine is quiet
(bench/quiet.py) it sends `--requests` identifies one at a time (latency) and then at concurrency 4
(throughput). The Server-Timing header of each answer says where the time went: decode, detect, align,
quality, embed, mask (the mask classifier), refine (a masked face aligned and embedded again) and search
(search + ranking + usage record); whatever the client waited beyond those is framework (HTTP, gunicorn,
DRF, authentication, rate limit, quota, JSON).
Results are appended to bench/results/identify_http.jsonl.
"""

import argparse
import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from bench.search import _setup_django, percentile
from workers.evaluation.lfw import jpeg, lfw_canvas

BASE_URL = "http://127.0.0.1:8000"  # make run's API
LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw_a" / "lfw"
RESULTS = Path(__file__).parent / "results" / "identify_http.jsonl"
PROBE_MASK_TYPES = ("KN95", "cloth_coloured")


def bench_tenant(name: str):
    """A tenant on an unlimited plan, with a key of every scope; returns (tenant, raw key)."""
    from tenants.actors import Actor
    from tenants.models import Plan
    from tenants.rls import operator_transaction
    from tenants.services import create_tenant_with_api_key

    with operator_transaction():
        plan, _ = Plan.objects.get_or_create(
            name="bench",
            defaults={
                "allows_overage": True,
                "requests_per_second": 10_000,
                "burst": 10_000,
                "max_gallery_faces": 10_000_000,
                "max_tenant_faces": 10_000_000,
            },
        )
        tenant, issued = create_tenant_with_api_key(
            name=name,
            actor=Actor.system("bench"),
            key_name="bench",
            scopes=["read", "enroll", "identify", "manage"],
            plan=plan,
        )
        tenant.store_images = False
        tenant.save(update_fields=["store_images"])
    return tenant, issued.raw_key


def _probes(
    genuine: list[tuple[Path, str]], strangers: list[tuple[Path, str]], masked_share: float
) -> list[tuple[str, bytes, str]]:
    """(kind, JPEG, enrolled person's name or "") per probe, from (photo, name) pairs."""
    from workers.pipeline.config import DEFAULT_MODEL_DIR, PipelineConfig
    from workers.pipeline.masks import MaskSynthesizer
    from workers.pipeline.pipeline import FacePipeline

    pipeline = FacePipeline(PipelineConfig.for_model_dir(DEFAULT_MODEL_DIR))
    synthesizer = MaskSynthesizer()
    rng = np.random.default_rng(0)
    candidates = [("genuine", path, name) for path, name in genuine]
    candidates += [("stranger", path, name) for path, name in strangers]
    probes = []
    for index, (kind, path, name) in enumerate(candidates):
        canvas = lfw_canvas(path)
        faces = pipeline.analyze(jpeg(canvas), purpose="identify", max_faces=1).faces
        if not faces:
            continue
        if index % round(1 / masked_share) == 0:
            face = faces[0]
            mask_type = PROBE_MASK_TYPES[index % len(PROBE_MASK_TYPES)]
            canvas = synthesizer.apply(canvas, face.landmarks, face.bbox, rng=rng, mask_type=mask_type)
            kind += "_masked"
        probes.append((kind, jpeg(canvas), name))
    order = rng.permutation(len(probes))
    return [probes[i] for i in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--enrolled", type=int, default=60, help="LFW people enrolled through the API")
    parser.add_argument("--strangers", type=int, default=40, help="LFW people probed but not enrolled")
    parser.add_argument("--masked-share", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--base-url", default=BASE_URL)
    parser.add_argument("--no-wait", action="store_true", help="smoke test: do not wait for a quiet machine")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    _setup_django()

    from bench.quiet import environment, load_average, wait_for_quiet
    from bench.seed import EmbeddingModel, seed_gallery, synthetic_gallery
    from identity import search
    from identity.models import FaceTemplate, Gallery
    from identity.tasks import build_gallery_ann_index
    from tenants.rls import tenant_transaction

    tenant, raw_key = bench_tenant(f"bench-identify-{int(time.time())}")
    headers = {"Authorization": f"Bearer {raw_key}"}
    client = httpx.Client(base_url=args.base_url, headers=headers, timeout=120)
    gallery = client.post("/v1/galleries", json={"name": "bench"}).json()

    people = sorted(p for p in LFW.iterdir() if len(list(p.glob("*.jpg"))) >= 2)
    rng = np.random.default_rng(1)
    chosen = [people[i] for i in rng.choice(len(people), size=args.enrolled + args.strangers, replace=False)]
    enrolled, strangers = chosen[: args.enrolled], chosen[args.enrolled :]
    subject_of: dict[str, str] = {}
    genuine_photos: list[tuple[Path, str]] = []
    for person in enrolled:
        subject = client.post(
            f"/v1/galleries/{gallery['id']}/subjects", json={"external_id": person.name}
        ).json()
        photos = sorted(person.glob("*.jpg"))
        for index, photo in enumerate(photos):
            image = jpeg(lfw_canvas(photo))
            answer = client.post(f"/v1/subjects/{subject['id']}/faces?wait=true", files={"image": image})
            if answer.status_code == 201:
                subject_of[person.name] = subject["id"]
                # The probe is another photo of the person (a quality rejection is not a problem there).
                genuine_photos.append((photos[(index + 1) % len(photos)], person.name))
                break
            assert answer.status_code == 422, answer.text
    stranger_photos = [(sorted(person.glob("*.jpg"))[0], "") for person in strangers]
    probes = _probes(genuine_photos, stranger_photos, args.masked_share)

    with tenant_transaction(tenant.id):
        gallery_row = Gallery.objects.get(id=gallery["id"])
        enrolled_templates = FaceTemplate.objects.filter(gallery=gallery_row).count()
    data = synthetic_gallery(args.templates - enrolled_templates, rng=rng, model=EmbeddingModel.load())
    started = time.perf_counter()
    seed_gallery(tenant=tenant, gallery=gallery_row, data=data)
    seed_seconds = time.perf_counter() - started
    with tenant_transaction(tenant.id):
        templates = FaceTemplate.objects.filter(gallery=gallery_row).count()
    print(f"{templates} templates ({enrolled_templates} enrolled) seeded in {seed_seconds:.0f}s", flush=True)
    index_seconds = None
    if templates >= search.ANN_MIN_TEMPLATES:
        with tenant_transaction(tenant.id):
            # An enrollment may already have queued the build; wait for it rather than build twice.
            indexed = Gallery.objects.get(id=gallery["id"]).ann_index_name
        if not indexed:
            started = time.perf_counter()
            build_gallery_ann_index(gallery_id=gallery["id"], tenant_id=str(tenant.id))
            index_seconds = time.perf_counter() - started
            print(f"HNSW index built in {index_seconds:.0f}s", flush=True)

    from bench.search import _plan

    with tenant_transaction(tenant.id):
        gallery_row = Gallery.objects.get(id=gallery["id"])
    plan = _plan(tenant, gallery_row, data.embeddings[0], search.MIN_TEMPLATES_FETCHED)
    print(f"search plan: {plan}", flush=True)
    local = threading.local()

    def identify(probe: tuple[str, bytes, str]) -> dict:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=args.base_url, headers=headers, timeout=120)
        kind, image, name = probe
        began = time.perf_counter()
        response = local.client.post(f"/v1/galleries/{gallery['id']}/identify", files={"image": image})
        elapsed = (time.perf_counter() - began) * 1000
        assert response.status_code == 200, response.text
        stages = {
            part.split(";dur=")[0]: float(part.split(";dur=")[1])
            for part in response.headers["Server-Timing"].split(", ")
        }
        body = response.json()
        match = body["faces"][0]["match"] if body["faces"] else None
        expected = subject_of.get(name)
        correct = (
            (match is None) if expected is None else (match is not None and match["subject_id"] == expected)
        )
        return {"kind": kind, "ms": elapsed, "stages": stages, "took_ms": body["took_ms"], "correct": correct}

    def summary(runs: list[dict], wall: float) -> dict:
        latencies = [run["ms"] for run in runs]
        stage_names = list(runs[0]["stages"])
        stage_means = {stage: statistics.mean(run["stages"][stage] for run in runs) for stage in stage_names}
        framework = statistics.mean(run["ms"] - sum(run["stages"].values()) for run in runs)
        return {
            "p50_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(percentile(latencies, 0.95), 1),
            "p99_ms": round(percentile(latencies, 0.99), 1),
            "mean_ms": round(statistics.mean(latencies), 1),
            "throughput_rps": round(len(runs) / wall, 2),
            "stage_mean_ms": {
                **{k: round(v, 2) for k, v in stage_means.items()},
                "framework": round(framework, 2),
            },
            "correct": {
                kind: f"{sum(r['correct'] for r in runs if r['kind'] == kind)}/"
                f"{sum(r['kind'] == kind for r in runs)}"
                for kind in sorted({r["kind"] for r in runs})
            },
        }

    for probe in probes[:10]:
        identify(probe)  # warm-up: both gunicorn workers load their sessions
    phases = {}
    quiet = None if args.no_wait else wait_for_quiet()
    for concurrency in (1, args.concurrency):
        for probe in probes[:8]:
            identify(probe)  # the index and the workers' caches are warm again after the wait
        requests = [probes[i % len(probes)] for i in range(args.requests)]
        load_start = load_average()
        began = time.perf_counter()
        if concurrency == 1:
            runs = [identify(probe) for probe in requests]
        else:
            with ThreadPoolExecutor(concurrency) as pool:
                runs = list(pool.map(identify, requests))
        wall = time.perf_counter() - began
        phases[f"c{concurrency}"] = {
            **summary(runs, wall),
            "load_start": load_start,
            "load_end": load_average(),
        }
        print(f"concurrency {concurrency}: {json.dumps(phases[f'c{concurrency}'])}", flush=True)

    result = {
        "bench": "identify_http",
        "templates": templates,
        "enrolled_faces": len(subject_of),
        "enrolled_templates": enrolled_templates,
        "requests": args.requests,
        "probes": {kind: sum(p[0] == kind for p in probes) for kind in sorted({p[0] for p in probes})},
        "image": "640x480 JPEG q90, one LFW-a face (250x250) on grey",
        "model": gallery["model_version"],
        "seed_seconds": round(seed_seconds, 1),
        "index_build_seconds": round(index_seconds, 1) if index_seconds is not None else None,
        "hnsw": {
            "m": search.HNSW_M,
            "ef_construction": search.HNSW_EF_CONSTRUCTION,
            "ef_search": search.HNSW_EF_SEARCH,
        },
        "base_url": args.base_url,
        "search_plan": plan,
        "quiet_wait": quiet,
        **phases,
        **environment(),
        "note": args.note,
    }
    print(json.dumps(result))
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(result) + "\n")
    client.delete(f"/v1/galleries/{gallery['id']}")


if __name__ == "__main__":
    main()
