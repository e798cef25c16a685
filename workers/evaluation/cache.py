"""On-disk caches of the evaluation: aligned faces per image variant, and embeddings per model.

    var/eval-cache/faces/<recipe>/<store>/chunk-<id>.npz              crops, landmarks, boxes, detection facts
    var/eval-cache/embeddings/<model_version>/<recipe>/<store>/chunk-<id>.npz    embeddings of those crops

A key is "<image path relative to the data set>|<variant>", the variant being "plain", "mask<seed>" (a probe
masked with that mask seed) or "enroll<j>" (enrollment augmentation variant j), so an embedding is keyed by
(model_version, image path, mask seed). Chunks are written atomically and never modified: an interrupted run
resumes where it stopped, and embedding a new model only reads the cached crops (no detection, no masks).
The recipe names the detector file and the version of the masking/alignment code; change it when either
changes and the old cache is simply ignored.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from workers.pipeline.config import REPO_ROOT

DEFAULT_CACHE_DIR = REPO_ROOT / "var" / "eval-cache"
# Fields every face record has; "crop" is loaded lazily (it is most of the bytes).
FACE_FIELDS = ("found", "faces_detected", "landmarks", "bbox", "det_score", "quality", "mask_type")


def chunk_name(keys: Iterable[str]) -> str:
    digest = hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()[:20]
    return f"chunk-{digest}.npz"


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez_compressed(file, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class FaceStore:
    """Face records of one data set and recipe: key -> found, crop, landmarks, box, ... (append-only)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._index: dict[str, tuple[str, int]] = {}  # key -> (chunk file name, row)
        self._meta: dict[str, dict[str, np.ndarray]] = {}  # chunk file name -> FACE_FIELDS arrays + keys
        if self.directory.is_dir():
            for path in sorted(self.directory.glob("chunk-*.npz")):
                self._load_meta(path)

    def _load_meta(self, path: Path) -> None:
        with np.load(path) as data:
            meta = {field: data[field] for field in ("keys", *FACE_FIELDS)}
        self._meta[path.name] = meta
        for row, key in enumerate(meta["keys"]):
            self._index[str(key)] = (path.name, row)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def missing(self, keys: Iterable[str]) -> list[str]:
        return [key for key in keys if key not in self._index]

    def chunks(self) -> list[str]:
        return sorted(self._meta)

    def field(self, keys: list[str], name: str) -> np.ndarray:
        """One field for these keys, stacked; a key that is not cached raises KeyError."""
        return np.stack([self._meta[chunk][name][row] for chunk, row in (self._index[key] for key in keys)])

    def record(self, key: str) -> dict[str, np.ndarray]:
        chunk, row = self._index[key]
        return {name: self._meta[chunk][name][row] for name in FACE_FIELDS}

    def crops(self, keys: list[str]) -> np.ndarray:
        """(N, 112, 112, 3) uint8 crops (zeros where no face was found), reading each chunk once."""
        by_chunk: dict[str, list[tuple[int, int]]] = {}
        for position, key in enumerate(keys):
            chunk, row = self._index[key]
            by_chunk.setdefault(chunk, []).append((position, row))
        out = None
        for chunk, rows in by_chunk.items():
            with np.load(self.directory / chunk) as data:
                crops = data["crops"]
            if out is None:
                out = np.zeros((len(keys), *crops.shape[1:]), dtype=np.uint8)
            for position, row in rows:
                out[position] = crops[row]
        return out if out is not None else np.zeros((0, 112, 112, 3), np.uint8)

    def chunk_arrays(self, chunk: str) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(keys, found, crops) of one chunk file."""
        with np.load(self.directory / chunk) as data:
            return [str(k) for k in data["keys"]], data["found"], data["crops"]

    def append(self, keys: list[str], records: dict[str, np.ndarray]) -> str:
        """Write one chunk (records: "crops" plus every FACE_FIELDS array, all of length len(keys))."""
        name = chunk_name(keys)
        arrays = {"keys": np.array(keys), **records}
        missing = {"crops", *FACE_FIELDS} - set(records)
        if missing:
            raise ValueError(f"face records lack {sorted(missing)}")
        _atomic_savez(self.directory / name, **arrays)
        self._load_meta(self.directory / name)
        return name


class EmbeddingStore:
    """Embeddings of one model for the crops of one FaceStore; chunk files mirror the FaceStore's."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._index: dict[str, tuple[str, int]] = {}
        self._embeddings: dict[str, np.ndarray] = {}
        if self.directory.is_dir():
            for path in sorted(self.directory.glob("chunk-*.npz")):
                self._load(path)

    def _load(self, path: Path) -> None:
        with np.load(path) as data:
            keys, embeddings = data["keys"], data["embeddings"]
        self._embeddings[path.name] = embeddings
        for row, key in enumerate(keys):
            self._index[str(key)] = (path.name, row)

    def has_chunk(self, chunk: str) -> bool:
        return chunk in self._embeddings

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def append(self, chunk: str, keys: list[str], embeddings: np.ndarray) -> None:
        _atomic_savez(self.directory / chunk, keys=np.array(keys), embeddings=embeddings.astype(np.float32))
        self._load(self.directory / chunk)

    def get(self, keys: list[str]) -> np.ndarray:
        """(N, D) float32; rows of keys whose face was not found are NaN (as stored)."""
        return np.stack([self._embeddings[chunk][row] for chunk, row in (self._index[key] for key in keys)])

    def iter_chunks(self) -> Iterator[str]:
        yield from sorted(self._embeddings)
