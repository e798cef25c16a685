"""Realistic synthetic galleries and probes for the search and identify benchmarks, and fast seeding.

Where the numbers come from: bench/embedding_stats.npz, fitted to real SFace embeddings of LFW photos run
through the production pipeline (`python -m bench.embedding_stats`). The generator is a two-level Gaussian
in embedding space, renormalised to the unit sphere:

    identity centre  c = mean + B z          (B B^T: covariance of real identity centres)
    photo            p = norm(c + W z')      (W W^T: covariance of a real photo around its identity's centre)
    masked photo     m = norm(p + d_t + M_t z'')   (d_t, M_t: mean and covariance of (masked - plain) for
                                                    mask type t, measured with the enrollment augmentation)

So the benchmark data has the real embeddings' anisotropy (most of the between-identity variance lies in a
few dozen directions, which is what makes HNSW work on real faces), the real genuine/impostor similarity
distributions and the real pull of a mask towards a common "masked" region. The old generator (identity
centres uniform on the 128-d sphere) is the hardest possible case for HNSW and unlike any face model.
`python -m bench.seed --check` prints generated vs real similarity percentiles.

A gallery is laid out as enrollment makes it: a subject has 1-3 enrolled faces and every face stores its
original template plus `MASKED_PER_FACE` synthetic_mask templates. Probes are new photos (not in the gallery)
of enrolled subjects, plain or wearing a mask type the enrollment augmentation never drew, and strangers.

Rows are written with INSERT ... SELECT FROM unnest(arrays) inside the tenant's transaction (COPY is refused
on tables under row-level security), so row-level security checks every one of them.
"""

import argparse
import io
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATS_PATH = Path(__file__).with_name("embedding_stats.npz")
MASKED_PER_FACE = 2  # what enrollment stores per face (workers.pipeline.enrollment_augmentation)
FACES_PER_SUBJECT = {1: 0.5, 2: 0.35, 3: 0.15}
# Probe mix: (kind, share). Masked probes wear mask types 2 and 3 of the stats (KN95, coloured cloth), which
# enrollment never synthesises (it draws types 0 and 1).
# A Gaussian with one covariance gives every photo the same spread, but real photos vary (pose, light, blur):
# a per-photo log-normal scale (k, s) on the within-identity noise and on the mask change, chosen so that the
# generated genuine and masked-vs-plain similarity percentiles match the real ones (`--check`).
PHOTO_SCALE = (1.05, 0.3)
MASK_SCALE = (1.15, 0.15)
PROBE_MIX = (("genuine", 0.4), ("genuine_masked", 0.2), ("stranger", 0.3), ("stranger_masked", 0.1))


