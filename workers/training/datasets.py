"""Shared evaluation data and the identity-disjoint LFW splits every training and evaluation script uses.

Split rule: an identity's split is fixed by the SHA-256 of its LFW name (the folder name, e.g.
"George_W_Bush"). The first 8 bytes, read big-endian and divided by 2**64, give a number u in [0, 1):
u < 0.70 -> "train", u < 0.85 -> "val", else "test". A person's images therefore never straddle two
splits, the assignment needs no stored list, and it does not move when identities are added or removed.
Thresholds tuned on "val" and numbers reported on "test" are on people no model was trained on.

The data live next to the repository in ../shared/data (never copied into it): see the READMEs there.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
LFW_DIR = SHARED_DATA_DIR / "lfw_a"
RWMFD_DIR = SHARED_DATA_DIR / "rwmfd_part1"

Split = Literal["train", "val", "test"]
SPLIT_UPPER_BOUNDS: tuple[tuple[Split, float], ...] = (("train", 0.70), ("val", 0.85), ("test", 1.0))


# RWMFD is "almost always masked", not always: these faces, found by the production detector and passing the
# identification quality floors, show no mask (bystanders, one face half hidden behind a sheet) or no face
# at all (a phone, a blurred lamp, a station hall). Found by looking at all 766 such faces (YuNet 2023mar,
# DetectionConfig defaults). Each entry: photo path under images/, centre x and y of the face box.
RWMFD_NOT_MASKED: tuple[tuple[str, float, float], ...] = (
    ("0001/0286.jpg", 195, 177),
    ("0003/0018.jpg", 105, 46),
    ("0006/0039.jpg", 28, 48),
    ("0008/0063.jpg", 235, 112),
    ("0008/0124.jpg", 271, 99),
    ("0008/0138.jpg", 62, 46),
    ("0008/0154.jpg", 162, 126),
    ("0010/0008.jpg", 219, 68),
    ("0011/0089.jpg", 38, 48),
    ("0016/0017.jpg", 89, 78),
    ("0017/0008.jpg", 73, 90),
    ("0022/62EB5F3BDA472EE5ED293160CF3_D4979104_2F2D0.jpg", 654, 60),
)


class SharedDataUnavailable(FileNotFoundError):
    """A data set under ../shared/data is not on this machine."""


@dataclass(frozen=True)
class LfwImage:
    identity: str
    path: Path


def split_of(identity: str) -> Split:
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    for split, upper_bound in SPLIT_UPPER_BOUNDS:
        if position < upper_bound:
            return split
    raise AssertionError("unreachable: position is below 1.0")


def lfw_identities(lfw_dir: Path = LFW_DIR) -> list[str]:
    """All identity names, in people.txt order (sorted)."""
    people = lfw_dir / "people.txt"
    if not people.is_file():
        raise SharedDataUnavailable(f"{people} is absent")
    return [line.split("\t")[0] for line in people.read_text().splitlines() if line.strip()]


def lfw_images(split: Split, lfw_dir: Path = LFW_DIR) -> list[LfwImage]:
    """Every LFW image of the identities in `split`, sorted by path."""
    return [
        LfwImage(identity, path)
        for identity in lfw_identities(lfw_dir)
        if split_of(identity) == split
        for path in sorted((lfw_dir / "lfw" / identity).glob("*.jpg"))
    ]


def rwmfd_images(rwmfd_dir: Path = RWMFD_DIR) -> list[Path]:
    """All RWMFD part-1 photos (real masked faces, no identities), sorted by path."""
    images_dir = rwmfd_dir / "images"
    if not images_dir.is_dir():
        raise SharedDataUnavailable(f"{images_dir} is absent")
    return sorted(p for p in images_dir.glob("*/*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})


def rwmfd_face_is_masked(
    photo: Path, centre_x: float, centre_y: float, box_width: float, rwmfd_dir: Path = RWMFD_DIR
) -> bool:
    """False for the faces listed in RWMFD_NOT_MASKED (matched by photo and a box centre within a third of
    the box width), True for every other RWMFD face."""
    relative = photo.relative_to(rwmfd_dir / "images").as_posix()
    return not any(
        relative == listed and np.hypot(centre_x - x, centre_y - y) < box_width / 3
        for listed, x, y in RWMFD_NOT_MASKED
    )


def read_bgr(path: Path) -> np.ndarray:
    """A photo as HxWx3 uint8 BGR; LFW-a's grayscale files get three equal channels."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {path}")
    return image
