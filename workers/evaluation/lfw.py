"""LFW-a and RWMFD file lists for the protocols: pairs.txt, the open-set gallery/probe split, subsampling.

Paths are relative to the data set's image folder (LFW: "<Name>/<Name>_NNNN.jpg"; RWMFD: "<batch>/<file>"),
which is also how they are keyed in the cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from workers.training.datasets import SharedDataUnavailable, split_of

# The open-set protocol's held-out identities: those whose SHA-256 split position (the number in [0, 1) that
# workers.training.datasets.split_of thresholds) is at least this, i.e. the last tenth. They lie inside the
# "test" split (positions 0.85..1), so nothing tuned on "train" or "val" has seen them.
HELD_OUT_FROM = 0.90


@dataclass(frozen=True)
class Pair:
    first: str
    second: str
    genuine: bool
    fold: int


def read_pairs(pairs_file: Path) -> list[Pair]:
    """LFW View-2 pairs.txt (header "folds<TAB>pairs_per_class"), in file order, with their fold."""
    if not pairs_file.is_file():
        raise SharedDataUnavailable(f"{pairs_file} is absent")
    lines = pairs_file.read_text().splitlines()
    folds, per_class = (int(v) for v in lines[0].split())
    pairs = []
    for line in lines[1:]:
        fields = line.split()
        index = len(pairs)
        fold = index // (2 * per_class)
        if len(fields) == 3:
            name, first, second = fields
            pairs.append(Pair(image_path(name, first), image_path(name, second), True, fold))
        elif len(fields) == 4:
            name_a, first, name_b, second = fields
            pairs.append(Pair(image_path(name_a, first), image_path(name_b, second), False, fold))
    if len(pairs) != folds * 2 * per_class:
        raise ValueError(f"{pairs_file}: expected {folds * 2 * per_class} pairs, found {len(pairs)}")
    return pairs


def image_path(name: str, number: str | int) -> str:
    return f"{name}/{name}_{int(number):04d}.jpg"


def identity_of(path: str) -> str:
    return path.split("/", 1)[0]


def split_position(identity: str) -> float:
    """The identity's position in [0, 1): the same SHA-256 rule as workers.training.datasets.split_of."""
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_held_out(identity: str) -> bool:
    return split_position(identity) >= HELD_OUT_FROM


def stable_fraction(text: str, salt: str = "visor-eval") -> float:
    """A number in [0, 1) fixed by `text` (used to subsample with --limit without moving anything)."""
    digest = hashlib.sha256(f"{salt}|{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def lfw_canvas(path: Path) -> np.ndarray:
    """A 640x480 BGR photo with the 250x250 LFW-a face in the middle of a grey background: what a client
    would send (benchmarks and enrollment measurements upload these)."""
    face = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
    canvas = np.full((480, 640, 3), 128, dtype=np.uint8)
    canvas[115:365, 195:445] = face
    return canvas


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def lfw_index(lfw_dir: Path) -> dict[str, list[str]]:
    """identity -> its image paths (sorted), for every identity with at least one image."""
    root = lfw_dir / "lfw"
    if not root.is_dir():
        raise SharedDataUnavailable(f"{root} is absent")
    index: dict[str, list[str]] = {}
    for path in sorted(root.glob("*/*.jpg")):
        index.setdefault(path.parent.name, []).append(f"{path.parent.name}/{path.name}")
    return index


@dataclass(frozen=True)
class OpenSetSplit:
    gallery: dict[str, str]  # enrolled identity -> its gallery image (its first image)
    mated_probes: list[str]  # the other images of enrolled identities
    non_mated_probes: list[str]  # every image of the held-out identities


def open_set_split(index: dict[str, list[str]], *, limit: int | None = None) -> OpenSetSplit:
    """Gallery = first image of every identity but the held-out tenth; probes = the rest (see module doc).

    `limit` keeps about that many identities (a stable hash decides which), for quick runs.
    """
    identities = sorted(index)
    if limit is not None and limit < len(identities):
        identities = sorted(identities, key=stable_fraction)[:limit]
        identities.sort()
    gallery, mated, non_mated = {}, [], []
    for identity in identities:
        images = index[identity]
        if is_held_out(identity):
            non_mated.extend(images)
        else:
            gallery[identity] = images[0]
            mated.extend(images[1:])
    return OpenSetSplit(gallery, mated, non_mated)


def limit_pairs(pairs: list[Pair], limit: int | None) -> list[Pair]:
    """About `limit` pairs, the same number from every fold and class (stable choice), or all of them."""
    if limit is None or limit >= len(pairs):
        return pairs
    folds = sorted({pair.fold for pair in pairs})
    per_cell = max(1, limit // (2 * len(folds)))
    kept = []
    for fold in folds:
        for genuine in (True, False):
            cell = [p for p in pairs if p.fold == fold and p.genuine == genuine]
            kept.extend(sorted(cell, key=lambda p: stable_fraction(p.first + p.second))[:per_cell])
    return kept


def split_name(identity: str) -> str:
    """The training split of an identity ("train", "val" or "test")."""
    return split_of(identity)


def rwmfd_paths(rwmfd_dir: Path, *, limit: int | None = None) -> list[str]:
    images = rwmfd_dir / "images"
    if not images.is_dir():
        raise SharedDataUnavailable(f"{images} is absent")
    paths = sorted(
        f"{p.parent.name}/{p.name}"
        for p in images.glob("*/*")
        if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
    )
    if limit is not None and limit < len(paths):
        paths = sorted(sorted(paths, key=stable_fraction)[:limit])
    return paths
