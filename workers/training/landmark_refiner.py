"""Train the masked-face landmark refiner (workers/pipeline/weights/masked_landmark_refiner.onnx).

The committed weights came from this script with its defaults (val RMS error 1.451 px after 25 epochs);
torch on several threads is not bit-exact, so a rerun gives weights that differ slightly.

    python3 -m venv var/train-venv
    var/train-venv/bin/pip install torch==2.13.0 numpy opencv-python-headless pillow onnx onnxruntime
    var/train-venv/bin/python -m workers.training.landmark_refiner     # ~4 min data + ~13 min training

Data (identity-disjoint splits of workers.training.datasets; every choice seeded):
- Each LFW-a photo of the split is placed on a 640x480 grey canvas at a random scale (0.5-1.6), rotation
  (+-12 degrees) and position, and YuNet finds its plain landmarks there.
- `MASKS_PER_PHOTO` times: a synthetic mask of a random type, tint, height and shape is drawn from those
  landmarks (MaskSynthesizer.apply), the photo is sometimes blurred and JPEG-compressed, and YuNet runs
  again on the masked photo, as the pipeline would. The input is the masked face aligned from those
  detected points (grey 112x112, pooled to 56x56 by the runtime's own `network_input`); the target is
  where the plain photo's points fall in that crop.
- train: the "train" people (the ones the students trained on); val: "val" people, for the per-epoch
  check. Test people are left for the evaluation (workers.evaluation, docs/accuracy.md).

Network: four 3x3 convolutions (16-32-64-96 channels, batch norm, ReLU, 2x2 max pooling after the first
three) and two fully connected layers (128, 10), 0.68M weights; smooth-L1 loss on the offsets from the
alignment template, AdamW with a one-cycle schedule, mirroring (points swapped) and brightness/contrast
jitter. Exported to ONNX with a free batch dimension.
"""

from __future__ import annotations

import argparse
import itertools
import time
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

from workers.pipeline.alignment import ALIGNED_SIZE, ARCFACE_TEMPLATE, alignment_matrix, transformed
from workers.pipeline.config import DEFAULT_MODEL_DIR, YUNET_FILE, DetectionConfig
from workers.pipeline.detection import FaceDetector, nearest_face
from workers.pipeline.landmark_refiner import (
    DEFAULT_WEIGHTS_PATH,
    INPUT_SIZE,
    MIRRORED_ORDER,
    OFFSET_SCALE,
    grey_aligned_crop,
    inter_ocular_distance,
    network_input,
)
from workers.pipeline.masks import MaskSynthesizer
from workers.training.datasets import LFW_DIR, REPO_ROOT, Split, lfw_images, read_bgr

DATA_DIR = REPO_ROOT / "var" / "landmark-refiner"
# Names the prepared data's recipe (bump it with any change to `_photo_samples` or to what the detector
# finds), so that a changed recipe never trains on samples prepared by the old one. "r2": the detector
# searches photos without a face again (close-ups, turned), which adds samples YuNet missed before; the
# committed weights were trained on "r1" samples.
DATA_RECIPE = "r2"
MASKS_PER_PHOTO = 3
CANVAS_WIDTH, CANVAS_HEIGHT = 640, 480

_worker: dict[str, object] = {}


def _start_worker(model_dir: Path) -> None:
    config = DetectionConfig(model_path=Path(model_dir) / YUNET_FILE)
    _worker["detector"] = FaceDetector(config, intra_op_threads=1)
    _worker["synthesizer"] = MaskSynthesizer()


