"""Is this face masked? Logistic regression on the embedding network's own view of the lower face.

The input is `FaceDescriptors.lower_face` (workers/pipeline/embedding.py): SFace's `conv_12_relu` feature
map (512 channels, 14x14, computed anyway to embed the face) averaged over the rows from the nose tip to the
chin. SFace's final embedding is trained to ignore masks (a person's masked and unmasked embeddings have
cosine ~0.8; a classifier on it found 1% of the RWMFD masked faces), but two blocks before the end the
network still says plainly whether it sees a nose and a mouth or fabric.

It replaced a classifier on hand-made features of the crop (HOG, brightness and colour of the lower face
against the eyes), trained and thresholded the same way (`workers.training.train_mask_classifier`: synthetic
masks on LFW training identities, threshold at 1.5% of unmasked validation faces): on the largest face of
each RWMFD photo recall went from 94.6% to 97.8%, on every RWMFD detection from 87.2% to 96.5%, while
unmasked LFW test faces called masked went from 1.1% to 0.4%.

It has learned what a real nose and mouth look like, so a face without them is called masked whatever
covers it: a scarf or a hand over the mouth, and also a drawn face (the cartoons of the test suite score 1.0).

The stored bias already includes the decision threshold chosen on validation identities, so
`probability >= 0.5` is the operating point and `masked` is exactly that comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workers.pipeline.errors import ModelUnavailable

DEFAULT_WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "mask_classifier.json"
WEIGHTS_FORMAT = "visor-mask-classifier/2"
# The feature map the weights were fitted on (EmbeddingConfig.lower_face_tensor) and how it is pooled.
FEATURES_VERSION = "conv_12_relu-lower-rows-mean-v1"
LOWER_FACE_TENSOR = "conv_12_relu"


@dataclass(frozen=True)
class MaskClassifier:
    """logit = lower_face . weights + bias; `probability >= 0.5` is the validated operating point."""

    weights: np.ndarray
    bias: float
    metadata: dict = field(default_factory=dict)
    lower_face_tensor: str = LOWER_FACE_TENSOR

    @classmethod
    def load(cls, path: Path | str | None = None) -> MaskClassifier:
        path = Path(path) if path else DEFAULT_WEIGHTS_PATH
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ModelUnavailable(f"cannot read mask classifier weights {path}: {error}") from error
        if stored.get("format") != WEIGHTS_FORMAT or stored.get("features") != FEATURES_VERSION:
            raise ModelUnavailable(
                f"{path} holds {stored.get('format')}/{stored.get('features')}, "
                f"this code reads {WEIGHTS_FORMAT}/{FEATURES_VERSION}"
            )
        return cls(
            np.asarray(stored["weights"], np.float64), float(stored["bias"]), stored.get("metadata", {})
        )

    def save(self, path: Path | str) -> None:
        document = {
            "format": WEIGHTS_FORMAT,
            "features": FEATURES_VERSION,
            "bias": self.bias,
            "weights": [float(w) for w in self.weights],
            "metadata": self.metadata,
        }
        Path(path).write_text(json.dumps(document, indent=1) + "\n")

    def probabilities(self, lower_face: np.ndarray) -> np.ndarray:
        lower_face = np.asarray(lower_face, np.float64)
        if lower_face.ndim != 2 or lower_face.shape[1] != len(self.weights):
            raise ValueError(
                f"expected (N, {len(self.weights)}) lower-face activations, got {lower_face.shape}"
            )
        logits = lower_face @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))

    def predict(self, lower_face: np.ndarray) -> list[tuple[bool, float]]:
        """(masked, probability) per face, from its (C,) row of `FaceDescriptors.lower_face`."""
        return [(bool(p >= 0.5), float(p)) for p in self.probabilities(lower_face)]
