"""The process-wide face pipeline, configured from Django settings.

Building it loads the ONNX sessions, so it is built once per process, on first use.
"""

import logging
from functools import cache

from django.conf import settings

from workers.pipeline.config import IntakeLimits, PipelineConfig
from workers.pipeline.enrollment_augmentation import AugmentationConfig
from workers.pipeline.pipeline import FacePipeline

logger = logging.getLogger(__name__)


@cache
def get_face_pipeline() -> FacePipeline:
    config = PipelineConfig.for_model_dir(
        settings.VISOR_MODEL_DIR,
        embedding_model=settings.VISOR_EMBEDDING_MODEL,
        intake=IntakeLimits(
            max_bytes=settings.VISOR_MAX_IMAGE_BYTES, max_pixels=settings.VISOR_MAX_IMAGE_PIXELS
        ),
        intra_op_threads=settings.VISOR_ONNX_THREADS,
    )
    augmentation = (
        AugmentationConfig()
        if settings.VISOR_ENROLL_MASK_VARIANTS is None
        else AugmentationConfig(variants=settings.VISOR_ENROLL_MASK_VARIANTS)
    )
    return FacePipeline(
        config,
        mask_classifier=_mask_classifier(),
        mask_synthesizer=_mask_synthesizer(),
        augmentation=augmentation,
    )


def _mask_classifier():
    from workers.pipeline.mask_classifier import MaskClassifier

    return MaskClassifier.load()


def _mask_synthesizer():
    from workers.pipeline.masks import MaskSynthesizer, templates_available

    if not templates_available(settings.VISOR_MASK_TEMPLATES_DIR):
        logger.warning(
            "mask templates not found in %s (VISOR_MASK_TEMPLATES_DIR): enrollment stores no synthetic-mask "
            "templates, and masked probes will match less well",
            settings.VISOR_MASK_TEMPLATES_DIR,
        )
        return None
    return MaskSynthesizer(settings.VISOR_MASK_TEMPLATES_DIR)
