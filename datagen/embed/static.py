"""A static embedding model distilled from the bundled MiniLM: one vector per token, a text is their weighted mean.

The model2vec recipe (what semhash uses by default), done here with the torch and transformers already installed
(model2vec's `distill` extra pins an older transformers than the project's): every token of MiniLM's vocabulary is
run through MiniLM alone ([CLS] token [SEP], mean-pooled), the 30k token vectors are reduced by PCA to DIMS
dimensions, and each is weighted by SIF with Zipf-estimated frequencies (a token's rank in the vocabulary stands in
for its frequency), so frequent tokens count less in a text's mean.

Distillation runs once, offline, from the bundled package, into the datagen cache folder (written to a temporary
folder, then renamed into place, so two processes starting at once cannot leave half a model). Encoding is then a
Rust tokenizer call and a numpy sum: no transformer at all.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

DIMS = 256
RECIPE = "m2v1"  # bump when the recipe changes, so a cached model from the old recipe is not reused
SIF = 1e-4
CHUNK = 4096  # texts per tokenizer call: bounds the (tokens x DIMS) matrix of one chunk


class StaticModel:
    """Token vectors (vocab x dims, float32) and the source model's tokenizer, without special tokens."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self.vectors = np.load(folder / "vectors.npy")
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_truncation()  # a static model has no length limit: every token counts
        self.tokenizer.no_padding()
        self.dim = self.vectors.shape[1]

    def encode(self, texts: list[str]) -> np.ndarray:
        """L2-normalised mean of the texts' token vectors (a text with no known token gets a zero vector)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), CHUNK):
            out[start: start + CHUNK] = self._chunk(texts[start: start + CHUNK])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out

    def _chunk(self, texts: list[str]) -> np.ndarray:
        ids = [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int64, count=int(lengths.sum()))
        sums = np.zeros((len(texts), self.dim), dtype=np.float32)
        if len(flat):
            _segment_sum(sums, self.vectors[flat], lengths)
        return sums / np.maximum(lengths, 1)[:, None]


def _segment_sum(out: np.ndarray, values: np.ndarray, lengths: np.ndarray) -> None:
    """out[i] = sum of the lengths[i] consecutive rows of values belonging to text i (empty texts stay 0)."""
    nonempty = lengths > 0
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
    out[nonempty] = np.add.reduceat(values, starts, axis=0)


_LOADED: dict[str, StaticModel] = {}


def load_static(source_folder: str, identity: str) -> StaticModel:
    """The static model distilled from the sentence-transformers folder `source_folder`, distilling it on first use."""
    folder = _cached_folder(source_folder, identity)
    key = str(folder)
    if key not in _LOADED:
        _LOADED[key] = StaticModel(folder)
    return _LOADED[key]


def static_identity(identity: str) -> str:
    """The cache identity of the static model distilled from the model with this identity."""
    return f"{identity}#static-{RECIPE}-{DIMS}"


def _cached_folder(source_folder: str, identity: str) -> Path:
    from datagen.bundled import cache_dir, chmod_by_umask

    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in static_identity(identity))
    final = cache_dir() / "models" / safe
    if (final / "vectors.npy").is_file():  # the rename into place is the last step: a folder here is complete
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    print(f"datagen: distilling a static embedding model from {identity} (once) into {final}", file=sys.stderr,
          flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        distill(Path(source_folder), tmp)
        chmod_by_umask(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "vectors.npy").is_file():
                raise
            # another process finished first; its copy is equally good
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def distill(source: Path, out: Path, dims: int = DIMS, batch_size: int = 512, vocab: int | None = None) -> None:
    """Write vectors.npy (vocab x dims) and tokenizer.json distilled from the transformer in `source`.

    `vocab` limits distillation to the first that many token ids (the rest get zero vectors): for tests only.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokens = _token_vectors(source, batch_size, vocab)
    done = min(vocab or len(tokens), len(tokens))
    vectors = np.zeros((len(tokens), min(dims, tokens.shape[1])))
    vectors[:done] = _pca(tokens[:done], dims)
    inv_rank = 1.0 / np.arange(2, len(vectors) + 2)
    proba = inv_rank / inv_rank.sum()
    vectors *= (SIF / (SIF + proba))[:, None]
    np.save(out / "vectors.npy", vectors.astype(np.float32))
    shutil.copy(source / "tokenizer.json", out / "tokenizer.json")


def _token_vectors(source: Path, batch_size: int, vocab: int | None = None) -> np.ndarray:
    """Each vocabulary token alone through the transformer, mean-pooled over [CLS] token [SEP]."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModel.from_pretrained(source).eval()
    full = len(tokenizer)
    n = min(full, vocab or full)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = np.zeros((full, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            ids = torch.arange(start, min(n, start + batch_size))[:, None]
            batch = torch.cat([torch.full_like(ids, cls), ids, torch.full_like(ids, sep)], dim=1)
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            out[start: start + len(ids)] = hidden.mean(dim=1).numpy()
    return out


def _pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Project onto the top `dims` principal components (all of them when dims >= the width), signs fixed."""
    x = x.astype(np.float64) - x.mean(axis=0)
    _, eigvecs = np.linalg.eigh(x.T @ x / (len(x) - 1))
    components = eigvecs[:, ::-1][:, : min(dims, x.shape[1])]
    scores = x @ components
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(scores.shape[1])])
    return scores * signs
