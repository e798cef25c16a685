"""Distil Visor's mask-robust face embedding from SFace (the teacher).

Reproduce (no make). On 2 shared CPU cores: about 30 min of one-time detection and alignment (cached), then
about 20 min for the frozen stem's features (cached) and about 3 min per epoch:

    python3 -m venv var/train-venv
    var/train-venv/bin/pip install torch==2.13.0 numpy opencv-python-headless pillow onnx onnxruntime
    var/train-venv/bin/python -m workers.training.distill --limit 3000 --epochs 3 --seed 0
    # student-v2, fine-tuned from conv_8 on (writes masked_student_v2.npz and visor-masked-student-v2.onnx):
    var/train-venv/bin/python -m workers.training.distill --student student-v2 --limit 9000 --epochs 4
    .venv/bin/python -m workers.training.distill --evaluate-only      # evaluation alone, no torch needed

Method (the issue's recipe, sized for a CPU):
- Data: LFW-a photos of the "train" split of workers.training.datasets (identity-disjoint by name hash),
  at most 10 per person, `--limit` in all; each detected with YuNet and aligned to the 112x112 ArcFace
  template by the production pipeline code, once (cached in var/distill/, git-ignored).
- Teacher: SFace's embedding of the PLAIN aligned crop, computed once with onnxruntime (FaceEmbedder).
- Student: initialised from SFace. Every BatchNorm is frozen (inference mode, running statistics and
  affine parameters fixed), as are dropout (off) and the 6.4M-weight pre_fc1 projection. The layers
  up to conv_12 (conv_7 for `--student student-v2`) are frozen too: they are run once per view with
  onnxruntime and their outputs cached, so each epoch runs only the fine-tuned blocks in torch (conv_13 and
  conv_14: 1.6M weights; conv_8 to conv_14: 2.9M).
- Masks: MaskTheFace templates warped onto the aligned crop with random tint, scale and shift
  (MaskSynthesizer.apply_aligned); `--mask-variants` masked versions per image, one drawn per epoch.
  `--masks-on-photo` draws them on the photo instead and aligns the masked photo again as the service does
  (YuNet, then the landmark refiner): MaskedViews.
- Loss: (1 - cos(student(masked), teacher(plain))) + plain_weight * (1 - cos(student(plain), teacher(plain))).
- Per epoch: the mean losses and a held-out check on val people (never trained on): cosine of the
  student's masked and plain embeddings to SFace's plain one, and masked rank-1 among them.
- Export: the fine-tuned tensors minus SFace's, in float16, to the student's delta (workers/pipeline/weights);
  workers.pipeline.student builds its model (var/models/visor-masked-student*.onnx) from SFace + that file.
- Evaluation (test people only, never trained on; SFace, the student and every other committed student built
  beside it, through FaceEmbedder (`--flip`: with mirror averaging) on the crops the
  production detector and aligner produce): pairs.txt accuracy on the pairs whose people are all outside
  the training split (10-fold, pairs.txt's own folds), masked rank-1 (gallery: first photo of each test
  person with 2+ photos; probes: their other photos with a mask drawn on the full photo, seed EVAL_SEED,
  then detected and aligned again, with `--refine-probes` from the landmark refiner's points as the service
  aligns the masked faces of student-v2-flip), TAR at FAR 1e-3 of masked probe vs unmasked gallery pairs,
  and McNemar tests of the student's rank-1 hits against each other model's. Written to
  var/distill/eval-report.json; docs/distillation.md has the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.pipeline import landmark_refiner
from workers.pipeline.alignment import align_face
from workers.pipeline.config import (
    DEFAULT_MODEL_DIR,
    REPO_ROOT,
    SFACE_FILE,
    YUNET_FILE,
    DetectionConfig,
    EmbeddingConfig,
)
from workers.pipeline.detection import FaceDetector
from workers.pipeline.embedding import FaceEmbedder
from workers.pipeline.intake import decode_image
from workers.pipeline.landmark_refiner import LandmarkRefiner
from workers.pipeline.student import STUDENTS_BY_NAME
from workers.training.datasets import LFW_DIR, lfw_images, split_of

CACHE_DIR = REPO_ROOT / "var" / "distill"
EMBED_BATCH = 64
SUBSET_SEED = 20240601
MAX_TRAIN_IMAGES_PER_IDENTITY = 10


@dataclass(frozen=True)
class FaceSet:
    """LFW images through the production detector and aligner, with the teacher's plain embeddings.

    Row i of every array is image `paths[i]` (relative to lfw/). Images where YuNet found no face are left
    out (`missing` lists them).
    """

    paths: np.ndarray  # (N,) str
    identities: np.ndarray  # (N,) str
    landmarks: np.ndarray  # (N, 5, 2) float32, source-image pixels
    bboxes: np.ndarray  # (N, 4) float32 x, y, w, h
    crops: np.ndarray  # (N, 112, 112, 3) uint8 BGR aligned crops
    teacher: np.ndarray  # (N, 128) float32 L2-normalised SFace embeddings of the plain crops
    missing: tuple[str, ...]

    def subset(self, keep: np.ndarray) -> FaceSet:
        return FaceSet(
            self.paths[keep],
            self.identities[keep],
            self.landmarks[keep],
            self.bboxes[keep],
            self.crops[keep],
            self.teacher[keep],
            self.missing,
        )


class Models:
    """The production detector, teacher embedder and landmark refiner, created once."""

    def __init__(self, model_dir: Path, threads: int) -> None:
        self.detector = FaceDetector(
            DetectionConfig(model_path=model_dir / YUNET_FILE), intra_op_threads=threads
        )
        self.teacher = FaceEmbedder.from_config(
            EmbeddingConfig(model_path=model_dir / SFACE_FILE), intra_op_threads=threads
        )
        self.refiner = LandmarkRefiner(intra_op_threads=threads)
        # Cached refined crops are redrawn when the refiner's weights or its code change.
        refiner_source = Path(landmark_refiner.__file__).read_bytes()
        self.refiner_version = hashlib.sha256(
            self.refiner.model_path.read_bytes() + refiner_source
        ).hexdigest()[:12]

    def realigned_crop(self, masked_image: np.ndarray, *, refine: bool) -> np.ndarray | None:
        """The aligned crop of the masked photo's central face from YuNet's points, with `refine` moved by the
        landmark refiner as the service does (every synthetic mask is called masked); None when YuNet finds
        no face."""
        face = self.central_face(masked_image)
        if face is None:
            return None
        points = face.landmark_array()
        return align_face(masked_image, self.refiner.refine(masked_image, [points])[0] if refine else points)

    def central_face(self, image: np.ndarray):
        """The detection nearest the image centre (LFW photos are centred on the labelled person), or None."""
        faces = self.detector.detect(image)
        if not faces:
            return None
        centre = np.array([image.shape[1] / 2, image.shape[0] / 2])
        return min(
            faces,
            key=lambda f: np.hypot(
                f.bbox.x + f.bbox.width / 2 - centre[0], f.bbox.y + f.bbox.height / 2 - centre[1]
            ),
        )


def read_pairs(lfw_dir: Path) -> list[tuple[str, str, bool, int]]:
    """pairs.txt as (first path, second path, genuine, fold), paths relative to lfw/."""

    def path(name: str, number: str) -> str:
        return f"{name}/{name}_{int(number):04d}.jpg"

    pairs = []
    for index, line in enumerate((lfw_dir / "pairs.txt").read_text().splitlines()[1:]):
        fields = line.split()
        if len(fields) == 3:
            pairs.append((path(fields[0], fields[1]), path(fields[0], fields[2]), True, index // 600))
        elif len(fields) == 4:
            pairs.append((path(fields[0], fields[1]), path(fields[2], fields[3]), False, index // 600))
    return pairs


def held_out_pairs(lfw_dir: Path) -> list[tuple[str, str, bool, int]]:
    """The pairs.txt pairs whose people are all outside the training split (val or test)."""
    return [
        p
        for p in read_pairs(lfw_dir)
        if split_of(p[0].split("/")[0]) != "train" and split_of(p[1].split("/")[0]) != "train"
    ]


def train_subset(lfw_dir: Path, limit: int | None) -> list[str]:
    """A seeded sample of training-split images, at most 10 per person so no one dominates (LFW has 530
    photos of George W. Bush); `limit` caps the total."""
    rng = np.random.default_rng(SUBSET_SEED)
    images = lfw_images("train", lfw_dir)
    order = rng.permutation(len(images))
    taken: Counter[str] = Counter()
    chosen = []
    for index in order:
        image = images[index]
        if taken[image.identity] < MAX_TRAIN_IMAGES_PER_IDENTITY:
            taken[image.identity] += 1
            chosen.append(f"{image.identity}/{image.path.name}")
    return chosen[:limit] if limit else chosen


def eval_paths(lfw_dir: Path) -> dict[str, list[str]]:
    """Images the evaluation needs: every test-split image, and the val images of the held-out pairs."""
    test = [f"{i.identity}/{i.path.name}" for i in lfw_images("test", lfw_dir)]
    val = sorted(
        {
            path
            for pair in held_out_pairs(lfw_dir)
            for path in pair[:2]
            if split_of(path.split("/")[0]) == "val"
        }
    )
    return {"test": test, "val": val}


def prepare_faces(name: str, paths: list[str], lfw_dir: Path, models: Models) -> FaceSet:
    """Detect + align + teacher-embed `paths`, reusing what var/distill/faces-<name>.npz already holds."""
    cache_file = CACHE_DIR / f"faces-{name}.npz"
    version = models.teacher.model_version
    done: dict[str, tuple] = {}
    missing: set[str] = set()
    if cache_file.exists():
        with np.load(cache_file) as archive:
            cached = {key: archive[key] for key in archive.files}  # each archive[key] reads the file again
        if str(cached["teacher_version"]) == version:
            for i, path in enumerate(cached["paths"].tolist()):
                done[path] = tuple(cached[key][i] for key in ("landmarks", "bboxes", "crops", "teacher"))
            missing = set(cached["missing"].tolist())
    todo = [p for p in paths if p not in done and p not in missing]
    if todo:
        print(f"[prepare {name}] detecting and aligning {len(todo)} images ({len(done)} cached)", flush=True)
        started = time.perf_counter()
        batch: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []

        def flush() -> None:
            if batch:
                embeddings = models.teacher.embed(np.stack([item[3] for item in batch]))
                for (path, points, box, crop), embedding in zip(batch, embeddings, strict=True):
                    done[path] = (points, box, crop, embedding)
                batch.clear()

        for count, path in enumerate(todo, 1):
            image = decode_image((lfw_dir / "lfw" / path).read_bytes())
            face = models.central_face(image)
            if face is None:
                missing.add(path)
            else:
                points = face.landmark_array()
                box = np.array([face.bbox.x, face.bbox.y, face.bbox.width, face.bbox.height], np.float32)
                batch.append((path, points, box, align_face(image, points)))
            if len(batch) >= EMBED_BATCH:
                flush()
            if count % 500 == 0 or count == len(todo):
                flush()
                _save_faces(cache_file, done, missing, version)
                rate = count / (time.perf_counter() - started)
                print(f"[prepare {name}] {count}/{len(todo)} ({rate:.1f} images/s)", flush=True)
    present = [p for p in paths if p in done]
    return FaceSet(
        paths=np.array(present),
        identities=np.array([p.split("/")[0] for p in present]),
        landmarks=np.stack([done[p][0] for p in present]).astype(np.float32),
        bboxes=np.stack([done[p][1] for p in present]).astype(np.float32),
        crops=np.stack([done[p][2] for p in present]),
        teacher=np.stack([done[p][3] for p in present]).astype(np.float32),
        missing=tuple(p for p in paths if p in missing),
    )


def _save_faces(cache_file: Path, done: dict[str, tuple], missing: set[str], version: str) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    paths = sorted(done)
    temporary = cache_file.with_suffix(".tmp.npz")
    np.savez(
        temporary,
        paths=np.array(paths),
        landmarks=np.stack([done[p][0] for p in paths]),
        bboxes=np.stack([done[p][1] for p in paths]),
        crops=np.stack([done[p][2] for p in paths]),
        teacher=np.stack([done[p][3] for p in paths]),
        missing=np.array(sorted(missing), dtype=str),
        teacher_version=np.array(version),
    )
    temporary.replace(cache_file)


# ---------------------------------------------------------------------------------------------------------
# Training (torch is imported lazily: the evaluation runs in the project venv too)

# Everything up to and including the stem output (the student's `frozen_through`) stays SFace's and is run
# once per view with onnxruntime; the student is SFace with the layers after it fine-tuned (except the
# 6.4M-weight pre_fc1 projection, frozen like every BatchNorm, so the committed delta stays small).
FROZEN_AFTER_STEM = ("pre_fc1_weight", "pre_fc1_bias")


def _masks_version() -> str:
    """Hash of the mask synthesiser's source: cached masked views are redrawn when it changes."""
    from workers.pipeline import masks

    return hashlib.sha256(Path(masks.__file__).read_bytes()).hexdigest()[:12]


