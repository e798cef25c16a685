"""Every real masked photo of RWMFD through the API, as an outside client sends them: answers and latency.

Against the stack `make run` started (restart it after code changes so gunicorn loads them):

    .venv/bin/python -m bench.rwmfd_http [--limit N]

It creates a throw-away tenant (unlimited "bench" plan) with an empty gallery, then sends each photo of
../shared/data/rwmfd_part1 unchanged (1,194 JPEGs and PNGs from 53x256 to 2048x2733 pixels, some of
groups) once to `POST /v1/detect` and once to `POST /v1/galleries/{id}/identify`, one request at a time,
after the machine is quiet (bench/quiet.py). RWMFD has no identity labels, so this measures what a client
can check without them: every answer is a 200 (a 4xx would have to be a problem+json document; a 5xx is a
defect), how many photos have a face, how many a face called masked, that an empty gallery never matches
anyone, and the latency per photo, which grows with the number of faces (each is embedded with its mirror
image).
Results are appended to bench/results/rwmfd_http.jsonl.
"""

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.identify_http import BASE_URL, bench_tenant
from bench.quiet import environment, wait_for_quiet
from bench.search import _setup_django, percentile

RWMFD = Path(__file__).resolve().parents[2] / "shared" / "data" / "rwmfd_part1" / "images"
RESULTS = Path(__file__).parent / "results" / "rwmfd_http.jsonl"


def send_all(client: httpx.Client, route: str, photos: list[Path]) -> dict:
    statuses, faces, problems = Counter(), Counter(), Counter()
    with_masked_face, matched, latencies, by_faces = 0, 0, [], {}
    for photo in photos:
        started = time.perf_counter()
        content_type = "image/png" if photo.suffix == ".png" else "image/jpeg"
        response = client.post(route, files={"image": (photo.name, photo.read_bytes(), content_type)})
        elapsed_ms = 1000 * (time.perf_counter() - started)
        latencies.append(elapsed_ms)
        statuses[str(response.status_code)] += 1
        if response.status_code != 200:
            problem = response.json() if "json" in response.headers.get("content-type", "") else {}
            problems[
                f"{response.status_code} {response.headers.get('content-type')} {problem.get('type')}"
            ] += 1
            continue
        found = response.json()["faces"]
        faces["3+" if len(found) >= 3 else str(len(found))] += 1
        by_faces.setdefault(min(len(found), 3), []).append(elapsed_ms)
        with_masked_face += any(face["mask"]["masked"] for face in found)
        matched += sum(face.get("match") is not None for face in found)
    return {
        "statuses": dict(statuses),
        "problems": dict(problems),
        "photos_by_faces_found": dict(sorted(faces.items())),
        "photos_with_a_masked_face": with_masked_face,
        "faces_matched_in_empty_gallery": matched,
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p95_ms": round(percentile(latencies, 0.95), 1),
        "max_ms": round(max(latencies), 1),
        "p50_ms_by_faces_found": {
            ("3+" if n == 3 else str(n)): round(percentile(times, 0.5), 1)
            for n, times in sorted(by_faces.items())
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N photos (by name)")
    parser.add_argument("--base-url", default=BASE_URL)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if not RWMFD.is_dir():
        raise SystemExit(f"{RWMFD} is absent: this benchmark needs the shared RWMFD photos")
    photos = sorted(p for p in RWMFD.rglob("*") if p.suffix in (".jpg", ".png"))[: args.limit]

    _setup_django()
    _, key = bench_tenant("bench rwmfd")
    client = httpx.Client(base_url=args.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    gallery = client.post("/v1/galleries", json={"name": "rwmfd (empty)"}).json()
    quiet = wait_for_quiet()
    result = {
        "bench": "rwmfd_http",
        "photos": len(photos),
        "model": gallery["model_version"],
        "detect": send_all(client, "/v1/detect", photos),
        "identify_empty_gallery": send_all(client, f"/v1/galleries/{gallery['id']}/identify", photos),
        "quiet_wait": quiet,
        **environment(),
        "note": args.note,
    }
    client.delete(f"/v1/galleries/{gallery['id']}")
    print(json.dumps(result))
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
