"""The process-wide face pipelines, configured from Django settings.

`get_face_pipeline()` runs the configured embedding model (VISOR_EMBEDDING_MODEL): new galleries and
templates use it. After the setting changes, galleries whose templates another model made keep working
through `pipeline_for_model_version` until `manage.py reembed` moves them over. Building a pipeline loads
its ONNX sessions, so each is built once per process, on first use.
"""

import logging
from functools import cache

from django.conf import settings

from workers.pipeline.config import (
    EMBEDDING_MODELS,
    REFINED_LANDMARK_MODELS,
    IntakeLimits,
    PipelineConfig,
)
from workers.pipeline.enrollment_augmentation import AugmentationConfig
from workers.pipeline.errors import ModelUnavailable
from workers.pipeline.pipeline import FacePipeline

logger = logging.getLogger(__name__)


def get_face_pipeline() -> FacePipeline:
    return _pipeline(settings.VISOR_EMBEDDING_MODEL)


def pipeline_for_model_version(model_version: str) -> FacePipeline | None:
    """The pipeline whose embedding model made templates of `model_version`; None if no model here did."""
    current = get_face_pipeline()
    if current.model_version == model_version:
        return current
    for name in EMBEDDING_MODELS:
        try:
            pipeline = _pipeline(name)
        except ModelUnavailable:
            continue
        if pipeline.model_version == model_version:
            return pipeline
    return None


@cache
def _pipeline(embedding_model: str) -> FacePipeline:
    config = PipelineConfig.for_model_dir(
        settings.VISOR_MODEL_DIR,
        embedding_model=embedding_model,
        intake=IntakeLimits(
            max_bytes=settings.VISOR_MAX_IMAGE_BYTES, max_pixels=settings.VISOR_MAX_IMAGE_PIXELS
        ),
        intra_op_threads=settings.VISOR_ONNX_THREADS,
    )
    augmentation = (
        None  # the model's calibrated number
        if settings.VISOR_ENROLL_MASK_VARIANTS is None
        else AugmentationConfig(variants=settings.VISOR_ENROLL_MASK_VARIANTS)
    )
    pipeline = FacePipeline(
        config,
        mask_classifier=_mask_classifier(),
        mask_synthesizer=_mask_synthesizer(),
        augmentation=augmentation,
        landmark_refiner=_landmark_refiner() if embedding_model in REFINED_LANDMARK_MODELS else None,
    )
    if pipeline.mask_synthesizer is None and pipeline.augmentation.variants:
        logger.warning(
            "mask templates not found in %s (VISOR_MASK_TEMPLATES_DIR): %s is calibrated with %d "
            "synthetic-mask templates per face, but enrollment stores none, so masked probes match less well",
            settings.VISOR_MASK_TEMPLATES_DIR,
            embedding_model,
            pipeline.augmentation.variants,
        )
    return pipeline


def _mask_classifier():
    from workers.pipeline.mask_classifier import MaskClassifier

    return MaskClassifier.load()


def _landmark_refiner():
    from workers.pipeline.landmark_refiner import LandmarkRefiner

    return LandmarkRefiner()


def _mask_synthesizer():
    from workers.pipeline.masks import MaskSynthesizer, templates_available

    if not templates_available(settings.VISOR_MASK_TEMPLATES_DIR):
        return None
    return MaskSynthesizer(settings.VISOR_MASK_TEMPLATES_DIR)
