"""Configuration of the face pipeline as plain frozen dataclasses.

The Django layer builds these from the environment (VISOR_MODEL_DIR, VISOR_ONNX_THREADS, ...); nothing here
reads the environment itself, so the pipeline runs the same in a worker, a test or an evaluation script.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO_ROOT / "var" / "models"
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
SFACE_FILE = "face_recognition_sface_2021dec.onnx"
# Built by `python -m workers.pipeline.student` from SFace and Visor's committed fine-tuned tensors.
STUDENT_FILE = "visor-masked-student.onnx"
# The second student: conv_8 .. conv_14 fine-tuned instead of conv_13 .. conv_14 (docs/distillation.md).
STUDENT_V2_FILE = "visor-masked-student-v2.onnx"


@dataclass(frozen=True)
class IntakeLimits:
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000


@dataclass(frozen=True)
class DetectionConfig:
    model_path: Path = DEFAULT_MODEL_DIR / YUNET_FILE
    score_threshold: float = 0.6
    nms_iou_threshold: float = 0.3
    # Faces are found down to ~10 px at the network input. A whole-image pass over a photo whose long side is
    # much larger than the 640 px input misses small faces, so such photos also get a pass over overlapping
    # tiles of `tile_size` source pixels (at most `max_tiles`; tiles grow to stay under the cap).
    tile_size: int = 1280
    tile_overlap: float = 0.25
    max_tiles: int = 16
    # Never enlarge the image more than this to fill the input: enlarging a thumbnail past ~2.5x adds no
    # detail and makes the network see faces larger than it was trained on.
    max_upscale: float = 2.5


@dataclass(frozen=True)
class QualityFloors:
    """Thresholds below (or above) which a face gets the corresponding quality issue."""

    min_inter_eye_px: float
    min_sharpness: float
    min_brightness: float
    max_brightness: float
    max_yaw_deg: float
    max_pitch_deg: float
    max_roll_deg: float
    min_detection_score: float


# Enrollment templates are what every later search is compared with, so they must be good: sharp, well lit,
# large enough and not far from frontal. Identification accepts what cameras really produce and lets the score
# decide. The yaw floor is where templates start to fail, not where faces stop looking frontal (`python -m
# workers.evaluation.enrollment_floors --model student-flip`: 1,373 LFW photos of 483 people the student
# never trained on; same-person pairs at the FAR 1e-3 threshold): templates turned 30-40 degrees matched
# 96.8%, 0-15 degrees 98.4%. A 30-degree floor refused 7.8% of those photos to save about one point on
# them; a refused enrollment leaves the person unfindable.
ENROLL_FLOORS = QualityFloors(
    min_inter_eye_px=32.0,
    min_sharpness=60.0,
    min_brightness=60.0,
    max_brightness=210.0,
    max_yaw_deg=45.0,
    max_pitch_deg=25.0,
    max_roll_deg=30.0,
    min_detection_score=0.8,
)
IDENTIFY_FLOORS = QualityFloors(
    min_inter_eye_px=16.0,
    min_sharpness=20.0,
    min_brightness=35.0,
    max_brightness=230.0,
    max_yaw_deg=50.0,
    max_pitch_deg=40.0,
    max_roll_deg=60.0,
    min_detection_score=0.6,
)


# Enrollment refuses a photo with several faces (unless asked for the largest) only when another face is at
# least this fraction of the largest's box area, i.e. at least half its width: smaller ones are background.
RIVAL_FACE_AREA_RATIO = 0.25


@dataclass(frozen=True)
class QualityConfig:
    enroll: QualityFloors = ENROLL_FLOORS
    identify: QualityFloors = IDENTIFY_FLOORS

    def floors_for(self, purpose: str) -> QualityFloors:
        if purpose == "enroll":
            return self.enroll
        if purpose == "identify":
            return self.identify
        raise ValueError(f"purpose must be 'enroll' or 'identify', not {purpose!r}")


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which ONNX embedding model to run and how it wants its 112x112 aligned crops.

    The defaults describe SFace (RGB, raw 0..255 values); a replacement model with the same interface only
    needs a different path, name and, if it was trained so, a different channel order or normalisation.

    `lower_face_tensor` names a (N, C, H, W) feature map inside the network that the mask classifier reads
    (workers/pipeline/mask_classifier.py); None turns mask classification off. The classifier was fitted on
    SFace's `conv_12_relu`, which the first student shares (its distillation left conv_1 .. conv_12 alone);
    student-v2 fine-tuned conv_8 onwards, and the same classifier reads its `conv_12_relu` as well (measured
    in docs/distillation.md).

    `flip_average` embeds every crop together with its mirror image and keeps the normalised sum: twice the
    embedding compute for embeddings that a misplaced landmark or an asymmetric mask moves less.
    """

    model_path: Path = DEFAULT_MODEL_DIR / SFACE_FILE
    model_name: str = "sface-2021dec"
    channel_order: str = "rgb"
    input_mean: float = 0.0
    input_scale: float = 1.0
    lower_face_tensor: str | None = "conv_12_relu"
    flip_average: bool = False


