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
removed since. Making them streams the templates in chunks: the process needs little more than the codes.
"""

import logging
import threading
import time
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

# On realistic synthetic galleries (bench/seed.py) the exact 10 nearest were among the 50 best by code for
# every probe: 300 probes of 1,000,000 templates (a NumPy check, not committed) and 100 of 30,000
# (tests/identity/test_quantised_scan.py); bench/search.py finds recall@10 1.0 with the 100 candidates
# identify gets. Twice what is asked for leaves room for templates deleted since the codes were made.
CANDIDATE_FACTOR = 2
# Codes are made again when this many templates were added since (each search scores all of them exactly).
REMAKE_AFTER_ADDED = 5_000
REMAKE_AFTER_ADDED_SHARE = 0.02
# A gallery whose codes could not be made or kept (too large, pushed out by others, an error) is searched
# through HNSW alone for this long before its codes are tried again, rather than reloaded on every search.
RETRY_AFTER_SECONDS = 300
# Codes just made are not made again sooner than this, however fast templates arrive meanwhile: every API
# process reads the whole gallery to make them.
REMAKE_AT_MOST_EVERY_SECONDS = 60
# Making codes waits at most this long for the transactions adding templates to the gallery (and holds
# new ones back while it waits).
HOLD_OFF_WAIT = "5s"
# Templates read per query while making codes: the gallery's floats are never all in memory at once.
LOAD_CHUNK = 50_000
# The first chunk fixes each dimension's step; later templates further from the mean are clipped, which
# only costs them rank among the candidates (the re-ranking is exact).
SPREAD_MARGIN = 1.25
BYTES_PER_TEMPLATE = EMBEDDING_DIMENSIONS + 8 + 4  # code, template id, code offset
BACKGROUND_THREAD_PREFIX = "gallery-codes-"

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
    # (D,) float32: the value of one code unit in each dimension (the gallery's mean, subtracted before
    # coding, adds the same to every template's similarity, so the scan does not need it).
    step: np.ndarray
    # Every template of the gallery with a larger id was added after the codes were made.
    through_id: int

    @property
    def key(self) -> tuple[uuid.UUID, uuid.UUID]:
        return (self.tenant_id, self.gallery_id)

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
    """The codes of `embeddings` (N, D), unit rows, coded on their own spread."""
    return _assembled(
        tenant_id=tenant_id,
        gallery_id=gallery_id,
        model_version=model_version,
        chunks=[(np.asarray(template_ids, dtype=np.int64), embeddings)],
        count=len(template_ids),
        through_id=through_id,
        margin=1.0,
    )


def hold_off_codes(*, gallery_id) -> None:
    """Called by every transaction that adds templates to a gallery, before it adds them: until it ends, no
    codes of the gallery can be made, so the codes' `through_id` never passes a template not yet committed."""
    if not connection.in_atomic_block:
        raise RuntimeError("templates must be added in a transaction that holds off the gallery's codes")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [_advisory_key(gallery_id)])


def make(*, tenant_id, gallery_id, model_version: str) -> GalleryCodes | None:
    """The gallery's codes, made now from its templates and kept for its searches in this process; None when
    they would not fit in VISOR_SCAN_CACHE_MB (the gallery is then searched through HNSW alone)."""
    tenant_id, gallery_id = uuid.UUID(str(tenant_id)), uuid.UUID(str(gallery_id))
    with tenant_transaction(tenant_id), connection.cursor() as cursor:
        # Waits for the transactions adding templates to this gallery: every template with an id up to the
        # largest now is committed, and a later one gets a larger id from the sequence.
        cursor.execute("SELECT set_config('lock_timeout', %s, true)", [HOLD_OFF_WAIT])
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_advisory_key(gallery_id)])
        cursor.execute(
            f"SELECT max(id) FROM {_TABLE} WHERE tenant_id = %s AND gallery_id = %s", [tenant_id, gallery_id]
        )
        through_id = cursor.fetchone()[0] or 0
    with tenant_transaction(tenant_id), connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {_TABLE} "
            "WHERE tenant_id = %s AND gallery_id = %s AND model_version = %s AND id <= %s",
            [tenant_id, gallery_id, model_version, through_id],
        )
        count = cursor.fetchone()[0]
    key = (tenant_id, gallery_id)
    if count * BYTES_PER_TEMPLATE > _budget_bytes():
        logger.warning(
            "gallery %s: the codes of %d templates exceed VISOR_SCAN_CACHE_MB; HNSW alone searches it",
            gallery_id,
            count,
        )
        _cache.drop(key)
        return None
    made = _assembled(
        tenant_id=tenant_id,
        gallery_id=gallery_id,
        model_version=model_version,
        chunks=_template_chunks(tenant_id, gallery_id, model_version, through_id=through_id, count=count),
        count=count,
        through_id=through_id,
        margin=SPREAD_MARGIN,
    )
    _scan_session()  # created here, in the background, rather than by the first search that uses the codes
    keep(made)
    return made


