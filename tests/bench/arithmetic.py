"""Seeded synthetic arithmetic with exact answers and a difficulty knob (issue 30, part 3).

A problem is `Calculate 47 + 385 - 29.`; its gold solution works it one operation at a time and ends with the
answer as GSM8K writes it:

    47 + 385 = 432
    432 - 29 = 403
    #### 403

The knob is a `Level`: `digits` (every operand has exactly that many digits; 1 means 0-9), `operands` (2 to 8) and
`ops` (`+-` by default; `+-*` adds multiplication, done first as usual, with a one-digit right factor so that the
numbers stay readable). Written `d2o3` (2 digits, 3 operands, + and -) or `d2o3x` (with *).

Problems are generated, so exact dedup is possible: `splits` draws every split from one seeded stream and keeps a
question text only the first time it appears, so no test question is in any other split, by construction (checked
again, and counted, in `splits`).

Answers are judged by `correct`: the final answer as datagen's verify_math finds it (the text after the last `####`,
else the last number) must be exactly the integer result.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SYSTEM = 'Solve the arithmetic problem step by step, then give the final answer after "####".'
_INT = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class Level:
    digits: int
    operands: int
    ops: str = "+-"

    def __post_init__(self):
        if not 1 <= self.digits <= 9 or not 2 <= self.operands <= 8:
            raise ValueError(f"a level needs 1-9 digits and 2-8 operands, got {self.digits} and {self.operands}")
        if not self.ops or set(self.ops) - set("+-*"):
            raise ValueError(f"ops must be some of + - *, got {self.ops!r}")

    @property
    def name(self) -> str:
        return f"d{self.digits}o{self.operands}" + ("x" if "*" in self.ops else "")


def parse_level(text: str) -> Level:
    """`d2o3` (2 digits, 3 operands, + and -) or `d2o3x` (with *)."""
    m = re.fullmatch(r"d(\d)o(\d)(x?)", text.strip())
    if m is None:
        raise ValueError(f"a level is written like d2o3 or d2o3x, got {text!r}")
    return Level(int(m.group(1)), int(m.group(2)), "+-*" if m.group(3) else "+-")


def operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def problem(rng: random.Random, level: Level) -> dict:
    """One problem: {question, answer (the gold solution ending in `#### N`), result, level}."""
    numbers = [operand(rng, level.digits)]
    ops = []
    for _ in range(level.operands - 1):
        op = rng.choice(level.ops)
        ops.append(op)
        numbers.append(rng.randint(2, 9) if op == "*" else operand(rng, level.digits))
    question = "Calculate " + " ".join([str(numbers[0])] + [f"{o} {n}" for o, n in zip(ops, numbers[1:])]) + "."
    steps, result = solve(numbers, ops)
    return {"question": question, "answer": "\n".join(steps + [f"#### {result}"]), "result": result,
            "level": level.name}


def solve(numbers: list[int], ops: list[str]) -> tuple[list[str], int]:
    """The worked steps (products first, then left to right) and the result."""
    numbers, ops, steps = list(numbers), list(ops), []
    while "*" in ops:
        i = ops.index("*")
        value = numbers[i] * numbers[i + 1]
        steps.append(f"{numbers[i]} * {numbers[i + 1]} = {value}")
        numbers[i: i + 2] = [value]
        del ops[i]
    value = numbers[0]
    for op, n in zip(ops, numbers[1:]):
        new = value + n if op == "+" else value - n
        steps.append(f"{value} {op} {n} = {new}")
        value = new
    return steps, value


def generate(seed: int | str, level: Level, n: int, exclude: set[str] | None = None) -> list[dict]:
    """`n` distinct problems (by question text), none in `exclude`; the same for the same arguments."""
    rng = random.Random(f"arithmetic\0{seed}\0{level.name}")
    seen = set(exclude or ())
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"level {level.name} has too few distinct problems for {n} more")
        p = problem(rng, level)
        if p["question"] not in seen:
            seen.add(p["question"])
            out.append(p)
    return out


def splits(seed: int | str, level: Level, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Named splits of distinct problems in the order of `sizes`, from one stream: no question is in two splits."""
    drawn = generate(seed, level, sum(sizes.values()))
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = [{**p, "split": name} for p in drawn[start: start + size]]
        start += size
    texts = [p["question"] for rows in out.values() for p in rows]
    assert len(texts) == len(set(texts))  # exact dedup across splits, by construction
    return out


def final_answer(text: str) -> int | None:
    """The integer final answer of a reply (verify_math's rule: after the last `####`, else the last number)."""
    from datagen.answers import extract_answer

    found = extract_answer(text or "")
    if found is None:
        return None
    numbers = _INT.findall(found)
    if not numbers:
        return None
    try:
        value = float(numbers[-1].replace(",", ""))
    except ValueError:
        return None
    return int(value) if value == int(value) else None


def correct(text: str, result: int) -> bool:
    return final_answer(text) == result
