"""Enrollment throughput through the API and the Celery worker, and where an enrollment's time goes.

Against the stack `make run` started (its worker runs `--concurrency=2`, one process per core here):

    .venv/bin/python -m bench.enroll_http --images 300

It creates a throw-away tenant (unlimited "bench" plan), a gallery and one subject per LFW person, waits
until the machine is quiet (bench/quiet.py), then queues `--images` enrollments (`POST
/v1/subjects/{id}/faces?wait=false`, 202 + job; 640x480 JPEGs of LFW-a faces on a grey canvas, read at run
time) as fast as the API takes them, and polls `GET /v1/jobs/{id}` until every job has finished. Throughput is
reported two ways: all images / (last job finished - first request sent), and the sustained rate between 10 %
and 90 % of jobs finished (no ramp-up or tail). Job timestamps give the queue wait and the time a worker spent
on each job. `--profile N` also times the pipeline stages of one enrollment in this process (one thread,
quiet machine): analyze (decode, detect, align, quality, embed, mask classifier) and the synthetic-mask
templates (mask drawing, alignment and embedding of as many masked copies as the model's calibration assumes).
Results are appended to bench/results/enroll_http.jsonl.
"""

import argparse
import json
import statistics
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

from bench.identify_http import BASE_URL, LFW, bench_tenant
from bench.search import _setup_django, percentile
from workers.evaluation.lfw import jpeg, lfw_canvas

RESULTS = Path(__file__).parent / "results" / "enroll_http.jsonl"


def _images(count: int) -> list[tuple[str, bytes]]:
    """(person, JPEG) for `count` LFW photos, several per person, in a fixed shuffled order."""
    rng = np.random.default_rng(2)
    people = sorted(LFW.iterdir())
    images: list[tuple[str, bytes]] = []
    for index in rng.permutation(len(people)):
        for path in sorted(people[index].glob("*.jpg"))[:3]:
            images.append((people[index].name, jpeg(lfw_canvas(path))))
            if len(images) == count:
                return images
    return images


def _profile(images: list[tuple[str, bytes]]) -> dict:
    """Mean milliseconds per stage of one enrollment, in this process with one onnxruntime thread."""
    import hashlib

    from django.conf import settings

    from workers.pipeline.config import DEFAULT_MODEL_DIR, PipelineConfig
    from workers.pipeline.landmark_refiner import LandmarkRefiner
    from workers.pipeline.mask_classifier import MaskClassifier
    from workers.pipeline.masks import MaskSynthesizer
    from workers.pipeline.pipeline import FacePipeline

    # What identity.face_pipeline builds, with one thread (one worker process per core).
    pipeline = FacePipeline(
        PipelineConfig.for_model_dir(
            DEFAULT_MODEL_DIR, embedding_model=settings.VISOR_EMBEDDING_MODEL, intra_op_threads=1
        ),
        mask_classifier=MaskClassifier.load(),
        mask_synthesizer=MaskSynthesizer(),
        landmark_refiner=LandmarkRefiner(),
    )
    rows = []
    for _, image in images[:3]:  # warm-up
        analysis = pipeline.analyze(image, purpose="enroll", max_faces=20)
    for _, image in images:
        began = time.perf_counter()
        analysis = pipeline.analyze(image, purpose="enroll", max_faces=20)
        analyze_ms = (time.perf_counter() - began) * 1000
        if not analysis.faces:
            continue
        began = time.perf_counter()
        synthetic = pipeline.synthetic_templates(
            image, analysis.faces[0], seed=hashlib.sha256(image).hexdigest()
        )
        masks_ms = (time.perf_counter() - began) * 1000
        timings = analysis.timings
        rows.append(
            {
                "decode": timings.decode_ms,
                "detect": timings.detect_ms,
                "align": timings.align_ms,
                "quality": timings.quality_ms,
                "embed": timings.embed_ms,
                "mask_classifier": timings.mask_ms,
                "refine_masked": timings.refine_ms,
                f"synthetic_masks_x{len(synthetic)}": masks_ms,
                "total": analyze_ms + masks_ms,
            }
        )
    return {stage: round(statistics.mean(row[stage] for row in rows), 2) for stage in rows[0]}


