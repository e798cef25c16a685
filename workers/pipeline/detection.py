"""Face detection with YuNet (OpenCV zoo, 2023mar) run through onnxruntime.

The model takes an NCHW float32 BGR input with raw 0..255 values, exported as 640x640 (the largest size
Visor feeds it), and predicts, at strides 8, 16 and 32, a class score, an objectness score, a box and 5
landmarks per grid cell. Decoding follows OpenCV's FaceDetectorYN: score = sqrt(cls * obj), box centre =
(cell + offset) * stride, box size = exp(log-size) * stride, landmark = (cell + offset) * stride.

Landmark order (YuNet's, kept everywhere in the pipeline): right eye, left eye, nose tip, right mouth
corner, left mouth corner, where right and left are the subject's own. On a frontal face the subject's
right eye is on the image's left, so the first point has the smaller x; this is also the order of the
ArcFace alignment template.

Each image is resized to fit 640x640 (aspect ratio kept) and padded with zeros, right and bottom, only up to
a multiple of the largest stride: the network is fully convolutional, so a 640x480 photo costs a 640x480
input, as with OpenCV's FaceDetectorYN.setInputSize. Photos much larger than the input are additionally
scanned as overlapping tiles so that small faces in large photos are found. A photo in which no face is
found is searched again shrunk inside an empty border, for a face that fills the frame (a close-up), and
then turned by 40 degrees either way, for a tilted head.
"""

import math
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from workers.pipeline.alignment import transformed
from workers.pipeline.config import DetectionConfig
from workers.pipeline.onnx_session import load_model

LANDMARK_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_right", "mouth_left")
STRIDES = (8, 16, 32)
# The largest input side: the size YuNet was trained and exported at. A photo is resized to fit it.
MAX_INPUT_SIZE = 640
# A thumbnail enlarged this much shows its close-up faces larger than the network was trained on, so it also
# gets a pass at a smaller enlargement (on the RWMFD masked photos, mostly 256 px: 95.1% -> 97.6% of images).
_RESCAN_MIN_UPSCALE = 1.5
_RESCAN_REDUCTION = 1.7
# Tiles are worth their cost only when they show faces clearly larger than the whole-image pass does.
_MIN_TILE_MAGNIFICATION = 1.5
# A tile detection reaching this close (in network pixels) to an edge shared with another tile is probably
# a cut face; the neighbouring tile (or the whole-image pass) sees it whole.
_TILE_EDGE_MARGIN = 4.0
# A photo in which the whole-image passes find no face is searched again, shrunk so that its long side is
# each of these fractions of the network input, framed in an empty border half its size: YuNet misses faces
# that fill the frame, masked ones most. Masked LFW test faces cropped square, 2.5 inter-ocular distances
# wide, at 600 px: found in 22 of 86 crops without these passes, in 86 with them (2 distances wide: 8 and
# 85; 1.6 wide: 4 and 78).
CLOSE_UP_FRACTIONS = (0.4, 0.25)
# Then it is searched turned by each of these angles: YuNet misses masked faces tilted by 45 degrees, which
# identify accepts (roll up to 60). Masked LFW test faces tilted by 30, 45 and 60 degrees: 70, 16 and 11 of 86
# found before, 85, 85 and 70 with the turned passes. Faces found turned need a higher score: on 1,109 patches
# of RWMFD photos away from their faces, the turned passes found 25 more faces, mostly clothes and hands, of
# which 1 scored 0.8 or more; of the real tilted faces, 80-99% do.
TURNED_SEARCH_DEGREES = (40.0, -40.0)
TURNED_SEARCH_MIN_SCORE = 0.8


@dataclass(frozen=True)
class BoundingBox:
    """Axis-aligned box in source-image pixels, clipped to the image."""

    x: float
    y: float
    width: float
    height: float

    @property
    def area(self) -> float:
        return self.width * self.height


@dataclass(frozen=True)
class DetectedFace:
    bbox: BoundingBox
    score: float
    # Five (x, y) points in source-image pixels, in LANDMARK_NAMES order; they may lie outside the image.
    landmarks: tuple[tuple[float, float], ...]

    def landmark_array(self) -> np.ndarray:
        return np.asarray(self.landmarks, dtype=np.float32)


