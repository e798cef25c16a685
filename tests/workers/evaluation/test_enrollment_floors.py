from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from workers.evaluation.enrollment_floors import bucket_rows, yaw_between
from workers.evaluation.lfw import jpeg, lfw_canvas


def face(embedding, yaw):
    vector = np.asarray(embedding, np.float32)
    return SimpleNamespace(
        embedding=vector / np.linalg.norm(vector), quality=SimpleNamespace(pose=SimpleNamespace(yaw=yaw))
    )


def test_each_bucket_counts_its_photos_and_the_share_of_their_same_person_pairs_above_the_threshold():
    faces = [face([1, 0], 5), face([1, 0.1], -35), face([0, 1], 38), face([0.2, 1], 2)]
    identities = ["ada", "ada", "bob", "bob"]

    rows = bucket_rows(
        identities, faces, 0.9, [("frontal", yaw_between(0, 30)), ("turned", yaw_between(30, 45))]
    )

    assert rows == [("frontal", 2, pytest.approx(1.0)), ("turned", 2, pytest.approx(1.0))]
    far_apart = bucket_rows(identities, faces, 0.999, [("frontal", yaw_between(0, 30))])
    assert far_apart == [("frontal", 2, pytest.approx(0.0))]


def test_photos_are_sent_centred_on_a_640x480_canvas(tmp_path):
    face = tmp_path / "face.jpg"
    cv2.imwrite(str(face), np.full((250, 250, 3), 255, np.uint8))

    sent = cv2.imdecode(np.frombuffer(jpeg(lfw_canvas(face)), np.uint8), 1)

    assert sent.shape == (480, 640, 3)
    assert sent[240, 320].min() > 240
    assert sent[10, 10].max() < 140