def _path_key(path: str) -> int:
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")


def _to_tensor(crops_bgr: np.ndarray) -> np.ndarray:
    """Exactly FaceEmbedder.embed's preprocessing for SFace (BGR -> RGB, NCHW float32, raw 0..255)."""
    return np.ascontiguousarray(crops_bgr[..., ::-1].transpose(0, 3, 1, 2)).astype(np.float32)


def _stem_model(teacher_path: Path, stem_output: str):
    """The teacher graph cut at `stem_output`, with a free batch dimension (onnx package, training only)."""
    import onnx

    model = onnx.load(str(teacher_path))
    graph = model.graph
    kept = []
    for node in graph.node:
        kept.append(node)
        if stem_output in node.output:
            break
    needed = {name for node in kept for name in node.input}
    initializers = [t for t in graph.initializer if t.name in needed]
    data_input = [i for i in graph.input if i.name == "data"]
    del graph.node[:], graph.initializer[:], graph.input[:], graph.output[:], graph.value_info[:]
    graph.node.extend(kept)
    graph.initializer.extend(initializers)
    graph.input.extend(data_input)
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.output.append(
        onnx.helper.make_tensor_value_info(stem_output, onnx.TensorProto.FLOAT, ["batch", None, None, None])
    )
    return model


class MaskedViews:
    """Masked versions of a FaceSet's crops; the mask of image p, variant v, comes from
    Generator([seed, v, hash(p)]), whatever the order.

    on_photo=False: the mask is drawn on the aligned crop (MaskSynthesizer.apply_aligned), at exactly the
    plain face's place. on_photo=True: it is drawn on the photo at the plain face's landmarks and box, and the
    masked photo is detected and aligned again the way the service does (YuNet, then the landmark refiner), so
    the student learns from the crops it will be given, misplaced points included; where YuNet finds no face
    in the masked photo, the masked photo is aligned at the plain face's points.
    """

    def __init__(self, masks, *, on_photo: bool, models: Models, lfw_dir: Path) -> None:
        self.masks = masks
        self.on_photo = on_photo
        self.models = models
        self.lfw_dir = lfw_dir
        self.version = f"{_masks_version()}-photo-{models.refiner_version}" if on_photo else _masks_version()

    def crops(self, faces: FaceSet, rows: slice, *, seed: int, variant: int) -> np.ndarray:
        masked = []
        for row in range(*rows.indices(len(faces.paths))):
            path = faces.paths[row]
            rng = np.random.default_rng([seed, variant, _path_key(path)])
            if not self.on_photo:
                masked.append(self.masks.apply_aligned(faces.crops[row], rng=rng))
                continue
            photo = decode_image((self.lfw_dir / "lfw" / path).read_bytes())
            masked_photo = self.masks.apply(photo, faces.landmarks[row], tuple(faces.bboxes[row]), rng=rng)
            crop = self.models.realigned_crop(masked_photo, refine=True)
            masked.append(crop if crop is not None else align_face(masked_photo, faces.landmarks[row]))
        return np.stack(masked)


