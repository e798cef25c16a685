"""Generated face images for tests: no photo of a real person is ever shipped in the repository.

`draw_face` paints a frontal cartoon face that YuNet detects (score ~0.9) with landmarks where its eyes,
nose and mouth are. `CartoonPerson` varies the features from a seed, so different seeds give faces whose
embeddings differ more than two renderings of the same seed, which is all an identify test needs.
"""

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CartoonPerson:
    skin: tuple[int, int, int] = (150, 180, 225)
    hair: tuple[int, int, int] = (30, 40, 60)
    eye_spacing: float = 0.35
    eye_size: float = 0.16
    nose_length: float = 0.22
    mouth_width: float = 0.25
    face_width: float = 0.8
    brow_tilt: float = 0.02

    @classmethod
    def from_seed(cls, seed: int) -> "CartoonPerson":
        rng = np.random.default_rng(seed)
        return cls(
            skin=tuple(int(v) for v in rng.integers([90, 120, 160], [190, 210, 245])),
            hair=tuple(int(v) for v in rng.integers(10, 120, size=3)),
            eye_spacing=float(rng.uniform(0.28, 0.42)),
            eye_size=float(rng.uniform(0.12, 0.2)),
            nose_length=float(rng.uniform(0.15, 0.3)),
            mouth_width=float(rng.uniform(0.15, 0.35)),
            face_width=float(rng.uniform(0.7, 0.9)),
            brow_tilt=float(rng.uniform(-0.06, 0.08)),
        )


def draw_face(
    image: np.ndarray, centre_x: int, centre_y: int, size: int, person: CartoonPerson = CartoonPerson()
) -> dict[str, tuple[int, int]]:
    """Draw a frontal cartoon face (head half-width ~face_width * size) in place; return its parts."""

    def at(dx: float, dy: float) -> tuple[int, int]:
        return centre_x + round(dx * size), centre_y + round(dy * size)

    def length(fraction: float) -> int:
        return max(1, round(fraction * size))

    brow, iris = (40, 50, 70), (40, 30, 20)
    cv2.ellipse(
        image, at(0, 0), (length(person.face_width), length(1.05)), 0, 0, 360, person.skin, -1, cv2.LINE_AA
    )
    cv2.ellipse(
        image,
        at(0, -0.75),
        (length(person.face_width + 0.05), length(0.5)),
        0,
        180,
        360,
        person.hair,
        -1,
        cv2.LINE_AA,
    )
    for side in (-person.eye_spacing, person.eye_spacing):
        eye = at(side, -0.15)
        cv2.ellipse(
            image,
            eye,
            (length(person.eye_size), length(person.eye_size / 2)),
            0,
            0,
            360,
            (255, 255, 255),
            -1,
            cv2.LINE_AA,
        )
        cv2.circle(image, eye, length(person.eye_size * 0.4), iris, -1, cv2.LINE_AA)
        tilt = person.brow_tilt if side < 0 else -person.brow_tilt
        cv2.line(
            image,
            at(side - 0.18, -0.35 + tilt),
            at(side + 0.18, -0.37 - tilt),
            brow,
            length(0.05),
            cv2.LINE_AA,
        )
    nose = np.array([at(0, -0.1), at(-0.1, person.nose_length), at(0.1, person.nose_length)])
    cv2.polylines(image, [nose], False, (110, 130, 180), length(0.03), cv2.LINE_AA)
    cv2.ellipse(
        image,
        at(0, 0.5),
        (length(person.mouth_width), length(0.08)),
        0,
        0,
        180,
        (80, 80, 170),
        length(0.05),
        cv2.LINE_AA,
    )
    return {
        "image_left_eye": at(-person.eye_spacing, -0.15),
        "image_right_eye": at(person.eye_spacing, -0.15),
        "nose": at(0, 0.15),
        "mouth": at(0, 0.55),
    }


def face_photo(
    width: int = 640,
    height: int = 480,
    size: int = 100,
    person: CartoonPerson = CartoonPerson(),
    offset: tuple[int, int] = (0, 0),
    background: int = 200,
) -> np.ndarray:
    """A BGR image of one cartoon face on a plain background."""
    image = np.full((height, width, 3), background, dtype=np.uint8)
    draw_face(image, width // 2 + offset[0], height // 2 + offset[1], size, person)
    return image


def encode(image_bgr: np.ndarray, image_format: str = "JPEG", **save_options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)).save(
        buffer, format=image_format, **save_options
    )
    return buffer.getvalue()


def person_image(seed: int, **variation) -> bytes:
    """A JPEG of the cartoon person `seed`, sized to pass the enrollment quality floors."""
    return encode(face_photo(size=110, person=CartoonPerson.from_seed(seed), **variation))
