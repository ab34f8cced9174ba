"""Building the plan: the spec resolved into ordered steps and checked before any model loads.

Checks here: every teacher, source and step a spec names exists; a step reads only sources and earlier steps; file
sources load; query sources run. Each strategy checks its own steps (`plan` in its module: template variables exist
in the input's columns, produced columns do not clash with inherited ones, ...). The checks of the curation, export
and train blocks belong to those parts; `datagen.api.plan` runs them after this.
"""

from __future__ import annotations

import re

import duckdb

from datagen.sources import files as src
from datagen.errors import UserError
from datagen.spec.load import LoadedSpec
from datagen.spec.models import HTTP_BACKENDS
from datagen.spec.plan import Plan
from datagen.spec.reasoning_models import check_step
from datagen.store import shape as shapes
from datagen.store.views import CuratedView, QueryView, SourceView
from datagen.store.writes import create_table_from_rows, rows_to_arrow
from datagen.strategies import strategy_of


def build_plan(loaded: LoadedSpec) -> Plan:
    spec = loaded.spec
    plan = Plan(loaded)
    _check_teachers(loaded)
    _check_sampling(loaded)
    plan.unset_keys += _unset_keys(loaded)
    shape = shapes.open_shape()
    try:
        _load_file_sources(loaded, plan, shape)
        created: set[str] = set(plan.source_rows)
        plan.views += [SourceView(name) for name in plan.source_rows]
        step_names = [s.name for s in spec.steps]
        _check_unique_names(loaded, step_names)
        for i, step in enumerate(spec.steps):
            strategy = strategy_of(step)
            for name, where in strategy.reads_from(step):
                _ensure(loaded, plan, shape, created, name, ("steps", i) + where, step_names[:i])
            planned = strategy.plan(loaded, plan, shape, i, step)
            planned.volume = strategy.volume(step, len(planned.teachers), plan.volume_of)
            check_step(loaded, i, step, planned.teachers)
            _check_anthropic(loaded, i, step, planned, strategy.json_schema(step))
            _check_logprobs_mode(loaded, plan, i, step, planned.teachers)
            plan.steps.append(planned)
            shapes.create_step(shape, planned.name, planned.input, planned.input_columns, planned.produced)
            created.add(step.name)
            plan.views.append(planned.view)
        for name, source in spec.sources.items():
            if source.query is not None and name not in created:
                _ensure(loaded, plan, shape, created, name, ("sources", name, "query"), step_names)
        if spec.curation is not None and spec.curation.input in created:  # (curation's checks name a bad input)
            plan.views.append(CuratedView(spec.curation.input))
    finally:
        shape.close()
    return plan


def describe_plan(plan: Plan) -> str:
    spec = plan.spec
    lines = [f"spec {spec.name}: store {plan.loaded.store_path}"]
    if plan.loaded.limit:
        lines.append(f"  --limit {plan.loaded.limit}: the first {plan.loaded.limit} rows of every source a step reads "
                     "as its input, in a store of their own")
    for name, cols in plan.source_columns.items():
        size = f"{len(plan.source_rows[name])} rows" if name in plan.source_rows else "SQL view"
        info = plan.source_info.get(name, {})
        if "fingerprint" in info:
            size += " of dataset " + " ".join(f"{k} {info[k]}" for k in ("dataset", "config", "split", "revision",
                                                                         "fingerprint") if info.get(k))
        lines.append(f"  source {name}: {size}; columns {', '.join(c for c in cols if c != '_id')}")
    for st in plan.steps:
        s = st.spec
        extra = f", logprobs {s.logprobs}" if s.logprobs else ""
        lines.append(f"  step {st.index + 1} {s.name}: {s.strategy} {strategy_of(s).plan_line(st)} with "
                     f"{', '.join(st.teachers)}, n={s.n}{extra} -> {', '.join(st.produced)}")
    if spec.train is not None:
        t = spec.train
        source = t.input or ("curated" if spec.curation is not None else spec.steps[-1].name if spec.steps else "?")
        init = f", truncated to {len(t.keep_layers) if t.keep_layers else 'half its'} layers" \
            if t.init == "truncate" else ""
        if t.heal is not None:
            init += f", healed {t.heal.steps} steps on {t.heal.input}"
        if t.onpolicy is not None:
            op = t.onpolicy
            init += (f"; {op.rounds} rounds of its own samples ({op.samples} per prompt, at most {op.max_tokens} "
                     f"tokens) scored by {op.teacher}, top {op.logprobs}, {op.divergence} KL")
        lines.append(f"  train: {t.objective} of {t.student}{init} on {source} -> {t.output}")
    return "\n".join(lines)