class StemRunner:
    """Runs the frozen stem with onnxruntime and caches its fp16 outputs under var/distill/."""

    def __init__(self, teacher_path: Path, stem_output: str, threads: int, masked_views: MaskedViews) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            _stem_model(teacher_path, stem_output).SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
        )
        self.teacher_sha256 = hashlib.sha256(teacher_path.read_bytes()).hexdigest()
        self.stem_output = stem_output
        self.masked_views = masked_views

    def features(self, faces: FaceSet, *, masked_seed: int | None, variant: int = 0) -> np.ndarray:
        """(N, C, H, W) float16 stem outputs of the plain crops, or of the masked views if `masked_seed`."""
        parts = [self.teacher_sha256, self.stem_output, faces.paths.tolist(), masked_seed, variant]
        if masked_seed is not None:
            parts.append(self.masked_views.version)
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
        cache_file = CACHE_DIR / f"stem-{key}.npy"
        if cache_file.exists():
            return np.load(cache_file, mmap_mode="r")
        started = time.perf_counter()
        outputs = []
        for first in range(0, len(faces.paths), EMBED_BATCH):
            rows = slice(first, first + EMBED_BATCH)
            if masked_seed is None:
                crops = faces.crops[rows]
            else:
                crops = self.masked_views.crops(faces, rows, seed=masked_seed, variant=variant)
            (stem,) = self.session.run([self.stem_output], {"data": _to_tensor(crops)})
            outputs.append(stem.astype(np.float16))
        result = np.concatenate(outputs)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        np.save(cache_file.with_suffix(".tmp.npy"), result)
        cache_file.with_suffix(".tmp.npy").replace(cache_file)
        view = f"masked variant {variant}" if masked_seed is not None else "plain"
        print(f"[stem] {len(result)} {view} views in {time.perf_counter() - started:.0f} s", flush=True)
        return result


