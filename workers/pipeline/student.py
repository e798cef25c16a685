"""Visor's mask-robust embedding model: SFace's ONNX graph with the tensors Visor fine-tuned for masked faces.

SFace's weights are third-party and never committed. What Visor trained (workers/training/distill.py) is
committed as a delta per student (`weights/masked_student.npz`, `weights/masked_student_v2.npz`, listed in
STUDENTS): for every fine-tuned initializer, the difference student - SFace
in float16, plus the SHA-256 of the exact SFace file it applies to. `build_student_model` reads SFace, adds
the differences to those initializers and writes the student model; the graph, every other tensor and the
input contract (112x112 RGB, raw 0..255 values) are SFace's, so the pipeline runs it with an
`EmbeddingConfig` that differs from SFace's only in path and name (`config.embedding_config("student")`).

The patching rewrites protobuf fields directly (no `onnx` package needed at runtime), and the output is a
pure function of the two inputs: the same files always give the same bytes, so the SHA-256 can be pinned.

    python -m workers.pipeline.student [--model-dir var/models] [--verify]    # every committed student
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.pipeline import protobuf_wire
from workers.pipeline.config import DEFAULT_MODEL_DIR, SFACE_FILE, STUDENT_FILE, STUDENT_V2_FILE

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DELTA_FILE = WEIGHTS_DIR / "masked_student.npz"


@dataclass(frozen=True)
class CommittedStudent:
    """A student Visor ships: its key under "built" in infra/models.json, its delta, the file it builds and
    the last SFace tensor its distillation left as it was (workers.training.distill --student)."""

    name: str
    delta_path: Path
    file: str
    frozen_through: str


# Every student stays buildable, so galleries enrolled with an older one keep working until reembedded.
STUDENTS = (
    CommittedStudent("student", DELTA_FILE, STUDENT_FILE, frozen_through="conv_12_relu"),
    CommittedStudent(
        "student-v2", WEIGHTS_DIR / "masked_student_v2.npz", STUDENT_V2_FILE, frozen_through="conv_7_relu"
    ),
)
STUDENTS_BY_NAME = {student.name: student for student in STUDENTS}
MODELS_MANIFEST = Path(__file__).resolve().parents[2] / "infra" / "models.json"
DELTA_FORMAT = "visor-onnx-initializer-delta-v1"
# Keys of the .npz that are metadata, not tensors.
FORMAT_KEY = "__format__"
TEACHER_SHA256_KEY = "__teacher_sha256__"

# ONNX protobuf field numbers (onnx/onnx.proto), only those read or rewritten here.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DIMS = 1
_TENSOR_DATA_TYPE = 2
_TENSOR_FLOAT_DATA = 4
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9
_FLOAT = 1


class StudentBuildError(ValueError):
    """The delta file does not fit the teacher model it is applied to."""


def load_delta(delta_path: Path | str) -> tuple[str, dict[str, np.ndarray]]:
    """(teacher SHA-256, {initializer name: float16 difference}) from a delta .npz."""
    with np.load(delta_path, allow_pickle=False) as archive:
        if FORMAT_KEY not in archive or str(archive[FORMAT_KEY]) != DELTA_FORMAT:
            raise StudentBuildError(f"{delta_path} is not a {DELTA_FORMAT} file")
        teacher_sha256 = str(archive[TEACHER_SHA256_KEY])
        deltas = {name: archive[name] for name in archive.files if not name.startswith("__")}
    return teacher_sha256, deltas


def build_student_model(*, teacher_path: Path | str, delta_path: Path | str, output_path: Path | str) -> str:
    """Write the student ONNX model to `output_path`; returns its SHA-256 (hex).

    Raises StudentBuildError if the teacher is not the file the delta was trained from, or if a tensor of
    the delta is missing from the teacher or has another shape.
    """
    teacher_bytes = Path(teacher_path).read_bytes()
    teacher_sha256, deltas = load_delta(delta_path)
    actual_sha256 = hashlib.sha256(teacher_bytes).hexdigest()
    if actual_sha256 != teacher_sha256:
        raise StudentBuildError(
            f"{teacher_path} has SHA-256 {actual_sha256}, but {delta_path} was trained on {teacher_sha256}"
        )
    student_bytes = patch_initializers(teacher_bytes, deltas)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = output_path.with_name(f".{output_path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(student_bytes)
    temporary.replace(output_path)
    return hashlib.sha256(student_bytes).hexdigest()


def patch_initializers(model_bytes: bytes, deltas: dict[str, np.ndarray]) -> bytes:
    """`model_bytes` with each named float initializer replaced by (its value + delta) in float32."""
    remaining = dict(deltas)

    def patch_graph(graph: bytes) -> bytes:
        fields = []
        for number, wire_type, value in protobuf_wire.parse(graph):
            if number == _GRAPH_INITIALIZER and wire_type == protobuf_wire.WIRE_BYTES:
                value = _patch_tensor(value, remaining)
            fields.append((number, wire_type, value))
        return protobuf_wire.serialise(fields)

    fields = [
        (
            number,
            wire_type,
            patch_graph(value) if number == _MODEL_GRAPH and wire_type == protobuf_wire.WIRE_BYTES else value,
        )
        for number, wire_type, value in protobuf_wire.parse(model_bytes)
    ]
    if remaining:
        raise StudentBuildError(f"the teacher model has no initializers {sorted(remaining)}")
    return protobuf_wire.serialise(fields)


def _patch_tensor(tensor: bytes, remaining: dict[str, np.ndarray]) -> bytes:
    fields = protobuf_wire.parse(tensor)
    name = next(
        (v.decode("utf-8") for n, w, v in fields if n == _TENSOR_NAME and w == protobuf_wire.WIRE_BYTES), None
    )
    if name not in remaining:
        return tensor
    delta = remaining.pop(name)
    dims = protobuf_wire.repeated_varints(fields, _TENSOR_DIMS)
    if protobuf_wire.repeated_varints(fields, _TENSOR_DATA_TYPE) != [_FLOAT]:
        raise StudentBuildError(f"initializer {name} is not float32")
    if tuple(dims) != delta.shape:
        raise StudentBuildError(f"initializer {name} has shape {tuple(dims)}, the delta {delta.shape}")
    patched = []
    replaced = False
    for number, wire_type, value in fields:
        # Float data is either packed float_data or raw_data; both are little-endian float32 bytes.
        if number in (_TENSOR_FLOAT_DATA, _TENSOR_RAW_DATA) and wire_type == protobuf_wire.WIRE_BYTES:
            weights = np.frombuffer(value, dtype="<f4")
            if weights.size != delta.size:
                raise StudentBuildError(
                    f"initializer {name} holds {weights.size} values, the delta {delta.size}"
                )
            value = (weights + delta.astype("<f4").reshape(-1)).astype("<f4").tobytes()
            replaced = True
        elif number == _TENSOR_FLOAT_DATA:
            raise StudentBuildError(f"initializer {name} stores unpacked float_data; not supported")
        patched.append((number, wire_type, value))
    if not replaced:
        raise StudentBuildError(f"initializer {name} has no float data")
    return protobuf_wire.serialise(patched)


def pinned_sha256(name: str = "student", manifest_path: Path = MODELS_MANIFEST) -> str:
    """The SHA-256 infra/models.json pins for the student `name` built from its committed delta."""
    return json.loads(Path(manifest_path).read_text())["built"][name]["sha256"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="refuse (and remove) a build whose SHA-256 differs from the pin in infra/models.json",
    )
    args = parser.parse_args(argv)
    for student in STUDENTS:
        output = args.model_dir / student.file
        sha256 = build_student_model(
            teacher_path=args.model_dir / SFACE_FILE, delta_path=student.delta_path, output_path=output
        )
        pinned = pinned_sha256(student.name)
        if args.verify and sha256 != pinned:
            output.unlink()
            raise SystemExit(f"{output} has SHA-256 {sha256}; infra/models.json pins {pinned}")
        print(f"{output} sha256={sha256}")


if __name__ == "__main__":
    main()