@dataclass(frozen=True)
class _View:
    """A region of the source image, the scale at which it is fed to the network and the empty border
    (network pixels on every side) it is framed in."""

    x0: int
    y0: int
    x1: int
    y1: int
    scale: float
    is_tile: bool
    border: int = 0


class FaceDetector:
    def __init__(
        self,
        config: DetectionConfig,
        *,
        intra_op_threads: int = 2,
        inter_op_threads: int = 1,
        thread_spinning: bool = False,
    ) -> None:
        self.config = config
        model = load_model(
            config.model_path,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            thread_spinning=thread_spinning,
            free_dimensions="all",
        )
        self._session = model.session
        self._input_name = self._session.get_inputs()[0].name
        self._output_names = [
            f"{head}_{stride}" for stride in STRIDES for head in ("cls", "obj", "bbox", "kps")
        ]

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """All faces in a BGR uint8 image, highest score first."""
        height, width = image.shape[:2]
        faces = self._detect_in_views(image, self._plan_views(width, height))
        if not faces:
            faces = self._detect_in_views(image, self._close_up_views(width, height))
        if not faces:
            faces = self._detect_turned(image)
        return faces

    def _detect_turned(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces found in the photo turned by each of TURNED_SEARCH_DEGREES, in the photo's own pixels.

        The photo is first shrunk to fit the network input and each turned copy gets one whole-image pass, so
        that the search costs two passes whatever the photo's size or shape (a thin strip turned whole would
        need a canvas as wide as the strip is long). A face keeps its detected size around its centre mapped
        back: the hull of its turned box would be up to 1.4 times too wide."""
        height, width = image.shape[:2]
        shrink = min(1.0, MAX_INPUT_SIZE / max(width, height))
        small_width, small_height = max(1, round(width * shrink)), max(1, round(height * shrink))
        small = image
        if shrink < 1.0:
            small = cv2.resize(image, (small_width, small_height), interpolation=cv2.INTER_AREA)
        to_photo = np.array([width / small_width, height / small_height], np.float32)
        boxes, scores, landmarks = [], [], []
        for degrees in TURNED_SEARCH_DEGREES:
            turned, back = _turned(small, degrees)
            turned_height, turned_width = turned.shape[:2]
            scale = min(
                MAX_INPUT_SIZE / turned_width, MAX_INPUT_SIZE / turned_height, self.config.max_upscale
            )
            view = _View(0, 0, turned_width, turned_height, scale, is_tile=False)
            for face in self._detect_in_views(turned, [view]):
                points = transformed(face.landmark_array(), back) * to_photo
                centre = points.mean(axis=0)
                if face.score < TURNED_SEARCH_MIN_SCORE or not (
                    0 <= centre[0] < width and 0 <= centre[1] < height
                ):
                    continue
                box = face.bbox
                box_centre = transformed(np.array([box.x + box.width / 2, box.y + box.height / 2]), back)
                size = np.array([box.width, box.height]) * to_photo
                boxes.append([*(box_centre * to_photo - size / 2), *size])
                scores.append(face.score)
                landmarks.append(points)
        if not boxes:
            return []
        boxes_array = np.asarray(boxes, np.float32)
        scores_array = np.asarray(scores, np.float32)
        selected = non_maximum_suppression(boxes_array, scores_array, self.config.nms_iou_threshold)
        return [self._face(boxes_array[i], scores_array[i], landmarks[i], width, height) for i in selected]

    def _detect_in_views(self, image: np.ndarray, views: list[_View]) -> list[DetectedFace]:
        if not views:
            return []
        height, width = image.shape[:2]
        boxes, scores, landmarks, keep_masks = [], [], [], []
        for view in views:
            view_boxes, view_scores, view_landmarks = self._detect_in_view(image, view)
            boxes.append(view_boxes)
            scores.append(view_scores)
            landmarks.append(view_landmarks)
            keep_masks.append(self._not_cut_by_tile_edge(view_boxes, view, width, height))
        boxes, scores, landmarks = (np.concatenate(parts) for parts in (boxes, scores, landmarks))
        keep = np.concatenate(keep_masks)
        boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
        selected = non_maximum_suppression(boxes, scores, self.config.nms_iou_threshold)
        return [self._face(boxes[i], scores[i], landmarks[i], width, height) for i in selected]

    def _plan_views(self, width: int, height: int) -> list[_View]:
        whole_scale = min(MAX_INPUT_SIZE / width, MAX_INPUT_SIZE / height, self.config.max_upscale)
        views = [_View(0, 0, width, height, whole_scale, is_tile=False)]
        if whole_scale >= _RESCAN_MIN_UPSCALE:
            rescan_scale = max(1.0, whole_scale / _RESCAN_REDUCTION)
            views.append(_View(0, 0, width, height, rescan_scale, is_tile=False))
            return views
        tile_size = self.config.tile_size
        while True:
            columns = _tile_starts(width, tile_size, self.config.tile_overlap)
            rows = _tile_starts(height, tile_size, self.config.tile_overlap)
            if len(columns) * len(rows) <= self.config.max_tiles:
                break
            tile_size = math.ceil(tile_size * 1.25)
        tile_scale = MAX_INPUT_SIZE / tile_size
        if tile_scale < whole_scale * _MIN_TILE_MAGNIFICATION:
            return views
        views.extend(
            _View(x0, y0, min(x0 + tile_size, width), min(y0 + tile_size, height), tile_scale, is_tile=True)
            for y0 in rows
            for x0 in columns
        )
        return views

    def _close_up_views(self, width: int, height: int) -> list[_View]:
        views = []
        for fraction in CLOSE_UP_FRACTIONS:
            scale = min(fraction * MAX_INPUT_SIZE / max(width, height), self.config.max_upscale)
            border = round(fraction * MAX_INPUT_SIZE / 2)
            views.append(_View(0, 0, width, height, scale, is_tile=False, border=border))
        return views

    def _detect_in_view(self, image: np.ndarray, view: _View) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        region = image[view.y0 : view.y1, view.x0 : view.x1]
        region_height, region_width = region.shape[:2]
        resized_width = max(1, min(MAX_INPUT_SIZE, round(region_width * view.scale)))
        resized_height = max(1, min(MAX_INPUT_SIZE, round(region_height * view.scale)))
        interpolation = cv2.INTER_AREA if view.scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(region, (resized_width, resized_height), interpolation=interpolation)
        border = view.border
        canvas = np.zeros(
            (_padded(resized_height + 2 * border), _padded(resized_width + 2 * border), 3), dtype=np.uint8
        )
        canvas[border : border + resized_height, border : border + resized_width] = resized
        blob = canvas.transpose(2, 0, 1)[np.newaxis].astype(np.float32)
        outputs = dict(
            zip(
                self._output_names,
                self._session.run(self._output_names, {self._input_name: blob}),
                strict=True,
            )
        )
        boxes, scores, landmarks = self._decode(outputs, canvas.shape[1], canvas.shape[0])
        boxes[:, :2] -= border
        landmarks = landmarks - border
        # Rounding made the exact per-axis scales differ slightly from view.scale.
        scale = np.array([resized_width / region_width, resized_height / region_height], dtype=np.float32)
        offset = np.array([view.x0, view.y0], dtype=np.float32)
        boxes[:, :2] = boxes[:, :2] / scale + offset
        boxes[:, 2:] = boxes[:, 2:] / scale
        landmarks = landmarks / scale + offset
        return boxes, scores, landmarks

    def _decode(
        self, outputs: dict[str, np.ndarray], width: int, height: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (x, y, w, h), scores and (5, 2) landmarks above the score threshold, in network pixels, from
        the outputs for a `width` x `height` input."""
        boxes, scores, landmarks = [], [], []
        for stride in STRIDES:
            cls = np.clip(outputs[f"cls_{stride}"].reshape(-1), 0.0, 1.0)
            obj = np.clip(outputs[f"obj_{stride}"].reshape(-1), 0.0, 1.0)
            stride_scores = np.sqrt(cls * obj)
            (kept,) = np.nonzero(stride_scores >= self.config.score_threshold)
            if kept.size == 0:
                continue
            cells = _grid(stride, width, height)[kept]
            deltas = outputs[f"bbox_{stride}"].reshape(-1, 4)[kept]
            centres = (cells + deltas[:, :2]) * stride
            sizes = np.exp(deltas[:, 2:]) * stride
            boxes.append(np.concatenate([centres - sizes / 2, sizes], axis=1))
            points = outputs[f"kps_{stride}"].reshape(-1, 5, 2)[kept]
            landmarks.append((points + cells[:, np.newaxis, :]) * stride)
            scores.append(stride_scores[kept])
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        return (
            np.concatenate(boxes).astype(np.float32),
            np.concatenate(scores).astype(np.float32),
            np.concatenate(landmarks).astype(np.float32),
        )

    def _not_cut_by_tile_edge(self, boxes: np.ndarray, view: _View, width: int, height: int) -> np.ndarray:
        keep = np.ones(len(boxes), dtype=bool)
        if not view.is_tile:
            return keep
        margin = _TILE_EDGE_MARGIN / view.scale
        x0, y0 = boxes[:, 0], boxes[:, 1]
        x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
        if view.x0 > 0:
            keep &= x0 > view.x0 + margin
        if view.y0 > 0:
            keep &= y0 > view.y0 + margin
        if view.x1 < width:
            keep &= x1 < view.x1 - margin
        if view.y1 < height:
            keep &= y1 < view.y1 - margin
        return keep

    @staticmethod
    def _face(box: np.ndarray, score: float, landmarks: np.ndarray, width: int, height: int) -> DetectedFace:
        x0, y0 = max(0.0, float(box[0])), max(0.0, float(box[1]))
        x1, y1 = min(float(width), float(box[0] + box[2])), min(float(height), float(box[1] + box[3]))
        return DetectedFace(
            bbox=BoundingBox(x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0)),
            score=float(score),
            landmarks=tuple((float(x), float(y)) for x, y in landmarks),
        )