def _onnx_tail(teacher_path: Path, stem_output: str):
    """The nodes after `stem_output` and all initializers of the teacher, as numpy arrays."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(teacher_path))
    nodes = list(model.graph.node)
    start = next(i for i, node in enumerate(nodes) if stem_output in node.output) + 1
    tail = [
        (
            node.op_type,
            list(node.input),
            node.output[0],
            {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute},
        )
        for node in nodes[start:]
    ]
    weights = {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}
    return tail, weights


def build_tail_module(teacher_path: Path, stem_output: str):
    """A torch module computing SFace from `stem_output` to the embedding, initialised from the ONNX file.

    Trainable: the convolution weights and PReLU slopes after the stem. Frozen: every BatchNorm (inference
    mode, running statistics and affine parameters fixed), pre_fc1, dropout (inference: identity).
    """
    import torch
    import torch.nn.functional as F

    tail, weights = _onnx_tail(teacher_path, stem_output)

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trainable_names = [
                inputs[1]
                for op, inputs, _, _ in tail
                if op in ("Conv", "PRelu") and inputs[1] not in FROZEN_AFTER_STEM
            ]
            self.params = torch.nn.ParameterDict(
                {name: torch.nn.Parameter(torch.tensor(weights[name])) for name in self.trainable_names}
            )
            used = {name for _, inputs, _, _ in tail for name in inputs[1:]} - set(self.trainable_names)
            for name in sorted(used):
                self.register_buffer(name, torch.from_numpy(weights[name]))

        def tensor(self, name: str):
            return self.params[name] if name in self.params else getattr(self, name)

        def forward(self, x):
            values = {stem_output: x}
            for op, inputs, output, attrs in tail:
                x = values[inputs[0]]
                w = [self.tensor(name) for name in inputs[1:]]
                if op == "Conv":
                    pads = attrs.get("pads", [0, 0, 0, 0])
                    if pads[:2] != pads[2:]:
                        raise NotImplementedError("asymmetric Conv padding")
                    y = F.conv2d(
                        x,
                        w[0],
                        w[1] if len(w) > 1 else None,
                        attrs.get("strides", 1),
                        pads[:2],
                        attrs.get("dilations", 1),
                        attrs.get("group", 1),
                    )
                elif op == "BatchNormalization":
                    y = F.batch_norm(x, w[2], w[3], w[0], w[1], False, 0.0, attrs.get("epsilon", 1e-5))
                elif op == "PRelu":
                    y = F.prelu(x, w[0].reshape(-1))
                elif op == "Dropout":
                    y = x
                elif op == "Flatten":
                    y = x.flatten(attrs.get("axis", 1))
                elif op == "Gemm":
                    if attrs.get("transB") != 1 or attrs.get("transA"):
                        raise NotImplementedError("Gemm without transB=1, transA=0")
                    y = F.linear(x, w[0], w[1])
                else:
                    raise NotImplementedError(f"ONNX op {op} after the stem")
                values[output] = y
            return y

    return Tail(), weights


@dataclass
class Monitor:
    """The held-out check printed every epoch: val people the student never trains on."""

    plain: np.ndarray
    masked: np.ndarray
    teacher: np.ndarray
    identities: np.ndarray

    def report(self, tail, label: str) -> dict[str, float]:
        import torch

        with torch.no_grad():

            def embed(stem):
                out = [
                    tail(torch.from_numpy(np.asarray(stem[i : i + 128], np.float32)))
                    for i in range(0, len(stem), 128)
                ]
                return torch.nn.functional.normalize(torch.cat(out), dim=1).numpy()

            plain, masked = embed(self.plain), embed(self.masked)
        gallery_rows, probe_rows = _gallery_and_probes(self.identities)
        result = {
            "cos_masked_to_teacher": float(np.mean(np.sum(masked * self.teacher, axis=1))),
            "cos_plain_to_teacher": float(np.mean(np.sum(plain * self.teacher, axis=1))),
            "masked_rank1": _rank1(
                plain[gallery_rows],
                self.identities[gallery_rows],
                masked[probe_rows],
                self.identities[probe_rows],
            ),
        }
        print(f"[held-out val {label}] " + "  ".join(f"{k}={v:.4f}" for k, v in result.items()), flush=True)
        return result


def train(args, models: Models, train_faces: FaceSet, monitor_faces: FaceSet) -> Path:
    """Distil, write the fp16 delta to `args.output` and build the student ONNX; returns the ONNX path."""
    import torch
    import torch.nn.functional as F

    from workers.pipeline.masks import MaskSynthesizer
    from workers.pipeline.student import (
        DELTA_FORMAT,
        FORMAT_KEY,
        TEACHER_SHA256_KEY,
        build_student_model,
    )

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    teacher_path = args.model_dir / SFACE_FILE
    masked_views = MaskedViews(
        MaskSynthesizer(args.templates_dir), on_photo=args.masks_on_photo, models=models, lfw_dir=args.lfw_dir
    )
    stems = StemRunner(teacher_path, args.student.frozen_through, args.threads, masked_views)

    started = time.perf_counter()
    plain = stems.features(train_faces, masked_seed=None)
    masked = [
        stems.features(train_faces, masked_seed=args.seed, variant=v) for v in range(args.mask_variants)
    ]
    monitor = Monitor(
        plain=stems.features(monitor_faces, masked_seed=None),
        masked=stems.features(monitor_faces, masked_seed=MONITOR_SEED),
        teacher=monitor_faces.teacher,
        identities=monitor_faces.identities,
    )
    print(f"[stem] features ready after {time.perf_counter() - started:.0f} s", flush=True)

    tail, weights = build_tail_module(teacher_path, args.student.frozen_through)
    tail.eval()  # BatchNorm in inference mode (running statistics fixed), dropout off
    monitor.report(tail, "epoch 0 = SFace")
    teacher = torch.from_numpy(train_faces.teacher)
    optimiser = torch.optim.Adam(tail.params.values(), lr=args.lr)
    steps_per_epoch = -(-len(plain) // args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    warmup = min(20, total_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: (
            (step + 1) / (warmup + 1)
            if step < warmup
            else 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total_steps - warmup)))
        ),
    )
    rng = np.random.default_rng(args.seed)
    training_started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.perf_counter()
        order = rng.permutation(len(plain))
        variants = rng.integers(args.mask_variants, size=len(plain))
        sums = np.zeros(2)
        for first in range(0, len(order), args.batch_size):
            rows = np.sort(order[first : first + args.batch_size])
            x_masked = np.stack([masked[variants[r]][r] for r in rows]).astype(np.float32)
            x_plain = np.asarray(plain[rows], np.float32)
            out = F.normalize(tail(torch.from_numpy(np.concatenate([x_masked, x_plain]))), dim=1)
            target = teacher[rows]
            loss_masked = (1 - (out[: len(rows)] * target).sum(1)).mean()
            loss_plain = (1 - (out[len(rows) :] * target).sum(1)).mean()
            loss = loss_masked + args.plain_weight * loss_plain
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            sums += np.array([loss_masked.item(), loss_plain.item()]) * len(rows)
        sums /= len(order)
        print(
            f"[epoch {epoch}/{args.epochs}] loss_masked={sums[0]:.4f} loss_plain={sums[1]:.4f} "
            f"lr={schedule.get_last_lr()[0]:.2e} {time.perf_counter() - epoch_started:.0f} s",
            flush=True,
        )
        monitor.report(tail, f"epoch {epoch}")
    print(f"[train] {args.epochs} epochs in {time.perf_counter() - training_started:.0f} s", flush=True)

    deltas = {
        name: (tail.params[name].detach().numpy() - weights[name]).astype(np.float16)
        for name in tail.trainable_names
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.output,
        **deltas,
        **{FORMAT_KEY: np.array(DELTA_FORMAT), TEACHER_SHA256_KEY: np.array(stems.teacher_sha256)},
    )
    print(
        f"[export] {len(deltas)} tensors, {sum(d.size for d in deltas.values()):,} values -> {args.output} "
        f"({args.output.stat().st_size / 1e6:.2f} MB)",
        flush=True,
    )
    student_path = args.model_dir / args.student.file
    sha256 = build_student_model(teacher_path=teacher_path, delta_path=args.output, output_path=student_path)
    print(f"[export] {student_path} sha256={sha256}", flush=True)

    # The ONNX student must compute what the torch student computes (up to the fp16 rounding of the delta).
    check = monitor_faces.subset(np.arange(min(32, len(monitor_faces.paths))))
    onnx_embeddings = FaceEmbedder(student_path, intra_op_threads=args.threads).embed(check.crops)
    with torch.no_grad():
        torch_embeddings = F.normalize(
            tail(torch.from_numpy(np.asarray(monitor.plain[: len(check.paths)], np.float32))), dim=1
        ).numpy()
    agreement = float(np.min(np.sum(onnx_embeddings * torch_embeddings, axis=1)))
    print(
        f"[export] min cosine(ONNX student, torch student) over {len(check.paths)} crops: {agreement:.6f}",
        flush=True,
    )
    if agreement < 0.999:
        raise RuntimeError("the exported student does not match the trained one")
    return student_path


# ---------------------------------------------------------------------------------------------------------
# Evaluation (numpy + the production pipeline only)

MONITOR_SEED = 7_000_001  # masks of the per-epoch val check
EVAL_SEED = 9_000_001  # masks of the test probes: never used in training


def _embed(embedder: FaceEmbedder, crops: np.ndarray) -> np.ndarray:
    """FaceEmbedder.embed in batches: one session.run over thousands of crops needs tens of GB."""
    batches = [embedder.embed(crops[i : i + EMBED_BATCH]) for i in range(0, len(crops), EMBED_BATCH)]
    return np.concatenate(batches)


def _gallery_and_probes(identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the first image of each person with 2+ images (gallery) and of their other images (probes)."""
    counts = Counter(identities.tolist())
    gallery, probes, seen = [], [], set()
    for row, identity in enumerate(identities):
        if counts[identity] < 2:
            continue
        (probes if identity in seen else gallery).append(row)
        seen.add(identity)
    return np.array(gallery, dtype=int), np.array(probes, dtype=int)


