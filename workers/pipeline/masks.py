"""Synthetic face masks: warp MaskTheFace RGBA templates onto faces located by YuNet.

MaskTheFace places a template with six anchors (a/c cheeks at nose-tip height, b nose-bridge middle,
d/f jaw at lower-lip height, e chin) found on 68 dlib landmarks. YuNet only gives five landmarks and a
box, so the six targets are derived from those in an "eye frame": origin at the eye midpoint, x along
the eye line, unit = inter-ocular distance (IOD). The constants below were measured on YuNet detections
of LFW (medians over 400 faces) and checked visually on LFW and generated faces.

Used for two things: masked probes for evaluation (`MaskSynthesizer.apply` on full photos) and training
augmentation for the mask classifier (`MaskSynthesizer.apply_aligned` on 112x112 aligned crops).
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from workers.pipeline.alignment import ALIGNED_SIZE, ARCFACE_TEMPLATE
from workers.pipeline.detection import BoundingBox

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEMPLATES_DIR = REPO_ROOT.parent / "shared" / "data" / "mask_templates"

# What each mask type is drawn from: (template kind, colouring). Kinds are masks.cfg section names
# without the _left/_right suffix.
MASK_TYPES: dict[str, tuple[str, str]] = {
    "surgical": ("surgical", "template"),
    "surgical_blue": ("surgical_blue", "template"),
    "surgical_green": ("surgical_green", "template"),
    "N95": ("N95", "template"),
    "KN95": ("KN95", "template"),
    "cloth": ("cloth", "template"),
    "cloth_textured": ("cloth", "texture"),
    "cloth_coloured": ("cloth", "solid"),
    "surgical_coloured": ("surgical", "solid"),
    "gas": ("gas", "template"),
}
# Random draws follow roughly what people wore in 2020-21 photos (RWMFD is mostly blue surgical, white
# surgical, cloth and KN95). The gas respirator is available on request only.
RANDOM_MASK_WEIGHTS: dict[str, float] = {
    "surgical_blue": 0.24,
    "surgical": 0.16,
    "surgical_green": 0.05,
    "N95": 0.08,
    "KN95": 0.12,
    "cloth": 0.12,
    "cloth_textured": 0.11,
    "cloth_coloured": 0.06,
    "surgical_coloured": 0.06,
}

# Eye-frame geometry (unit = IOD), YuNet landmark conventions.
BRIDGE_FRACTION = 0.5  # b: how far from the eye midpoint towards the nose tip the mask's top edge sits
CHEEK_REACH = 2.0  # cheek half-width at nose height / horizontal nose-to-eye distance on that side
JAW_NARROWING = 0.85  # jaw half-width at lower-lip height relative to the cheek half-width
LOWER_LIP_BELOW_CORNERS = 0.15  # lower lip below the mouth-corner line
CHIN_EXTENSION = 0.75  # chin = mouth midpoint + this x (mouth midpoint - eye midpoint)
# Median YuNet box on LFW in the eye frame (left, top, right, bottom); gives the canonical box of an
# aligned crop, where no detection box exists.
CANONICAL_BOX_EYE_FRAME = (-1.05, -1.05, 1.01, 1.71)
# |yaw ratio| above which the _left/_right template is used; ratio 0.3 is a nose tip 0.15 IOD off centre,
# roughly MaskTheFace's 13 degree switch.
PROFILE_YAW_RATIO = 0.3
# Typical luma of well-lit skin: a face this bright leaves the template's brightness unchanged.
WELL_LIT_SKIN_LUMA = 150.0

Pose = Literal["frontal", "left", "right"]


class MaskTemplatesUnavailable(RuntimeError):
    """The MaskTheFace template folder is missing or unreadable; masks cannot be synthesised."""


@dataclass(frozen=True)
class MaskTemplate:
    name: str
    kind: str
    pose: Pose
    rgba: np.ndarray  # HxWx4 uint8, BGRA
    anchors: np.ndarray  # 6x2 float32, points a..f in template pixels


def templates_available(templates_dir: Path = DEFAULT_TEMPLATES_DIR) -> bool:
    """Whether `templates_dir` holds a masks.cfg: callers can skip mask synthesis instead of failing."""
    return (templates_dir / "masks.cfg").is_file()


def load_templates(templates_dir: Path) -> dict[str, MaskTemplate]:
    """Parse masks.cfg; sections without a template (empty*, inpaint*) are skipped."""
    config_path = templates_dir / "masks.cfg"
    if not config_path.is_file():
        raise MaskTemplatesUnavailable(f"no masks.cfg in {templates_dir}")
    config = configparser.ConfigParser()
    config.read(config_path)
    templates = {}
    for name in config.sections():
        section = config[name]
        if "template" not in section:
            continue
        relative = section["template"].strip().removeprefix("masks/")
        rgba = cv2.imread(str(templates_dir / relative), cv2.IMREAD_UNCHANGED)
        if rgba is None or rgba.ndim != 3 or rgba.shape[2] != 4:
            raise MaskTemplatesUnavailable(f"unreadable RGBA template {templates_dir / relative}")
        anchors = np.array(
            [[float(v) for v in section[f"mask_{letter}"].split(",")] for letter in "abcdef"], np.float32
        )
        kind, _, suffix = name.rpartition("_")
        if suffix in ("left", "right"):
            templates[name] = MaskTemplate(name, kind, suffix, rgba, anchors)
        else:
            templates[name] = MaskTemplate(name, name, "frontal", rgba, anchors)
    return templates


def load_textures(templates_dir: Path) -> list[np.ndarray]:
    """Cloth patterns as BGR images (alpha, where present, is dropped: patterns are opaque)."""
    textures = []
    for path in sorted((templates_dir / "textures").glob("*/*")):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            textures.append(image)
    return textures


@dataclass(frozen=True)
class EyeFrame:
    """Similarity frame of a face: origin at the eye midpoint, x along the eye line, unit = IOD."""

    origin: np.ndarray
    x_axis: np.ndarray
    y_axis: np.ndarray
    iod: float

    @classmethod
    def from_landmarks(cls, landmarks5: np.ndarray) -> EyeFrame:
        right_eye, left_eye = landmarks5[0], landmarks5[1]
        eye_vector = left_eye - right_eye
        iod = float(np.linalg.norm(eye_vector))
        if iod < 1e-3:
            raise ValueError("degenerate landmarks: both eyes at the same point")
        x_axis = eye_vector / iod
        return cls((right_eye + left_eye) / 2, x_axis, np.array([-x_axis[1], x_axis[0]]), iod)

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        offsets = np.asarray(points, np.float64) - self.origin
        return np.stack([offsets @ self.x_axis, offsets @ self.y_axis], axis=-1) / self.iod

    def to_image(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64) * self.iod
        return self.origin + points[..., :1] * self.x_axis + points[..., 1:] * self.y_axis


def yaw_ratio(landmarks5: np.ndarray) -> float:
    """Signed head turn from the nose position between the eyes, in [-1, 1].

    Negative: the face is turned towards the image's left (the nose moves towards landmark 0, the eye on
    the image's left); 0: frontal.
    """
    frame = EyeFrame.from_landmarks(np.asarray(landmarks5, np.float64))
    nose_x = frame.to_frame(landmarks5[2])[0]
    return float(np.clip(nose_x / 0.5, -1.0, 1.0))


def pose_for_yaw(yaw: float) -> Pose:
    # The _left templates show the mask of a face turned to the image's left (nose bridge near their left
    # edge).
    if yaw < -PROFILE_YAW_RATIO:
        return "left"
    if yaw > PROFILE_YAW_RATIO:
        return "right"
    return "frontal"


def derive_anchors(
    landmarks5: np.ndarray,
    bbox: tuple[float, float, float, float],
    *,
    bridge_fraction: float = BRIDGE_FRACTION,
) -> np.ndarray:
    """The six MaskTheFace targets a..f (6x2, image pixels) from YuNet's 5 landmarks and (x, y, w, h) box."""
    landmarks = np.asarray(landmarks5, np.float64).reshape(5, 2)
    frame = EyeFrame.from_landmarks(landmarks)
    right_eye, left_eye, nose, mouth_right, mouth_left = frame.to_frame(landmarks)
    mouth = (mouth_right + mouth_left) / 2
    x, y, w, h = bbox
    box_corners = frame.to_frame(np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]]))
    box_left, box_right = box_corners[:, 0].min(), box_corners[:, 0].max()
    box_bottom = box_corners[:, 1].max()

    # Cheek contour at nose height: each side reaches CHEEK_REACH times the visible nose-to-eye distance
    # (so the far cheek of a turned head shrinks), averaged with the box edge, which YuNet puts near the
    # cheek contour for frontal faces.
    left_reach = max(nose[0] - right_eye[0], 0.05)
    right_reach = max(left_eye[0] - nose[0], 0.05)
    cheek_left = (nose[0] - CHEEK_REACH * left_reach + box_left) / 2
    cheek_right = (nose[0] + CHEEK_REACH * right_reach + box_right) / 2
    cheek_left = float(np.clip(cheek_left, box_left, nose[0] - 0.1))
    cheek_right = float(np.clip(cheek_right, nose[0] + 0.1, box_right))

    lip_y = mouth[1] + LOWER_LIP_BELOW_CORNERS
    chin = mouth * (1 + CHIN_EXTENSION)
    chin[1] = min(chin[1], box_bottom)
    anchors = np.array(
        [
            [cheek_left, nose[1]],
            nose * bridge_fraction,
            [cheek_right, nose[1]],
            [mouth[0] + JAW_NARROWING * (cheek_left - nose[0]), lip_y],
            chin,
            [mouth[0] + JAW_NARROWING * (cheek_right - nose[0]), lip_y],
        ]
    )
    return frame.to_image(anchors).astype(np.float32)