def codes_for(*, tenant_id, gallery) -> GalleryCodes | None:
    """The gallery's codes if this process holds them for its model; if not, they are made in the background.
    VISOR_SCAN_CACHE_MB = 0 turns the scan off: large galleries are then searched through HNSW alone."""
    if _budget_bytes() <= 0:
        return None
    key = (uuid.UUID(str(tenant_id)), uuid.UUID(str(gallery.id)))
    codes = _cache.get(key, model_version=gallery.model_version)
    if codes is None:
        remake_in_background(tenant_id=key[0], gallery_id=key[1], model_version=gallery.model_version)
    return codes


def held(*, tenant_id, gallery_id) -> GalleryCodes | None:
    """The codes this process holds for the gallery, of whatever model."""
    return _cache.get((uuid.UUID(str(tenant_id)), uuid.UUID(str(gallery_id))))


def remake_in_background(*, tenant_id, gallery_id, model_version: str) -> None:
    key = (uuid.UUID(str(tenant_id)), uuid.UUID(str(gallery_id)))
    if not _cache.start_making(key):
        return
    thread = threading.Thread(
        target=_make_in_thread,
        kwargs={"tenant_id": key[0], "gallery_id": key[1], "model_version": model_version},
        name=f"{BACKGROUND_THREAD_PREFIX}{key[1]}",
        daemon=True,
    )
    try:
        thread.start()
    except RuntimeError:
        logger.exception("no thread to make the codes of gallery %s", key[1])
        _cache.done_making(key, wait=RETRY_AFTER_SECONDS)


def keep(codes: GalleryCodes) -> None:
    """Hold `codes` for their gallery's searches in this process, in place of any it held."""
    _cache.keep(codes, budget=_budget_bytes())


def forget_all() -> None:
    """Drop every gallery's codes held by this process, and every wait before making them again."""
    _cache.clear()


def _make_in_thread(*, tenant_id, gallery_id, model_version) -> None:
    wait = RETRY_AFTER_SECONDS
    try:
        if make(tenant_id=tenant_id, gallery_id=gallery_id, model_version=model_version) is not None:
            wait = REMAKE_AT_MOST_EVERY_SECONDS
    except Exception:
        logger.exception("making the codes of gallery %s failed", gallery_id)
    finally:
        _cache.done_making((tenant_id, gallery_id), wait=wait)
        connection.close()


def _template_chunks(tenant_id, gallery_id, model_version: str, *, through_id: int, count: int):
    """(template ids, embeddings) of the gallery's templates with ids up to `through_id`, in id order, in
    chunks of up to LOAD_CHUNK, at most `count` in all."""
    after, read = 0, 0
    while read < count:
        # One short transaction per chunk; templates can only have been deleted since they were counted.
        with tenant_transaction(tenant_id), connection.cursor() as cursor:
            cursor.execute(
                f"""
                SELECT string_agg(int8send(id), ''::bytea ORDER BY id),
                       string_agg(vector_send(embedding), ''::bytea ORDER BY id)
                FROM (
                    SELECT id, embedding FROM {_TABLE}
                    WHERE tenant_id = %s AND gallery_id = %s AND model_version = %s AND id > %s AND id <= %s
                    ORDER BY id LIMIT %s
                ) AS chunk
                """,
                [tenant_id, gallery_id, model_version, after, through_id, min(LOAD_CHUNK, count - read)],
            )
            id_bytes, vector_bytes = cursor.fetchone()
        if id_bytes is None:
            return
        ids = np.frombuffer(id_bytes, dtype=">i8").astype(np.int64)
        vectors = np.frombuffer(vector_bytes, dtype=">f4").reshape(len(ids), -1)
        yield ids, vectors[:, _VECTOR_HEADER_FLOATS:].astype(np.float32)
        after, read = int(ids[-1]), read + len(ids)


