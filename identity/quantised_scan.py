"""An exhaustive first pass for large galleries: every template kept in memory as 8-bit codes and scanned
whole for each probe, the best candidates then scored exactly by PostgreSQL.

HNSW over face embeddings needs an ever wider beam as a gallery grows: at 1,000,000 templates it finds 0.937
of the exact 10 nearest at a p95 of 56 ms on 2 cores, and 0.98 at 107 ms (docs/performance.md). A scan of
every template cannot miss one for the size of the gallery, and 8-bit codes make it cheap: one int8
matrix-vector product (onnxruntime's MatMulInteger) over 1,000,000 x 128 codes, 128 MB, takes ~7 ms on
2 cores. The codes only choose candidates (CANDIDATE_FACTOR times the templates asked for); the search
(identity.search) scores them, and every template added since the codes were made, exactly in PostgreSQL
under the tenant's row-level security. So a deleted template is never returned (its row is gone), a new one
is found at once, and another tenant's rows cannot be, whatever this cache holds.

Each process keeps the codes of the galleries it searched, least recently used first out, within
VISOR_SCAN_CACHE_MB (0 turns the scan off). A gallery's codes are made in a background thread the first time
it is searched (its HNSW index answers until then) and made again once too many templates were added or
removed since.
"""

import logging
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache

import numpy as np
from django.conf import settings
from django.db import connection

from identity.models import EMBEDDING_DIMENSIONS, FaceTemplate
from tenants.rls import tenant_transaction
from workers.pipeline import protobuf_wire

logger = logging.getLogger(__name__)

# On realistic synthetic galleries of 1,000,000 templates (bench/seed.py), the exact 10 nearest are all
# among the 50 best by code for every probe (bench/search.py); twice what is asked for leaves room for
# templates deleted since the codes were made.
CANDIDATE_FACTOR = 2
# Codes are made again when this many templates were added since (each search scores all of them exactly).
REMAKE_AFTER_ADDED = 5_000
REMAKE_AFTER_ADDED_SHARE = 0.02
LOAD_CHUNK = 50_000

_TABLE = FaceTemplate._meta.db_table
# vector_send's wire format: int16 dimensions, int16 unused, then big-endian float32 values.
_VECTOR_HEADER_FLOATS = 1
# onnx.proto's TensorProto.DataType and AttributeProto.AttributeType values used by the scan model.
_FLOAT, _UINT8, _INT8, _INT32, _INT64 = 1, 2, 3, 6, 7
_ATTRIBUTE_INT = 2


@dataclass(frozen=True)
class GalleryCodes:
    """Every template of one gallery and model that existed when the codes were made."""

    tenant_id: uuid.UUID
    gallery_id: uuid.UUID
    model_version: str
    template_ids: np.ndarray  # (N,) int64, ascending
    codes: np.ndarray  # (D, N) int8: column j is template j's code
    # (N,) int32: 128 times the sum of each template's code, so that the scan can take the probe's code
    # unsigned and subtract its offset afterwards (a zero point in MatMulInteger would sum every code again).
    code_offsets: np.ndarray
    mean: np.ndarray  # (D,) float32, subtracted before coding
    step: np.ndarray  # (D,) float32, the value of one code unit in each dimension
    # Every template of the gallery with a larger id was added after the codes were made.
    through_id: int

    @property
    def key(self) -> tuple[uuid.UUID, uuid.UUID, str]:
        return (self.tenant_id, self.gallery_id, self.model_version)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.template_ids.nbytes + self.code_offsets.nbytes

    def candidates(self, probe: np.ndarray, count: int) -> np.ndarray:
        """Ids of the `count` templates whose codes are most similar to `probe` (unit vector), any order."""
        count = min(count, len(self.template_ids))
        if count == 0:
            return self.template_ids[:0]
        # <probe, mean + step * code> ranks as <probe * step, code>; that is coded to uint8 around 128.
        weights = probe.astype(np.float32) * self.step
        unit = max(float(np.abs(weights).max()) / 127, 1e-12)
        probe_code = (np.rint(weights / unit) + 128).astype(np.uint8)[None, :]
        (order,) = _scan_session().run(
            ["order"],
            {
                "probe": probe_code,
                "codes": self.codes,
                "code_offsets": self.code_offsets,
                "count": np.array([count], dtype=np.int64),
            },
        )
        return self.template_ids[order[0]]

    def needs_remaking(self, *, added: int, live_candidates: int, wanted: int) -> bool:
        """After a search: `added` templates were newer than the codes and only `live_candidates` of the
        candidates still existed, for `wanted` templates asked for."""
        too_many_added = added > max(REMAKE_AFTER_ADDED, REMAKE_AFTER_ADDED_SHARE * len(self.template_ids))
        return too_many_added or live_candidates < min(wanted, len(self.template_ids))


