"""A model folder's fingerprint. A teacher entry whose `model` is a local folder (for example a student that
`datagen train` saved) samples from that model like any teacher, `n` samples per input.

A local folder's path alone does not say what it holds: `datagen train` rewrites `out/student` in place, and samples
from the old weights must not be served from the cache as if they came from the new ones. So a local folder's
identity in the cache key includes a fingerprint of its weights, config and tokenizer files.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

# what decides a folder's outputs; logs, cards and training settings written beside the weights do not
_PATTERNS = ("*.safetensors", "*.bin", "*.gguf", "*.pt", "config.json", "generation_config.json", "tokenizer*",
             "special_tokens_map.json", "*.jinja", "vocab*", "merges.txt", "*.model")


def folder_fingerprint(folder: str | Path) -> str:
    """A content hash of the model files in `folder` (cached per file size and modification time)."""
    files = sorted({p for pattern in _PATTERNS for p in Path(folder).glob(pattern) if p.is_file()})
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}\0{_file_hash(str(path), stat.st_size, stat.st_mtime_ns)}\0".encode())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=64)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
