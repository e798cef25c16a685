"""Evaluation metrics on score arrays with known answers, the vectorised 1:N search, SVG plots, and a
`--limit` smoke run of the whole harness (skipped when ../shared/data is absent)."""

import json
import math
import shlex
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

from workers.evaluation import metrics
from workers.evaluation.identification import Gallery, naive_max, pair_scores, search
from workers.evaluation.lfw import Pair, limit_pairs, open_set_split, read_pairs, split_position
from workers.evaluation.metrics import IdentificationScores
from workers.evaluation.plots import det_svg, roc_svg
from workers.training.datasets import split_of

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MODEL_DIR = REPO_ROOT / "var" / "models"


# -- verification -------------------------------------------------------------------------------------------


def ten_folds(errors_in_fold: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """10 folds of 5 genuine (0.8) + 5 impostor (0.2) scores; some impostors of a fold raised to 0.9."""
    scores, labels, folds = [], [], []
    for fold in range(10):
        fold_scores = [0.8] * 5 + [0.2] * 5
        for i in range(errors_in_fold.get(fold, 0)):
            fold_scores[5 + i] = 0.9
        scores += fold_scores
        labels += [True] * 5 + [False] * 5
        folds += [fold] * 10
    return np.array(scores), np.array(labels), np.array(folds)


def test_ten_fold_accuracy_is_perfect_on_separable_scores():
    result = metrics.k_fold_accuracy(*ten_folds({}))
    assert result.mean == 1.0
    assert result.std == 0.0
    assert all(0.2 < t <= 0.8 for t in result.thresholds)


def test_ten_fold_accuracy_counts_the_errors_of_the_tested_fold():
    # Fold 3 has one impostor at 0.9: the other folds put the threshold between 0.2 and 0.8, so fold 3 scores
    # 9/10 and every other fold 10/10 (its own error does not move the others' thresholds above 0.9).
    result = metrics.k_fold_accuracy(*ten_folds({3: 1}))
    assert result.per_fold[3] == pytest.approx(0.9)
    assert result.mean == pytest.approx(0.99)


def test_best_threshold_maximises_accuracy():
    scores = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.35])
    labels = np.array([False, False, False, True, True, True])
    threshold = metrics.best_threshold(scores, labels)
    assert 0.3 < threshold <= 0.35
    assert ((scores >= threshold) == labels).all()


def test_failed_comparisons_count_as_rejections_and_nan_is_refused():
    scores = np.array([0.9, 0.1, 0.8, 0.2, -np.inf, 0.15])
    labels = np.array([True, False, True, False, True, False])
    result = metrics.k_fold_accuracy(scores, labels, np.array([0, 0, 1, 1, 2, 2]))
    assert result.per_fold == pytest.approx((1.0, 1.0, 0.5))
    with pytest.raises(ValueError, match="NaN"):
        metrics.best_threshold(np.array([0.5, np.nan]), np.array([True, False]))


def test_tar_at_far_uses_the_smallest_threshold_that_keeps_the_rate():
    impostors = np.arange(1000) / 1000.0  # 0.000 .. 0.999
    genuine = np.array([0.5, 0.9885, 0.9895, 1.0])
    point = metrics.tar_at_far(genuine, impostors, 1e-2)
    # 10 impostors may pass: 0.990 .. 0.999; 0.989 must not.
    assert point.false_accept_rate == pytest.approx(0.01)
    assert 0.989 < point.threshold <= 0.990
    assert point.true_accept_rate == pytest.approx(0.5)
    # FAR 1e-3: one impostor (0.999) may pass.
    strict = metrics.tar_at_far(genuine, impostors, 1e-3)
    assert strict.false_accept_rate == pytest.approx(0.001)
    assert strict.true_accept_rate == pytest.approx(0.25)