def _turned(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The image turned by `degrees` (counter-clockwise) on a canvas large enough to hold all of it, and the
    affine map from the turned image's pixels back to the image's."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    turned_width, turned_height = math.ceil(width * cos + height * sin), math.ceil(width * sin + height * cos)
    matrix[:, 2] += (turned_width / 2 - width / 2, turned_height / 2 - height / 2)
    turned = cv2.warpAffine(image, matrix, (turned_width, turned_height), flags=cv2.INTER_LINEAR)
    return turned, cv2.invertAffineTransform(matrix)


def _padded(length: int) -> int:
    """`length` rounded up to a multiple of the largest stride, the sizes the network's grids divide."""
    return -(-length // STRIDES[-1]) * STRIDES[-1]


@cache  # at most 3 strides x 20 x 20 padded sizes
def _grid(stride: int, width: int, height: int) -> np.ndarray:
    """(x, y) of every cell of the stride's grid over a `width` x `height` input, in the outputs' order."""
    ys, xs = np.mgrid[0 : height // stride, 0 : width // stride]
    coordinates = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
    coordinates.flags.writeable = False  # shared by every call
    return coordinates


def nearest_face(faces: list[DetectedFace], point: np.ndarray) -> DetectedFace | None:
    """The face whose landmarks' centre is nearest `point`; None if there are no faces."""
    if not faces:
        return None
    return min(faces, key=lambda face: float(np.linalg.norm(face.landmark_array().mean(axis=0) - point)))


def non_maximum_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices of the boxes (x, y, w, h) kept by greedy NMS, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    areas = boxes[:, 2] * boxes[:, 3]
    kept = []
    while order.size:
        best, rest = order[0], order[1:]
        kept.append(int(best))
        overlap_w = np.clip(np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]), 0, None)
        overlap_h = np.clip(np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]), 0, None)
        intersection = overlap_w * overlap_h
        iou = intersection / np.maximum(areas[best] + areas[rest] - intersection, 1e-9)
        order = rest[iou <= iou_threshold]
    return kept


def _tile_starts(length: int, tile_size: int, overlap: float) -> list[int]:
    if length <= tile_size:
        return [0]
    step = tile_size * (1.0 - overlap)
    count = math.ceil((length - tile_size) / step) + 1
    return [round(i * (length - tile_size) / (count - 1)) for i in range(count)]
