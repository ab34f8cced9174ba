"""What a plan would cost, before anything runs (`datagen validate` and the plan `datagen run` prints).

Per step and teacher: the requests (samples) at most, their prompt tokens, the output tokens at worst
(`n x max_tokens` per prompt), and with a price the worst-case and expected cost. Each strategy says how many
requests its step can send and renders the prompts it can before the run (`estimate` in its module); the sources
are loaded into a scratch store for that. Prompt tokens are counted with the teacher's own tokenizer where the model
is a local folder, else estimated (characters / 4) and marked `~`. The worst case counts a prompt as its UTF-8 bytes
plus the chat template's share (no tokenizer makes more tokens than bytes), so it is never below what the run
spends. A step that reads an earlier step has prompts only once that step has run: it is estimated from its own
template plus the earlier step's prompt and longest output, and marked `~`. The expected output of a sample is the
mean of that step's samples already in the store, else half of `max_tokens` (the table says which).
"""

from __future__ import annotations

from dataclasses import dataclass

from datagen.pipeline.cost import Rates, guess_prompt_tokens, max_prompt_tokens, rates_of, usd
from datagen.spec.models import HTTP_BACKENDS
from datagen.spec.plan import Plan, PlannedStep, effective_sampling
from datagen.strategies import strategy_of
from datagen.strategies.base import ESTIMATE_PROMPTS, Job, StepEstimate, TeacherSetup, Volume
from datagen.templates import TemplateFailed

DEFAULT_OUTPUT_SHARE = 0.5  # of max_tokens, for a step with no stored samples yet


@dataclass
class Line:
    step: str
    teacher: str
    requests: int
    prompt_tokens: int  # in all, expected
    prompt_basis: str  # counted | estimated | sampled | from earlier steps
    max_prompt_tokens: int  # in all, at worst
    max_output_tokens: int  # in all, at worst
    expected_output_tokens: int
    output_basis: str  # stored | default
    rates: Rates | None  # None: no price

    @property
    def worst_usd(self) -> float | None:
        return None if self.rates is None else self.rates.cost(self.max_prompt_tokens, self.max_output_tokens)

    @property
    def expected_usd(self) -> float | None:
        return None if self.rates is None else self.rates.cost(self.prompt_tokens, self.expected_output_tokens)


@dataclass
class Estimate:
    lines: list[Line]
    spent: float | None  # what the store has spent so far (None: no store yet)

    def total(self, attr: str) -> float | None:
        known = [getattr(x, attr) for x in self.lines if getattr(x, attr) is not None]
        return sum(known) if known else None


def estimate(plan: Plan) -> Estimate:
    from datagen.store.connection import open_scratch
    from datagen.store.views import sync_views

    means, spent = _stored(plan)
    scratch = open_scratch()
    try:
        sync_views(scratch, plan.source_tables, plan.views)
        volumes: dict[str, Volume] = {}
        volume_of = _volume_of(plan, scratch, volumes)
        per_request: dict[str, tuple[float, float, int]] = {}  # step -> (prompt, max prompt, max output) per request
        counters: dict[str, object] = {}
        lines = []
        for st in plan.steps:
            job = Job(scratch, plan, st, _setups(plan, st), lambda m: None)
            try:
                est = strategy_of(st.spec).estimate(job, volume_of)
            except TemplateFailed as exc:  # a prompt that fails on a source row would fail the run: say so now
                raise plan.loaded.error(("steps", st.index), str(exc)) from None
            volumes[st.name] = strategy_of(st.spec).volume(st.spec, len(st.teachers), volume_of)
            for setup in job.teachers:
                line = _line(plan, st, setup, est, per_request, counters, means)
                lines.append(line)
                if line.requests:
                    per_request.setdefault(st.name, (line.prompt_tokens / line.requests,
                                                     line.max_prompt_tokens / line.requests,
                                                     setup.sampling["max_tokens"]))
        return Estimate(lines, spent)
    finally:
        scratch.close()


def _setups(plan: Plan, st: PlannedStep) -> list[TeacherSetup]:
    return [TeacherSetup(name, {}, effective_sampling(plan.spec.teachers[name].sampling, st.spec.sampling))
            for name in st.teachers]


def _volume_of(plan: Plan, scratch, volumes: dict[str, Volume]):
    """name -> at most how many rows it holds: a source's rows, a step's estimate, a query source's rows (in the
    scratch store, where steps are empty) or the rows of the steps it reads, whichever is more."""
    from datagen.pipeline.planner import referenced_names
    from datagen.store.reads import count

    def volume_of(name: str) -> Volume:
        if name in volumes:
            return volumes[name]
        if name in plan.source_rows:
            return Volume(len(plan.source_rows[name]))
        source = plan.spec.sources.get(name)
        if source is None or source.query is None:
            return Volume(0)
        steps = referenced_names(source.query, [s for s in volumes if s not in plan.spec.sources])
        return Volume(max(count(scratch, name) or 0, sum(volumes[s].rows for s in steps)))

    return volume_of


