"""Pydantic models for the whole spec language (see specs/README.md for every key and its default).

Models reject unknown keys. Behaviour that is not built yet is still modelled here, so a spec that uses it is read
correctly; the plan (datagen/spec/plan.py) then refuses it with "not supported yet" instead of ignoring it.
"""

from __future__ import annotations

import functools
import operator
import re
import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from datagen.spec.cost_models import HTTP_BACKENDS, AnthropicBatchSpec, BatchSpec, BudgetSpec, PriceSpec  # noqa: F401
from datagen.spec.reasoning_models import ExtraBody, ReasoningSpec, ThinkingSpec
from datagen.spec.registry import register
from datagen.spec.tool_models import ToolSpec

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names the store itself uses; a step or source with one of these names would shadow a store table.
# DuckDB's reserved keywords (duckdb_keywords() where keyword_category = 'reserved').
SQL_RESERVED = set(
    "all analyse analyze and any array as asc asymmetric both case cast check collate column constraint create "
    "default deferrable desc describe distinct do else end except false fetch for foreign from group having in "
    "initially intersect into lambda lateral leading limit not null offset on only or order pivot pivot_longer "
    "pivot_wider placing primary qualify references returning select show some summarize symmetric table then to "
    "trailing true union unique unpivot using variadic when where window with".split()
)
RESERVED_NAMES = {"requests", "lineage", "decisions", "curated", "train_runs", "outputs", "pairs",
                  "soft_labels", "logprobs",  # the soft labels' table and their per-token view
                  "decontaminate",  # a curation stage's name in `decisions`
                  "batches", "batch_requests", "tool_calls",
                  "human", "human_ratings", "human_revisions"}  # `datagen review`: people's decisions' stage, tables


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


