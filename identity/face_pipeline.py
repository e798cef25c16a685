"""The process-wide face pipeline, configured from Django settings.

Building it loads the ONNX sessions, so it is built once per process, on first use.
"""

from functools import cache

from django.conf import settings

from workers.pipeline.config import IntakeLimits, PipelineConfig
from workers.pipeline.pipeline import FacePipeline


@cache
def get_face_pipeline() -> FacePipeline:
    config = PipelineConfig.for_model_dir(
        settings.VISOR_MODEL_DIR,
        intake=IntakeLimits(
            max_bytes=settings.VISOR_MAX_IMAGE_BYTES, max_pixels=settings.VISOR_MAX_IMAGE_PIXELS
        ),
        intra_op_threads=settings.VISOR_ONNX_THREADS,
    )
    return FacePipeline(config, mask_classifier=_mask_classifier())


def _mask_classifier():
    from workers.pipeline.mask_classifier import MaskClassifier

    return MaskClassifier.load()
