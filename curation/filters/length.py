"""`length`: token counts with the student's tokenizer, since the student's context is what the length limits protect.

Only the tokenizer is loaded (transformers AutoTokenizer), never the model weights; it is cached per path.
"""

from __future__ import annotations

import functools
import os

from datagen.text import as_text
from datagen.verdict import Verdict


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def token_counts(texts: list[str], tokenizer_ref: str, spec_dir=None) -> list[int]:
    from datagen.bundled import resolve_model

    tokenizer = load_tokenizer(resolve_model(tokenizer_ref, spec_dir))
    counts: list[int] = []
    for start in range(0, len(texts), 1024):
        encoded = tokenizer(texts[start: start + 1024], add_special_tokens=False)["input_ids"]
        counts += [len(ids) for ids in encoded]
    return counts


def length_filter(spec, rows: list[dict], spec_dir=None) -> list[Verdict]:
    counts = token_counts([as_text(r.get(spec.column)) for r in rows], spec.tokenizer, spec_dir)
    out = []
    for n in counts:
        if spec.min_tokens is not None and n < spec.min_tokens:
            out.append(Verdict(False, f"{n} tokens < min_tokens {spec.min_tokens}", float(n)))
        elif spec.max_tokens is not None and n > spec.max_tokens:
            out.append(Verdict(False, f"{n} tokens > max_tokens {spec.max_tokens}", float(n)))
        else:
            out.append(Verdict(True, None, float(n)))
    return out
