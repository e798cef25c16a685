"""The identity-disjoint LFW splits every training and evaluation script relies on."""

import hashlib
from collections import Counter

import numpy as np
import pytest

from tests.conftest import require_shared_data
from workers.training.datasets import (
    RWMFD_DIR,
    RWMFD_NOT_MASKED,
    SharedDataUnavailable,
    lfw_identities,
    lfw_images,
    read_bgr,
    rwmfd_face_is_masked,
    rwmfd_images,
    split_of,
)


def test_split_follows_the_documented_hash_rule():
    for name in ("George_W_Bush", "AJ_Cook", "Zico", "Ana_Isabel_Sanchez"):
        position = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
        expected = "train" if position < 0.70 else "val" if position < 0.85 else "test"
        assert split_of(name) == expected


def test_split_proportions_are_70_15_15():
    counts = Counter(split_of(f"Person_{i}") for i in range(20000))
    assert counts["train"] / 20000 == pytest.approx(0.70, abs=0.015)
    assert counts["val"] / 20000 == pytest.approx(0.15, abs=0.015)
    assert counts["test"] / 20000 == pytest.approx(0.15, abs=0.015)


def test_missing_data_raises_a_clear_error(tmp_path):
    with pytest.raises(SharedDataUnavailable):
        lfw_identities(tmp_path)
    with pytest.raises(SharedDataUnavailable):
        rwmfd_images(tmp_path)


def test_undecodable_file_is_reported(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot decode"):
        read_bgr(broken)


@pytest.mark.shared_data
def test_lfw_splits_are_identity_disjoint_and_cover_everyone():
    require_shared_data("lfw_a")
    identities = {
        split: {image.identity for image in lfw_images(split)} for split in ("train", "val", "test")
    }
    assert not identities["train"] & identities["val"]
    assert not identities["train"] & identities["test"]
    assert not identities["val"] & identities["test"]
    total_images = sum(len(lfw_images(split)) for split in ("train", "val", "test"))
    assert total_images == 13233


@pytest.mark.shared_data
def test_grayscale_lfw_is_read_as_three_equal_channels():
    require_shared_data("lfw_a")
    image = read_bgr(lfw_images("test")[0].path)
    assert image.shape == (250, 250, 3)
    assert image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 2])


def test_audited_rwmfd_faces_are_matched_by_photo_and_position():
    photo, x, y = RWMFD_NOT_MASKED[0]
    path = RWMFD_DIR / "images" / photo
    assert not rwmfd_face_is_masked(path, x + 3, y - 3, 60)
    assert rwmfd_face_is_masked(path, x + 40, y, 60), "another face in the same photo"
    assert rwmfd_face_is_masked(RWMFD_DIR / "images" / "0001" / "0001.jpg", x, y, 60)
