"""The face pipeline core, plain Python (no Django): intake, detection, quality, alignment, embedding,
scoring, and their orchestration in `pipeline.FacePipeline`. Import the submodules you need; this package
imports nothing itself so that light users (mask synthesis, training scripts) do not load onnxruntime."""