def typical_box(landmarks5: np.ndarray) -> tuple[float, float, float, float]:
    """The (x, y, w, h) box YuNet typically draws around a face with these landmarks (used where no
    detection box exists, e.g. in an aligned crop)."""
    frame = EyeFrame.from_landmarks(np.asarray(landmarks5, np.float64).reshape(5, 2))
    left, top, right, bottom = CANONICAL_BOX_EYE_FRAME
    corners = frame.to_image(np.array([[left, top], [right, top], [left, bottom], [right, bottom]]))
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


@dataclass(frozen=True)
class _ImageStats:
    """What the mask has to match in the photo."""

    grayscale: bool
    blur_sigma: float  # Gaussian sigma (pixels) the face looks blurred by
    noise_sigma: float  # grey-level noise in flat areas


def _estimate_image_stats(image_bgr: np.ndarray, face_region: np.ndarray) -> _ImageStats:
    channels = image_bgr[face_region].astype(np.int16)
    grayscale = bool(np.abs(channels - channels[:, :1]).max(initial=0) <= 2)
    gray = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    # Re-blur estimate: for a step edge blurred by s, gradient energy scales as 1/s, so blurring once more
    # by 1 px gives the ratio R = s / sqrt(s^2 + 1), i.e. s = R / sqrt(1 - R^2).
    energy = _gradient_energy(gray, face_region)
    reblurred_energy = _gradient_energy(cv2.GaussianBlur(gray, (0, 0), 1.0), face_region)
    ratio = min(reblurred_energy / max(energy, 1e-6), 0.97)
    blur_sigma = ratio / np.sqrt(1 - ratio**2)
    high_pass = gray - cv2.GaussianBlur(gray, (0, 0), 1.0)
    noise_sigma = 1.4826 * float(np.median(np.abs(high_pass[face_region])))
    return _ImageStats(grayscale, float(np.clip(blur_sigma, 0.0, 3.0)), float(min(noise_sigma, 8.0)))


