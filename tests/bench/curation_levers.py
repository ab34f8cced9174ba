"""Embedding levers on a CPU, side by side against torch MiniLM: speed, dedup verdicts, planted-pair recall.

    .venv/bin/python tests/bench/curation.py --levers --lever-rows 5000

Each lever embeds the same test rows (curation_data.build_rows, seed 1) and runs the same semantic dedup (exact
search, keep-first); its verdicts are compared row by row with torch MiniLM's at 0.92. A lever whose similarities
live on another scale (static, int8) gets its threshold re-calibrated on a separate calibration set (seed 2): the
threshold whose verdicts agree best with torch's there. The adoption bar (issue 19): at least 4x torch's texts/s,
verdicts equal on at least 98% of rows, planted-pair recall within one point. Rates are texts per CPU second of
this process (all its threads), so other jobs on a shared machine do not skew the comparison.

- torch: the product's path before this issue (sentence-transformers, CPU, batch 64).
- int8: the same model with torch dynamic int8 quantisation of its Linear layers.
- static: datagen/embed/static.py, distilled once from the bundled MiniLM (model2vec recipe); the distillation
  time is printed separately (it is paid once per machine).
- survivors: exact + MinHash dedup first, torch on the rows they keep (the semantic stage's input in a spec that
  lists them first); verdicts are the chain's.
- distinct: one torch vector per distinct normalised text (datagen/embed/encode.py's key).
- survivors + cascade: both: exact + MinHash, then the cascade (+0.00) on the rows they keep.
- cascade +x: curation/dedup/cascade.py: static vectors propose the rows with a neighbour at 0.92 + x (static
  scale); torch embeds only those rows and decides at 0.92; every other row is kept.
Then k-center on each kind of vector, judged by how close (under torch) every row is to its nearest pick.
"""

from __future__ import annotations

import copy
import time

import numpy as np
from curation_data import THRESHOLD, build_rows

MINILM = "bundled:all-minilm-l6-v2"
GRID = np.round(np.arange(0.70, 0.995, 0.005), 3)


def kept_by(vectors: np.ndarray, threshold: float) -> np.ndarray:
    from curation.dedup.semantic import semantic_dedup

    out = semantic_dedup(vectors, list(range(len(vectors))), threshold, exact_below=len(vectors) + 1)
    return np.array([k for k, _, _ in out], dtype=bool)


def recall(kept: np.ndarray, pairs) -> float:
    return sum(1 for a, b in pairs if not kept[a] or not kept[b]) / len(pairs)


def calibrate(vectors: np.ndarray, target: np.ndarray) -> float:
    """The grid threshold whose verdicts on `vectors` agree best with `target` (torch's verdicts)."""
    scores = [(float(np.mean(kept_by(vectors, t) == target)), t) for t in GRID]
    return max(scores)[1]


def timed(fn, texts):
    """The result and the CPU seconds it took (this process, all threads): on a machine shared with other jobs,
    wall time measures their load as much as this code; CPU time does not."""
    start = time.process_time()
    out = fn(texts)
    return out, time.process_time() - start


def encoders():
    import torch

    from datagen.embed.encode import encode, load_model
    from datagen.embed.static import load_static
    from datagen.bundled import model_identity, resolve_model

    model = load_model(MINILM)
    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)

    def torch_encode(texts):
        return encode(texts, MINILM)

    def int8_encode(texts):
        return np.asarray(int8.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False),
                          dtype=np.float32)

    start = time.monotonic()
    static = load_static(resolve_model(MINILM), model_identity(MINILM))
    print(f"static model ready in {time.monotonic() - start:.1f} s (distilled once per machine, then loaded)")
    return {"torch": torch_encode, "int8": int8_encode, "static": static.encode}


def survivors(texts: list[str]) -> np.ndarray:
    """Rows kept by exact then MinHash dedup (threshold 0.8), as a mask."""
    from curation.dedup.exact import exact_dedup
    from curation.dedup.minhash import minhash_dedup

    alive = np.array([k for k, _, _ in exact_dedup(texts, list(range(len(texts))))], dtype=bool)
    idx = np.flatnonzero(alive)
    sub = minhash_dedup([texts[i] for i in idx], list(range(len(idx))), 0.8)
    alive[idx[[not k for k, _, _ in sub]]] = False
    return alive