def check_name(value: str, what: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{what} name {value!r} must be an SQL identifier: letters, digits and _, not starting with a digit")
    if value.lower() in RESERVED_NAMES or value.startswith("_"):
        raise ValueError(f"{what} name {value!r} is taken by the store (or starts with _); choose another name")
    if value.lower() in SQL_RESERVED:
        raise ValueError(f"{what} name {value!r} is a reserved SQL word, so queries could not name it; "
                         f"choose another name (e.g. {value}_step)")
    return value


# --- sampling and teachers -------------------------------------------------------------------------------------


class SamplingSpec(Model):
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = None
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    stop: list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=5)

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float | None) -> float | None:
        if v is not None and not (0 < v <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {v}")
        return v


class EngineSpec(Model):
    enforce_eager: bool = True
    max_model_len: int = Field(4096, ge=16)
    kv_cache_gb: float = Field(2, gt=0)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    # vLLM's tool-call parser (hermes, llama3_json, mistral, ...) reads an agent step's calls from the model's text
    # when its chat template renders tools; None: the `<tool_call>{json}</tool_call>` form (Hermes, Qwen's templates;
    # specs/trajectories.md)
    tool_parser: str | None = None

    @field_validator("data_parallel_size")
    @classmethod
    def _one_engine(cls, v: int) -> int:
        # an in-process `vllm.LLM` is one engine; vLLM's data parallelism needs its own launcher per rank
        if v > 1:
            raise ValueError(
                f"data_parallel_size must be 1 for an in-process vLLM teacher, got {v}: it runs one engine. "
                "For more engines, remove it and set `replicas: N` under `datagen run --ray`; to split one model "
                "over several GPUs, set tensor_parallel_size")
        return v


class VLLMTeacherSpec(Model):
    backend: Literal["vllm"]
    model: str
    sampling: SamplingSpec = SamplingSpec()
    engine: EngineSpec = EngineSpec()
    replicas: int = Field(1, ge=1, le=1024)  # engine copies, as Ray actors under `datagen run --ray`
    price: PriceSpec | None = None  # a local engine costs nothing unless a price is declared (specs/cost.md)


class OpenAITeacherSpec(Model):
    backend: Literal["openai"]
    model: str
    base_url: str | list[str]  # one server, or several that share the requests (least-loaded first)
    api_key_env: str | None = None
    max_concurrency: int = Field(16, ge=1, le=4096)
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    timeout_s: float = Field(120, gt=0)
    max_attempts: int = Field(4, ge=1, le=20)  # tries per request for faults other than a rate limit
    rate_limit_wait_s: float = Field(600, gt=0)  # how long a request rate-limited (429) keeps waiting and asking
    adaptive_rate: bool = True  # learn the server's limit from its 429s and pace requests under it (AIMD)
    down_limit_s: float = Field(300, gt=0)  # how long a request waits for an unreachable server (no connection,
    # timeouts, 502/503/504) before it counts as failed; such attempts are not max_attempts
    sampling: SamplingSpec = SamplingSpec()
    price: PriceSpec | None = None
    batch_discount: float = Field(0.5, ge=0, le=1)  # the share of the price a batch job saves
    batch: BatchSpec = BatchSpec()
    extra_body: ExtraBody = None  # sent with every request as is (specs/reasoning.md)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | list[str]) -> str | list[str]:
        return check_base_url(v)

    @model_validator(mode="after")
    def _one_batch_api(self) -> OpenAITeacherSpec:
        if self.batch.enabled and isinstance(self.base_url, list):
            raise ValueError("batch mode sends every request to one provider's batch API: give one base_url, or "
                             "set batch.enabled: false to share the requests among several servers")
        return self

    @field_validator("api_key_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        return check_env_name(v)


def check_base_url(v: str | list[str]) -> str | list[str]:
    urls = v if isinstance(v, list) else [v]
    if not urls:
        raise ValueError("base_url is an empty list; give one URL or several")
    for u in urls:
        if not re.match(r"^https?://", u):
            raise ValueError(f"base_url must start with http:// or https://, got {u!r}")
    if isinstance(v, list):
        cleaned = list(dict.fromkeys(u.rstrip("/") for u in v))
        return cleaned if len(cleaned) > 1 else cleaned[0]
    return v.rstrip("/")


def check_env_name(v: str | None) -> str | None:
    if v is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", v):
        raise ValueError("api_key_env is the NAME of an environment variable (e.g. TEACHER_API_KEY), not the key itself")
    return v


class AnthropicThinkingSpec(Model):
    """Extended thinking: the model thinks in up to `budget_tokens` tokens (at least 1024, under max_tokens) before
    it answers; its thinking blocks are the sample's reasoning trace."""

    type: Literal["enabled"] = "enabled"
    budget_tokens: int = Field(ge=1024)


class AnthropicTeacherSpec(Model):
    """Anthropic's Messages API (and its Message Batches); the client keys mean what they mean for `openai`."""

    backend: Literal["anthropic"]
    model: str
    base_url: str | list[str] = "https://api.anthropic.com/v1"  # `/messages` is under it
    api_key_env: str | None = "ANTHROPIC_API_KEY"  # the x-api-key header's value comes from this variable
    anthropic_version: str = "2023-06-01"  # the anthropic-version header
    max_concurrency: int = Field(16, ge=1, le=4096)
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    timeout_s: float = Field(600, gt=0)  # long replies (thinking) take minutes
    max_attempts: int = Field(4, ge=1, le=20)
    rate_limit_wait_s: float = Field(600, gt=0)
    adaptive_rate: bool = True
    down_limit_s: float = Field(300, gt=0)
    thinking: AnthropicThinkingSpec | None = None
    sampling: SamplingSpec = SamplingSpec()
    price: PriceSpec | None = None
    batch_discount: float = Field(0.5, ge=0, le=1)
    batch: AnthropicBatchSpec = AnthropicBatchSpec()
    extra_body: ExtraBody = None  # merged into every request body as is

    _url = field_validator("base_url")(lambda cls, v: check_base_url(v))
    _env = field_validator("api_key_env")(lambda cls, v: check_env_name(v))

    @model_validator(mode="after")
    def _one_batch_api(self) -> AnthropicTeacherSpec:
        if self.batch.enabled and isinstance(self.base_url, list):
            raise ValueError("batch mode sends every request to one provider's batch API: give one base_url, or "
                             "set batch.enabled: false to share the requests among several servers")
        return self



class TransformersTeacherSpec(Model):
    backend: Literal["transformers"]
    model: str
    device: str = "cpu"
    batch_size: int = Field(16, ge=1)
    sampling: SamplingSpec = SamplingSpec()
    replicas: int = Field(1, ge=1, le=1024)  # model copies, as Ray actors under `datagen run --ray`
    price: PriceSpec | None = None


TeacherSpec = Annotated[
    VLLMTeacherSpec | OpenAITeacherSpec | AnthropicTeacherSpec | TransformersTeacherSpec,
    Field(discriminator="backend")
]


# --- sources ---------------------------------------------------------------------------------------------------


class SourceSpec(Model):
    path: str | None = None
    inline: list[dict[str, Any]] | None = None
    query: str | None = None
    dataset: str | None = None  # anything `datasets.load_dataset` takes: a Hub id or a local folder
    config: str | None = None
    split: str | None = None
    revision: str | None = None
    columns: list[str] | None = None
    limit: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_kind(self) -> SourceSpec:
        given = [k for k in ("path", "inline", "query", "dataset") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a source needs exactly one of path, inline, query or dataset; got {given or 'none'}")
        if self.inline is not None and not self.inline:
            raise ValueError("inline needs at least one row")
        extra = [k for k in ("config", "split", "revision", "columns") if getattr(self, k) is not None]
        if extra and self.dataset is None:
            raise ValueError(f"{', '.join(extra)} only apply to a `dataset:` source; remove them")
        if self.columns is not None and not self.columns:
            raise ValueError("columns needs at least one column name, or leave it out for all columns")
        return self


# --- steps -----------------------------------------------------------------------------------------------------


class DemosSpec(Model):
    from_: str = Field(alias="from")
    k: int = Field(2, ge=1, le=64)
    as_: Literal["turns", "variable"] = Field("variable", alias="as")
    user: str | None = None
    assistant: str | None = None
    include_generated: bool = False

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _turns(self) -> DemosSpec:
        if self.as_ == "turns" and not self.assistant:
            raise ValueError("demos with `as: turns` need `assistant`: the demo column that is the assistant's turn")
        return self


class ResponseFormatSpec(Model):
    json_schema: dict[str, Any]

    @field_validator("json_schema")
    @classmethod
    def _object(cls, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("type") != "object" or not isinstance(v.get("properties"), dict) or not v["properties"]:
            raise ValueError("json_schema must be an object schema with `properties`, e.g. "
                             "{type: object, properties: {answer: {type: integer}}, required: [answer]}")
        return v


class StepBase(Model):
    name: str
    teacher: str | list[str]
    sampling: SamplingSpec | None = None
    system: str | None = None
    prompt: str | None = None
    output: str = "output"
    n: int = Field(1, ge=1, le=256)
    logprobs: int | None = Field(None, ge=1, le=20)
    # raw: the model's own distribution (temperature 1); processed: after the step's temperature, top-k and top-p,
    # the distribution the text was sampled from (in-process teachers; specs/train.md)
    logprobs_mode: Literal["raw", "processed"] = "raw"
    max_failure_rate: float = Field(0.5, ge=0, le=1)
    extra_body: ExtraBody = None  # merged over the teacher's (HTTP teachers only)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "step")

    # What the shared generation code (stream, keys, checks) asks of any step about a reasoning trace; the steps
    # that keep one (label, self) answer from their `reasoning` and `thinking` fields.

    def trace_markers(self) -> ReasoningSpec | None:
        """The trace's markers where the step keeps its trace apart; None where it keeps none."""
        return None

    def thinking_budget(self) -> ThinkingSpec | None:
        """The budget forcing of the trace (s1), where the step sets one."""
        return None

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        if not NAME_RE.match(v) or v.startswith("_"):
            raise ValueError(f"output column {v!r} must be a plain column name (letters, digits, _; not starting with _)")
        return v


class AgreementSpec(Model):
    column: str
    extract: str


class LabelStep(StepBase):
    strategy: Literal["label"]
    input: str
    prompt: str
    demos: DemosSpec | None = None
    response_format: ResponseFormatSpec | None = None
    agreement: AgreementSpec | None = None
    vote: Literal["majority"] | None = None
    reasoning: bool | ReasoningSpec = False  # keep the trace apart: <output>_reasoning (specs/reasoning.md)
    thinking: ThinkingSpec | None = None  # budget forcing of the trace (in-process teachers)

    def trace_markers(self) -> ReasoningSpec | None:
        return ReasoningSpec() if self.reasoning is True else (self.reasoning or None)

    def thinking_budget(self) -> ThinkingSpec | None:
        return self.thinking


class NoveltySpec(Model):
    column: str | None = None
    max_rouge_l: float | None = Field(None, gt=0, le=1)
    max_cosine: float | None = Field(None, gt=0, le=1)
    model: str = "bundled:all-minilm-l6-v2"


class ExpandStep(StepBase):
    strategy: Literal["expand"]
    prompt: str
    demos: DemosSpec
    target: int = Field(ge=1)
    max_rounds: int = Field(20, ge=1)
    batch: int = Field(64, ge=1)
    novelty: NoveltySpec | None = None
    output: str = "output"


class MetaColumnSpec(Model):
    from_: str = Field(alias="from")
    column: str
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class MetaStep(StepBase):
    strategy: Literal["meta", "curate"]  # `curate` is the old name, read as `meta` (the loader warns)
    prompt: str
    meta: dict[str, list[Any] | MetaColumnSpec]
    combine: Literal["product", "sample"] = "product"
    count: int | None = Field(None, ge=1)
    per_combination: int = Field(1, ge=1)

    @field_validator("strategy")
    @classmethod
    def _new_name(cls, v: str) -> str:
        return "meta"


class PairsSpec(Model):
    by: Literal["score", "verdict"] = "score"
    min_margin: float = Field(1, ge=0)
    max_per_input: int = Field(1, ge=1)


class JudgeStep(StepBase):
    strategy: Literal["judge"]
    input: str
    rubric: str
    prompt: str | None = None
    pairwise: bool = False
    pairs: PairsSpec | None = None
    revise: bool = False
    scale: tuple[float, float] = (1, 10)
    # json: the verdict is constrained to a JSON schema; unset, the plan picks json wherever the teacher's backend
    # constrains output (vllm, openai) and text otherwise (transformers, and always for `revise`)
    verdict_format: Literal["text", "json"] | None = None

    @model_validator(mode="after")
    def _modes(self) -> JudgeStep:
        if self.revise and self.verdict_format == "json":
            raise ValueError("a revision is the corrected answer as text; remove `verdict_format: json`")
        if self.scale[0] >= self.scale[1]:
            raise ValueError(f"scale must be [low, high] with low < high, got {list(self.scale)}")
        if self.revise and self.pairwise:
            raise ValueError("`revise: true` and `pairwise: true` are two different judge modes; choose one")
        if self.revise and self.pairs is not None:
            raise ValueError("`revise: true` always pairs (revision, original); remove `pairs`")
        if self.pairs is not None and self.pairs.by == "verdict" and not self.pairwise:
            raise ValueError("`pairs: {by: verdict}` needs `pairwise: true`; pointwise judges pair `by: score`")
        if self.pairs is not None and self.pairs.by == "score" and self.pairwise:
            raise ValueError("a pairwise judge gives verdicts, not scores: use `pairs: {by: verdict}`")
        return self


class SelfStep(StepBase):
    strategy: Literal["self"]
    input: str
    prompt: str
    demos: DemosSpec | None = None
    keep: Literal["majority", "verified"] = "majority"
    extract: str | None = None  # a regex for the final answer (group 1 if it has one); default: `#### x`, boxed, last number
    reference: str | None = None  # with `keep: verified`: the input column holding the reference answer
    reasoning: bool | ReasoningSpec = False
    thinking: ThinkingSpec | None = None

    trace_markers = LabelStep.trace_markers
    thinking_budget = LabelStep.thinking_budget

    @model_validator(mode="after")
    def _reference(self) -> SelfStep:
        if self.keep == "verified" and not self.reference:
            raise ValueError("`keep: verified` needs `reference`: the input column with the reference answer "
                             "(e.g. reference: answer)")
        if self.extract is not None:
            try:
                re.compile(self.extract)
            except re.error as exc:
                raise ValueError(f"extract is not a valid regular expression: {exc}") from None
        return self


class ConversationStep(StepBase):
    """`strategy: conversation` (datagen/strategies/conversation.py, specs/trajectories.md)."""

    strategy: Literal["conversation"]
    input: str
    user_prompt: str  # instructs the simulated user (a template over the input row)
    user_teacher: str | None = None  # default: `teacher`
    prompt: str | None = None  # renders the first user message (else the simulated user writes it)
    turns: int = Field(2, ge=1, le=50)  # exchanges: a user message and the assistant's reply


class AgentStep(StepBase):
    """`strategy: agent` (datagen/strategies/agent.py, specs/trajectories.md)."""

    strategy: Literal["agent"]
    input: str
    prompt: str
    tools: list[str] = Field(min_length=1)  # names under the spec's top-level `tools:`
    max_tool_calls: int = Field(4, ge=0, le=100)  # calls per trajectory; then the model must answer


class ScoreStep(StepBase):
    """`strategy: score` (datagen/strategies/score.py): the teacher scores given text, keeping its top-k
    log-probabilities at every token of the response (prefill only, nothing is sampled)."""

    strategy: Literal["score"]
    input: str
    prompt: str
    response: str  # the input's column whose text is scored as the assistant's reply to the rendered prompt

    @model_validator(mode="after")
    def _scores(self) -> ScoreStep:
        if not self.logprobs:
            raise ValueError("a score step keeps the teacher's top-k log-probabilities of every response token: set "
                             "`logprobs` (1 to 20)")
        if self.n != 1:
            raise ValueError("a score step scores each response once: remove `n`")
        if self.sampling is not None:
            raise ValueError("a score step samples nothing (the teacher reads the given response): remove `sampling`")
        if self.logprobs_mode != "raw":
            raise ValueError("a score step keeps raw log-probabilities (nothing is sampled, so there is no processed "
                             "distribution): remove `logprobs_mode`")
        return self


StepSpec = Annotated[
    LabelStep | ExpandStep | MetaStep | JudgeStep | SelfStep | ConversationStep | AgentStep | ScoreStep,
    Field(discriminator="strategy")
]

# --- the registry of step models -------------------------------------------------------------------------------
# The spec layer cannot import the strategies (they sit above it), so a strategy's step model is registered here:
# the built-in ones below, any other by `strategies.add(module)` when the strategies package is imported (the api
# imports it before it reads a spec). `spec_model()` is the Spec whose `steps` take every registered model, and the
# unknown-strategy message lists `STEP_MODELS`.

STEP_MODELS: dict[str, type[StepBase]] = {"label": LabelStep, "expand": ExpandStep, "meta": MetaStep,
                                          "judge": JudgeStep, "self": SelfStep, "conversation": ConversationStep,
                                          "agent": AgentStep, "score": ScoreStep}


def register_step(model: type[StepBase]) -> str:
    """Make `model` a step of the spec language (spec/registry.py); returns its strategy name."""
    return register(STEP_MODELS, model, StepBase, "strategy")



# --- curation, export, train -----------------------------------------------------------------------------------


from datagen.spec.curation_models import CurationSpec  # noqa: E402  (the full curation block lives there)


class HubSpec(Model):
    repo_id: str
    private: bool = True


class ExportSpec(Model):
    input: str | None = None
    format: Literal["messages", "prompt_completion", "preference", "sharegpt"] = "messages"
    path: str = "out/{name}"
    hub: HubSpec | None = None
    columns: list[str] = []
    test_split: float | None = Field(None, gt=0, lt=1)  # share of inputs held out as a `test` split
    shard_rows: int = Field(100_000, ge=1)  # rows per Parquet file
    license: str = "other"  # the card's license: an SPDX-like id the Hub knows (apache-2.0, mit, cc-by-4.0, other)
    reasoning: Literal["inline", "field", "drop"] = "inline"  # how a trace is written (specs/reasoning.md)
    tags: list[str] = []  # added to the card's tags (synthetic, distillation, datagen)


class HiddenSpec(Model):
    """`kd.hidden`: match the student's hidden states to a white-box teacher's (sft/hidden.py)."""

    weight: float = Field(1.0, ge=0)
    layers: Literal["auto"] | dict[int, int] = "auto"  # student layer -> teacher layer
    loss: Literal["cosine", "mse"] = "cosine"
    project: bool = False  # a learned linear map student -> teacher size, dropped after training
    teacher: str | None = None  # default: train.student (the model a truncated student was copied from)
    # what both sides' states pass through before the loss (sft/hidden.py): the teacher's final norm, a
    # parameter-free RMS normalisation, or nothing
    norm: Literal["final", "rms", "none"] = "final"

    @field_validator("layers")
    @classmethod
    def _layers(cls, v):
        if isinstance(v, dict):
            if not v:
                raise ValueError("layers needs at least one `student_layer: teacher_layer` entry, or `auto`")
            bad = {s: t for s, t in v.items() if s < 0 or t < 0}
            if bad:
                raise ValueError(f"layer indices must be >= 0, got {bad}")
        return v


class KDSpec(Model):
    alpha: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(2.0, gt=0)
    divergence: Literal["forward", "reverse"] = "forward"
    tail: bool = False  # the mass outside the teacher's top k as one more class (sft/kd.py)
    hidden: HiddenSpec | None = None


class DPOSpec(Model):
    beta: float = Field(0.1, gt=0)  # how far the student may move from the reference (smaller: further)
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"


class LoraSpec(Model):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


class EvalSpec(Model):
    split: float | None = Field(0.1, ge=0, lt=1)  # 0 or null: no held-out training rows (needs `source`)
    max_new_tokens: int = Field(256, ge=1)  # the student's answer length when a verifier scores accuracy
    source: str | None = None  # a source whose rows the student never saw, scored against its references
    prompt: str | None = None  # the source's question column
    reference: str | None = None  # the source's reference-answer column
    verify: Literal["auto", "math", "none"] = "auto"  # how greedy answers are judged (specs/train.md)

    @model_validator(mode="after")
    def _source(self) -> EvalSpec:
        if self.source is not None and (self.prompt is None or self.reference is None):
            raise ValueError("eval.source needs `prompt: COLUMN` and `reference: COLUMN` (the source's question "
                             "and reference-answer columns)")
        if self.source is None and (self.prompt is not None or self.reference is not None):
            raise ValueError("eval.prompt and eval.reference name columns of `eval.source`; set the source too")
        if self.verify == "math" and self.source is None:
            raise ValueError("eval.verify: math judges the answers to `eval.source` against `eval.reference`; set "
                             "the source, or leave verify at auto")
        if not self.split and self.source is None:
            raise ValueError("eval needs a held-out share (`split: 0.1`) or a `source:` to score, or both")
        return self


class OnPolicySpec(Model):
    """`objective: onpolicy` (sft/onpolicy.py): rounds of the student sampling, the teacher scoring its samples,
    the student training toward the teacher on its own tokens."""

    teacher: str  # the spec's teacher that scores the student's samples (datagen/strategies/score.py)
    rounds: int = Field(2, ge=1, le=1000)
    max_tokens: int = Field(128, ge=1)  # the longest sample the student writes
    logprobs: int = Field(20, ge=1, le=20)  # the teacher's top k kept at each sampled token
    samples: int = Field(1, ge=1, le=64)  # samples per prompt per round
    temperature: float = Field(1.0, ge=0)  # the student's sampling temperature
    prompts: int | None = Field(None, ge=1)  # prompts per round (drawn with the seed and the round); None: all
    # reverse: KL(student || teacher) (mode-seeking, the usual on-policy choice); forward: KL(teacher || student);
    # mix: their mean
    divergence: Literal["reverse", "forward", "mix"] = "reverse"
    tail: bool = True  # the mass outside the teacher's top k as one more class (sft/kd.py)
    sample_with: Literal["transformers", "vllm"] = "transformers"  # how the student samples


class HealSpec(Model):
    """`train.heal`: a short CE training of the (truncated) student before any objective, cached (sft/heal.py)."""

    input: str  # a step, `curated`, or a source with `prompt` and `completion` columns
    steps: int = Field(100, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    seed: int = 0  # its own, not the spec's: specs that differ only in seed share one healed student


class TrainSpec(Model):
    input: str | None = None
    student: str = "bundled:smollm2-135m-instruct"
    init: Literal["pretrained", "truncate"] = "pretrained"
    keep_layers: list[int] | None = None
    heal: HealSpec | None = None  # CE on a shared pool before the objective, cached (sft/heal.py)
    output: str = "out/student"
    objective: Literal["sft", "kd", "dpo", "onpolicy"] = "sft"
    kd: KDSpec = KDSpec()
    dpo: DPOSpec = DPOSpec()  # used when objective is dpo
    onpolicy: OnPolicySpec | None = None  # needed when objective is onpolicy
    # for `onpolicy`: how a row of `input` is put to the student (templates over its columns)
    prompt: str | None = None
    system: str | None = None
    epochs: float = Field(1, gt=0)
    max_steps: int | None = Field(None, ge=1)
    learning_rate: float = Field(2e-5, gt=0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(1024, ge=16)
    lora: LoraSpec | None = None
    eval: EvalSpec | None = None
    chat_template: str | None = None  # a Jinja file that replaces the student's chat template
    # agent rows for a student whose template cannot render tools: the tools in the system prompt, the calls and
    # results in the turns, as in-process teachers see them (sft/trajectories.py)
    tools_in_prompt: bool = False

    @model_validator(mode="after")
    def _layers(self) -> TrainSpec:
        if self.keep_layers is not None:
            if self.init != "truncate":
                raise ValueError("keep_layers only applies with `init: truncate`; add it or remove keep_layers")
            if not self.keep_layers or len(set(self.keep_layers)) != len(self.keep_layers) or min(self.keep_layers) < 0:
                raise ValueError(f"keep_layers must be distinct layer indices >= 0, got {self.keep_layers}")
        if self.kd.hidden is not None and self.objective != "kd":
            raise ValueError(f"kd.hidden is a term of the `kd` objective; set `objective: kd` (now "
                             f"{self.objective}) or remove kd.hidden")
        if self.objective == "onpolicy" and (self.onpolicy is None or self.prompt is None or self.input is None):
            raise ValueError("objective: onpolicy needs `onpolicy: {teacher: NAME}` (the teacher that scores the "
                             "student's samples), `input` (a source or step of prompts) and `prompt` (a template over "
                             "its columns)")
        if self.onpolicy is not None and self.objective != "onpolicy":
            raise ValueError(f"`onpolicy` settings apply to `objective: onpolicy` (now {self.objective}); set it or "
                             "remove them")
        return self


# --- the whole spec --------------------------------------------------------------------------------------------


class Spec(Model):
    name: str
    description: str | None = None
    seed: int = 0
    store: str | None = None
    teachers: dict[str, TeacherSpec] = {}
    sources: dict[str, SourceSpec] = {}
    tools: dict[str, ToolSpec] = {}  # what agent steps may call (specs/trajectories.md)
    steps: list[StepSpec] = []
    curation: CurationSpec | None = None
    export: ExportSpec | None = None
    train: TrainSpec | None = None
    budget: BudgetSpec | None = None  # a hard cap on spend (specs/cost.md)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", v):
            raise ValueError(f"name {v!r} must be letters, digits, '.', '_' or '-' (it names the store file)")
        return v

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: dict) -> dict:
        for name in v:
            check_name(name, "source")
        return v

    @model_validator(mode="after")
    def _generates_or_curates(self) -> Spec:
        """Steps need teachers; a spec without steps curates data the user has: sources plus a block that uses
        them (curation, export or train)."""
        if self.steps and not self.teachers:
            raise ValueError("the steps need at least one teacher: add a `teachers:` block (see specs/README.md)")
        if not self.steps:
            if not self.sources:
                raise ValueError("a spec needs `steps` (with `teachers`) to generate data, or `sources` plus a "
                                 "`curation:` block to curate data you already have; add one of them")
            if self.curation is None and self.export is None and self.train is None:
                raise ValueError("a spec without steps curates the data it has: add a `curation:` block (or "
                                 "`export:`/`train:`) that reads a source")
        return self


def spec_model() -> type[Spec]:
    """`Spec`, with `steps` taking every registered step model and `curation.filters` every registered filter
    (with only the built-in ones, `Spec` itself)."""
    from datagen.spec.curation_models import FILTER_MODELS

    return _spec_model(tuple(STEP_MODELS.values()), tuple(FILTER_MODELS.values()))


def _union(models: tuple, tag: str) -> Any:
    """`A | B | ...` tagged by `tag` (functools.reduce: a tuple given to Union[...] is easy to break by rewriting)."""
    return Annotated[functools.reduce(operator.or_, models), Field(discriminator=tag)]


@functools.cache
def _spec_model(steps: tuple, filters: tuple) -> type[Spec]:
    from datagen.spec.curation_models import CurationSpec, FilterSpec

    fields: dict[str, Any] = {}
    if set(steps) != set(typing.get_args(typing.get_args(StepSpec)[0])):
        fields["steps"] = (list[_union(steps, "strategy")], [])
    if set(filters) != set(typing.get_args(typing.get_args(FilterSpec)[0])):
        curation = create_model("CurationSpec", __base__=CurationSpec, filters=(list[_union(filters, "type")], []))
        fields["curation"] = (curation | None, None)
    return create_model("Spec", __base__=Spec, **fields) if fields else Spec