def _normalised(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class EmbeddingModel:
    mean: np.ndarray
    between: np.ndarray
    within: np.ndarray
    mask_offset: np.ndarray
    mask_factor: np.ndarray
    mask_types: tuple[str, ...]

    @classmethod
    def load(cls, path: Path = STATS_PATH) -> "EmbeddingModel":
        with np.load(path) as data:
            return cls(
                mean=data["mean"],
                between=data["between"],
                within=data["within"],
                mask_offset=data["mask_offset"],
                mask_factor=data["mask_factor"],
                mask_types=tuple(str(t) for t in data["mask_types"]),
            )

    def centres(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """(count, 128) identity centres (not unit norm)."""
        return self.mean + rng.standard_normal((count, 128), dtype=np.float32) @ self.between.T

    def photos(self, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One new photo's unit embedding per centre."""
        noise = rng.standard_normal(centres.shape, dtype=np.float32) @ self.within.T
        return _normalised(centres + _photo_scales(len(centres), PHOTO_SCALE, rng) * noise)

    def masked(self, photos: np.ndarray, mask_type: int, rng: np.random.Generator) -> np.ndarray:
        """The same photos wearing mask type `mask_type` (an index into mask_types)."""
        noise = rng.standard_normal(photos.shape, dtype=np.float32) @ self.mask_factor[mask_type].T
        change = _photo_scales(len(photos), MASK_SCALE, rng) * (self.mask_offset[mask_type] + noise)
        return _normalised(photos + change)


def _photo_scales(count: int, scale: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """(count, 1) factors k * exp(s g - s^2): some photos (or masks) change a face more than others."""
    k, s = scale
    return (k * np.exp(s * rng.standard_normal((count, 1)) - s * s)).astype(np.float32)


@dataclass(frozen=True)
class SyntheticGallery:
    embeddings: np.ndarray  # (templates, 128) float32, unit rows
    subject: np.ndarray  # subject index per template
    face: np.ndarray  # face index per template
    masked: np.ndarray  # bool per template: a synthetic_mask template (else the original)
    centres: np.ndarray  # (subjects, 128) identity centres

    @property
    def subjects(self) -> int:
        return len(self.centres)

    @property
    def faces(self) -> int:
        return int(self.face[-1]) + 1


def synthetic_gallery(
    templates: int, *, rng: np.random.Generator, model: EmbeddingModel | None = None
) -> SyntheticGallery:
    """`templates` rows laid out as enrollment stores them (original + MASKED_PER_FACE masked per face)."""
    model = model or EmbeddingModel.load()
    per_face = 1 + MASKED_PER_FACE
    faces_needed = -(-templates // per_face)
    sizes, shares = zip(*FACES_PER_SUBJECT.items(), strict=True)
    mean_faces = float(np.dot(sizes, shares))
    counts = rng.choice(sizes, p=shares, size=int(faces_needed / mean_faces * 1.1) + 10)
    subjects = int(np.searchsorted(np.cumsum(counts), faces_needed)) + 1
    face_owner = np.repeat(np.arange(subjects), counts[:subjects])[:faces_needed]
    centres = model.centres(subjects, rng)
    photos = model.photos(centres[face_owner], rng)
    layers = [photos] + [model.masked(photos, t, rng) for t in range(MASKED_PER_FACE)]
    embeddings = np.stack(layers, axis=1).reshape(-1, 128)[:templates]
    return SyntheticGallery(
        embeddings=np.ascontiguousarray(embeddings),
        subject=np.repeat(face_owner, per_face)[:templates],
        face=np.repeat(np.arange(faces_needed), per_face)[:templates],
        masked=np.tile(np.arange(per_face) > 0, faces_needed)[:templates],
        centres=centres,
    )


def synthetic_probes(
    gallery: SyntheticGallery, count: int, *, rng: np.random.Generator, model: EmbeddingModel | None = None
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(probes (count, 128), kind per probe, true subject index per probe or -1 for a stranger)."""
    model = model or EmbeddingModel.load()
    kinds = [kind for kind, share in PROBE_MIX for _ in range(round(share * count))][:count]
    kinds += ["genuine"] * (count - len(kinds))
    rng.shuffle(kinds)
    truth = np.where(
        [kind.startswith("genuine") for kind in kinds], rng.integers(0, gallery.subjects, size=count), -1
    )
    centres = np.where(truth[:, None] >= 0, gallery.centres[np.maximum(truth, 0)], model.centres(count, rng))
    probes = model.photos(centres, rng)
    unseen_types = list(range(MASKED_PER_FACE, len(model.mask_types))) or [0]
    for index, kind in enumerate(kinds):
        if kind.endswith("masked"):
            probes[index] = model.masked(probes[index : index + 1], int(rng.choice(unseen_types)), rng)[0]
    return probes, kinds, truth


def vector_texts(vectors: np.ndarray) -> list[str]:
    """pgvector text literals, 6 decimals (what the database stores, to float4 precision)."""
    buffer = io.StringIO()
    np.savetxt(buffer, vectors, fmt="%.6f", delimiter=",")
    return ["[" + line + "]" for line in buffer.getvalue().splitlines()]


def as_stored(vectors: np.ndarray) -> np.ndarray:
    """The vectors as the database holds them after vector_texts (for exact ground truth)."""
    return np.round(vectors.astype(np.float64), 6).astype(np.float32)


def _insert(table: str, columns: dict[str, str], rows, chunk: int = 10_000) -> None:
    """Bulk INSERT ... SELECT FROM unnest(arrays): COPY is refused on tables under row-level security."""
    from django.db import connection

    names, types = list(columns), list(columns.values())
    selects = ", ".join(f"%s::{kind}[]" for kind in types)
    sql = f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({selects})"
    rows = list(rows)
    with connection.cursor() as cursor:
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            cursor.execute(sql, [list(column) for column in zip(*part, strict=True)])


def seed_gallery(*, tenant, gallery, data: SyntheticGallery, batch: int = 30_000, progress=None) -> None:
    """Write the gallery's subjects, faces and templates (`batch` templates per transaction)."""
    from django.db.models import F
    from django.utils import timezone

    from identity import quantised_scan
    from identity.models import Face, FaceTemplate, Gallery, Subject
    from tenants.rls import tenant_transaction

    if batch % (1 + MASKED_PER_FACE):
        raise ValueError(f"batch must be a multiple of {1 + MASKED_PER_FACE} templates")
    subject_ids = [uuid.uuid4() for _ in range(data.subjects)]
    face_ids = [uuid.uuid4() for _ in range(data.faces)]
    now = timezone.now()
    with tenant_transaction(tenant.id):
        _insert(
            Subject._meta.db_table,
            {
                "id": "uuid",
                "tenant_id": "uuid",
                "gallery_id": "uuid",
                "external_id": "text",
                "name": "text",
                "metadata": "jsonb",
                "created_at": "timestamptz",
                "updated_at": "timestamptz",
            },
            ((sid, tenant.id, gallery.id, f"seed-{sid.hex}", "", "{}", now, now) for sid in subject_ids),
        )
        # What identity.services.create_subject keeps for each subject it adds.
        Gallery.objects.filter(id=gallery.id, tenant=tenant).update(
            subject_count=F("subject_count") + len(subject_ids)
        )
    face_owner = np.zeros(data.faces, dtype=np.int64)
    face_owner[data.face] = data.subject
    for start in range(0, len(data.embeddings), batch):
        stop = min(start + batch, len(data.embeddings))
        # Faces are whole within a batch (a face's templates are consecutive and batch is a multiple of them).
        new_faces = range(int(data.face[start]), int(data.face[stop - 1]) + 1)
        texts = vector_texts(data.embeddings[start:stop])
        with tenant_transaction(tenant.id):
            quantised_scan.hold_off_codes(gallery_id=gallery.id)
            _insert(
                Face._meta.db_table,
                {
                    "id": "uuid",
                    "tenant_id": "uuid",
                    "gallery_id": "uuid",
                    "subject_id": "uuid",
                    "bbox": "jsonb",
                    "landmarks": "jsonb",
                    "detection_score": "float8",
                    "quality_score": "float8",
                    "quality_issues": "jsonb",
                    "masked": "bool",
                    "mask_probability": "float8",
                    "model_version": "text",
                    "image_key": "text",
                    "image_sha256": "text",
                    "created_at": "timestamptz",
                },
                (
                    (
                        face_ids[f],
                        tenant.id,
                        gallery.id,
                        subject_ids[face_owner[f]],
                        "{}",
                        "{}",
                        0.9,
                        0.9,
                        "[]",
                        False,
                        0.0,
                        gallery.model_version,
                        "",
                        "0" * 64,
                        now,
                    )
                    for f in new_faces
                ),
            )
            _insert(
                FaceTemplate._meta.db_table,
                {
                    "tenant_id": "uuid",
                    "gallery_id": "uuid",
                    "subject_id": "uuid",
                    "face_id": "uuid",
                    "kind": "text",
                    "embedding": "vector",
                    "model_version": "text",
                },
                (
                    (
                        tenant.id,
                        gallery.id,
                        subject_ids[data.subject[i]],
                        face_ids[data.face[i]],
                        "synthetic_mask" if data.masked[i] else "original",
                        texts[i - start],
                        gallery.model_version,
                    )
                    for i in range(start, stop)
                ),
            )
        if progress:
            progress(stop)


def _rounded(values) -> list[float]:
    return [round(float(v), 3) for v in values]


def two_nn_dimension(vectors: np.ndarray) -> float:
    """TwoNN intrinsic dimension (Facco et al. 2017) of unit vectors, from 2nd / 1st neighbour distances."""
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1)
    nearest = -np.sort(-similarity, axis=1)[:, :2]
    distance = np.sqrt(np.clip(2 - 2 * nearest, 0, None))
    usable = distance[:, 0] > 1e-3  # duplicates
    return float(usable.sum() / np.log(distance[usable, 1] / distance[usable, 0]).sum())


def _real_embeddings() -> np.ndarray | None:
    """One cached SFace embedding per LFW identity from var/eval-cache (`python -m workers.evaluation`)."""
    from workers.pipeline.config import REPO_ROOT

    chunks = sorted((REPO_ROOT / "var" / "eval-cache" / "embeddings").glob("sface-*/*/lfw/chunk-*.npz"))
    seen: dict[str, np.ndarray] = {}
    for chunk in chunks:
        with np.load(chunk) as data:
            for key, embedding in zip(data["keys"], data["embeddings"], strict=True):
                path, variant = str(key).split("|")
                if variant == "plain" and not np.isnan(embedding).any():
                    seen.setdefault(path.split("/")[0], embedding)
    return np.stack(list(seen.values())) if len(seen) > 1000 else None


def check(templates: int = 20_000) -> None:
    """Generated vs real similarity percentiles (the real ones are stored with the statistics)."""
    with np.load(STATS_PATH) as stats:
        percentiles, real = stats["percentiles"], {k: stats[k] for k in ("genuine", "impostor")}
        real_masked = stats["masked_vs_plain"]
    rng = np.random.default_rng(0)
    model = EmbeddingModel.load()
    data = synthetic_gallery(templates, rng=rng, model=model)
    originals = np.flatnonzero(~data.masked)
    vectors, owners = data.embeddings[originals], data.subject[originals]
    similarity = vectors @ vectors.T
    same = owners[:, None] == owners[None, :]
    upper = np.triu(np.ones_like(same), k=1).astype(bool)
    generated = {"genuine": similarity[same & upper], "impostor": similarity[~same & upper]}
    print("percentiles      ", percentiles.astype(int).tolist())
    for name in ("genuine", "impostor"):
        print(f"{name:9s} real     ", _rounded(real[name]))
        print(f"{name:9s} generated", _rounded(np.percentile(generated[name], percentiles)))
    real = _real_embeddings()
    if real is not None:
        generated_photos = model.photos(model.centres(len(real), rng), rng)
        uniform = _normalised(rng.standard_normal(real.shape).astype(np.float32))
        print(
            f"TwoNN intrinsic dimension of {len(real)} one-per-identity photos: real "
            f"{two_nn_dimension(real):.1f}, generated {two_nn_dimension(generated_photos):.1f}, "
            f"uniform on the sphere {two_nn_dimension(uniform):.1f}"
        )
    photos = model.photos(data.centres[:2000], rng)
    for t, kind in enumerate(model.mask_types):
        generated_masked = np.einsum("nd,nd->n", photos, model.masked(photos, t, rng))
        print(f"{kind:15s} vs plain real     ", _rounded(real_masked[t]))
        print(f"{kind:15s} vs plain generated", _rounded(np.percentile(generated_masked, percentiles)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare generated and real similarities")
    if parser.parse_args().check:
        check()
