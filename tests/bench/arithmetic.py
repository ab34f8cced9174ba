"""Seeded synthetic arithmetic with exact answers and a difficulty knob (issue 30, part 3).

A problem is `Calculate 47 + 385 - 29.` (bare) or a one-sentence-per-operation word problem over the same numbers
(`Mia has 47 shells. She gets 385 more. Then she gives away 29. How many shells does Mia have now?`); its gold
solution works it one operation at a time and ends with the answer as GSM8K writes it:

    47 + 385 = 432
    432 - 29 = 403
    #### 403

The knob is a `Level`: `digits` (every operand has exactly that many digits; 1 means 0-9; `rest` gives the operands
after the first another size), `operands` (2 to 8) and
`ops` (`+-` by default; `+` alone; `+-*` adds multiplication, done first as usual, with a one-digit right factor so
that the numbers stay readable). Written `d2o3` (2 digits, 3 operands, + and -), `d2o3p` (+ only) or `d2o3x` (+ - *); a
leading `w` makes it a word problem (`wd1o2`: + and -, never below zero; no *), whose names, things and wordings
give many distinct texts even where the numbers are few (one-digit sums: 81 facts, tens of thousands of texts).

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
    digits: int  # of the first operand
    operands: int
    ops: str = "+-"
    words: bool = False  # a word problem instead of the bare expression
    rest: int | None = None  # digits of the other operands (None: `digits`)

    @property
    def later(self) -> int:
        return self.rest or self.digits

    def __post_init__(self):
        if not 1 <= self.digits <= 9 or not 2 <= self.operands <= 8:
            raise ValueError(f"a level needs 1-9 digits and 2-8 operands, got {self.digits} and {self.operands}")
        if not self.ops or set(self.ops) - set("+-*"):
            raise ValueError(f"ops must be some of + - *, got {self.ops!r}")
        if self.words and "*" in self.ops:
            raise ValueError("word problems add and take away only (ops + or +-)")
        if self.rest is not None and not 1 <= self.rest <= 9:
            raise ValueError(f"the other operands need 1-9 digits, got {self.rest}")

    @property
    def name(self) -> str:
        suffix = {v: k for k, v in SUFFIX.items()}.get(self.ops, f"[{self.ops}]")
        rest = f"r{self.rest}" if self.rest is not None and self.rest != self.digits else ""
        return ("w" if self.words else "") + f"d{self.digits}{rest}o{self.operands}" + suffix

    def capacity(self) -> int:
        """How many distinct bare problems the level has (word problems: at least that many times 10,000)."""
        values = lambda d: 10 if d == 1 else 9 * 10 ** (d - 1)  # noqa: E731
        per_op = sum(8 if op == "*" else values(self.later) for op in self.ops)
        count = values(self.digits) * per_op ** (self.operands - 1)
        return count * 10_000 if self.words else count


SUFFIX = {"": "+-", "p": "+", "x": "+-*"}


def parse_level(text: str) -> Level:
    """`d2o3` (2 digits, 3 operands, + and -), `d2o3p` (+ only), `d2o3x` (+ - *); `w` first: a word problem;
    `d3r1o2p`: a 3-digit first operand, 1-digit others."""
    m = re.fullmatch(r"(w?)d(\d)(?:r(\d))?o(\d)([px]?)", text.strip())
    if m is None:
        raise ValueError(f"a level is written like d2o3, d2o3p, d2o3x, d3r1o2p or wd1o2, got {text!r}")
    rest = int(m.group(3)) if m.group(3) else None
    return Level(int(m.group(2)), int(m.group(4)), SUFFIX[m.group(5)], bool(m.group(1)),
                 None if rest == int(m.group(2)) else rest)


def operand(rng: random.Random, digits: int, low: int = 0) -> int:
    return rng.randint(low, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10 ** digits - 1)


NAMES = [("Mia", "She"), ("Noah", "He"), ("Ava", "She"), ("Liam", "He"), ("Zoe", "She"), ("Omar", "He"),
         ("Ella", "She"), ("Ravi", "He"), ("Lena", "She"), ("Tom", "He"), ("Sara", "She"), ("Ben", "He"),
         ("Nina", "She"), ("Leo", "He"), ("Ivy", "She"), ("Sam", "He"), ("Maya", "She"), ("Eli", "He"),
         ("Rosa", "She"), ("Finn", "He")]
THINGS = ["apples", "shells", "stickers", "marbles", "pencils", "books", "coins", "cards", "stamps", "beads",
          "cookies", "buttons", "toy cars", "flowers", "crayons", "balloons", "rocks", "ribbons", "cups", "eggs"]
GAIN = ["{p} gets {n} more.", "{p} finds {n} more.", "{p} buys {n} more.", "A friend gives {o} {n} more."]
LOSS = ["{p} gives away {n}.", "{p} loses {n}.", "{p} uses {n}.", "{p} gives {n} to a friend."]
START = ["{name} has {n} {things}.", "{name} starts with {n} {things}.", "There are {n} {things} in {name}'s bag."]
ASK = ["How many {things} does {name} have now?", "How many {things} does {name} have in the end?"]


def word_problem(rng: random.Random, level: Level) -> tuple[str, list[int], list[str]]:
    """A word problem over `level`'s numbers (never below zero), with its numbers and operations."""
    name, pronoun = rng.choice(NAMES)
    things = rng.choice(THINGS)
    low = 1  # "has 0 apples" reads oddly, and so does "has 1 apples"
    numbers, ops = [operand(rng, level.digits, 2)], []
    sentences = [rng.choice(START).format(name=name, n=numbers[0], things=things)]
    total = numbers[0]
    for i in range(level.operands - 1):
        op = rng.choice(level.ops) if total >= low else "+"
        n = operand(rng, level.later, low) if op == "+" else rng.randint(low, min(total, 10 ** level.later - 1))
        if op == "-" and level.later > 1 and total >= 10 ** (level.later - 1):  # keep the level's size
            n = rng.randint(10 ** (level.later - 1), min(total, 10 ** level.later - 1))
        wording = rng.choice(GAIN if op == "+" else LOSS)
        sentence = wording.format(p=pronoun, o="her" if pronoun == "She" else "him", n=n)
        sentences.append(("Then " + sentence[0].lower() + sentence[1:]) if i else sentence)
        numbers.append(n)
        ops.append(op)
        total = total + n if op == "+" else total - n
    sentences.append(rng.choice(ASK).format(things=things, name=name))
    return " ".join(sentences), numbers, ops


