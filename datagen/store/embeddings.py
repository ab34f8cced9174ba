"""The `embeddings` table: sentence vectors kept across curation runs, keyed by model identity and text hash.

Plain functions over a DuckDB connection; datagen/embed/encode.py decides what to embed and calls these to read and write.
Vectors move as Arrow arrays in both directions (no Python object per value): at a million rows the per-row cost
of anything else dominates. Reads stream in record batches into one preallocated matrix, so reading n vectors
holds about one copy of them, not three.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

READ_BATCH = 65_536  # rows per Arrow record batch when streaming vectors out
# DuckDB keeps the table blocks a query read in its buffer pool, up to memory_limit (80% of RAM by default): after
# reading a million vectors that is 1.5 GB held beside the 1.5 GB matrix made from them. A read streams, so it
# needs little; under this limit the pool evicts as it goes (measured at 1M vectors: 0.4 GB left, not 1.5 GB).
READ_MEMORY_LIMIT = "512MB"
# An insert of at least one DuckDB row group (122,880 rows) is written straight into the file; a smaller one goes to
# the write-ahead log first and is written again at the checkpoint. Measured (300k 384-d vectors, 2 cores): 100k-row
# batches 38-44k vectors/s, 300k-row batches 91-118k vectors/s. Whoever stores vectors in bulk batches this many.
BULK_ROWS = 2 * 122_880


def lookup(con: duckdb.DuckDBPyConnection, model: str, hashes: list[str], dim: int | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Vectors stored for `hashes` under `model`: (found mask, n x dim float32 matrix; rows not found are zero).

    `dim` is the model's vector size when known; otherwise it is taken from the first stored vector (and a store
    with nothing for these hashes returns a 0-column matrix).
    """
    n = len(hashes)
    found = np.zeros(n, dtype=bool)
    if n == 0:
        return found, np.zeros((0, dim or 0), dtype=np.float32)
    want = pa.table({"i": pa.array(np.arange(n, dtype=np.int64)), "text_hash": pa.array(hashes, pa.string())})
    con.register("_want_hashes", want)
    reader = None
    previous = con.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
    con.execute(f"SET memory_limit = '{READ_MEMORY_LIMIT}'")
    try:
        # a (model, text_hash) stored twice (two runs racing) gives two equal vectors for one i: either will do
        reader = con.sql("SELECT w.i, e.vector FROM embeddings e JOIN _want_hashes w ON w.text_hash = e.text_hash "
                         "WHERE e.model = ?", params=[model]).to_arrow_reader(READ_BATCH)
        out = _fill(reader, n, dim, found, model)
    finally:
        if reader is not None:
            reader.close()  # an open result would block the next statement on this connection
        con.unregister("_want_hashes")
        con.execute(f"SET memory_limit = '{previous}'")  # as DuckDB reports it (rounded to 0.1 GiB)
    return found, out if out is not None else np.zeros((n, dim or 0), dtype=np.float32)


def _fill(reader, n: int, dim: int | None, found: np.ndarray, model: str) -> np.ndarray | None:
    out = None
    for batch in reader:
        if batch.num_rows == 0:
            continue
        idx = batch.column(0).to_numpy()
        flat, width = _flat(batch.column(1))
        if out is None:
            out = np.zeros((n, dim or width), dtype=np.float32)
        if width != out.shape[1]:
            raise ValueError(f"stored vectors of model {model!r} have {width} dimensions, expected "
                             f"{out.shape[1]}; delete them with DELETE FROM embeddings WHERE model = '{model}'")
        out[idx] = flat.reshape(len(idx), width)
        found[idx] = True
    return out


def _flat(column: pa.Array) -> tuple[np.ndarray, int]:
    """A list<float> column of equal-length lists as one flat float32 array and that length."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    offsets = column.offsets.to_numpy()
    width = int(offsets[1] - offsets[0]) if len(offsets) > 1 else 0
    if not np.all(np.diff(offsets) == width):
        raise ValueError("stored vectors of one model have different lengths; the embeddings table is damaged")
    values = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False), width


def store(con: duckdb.DuckDBPyConnection, model: str, row_ids: list[str], hashes: list[str],
          vectors: np.ndarray) -> None:
    """Append one vector per hash (row_ids say which row first needed it), in one transaction. Batches of
    BULK_ROWS or more store about twice as fast per vector as small ones."""
    if len(hashes) == 0:
        return
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    lists = pa.FixedSizeListArray.from_arrays(flat, dim)  # DuckDB reads these faster than offsets lists
    batch = pa.table({"row_id": pa.array(row_ids, pa.string()),
                      "model": pa.array([model] * n, pa.string()),  # plain: a dictionary column inserts 35% slower
                      "text_hash": pa.array(hashes, pa.string()), "vector": lists})
    con.register("_embed_batch", batch)
    try:
        con.execute("BEGIN")
        try:
            con.execute("INSERT INTO embeddings SELECT row_id, model, text_hash, vector FROM _embed_batch")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
    finally:
        con.unregister("_embed_batch")


def count(con: duckdb.DuckDBPyConnection, model: str | None = None) -> int:
    """Stored vectors, of one model or of all."""
    if model is None:
        return con.execute("SELECT count(*) FROM embeddings").fetchall()[0][0]
    return con.execute("SELECT count(*) FROM embeddings WHERE model = ?", [model]).fetchall()[0][0]
