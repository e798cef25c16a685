"""Fixtures of the face-pipeline tests: models, generated images and the optional shared evaluation data.

Every image here is generated. The cartoon face drawn by `draw_face` is detected by YuNet with a score near
0.9 and landmarks where it has eyes, nose and mouth, so detection, alignment and the whole pipeline can be
tested without shipping any photo. Tests on real photos use ../shared/data and skip when it is absent.
"""

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import require_shared_data
from workers.pipeline.config import PipelineConfig

__all__ = ["require_shared_data"]

REPO_ROOT = Path(__file__).resolve().parents[3]
MODEL_DIR = REPO_ROOT / "var" / "models"


@pytest.fixture(scope="session")
def pipeline_config() -> PipelineConfig:
    missing = [
        name
        for name in ("face_detection_yunet_2023mar.onnx", "face_recognition_sface_2021dec.onnx")
        if not (MODEL_DIR / name).exists()
    ]
    if missing:
        pytest.fail(
            f"models {missing} are missing from {MODEL_DIR}; run `python infra/fetch_models.py` first"
        )
    return PipelineConfig.for_model_dir(MODEL_DIR)


@pytest.fixture(scope="session")
def face_pipeline(pipeline_config):
    from workers.pipeline.pipeline import FacePipeline

    return FacePipeline(pipeline_config)


def draw_face(image: np.ndarray, centre_x: int, centre_y: int, size: int) -> dict[str, tuple[int, int]]:
    """Draw a frontal cartoon face (head half-width ~0.8 * size) in place; returns where its parts are."""

    def at(dx: float, dy: float) -> tuple[int, int]:
        return centre_x + round(dx * size), centre_y + round(dy * size)

    def length(fraction: float) -> int:
        return max(1, round(fraction * size))

    skin, hair, brow, iris = (150, 180, 225), (30, 40, 60), (40, 50, 70), (40, 30, 20)
    cv2.ellipse(image, at(0, 0), (length(0.8), length(1.05)), 0, 0, 360, skin, -1, cv2.LINE_AA)
    cv2.ellipse(image, at(0, -0.75), (length(0.85), length(0.5)), 0, 180, 360, hair, -1, cv2.LINE_AA)
    for side in (-0.35, 0.35):
        eye = at(side, -0.15)
        cv2.ellipse(image, eye, (length(0.16), length(0.08)), 0, 0, 360, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(image, eye, length(0.06), iris, -1, cv2.LINE_AA)
        cv2.line(image, at(side - 0.18, -0.35), at(side + 0.18, -0.37), brow, length(0.05), cv2.LINE_AA)
    nose = np.array([at(0, -0.1), at(-0.1, 0.22), at(0.1, 0.22)])
    cv2.polylines(image, [nose], False, (110, 130, 180), length(0.03), cv2.LINE_AA)
    cv2.ellipse(
        image, at(0, 0.5), (length(0.25), length(0.08)), 0, 0, 180, (80, 80, 170), length(0.05), cv2.LINE_AA
    )
    return {
        "image_left_eye": at(-0.35, -0.15),
        "image_right_eye": at(0.35, -0.15),
        "nose": at(0, 0.15),
        "mouth": at(0, 0.55),
    }


def face_photo(width: int = 640, height: int = 480, size: int = 100) -> np.ndarray:
    """A BGR image of one cartoon face centred on a light gray background."""
    image = np.full((height, width, 3), 200, dtype=np.uint8)
    draw_face(image, width // 2, height // 2, size)
    return image


def encode(image_bgr: np.ndarray, image_format: str = "JPEG", **save_options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)).save(
        buffer, format=image_format, **save_options
    )
    return buffer.getvalue()