def _rank1_hits(
    gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray, probe_ids: np.ndarray
) -> np.ndarray:
    """Per probe: is its most similar gallery face the same person?"""
    return gallery_ids[np.argmax(probes @ gallery.T, axis=1)] == probe_ids


def _rank1(gallery: np.ndarray, gallery_ids: np.ndarray, probes: np.ndarray, probe_ids: np.ndarray) -> float:
    return float(np.mean(_rank1_hits(gallery, gallery_ids, probes, probe_ids)))


def mcnemar(hits_a: np.ndarray, hits_b: np.ndarray) -> dict[str, float | int]:
    """Probes only A gets right, only B gets right, and the exact two-sided McNemar p-value."""
    only_a, only_b = int(np.sum(hits_a & ~hits_b)), int(np.sum(hits_b & ~hits_a))
    discordant, fewer = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(discordant, k) for k in range(fewer + 1)) / 2**discordant if discordant else 0.5
    return {"only_a_right": only_a, "only_b_right": only_b, "p_value": min(1.0, 2 * tail)}


def _far_threshold(impostors: np.ndarray, far: float) -> float:
    ordered = np.sort(impostors)[::-1]
    return float(np.nextafter(ordered[int(np.floor(far * len(ordered)))], np.float32(np.inf)))


def _best_threshold(similarities: np.ndarray, labels: np.ndarray) -> float:
    candidates = np.unique(similarities)
    midpoints = np.concatenate([[candidates[0] - 1e-6], (candidates[:-1] + candidates[1:]) / 2])
    accuracies = [((similarities >= t) == labels).mean() for t in midpoints]
    return float(midpoints[int(np.argmax(accuracies))])