def _when(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--profile", type=int, default=60, help="images to profile in-process (0: none)")
    parser.add_argument("--no-wait", action="store_true", help="smoke test: do not wait for a quiet machine")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    _setup_django()

    from bench.quiet import environment, load_average, wait_for_quiet

    _, raw_key = bench_tenant(f"bench-enroll-{int(time.time())}")
    client = httpx.Client(base_url=BASE_URL, headers={"Authorization": f"Bearer {raw_key}"}, timeout=120)
    gallery = client.post("/v1/galleries", json={"name": "bench-enroll"}).json()
    images = _images(args.images)
    subjects = {}
    for person, _ in images:
        if person not in subjects:
            subjects[person] = client.post(
                f"/v1/galleries/{gallery['id']}/subjects", json={"external_id": person}
            ).json()["id"]
    # One enrollment first, untimed: the worker processes load their models.
    warm = client.post(
        f"/v1/subjects/{subjects[images[0][0]]}/faces?wait=true", files={"image": images[0][1]}
    )
    assert warm.status_code in (201, 422), warm.text

    quiet = None if args.no_wait else wait_for_quiet()
    load_start = load_average()
    began = time.perf_counter()
    began_wall = time.time()
    jobs = []
    for person, image in images:
        answer = client.post(f"/v1/subjects/{subjects[person]}/faces?wait=false", files={"image": image})
        assert answer.status_code == 202, answer.text
        jobs.append(answer.json()["job"]["id"])
    queued_s = time.perf_counter() - began
    # Jobs finish roughly in order: wait for each in turn, so that polling costs the API (and the cores the
    # worker needs) about one request per job rather than one per pending job per round.
    finished: dict[str, dict] = {}
    for job in jobs:
        while (state := client.get(f"/v1/jobs/{job}").json())["status"] not in ("succeeded", "failed"):
            time.sleep(0.25)
        finished[job] = state
    wall = time.perf_counter() - began
    load_end = load_average()

    states = list(finished.values())
    done_at = sorted(_when(state["finished_at"]) for state in states)
    first, last = int(0.1 * len(done_at)), int(0.9 * len(done_at))
    sustained = (last - first) / (done_at[last] - done_at[first])
    # Once every upload is in, only the worker (and the database) use the cores.
    queued_at = began_wall + queued_s
    after = [t for t in done_at if t > queued_at]
    after_queued = (len(after) - 1) / (after[-1] - after[0]) if len(after) > 10 else None
    worker_ms = [(_when(s["finished_at"]) - _when(s["started_at"])) * 1000 for s in states if s["started_at"]]
    queue_ms = [(_when(s["started_at"]) - _when(s["created_at"])) * 1000 for s in states if s["started_at"]]
    failures: dict[str, int] = {}
    for state in states:
        if state["status"] == "failed":
            reason = (state["error"] or {}).get("reason", "?")
            failures[reason] = failures.get(reason, 0) + 1
    profile = None
    if args.profile:
        if not args.no_wait:
            wait_for_quiet()
        profile = _profile(images[: args.profile])

    result = {
        "bench": "enroll_http",
        "images": len(jobs),
        "image": "640x480 JPEG q90, one LFW-a face (250x250) on grey",
        "model": gallery["model_version"],
        "succeeded": sum(state["status"] == "succeeded" for state in states),
        "failed": failures,
        "queue_all_seconds": round(queued_s, 1),
        "wall_seconds": round(wall, 1),
        "images_per_second": round(len(jobs) / wall, 2),
        "images_per_second_sustained": round(sustained, 2),
        "images_per_second_after_uploads": round(after_queued, 2) if after_queued else None,
        "first_job_done_after_s": round(done_at[0] - began_wall, 2),
        "worker_ms_per_job": {
            "p50": round(statistics.median(worker_ms), 1),
            "p95": round(percentile(worker_ms, 0.95), 1),
            "mean": round(statistics.mean(worker_ms), 1),
        },
        "queue_wait_ms_p50": round(statistics.median(queue_ms), 1),
        "in_process_profile_ms": profile,
        "quiet_wait": quiet,
        "load_start": load_start,
        "load_end": load_end,
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