def problem(rng: random.Random, level: Level) -> dict:
    """One problem: {question, answer (the gold solution ending in `#### N`), result, level}."""
    if level.words:
        question, numbers, ops = word_problem(rng, level)
        steps, result = solve(numbers, ops)
        return {"question": question, "answer": "\n".join(steps + [f"#### {result}"]), "result": result,
                "level": level.name}
    numbers = [operand(rng, level.digits)]
    ops = []
    for _ in range(level.operands - 1):
        op = rng.choice(level.ops)
        ops.append(op)
        numbers.append(rng.randint(2, 9) if op == "*" else operand(rng, level.later))
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


def example(level: Level) -> dict:
    """The worked example `system_prompt` shows (never in a split: `splits` leaves it out)."""
    return problem(random.Random(f"example\0{level.name}"), level)


def system_prompt(level: Level, with_example: bool = False) -> str:
    """SYSTEM, or SYSTEM and one worked problem of the level: the form to answer in (short, one step a line)."""
    if not with_example:
        return SYSTEM
    shown = example(level)
    return f"{SYSTEM} Work one operation per line, like this:\n\n{shown['question']}\n{shown['answer']}"


def splits(seed: int | str, level: Level, sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Named splits of distinct problems in the order of `sizes`, from one stream: no question is in two splits,
    and none is the worked example of `system_prompt`."""
    drawn = generate(seed, level, sum(sizes.values()), exclude={example(level)["question"]})
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
