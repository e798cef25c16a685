"""Face embeddings from aligned 112x112 crops with any ONNX model of the SFace interface.

The interface: one NCHW float32 input of (batch, 3, S, S) and one (batch, D) output. Colour order and
normalisation are parameters (SFace wants RGB with raw 0..255 values, which is what OpenCV's
FaceRecognizerSF feeds it via blobFromImage(swapRB=true)); the model's batch dimension is freed at load time
when the export pinned it to 1, so a batch of up to MAX_FACES_PER_RUN faces is one session.run call.

The same call can also return what the mask classifier reads: the lower-face rows of one of the network's
feature maps (`lower_face_tensor`), averaged to one vector per face. The network has already looked at the
nose, mouth and chin there; reading its activations costs a copy, not another model run.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.pipeline.config import EmbeddingConfig
from workers.pipeline.onnx_session import LoadedModel, load_model

# Where the lower face starts, as a fraction of the feature map's height: the nose tip of the 112x112 ArcFace
# template is at y 72 (0.64); on SFace's 14x14 conv_12 map this keeps rows 8 to 13, nose to chin.
LOWER_FACE_FROM = 4 / 7
# A session.run's activations grow with its batch and onnxruntime keeps that memory for the process: one run
# over 100 faces with their mirror images peaks at 3.3 GB, over 20 faces at 0.7 GB (student-v2-flip, 1
# thread). Larger batches (a crowd photo, max_faces up to 100) run in chunks of this many faces.
MAX_FACES_PER_RUN = 16


@dataclass(frozen=True, eq=False)
class FaceDescriptors:
    embeddings: np.ndarray  # (N, D) float32, L2-normalised
    lower_face: np.ndarray  # (N, C) float32: the lower-face rows of the feature map, averaged per channel


class FaceEmbedder:
    def __init__(
        self,
        model_path: Path | str,
        *,
        intra_op_threads: int = 2,
        inter_op_threads: int = 1,
        thread_spinning: bool = False,
        model_name: str | None = None,
        channel_order: str = "rgb",
        input_mean: float = 0.0,
        input_scale: float = 1.0,
        lower_face_tensor: str | None = None,
        flip_average: bool = False,
    ) -> None:
        if channel_order not in {"rgb", "bgr"}:
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', not {channel_order!r}")
        self.model_path = Path(model_path)
        self.model_name = model_name or self.model_path.stem
        self._runtime_options = {
            "intra_op_threads": intra_op_threads,
            "inter_op_threads": inter_op_threads,
            "thread_spinning": thread_spinning,
        }
        self._swap_to_rgb = channel_order == "rgb"
        self._input_mean = np.float32(input_mean)
        self._input_scale = np.float32(input_scale)
        self.lower_face_tensor = lower_face_tensor
        self.flip_average = flip_average
        self._model: LoadedModel | None = None

    @classmethod
    def from_config(
        cls,
        config: EmbeddingConfig,
        *,
        intra_op_threads: int = 2,
        inter_op_threads: int = 1,
        thread_spinning: bool = False,
    ) -> "FaceEmbedder":
        return cls(
            config.model_path,
            intra_op_threads=intra_op_threads,
            inter_op_threads=inter_op_threads,
            thread_spinning=thread_spinning,
            model_name=config.model_name,
            channel_order=config.channel_order,
            input_mean=config.input_mean,
            input_scale=config.input_scale,
            lower_face_tensor=config.lower_face_tensor,
            flip_average=config.flip_average,
        )

    @property
    def model_version(self) -> str:
        """Model name plus the first 12 hex digits of the file's SHA-256, e.g. 'sface-2021dec-0ba9fbfa01b5'.

        Galleries store it with their templates: embeddings of different versions must never be compared.
        """
        return f"{self.model_name}-{self._loaded().short_hash}"

    @property
    def input_size(self) -> int:
        side = self._loaded().session.get_inputs()[0].shape[-1]
        return side if isinstance(side, int) else 112

    @property
    def embedding_dim(self) -> int:
        return int(self._loaded().session.get_outputs()[0].shape[-1])

    def load(self) -> None:
        """Create the session now rather than on the first request."""
        self._loaded()

    def embed(self, crops: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings of N aligned BGR uint8 crops, MAX_FACES_PER_RUN per run."""
        session = self._loaded().session
        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.concatenate(
            [
                self._combine(session.run([session.get_outputs()[0].name], self._feed(chunk))[0], len(chunk))
                for chunk in _chunks(crops)
            ]
        )

    def describe(self, crops: Sequence[np.ndarray] | np.ndarray) -> FaceDescriptors:
        """Embeddings and lower-face activations of N aligned BGR uint8 crops, MAX_FACES_PER_RUN per run."""
        if self.lower_face_tensor is None:
            raise ValueError(f"{self.model_name} is configured without a lower_face_tensor")
        session = self._loaded().session
        if len(crops) == 0:
            channels = session.get_outputs()[-1].shape[1]
            return FaceDescriptors(
                np.zeros((0, self.embedding_dim), np.float32),
                np.zeros((0, channels if isinstance(channels, int) else 0), np.float32),
            )
        embeddings, lower_face = [], []
        for chunk in _chunks(crops):
            chunk_embeddings, feature_map = session.run(
                [session.get_outputs()[0].name, self.lower_face_tensor], self._feed(chunk)
            )
            first_row = round(feature_map.shape[2] * LOWER_FACE_FROM)
            embeddings.append(self._combine(chunk_embeddings, len(chunk)))
            lower_face.append(feature_map[: len(chunk), :, first_row:, :].mean(axis=(2, 3), dtype=np.float32))
        return FaceDescriptors(np.concatenate(embeddings), np.concatenate(lower_face))

    def _combine(self, embeddings: np.ndarray, count: int) -> np.ndarray:
        """One L2-normalised embedding per face: with flip_average, the sum of the crop's and its mirror's."""
        embeddings = embeddings.astype(np.float32, copy=False)
        if self.flip_average:
            embeddings = l2_normalise(embeddings[:count]) + l2_normalise(embeddings[count:])
        return l2_normalise(embeddings)

    def _feed(self, crops: Sequence[np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        session = self._loaded().session
        batch = np.ascontiguousarray(crops) if isinstance(crops, np.ndarray) else np.stack(crops)
        side = self.input_size
        if batch.dtype != np.uint8 or batch.shape[1:] != (side, side, 3):
            raise ValueError(
                f"expected aligned uint8 crops of shape ({side}, {side}, 3), got {batch.shape} {batch.dtype}"
            )
        if self.flip_average:
            batch = np.concatenate([batch, batch[:, :, ::-1]])
        if self._swap_to_rgb:
            batch = batch[..., ::-1]
        tensor = batch.transpose(0, 3, 1, 2).astype(np.float32)
        if self._input_mean:
            tensor -= self._input_mean
        if self._input_scale != 1:
            tensor *= self._input_scale
        return {session.get_inputs()[0].name: tensor}

    def _loaded(self) -> LoadedModel:
        if self._model is None:
            self._model = load_model(
                self.model_path,
                free_dimensions="batch",
                extra_outputs=(self.lower_face_tensor,) if self.lower_face_tensor else (),
                **self._runtime_options,
            )
        return self._model


def _chunks(crops: Sequence[np.ndarray] | np.ndarray) -> list[Sequence[np.ndarray] | np.ndarray]:
    return [crops[start : start + MAX_FACES_PER_RUN] for start in range(0, len(crops), MAX_FACES_PER_RUN)]


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)