def cascade(texts, static_vecs, torch_encode, offset: float):
    """Verdicts and torch-embedded row count of curation/dedup/cascade.py with this candidate offset."""
    from curation.dedup import cascade as cas

    sent = []

    def embed(idx, backend):
        if backend == "static":
            return static_vecs[idx]
        sent.append(len(idx))
        return torch_encode([texts[i] for i in idx])

    old, cas.CANDIDATE_OFFSET = cas.CANDIDATE_OFFSET, offset
    try:
        out = cas.cascade_dedup(len(texts), list(range(len(texts))), THRESHOLD, embed, len(texts) + 1)
    finally:
        cas.CANDIDATE_OFFSET = old
    return np.array([k for k, _, _ in out], dtype=bool), sum(sent)


def coverage(torch_vecs: np.ndarray, picks: list[int]) -> tuple[float, float]:
    """Mean and max cosine distance (under torch) from each row to its nearest pick: lower covers better."""
    gap = 1.0 - (torch_vecs @ torch_vecs[picks].T).max(axis=1)
    return float(gap.mean()), float(gap.max())


def selection(vecs: dict, k: int) -> None:
    from curation.select.diversity import kcenter

    for name in ("torch", "int8", "static"):
        mean, worst = coverage(vecs["torch"], kcenter(vecs[name], k)[0])
        print(f"kcenter to {k} on {name} vectors: torch-space distance to the nearest pick, mean {mean:.3f}, "
              f"max {worst:.3f}")


def run(n: int) -> None:
    from datagen.text import normalise

    test, pairs = build_rows(n, seed=1)
    cal, _ = build_rows(max(2000, n // 2), seed=2)
    texts, cal_texts = [r["text"] for r in test], [r["text"] for r in cal]
    enc = encoders()
    vecs, secs = {}, {}
    for name, fn in enc.items():
        vecs[name], secs[name] = timed(fn, texts)
    ref = kept_by(vecs["torch"], THRESHOLD)
    base_rate = n / secs["torch"]
    print(f"\n{n} test rows ({len(pairs)} planted pairs), calibration on {len(cal)} other rows; threshold "
          f"{THRESHOLD} for torch")
    print(f"{'lever':34s} {'texts/cpu-s':>9s} {'speed-up':>9s} {'threshold':>9s} {'verdicts equal':>15s} "
          f"{'planted recall':>15s}  meets bar")

    def line(name, rate, threshold, kept, reference=False):
        agree, rec = float(np.mean(kept == ref)), recall(kept, pairs)
        ok = rate >= 4 * base_rate and agree >= 0.98 and rec >= recall(ref, pairs) - 0.01
        print(f"{name:34s} {rate:9.0f} {rate / base_rate:8.1f}x {threshold:9.3f} {agree:15.2%} {rec:15.2%}  "
              f"{'-' if reference else 'yes' if ok else 'no'}")

    line("torch MiniLM (reference)", base_rate, THRESHOLD, ref, reference=True)
    cal_torch = enc["torch"](cal_texts)
    cal_ref = kept_by(cal_torch, THRESHOLD)
    cal_static = enc["static"](cal_texts)
    for name in ("int8", "static"):
        line(f"{name}, uncalibrated", n / secs[name], THRESHOLD, kept_by(vecs[name], THRESHOLD))
        t = calibrate(cal_static if name == "static" else enc[name](cal_texts), cal_ref)
        line(f"{name}, threshold calibrated", n / secs[name], t, kept_by(vecs[name], t))
    alive, alive_s = timed(survivors, texts)
    sub = np.flatnonzero(alive)
    kept = alive.copy()
    kept[sub] = kept_by(vecs["torch"][sub], THRESHOLD)
    line(f"survivors ({len(sub)} of {n} embedded)", n / (len(sub) / base_rate + alive_s), THRESHOLD, kept)
    distinct = len({normalise(t) for t in texts})
    line(f"distinct ({distinct} of {n} embedded)", n / (distinct / base_rate), THRESHOLD, ref)
    for offset in (0.0, 0.01, 0.02):
        (kept, embedded), c_s = timed(lambda t, offset=offset: cascade(t, vecs["static"], enc["torch"], offset), texts)
        line(f"cascade +{offset:.2f} ({embedded} of {n} to torch)", n / (secs["static"] + c_s),
             THRESHOLD + offset, kept)
    # the levers together: exact + MinHash first, then the cascade on their survivors
    sub_texts = [texts[i] for i in sub]
    (sub_kept, embedded), c_s = timed(lambda t: cascade(t, vecs["static"][sub], enc["torch"], 0.0), sub_texts)
    kept = alive.copy()
    kept[sub] = sub_kept
    static_s = secs["static"] * len(sub) / n
    line(f"survivors + cascade ({embedded} to torch)", n / (alive_s + static_s + c_s), THRESHOLD, kept)
    print()
    selection(vecs, max(10, n // 20))