def test_tar_at_far_never_exceeds_the_target_with_ties():
    impostors = np.array([0.5] * 11 + [0.1] * 989)  # 10 may pass, but not 10 of the 11 tied ones
    point = metrics.tar_at_far(np.array([0.5, 0.6]), impostors, 1e-2)
    assert point.false_accept_rate <= 1e-2
    assert point.true_accept_rate == pytest.approx(0.5)  # 0.5 ties with the impostors and is rejected


def test_roc_points_are_monotonic_and_end_at_one():
    rng = np.random.default_rng(0)
    far, tar = metrics.roc_points(rng.normal(1, 1, 500), rng.normal(0, 1, 5000))
    assert np.all(np.diff(far) >= 0)
    assert np.all(np.diff(tar) >= 0)
    assert far[-1] == 1.0


# -- identification -----------------------------------------------------------------------------------------


def identification_example() -> IdentificationScores:
    return IdentificationScores(
        mated_true=np.array([0.9, 0.8, 0.3, -np.inf]),
        mated_best_other=np.array([0.5, 0.85, 0.1, 0.2]),
        non_mated_top=np.linspace(0.0, 0.495, 100),  # steps of 0.005
    )


def test_rank1_counts_strict_wins_and_failures_as_misses():
    assert metrics.rank1_rate(identification_example()) == pytest.approx(0.5)
    tie = IdentificationScores(np.array([0.5]), np.array([0.5]), np.array([0.0]))
    assert metrics.rank1_rate(tie) == 0.0


def test_fnir_at_fpir():
    point = metrics.fnir_at_fpir(identification_example(), 0.01)
    # One non-mated search (0.495) may pass: the threshold lies in (0.490, 0.495].
    assert 0.49 < point.threshold <= 0.495
    assert point.fpir == pytest.approx(0.01)
    # Only the first mated search is a rank-1 hit above the threshold.
    assert point.fnir == pytest.approx(0.75)
    loose = metrics.fnir_at_fpir(identification_example(), 1.0)
    assert loose.fnir == pytest.approx(0.5)  # every rank-1 hit counts; misses stay misses


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(5)
    scores = IdentificationScores(rng.normal(1, 1, 400), rng.normal(0, 1, 400), rng.normal(0, 1, 300))
    low, high = metrics.bootstrap_interval(scores, metrics.rank1_rate, resamples=100)
    assert low <= metrics.rank1_rate(scores) <= high
    assert 0 < high - low < 0.2
    assert (low, high) == metrics.bootstrap_interval(scores, metrics.rank1_rate, resamples=100)


def test_det_points_trade_fpir_for_fnir():
    fpir, fnir = metrics.det_points(identification_example())
    assert np.all(np.diff(fpir) >= 0)
    assert np.all(np.diff(fnir) <= 0)


def test_precision_recall():
    predicted = np.array([True, True, False, False, True])
    actual = np.array([True, False, True, False, True])
    assert metrics.precision_recall(predicted, actual) == pytest.approx((2 / 3, 2 / 3))


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, np.float64)
    return vector / np.linalg.norm(vector)


def test_search_scores_every_probe_against_every_subject():
    gallery = Gallery(["ann", "bob", "cid"], np.eye(3), None)
    mated = np.array([unit([0.9, 0.1, 0.0]), unit([0.8, 0.6, 0.0]), [np.nan] * 3])
    non_mated = np.array([unit([0.3, 0.3, 0.1])])
    scores = search(mated, ["ann", "bob", "cid"], non_mated, gallery, naive_max)
    assert scores.mated_true[0] == pytest.approx(unit([0.9, 0.1, 0])[0])
    assert scores.mated_best_other[1] == pytest.approx(0.8)  # ann beats bob for probe 2
    assert scores.mated_true[2] == -np.inf  # no face in the probe
    assert metrics.rank1_rate(scores) == pytest.approx(1 / 3)
    assert scores.non_mated_top[0] == pytest.approx(unit([0.3, 0.3, 0.1])[0])


