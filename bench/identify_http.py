"""End-to-end identify over HTTP against a large gallery, and enrollment throughput.

Against the stack `make run` started:

    .venv/bin/python -m bench.identify_http --templates 100000 --requests 200

It creates a throw-away tenant and gallery through the operator path, seeds `--templates` synthetic
templates (bench/seed.py), enrolls real faces through the API, then sends identify requests with a 640x480
JPEG holding one face, at concurrency 1 (latency) and 4 (throughput). The Server-Timing header of each
answer says where the time went. Enrollment throughput is measured with `--enroll N` images queued through
the API (202) and timed until the last job has finished. Results go to bench/results/identify_http.jsonl.
"""

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from bench.search import _setup_django
from tests.face_images import CartoonPerson, encode, face_photo

BASE_URL = "http://127.0.0.1:8000"


def _probe_images(count: int) -> list[bytes]:
    """640x480 JPEGs with one face each: LFW faces when the shared data is present, else generated ones."""
    lfw = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw_a" / "lfw"
    import cv2

    images = []
    if lfw.exists():
        for path in sorted(lfw.glob("*/*_0001.jpg"))[:count]:
            face = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
            canvas = np.full((480, 640, 3), 128, dtype=np.uint8)
            canvas[115:365, 195:445] = face
            images.append(encode(canvas, quality=90))
    while len(images) < count:
        images.append(encode(face_photo(size=110, person=CartoonPerson.from_seed(len(images)))))
    return images


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[int(fraction * (len(ordered) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--enroll", type=int, default=100)
    args = parser.parse_args()
    _setup_django()

    from bench.seed import seed_gallery, synthetic_embeddings
    from identity.face_pipeline import get_face_pipeline
    from identity.models import Gallery
    from tenants.actors import Actor
    from tenants.models import Plan
    from tenants.rls import operator_transaction, tenant_transaction
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
            name="bench-identify",
            actor=Actor.system("bench"),
            key_name="bench",
            scopes=["read", "enroll", "identify", "manage"],
            plan=plan,
        )
        tenant.store_images = False
        tenant.save(update_fields=["store_images"])
    client = httpx.Client(
        base_url=BASE_URL, headers={"Authorization": f"Bearer {issued.raw_key}"}, timeout=60
    )
    gallery = client.post("/v1/galleries", json={"name": "bench"}).json()
    with tenant_transaction(tenant.id):
        gallery_row = Gallery.objects.get(id=gallery["id"])
    rng = np.random.default_rng(0)
    embeddings, owner = synthetic_embeddings(args.templates, subjects=max(1, args.templates // 4), rng=rng)
    started = time.perf_counter()
    seed_gallery(tenant=tenant, gallery=gallery_row, embeddings=embeddings, owner=owner)
    print(f"seeded {args.templates} templates in {time.perf_counter() - started:.0f}s", flush=True)
    from identity import search
    from identity.tasks import build_gallery_ann_index

    if args.templates >= search.ANN_MIN_TEMPLATES:
        build_gallery_ann_index(gallery_id=gallery["id"], tenant_id=str(tenant.id))

    probes = _probe_images(max(args.enroll, 20))
    subject = client.post(f"/v1/galleries/{gallery['id']}/subjects", json={"external_id": "probe-0"}).json()
    enrolled = client.post(f"/v1/subjects/{subject['id']}/faces?wait=true", files={"image": probes[0]})
    assert enrolled.status_code == 201, enrolled.text

    def identify(image: bytes) -> tuple[float, dict]:
        began = time.perf_counter()
        response = client.post(f"/v1/galleries/{gallery['id']}/identify", files={"image": image})
        elapsed = (time.perf_counter() - began) * 1000
        assert response.status_code == 200, response.text
        stages = {
            part.split(";dur=")[0]: float(part.split(";dur=")[1])
            for part in response.headers["Server-Timing"].split(", ")
        }
        return elapsed, stages

    for image in probes[:5]:
        identify(image)  # warm-up: every gunicorn worker loads its sessions
    sequential = [identify(probes[i % len(probes)]) for i in range(args.requests)]
    latencies = [elapsed for elapsed, _ in sequential]
    stage_means = {
        stage: round(statistics.mean(s[stage] for _, s in sequential), 2) for stage in sequential[0][1]
    }

    began = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(identify, [probes[i % len(probes)] for i in range(args.requests)]))
    throughput = args.requests / (time.perf_counter() - began)

    enroll_subject = client.post(
        f"/v1/galleries/{gallery['id']}/subjects", json={"external_id": "enroll"}
    ).json()
    began = time.perf_counter()
    jobs = [
        client.post(f"/v1/subjects/{enroll_subject['id']}/faces?largest=true", files={"image": image}).json()[
            "job"
        ]["id"]
        for image in probes[: args.enroll]
    ]
    pending = set(jobs)
    while pending:
        pending = {
            job for job in pending if client.get(f"/v1/jobs/{job}").json()["status"] in ("queued", "running")
        }
        time.sleep(0.2)
    enroll_rate = len(jobs) / (time.perf_counter() - began)

    result = {
        "templates": args.templates,
        "requests": args.requests,
        "model": get_face_pipeline().model_version,
        "c1_p50_ms": round(statistics.median(latencies), 1),
        "c1_p95_ms": round(_percentile(latencies, 0.95), 1),
        "c4_throughput_rps": round(throughput, 2),
        "server_stage_mean_ms": stage_means,
        "enroll_images": len(jobs),
        "enroll_images_per_second": round(enroll_rate, 2),
    }
    print(json.dumps(result))
    output = Path(__file__).parent / "results" / "identify_http.jsonl"
    output.parent.mkdir(exist_ok=True)
    with output.open("a") as handle:
        handle.write(json.dumps(result) + "\n")
    client.delete(f"/v1/galleries/{gallery['id']}")


if __name__ == "__main__":
    main()