def _assembled(*, tenant_id, gallery_id, model_version, chunks, count: int, through_id, margin: float):
    """GalleryCodes of up to `count` templates given in (ids, embeddings) chunks; the first chunk's spread,
    widened by `margin`, fixes every dimension's step."""
    template_ids = np.empty(count, dtype=np.int64)
    codes = np.empty((EMBEDDING_DIMENSIONS, count), dtype=np.int8)
    mean = step = None
    filled = 0
    for chunk_ids, chunk in chunks:
        if step is None:
            mean, step = _coding(chunk, margin=margin)
        template_ids[filled : filled + len(chunk_ids)] = chunk_ids
        codes[:, filled : filled + len(chunk_ids)] = _encoded(chunk, mean, step).T
        filled += len(chunk_ids)
    if step is None:
        _, step = _coding(np.zeros((0, EMBEDDING_DIMENSIONS), dtype=np.float32))
    # Fewer than counted only when templates were deleted meanwhile: the copy is then of what was read.
    codes = np.ascontiguousarray(codes[:, :filled])
    return GalleryCodes(
        tenant_id=uuid.UUID(str(tenant_id)),
        gallery_id=uuid.UUID(str(gallery_id)),
        model_version=model_version,
        template_ids=template_ids[:filled],
        codes=codes,
        code_offsets=codes.sum(axis=0, dtype=np.int32) * 128,
        step=step,
        through_id=int(through_id),
    )


def _budget_bytes() -> int:
    return settings.VISOR_SCAN_CACHE_MB * 1024 * 1024


def _coding(sample: np.ndarray, *, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, step) coding every dimension of `sample` (N, D) in 127 steps either side of its mean."""
    if not len(sample):
        return np.zeros(EMBEDDING_DIMENSIONS, np.float32), np.full(EMBEDDING_DIMENSIONS, 1 / 127, np.float32)
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    spread = np.abs(sample - mean).max(axis=0) * margin
    return mean, (np.maximum(spread, 1e-6) / 127).astype(np.float32)


def _encoded(embeddings: np.ndarray, mean: np.ndarray, step: np.ndarray) -> np.ndarray:
    """(N, D) int8 codes."""
    return np.rint((embeddings - mean) / step).clip(-127, 127).astype(np.int8)


def _advisory_key(gallery_id) -> int:
    return int.from_bytes(uuid.UUID(str(gallery_id)).bytes[:8], "big", signed=True)


class _CodesCache:
    def __init__(self):
        self._lock = threading.Lock()
        self._codes: OrderedDict[tuple, GalleryCodes] = OrderedDict()
        self._making: set[tuple] = set()
        self._not_before: dict[tuple, float] = {}

    def get(self, key, *, model_version: str | None = None) -> GalleryCodes | None:
        """The codes held for `key` (of `model_version`, when given: others are dropped), now the most
        recently used."""
        with self._lock:
            codes = self._codes.get(key)
            if codes is None:
                return None
            if model_version is not None and codes.model_version != model_version:
                del self._codes[key]
                return None
            self._codes.move_to_end(key)
            return codes

    def keep(self, codes: GalleryCodes, *, budget: int) -> None:
        with self._lock:
            self._codes.pop(codes.key, None)
            if codes.nbytes > budget:
                logger.warning("gallery %s: its codes exceed VISOR_SCAN_CACHE_MB", codes.gallery_id)
                self._hold_back(codes.key)
                return
            while self._codes and sum(kept.nbytes for kept in self._codes.values()) + codes.nbytes > budget:
                evicted, _ = self._codes.popitem(last=False)
                self._hold_back(evicted)
            self._codes[codes.key] = codes

    def drop(self, key) -> None:
        """Forget the codes of a gallery they no longer fit, and wait before trying again."""
        with self._lock:
            self._codes.pop(key, None)
            self._hold_back(key)

    def _hold_back(self, key) -> None:
        """With the lock held: no codes of the gallery are made for RETRY_AFTER_SECONDS."""
        self._not_before[key] = time.monotonic() + RETRY_AFTER_SECONDS

    def start_making(self, key) -> bool:
        with self._lock:
            if key in self._making or self._not_before.get(key, 0) > time.monotonic():
                return False
            self._not_before.pop(key, None)
            self._making.add(key)
            return True

    def done_making(self, key, *, wait: float) -> None:
        """The making ended; no new one starts for `wait` seconds (unless already held back for longer)."""
        with self._lock:
            self._making.discard(key)
            self._not_before[key] = max(self._not_before.get(key, 0), time.monotonic() + wait)

    def clear(self) -> None:
        with self._lock:
            self._codes.clear()
            self._not_before.clear()


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
