"""Speed of the face pipeline itself (no HTTP, no database): where the time of one image goes.

    .venv/bin/python -m bench.pipeline_speed [--images 200] [--model student]

1. Latency: one 640x480 JPEG with one face, analysed as identify does (decode, detect, align, quality,
   embed, mask classifier, and for a face called masked the landmark refiner and its second embedding),
   one image at a time with the production thread setting (2 intra-op threads); p50/p95 per stage and in
   total, for the plain photos and (mask templates present) the same photos with a synthetic mask.
2. Enrollment throughput: the same work with the enrollment floors plus the synthetic-mask templates
   (mask synthesis, alignment, embedding of each variant), in 2 worker processes of 1 thread each, the way
   a Celery worker with --concurrency 2 uses both cores; images per second over the whole run.

Faces are LFW-a photos pasted into a 640x480 scene when ../shared/data is present (read at run time, never
stored), else the generated cartoon faces of tests/face_images.py. Timed runs wait for a quiet machine
(bench/quiet.py). Results are appended to bench/results/pipeline_speed.jsonl.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.quiet import environment, load_average, wait_for_quiet
from workers.pipeline.config import DEFAULT_MODEL_DIR, PipelineConfig
from workers.pipeline.landmark_refiner import LandmarkRefiner
from workers.pipeline.mask_classifier import MaskClassifier
from workers.pipeline.masks import MaskSynthesizer, templates_available
from workers.pipeline.pipeline import FacePipeline

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline_speed.jsonl"
LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw_a" / "lfw"
STAGES = ("decode_ms", "detect_ms", "align_ms", "quality_ms", "embed_ms", "mask_ms", "refine_ms")


def scene_images(count: int) -> tuple[list[bytes], str]:
    """`count` 640x480 JPEGs with one face each, and where the faces come from."""
    rng = np.random.default_rng(0)
    if LFW.is_dir():
        people = sorted(LFW.iterdir())
        chosen = rng.choice(len(people), size=count, replace=False)
        images = []
        for index in chosen:
            face = Image.open(next(iter(sorted(people[index].glob("*.jpg"))))).convert("RGB")
            scene = Image.new("RGB", (640, 480), tuple(int(v) for v in rng.integers(60, 200, 3)))
            scene.paste(face, (int(rng.integers(0, 390)), int(rng.integers(0, 230))))
            buffer = io.BytesIO()
            scene.save(buffer, format="JPEG", quality=90)
            images.append(buffer.getvalue())
        return images, "LFW-a faces (250x250) pasted into 640x480 scenes"
    from tests.face_images import CartoonPerson, encode, face_photo

    return [
        encode(face_photo(size=110, person=CartoonPerson.from_seed(seed))) for seed in range(count)
    ], "generated cartoon faces in 640x480 scenes"


def masked_scene_images(pipeline: FacePipeline, images: list[bytes]) -> list[bytes]:
    """The scenes with a face, their largest face wearing a synthetic mask drawn at its landmarks."""
    synthesizer = MaskSynthesizer()
    rng = np.random.default_rng(1)
    masked = []
    for image in images:
        faces = pipeline.analyze(image, purpose="identify", max_faces=1).faces
        if not faces:
            continue
        face = faces[0]
        scene = np.array(Image.open(io.BytesIO(image)).convert("RGB"))[:, :, ::-1].copy()
        drawn = synthesizer.apply(scene, np.array(face.landmarks), face.bbox, rng=rng)
        buffer = io.BytesIO()
        Image.fromarray(drawn[:, :, ::-1]).save(buffer, format="JPEG", quality=90)
        masked.append(buffer.getvalue())
    return masked


def build_pipeline(model: str, threads: int, *, augment: bool) -> FacePipeline:
    config = PipelineConfig.for_model_dir(DEFAULT_MODEL_DIR, embedding_model=model, intra_op_threads=threads)
    synthesizer = MaskSynthesizer() if augment and templates_available() else None
    return FacePipeline(
        config,
        mask_classifier=MaskClassifier.load(),
        mask_synthesizer=synthesizer,
        landmark_refiner=LandmarkRefiner(),
    )


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure_latency(pipeline: FacePipeline, images: list[bytes]) -> dict:
    for image in images[:10]:  # warm-up: first calls allocate onnxruntime buffers
        pipeline.analyze(image, purpose="identify", max_faces=10)
    per_stage: dict[str, list[float]] = {stage: [] for stage in STAGES}
    totals, faces = [], 0
    for image in images:
        started = time.perf_counter()
        analysis = pipeline.analyze(image, purpose="identify", max_faces=10)
        totals.append((time.perf_counter() - started) * 1000)
        faces += len(analysis.faces)
        for stage in STAGES:
            per_stage[stage].append(getattr(analysis.timings, stage))
    return {
        "images": len(images),
        "faces_found": faces,
        "total_ms": {
            "p50": percentile(totals, 50),
            "p95": percentile(totals, 95),
            "p99": percentile(totals, 99),
        },
        "stage_p50_ms": {stage: round(statistics.median(values), 2) for stage, values in per_stage.items()},
    }


_worker_pipeline: FacePipeline | None = None


def _init_enrollment_worker(model: str) -> None:
    global _worker_pipeline
    _worker_pipeline = build_pipeline(model, 1, augment=True)
    _worker_pipeline.analyze(scene_images(1)[0][0], purpose="enroll")


def _enroll(image: bytes) -> tuple[int, float, float]:
    """(synthetic templates made, analysis ms, synthesis ms) of one enrollment image."""
    started = time.perf_counter()
    analysis = _worker_pipeline.analyze(image, purpose="enroll", max_faces=20)
    analysed = time.perf_counter()
    if not analysis.faces:
        return 0, (analysed - started) * 1000, 0.0
    seed = hashlib.sha256(image).hexdigest()
    templates = _worker_pipeline.synthetic_templates(image, analysis.faces[0], seed=seed)
    return len(templates), (analysed - started) * 1000, (time.perf_counter() - analysed) * 1000


def measure_enrollment(model: str, images: list[bytes], processes: int) -> dict:
    with ProcessPoolExecutor(processes, initializer=_init_enrollment_worker, initargs=(model,)) as pool:
        list(pool.map(_enroll, images[: processes * 2]))  # every worker loaded and warm
        started = time.perf_counter()
        results = list(pool.map(_enroll, images))
        seconds = time.perf_counter() - started
    return {
        "images": len(images),
        "processes": processes,
        "images_per_s": round(len(images) / seconds, 2),
        "synthetic_templates_per_image": round(statistics.mean(r[0] for r in results), 2),
        "analysis_ms_p50_per_image": round(statistics.median(r[1] for r in results), 2),
        "synthesis_ms_p50_per_image": round(statistics.median(r[2] for r in results), 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--model", default="student")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    args = parser.parse_args(argv)

    images, source = scene_images(args.images)
    quiet = {} if args.no_wait else wait_for_quiet()
    pipeline = build_pipeline(args.model, 2, augment=False)
    latency = measure_latency(pipeline, images)
    masked_latency = (
        measure_latency(pipeline, masked_scene_images(pipeline, images)) if templates_available() else None
    )
    enrollment = measure_enrollment(args.model, images, args.processes)
    result = {
        "benchmark": "pipeline_speed",
        "model": args.model,
        "faces": source,
        "identify_path": latency,
        "identify_path_masked": masked_latency,
        "enrollment": enrollment,
        "quiet": quiet,
        "load_at_end": load_average(),
        **environment(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        handle.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
