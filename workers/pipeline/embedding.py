"""Face embeddings from aligned 112x112 crops with any ONNX model of the SFace interface.

The interface: one NCHW float32 input of (batch, 3, S, S) and one (batch, D) output. Colour order and
normalisation are parameters (SFace wants RGB with raw 0..255 values, which is what OpenCV's
FaceRecognizerSF feeds it via blobFromImage(swapRB=true)); the model's batch dimension is freed at load time
when the export pinned it to 1, so a whole batch is always one session.run call.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from workers.pipeline.config import EmbeddingConfig
from workers.pipeline.onnx_session import LoadedModel, load_model


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
        """(N, D) float32 L2-normalised embeddings of N aligned BGR uint8 crops, in one session.run call."""
        session = self._loaded().session
        if len(crops) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        batch = np.ascontiguousarray(crops) if isinstance(crops, np.ndarray) else np.stack(crops)
        side = self.input_size
        if batch.dtype != np.uint8 or batch.shape[1:] != (side, side, 3):
            raise ValueError(
                f"expected aligned uint8 crops of shape ({side}, {side}, 3), got {batch.shape} {batch.dtype}"
            )
        if self._swap_to_rgb:
            batch = batch[..., ::-1]
        tensor = batch.transpose(0, 3, 1, 2).astype(np.float32)
        if self._input_mean:
            tensor -= self._input_mean
        if self._input_scale != 1:
            tensor *= self._input_scale
        (embeddings,) = session.run([session.get_outputs()[0].name], {session.get_inputs()[0].name: tensor})
        return l2_normalise(embeddings.astype(np.float32, copy=False))

    def _loaded(self) -> LoadedModel:
        if self._model is None:
            self._model = load_model(self.model_path, free_batch_dimension=True, **self._runtime_options)
        return self._model


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, np.finfo(np.float32).tiny)