def test_search_with_synthetic_templates_takes_each_subjects_best():
    original = np.eye(3)
    synthetic = np.stack([np.eye(3)[[1, 2, 0]], np.full((3, 3), np.nan)], axis=1)  # (S=3, K=2, D=3)
    gallery = Gallery(["ann", "bob", "cid"], original, synthetic)
    probe = np.array([unit([0.6, 0.0, 0.8])])
    # ann: original 0.6, synthetic (e_y) 0; bob: 0 / 0.8 (e_z); cid: 0.8 / 0.6.
    scores = search(probe, ["ann"], np.zeros((0, 3)), gallery, naive_max, synthetic=2)
    assert scores.mated_true[0] == pytest.approx(0.6)
    assert scores.mated_best_other[0] == pytest.approx(0.8)
    one = pair_scores(probe, gallery, naive_max, 1, np.array([1]))
    assert one[0] == pytest.approx(0.8)


# -- data helpers -------------------------------------------------------------------------------------------


def test_split_position_matches_the_shared_split_rule():
    for name in ("George_W_Bush", "Aaron_Eckhart", "Zico", "Jennifer_Aniston"):
        position = split_position(name)
        expected = "train" if position < 0.70 else "val" if position < 0.85 else "test"
        assert split_of(name) == expected


def test_open_set_split_holds_out_a_tenth_and_never_enrolls_it():
    index = {f"person_{i:04d}": [f"person_{i:04d}/{j}.jpg" for j in range(1 + i % 3)] for i in range(2000)}
    split = open_set_split(index)
    held_out = {p.split("/")[0] for p in split.non_mated_probes}
    assert 0.07 < len(held_out) / 2000 < 0.13
    assert not held_out & set(split.gallery)
    assert all(split_position(i) >= 0.9 for i in held_out)
    assert all(index[i][0] == image for i, image in split.gallery.items())
    assert len(split.mated_probes) == sum(len(index[i]) - 1 for i in split.gallery)


def test_read_and_limit_pairs(tmp_path):
    lines = [
        "2\t2",
        "A\t1\t2",
        "B\t1\t3",
        "A\t1\tC\t2",
        "B\t2\tD\t1",
        "E\t1\t2",
        "F\t1\t2",
        "E\t1\tF\t1",
        "G\t1\tH\t1",
    ]
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")
    pairs = read_pairs(tmp_path / "pairs.txt")
    assert pairs[0] == Pair("A/A_0001.jpg", "A/A_0002.jpg", True, 0)
    assert pairs[2] == Pair("A/A_0001.jpg", "C/C_0002.jpg", False, 0)
    assert [p.fold for p in pairs] == [0, 0, 0, 0, 1, 1, 1, 1]
    limited = limit_pairs(pairs, 4)
    assert len(limited) == 4
    assert {(p.fold, p.genuine) for p in limited} == {(0, True), (0, False), (1, True), (1, False)}


# -- plots --------------------------------------------------------------------------------------------------


def test_svg_plots_are_valid_documents_with_one_polyline_per_curve():
    rng = np.random.default_rng(1)
    roc = {
        "a": metrics.roc_points(rng.normal(1, 1, 100), rng.normal(0, 1, 1000)),
        "b <&>": (np.array([1e-3, 1.0]), np.array([0.2, 1.0])),
    }
    root = ElementTree.fromstring(roc_svg(roc, "ROC"))
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 2
    det = {"x": metrics.det_points(identification_example())}
    root = ElementTree.fromstring(det_svg(det, "DET"))
    assert len(root.findall("{http://www.w3.org/2000/svg}polyline")) == 1


# -- the harness on the real data ---------------------------------------------------------------------------


@pytest.mark.shared_data
def require_smoke_run_data() -> None:
    for part in ("lfw_a/pairs.txt", "rwmfd_part1/images", "mask_templates/masks.cfg"):
        if not (SHARED_DATA / part).exists():
            pytest.skip(f"{SHARED_DATA / part} is absent: the smoke run needs the shared evaluation data")


