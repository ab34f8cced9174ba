"""Benchmark rows and meters shared by the curation benchmarks (curation.py, curation_levers.py, curation_scale.py).

Rows are built from the project's real data (specs/data: GSM8K questions and worked answers, Self-Instruct tasks):
each base row joins 2 or 3 random sentences of that pool, with its numbers redrawn, and 5% more rows are planted
near-duplicates of random base rows (extra whitespace, changed case, one word replaced, punctuation dropped, a
prefix added), shuffled in.
"""

from __future__ import annotations

import json
import random
import re
import resource
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

THRESHOLD = 0.92
SWAPS = {"money": "cash", "apples": "pears", "friends": "classmates", "hour": "day", "week": "month",
         "write": "compose", "given": "provided", "total": "sum", "buy": "purchase", "each": "every"}


# --- data ------------------------------------------------------------------------------------------------------

def sentence_pool() -> list[str]:
    data = ROOT / "specs" / "data"
    texts: list[str] = []
    for line in (data / "gsm8k_train_500.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts.append(row["question"])
        texts += [re.sub(r"<<[^>]*>>", "", s) for s in row["answer"].splitlines() if not s.startswith("####")]
    for line in (data / "self_instruct_seed_tasks.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts.append(row["instruction"])
        for inst in row["instances"]:
            texts += [inst["input"], inst["output"]]
    pool = []
    for text in texts:
        pool += [s.strip() for s in re.split(r"(?<=[.?!])\s+", text) if len(s.split()) >= 5]
    return sorted(set(pool))


def redraw_numbers(text: str, rng: random.Random) -> str:
    return re.sub(r"\d+", lambda m: str(rng.randint(2, 999)), text)


def perturb(text: str, rng: random.Random) -> str:
    kind = rng.randrange(5)
    if kind == 0:
        return text.replace(" ", "  ", 3).replace(". ", ".\n", 1)
    if kind == 1:
        return text.lower() if rng.random() < 0.5 else text.upper()
    if kind == 2:
        words = text.split()
        for i, w in enumerate(words):
            if w.lower() in SWAPS:
                words[i] = SWAPS[w.lower()]
                return " ".join(words)
        i = rng.randrange(len(words))
        words[i] = rng.choice(["really", "quite", "exactly", "also"]) + " " + words[i]
        return " ".join(words)
    if kind == 3:
        return re.sub(r"[,.?!;:]", "", text)
    return rng.choice(["Question: ", "Please answer: ", "Task: "]) + text


def build_rows(n: int, seed: int = 0, planted_share: float = 0.05) -> tuple[list[dict], list[tuple[int, int]]]:
    """n rows; returns them and the planted (original, copy) index pairs."""
    rng = random.Random(seed)
    pool = sentence_pool()
    n_planted = int(n * planted_share)
    base = [redraw_numbers(" ".join(rng.sample(pool, rng.choice([2, 3]))), rng) for _ in range(n - n_planted)]
    originals = [rng.randrange(len(base)) for _ in range(n_planted)]
    texts = base + [perturb(base[i], rng) for i in originals]
    order = list(range(n))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    rows = [{"text": texts[old], "score": rng.randint(1, 10)} for old in order]
    pairs = [(position[o], position[len(base) + k]) for k, o in enumerate(originals)]
    return rows, pairs


# --- measuring -------------------------------------------------------------------------------------------------

class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 20 ms."""

    @staticmethod
    def current() -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.start = time.monotonic()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __exit__(self, *exc):
        self.seconds = time.monotonic() - self.start
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def gb(x: float) -> str:
    return f"{x / 2**30:.2f} GB"


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def found_pairs(dropped: set[int], pairs: list[tuple[int, int]]) -> int:
    return sum(1 for a, b in pairs if a in dropped or b in dropped)