def _check_teachers(loaded: LoadedSpec) -> None:
    """A local model folder that does not exist and an unknown `bundled:` name are spec mistakes, reported at
    `datagen validate` (not as a crash when the run starts)."""
    from datagen.bundled import model_identity

    for name, teacher in loaded.spec.teachers.items():
        if teacher.backend in HTTP_BACKENDS:
            continue  # a served model name, not a file
        try:
            model_identity(teacher.model, loaded.dir)
        except UserError as exc:
            hint = "" if "bundled" in str(exc) else "; give an existing model folder, a hub id or a bundled: model"
            raise loaded.error(("teachers", name, "model"), f"{exc}{hint}") from None


# Sampling keys a backend cannot honour; a run would otherwise fail on the first request, as an internal error.
UNSUPPORTED_SAMPLING = {"transformers": ("presence_penalty", "frequency_penalty"),
                        "anthropic": ("min_p", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty")}


def _check_sampling(loaded: LoadedSpec) -> None:
    spec = loaded.spec
    for name, teacher in spec.teachers.items():
        for key in UNSUPPORTED_SAMPLING.get(teacher.backend, ()):
            if getattr(teacher.sampling, key) is not None:
                raise loaded.error(("teachers", name, "sampling", key), _unsupported(key, teacher.backend))
    for i, step in enumerate(spec.steps):
        names = step.teacher if isinstance(step.teacher, list) else [step.teacher]
        for name in names:
            backend = spec.teachers[name].backend if name in spec.teachers else None
            for key in UNSUPPORTED_SAMPLING.get(backend, ()):
                if step.sampling is not None and getattr(step.sampling, key) is not None:
                    raise loaded.error(("steps", i, "sampling", key),
                                       f"{_unsupported(key, backend)} (teacher `{name}`)")


def _unsupported(key: str, backend: str) -> str:
    if backend == "anthropic":
        return (f"{key} is not supported by the anthropic backend (the Messages API takes temperature, top_p, top_k, "
                "max_tokens and stop only); remove it, or use a vllm or openai teacher")
    return (f"{key} is not supported by the {backend} backend (transformers' generate has no such penalty); "
            "remove it, use `repetition_penalty`, or use a vllm or openai teacher")


def _check_anthropic(loaded: LoadedSpec, i: int, step, planned, json_schema: dict | None) -> None:
    """What an anthropic teacher cannot do, refused before the run instead of as a 400 on every request: no
    log-probabilities, no JSON-schema output, no tools here (yet); temperature in [0, 1]; with extended thinking,
    the sampling the API allows beside it and max_tokens above the budget."""
    from datagen.spec.plan import effective_sampling

    loc = ("steps", i)
    for name in planned.teachers:
        teacher = loaded.spec.teachers[name]
        if teacher.backend != "anthropic":
            continue
        why = f"teacher `{name}` is `backend: anthropic`"
        if step.logprobs:
            raise loaded.error(loc + ("logprobs",), f"{why}, and Anthropic's API returns no log-probabilities; remove "
                                                    "`logprobs` or use a vllm or openai teacher")
        if json_schema is not None:
            raise loaded.error(loc, f"{why}, which takes no JSON schema for its reply; ask for JSON in the prompt "
                                    "and leave the schema out (a judge: `verdict_format: text`), or use a vllm or "
                                    "openai teacher")
        if planned.tools:
            raise loaded.error(loc + ("tools",), f"{why}; tool calls are not supported on it yet; use an openai "
                                                 "teacher (OpenAI-compatible tool calling) for an agent step")
        layers = [(("teachers", name, "sampling"), teacher.sampling), (loc + ("sampling",), step.sampling)]
        for where, layer in layers:
            if layer is not None and layer.temperature is not None and layer.temperature > 1:
                raise loaded.error(where + ("temperature",), f"{why}, which takes temperature in [0, 1], got "
                                                             f"{layer.temperature:g}")
        if teacher.thinking is None:
            continue
        for where, layer in layers:
            if layer is None:
                continue
            if layer.temperature not in (None, 1) or layer.top_k is not None or (layer.top_p or 1) < 0.95:
                raise loaded.error(where, f"teacher `{name}` thinks (`thinking:`), and Anthropic's API then takes "
                                          "temperature 1, no top_k and top_p of at least 0.95; remove them")
        budget, max_tokens = teacher.thinking.budget_tokens, effective_sampling(teacher.sampling,
                                                                                step.sampling)["max_tokens"]
        if max_tokens <= budget:
            raise loaded.error(loc, f"teacher `{name}` thinks in up to {budget} tokens (thinking.budget_tokens), "
                                    f"and max_tokens ({max_tokens}) counts the thinking too; set sampling.max_tokens "
                                    "above the budget (e.g. budget + 1024)")


def _unset_keys(loaded: LoadedSpec) -> list[str]:
    """A key variable that is not set would stop `run` at once; `validate` says so beforehand."""
    import os

    out = []
    for name, teacher in loaded.spec.teachers.items():
        var = getattr(teacher, "api_key_env", None)
        if var and not os.environ.get(var):
            out.append(f"teachers.{name}.api_key_env: the environment variable {var} is not set, so `datagen run` "
                       f"would stop at once; export it first{loaded.doc.at(('teachers', name, 'api_key_env'))}")
    return out


def _check_logprobs_mode(loaded: LoadedSpec, plan: Plan, i: int, step, teachers: list[str]) -> None:
    """A vLLM engine keeps raw or processed logprobs for every request it runs (an engine setting), so the steps that
    keep logprobs from one vllm teacher must agree on `logprobs_mode`."""
    if not step.logprobs:
        return
    for earlier in plan.steps:
        if not earlier.spec.logprobs or earlier.spec.logprobs_mode == step.logprobs_mode:
            continue
        shared = [t for t in teachers if t in earlier.teachers and loaded.spec.teachers[t].backend == "vllm"]
        if shared:
            raise loaded.error(("steps", i, "logprobs_mode"),
                               f"step `{earlier.spec.name}` keeps {earlier.spec.logprobs_mode} logprobs from vllm "
                               f"teacher `{shared[0]}` and this step {step.logprobs_mode} ones, but one engine keeps "
                               "one kind; use the same logprobs_mode, or a second teacher entry for the other")


def logprobs_mode_of(plan: Plan, teacher: str) -> str:
    """What the engine of an in-process teacher keeps: `processed` when a step keeping logprobs from it asks so."""
    modes = {s.spec.logprobs_mode for s in plan.steps if teacher in s.teachers and s.spec.logprobs}
    return "processed" if "processed" in modes else "raw"


def _check_unique_names(loaded: LoadedSpec, step_names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(step_names):
        if name in seen:
            raise loaded.error(("steps", i, "name"), f"step name `{name}` is used twice; names must be unique")
        if name in loaded.spec.sources:
            raise loaded.error(("steps", i, "name"), f"step name `{name}` is also a source name; rename one")
        seen.add(name)


def _load_file_sources(loaded: LoadedSpec, plan: Plan, shape: duckdb.DuckDBPyConnection) -> None:
    fed = input_sources(loaded)
    for name, source in loaded.spec.sources.items():
        if source.query is not None:
            continue
        if source.path is not None and not loaded.resolve_path(source.path).exists():
            raise loaded.error(("sources", name, "path"), f"file not found: {loaded.resolve_path(source.path)}; "
                               "fix the path (relative paths start at the spec's folder)")
        try:
            rows, identity = _source_rows(loaded, name, source)
            if loaded.limit and name in fed:
                rows = rows[:loaded.limit]  # `run --limit N`: a trial on the first N inputs
            if not rows:
                raise UserError("the source has no rows")
            table = rows_to_arrow(rows)  # once: the store's source table is made from it too (sync_views)
            create_table_from_rows(shape, name, table)
        except UserError as exc:
            key = "dataset" if source.dataset is not None else None
            raise loaded.error(("sources", name) + ((key,) if key else ()), str(exc)) from None
        plan.source_rows[name] = rows
        plan.source_tables[name] = table
        plan.source_columns[name] = src.columns_of(rows)
        plan.source_info[name] = identity


def _source_rows(loaded: LoadedSpec, name: str, source) -> tuple[list[dict], dict]:
    """A file, inline or `dataset:` source's rows (with `_id`s) and what identifies them (for the plan and card)."""
    if source.dataset is not None:
        from datagen.sources.hub import load_dataset_rows

        rows, identity = load_dataset_rows(source, loaded.dir)
        return src.with_ids(name, rows), identity
    path = loaded.resolve_path(source.path) if source.path is not None else None
    rows = src.load_rows(name, path, source.inline, source.limit)
    return rows, ({"path": path.name} if path is not None else {"inline": True})


def input_sources(loaded: LoadedSpec) -> set[str]:
    """The sources some step reads as its `input` (what `run --limit` cuts)."""
    return {name for s in loaded.spec.steps for name, key in strategy_of(s).reads_from(s)
            if key == ("input",) and name in loaded.spec.sources}


def referenced_names(sql: str, names: list[str]) -> list[str]:
    return [n for n in names if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", sql, flags=re.IGNORECASE)]


def _ensure(loaded: LoadedSpec, plan: Plan, shape: duckdb.DuckDBPyConnection, created: set[str], name: str,
            loc: tuple, earlier_steps: list[str]) -> None:
    """Make sure `name` (a source or an earlier step) exists in the shape database, creating query views on demand."""
    spec = loaded.spec
    if name in created:
        return
    all_steps = [s.name for s in spec.steps]
    if name in all_steps:
        raise loaded.error(loc, f"`{name}` is a step that runs at or after this one; a step can only read sources "
                                "and earlier steps: reorder the steps")
    source = spec.sources.get(name)
    if source is None:
        known = sorted(list(spec.sources) + earlier_steps)
        raise loaded.error(loc, f"`{name}` is not a source or an earlier step; known: {', '.join(known) or 'none'}")
    qloc = ("sources", name, "query")
    for dep in referenced_names(source.query, list(spec.sources) + all_steps):
        if dep == name:
            continue
        if dep in all_steps and dep not in earlier_steps:
            raise loaded.error(qloc, f"the query reads step `{dep}`, which has not run when `{name}` is needed")
        _ensure(loaded, plan, shape, created, dep, qloc, earlier_steps)
    limit = source.limit
    if loaded.limit and name in input_sources(loaded):
        limit = min(limit or loaded.limit, loaded.limit)
    try:
        plan.source_columns[name] = shapes.create_query_view(shape, name, source.query, limit)
    except duckdb.Error as exc:
        raise loaded.error(qloc, f"the query does not run: {str(exc).splitlines()[0]}") from None
    created.add(name)
    plan.views.append(QueryView(name, source.query, limit))