def test_limited_run_of_every_protocol_writes_the_report(tmp_path):
    require_smoke_run_data()
    if not (MODEL_DIR / "face_recognition_sface_2021dec.onnx").exists():
        pytest.skip(f"the SFace model is not in {MODEL_DIR}; run `python infra/fetch_models.py`")
    from django.core.management import call_command

    output = tmp_path / "accuracy.md"
    call_command(
        "evaluate", limit=20, protocols="a,b,c,d,e", model="sface", synthetic="1,2", output=str(output)
    )

    document = json.loads(output.with_suffix(".json").read_text())
    assert set(document["protocols"]) == {"a", "b", "c", "d", "e"}
    assert document["meta"]["limit"] == 20
    for protocol in "abce":
        assert "baseline" in document["protocols"][protocol]["rows"], protocol
    assert "sface + 2 synthetic, mask-aware" in document["protocols"]["c"]["rows"]
    accuracy = document["protocols"]["a"]["rows"]["baseline"]["accuracy"]
    assert 0.5 <= accuracy <= 1.0
    assert {t["metric"] for t in document["targets"]} >= {
        "accuracy",
        "rank1",
        "fnir_at_fpir_1%",
        "detection_rate",
    }
    report = output.read_text()
    assert "| Target |" in report
    assert "**baseline**" in report
    assert all((tmp_path / plot).is_file() for plot in document["meta"]["plots"])
    assert not math.isnan(document["protocols"]["e"]["rows"]["baseline"]["detection_rate"])


# -- command line -------------------------------------------------------------------------------------------


def test_the_command_line_can_point_the_evaluation_at_a_candidate_models_directory(tmp_path):
    from workers.evaluation.report import build_parser, options_to_call
    from workers.pipeline.config import DEFAULT_MODEL_DIR

    default = options_to_call(vars(build_parser().parse_args(["--protocols", "c"])))
    candidate = options_to_call(
        vars(
            build_parser().parse_args(
                ["--protocols", "c", "--model", "student", "--model-dir", str(tmp_path)]
            )
        )
    )

    assert default["config"].model_dir == DEFAULT_MODEL_DIR
    assert candidate["config"].model_dir == tmp_path
    assert (candidate["protocols"], candidate["models"]) == (["c"], ["student"])


def test_the_report_names_a_command_that_parses_back_to_the_same_arguments(tmp_path):
    require_smoke_run_data()
    from workers.evaluation.report import main

    output = tmp_path / "accuracy.md"
    arguments = [
        "--limit",
        "20",
        "--protocols",
        "e",
        "--synthetic",
        "",
        "--cohort",
        "0",
        "--output",
        str(output),
    ]
    main(arguments)

    command = json.loads(output.with_suffix(".json").read_text())["meta"]["command"]
    assert shlex.split(command) == ["python", "-m", "workers.evaluation", *arguments]
    assert f"- Command: `{command}`" in output.read_text()


def test_the_mask_classifier_is_measured_on_each_models_own_activations(tmp_path):
    require_smoke_run_data()
    if not (MODEL_DIR / "visor-masked-student-v2.onnx").exists():
        pytest.skip(f"student-v2 is not built in {MODEL_DIR}; run `make models`")
    from django.core.management import call_command

    output = tmp_path / "accuracy.md"
    # The shipped configuration. Its refiner re-aligns the faces the classifier calls masked, so the
    # classifier reads the network's activations on YuNet's alignment, as it does without the refiner.
    call_command(
        "evaluate", limit=20, protocols="d", model="sface,student-v2-flip+refiner", output=str(output)
    )

    document = json.loads(output.with_suffix(".json").read_text())
    rows = document["protocols"]["d"]["rows"]
    assert set(rows) == {"baseline", "mask_classifier", "mask_classifier on student-v2-flip"}
    assert {t["best_configuration"] for t in document["targets"]} == {"mask_classifier on student-v2-flip"}