def coded(
    *, tenant_id, gallery_id, model_version: str, template_ids: np.ndarray, embeddings: np.ndarray, through_id
) -> GalleryCodes:
    """The codes of `embeddings` (N, D), unit rows."""
    mean = embeddings.mean(axis=0, dtype=np.float64).astype(np.float32) if len(embeddings) else None
    if mean is None:
        mean = np.zeros(EMBEDDING_DIMENSIONS, dtype=np.float32)
    centred = embeddings - mean
    spread = np.abs(centred).max(axis=0) if len(embeddings) else np.ones(EMBEDDING_DIMENSIONS)
    step = (np.maximum(spread, 1e-6) / 127).astype(np.float32)
    codes = np.ascontiguousarray(np.rint(centred / step).clip(-127, 127).astype(np.int8).T)
    return GalleryCodes(
        tenant_id=uuid.UUID(str(tenant_id)),
        gallery_id=uuid.UUID(str(gallery_id)),
        model_version=model_version,
        template_ids=np.asarray(template_ids, dtype=np.int64),
        codes=codes,
        code_offsets=(codes.sum(axis=0, dtype=np.int32) * 128).astype(np.int32),
        mean=mean,
        step=step,
        through_id=int(through_id),
    )


def hold_off_codes(*, gallery_id) -> None:
    """Called by every transaction that adds templates to a gallery, before it adds them: until it ends, no
    codes of the gallery can be made, so the codes' `through_id` never passes a template not yet committed."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [_advisory_key(gallery_id)])


def make(*, tenant_id, gallery_id, model_version: str) -> GalleryCodes:
    """The gallery's codes, made now from its templates, and kept for its searches in this process."""
    gallery_id = uuid.UUID(str(gallery_id))
    with tenant_transaction(tenant_id), connection.cursor() as cursor:
        # Waits for the transactions adding templates to this gallery: every template with an id up to the
        # largest now is committed, and a later one gets a larger id from the sequence.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_advisory_key(gallery_id)])
        cursor.execute(
            f"SELECT max(id) FROM {_TABLE} WHERE tenant_id = %s AND gallery_id = %s",
            [
                tenant_id,
                gallery_id,
            ],
        )
        through_id = cursor.fetchone()[0] or 0
    ids, embeddings = [], []
    after = 0
    while True:
        # One short transaction per chunk: a template deleted meanwhile only costs a candidate slot.
        with tenant_transaction(tenant_id), connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT id, vector_send(embedding) FROM {_TABLE}
                WHERE tenant_id = %s AND gallery_id = %s AND model_version = %s AND id > %s AND id <= %s
                ORDER BY id LIMIT %s
                """,
                [tenant_id, gallery_id, model_version, after, through_id, LOAD_CHUNK],
            )
            rows = cursor.fetchall()
        if not rows:
            break
        ids.append(np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows)))
        values = np.frombuffer(b"".join(bytes(row[1]) for row in rows), dtype=">f4")
        embeddings.append(values.reshape(len(rows), -1)[:, _VECTOR_HEADER_FLOATS:].astype(np.float32))
        after = int(ids[-1][-1])
    codes = coded(
        tenant_id=tenant_id,
        gallery_id=gallery_id,
        model_version=model_version,
        template_ids=np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64),
        embeddings=np.concatenate(embeddings)
        if embeddings
        else np.zeros((0, EMBEDDING_DIMENSIONS), np.float32),
        through_id=through_id,
    )
    keep(codes)
    return codes


def codes_for(*, tenant_id, gallery) -> GalleryCodes | None:
    """The gallery's codes if this process holds them; if not, they are made in the background.
    VISOR_SCAN_CACHE_MB = 0 turns the scan off: large galleries are then searched through HNSW alone."""
    if settings.VISOR_SCAN_CACHE_MB <= 0:
        return None
    key = (uuid.UUID(str(tenant_id)), uuid.UUID(str(gallery.id)), gallery.model_version)
    codes = _cache.get(key)
    if codes is None:
        remake_in_background(tenant_id=key[0], gallery_id=key[1], model_version=key[2])
    return codes


def remake_in_background(*, tenant_id, gallery_id, model_version: str) -> None:
    key = (uuid.UUID(str(tenant_id)), uuid.UUID(str(gallery_id)), model_version)
    if not _cache.start_making(key):
        return
    threading.Thread(
        target=_make_in_thread, kwargs={"key": key}, name=f"gallery-codes-{key[1]}", daemon=True
    ).start()


def keep(codes: GalleryCodes) -> None:
    """Hold `codes` for their gallery's searches in this process, in place of any it held."""
    _cache.keep(codes)