def _line(plan: Plan, st: PlannedStep, setup: TeacherSetup, est: StepEstimate, per_request: dict, counters: dict,
          means: dict[str, float]) -> Line:
    spec = plan.spec.teachers[setup.name]
    max_tokens = setup.sampling["max_tokens"]
    n = est.requests
    if est.prompts:
        count = _counter(plan, setup.name, counters)
        tokens = [count(m) for m in est.prompts] if count else [guess_prompt_tokens(m) for m in est.prompts]
        bounds = tokens if count else [max_prompt_tokens(m) for m in est.prompts]
        mean, mean_max = sum(tokens) / len(tokens), sum(bounds) / len(bounds)
        basis = "counted" if count else "estimated"
        if len(est.prompts) >= ESTIMATE_PROMPTS:
            basis += ", sampled"
    else:
        mean, mean_max = _chained(st, per_request)
        basis = "from earlier steps"
    expected_out = means.get(st.name)
    out_basis = "stored" if expected_out is not None else "default"
    if expected_out is None:
        expected_out = DEFAULT_OUTPUT_SHARE * max_tokens
    return Line(st.name, setup.name, n, round(mean * n), basis, round(mean_max * n), n * max_tokens,
                round(min(expected_out, max_tokens) * n), out_basis, rates_of(spec))


def _chained(st: PlannedStep, per_request: dict) -> tuple[float, float]:
    """A prompt built from an earlier step's rows: the step's own template text, plus at most that step's prompt
    and longest output (what a template that shows the row's task and answer once reads)."""
    strategy = strategy_of(st.spec)
    text = [{"role": "user", "content": t} for t in strategy.template_texts(st.spec)]
    read = [name for name, _ in strategy.reads_from(st.spec)]
    prompt, bound, output = next((per_request[r] for r in read if r in per_request), (0.0, 0.0, 0))
    return guess_prompt_tokens(text) + prompt + output, max_prompt_tokens(text) + bound + output


def _counter(plan: Plan, teacher: str, counters: dict):
    if teacher not in counters:
        from datagen.bundled import ready_folder
        from datagen.tokencount import local_counter

        spec = plan.spec.teachers[teacher]
        counters[teacher] = None if spec.backend in HTTP_BACKENDS else local_counter(ready_folder(spec.model,
                                                                                              plan.loaded.dir))
    return counters[teacher]


def _stored(plan: Plan) -> tuple[dict[str, float], float | None]:
    """Mean output per step and what was spent, from the store when there is one and no run holds it."""
    from datagen.errors import UserError
    from datagen.store import stats
    from datagen.store.readonly import open_readonly

    if not plan.loaded.store_path.exists():
        return {}, None
    try:
        con = open_readonly(plan.loaded.store_path)
    except UserError:
        return {}, None
    try:
        return stats.output_means(con), stats.spent(con)
    finally:
        con.close()


def describe_estimate(est: Estimate, max_usd: float | None = None) -> str:
    if not est.lines:
        return "estimate: no requests"
    # `~` is chars/4, which real text can exceed: "about", not "at most"; the worst case uses the byte bound
    # (max_prompt_tokens), which no tokenizer exceeds
    lines = ["estimate (at most; `~`: about, counted without the teacher's tokenizer; its worst case still holds):",
             f"  {'step':<16} {'teacher':<12} {'requests':>9} {'prompt tokens':>16} {'output tokens':>14} "
             f"{'worst case':>11} {'expected':>10}"]
    for x in est.lines:
        mark = "" if x.prompt_basis.startswith("counted") else "~"
        lines.append(f"  {x.step:<16} {x.teacher:<12} {x.requests:>9,} {mark + format(x.prompt_tokens, ','):>16} "
                     f"{x.max_output_tokens:>14,} {usd(x.worst_usd):>11} {usd(x.expected_usd):>10}")
    about = "" if all(x.prompt_basis.startswith("counted") for x in est.lines) else "~"
    lines.append(f"  {'total':<16} {'':<12} {sum(x.requests for x in est.lines):>9,} "
                 f"{about + format(sum(x.prompt_tokens for x in est.lines), ','):>16} "
                 f"{sum(x.max_output_tokens for x in est.lines):>14,} "
                 f"{usd(est.total('worst_usd')):>11} {usd(est.total('expected_usd')):>10}")
    lines += _notes(est, max_usd)
    return "\n".join(lines)


def _notes(est: Estimate, max_usd: float | None) -> list[str]:
    out = []
    chained = sorted({x.step for x in est.lines if x.prompt_basis == "from earlier steps"})
    if chained:
        out.append(f"  prompts of {', '.join(chained)} are known once earlier steps run: estimated from their "
                   "templates plus the earlier step's prompt and longest output")
    default = sorted({x.step for x in est.lines if x.output_basis == "default"})
    if default and any(x.rates is not None and (x.rates.input or x.rates.output) for x in est.lines):
        out.append(f"  expected output of {', '.join(default)}: half of max_tokens (no samples stored yet)")
    unpriced = [f"{x.step} ({x.teacher})" for x in est.lines if x.rates is None]
    if unpriced:
        out.append(f"  no price, cost unknown and not limited by a budget: {', '.join(dict.fromkeys(unpriced))}; "
                   "set `price: {input, output}` on the teacher (USD per million tokens)")
    if est.spent:
        out.append(f"  already spent (in the store): {usd(est.spent)}; finished requests are not sent again")
    if max_usd is not None:
        worst = (est.total("worst_usd") or 0) + (est.spent or 0)
        verdict = "the worst case fits" if worst <= max_usd else \
            "the worst case does not fit: the run stops before it would pass the cap"
        out.append(f"  budget: {usd(max_usd)} in all, the store's spend included; {verdict}")
    return out