def masked_probe_crops(
    test: FaceSet, probe_rows: np.ndarray, lfw_dir: Path, models: Models, masks, *, refine: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Masked probes as production would see them: a mask drawn on the full photo (from its YuNet landmarks
    and box), then the masked photo detected and aligned again (from YuNet's points, or with `refine` from
    the landmark refiner's, as the service does). Returns (crops, detected)."""
    paths = test.paths[probe_rows].tolist()
    parts = [paths, EVAL_SEED, _masks_version()] + ([models.refiner_version] if refine else [])
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
    cache_file = CACHE_DIR / f"eval-masked-{key}.npz"
    if cache_file.exists():
        cached = np.load(cache_file)
        return cached["crops"], cached["detected"]
    started = time.perf_counter()
    crops = np.zeros((len(paths), 112, 112, 3), np.uint8)
    detected = np.zeros(len(paths), bool)
    for i, (row, path) in enumerate(zip(probe_rows, paths, strict=True)):
        image = decode_image((lfw_dir / "lfw" / path).read_bytes())
        masked = masks.apply(
            image,
            test.landmarks[row],
            tuple(test.bboxes[row]),
            rng=np.random.default_rng([EVAL_SEED, _path_key(path)]),
        )
        crop = models.realigned_crop(masked, refine=refine)
        if crop is not None:
            crops[i] = crop
            detected[i] = True
    np.savez(cache_file, crops=crops, detected=detected)
    print(
        f"[eval] masked {len(paths)} test probes in {time.perf_counter() - started:.0f} s; "
        f"YuNet found {detected.sum()} faces",
        flush=True,
    )
    return crops, detected


def evaluate(args, models: Models, test: FaceSet, val: FaceSet, student_path: Path) -> dict:
    from workers.pipeline.masks import MaskSynthesizer

    masks = MaskSynthesizer(args.templates_dir)
    gallery_rows, probe_rows = _gallery_and_probes(test.identities)
    probe_crops, detected = masked_probe_crops(
        test, probe_rows, args.lfw_dir, models, masks, refine=args.refine_probes
    )
    distractor_rows = np.setdiff1d(np.arange(len(test.paths)), np.concatenate([gallery_rows, probe_rows]))
    pairs = held_out_pairs(args.lfw_dir)

    def embedder(path: Path) -> FaceEmbedder:
        return FaceEmbedder(path, model_name=path.stem, intra_op_threads=args.threads, flip_average=args.flip)

    # SFace, the student evaluated, then every other committed student built beside it.
    embedders = {
        "SFace": embedder(args.model_dir / SFACE_FILE) if args.flip else models.teacher,
        args.student.name: embedder(student_path),
    }
    for other in STUDENTS_BY_NAME.values():
        if other.name != args.student.name and (student_path.parent / other.file).is_file():
            embedders[other.name] = embedder(student_path.parent / other.file)
    report: dict = {
        "test_people_with_2plus_images": len(gallery_rows),
        "masked_probes": len(probe_rows),
        "masked_probes_detected": int(detected.sum()),
        "distractors": len(distractor_rows),
        "held_out_pairs": len(pairs),
        "held_out_pairs_genuine": sum(p[2] for p in pairs),
        "mirror_averaged": args.flip,
        "probes_refined": args.refine_probes,
        "models": {},
    }
    hits: dict[str, dict[str, np.ndarray]] = {"masked_rank1": {}, "masked_rank1_with_distractors": {}}
    for name, model in embedders.items():
        started = time.perf_counter()
        if model is models.teacher:  # prepare_faces embedded these very crops with this very embedder
            plain, val_plain = test.teacher, val.teacher
        else:
            plain, val_plain = _embed(model, test.crops), _embed(model, val.crops)
        masked = _embed(model, probe_crops)
        masked[~detected] = 0.0  # an undetected masked face matches nothing
        ids = test.identities
        gallery, gallery_ids = plain[gallery_rows], ids[gallery_rows]
        probe_ids = ids[probe_rows]
        scores = masked @ gallery.T
        genuine = scores[probe_ids[:, None] == gallery_ids[None, :]]
        impostor = scores[probe_ids[:, None] != gallery_ids[None, :]]
        threshold = _far_threshold(impostor, 1e-3)
        plain_scores = plain[probe_rows] @ gallery.T
        plain_threshold = _far_threshold(plain_scores[probe_ids[:, None] != gallery_ids[None, :]], 1e-3)
        with_distractors = np.concatenate([gallery_rows, distractor_rows])
        hits["masked_rank1"][name] = _rank1_hits(gallery, gallery_ids, masked, probe_ids)
        hits["masked_rank1_with_distractors"][name] = _rank1_hits(
            plain[with_distractors], ids[with_distractors], masked, probe_ids
        )

        by_path = {p: e for p, e in zip(test.paths.tolist(), plain, strict=True)}
        by_path.update(zip(val.paths.tolist(), val_plain, strict=True))
        similarities = np.array(
            [
                float(by_path[a] @ by_path[b]) if a in by_path and b in by_path else -1.0
                for a, b, _, _ in pairs
            ]
        )
        labels = np.array([p[2] for p in pairs])
        folds = np.array([p[3] for p in pairs])
        correct = 0
        for fold in range(10):
            threshold_fold = _best_threshold(similarities[folds != fold], labels[folds != fold])
            correct += int(((similarities[folds == fold] >= threshold_fold) == labels[folds == fold]).sum())
        report["models"][name] = {
            "model_version": model.model_version,
            "held_out_pairs_accuracy_10fold": correct / len(pairs),
            "unmasked_rank1": _rank1(gallery, gallery_ids, plain[probe_rows], probe_ids),
            "masked_rank1": float(np.mean(hits["masked_rank1"][name])),
            "masked_rank1_with_distractors": float(np.mean(hits["masked_rank1_with_distractors"][name])),
            "masked_vs_unmasked_tar_at_far_1e-3": float(np.mean(genuine >= threshold)),
            "masked_vs_unmasked_threshold_far_1e-3": threshold,
            "unmasked_tar_at_far_1e-3": float(
                np.mean(plain_scores[probe_ids[:, None] == gallery_ids[None, :]] >= plain_threshold)
            ),
            "impostor_pairs": len(impostor),
            "embed_seconds": time.perf_counter() - started,
        }
    # Paired comparison with every other model (McNemar): probes only one of the two gets right.
    report["paired"] = {
        f"{args.student.name} vs {other}": {
            metric: mcnemar(by_model[args.student.name], by_model[other]) for metric, by_model in hits.items()
        }
        for other in embedders
        if other != args.student.name
    }
    print(json.dumps(report, indent=2), flush=True)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / "eval-report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lfw-dir", type=Path, default=LFW_DIR)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument(
        "--templates-dir",
        type=Path,
        default=None,
        help="mask templates (default: ../shared/data/mask_templates)",
    )
    parser.add_argument(
        "--student",
        choices=sorted(STUDENTS_BY_NAME),
        default="student",
        help="which committed student to train or evaluate: how deep it is fine-tuned (student: conv_13 on, "
        "student-v2: conv_8 on), its delta and its model file",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where the fp16 delta .npz goes "
        "(default: the student's committed delta in workers/pipeline/weights)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--limit", type=int, default=3000, help="training images (train split, <=10 per person)"
    )
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--mask-variants", type=int, default=2, help="masked versions per training image")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--plain-weight", type=float, default=1.0)
    parser.add_argument("--monitor", type=int, default=400, help="val images in the per-epoch held-out check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--masks-on-photo",
        action="store_true",
        help="draw the training masks on the photo and align the masked photo again as the service does "
        "(YuNet + landmark refiner), instead of drawing them on the aligned crop",
    )
    parser.add_argument(
        "--refine-probes",
        action="store_true",
        help="align every masked test probe from the landmark refiner's points, for every model evaluated "
        "(the service does so for the models in REFINED_LANDMARK_MODELS, on faces called masked)",
    )
    parser.add_argument("--prepare-only", action="store_true", help="only detect, align and teacher-embed")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the student's built model")
    parser.add_argument("--no-evaluate", action="store_true")
    parser.add_argument(
        "--flip", action="store_true", help="evaluate with mirror averaging, as the -flip models are served"
    )
    args = parser.parse_args(argv)
    args.student = STUDENTS_BY_NAME[args.student]
    args.output = args.output or args.student.delta_path

    models = Models(args.model_dir, args.threads)
    faces = {
        name: prepare_faces(name, paths, args.lfw_dir, models)
        for name, paths in eval_paths(args.lfw_dir).items()
    }
    if not args.evaluate_only:
        faces["train"] = prepare_faces("train", train_subset(args.lfw_dir, args.limit), args.lfw_dir, models)
    for name, face_set in faces.items():
        print(
            f"[data] {name}: {len(face_set.paths)} faces of {len(set(face_set.identities))} people "
            f"({len(face_set.missing)} images without a detected face)",
            flush=True,
        )
    if args.prepare_only:
        return
    student_path = args.model_dir / args.student.file
    if not args.evaluate_only:
        train_ids = set(faces["train"].identities)
        if train_ids & (set(faces["val"].identities) | set(faces["test"].identities)):
            raise AssertionError("a training identity is in val or test")
        val = faces["val"]
        monitor_rows = np.flatnonzero(
            np.isin(val.identities, [k for k, v in Counter(val.identities.tolist()).items() if v >= 2])
        )
        student_path = train(args, models, faces["train"], val.subset(monitor_rows[: args.monitor]))
    if not args.no_evaluate:
        evaluate(args, models, faces["test"], faces["val"], student_path)


if __name__ == "__main__":
    main()
