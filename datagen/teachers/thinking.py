"""s1's budget forcing of a reasoning trace, for the in-process engines (vLLM, transformers) and `datagen sample`.

The reply starts inside a trace: the prompt is the chat template's generation prompt followed by the start marker
(`<think>`). The trace is generated in phases until it ends:
- `max_thinking_tokens` N: a phase may use only what is left of N; when N is reached the trace is cut there (never
  more than N tokens, counted with the model's tokenizer), the end marker and `final` are appended, and the answer
  is generated;
- `min_thinking_tokens` M: when the model ends its trace early (writes the end marker or ends its turn) before M
  tokens, the end is dropped and the wait word ("Wait") is appended, so the model keeps thinking; repeated until M;
- then the end marker is appended and the answer is generated (up to `max_tokens`).

`Forcing` is one sample's state machine: `next()` says what to generate next (a `Phase`: the whole prompt text, its
token budget and stop strings), `feed()` takes what the engine generated. Engines drive it their own way: the vLLM
teacher adds each phase as a new engine request the moment the last one finishes (the engine stays full), the
transformers teacher runs the phases one after another.
"""

from __future__ import annotations

from dataclasses import dataclass

from datagen.reasoning import Reasoning
from datagen.teachers.base import Sample


@dataclass
class ThinkingBudget:
    max_thinking_tokens: int | None = None
    min_thinking_tokens: int | None = None
    start: str = "<think>"
    end: str = "</think>"
    wait: str = "Wait"
    final: str = ""  # appended after the end marker when the budget cut the trace ("\nFinal answer:")
    max_tokens: int = 256  # the answer's budget (and a thinking phase's, when there is no maximum)


@dataclass
class Phase:
    prompt: str  # the whole text to continue: chat prompt, start marker, the trace so far (and the end marker)
    max_tokens: int
    stop: list[str]
    answer: bool  # the last phase: the answer after the trace


class Forcing:
    """One sample's budget forcing (see the module docstring)."""

    def __init__(self, budget: ThinkingBudget, head: str, tokenizer, answer_stop: list[str] | None = None):
        self.budget = budget
        self.head = head + budget.start  # the chat template's generation prompt, then the start marker
        self.tok = tokenizer
        self.answer_stop = list(answer_stop or [])
        self.thinking = ""
        self.waits = 0
        self.phases = 0
        self.thinking_done = False
        self.cut = False  # the budget (not the model) ended the trace
        self.answer: str | None = None
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.prompt_tokens: int | None = None  # set by the engine that runs it
        self.seconds = 0.0

    def count(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    def next(self) -> Phase | None:
        """What to generate next; None once the answer is in."""
        if self.answer is not None:
            return None
        b = self.budget
        if not self.thinking_done:
            left = b.max_thinking_tokens - self.count(self.thinking) if b.max_thinking_tokens else b.max_tokens
            if left > 0:
                return Phase(self.head + self.thinking, left, [b.end], answer=False)
            self.thinking_done = self.cut = True
        tail = b.end + (b.final if self.cut else "")
        return Phase(self.head + self.thinking + tail, b.max_tokens, self.answer_stop, answer=True)

    def feed(self, text: str, ended: bool, finish_reason: str | None, tokens: int) -> None:
        """What the engine generated for the phase `next()` gave: its text, whether it ended by itself (the end
        marker or the end of the turn) rather than at its token budget, its finish reason and token count."""
        self.phases += 1
        self.completion_tokens += tokens
        if self.thinking_done:
            self.answer, self.finish_reason = text, finish_reason
            return
        b = self.budget
        self.thinking = self._cap(self.thinking + text)
        if ended and b.min_thinking_tokens and self.count(self.thinking) < b.min_thinking_tokens:
            sep = "" if not self.thinking or self.thinking[-1].isspace() else " "
            self.thinking = self._cap(self.thinking + sep + b.wait)
            self.waits += 1
        else:
            self.thinking_done = True
            self.cut = not ended

    def _cap(self, text: str) -> str:
        """At most `max_thinking_tokens` tokens of `text` (by the model's tokenizer)."""
        cap = self.budget.max_thinking_tokens
        if not cap:
            return text
        ids = self.tok.encode(text, add_special_tokens=False)
        return text if len(ids) <= cap else self.tok.decode(ids[:cap], skip_special_tokens=False)

    def sample(self) -> Sample:
        """The finished sample: the answer as its text, the trace as its reasoning."""
        trace = Reasoning(self.thinking, self.count(self.thinking), closed=True, waits=self.waits,
                          phases=self.phases)
        return Sample(text=self.answer or "", finish_reason=self.finish_reason, prompt_tokens=self.prompt_tokens,
                      completion_tokens=self.completion_tokens, seconds=self.seconds, reasoning=trace)
