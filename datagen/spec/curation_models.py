"""The `curation:` block: filters, decontamination, dedup and selection over one step's (or source's) rows.

Stages run in this order: filters (in the order written) -> decontaminate -> dedup (in the order written) -> select.
Every row that reaches a stage gets one row in the store's `decisions` table (kept or dropped, with a reason); the
selected rows are the store's `curated` view. Every key and its default is documented in specs/curation.md.

Checks that need the plan (does a column exist in the input?) live in curation/validate.py; these models check only
what a block says on its own.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datagen.spec.registry import register

SMOLLM2 = "bundled:smollm2-135m-instruct"
MINILM = "bundled:all-minilm-l6-v2"


class Model(BaseModel):
    # the same rules as datagen.spec.models.Model; defined here so the two modules do not import each other
    model_config = ConfigDict(extra="forbid")


def _check_regex(value: str | None, key: str) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"{key} is not a valid regular expression ({exc}); fix the pattern (in YAML, prefer "
                         "single quotes so backslashes stay as written)") from None
    return value


# --- filters: each keeps or drops a row with a reason -----------------------------------------------------------


class FilterBase(Model):
    name: str | None = None  # the stage is `filter:<name or type>`; set a name to tell two filters of one type apart


class TruncatedFilter(FilterBase):
    """Drop rows whose `_finish_reason` is `length` (the teacher hit max_tokens). Failed requests make no rows."""

    type: Literal["truncated"]


class LengthFilter(FilterBase):
    """Keep rows whose `column` has between `min_tokens` and `max_tokens` tokens of the student's tokenizer."""

    type: Literal["length"]
    column: str
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    tokenizer: str = SMOLLM2

    @model_validator(mode="after")
    def _bounds(self) -> LengthFilter:
        if self.min_tokens is None and self.max_tokens is None:
            raise ValueError("a length filter needs min_tokens, max_tokens or both")
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        return self


class RegexFilter(FilterBase):
    """Keep rows where `must_match` is found and `must_not_match` is not (Python `re.search`)."""

    type: Literal["regex"]
    column: str
    must_match: str | None = None
    must_not_match: str | None = None
    ignore_case: bool = False

    @field_validator("must_match", "must_not_match")
    @classmethod
    def _compiles(cls, v: str | None, info) -> str | None:
        return _check_regex(v, info.field_name)

    @model_validator(mode="after")
    def _one(self) -> RegexFilter:
        if self.must_match is None and self.must_not_match is None:
            raise ValueError("a regex filter needs must_match, must_not_match or both")
        return self


class RepetitionFilter(FilterBase):
    """Drop rows whose share of repeated word n-grams is above `max_share` (a looping generation)."""

    type: Literal["repetition"]
    column: str
    ngram: int = Field(3, ge=1, le=20)
    max_share: float = Field(0.3, gt=0, lt=1)


