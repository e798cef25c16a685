"""Measure what pgvector costs per template: heap, b-tree and HNSW size, and HNSW build time.

Not a test (pytest does not collect it). Starts a throw-away embedded PostgreSQL (infra.devstack) in a
temporary directory, loads N random unit vectors of dimension 128 into a table shaped like
identity_facetemplate with COPY, builds the same per-gallery HNSW index the app builds
(identity/search.py: m=16, ef_construction=64, vector_cosine_ops), and prints one JSON line.

    .venv/bin/python tests/deploy/measure_pgvector.py --rows 100000
docs/scaling.md quotes its output.
"""

import argparse
import io
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from infra.devstack import Supervisor, free_port, start_postgres

DDL = """
CREATE TABLE tpl (
    id bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    gallery_id uuid NOT NULL,
    subject_id uuid NOT NULL,
    face_id uuid NOT NULL,
    kind varchar(20) NOT NULL,
    embedding vector(128) NOT NULL,
    model_version varchar(100) NOT NULL
)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0, help="max_parallel_maintenance_workers")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="visor-measure-") as scratch:
        os.chmod(scratch, 0o755)
        supervisor = Supervisor(log_dir=Path(scratch) / "log")
        try:
            url = start_postgres(supervisor, data_dir=Path(scratch) / "pg", port=free_port())
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(DDL)
                tenant, gallery = uuid.uuid4(), uuid.uuid4()
                vectors = rng.standard_normal((args.rows, 128)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                started = time.perf_counter()
                with (
                    conn.cursor() as cur,
                    cur.copy(
                        "COPY tpl (tenant_id, gallery_id, subject_id, face_id, kind, embedding,"
                        " model_version) FROM STDIN"
                    ) as copy,
                ):
                    buf = io.StringIO()
                    for i, vec in enumerate(vectors):
                        text = "[" + ",".join(f"{x:.6f}" for x in vec) + "]"
                        buf.write(
                            f"{tenant}\t{gallery}\t{uuid.uuid4()}\t{uuid.uuid4()}\toriginal\t{text}\tsface-2021dec\n"
                        )
                        if i % 10_000 == 9_999:
                            copy.write(buf.getvalue())
                            buf = io.StringIO()
                    copy.write(buf.getvalue())
                copy_s = time.perf_counter() - started
                conn.execute("CREATE INDEX tpl_gallery ON tpl (gallery_id, model_version)")
                conn.execute("VACUUM ANALYZE tpl")
                conn.execute("SET maintenance_work_mem = '512MB'")
                conn.execute(f"SET max_parallel_maintenance_workers = {args.workers}")
                started = time.perf_counter()
                conn.execute(
                    "CREATE INDEX tpl_hnsw ON tpl USING hnsw (embedding vector_cosine_ops)"
                    " WITH (m = 16, ef_construction = 64)"
                )
                hnsw_s = time.perf_counter() - started

                def size(expr: str) -> int:
                    return conn.execute(f"SELECT {expr}").fetchone()[0]

                heap = size("pg_relation_size('tpl')")
                toast = size("pg_table_size('tpl') - pg_relation_size('tpl')")
                pkey = size("pg_relation_size('tpl_pkey')")
                btree = size("pg_relation_size('tpl_gallery')")
                hnsw = size("pg_relation_size('tpl_hnsw')")
                conn.execute("SET hnsw.ef_search = 40")
                latencies = []
                for q in rng.standard_normal((args.queries, 128)).astype(np.float32):
                    text = "[" + ",".join(f"{x:.6f}" for x in q) + "]"
                    t = time.perf_counter()
                    conn.execute(
                        "SELECT id FROM tpl ORDER BY embedding <=> %s::vector LIMIT 10", [text]
                    ).fetchall()
                    latencies.append((time.perf_counter() - t) * 1000)
                latencies.sort()
                result = {
                    "rows": args.rows,
                    "copy_s": round(copy_s, 1),
                    "hnsw_build_s": round(hnsw_s, 1),
                    "parallel_maintenance_workers": args.workers,
                    "heap_bytes": heap,
                    "toast_fsm_vm_bytes": toast,
                    "pkey_bytes": pkey,
                    "btree_gallery_bytes": btree,
                    "hnsw_bytes": hnsw,
                    "bytes_per_row": {
                        "heap": round(heap / args.rows, 1),
                        "hnsw": round(hnsw / args.rows, 1),
                        "all": round((heap + toast + pkey + btree + hnsw) / args.rows, 1),
                    },
                    "query_ms_p50": round(latencies[len(latencies) // 2], 2),
                    "query_ms_p95": round(latencies[int(len(latencies) * 0.95)], 2),
                    "pgvector": conn.execute(
                        "SELECT extversion FROM pg_extension WHERE extname='vector'"
                    ).fetchone()[0],
                    "postgres": conn.execute("SHOW server_version").fetchone()[0],
                    "cpus": os.cpu_count(),
                }
                print(json.dumps(result), flush=True)
        finally:
            supervisor.stop_all()


if __name__ == "__main__":
    main()