def forget_all() -> None:
    """Drop every gallery's codes held by this process."""
    _cache.clear()


def _make_in_thread(*, key) -> None:
    tenant_id, gallery_id, model_version = key
    try:
        make(tenant_id=tenant_id, gallery_id=gallery_id, model_version=model_version)
    except Exception:
        # The gallery's HNSW index goes on answering; the next search tries again.
        logger.exception("making the codes of gallery %s failed", gallery_id)
    finally:
        _cache.done_making(key)
        connection.close()


def _advisory_key(gallery_id) -> int:
    return int.from_bytes(uuid.UUID(str(gallery_id)).bytes[:8], "big", signed=True)


class _CodesCache:
    def __init__(self):
        self._lock = threading.Lock()
        self._codes: OrderedDict[tuple, GalleryCodes] = OrderedDict()
        self._making: set[tuple] = set()

    def get(self, key) -> GalleryCodes | None:
        with self._lock:
            codes = self._codes.get(key)
            if codes is not None:
                self._codes.move_to_end(key)
            return codes

    def keep(self, codes: GalleryCodes) -> None:
        budget = settings.VISOR_SCAN_CACHE_MB * 1024 * 1024
        with self._lock:
            self._codes.pop(codes.key, None)
            if codes.nbytes > budget:
                logger.warning(
                    "gallery %s: codes of %d templates exceed VISOR_SCAN_CACHE_MB; HNSW alone searches it",
                    codes.gallery_id,
                    len(codes.template_ids),
                )
                return
            while self._codes and sum(kept.nbytes for kept in self._codes.values()) + codes.nbytes > budget:
                self._codes.popitem(last=False)
            self._codes[codes.key] = codes

    def start_making(self, key) -> bool:
        with self._lock:
            if key in self._making:
                return False
            self._making.add(key)
            return True

    def done_making(self, key) -> None:
        with self._lock:
            self._making.discard(key)

    def clear(self) -> None:
        with self._lock:
            self._codes.clear()


_cache = _CodesCache()


@cache
def _scan_session():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.VISOR_ONNX_THREADS
    return onnxruntime.InferenceSession(_scan_model(), options, providers=["CPUExecutionProvider"])


def _scan_model() -> bytes:
    """ONNX model: order = TopK(MatMulInteger(probe, codes) - code_offsets, count), written field by field
    (onnx/onnx.proto's numbers) because the `onnx` package is not a dependency of the service."""
    varint, data = protobuf_wire.WIRE_VARINT, protobuf_wire.WIRE_BYTES

    def message(*fields) -> bytes:
        return protobuf_wire.serialise(
            [
                (number, varint, protobuf_wire.encode_varint(value))
                if isinstance(value, int)
                else (number, data, value.encode() if isinstance(value, str) else value)
                for number, value in fields
            ]
        )

    def node(op_type: str, inputs: list[str], outputs: list[str], **int_attributes: int) -> bytes:
        attributes = [
            (5, message((1, name), (3, value), (20, _ATTRIBUTE_INT)))
            for name, value in int_attributes.items()
        ]
        return message(
            *[(1, name) for name in inputs], *[(2, name) for name in outputs], (4, op_type), *attributes
        )

    def tensor_info(name: str, element_type: int) -> bytes:
        return message((1, name), (2, message((1, message((1, element_type))))))

    graph = message(
        (1, node("MatMulInteger", ["probe", "codes"], ["offset_scores"])),
        (1, node("Sub", ["offset_scores", "code_offsets"], ["scores"])),
        (1, node("Cast", ["scores"], ["scores_float"], to=_FLOAT)),
        (1, node("TopK", ["scores_float", "count"], ["best", "order"], largest=1, sorted=0)),
        (2, "gallery_codes_scan"),
        (11, tensor_info("probe", _UINT8)),
        (11, tensor_info("codes", _INT8)),
        (11, tensor_info("code_offsets", _INT32)),
        (11, tensor_info("count", _INT64)),
        (12, tensor_info("best", _FLOAT)),
        (12, tensor_info("order", _INT64)),
    )
    return message((1, 8), (7, graph), (8, message((1, ""), (2, 17))))