def _photo_samples(job: tuple[int, str, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(grey masked crop aligned from YuNet's masked points, plain points in that crop) per drawn mask."""
    index, path, seed = job
    detector: FaceDetector = _worker["detector"]  # type: ignore[assignment]
    synthesizer: MaskSynthesizer = _worker["synthesizer"]  # type: ignore[assignment]
    rng = np.random.default_rng([seed, index])
    photo = read_bgr(Path(path))
    scale = float(np.exp(rng.uniform(np.log(0.5), np.log(1.6))))
    angle = float(rng.uniform(-12.0, 12.0))
    centre = np.array([CANVAS_WIDTH / 2 + rng.uniform(-80, 80), CANVAS_HEIGHT / 2 + rng.uniform(-50, 50)])
    photo_centre = (photo.shape[1] / 2, photo.shape[0] / 2)
    placement = cv2.getRotationMatrix2D(photo_centre, angle, scale)
    placement[:, 2] += centre - np.array(photo_centre)
    canvas = cv2.warpAffine(
        photo, placement, (CANVAS_WIDTH, CANVAS_HEIGHT), flags=cv2.INTER_LINEAR, borderValue=(128, 128, 128)
    )
    plain = nearest_face(detector.detect(canvas), centre)
    if plain is None:
        return []
    plain_points = plain.landmark_array()
    inter_ocular = inter_ocular_distance(plain_points)
    samples = []
    for _ in range(MASKS_PER_PHOTO):
        masked = _degraded(synthesizer.apply(canvas, plain_points, plain.bbox, rng=rng), rng)
        found = nearest_face(detector.detect(masked), plain_points.mean(axis=0))
        if found is None:
            continue
        detected_points = found.landmark_array()
        if np.linalg.norm(detected_points.mean(axis=0) - plain_points.mean(axis=0)) > inter_ocular:
            continue  # another face
        matrix = alignment_matrix(detected_points)
        target = transformed(plain_points, matrix)
        samples.append((grey_aligned_crop(masked, matrix), target.astype(np.float32)))
    return samples


def _degraded(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sometimes blurred, sometimes JPEG-compressed: real photos are softer than LFW-a."""
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.5, 1.5)))
    if rng.random() < 0.5:
        quality = int(rng.integers(40, 96))
        encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]
        image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return image


def prepare(split: Split, *, seed: int, lfw_dir: Path, model_dir: Path, processes: int) -> Path:
    """Write (or reuse) the split's samples to var/landmark-refiner/<split>-<seed>-<recipe>.npz."""
    output = DATA_DIR / f"{split}-{seed}-{DATA_RECIPE}.npz"
    if output.exists():
        return output
    photos = lfw_images(split, lfw_dir)
    jobs = [(index, str(photo.path), seed) for index, photo in enumerate(photos)]
    crops, targets = [], []
    started = time.perf_counter()
    with Pool(processes, initializer=_start_worker, initargs=(model_dir,)) as pool:
        for done, samples in enumerate(pool.imap(_photo_samples, jobs, chunksize=16), 1):
            for crop, target in samples:
                crops.append(crop)
                targets.append(target)
            if done % 1000 == 0 or done == len(jobs):
                print(
                    f"[{split}] {done}/{len(jobs)} photos, {len(crops)} samples, "
                    f"{time.perf_counter() - started:.0f}s",
                    flush=True,
                )
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, crops=np.stack(crops), targets=np.stack(targets))
    return output


def train(train_file: Path, val_file: Path, *, epochs: int, seed: int, output: Path) -> None:
    import torch
    from torch import nn
    from torch.nn import functional

    torch.manual_seed(seed)
    template = torch.tensor(ARCFACE_TEMPLATE, dtype=torch.float32)

    def load(path: Path):
        data = np.load(path)
        return torch.from_numpy(network_input(data["crops"])), torch.from_numpy(data["targets"])

    class Refiner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            channels = [1, 16, 32, 64, 96]
            self.convs = nn.ModuleList(
                nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in itertools.pairwise(channels)
            )
            self.norms = nn.ModuleList(nn.BatchNorm2d(c) for c in channels[1:])
            side = INPUT_SIZE // 8
            self.hidden = nn.Linear(channels[-1] * side * side, 128)
            self.out = nn.Linear(128, 10)

        def forward(self, x):
            for depth, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
                x = functional.relu(norm(conv(x)))
                if depth < 3:
                    x = functional.max_pool2d(x, 2)
            return self.out(functional.relu(self.hidden(x.flatten(1))))

    def scaled_offsets(points):
        return ((points - template) / OFFSET_SCALE).flatten(1)

    def mirrored(x, points):
        points = points.clone()
        points[..., 0] = (ALIGNED_SIZE - 1) - points[..., 0]
        return x.flip(3), points[:, MIRRORED_ORDER]

    x_train, y_train = load(train_file)
    x_val, y_val = load(val_file)
    baseline = ((y_val - template) ** 2).mean().sqrt().item()
    print(
        f"{len(x_train)} training and {len(x_val)} validation samples; "
        f"validation RMS error of YuNet's masked points {baseline:.3f} px",
        flush=True,
    )
    model = Refiner()
    batch = 128
    steps_per_epoch = len(x_train) // batch
    optimiser = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=epochs * steps_per_epoch)
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x_train))
        for step in range(steps_per_epoch):
            rows = order[step * batch : (step + 1) * batch]
            x, points = x_train[rows], y_train[rows]
            if torch.rand(()) < 0.5:
                x, points = mirrored(x, points)
            contrast = 1 + 0.2 * (torch.rand(len(x), 1, 1, 1) - 0.5)
            x = x * contrast + 0.2 * (torch.rand(len(x), 1, 1, 1) - 0.5)
            loss = functional.smooth_l1_loss(model(x), scaled_offsets(points))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            predicted = model(x_val).view(-1, 5, 2) * OFFSET_SCALE + template
            error = ((predicted - y_val) ** 2).mean().sqrt().item()
        print(
            f"epoch {epoch + 1}/{epochs}: validation RMS error {error:.3f} px "
            f"({time.perf_counter() - started:.0f}s)",
            flush=True,
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        torch.zeros(1, 1, INPUT_SIZE, INPUT_SIZE),
        str(output),
        input_names=["crop"],
        output_names=["offsets"],
        dynamic_axes={"crop": {0: "batch"}, "offsets": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    print(f"wrote {output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lfw-dir", type=Path, default=LFW_DIR)
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--output", type=Path, default=DEFAULT_WEIGHTS_PATH)
    args = parser.parse_args(argv)
    common = {"lfw_dir": args.lfw_dir, "model_dir": args.model_dir, "processes": args.processes}
    train_file = prepare("train", seed=args.seed, **common)
    val_file = prepare("val", seed=args.seed + 1, **common)
    import torch

    torch.set_num_threads(args.processes)
    train(train_file, val_file, epochs=args.epochs, seed=args.seed, output=args.output)


if __name__ == "__main__":
    main()
