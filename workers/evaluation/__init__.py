"""Accuracy evaluation of the face pipeline on ../shared/data (plain Python, no Django).

    python -m workers.evaluation [--limit N] [--protocols a,b,c,d,e] [--model sface|student]
                                 [--output docs/accuracy.md]

Modules: metrics (pure score-array metrics), lfw (file lists and splits), cache and extract (faces and
embeddings through the production pipeline, cached under var/eval-cache/), identification (vectorised 1:N),
tune (fits workers.pipeline.matching's mask-aware calibration), protocols (a..e), plots (SVG), report (JSON,
markdown, CLI).
"""
