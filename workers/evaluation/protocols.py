"""The five evaluation protocols, for the naive baseline and for every lever and model.

(a) LFW 10-fold pairs accuracy, unmasked (pairs.txt; threshold chosen on 9 folds, tested on the 10th).
(b) The same pairs with a synthetic mask on the second image: TAR at FAR 1e-2 / 1e-3 (thresholds from the
    3,000 pair impostors), and 10-fold accuracy. Levers: the first image enrolled with K synthetic-mask
    templates, scored naively (max) or mask-aware. Plus (b') a 1:1 check on "test" split identities only:
    masked probes against enrolled subjects, TAR at FAR 1e-3 / 1e-4 at thresholds from their own impostors
    and at the calibrated thresholds (fitted on "train"), with the FAR those actually give.
(c) Open-set identification: gallery = first image of every identity except a held-out tenth
    (lfw.is_held_out); probes = the masked other images of enrolled identities (mated) and the masked images
    of held-out identities (non-mated). Rank-1 and FNIR at FPIR 1% (NIST FRVT 1:N definitions, rank 1).
    Also on "test" split identities only (mated probes of test identities), which no fitted parameter saw.
(d) Mask classifier: precision and recall on LFW "test" split identities (masked vs plain) and recall on
    RWMFD real masked faces (the largest face of each image).
(e) Detection rate on RWMFD: images where at least one face is found.
The naive baseline is plain YuNet + SFace, a subject's score = its best raw similarity, no mask levers.
A probe or gallery image where no face is found is a failure (a miss / a rejection), never dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from workers.evaluation.cache import DEFAULT_CACHE_DIR
from workers.evaluation.extract import Extractor, key_for, split_key
from workers.evaluation.identification import Gallery, naive_max, pair_scores, search
from workers.evaluation.lfw import (
    identity_of,
    is_held_out,
    lfw_index,
    limit_pairs,
    open_set_split,
    read_pairs,
    rwmfd_paths,
    split_name,
    stable_fraction,
)
from workers.evaluation.metrics import (
    IdentificationScores,
    bootstrap_interval,
    det_points,
    fnir_at_fpir,
    k_fold_accuracy,
    precision_recall,
    rank1_rate,
    roc_points,
    tar_at_far,
)
from workers.evaluation.tune import SplitData, fit_mask_aware
from workers.pipeline.config import (
    DEFAULT_MODEL_DIR,
    EMBEDDING_MODELS,
    EmbeddingConfig,
    PipelineConfig,
    embedding_config,
)
from workers.pipeline.enrollment_augmentation import DEFAULT_MASK_TYPES
from workers.pipeline.landmark_refiner import LandmarkRefiner
from workers.pipeline.mask_classifier import MaskClassifier
from workers.pipeline.matching import MaskAwareCalibration, fuse_kind_scores
from workers.pipeline.pipeline import FacePipeline
from workers.training.datasets import LFW_DIR, RWMFD_DIR, rwmfd_face_is_masked

PROTOCOLS = ("a", "b", "c", "d", "e")
MASK = "mask0"  # probes: mask seed 0


@dataclass(frozen=True)
class EvaluationConfig:
    lfw_dir: Path = LFW_DIR
    rwmfd_dir: Path = RWMFD_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR
    model_dir: Path = DEFAULT_MODEL_DIR
    limit: int | None = None
    threads: int = 1
    synthetic_counts: tuple[int, ...] = (1, 2, 3, 4)
    # (c) also measures probe-side cohort normalisation over this many next-best subjects (0: not measured).
    cohort_size: int = 20
    seed: int = 0


# A model name with this suffix runs the pipeline's masked-face stages too: the mask classifier and the
# landmark refiner, which re-aligns the faces it calls masked (workers/pipeline/landmark_refiner.py).
REFINED = "+refiner"


def model_embedding_config(model: str, model_dir: Path) -> EmbeddingConfig:
    """The embedding model called `model` (a name of config.EMBEDDING_MODELS, or a path to an ONNX file;
    without the REFINED suffix)."""
    if model in EMBEDDING_MODELS:
        return embedding_config(model, model_dir)
    path = Path(model)
    if path.suffix == ".onnx" and path.is_file():
        return EmbeddingConfig(model_path=path, model_name=path.stem)
    raise ValueError(f"unknown model {model!r}: use {', '.join(EMBEDDING_MODELS)} or a path to an .onnx file")


class ModelRun:
    """One embedding model: its extractor (caches) and its fitted mask-aware calibrations."""

    def __init__(self, evaluation: Evaluation, name: str) -> None:
        self.evaluation = evaluation
        self.name = name
        config = evaluation.config
        embedding_model = name.removesuffix(REFINED)
        pipeline_config = replace(
            PipelineConfig.for_model_dir(config.model_dir, intra_op_threads=config.threads),
            embedding=model_embedding_config(embedding_model, config.model_dir),
        )
        masked_face_stages = {}
        if name.endswith(REFINED):
            masked_face_stages = {
                "mask_classifier": MaskClassifier.load(),
                "landmark_refiner": LandmarkRefiner(intra_op_threads=config.threads),
            }
        self.pipeline = FacePipeline(pipeline_config, **masked_face_stages)
        self.extractor = Extractor(
            self.pipeline,
            lfw_dir=config.lfw_dir,
            rwmfd_dir=config.rwmfd_dir,
            cache_dir=config.cache_dir,
            log=evaluation.log,
        )
        self.model_version = self.pipeline.model_version
        self._calibrations: dict[int, tuple[MaskAwareCalibration, dict]] = {}

    def lfw(self, paths: list[str], variant: str) -> np.ndarray:
        return self.extractor.embeddings("lfw", [key_for(p, variant) for p in paths])

    def gallery(self, subjects: dict[str, str], synthetic: int) -> Gallery:
        """Subjects (identity -> enrollment image) with `synthetic` synthetic-mask templates each."""
        names = list(subjects)
        paths = [subjects[n] for n in names]
        self.extractor.ensure(
            "lfw",
            [key_for(p, v) for p in paths for v in ["plain", *(f"enroll{j}" for j in range(synthetic))]],
        )
        original = self.lfw(paths, "plain")
        templates = None
        if synthetic:
            templates = np.stack([self.lfw(paths, f"enroll{j}") for j in range(synthetic)], axis=1)
        return Gallery(names, original, templates)

    def split_data(self, split: str, synthetic: int) -> SplitData:
        index = self.evaluation.index
        identities = [i for i in self.evaluation.identities if split_name(i) == split]
        gallery = self.gallery({i: index[i][0] for i in identities}, synthetic)
        probes = [p for i in identities for p in index[i][1:]]
        return SplitData(
            gallery, self.lfw(probes, MASK), self.lfw(probes, "plain"), [identity_of(p) for p in probes]
        )

    def calibration(self, synthetic: int) -> tuple[MaskAwareCalibration, dict]:
        if synthetic not in self._calibrations:
            started = time.perf_counter()
            train = self.split_data("train", synthetic)
            val = self.split_data("val", synthetic)
            if not val.identities:  # tiny --limit runs: choose w on train
                val = train
            calibration, report = fit_mask_aware(self.model_version, train, val, synthetic)
            report["seconds"] = round(time.perf_counter() - started, 1)
            self._calibrations[synthetic] = (calibration, report)
        return self._calibrations[synthetic]


@dataclass(frozen=True)
class Variant:
    """One evaluated configuration: a model, K synthetic templates and a scoring rule."""

    model: str
    synthetic: int = 0
    scoring: str = "max"  # "max" (naive) or "mask-aware"
    cohort: int = 0  # (c) only: probe-side cohort normalisation over the gallery's next-best subjects

    @property
    def name(self) -> str:
        name = (
            self.model if not self.synthetic else f"{self.model} + {self.synthetic} synthetic, {self.scoring}"
        )
        return f"{name}, cohort {self.cohort}" if self.cohort else name


@dataclass
class ProtocolResult:
    rows: dict[str, dict] = field(default_factory=dict)  # variant name -> metrics
    extra: dict = field(default_factory=dict)
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    seconds: float = 0.0


class Evaluation:
    def __init__(self, config: EvaluationConfig, log: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.log = log or (lambda message: print(message, flush=True))
        self.index = lfw_index(config.lfw_dir)
        identities = sorted(self.index)
        if config.limit is not None and config.limit < len(identities):
            # A stable subset with the held-out share of the full set (at least one held-out identity).
            ordered = sorted(identities, key=stable_fraction)
            held = [i for i in ordered if is_held_out(i)][: max(1, config.limit // 10)]
            enrolled = [i for i in ordered if not is_held_out(i)][: config.limit - len(held)]
            identities = sorted(held + enrolled)
        self.identities = identities
        self.split = open_set_split({i: self.index[i] for i in identities})
        self.pairs = limit_pairs(read_pairs(config.lfw_dir / "pairs.txt"), config.limit)
        self._runs: dict[str, ModelRun] = {}

    def model_run(self, name: str) -> ModelRun:
        if name not in self._runs:
            self._runs[name] = ModelRun(self, name)
        return self._runs[name]

    def variants(self, models: list[str]) -> list[Variant]:
        """The baseline (SFace, no levers) first, then every model alone and with every lever."""
        out = [Variant("sface")]
        for model in models:
            if model != "sface":
                out.append(Variant(model))
            for k in self.config.synthetic_counts:
                out.extend([Variant(model, k, "max"), Variant(model, k, "mask-aware")])
        return out

    def scorer(self, variant: Variant, probe_masked: bool) -> Callable:
        if variant.scoring == "max" or not variant.synthetic:
            return naive_max
        calibration, _ = self.model_run(variant.model).calibration(variant.synthetic)
        return partial(_fused, probe_masked=probe_masked, calibration=calibration)

    # -- (a) -------------------------------------------------------------------------------------------------

    def protocol_a(self, models: list[str]) -> ProtocolResult:
        result = ProtocolResult()
        labels = np.array([p.genuine for p in self.pairs])
        folds = np.array([p.fold for p in self.pairs])
        for model in ["sface", *[m for m in models if m != "sface"]]:
            run = self.model_run(model)
            first = run.lfw([p.first for p in self.pairs], "plain")
            second = run.lfw([p.second for p in self.pairs], "plain")
            scores = _rowwise_cosine(first, second)
            accuracy = k_fold_accuracy(scores, labels, folds)
            far3 = tar_at_far(scores[labels], scores[~labels], 1e-3)
            name = "baseline" if model == "sface" else model
            result.rows[name] = {
                "accuracy": accuracy.mean,
                "accuracy_std": accuracy.std,
                "non_train_accuracy": self._non_train_accuracy(scores),
                "tar_far_1e-3_pairs": far3.true_accept_rate,
                "pairs": int(labels.size),
                "pairs_without_face": int((~np.isfinite(scores)).sum()),
            }
            result.curves.setdefault("roc", {})[name] = roc_points(scores[labels], scores[~labels])
        return result

    # -- (b) -------------------------------------------------------------------------------------------------

    def protocol_b(self, models: list[str]) -> ProtocolResult:
        result = ProtocolResult()
        labels = np.array([p.genuine for p in self.pairs])
        folds = np.array([p.fold for p in self.pairs])
        firsts = list(dict.fromkeys(p.first for p in self.pairs))
        position = {path: i for i, path in enumerate(firsts)}
        row_of = np.array([position[p.first] for p in self.pairs])
        for variant in self.variants(models):
            run = self.model_run(variant.model)
            gallery = run.gallery({path: path for path in firsts}, variant.synthetic)
            probes = run.lfw([p.second for p in self.pairs], MASK)
            scores = pair_scores(probes, gallery, self.scorer(variant, True), variant.synthetic, row_of)
            name = "baseline" if variant == Variant("sface") else variant.name
            row = {
                "accuracy": k_fold_accuracy(scores, labels, folds).mean,
                "non_train_accuracy": self._non_train_accuracy(scores),
                "pairs_without_face": int((~np.isfinite(scores)).sum()),
            }
            for far in (1e-2, 1e-3):
                row[f"tar_far_{far:g}"] = tar_at_far(scores[labels], scores[~labels], far).true_accept_rate
            row.update(self._b_test_split(variant))
            result.rows[name] = row
            result.curves.setdefault("roc", {})[name] = roc_points(scores[labels], scores[~labels])
        return result

    def _non_train_accuracy(self, scores: np.ndarray) -> float:
        """10-fold accuracy on the pairs whose people are all outside the "train" split (what a model or
        parameter fitted on "train" never saw; pairs.txt's own folds)."""
        keep = np.array(
            [
                split_name(identity_of(p.first)) != "train" and split_name(identity_of(p.second)) != "train"
                for p in self.pairs
            ],
            bool,
        )
        labels = np.array([p.genuine for p in self.pairs])[keep]
        if labels.all() or not labels.any():
            return float("nan")
        return k_fold_accuracy(scores[keep], labels, np.array([p.fold for p in self.pairs])[keep]).mean

    def _b_test_split(self, variant: Variant) -> dict:
        """(b'): test-split identities, masked probe vs enrolled subject, every probe x every subject."""
        run = self.model_run(variant.model)
        data = run.split_data("test", variant.synthetic)
        if not data.identities:
            return {}
        scorer = self.scorer(variant, True)
        subjects = {s: i for i, s in enumerate(data.gallery.subjects)}
        genuine = pair_scores(
            data.masked_probes,
            data.gallery,
            scorer,
            variant.synthetic,
            np.array([subjects[i] for i in data.identities]),
        )
        from workers.evaluation.identification import subject_scores

        impostors = []
        for start in range(0, len(data.identities), 256):
            block = slice(start, start + 256)
            scores = subject_scores(data.masked_probes[block], data.gallery, scorer, variant.synthetic)
            rows = np.arange(scores.shape[0])
            scores[rows, [subjects[i] for i in data.identities[block]]] = np.nan
            impostors.append(scores[~np.isnan(scores)])
        impostor = np.concatenate(impostors)
        genuine = np.where(np.isfinite(genuine), genuine, -np.inf)
        row = {"test_genuine": int(genuine.size), "test_impostors": int(impostor.size)}
        for far in (1e-3, 1e-4):
            row[f"test_tar_far_{far:g}"] = tar_at_far(genuine, impostor, far).true_accept_rate
            if variant.scoring == "mask-aware" and variant.synthetic:
                calibration, _ = run.calibration(variant.synthetic)
                threshold = calibration.threshold(True, far)
                row[f"test_tar_at_calibrated_{far:g}"] = float((genuine >= threshold).mean())
                row[f"test_far_at_calibrated_{far:g}"] = float((impostor >= threshold).mean())
        return row

    # -- (c) -------------------------------------------------------------------------------------------------

    def protocol_c(self, models: list[str]) -> ProtocolResult:
        result = ProtocolResult()
        split = self.split
        mated_ids = [identity_of(p) for p in split.mated_probes]
        test_rows = np.array([split_name(i) == "test" for i in mated_ids], bool)
        sface = self.model_run("sface").extractor
        mask_types = sface.field("lfw", [key_for(p, MASK) for p in split.mated_probes], "mask_type")
        # Probes wearing a mask type the enrollment augmentation never draws (N95, cloth, textured cloth,
        # green or coloured surgical): how much of the gain is the probe's mask matching a template's.
        unseen_rows = np.array([str(t) not in DEFAULT_MASK_TYPES[:4] for t in mask_types], bool)
        subsets = {"test": test_rows, "unseen_mask": unseen_rows}
        rwmfd = [key_for(p, "plain") for p in rwmfd_paths(self.config.rwmfd_dir, limit=self.config.limit)]
        rwmfd = [k for k, f in zip(rwmfd, sface.field("rwmfd", rwmfd, "found"), strict=True) if f]
        result.extra = {
            "enrolled_identities": len(split.gallery),
            "held_out_identities": len({identity_of(p) for p in split.non_mated_probes}),
            "mated_probes": len(split.mated_probes),
            "mated_probes_test_split": int(test_rows.sum()),
            "non_mated_probes": len(split.non_mated_probes),
            "mated_probes_unseen_mask_type": int(unseen_rows.sum()),
            "rwmfd_faces": len(rwmfd),
        }
        experiments = []
        if self.config.cohort_size:
            for model in ["sface", *[m for m in models if m != "sface"]]:
                experiments.append(Variant(model, cohort=self.config.cohort_size))
                if self.config.synthetic_counts:
                    k = max(self.config.synthetic_counts)
                    experiments.append(Variant(model, k, "mask-aware", cohort=self.config.cohort_size))
        for variant in [None, *self.variants(models), *experiments]:
            run = self.model_run(variant.model if variant else "sface")
            synthetic = variant.synthetic if variant else 0
            gallery = run.gallery(split.gallery, synthetic)
            masked = variant is not None
            mated = run.lfw(split.mated_probes, MASK if masked else "plain")
            non_mated = run.lfw(split.non_mated_probes, MASK if masked else "plain")
            scorer = self.scorer(variant, True) if variant else naive_max
            cohort = variant.cohort if variant else 0
            scores = search(mated, mated_ids, non_mated, gallery, scorer, synthetic, cohort)
            if variant is None:
                name = "unmasked probes (reference, sface)"
            else:
                name = "baseline" if variant == Variant("sface") else variant.name
            result.rows[name] = row = _identification_row(scores, subsets, mated, non_mated)
            if variant is not None and rwmfd and "threshold" in row:
                # Real masked faces of people who are not enrolled: how many pass the FPIR-1% threshold.
                real = search(
                    np.zeros((0, gallery.original.shape[1])),
                    [],
                    run.extractor.embeddings("rwmfd", rwmfd),
                    gallery,
                    scorer,
                    synthetic,
                    cohort,
                )
                row["rwmfd_fpir_at_threshold"] = float((real.non_mated_top >= row["threshold"]).mean())
            if variant is not None:
                result.curves.setdefault("det", {})[name] = det_points(scores)
        for k in self.config.synthetic_counts:
            for model in models:
                result.extra.setdefault("calibrations", {})[f"{model} K={k}"] = self.model_run(
                    model
                ).calibration(k)[1]
        return result

    # -- (d) -------------------------------------------------------------------------------------------------

    def protocol_d(self, models: list[str]) -> ProtocolResult:
        result = ProtocolResult()
        run = self.model_run("sface")
        test_paths = [p for i in self.identities if split_name(i) == "test" for p in self.index[i]]
        train_paths = [p for i in self.identities if split_name(i) == "train" for p in self.index[i]]
        rwmfd = rwmfd_paths(self.config.rwmfd_dir, limit=self.config.limit)
        extractor = run.extractor
        rwmfd_keys = [key_for(p, "plain") for p in rwmfd]
        rwmfd_found = extractor.field("rwmfd", rwmfd_keys, "found").astype(bool)
        data = {}
        for label, paths in (("test", test_paths), ("train", train_paths)):
            keys_plain = [key_for(p, "plain") for p in paths]
            keys_mask = [key_for(p, MASK) for p in paths]
            found_plain = extractor.field("lfw", keys_plain, "found").astype(bool)
            found_mask = extractor.field("lfw", keys_mask, "found").astype(bool)
            data[label] = (
                [k for k, f in zip(keys_plain, found_plain, strict=True) if f],
                [k for k, f in zip(keys_mask, found_mask, strict=True) if f],
            )
        rwmfd_keys = [k for k, f in zip(rwmfd_keys, rwmfd_found, strict=True) if f]
        # Recall counts masked faces only: a bystander without a mask called unmasked is a right answer.
        rwmfd_masked = [
            rwmfd_face_is_masked(
                self.config.rwmfd_dir / "images" / path,
                x + width / 2,
                y + height / 2,
                width,
                self.config.rwmfd_dir,
            )
            for path, (x, y, width, height) in zip(
                [split_key(k)[0] for k in rwmfd_keys],
                extractor.field("rwmfd", rwmfd_keys, "bbox"),
                strict=True,
            )
        ]
        result.extra["rwmfd_faces_listed_not_masked"] = rwmfd_masked.count(False)
        rwmfd_keys = [k for k, masked in zip(rwmfd_keys, rwmfd_masked, strict=True) if masked]
        # The naive baseline: logistic regression on the SFace embedding, trained on "train" identities.
        classifiers = {"baseline": (_LinearProbe(run, data["train"]), extractor)}
        result.extra["baseline"] = (
            "logistic regression on SFace embeddings (LFW train split, plain vs masked)"
        )
        real = _load_mask_classifier()
        if isinstance(real, str):
            result.extra["mask_classifier"] = real
        else:
            # The pipeline's classifier reads the embedding network's activations: SFace's, and those of each
            # other model measured, since a student fine-tuned below conv_12 changes them. It reads them
            # before the landmark refiner re-aligns the faces it calls masked, so a model with the refiner
            # is classified on its network's run over YuNet's alignment.
            classifiers["mask_classifier"] = (real, extractor)
            for network in dict.fromkeys(model.removesuffix(REFINED) for model in models):
                if network != "sface":
                    classifiers[f"mask_classifier on {network}"] = (real, self.model_run(network).extractor)
        for name, (classifier, activations) in classifiers.items():
            plain_keys, mask_keys = data["test"]
            predicted_plain = _predict(classifier, activations, "lfw", plain_keys)
            predicted_mask = _predict(classifier, activations, "lfw", mask_keys)
            predicted_rwmfd = _predict(classifier, activations, "rwmfd", rwmfd_keys)
            precision, recall = precision_recall(
                np.concatenate([predicted_plain, predicted_mask]),
                np.concatenate([np.zeros(len(plain_keys), bool), np.ones(len(mask_keys), bool)]),
            )
            result.rows[name] = {
                "lfw_precision": precision,
                "lfw_recall": recall,
                "lfw_unmasked_called_masked": float(predicted_plain.mean()) if plain_keys else float("nan"),
                "rwmfd_recall": float(predicted_rwmfd.mean()) if rwmfd_keys else float("nan"),
                "lfw_plain_faces": len(plain_keys),
                "lfw_masked_faces": len(mask_keys),
                "rwmfd_faces": len(rwmfd_keys),
            }
        return result

    # -- (e) -------------------------------------------------------------------------------------------------

    def protocol_e(self, models: list[str]) -> ProtocolResult:
        result = ProtocolResult()
        run = self.model_run("sface")
        paths = rwmfd_paths(self.config.rwmfd_dir, limit=self.config.limit)
        detected = run.extractor.field("rwmfd", [key_for(p, "plain") for p in paths], "faces_detected")
        single = _single_pass_detection(run, self.config, paths)
        if isinstance(single, str):
            result.extra["baseline"] = single
        else:
            result.rows["baseline"] = {
                "detection_rate": float((single >= 1).mean()),
                "images": len(paths),
                "faces": int(single.sum()),
            }
            result.extra["baseline"] = (
                "one whole-image YuNet pass (no rescan, tiles, close-ups or turned passes)"
            )
        result.rows["pipeline (YuNet, rescan + tiles + close-ups + turned)"] = {
            "detection_rate": float((detected >= 1).mean()),
            "images": len(paths),
            "faces": int(np.clip(detected, 0, None).sum()),
        }
        return result


def _fused(original, synthetic, *, probe_masked: bool, calibration: MaskAwareCalibration) -> np.ndarray:
    if synthetic is None:
        synthetic = np.full_like(original, np.nan)
    return fuse_kind_scores(original, synthetic, probe_masked=probe_masked, calibration=calibration)


def _rowwise_cosine(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    scores = np.einsum("nd,nd->n", first, second).astype(np.float64)
    scores[np.isnan(scores)] = -np.inf
    return scores


def _identification_row(
    scores: IdentificationScores, subsets: dict[str, np.ndarray], mated, non_mated
) -> dict:
    if not scores.non_mated_top.size:
        return {"rank1": rank1_rate(scores)}
    point = fnir_at_fpir(scores, 0.01)
    row = {
        "rank1": rank1_rate(scores),
        "fnir_at_fpir_1%": point.fnir,
        "fnir_at_fpir_1%_ci95": bootstrap_interval(scores, lambda s: fnir_at_fpir(s, 0.01).fnir),
        "rank1_ci95": bootstrap_interval(scores, rank1_rate),
        "fpir_achieved": point.fpir,
        "threshold": point.threshold,
        "mated_probes_without_face": int(np.isnan(mated[:, 0]).sum()) if len(mated) else 0,
        "non_mated_probes_without_face": int(np.isnan(non_mated[:, 0]).sum()) if len(non_mated) else 0,
    }
    for prefix, rows in subsets.items():
        if rows.any():  # mated probes of a subset against all non-mated ones (the same threshold)
            subset = IdentificationScores(
                scores.mated_true[rows], scores.mated_best_other[rows], scores.non_mated_top
            )
            row[f"{prefix}_rank1"] = rank1_rate(subset)
            row[f"{prefix}_fnir_at_fpir_1%"] = fnir_at_fpir(subset, 0.01).fnir
    return row


class _LinearProbe:
    """Logistic regression on SFace embeddings, plain vs masked LFW "train" faces: the naive mask detector."""

    def __init__(self, run: ModelRun, train: tuple[list[str], list[str]]) -> None:
        plain_keys, mask_keys = train
        store = run.extractor.embedding_store("lfw")
        features = np.concatenate([store.get(plain_keys), store.get(mask_keys)]).astype(np.float64)
        labels = np.concatenate([np.zeros(len(plain_keys)), np.ones(len(mask_keys))])
        self.run = run
        self.weights = _fit_logistic(features, labels)

    def predict_keys(self, dataset: str, keys: list[str]) -> np.ndarray:
        features = self.run.extractor.embedding_store(dataset).get(keys).astype(np.float64)
        return (features @ self.weights[:-1] + self.weights[-1]) > 0


def _fit_logistic(
    features: np.ndarray, labels: np.ndarray, l2: float = 1e-3, iterations: int = 30
) -> np.ndarray:
    design = np.hstack([features, np.ones((len(features), 1))])
    weights = np.zeros(design.shape[1])
    for _ in range(iterations):
        probabilities = 1 / (1 + np.exp(-np.clip(design @ weights, -30, 30)))
        gradient = design.T @ (probabilities - labels) + l2 * weights
        hessian = (design * (probabilities * (1 - probabilities))[:, None]).T @ design + l2 * np.eye(
            len(weights)
        )
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return weights


def _load_mask_classifier():
    try:
        return MaskClassifier.load()
    except Exception as error:  # its model file may not be built yet
        return f"MaskClassifier.load() failed: {error!r}"


def _predict(classifier, extractor: Extractor, dataset: str, keys: list[str]) -> np.ndarray:
    if not keys:
        return np.zeros(0, bool)
    if isinstance(classifier, _LinearProbe):
        return classifier.predict_keys(dataset, keys)
    # The pipeline's classifier sees what it sees in production: the lower-face activations of the run that
    # embeds the aligned crop.
    out = []
    store = extractor.faces(dataset)
    for start in range(0, len(keys), 256):
        lower_face = extractor.pipeline.embedder.describe(store.crops(keys[start : start + 256])).lower_face
        out.extend(bool(masked) for masked, _ in classifier.predict(lower_face))
    return np.array(out, bool)


def _single_pass_detection(run: ModelRun, config: EvaluationConfig, paths: list[str]):
    """faces found per RWMFD image by one whole-image YuNet pass (no rescan, tiles, close-ups or turned
    passes), cached as .npz."""
    from workers.pipeline import detection
    from workers.pipeline.intake import decode_image

    switched_off = {
        "_RESCAN_MIN_UPSCALE": float("inf"),
        "_MIN_TILE_MAGNIFICATION": float("inf"),
        "CLOSE_UP_FRACTIONS": (),
        "TURNED_SEARCH_DEGREES": (),
    }
    if not all(hasattr(detection, n) for n in switched_off):
        return "the detector's extra-pass switches changed; the single-pass baseline was not measured"
    cache = Path(config.cache_dir) / "detection-single-pass" / f"{run.extractor.recipe}.npz"
    known: dict[str, int] = {}
    if cache.is_file():
        with np.load(cache) as data:
            known = dict(zip([str(k) for k in data["paths"]], data["faces"].tolist(), strict=True))
    missing = [p for p in paths if p not in known]
    if missing:
        saved = {n: getattr(detection, n) for n in switched_off}
        try:
            for n, value in switched_off.items():
                setattr(detection, n, value)
            for path in missing:
                image = decode_image((Path(config.rwmfd_dir) / "images" / path).read_bytes())
                known[path] = len(run.pipeline.detector.detect(image))
        finally:
            for n, value in saved.items():
                setattr(detection, n, value)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, paths=np.array(list(known)), faces=np.array(list(known.values())))
    return np.array([known[p] for p in paths])