def _gradient_energy(gray: np.ndarray, region: np.ndarray) -> float:
    dx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    dy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    return float(np.mean((dx**2 + dy**2)[region]))


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(40, 230), rng.uniform(60, 240)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR).astype(np.float32)[0, 0]


def _drawn_pattern(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Checks, stripes or dots in two random colours, float32 BGR of `shape`."""
    height, width = shape
    period = width * rng.uniform(0.04, 0.15)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = (xs * np.cos(angle) + ys * np.sin(angle)) / period
    v = (-xs * np.sin(angle) + ys * np.cos(angle)) / period
    style = rng.choice(["checks", "stripes", "dots"])
    if style == "checks":
        foreground = (np.floor(u) + np.floor(v)) % 2 == 1
    elif style == "stripes":
        foreground = np.floor(u) % 2 == 1
    else:
        foreground = (u - np.round(u)) ** 2 + (v - np.round(v)) ** 2 < rng.uniform(0.03, 0.12)
    return np.where(foreground[..., None], _random_colour(rng), _random_colour(rng))


def _luma(bgr: np.ndarray) -> np.ndarray:
    return bgr[..., 0] * 0.114 + bgr[..., 1] * 0.587 + bgr[..., 2] * 0.299


class MaskSynthesizer:
    """Draws realistic masks on faces. Every random choice comes from the caller's Generator."""

    def __init__(self, templates_dir: Path | str | None = None) -> None:
        """Loads every template and texture; raises MaskTemplatesUnavailable if the folder is not usable.

        The folder is configuration (the Django layer passes its setting); None means DEFAULT_TEMPLATES_DIR,
        the shared data next to the repository.
        """
        self.templates_dir = Path(templates_dir) if templates_dir is not None else DEFAULT_TEMPLATES_DIR
        self.templates = load_templates(self.templates_dir)
        self.textures = load_textures(self.templates_dir)
        missing = {kind for kind, _ in MASK_TYPES.values()} - {t.kind for t in self.templates.values()}
        if missing:
            raise MaskTemplatesUnavailable(f"{self.templates_dir} lacks templates for {sorted(missing)}")

    def random_mask_type(self, rng: np.random.Generator) -> str:
        names = list(RANDOM_MASK_WEIGHTS)
        weights = np.array([RANDOM_MASK_WEIGHTS[n] for n in names])
        return names[rng.choice(len(names), p=weights / weights.sum())]

    def apply(
        self,
        image_bgr: np.ndarray,
        landmarks5: np.ndarray,
        bbox: BoundingBox | tuple[float, float, float, float],
        *,
        rng: np.random.Generator,
        mask_type: str | None = None,
        bridge_fraction: float | None = None,
        anchor_jitter: float = 0.0,
    ) -> np.ndarray:
        """A copy of `image_bgr` with a mask over the face with YuNet `landmarks5` and box (x, y, w, h).

        `bridge_fraction` sets how high the mask sits on the nose (0 = eye line, 1 = nose tip); by default
        it is drawn around the nose-bridge middle, as people wear masks at different heights.
        `anchor_jitter` (in IODs) moves each of the six anchors at random, so that training sees mask shapes
        beyond the 21 templates' own.
        """
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError("expected a HxWx3 uint8 BGR image")
        mask_type = mask_type or self.random_mask_type(rng)
        if mask_type not in MASK_TYPES:
            raise ValueError(f"unknown mask type {mask_type!r}; choose from {sorted(MASK_TYPES)}")
        landmarks = np.asarray(landmarks5, np.float64).reshape(5, 2)
        if isinstance(bbox, BoundingBox):
            bbox = (bbox.x, bbox.y, bbox.width, bbox.height)
        if bridge_fraction is None:
            # Real masks sit anywhere from just under the eyes to the nose tip.
            bridge_fraction = float(np.clip(rng.normal(BRIDGE_FRACTION, 0.1), 0.2, 0.8))
        targets = derive_anchors(landmarks, bbox, bridge_fraction=bridge_fraction)
        if anchor_jitter:
            inter_ocular = float(np.linalg.norm(landmarks[1] - landmarks[0]))
            targets = targets + rng.normal(0.0, anchor_jitter * inter_ocular, targets.shape).astype(
                np.float32
            )
        kind, colouring = MASK_TYPES[mask_type]
        pose = pose_for_yaw(yaw_ratio(landmarks))
        template = self.templates[kind if pose == "frontal" else f"{kind}_{pose}"]
        return self._composite(image_bgr, template, targets, colouring, rng)

    def apply_aligned(
        self,
        crop_bgr: np.ndarray,
        *,
        rng: np.random.Generator,
        mask_type: str | None = None,
        landmarks5: np.ndarray | None = None,
        anchor_jitter: float = 0.0,
    ) -> np.ndarray:
        """Masks a 112x112 aligned crop, placing it from the alignment template's landmarks.

        Training data come from here: the landmarks get a random scale (+-6%) and shift (+-3 px), so the
        classifier sees the spread of real placements, and the box is the one YuNet typically draws around
        them (`typical_box`). Pass `landmarks5` (crop coordinates) to place the mask from a face's own
        landmarks instead of the template's, e.g. for turned heads.
        """
        if crop_bgr.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
            raise ValueError(f"expected a {ALIGNED_SIZE}x{ALIGNED_SIZE} aligned crop, got {crop_bgr.shape}")
        landmarks = ARCFACE_TEMPLATE if landmarks5 is None else np.asarray(landmarks5, np.float64)
        centre = landmarks.mean(axis=0)
        landmarks = (landmarks - centre) * rng.uniform(0.94, 1.06) + centre + rng.uniform(-3.0, 3.0, size=2)
        return self.apply(
            crop_bgr,
            landmarks,
            typical_box(landmarks),
            rng=rng,
            mask_type=mask_type,
            anchor_jitter=anchor_jitter,
        )

    def _composite(
        self,
        image_bgr: np.ndarray,
        template: MaskTemplate,
        targets: np.ndarray,
        colouring: str,
        rng: np.random.Generator,
    ) -> np.ndarray:
        # Shrink the template to about its final size first: warping a 600 px template straight down to a
        # 60 px face would alias its fold texture into noise.
        target_width = float(np.linalg.norm(targets[2] - targets[0]))
        template_width = np.linalg.norm(template.anchors[2] - template.anchors[0])
        scale = min(1.0, 1.5 * target_width / template_width)
        rgba = cv2.resize(template.rgba, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        colour = self._colour_template(rgba, colouring, rng)
        homography, _ = cv2.findHomography(template.anchors * scale, targets, 0)
        if homography is None:
            raise ValueError("could not fit the mask to these landmarks")

        # Work on the region the warped template can reach (plus room for blur and shading), not the whole
        # photo: a 12-megapixel photo costs no more than a thumbnail.
        corners = np.array([[0, 0], [rgba.shape[1], 0], [0, rgba.shape[0]], [rgba.shape[1], rgba.shape[0]]])
        reach = cv2.perspectiveTransform(corners.reshape(-1, 1, 2).astype(np.float64), homography).reshape(
            -1, 2
        )
        margin = 0.3 * target_width + 8
        height, width = image_bgr.shape[:2]
        x0, y0 = (max(0, int(np.floor(v - margin))) for v in reach.min(axis=0))
        x1 = min(width, int(np.ceil(reach[:, 0].max() + margin)))
        y1 = min(height, int(np.ceil(reach[:, 1].max() + margin)))
        result = image_bgr.copy()
        if x1 <= x0 or y1 <= y0:
            return result
        to_region = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]) @ homography
        region = image_bgr[y0:y1, x0:x1]
        result[y0:y1, x0:x1] = self._blend(region, rgba, colour, to_region, target_width, rng)
        return result

    def _blend(
        self,
        region_bgr: np.ndarray,
        rgba: np.ndarray,
        colour: np.ndarray,
        homography: np.ndarray,
        face_width: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        size = (region_bgr.shape[1], region_bgr.shape[0])
        # Premultiplied alpha, so bilinear warping does not darken the mask's outline.
        alpha = rgba[..., 3].astype(np.float32) / 255
        warped_alpha = cv2.warpPerspective(alpha, homography, size, flags=cv2.INTER_LINEAR)
        warped = cv2.warpPerspective(colour * alpha[..., None], homography, size, flags=cv2.INTER_LINEAR)
        covered = warped_alpha > 0.5
        if not covered.any():
            return region_bgr
        mask_bgr = warped / np.maximum(warped_alpha, 1e-3)[..., None]

        image = region_bgr.astype(np.float32)
        stats = _estimate_image_stats(region_bgr, covered)
        mask_bgr = self._match_lighting(mask_bgr, image, covered, face_width, rng)
        if stats.grayscale:
            mask_bgr = np.repeat(_luma(mask_bgr)[..., None], 3, axis=2)
        if stats.blur_sigma > 0.3:
            mask_bgr = cv2.GaussianBlur(mask_bgr, (0, 0), stats.blur_sigma)
            warped_alpha = cv2.GaussianBlur(warped_alpha, (0, 0), stats.blur_sigma)
        if stats.noise_sigma > 0.5:
            noise = rng.normal(0.0, stats.noise_sigma, size=mask_bgr.shape[:2]).astype(np.float32)
            mask_bgr = mask_bgr + noise[..., None]

        blended = image * (1 - warped_alpha[..., None]) + mask_bgr * warped_alpha[..., None]
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    def _colour_template(self, rgba: np.ndarray, colouring: str, rng: np.random.Generator) -> np.ndarray:
        """Template colours (float32 BGR), recoloured with a solid colour or a cloth pattern if asked."""
        bgr = rgba[..., :3].astype(np.float32)
        if colouring == "template":
            # A small random tint: real surgical blues and whites vary between makers.
            return bgr * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
        opaque = rgba[..., 3] > 128
        luma = _luma(bgr)
        # Keep the template's folds and stitching as relative shading under the new colour.
        shading = np.clip(luma / max(float(np.percentile(luma[opaque], 60)), 1.0), 0.35, 1.5)[..., None]
        if colouring == "solid":
            return shading * _random_colour(rng)
        if colouring == "texture":
            # Half the patterns are drawn (checks, stripes, dots in random colours): 27 pattern files alone
            # would teach a classifier those 27 prints rather than "patterned cloth".
            if rng.random() < 0.5:
                return shading * _drawn_pattern(rgba.shape[:2], rng)
            return shading * self._texture_patch(rgba.shape[:2], rng)
        raise ValueError(f"unknown colouring {colouring!r}")

    def _texture_patch(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        if not self.textures:
            raise MaskTemplatesUnavailable(f"no cloth textures in {self.templates_dir / 'textures'}")
        texture = self.textures[rng.integers(len(self.textures))]
        # A random crop between a third and all of the pattern, so print sizes vary.
        side = int(min(texture.shape[:2]) * rng.uniform(0.33, 1.0))
        top = rng.integers(texture.shape[0] - side + 1)
        left = rng.integers(texture.shape[1] - side + 1)
        patch = texture[top : top + side, left : left + side]
        return cv2.resize(patch, (shape[1], shape[0]), interpolation=cv2.INTER_AREA).astype(np.float32)

    def _match_lighting(
        self,
        mask_bgr: np.ndarray,
        image: np.ndarray,
        covered: np.ndarray,
        face_width: float,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """Dims the mask to the face's exposure and lays the face's low-frequency shading over it.

        A template is lit like a studio product shot; in a dark photo a white mask must come out grey, and
        a face lit from one side must cast that light across the mask too.
        """
        face_luma = _luma(image)
        exposure = float(np.median(face_luma[covered])) / WELL_LIT_SKIN_LUMA
        gain = np.clip(exposure * rng.uniform(0.9, 1.1), 0.2, 1.15)
        # Shading from a blur much wider than nostrils or lips, so only the lighting survives.
        weight = covered.astype(np.float32)
        sigma = max(face_width / 4, 1.0)
        smooth = cv2.GaussianBlur(face_luma * weight, (0, 0), sigma)
        smooth_weight = cv2.GaussianBlur(weight, (0, 0), sigma)
        local = smooth / np.maximum(smooth_weight, 1e-3)
        shading = np.clip(local / max(float(np.mean(local[covered])), 1.0), 0.5, 1.5) ** 0.7
        return mask_bgr * (gain * shading)[..., None]
