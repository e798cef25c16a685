"""Faces and embeddings of the evaluation images through the production pipeline, cached (see cache.py).

Variants of an LFW image (the key's part after "|"):
- "plain": the photo as it is, through FacePipeline.analyze_batch; the labelled face is the one nearest the
  image centre (LFW crops are centred on it).
- "mask<seed>": a masked probe. A mask of a random type (MaskSynthesizer's real-world mix) is drawn on the
  photo at the plain detection's landmarks, the masked photo is PNG-encoded and goes through the whole
  pipeline again (detection included: a mask can hide a face from the detector, which then counts as a
  failure), and the face overlapping the original box most is kept.
- "enroll<j>": enrollment augmentation variant j, made by the API's own code
  (workers.pipeline.enrollment_augmentation.masked_variant_crops, aligned with the plain landmarks).
Everything random is seeded by the key, so every run, machine and model sees the same masks.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from workers.evaluation.cache import DEFAULT_CACHE_DIR, EmbeddingStore, FaceStore
from workers.pipeline.enrollment_augmentation import AugmentationConfig, masked_variant_crops
from workers.pipeline.mask_classifier import DEFAULT_WEIGHTS_PATH
from workers.pipeline.masks import MaskSynthesizer
from workers.pipeline.pipeline import FaceAnalysis, FacePipeline, ImageAnalysis
from workers.training.datasets import read_bgr

# Bump when the masking, alignment or face-choice code changes in a way that changes the crops.
RECIPE_VERSION = "r5"
# Bump when the landmark refiner's code changes what it returns (its weights are hashed separately).
REFINED_RECIPE_VERSION = "f3"
CHUNK_SIZE = 64
MIN_MASKED_IOU = 0.3
CROP_SHAPE = (112, 112, 3)


def key_for(path: str, variant: str) -> str:
    return f"{path}|{variant}"


def split_key(key: str) -> tuple[str, str]:
    path, _, variant = key.rpartition("|")
    return path, variant


def key_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big")


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    w = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    h = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = w * h
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0


def _box(face: FaceAnalysis) -> np.ndarray:
    return np.array([face.bbox.x, face.bbox.y, face.bbox.width, face.bbox.height], np.float32)


class _Records:
    """Accumulates face records of one chunk in the FaceStore layout."""

    def __init__(self, dim: int) -> None:
        self.rows: list[dict] = []
        self.dim = dim

    def add(
        self,
        face: FaceAnalysis | None,
        *,
        faces_detected: int,
        mask_type: str = "",
        crop: np.ndarray | None = None,
        landmarks: np.ndarray | None = None,
        bbox: np.ndarray | None = None,
        det_score: float = np.nan,
        embedding: np.ndarray | None = None,
    ) -> None:
        if face is not None:
            crop, landmarks, bbox = face.aligned_crop, face.landmarks, _box(face)
            det_score, embedding = face.detection_score, face.embedding
            quality = face.quality.score
        else:
            quality = np.nan
        found = crop is not None
        self.rows.append(
            {
                "found": found,
                "faces_detected": faces_detected,
                "crops": crop if found else np.zeros(CROP_SHAPE, np.uint8),
                "landmarks": np.asarray(landmarks, np.float32)
                if landmarks is not None
                else np.zeros((5, 2), np.float32),
                "bbox": np.asarray(bbox, np.float32) if bbox is not None else np.zeros(4, np.float32),
                "det_score": np.float32(det_score),
                "quality": np.float32(quality),
                "mask_type": mask_type,
                "embedding": embedding if embedding is not None else np.full(self.dim, np.nan, np.float32),
            }
        )

    def arrays(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        records = {
            name: np.array([row[name] for row in self.rows])
            for name in ("found", "faces_detected", "landmarks", "bbox", "det_score", "quality", "mask_type")
        }
        records["crops"] = np.stack([row["crops"] for row in self.rows]).astype(np.uint8)
        records["mask_type"] = records["mask_type"].astype("U24")
        embeddings = np.stack([row["embedding"] for row in self.rows]).astype(np.float32)
        return records, embeddings


class Extractor:
    """Fills and reads the caches for one pipeline (detector + embedding model)."""

    def __init__(
        self,
        pipeline: FacePipeline,
        *,
        lfw_dir: Path,
        rwmfd_dir: Path,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        synthesizer: MaskSynthesizer | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.roots = {"lfw": Path(lfw_dir) / "lfw", "rwmfd": Path(rwmfd_dir) / "images"}
        self.cache_dir = Path(cache_dir)
        self._synthesizer = synthesizer
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        detector_hash = _file_hash(pipeline.config.detection.model_path)
        self.recipe = f"yunet-{detector_hash}-{RECIPE_VERSION}"
        if pipeline.landmark_refiner is not None:
            # Which faces are re-aligned depends on the mask classifier and on the embedding model it reads.
            refiner_hash = _file_hash(pipeline.landmark_refiner.model_path)
            classifier_hash = _file_hash(DEFAULT_WEIGHTS_PATH)[:8]
            self.recipe += (
                f"-refined-{REFINED_RECIPE_VERSION}-{refiner_hash}-{classifier_hash}-{pipeline.model_version}"
            )
        self.model_version = pipeline.model_version
        self._faces: dict[str, FaceStore] = {}
        self._embeddings: dict[tuple[str, str], EmbeddingStore] = {}
        self.seconds: dict[str, float] = {}

    @property
    def synthesizer(self) -> MaskSynthesizer:
        if self._synthesizer is None:
            self._synthesizer = MaskSynthesizer()
        return self._synthesizer

    def faces(self, dataset: str) -> FaceStore:
        if dataset not in self._faces:
            self._faces[dataset] = FaceStore(self.cache_dir / "faces" / self.recipe / dataset)
        return self._faces[dataset]

    def embedding_store(self, dataset: str, model_version: str | None = None) -> EmbeddingStore:
        model_version = model_version or self.model_version
        if (model_version, dataset) not in self._embeddings:
            directory = self.cache_dir / "embeddings" / model_version / self.recipe / dataset
            self._embeddings[(model_version, dataset)] = EmbeddingStore(directory)
        return self._embeddings[(model_version, dataset)]

    # -- filling the cache ---------------------------------------------------------------------------------

    def ensure(self, dataset: str, keys: list[str]) -> None:
        """Compute every missing key (plain variants first: masks are placed from them)."""
        keys = list(dict.fromkeys(keys))
        store = self.faces(dataset)
        missing = store.missing(keys)
        plain = [k for k in missing if split_key(k)[1] == "plain"]
        # Variants need the plain record of their image.
        needed_plain = store.missing(
            dict.fromkeys(key_for(split_key(k)[0], "plain") for k in missing if split_key(k)[1] != "plain")
        )
        plain = list(dict.fromkeys(plain + needed_plain))
        other = [k for k in missing if split_key(k)[1] != "plain"]
        for group, label in ((plain, "plain"), (other, "variants")):
            if group:
                self._compute(dataset, group, label)
        self._embed_missing_chunks(dataset)

    def _compute(self, dataset: str, keys: list[str], label: str) -> None:
        started = time.perf_counter()
        store = self.faces(dataset)
        embeddings_store = self.embedding_store(dataset)
        for start in range(0, len(keys), CHUNK_SIZE):
            chunk_keys = keys[start : start + CHUNK_SIZE]
            records = self._compute_chunk(dataset, chunk_keys)
            arrays, embeddings = records.arrays()
            name = store.append(chunk_keys, arrays)
            embeddings_store.append(name, chunk_keys, embeddings)
            done = min(start + CHUNK_SIZE, len(keys))
            elapsed = time.perf_counter() - started
            self.log(
                f"[{dataset} {label}] {done}/{len(keys)} faces in {elapsed:.0f}s ({done / elapsed:.1f}/s)"
            )
        self.seconds[f"extract_{dataset}_{label}"] = self.seconds.get(f"extract_{dataset}_{label}", 0.0) + (
            time.perf_counter() - started
        )

    def _compute_chunk(self, dataset: str, keys: list[str]) -> _Records:
        records = _Records(self.pipeline.embedder.embedding_dim)
        variants = {split_key(k)[1] for k in keys}
        if variants == {"plain"}:
            self._plain(dataset, keys, records)
        else:
            # Keys of one chunk may mix variants; keep their order.
            for key in keys:
                single = _Records(records.dim)
                self._variant(dataset, key, single)
                records.rows.extend(single.rows)
        return records

    def _read_bytes(self, dataset: str, path: str) -> bytes:
        return (self.roots[dataset] / path).read_bytes()

    def _plain(self, dataset: str, keys: list[str], records: _Records) -> None:
        images = [self._read_bytes(dataset, split_key(k)[0]) for k in keys]
        results = self.pipeline.analyze_batch(images, purpose="identify", max_faces=100)
        for result in results:
            if not isinstance(result, ImageAnalysis):
                records.add(None, faces_detected=-1)
            elif not result.faces:
                records.add(None, faces_detected=0)
            elif dataset == "lfw":
                records.add(_nearest_centre(result), faces_detected=result.faces_detected)
            else:  # RWMFD: the largest face (faces come largest first)
                records.add(result.faces[0], faces_detected=result.faces_detected)

    def _variant(self, dataset: str, key: str, records: _Records) -> None:
        path, variant = split_key(key)
        plain = self.faces(dataset).record(key_for(path, "plain"))
        if not bool(plain["found"]):
            records.add(None, faces_detected=0)
            return
        image = read_bgr(self.roots[dataset] / path)
        landmarks, bbox = plain["landmarks"], plain["bbox"]
        if variant.startswith("mask"):
            rng = np.random.default_rng(key_seed(key))
            mask_type = self.synthesizer.random_mask_type(rng)
            masked = self.synthesizer.apply(image, landmarks, tuple(bbox), rng=rng, mask_type=mask_type)
            ok, encoded = cv2.imencode(".png", masked)
            if not ok:
                raise RuntimeError(f"could not encode the masked {path}")
            result = self.pipeline.analyze_batch([encoded.tobytes()], purpose="identify", max_faces=100)[0]
            if not isinstance(result, ImageAnalysis) or not result.faces:
                records.add(None, faces_detected=0, mask_type=mask_type)
                return
            overlaps = [_iou(_box(face), bbox) for face in result.faces]
            best = int(np.argmax(overlaps))
            if overlaps[best] < MIN_MASKED_IOU:
                records.add(None, faces_detected=result.faces_detected, mask_type=mask_type)
                return
            records.add(result.faces[best], faces_detected=result.faces_detected, mask_type=mask_type)
        elif variant.startswith("enroll"):
            index = int(variant.removeprefix("enroll"))
            config = AugmentationConfig(variants=index + 1)
            [(mask_type, crop)] = masked_variant_crops(
                image, landmarks, tuple(bbox), self.synthesizer, seed=path, config=config, first_variant=index
            )
            embedding = self.pipeline.embedder.embed(crop[np.newaxis])[0]
            records.add(
                None,
                faces_detected=1,
                mask_type=mask_type,
                crop=crop,
                landmarks=landmarks,
                bbox=bbox,
                det_score=float(plain["det_score"]),
                embedding=embedding,
            )
        else:
            raise ValueError(f"unknown variant {variant!r} in key {key!r}")

    def _embed_missing_chunks(self, dataset: str) -> None:
        """Embed cached crops of chunks this model has not embedded (crops from another model's run)."""
        store, embeddings = self.faces(dataset), self.embedding_store(dataset)
        todo = [chunk for chunk in store.chunks() if not embeddings.has_chunk(chunk)]
        started = time.perf_counter()
        for number, chunk in enumerate(todo, 1):
            keys, found, crops = store.chunk_arrays(chunk)
            out = np.full((len(keys), self.pipeline.embedder.embedding_dim), np.nan, np.float32)
            if found.any():
                out[found] = self.pipeline.embedder.embed(crops[found])
            embeddings.append(chunk, keys, out)
            if number % 10 == 0 or number == len(todo):
                elapsed = time.perf_counter() - started
                self.log(
                    f"[{dataset} embed {self.model_version}] {number}/{len(todo)} chunks in {elapsed:.0f}s"
                )
        if todo:
            self.seconds[f"embed_{dataset}"] = self.seconds.get(f"embed_{dataset}", 0.0) + (
                time.perf_counter() - started
            )

    # -- reading -------------------------------------------------------------------------------------------

    def embeddings(self, dataset: str, keys: list[str]) -> np.ndarray:
        """(N, D) embeddings of the keys (NaN rows where no face was found); computes what is missing."""
        if not keys:
            return np.zeros((0, self.pipeline.embedder.embedding_dim), np.float32)
        self.ensure(dataset, keys)
        return self.embedding_store(dataset).get(keys)

    def field(self, dataset: str, keys: list[str], name: str) -> np.ndarray:
        if not keys:
            return np.zeros(0)
        self.ensure(dataset, keys)
        return self.faces(dataset).field(keys, name)


def _nearest_centre(analysis: ImageAnalysis) -> FaceAnalysis:
    centre = np.array([analysis.width / 2, analysis.height / 2])

    def distance(face: FaceAnalysis) -> float:
        box = face.bbox
        return float(np.hypot(*(np.array([box.x + box.width / 2, box.y + box.height / 2]) - centre)))

    return min(analysis.faces, key=distance)
