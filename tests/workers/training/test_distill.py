"""The distillation script's evaluation arithmetic (the training itself needs torch and the shared data)."""

import numpy as np
import pytest

from workers.training.distill import _rank1_hits, mcnemar


def test_rank1_hits_mark_the_probes_whose_nearest_gallery_face_is_the_same_person():
    gallery = np.eye(3, dtype=np.float32)
    probes = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.6, 0.5, 0.0]], np.float32)

    hits = _rank1_hits(gallery, np.array(["ada", "bob", "cy"]), probes, np.array(["ada", "cy", "bob"]))

    assert hits.tolist() == [True, True, False]


def test_mcnemar_counts_the_discordant_probes_and_gives_the_exact_two_sided_p_value():
    a = np.array([True] * 20 + [False] * 8 + [True] * 50)
    b = np.array([False] * 20 + [True] * 8 + [True] * 50)

    result = mcnemar(a, b)

    assert (result["only_a_right"], result["only_b_right"]) == (20, 8)
    assert result["p_value"] == pytest.approx(0.0357, abs=5e-4)
    assert mcnemar(a, a)["p_value"] == 1.0
