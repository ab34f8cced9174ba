"""Benchmark: expansion's ROUGE-L novelty check against rouge-score's own scorer (the Self-Instruct baseline).

    .venv/bin/python tests/bench/novelty.py --existing 1000 --candidates 100

Existing items are the 175 real Self-Instruct seed tasks (specs/data) plus generated variants of them (sentences
joined from the pool, one word swapped, words dropped), the candidates the same kind of text, so about half are near
duplicates and half are not. Both sides judge every candidate in order against every existing item and every earlier
accepted candidate, with the same rule (reject at ROUGE-L >= 0.7, name the most similar item):
- datagen: datagen/strategies/novelty.py (rouge-score's tokens, rapidfuzz's LCS with an early cutoff);
- baseline: `rouge_scorer.RougeScorer(["rougeL"]).score` on every pair, as Self-Instruct did (without its process
  pool, so both sides use one core).
The verdicts must be identical; the script prints both times and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from datagen.strategies.novelty import NoveltyIndex  # noqa: E402


def make_texts(n: int, rng: random.Random, pool: list[str]) -> list[str]:
    out = []
    for _ in range(n):
        base = rng.choice(pool)
        kind = rng.random()
        if kind < 0.15:  # near duplicate: one word swapped
            words = base.split()
            words[rng.randrange(len(words))] = rng.choice(["new", "other", "given", "short", "simple"])
            out.append(" ".join(words))
        elif kind < 0.3:  # shortened
            words = base.split()
            out.append(" ".join(words[: max(3, len(words) * 2 // 3)]))
        elif kind < 0.5:  # two tasks joined
            out.append(base + " " + rng.choice(pool))
        else:  # the words of two tasks, shuffled: mostly novel
            words = (base + " " + rng.choice(pool)).split()
            rng.shuffle(words)
            out.append(" ".join(words))
    return out


def judge_baseline(existing: list[str], candidates: list[str], threshold: float) -> list[tuple[bool, int | None]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    items = list(existing)
    out = []
    for cand in candidates:
        best, best_i = -1.0, None
        for i, item in enumerate(items):
            f = scorer.score(item, cand)["rougeL"].fmeasure
            if f > best:
                best, best_i = f, i
        if best >= threshold - 1e-9:
            out.append((False, best_i))
        else:
            out.append((True, None))
            items.append(cand)
    return out


def judge_datagen(existing: list[str], candidates: list[str], threshold: float) -> list[tuple[bool, int | None]]:
    index = NoveltyIndex(threshold, None, None)
    index.add_many([str(i) for i in range(len(existing))], existing)
    out = []
    for cand in candidates:
        v = index.check(cand)
        out.append((v.kept, int(v.duplicate_of) if v.duplicate_of else None))
        if v.kept:
            index.add_many([str(len(index.ids))], [cand])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--existing", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--threshold", type=float, default=0.7)
    args = ap.parse_args()
    pool = [json.loads(line)["instruction"] for line in
            (ROOT / "specs/data/self_instruct_seed_tasks.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    existing = pool + make_texts(args.existing - len(pool), rng, pool)
    candidates = make_texts(args.candidates, rng, pool)
    # exact duplicates are judged by normalised text in datagen and by ROUGE-L 1.0 in the baseline: same verdict,
    # but either may name another of several identical items, so compare the named item's text
    start = time.perf_counter()
    ours = judge_datagen(existing, candidates, args.threshold)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    base = judge_baseline(existing, candidates, args.threshold)
    t_base = time.perf_counter() - start
    items = list(existing)
    for c, (k, _) in zip(candidates, base):
        if k:
            items.append(c)
    same = sum(a[0] == b[0] and (a[1] == b[1] or (a[1] is not None and b[1] is not None and
                                                  items[a[1]].lower() == items[b[1]].lower()))
               for a, b in zip(ours, base))
    rejected = sum(not k for k, _ in ours)
    print(f"{len(existing)} existing items, {len(candidates)} candidates, {rejected} rejected at ROUGE-L >= "
          f"{args.threshold}; verdicts identical: {same}/{len(candidates)}")
    print(f"datagen novelty: {t_ours:.2f} s ({len(candidates) / t_ours:.0f} candidates/s)")
    print(f"rouge_scorer baseline: {t_base:.2f} s ({len(candidates) / t_base:.1f} candidates/s)")
    print(f"speed-up: {t_base / t_ours:.1f}x")
    if same != len(candidates):
        sys.exit("verdicts differ")


if __name__ == "__main__":
    main()
