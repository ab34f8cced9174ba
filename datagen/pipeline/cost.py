"""Money: what a request costs at a teacher's price, the most a request can cost, and how amounts are shown.

Prices are USD per million tokens (`price: {input, output}`); a batch job takes `batch_discount` off both. A teacher
without a price costs nothing when it runs here (vllm, transformers) and an unknown amount when it is a server
(openai): its cost is None, which the budget does not limit and the reports show as "-".
"""

from __future__ import annotations

from dataclasses import dataclass

# What a chat template adds around the messages, in tokens, at most: role markers per message, and a default system
# prompt some templates insert when there is none (SmolLM2's is 15 tokens). Generous on purpose: it only has to be
# an upper bound.
TEMPLATE_TOKENS = 64
TOKENS_PER_MESSAGE = 8
CHARS_PER_TOKEN = 4  # the usual estimate for English text under BPE tokenizers


@dataclass(frozen=True)
class Rates:
    """USD per token."""

    input: float
    output: float

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float:
        return (prompt_tokens or 0) * self.input + (completion_tokens or 0) * self.output


def rates_of(teacher_spec) -> Rates | None:
    """A teacher's effective rates: its price, less `batch_discount` when it sends batch jobs; 0 for a local engine
    without a price; None (unknown) for a server without one."""
    price = getattr(teacher_spec, "price", None)
    if price is None:  # a provider's server (it has a base_url) without a price: unknown
        return None if hasattr(teacher_spec, "base_url") else Rates(0.0, 0.0)
    factor = 1.0
    batch = getattr(teacher_spec, "batch", None)
    if batch is not None and batch.enabled:
        factor = 1.0 - teacher_spec.batch_discount
    return Rates(price.input * factor / 1e6, price.output * factor / 1e6)


def max_prompt_tokens(messages: list[dict]) -> int:
    """An upper bound on the prompt tokens of any tokenizer: a byte-level or byte-fallback tokenizer never makes more
    tokens than the text has UTF-8 bytes, plus what the chat template adds."""
    size = sum(len(str(m.get("content", "")).encode()) + len(str(m.get("role", ""))) for m in messages)
    return size + TOKENS_PER_MESSAGE * len(messages) + TEMPLATE_TOKENS


def guess_prompt_tokens(messages: list[dict]) -> int:
    """A rough count when no tokenizer is at hand: characters / 4, plus a few tokens per message."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return chars // CHARS_PER_TOKEN + 4 * len(messages)


def max_request_cost(rates: Rates, messages: list[dict], samples: int, max_tokens: int) -> float:
    """The most `samples` samples of one prompt can cost: every sample reads the prompt and writes max_tokens."""
    return samples * rates.cost(max_prompt_tokens(messages), max_tokens)


def usd(amount: float | None) -> str:
    if amount is None:
        return "-"
    if amount == 0:
        return "$0"
    if amount < 0.01:
        return f"${amount:.6f}".rstrip("0")
    text = f"{amount:,.2f}" if amount >= 100 else f"{amount:.4f}"
    return "$" + text.rstrip("0").rstrip(".")