class ScoreFilter(FilterBase):
    """Keep rows whose numeric `column` (for example a judge's score) is within [min, max]."""

    type: Literal["score"]
    column: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ScoreFilter:
        if self.min is None and self.max is None:
            raise ValueError("a score filter needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class VerifyMathFilter(FilterBase):
    """Keep rows whose final answer equals the reference's, compared by the `math-verify` package.

    Final answers come from `#### x`, else the last `\\boxed{x}`, else the last number; `answer_pattern` (a regex whose
    first group, or whole match, is the answer; the last match wins) replaces that for `column`, and
    `reference_pattern` for `reference`.
    """

    type: Literal["verify_math"]
    column: str
    reference: str
    answer_pattern: str | None = None
    reference_pattern: str | None = None

    @field_validator("answer_pattern", "reference_pattern")
    @classmethod
    def _compiles(cls, v: str | None, info) -> str | None:
        return _check_regex(v, info.field_name)


class VerifyCodeFilter(FilterBase):
    """Run the Python in `column` followed by the tests in column `tests`; keep rows whose program exits 0."""

    type: Literal["verify_code"]
    column: str
    tests: str
    extract: Literal["fenced", "raw"] = "fenced"  # fenced: the last ```python block if there is one, else all text
    timeout_s: float = Field(10, gt=0, le=600)
    memory_mb: int = Field(512, ge=64, le=65536)
    parallel: int = Field(2, ge=1, le=64)


class ReasoningFilter(FilterBase):
    """Drop rows with no reasoning trace, an unclosed one, no answer after it (`require_answer`), or a trace whose
    `_reasoning_tokens` is outside [min_tokens, max_tokens]. `column` is the answer column of a step with
    `reasoning: true` (its trace is `<column>_reasoning`); by default the one such column of the input."""

    type: Literal["reasoning"]
    column: str | None = None
    min_tokens: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    require_answer: bool = True

    @model_validator(mode="after")
    def _bounds(self) -> ReasoningFilter:
        if self.min_tokens is not None and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens ({self.min_tokens}) must not exceed max_tokens ({self.max_tokens})")
        return self


class TrajectoryFilter(FilterBase):
    """Limits on a conversation's or an agent trajectory's shape, read from the counts its step writes beside
    `column`: `<column>_turns` (turns: a conversation's exchanges, an agent's assistant turns), `_tool_calls`,
    `_tool_errors` and `_invalid_calls` (calls to no tool, or with arguments that do not parse or match the
    schema; an agent step's)."""

    type: Literal["trajectory"]
    column: str
    min_turns: int | None = Field(None, ge=0)
    max_turns: int | None = Field(None, ge=0)
    min_tool_calls: int | None = Field(None, ge=0)
    max_tool_calls: int | None = Field(None, ge=0)
    max_tool_errors: int | None = Field(None, ge=0)
    valid_tool_calls: bool = False  # drop a trajectory with any invalid call

    @model_validator(mode="after")
    def _some(self) -> TrajectoryFilter:
        limits = (self.min_turns, self.max_turns, self.min_tool_calls, self.max_tool_calls, self.max_tool_errors)
        if all(v is None for v in limits) and not self.valid_tool_calls:
            raise ValueError("a trajectory filter needs a limit: min_turns, max_turns, min_tool_calls, max_tool_calls, "
                             "max_tool_errors or valid_tool_calls: true")
        for low, high in (("min_turns", "max_turns"), ("min_tool_calls", "max_tool_calls")):
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{low} ({a}) must not exceed {high} ({b})")
        return self

    def count_columns(self) -> list[str]:
        """The count columns its limits read."""
        out = []
        if self.min_turns is not None or self.max_turns is not None:
            out.append(f"{self.column}_turns")
        if self.min_tool_calls is not None or self.max_tool_calls is not None:
            out.append(f"{self.column}_tool_calls")
        if self.max_tool_errors is not None:
            out.append(f"{self.column}_tool_errors")
        if self.valid_tool_calls:
            out.append(f"{self.column}_invalid_calls")
        return out


# every filter the spec language knows, by `type`: the built-in ones, and any `curation.filters.add` registers
# (CONTRIBUTING.md, "Adding a filter"); datagen.spec.models.spec_model() builds the spec's union from it
FILTER_MODELS: dict[str, type[FilterBase]] = {
    "truncated": TruncatedFilter, "length": LengthFilter, "regex": RegexFilter, "repetition": RepetitionFilter,
    "score": ScoreFilter, "verify_math": VerifyMathFilter, "verify_code": VerifyCodeFilter,
    "reasoning": ReasoningFilter, "trajectory": TrajectoryFilter,
}


def register_filter(model: type[FilterBase]) -> str:
    """Make `model` a filter of the spec language (spec/registry.py); returns its type name."""
    return register(FILTER_MODELS, model, FilterBase, "type")


FilterSpec = Annotated[
    TruncatedFilter | LengthFilter | RegexFilter | RepetitionFilter | ScoreFilter | VerifyMathFilter | VerifyCodeFilter | ReasoningFilter
    | TrajectoryFilter,
    Field(discriminator="type"),
]


# --- decontamination -------------------------------------------------------------------------------------------


class DecontaminateSpec(Model):
    """Drop rows sharing a word n-gram (after lower-casing and stripping punctuation) with a benchmark source."""

    against: str
    column: str
    against_column: str | None = None  # the benchmark's column; default: the same name as `column`
    ngram: int = Field(8, ge=3, le=50)


# --- dedup -----------------------------------------------------------------------------------------------------


class DedupBase(Model):
    name: str | None = None
    column: str
    keep_by: str | None = None  # within a duplicate group keep the row with the best value here; else the first row
    keep: Literal["highest", "lowest"] = "highest"


class ExactDedup(DedupBase):
    """Same text after Unicode NFKC, case folding and collapsing whitespace."""

    type: Literal["exact"]


class MinhashDedup(DedupBase):
    """Near-duplicates by estimated Jaccard similarity of word n-gram sets (datasketch MinHash LSH)."""

    type: Literal["minhash"]
    threshold: float = Field(0.8, gt=0, le=1)
    ngram: int = Field(3, ge=1, le=20)
    num_perm: int = Field(128, ge=16, le=1024)


class SemanticDedup(DedupBase):
    """Near-duplicates by cosine similarity of sentence embeddings, searched with faiss (no n-by-n matrix)."""

    type: Literal["semantic"]
    model: str = MINILM
    threshold: float = Field(0.92, gt=0, le=1)
    exact_below: int = Field(50_000, ge=0)  # up to this many rows, search every pair exactly (blocked)
    nprobe: int = Field(16, ge=1, le=4096)  # above it, clusters (IVF lists) searched per row
    # torch: embed every row with `model`; cascade: a static model distilled from `model` proposes the rows that may
    # have a neighbour, `model` embeds only those and decides (curation/dedup/cascade.py)
    backend: Literal["torch", "cascade"] = "torch"


DEDUP_TYPES = ("exact", "minhash", "semantic")

DedupSpec = Annotated[ExactDedup | MinhashDedup | SemanticDedup, Field(discriminator="type")]


# --- selection -------------------------------------------------------------------------------------------------


class QualitySpec(Model):
    column: str
    order: Literal["highest", "lowest"] = "highest"


class DifficultySpec(Model):
    """`by: length`: longer `column` text ranks as harder. `by: student`: first the student answers each row's
    `question` (greedy, up to `max_tokens`) and rows it already answers correctly (its final answer matches the one in
    `reference`, compared as `verify_math` does) are dropped, as s1 did; the rest then rank by the length of `column`.
    `student` is a teacher name from `teachers:` or a model (bundled:..., a local folder) run with vLLM."""

    column: str
    by: Literal["length", "student"] = "length"
    student: str = SMOLLM2
    question: str | None = None
    reference: str | None = None
    max_tokens: int = Field(512, ge=1)

    @model_validator(mode="after")
    def _student(self) -> DifficultySpec:
        if self.by == "student":
            for key in ("question", "reference"):
                if getattr(self, key) is None:
                    raise ValueError(f"difficulty `by: student` needs `{key}`: the column with the "
                                     + ("question the student answers" if key == "question" else
                                        "reference answer its final answer is checked against"))
        else:
            for key in ("question", "reference"):
                if getattr(self, key) is not None:
                    raise ValueError(f"`{key}` only applies to `by: student`; remove it or set by: student")
        return self


class DiversitySpec(Model):
    """`kcenter`: greedy farthest-point selection on embeddings of `column`. `cluster`: stratify over k-means clusters
    of those embeddings (or over the values of `by_column`), picking a group uniformly at random and, within it, the
    best-ranked row, or with `weight_by_length` a row drawn with weight 2^-rank by length (s1)."""

    method: Literal["kcenter", "cluster"] = "kcenter"
    column: str | None = None
    model: str = MINILM
    clusters: int | None = Field(None, ge=1)
    by_column: str | None = None
    weight_by_length: bool = False
    length_column: str | None = None
    pool: float = Field(4.0, ge=1)  # kcenter with quality/difficulty: choose among the best pool * n rows
    # torch: `model` itself; static: a static model distilled once from it (about a fiftieth of the CPU)
    backend: Literal["torch", "static"] = "torch"

    @model_validator(mode="after")
    def _shape(self) -> DiversitySpec:
        if self.method == "kcenter":
            if self.column is None:
                raise ValueError("kcenter needs `column`: the text to embed (e.g. column: question)")
            for key in ("by_column", "clusters"):
                if getattr(self, key) is not None:
                    raise ValueError(f"`{key}` only applies to `method: cluster`; remove it or set method: cluster")
            if self.weight_by_length:
                raise ValueError("weight_by_length only applies to `method: cluster`")
        else:
            if self.by_column is None and self.column is None:
                raise ValueError("cluster needs `column` (text to embed and cluster) or `by_column` (a column whose "
                                 "values are the groups, e.g. a topic)")
            if self.by_column is not None and self.clusters is not None:
                raise ValueError("set either `by_column` (groups from a column) or `clusters` (k-means), not both")
        return self


class SelectSpec(Model):
    """Pick `n` rows. Rows are ranked by the mean of their rank on each given criterion (quality, difficulty);
    diversity then chooses among the ranked rows; without it the top n are taken."""

    n: int = Field(ge=1)
    quality: QualitySpec | None = None
    difficulty: DifficultySpec | None = None
    diversity: DiversitySpec | None = None


# --- the block -------------------------------------------------------------------------------------------------


def _check_tags(items: Any, kinds: tuple[str, ...], what: str) -> Any:
    """Say which `type` values exist when one is missing (the generic loader message names other unions' tags)."""
    if isinstance(items, list):
        for i, item in enumerate(items):
            if isinstance(item, dict) and "type" not in item:
                raise ValueError(f"{what} {i} needs `type`: one of {', '.join(kinds)}")
    return items


class CurationSpec(Model):
    input: str
    filters: list[FilterSpec] = []
    decontaminate: DecontaminateSpec | None = None
    dedup: list[DedupSpec] = []
    select: SelectSpec | None = None
    seed: int | None = None  # default: the spec's seed

    @field_validator("filters", mode="before")
    @classmethod
    def _filter_tags(cls, v: Any) -> Any:
        return _check_tags(v, tuple(FILTER_MODELS), "filter")

    @field_validator("dedup", mode="before")
    @classmethod
    def _dedup_tags(cls, v: Any) -> Any:
        return _check_tags(v, DEDUP_TYPES, "dedup")

    # The stage names, as `decisions.stage` and every funnel (status, report, card, the run's summary) show them, in
    # the order the stages run: written here once.

    def filter_stages(self) -> list[str]:
        return _numbered("filter", [f.name or f.type for f in self.filters])

    def dedup_stages(self) -> list[str]:
        return _numbered("dedup", [d.name or d.type for d in self.dedup])

    def stage_names(self) -> list[str]:
        names = self.filter_stages()
        if self.decontaminate is not None:
            names.append("decontaminate")
        names += self.dedup_stages()
        if self.select is not None:
            if self.select.difficulty is not None and self.select.difficulty.by == "student":
                names.append("select:difficulty")
            names.append("select")
        return names


def _numbered(kind: str, names: list[str]) -> list[str]:
    """`filter:regex`, and `filter:regex:2` for a second unnamed one of the same type."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(f"{kind}:{name}" if seen[name] == 1 else f"{kind}:{name}:{seen[name]}")
    return out