# The embedding models the service can run, by the name VISOR_EMBEDDING_MODEL takes. All share SFace's input
# contract; the students are SFace fine-tuned for masked faces (docs/distillation.md), "-flip" means mirror
# averaging (docs/accuracy.md). Each makes its own model_version, and each has its similarity (scoring.py)
# and mask-aware (matching.py) calibration.
EMBEDDING_MODELS: dict[str, EmbeddingConfig] = {
    "sface": EmbeddingConfig(),
    "student": EmbeddingConfig(
        model_path=DEFAULT_MODEL_DIR / STUDENT_FILE, model_name="visor-masked-student"
    ),
    "student-flip": EmbeddingConfig(
        model_path=DEFAULT_MODEL_DIR / STUDENT_FILE, model_name="visor-masked-student-flip", flip_average=True
    ),
    "student-v2-flip": EmbeddingConfig(
        model_path=DEFAULT_MODEL_DIR / STUDENT_V2_FILE,
        model_name="visor-masked-student-v2-flip",
        flip_average=True,
    ),
}


# The models whose masked-probe calibration (matching.py) was fitted on masked faces re-aligned by the
# landmark refiner (workers/pipeline/landmark_refiner.py); the service re-aligns masked faces for these only,
# so that every model is scored as it was calibrated.
REFINED_LANDMARK_MODELS = frozenset({"student-v2-flip"})

# What the service runs unless VISOR_EMBEDDING_MODEL says otherwise.
DEFAULT_EMBEDDING_MODEL = "student-v2-flip"


def embedding_config(model: str, model_dir: Path | str = DEFAULT_MODEL_DIR) -> EmbeddingConfig:
    """The embedding model called `model` (a key of EMBEDDING_MODELS), its file taken from `model_dir`."""
    if model not in EMBEDDING_MODELS:
        raise ValueError(f"unknown embedding model {model!r}; choose from {sorted(EMBEDDING_MODELS)}")
    named = EMBEDDING_MODELS[model]
    return replace(named, model_path=Path(model_dir) / named.model_path.name)


@dataclass(frozen=True)
class PipelineConfig:
    intake: IntakeLimits = field(default_factory=IntakeLimits)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    intra_op_threads: int = 2
    inter_op_threads: int = 1
    # See onnx_session.load_model: only worth enabling on a machine whose cores this process has to itself.
    thread_spinning: bool = False

    @classmethod
    def for_model_dir(
        cls, model_dir: Path, *, embedding_model: str = "sface", **overrides
    ) -> "PipelineConfig":
        """The default configuration with its model files taken from `model_dir`."""
        model_dir = Path(model_dir)
        return cls(
            detection=replace(DetectionConfig(), model_path=model_dir / YUNET_FILE),
            embedding=embedding_config(embedding_model, model_dir),
            **overrides,
        )
