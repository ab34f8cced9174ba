"""The dataset card (README.md): a YAML header the Hub reads, and a body that records how the data was made.

The body holds the spec itself, each teacher's model and sampling, the strategies, the curation funnel, the selection
method, token totals, per-column statistics, the date and datagen's version. A card is published, so nothing local
goes in: no environment value, no secret, no absolute path (paths become their file names), and the whole text is
scrubbed once more at the end in case a prompt or query quoted one.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from datetime import datetime, UTC
from pathlib import Path
from typing import Any

import yaml

from datagen.pipeline.cost import usd
from datagen.version import __version__
from datagen.store import stats

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
# an absolute path of two or more parts, not the path part of a URL (those follow a word character or ':/')
ABS_PATH = re.compile(r"(?<![\w:/.~-])(?:~|[A-Za-z]:)?[/\\](?:[\w.@+-]+[/\\])+[\w.@+-]*")
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")]
FORMAT_TEXT = {
    "messages": "`messages`: the whole conversation (system prompt, demonstration turns, user prompt, and the "
                "teacher's answer as the assistant turn); TRL's `SFTTrainer` reads it as is.",
    "prompt_completion": "`prompt` (the messages before the answer) and `completion` (the teacher's answer as an "
                         "assistant message); TRL's `SFTTrainer` reads it as is and puts the loss on the completion.",
    "preference": "`prompt`, `chosen` and `rejected` (conversational); TRL's `DPOTrainer` reads it as is.",
    "sharegpt": "`conversations` ({from, value} turns: human, gpt, function_call, observation), `system` and "
                "`tools` (JSON text), as LLaMA-Factory reads ShareGPT.",
    "columns": "the source's columns as they are: these rows come from a source, not from a teacher, so they have no "
               "chat turns.",
}
REASONING_TEXT = {
    "inline": "each assistant turn holds the teacher's reasoning trace in a `<think>` ... `</think>` block, then a "
              "blank line and the answer (the open-r1 / OpenThoughts convention, which TRL's `SFTTrainer` trains on "
              "as is).",
    "field": "each assistant turn holds the answer in `content` and the teacher's reasoning trace in "
             "`reasoning_content`, for chat templates that render that field.",
    "drop": "the teacher's reasoning traces were left out: each assistant turn holds the answer alone.",
}
TERMS = ("The outputs in this dataset were written by the teacher models listed above. Those models' licences and "
         "terms of use apply to the data, and some of them restrict using outputs to train other models: check them "
         "before you use, share or train on this dataset.")


def build_card(plan, con, result, repo_id: str | None = None) -> str:
    loaded = plan.loaded
    header = front_matter(loaded.spec, result)
    parts = [
        f"# {loaded.spec.name}",
        (loaded.spec.description or "").strip(),
        f"Generated with datagen {__version__} on {datetime.now(UTC).date().isoformat()} from the "
        f"`{result.input.name}` rows of the spec below.",
        contents_section(result),
        usage_section(result, repo_id),
        how_made_section(plan, con),
        "## The spec\n\nThe spec this dataset was generated from (file paths are reduced to their names):\n\n"
        "```yaml\n" + spec_yaml(loaded).rstrip() + "\n```",
        "## Terms of use\n\n" + TERMS,
    ]
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n"
    text += "\n\n".join(p for p in parts if p) + "\n"
    return scrub(text, loaded)


# --- header ----------------------------------------------------------------------------------------------------


def size_category(n: int) -> str:
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>1B"


def front_matter(spec, result) -> dict[str, Any]:
    settings = spec.export
    tags = ["synthetic", "distillation", "datagen"]
    for tag in (settings.tags if settings else []):
        if tag not in tags:
            tags.append(tag)
    return {
        "license": settings.license if settings else "other",
        "pretty_name": spec.name,
        "task_categories": ["text-generation"],
        "size_categories": [size_category(sum(result.splits.values()))],
        "tags": tags,
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*"} for s in result.splits]}],
    }


# --- body ------------------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            v = f"{v:,.1f}"
        elif isinstance(v, int) and not isinstance(v, bool):
            v = f"{v:,}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def contents_section(result) -> str:
    split_rows = [[s, n, ", ".join(f"`{p.name}`" for p in result.data_files if p.name.startswith(s + "-"))]
                  for s, n in result.splits.items()]
    out = ["## Contents", f"Format: {FORMAT_TEXT[result.format]}"]
    if result.reasoning:
        out.append(f"Reasoning (`export.reasoning: {result.reasoning}`): {REASONING_TEXT[result.reasoning]}")
    out.append(table(["split", "rows", "files"], split_rows))
    if result.skipped:
        out.append(f"{result.skipped} rows with an empty output were left out.")
    out.append("Columns (statistics over all splits):\n\n" + table(["column", "type", "nulls", "summary"],
                                                                    column_stats(result)))
    return "\n\n".join(out)


def column_stats(result) -> list[list[Any]]:
    """Per exported column: type, nulls and a one-line summary, computed with Arrow so large exports stay quick."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = pa.concat_tables([pq.read_table(p) for p in result.data_files])
    return [[f"`{name}`", str(data.column(name).type), data.column(name).null_count, _summary(data.column(name))]
            for name in data.column_names]


def _range(values, unit: str) -> str:
    import pyarrow.compute as pc

    lo, hi = pc.min_max(values).values()
    mean = pc.mean(values).as_py()
    return f"{lo.as_py():,}-{hi.as_py():,} {unit} (mean {mean:,.1f})"


def _summary(col) -> str:
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    kind = col.type
    present = col.drop_null()
    if len(present) == 0:
        return "all null"
    if pa.types.is_list(kind) and pa.types.is_struct(kind.value_type):
        text = _range(pc.list_value_length(present), "turns")
        turns = present.flatten()
        if "role" in [f.name for f in kind.value_type] and "content" in [f.name for f in kind.value_type]:
            answers = turns.field("content").filter(pc.equal(turns.field("role"), "assistant"))
            if len(answers):
                text += "; assistant turns " + _range(pc.utf8_length(answers.fill_null("")), "chars")
        return text
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return f"{_range(pc.utf8_length(present), 'chars')}; {pc.count_distinct(present).as_py():,} distinct"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        lo, hi = pc.min_max(present).values()
        return f"min {lo.as_py():g}, mean {pc.mean(present).as_py():g}, max {hi.as_py():g}"
    if pa.types.is_boolean(kind):
        true = pc.sum(present.cast(pa.int64())).as_py()
        return f"{true:,} true, {len(present) - true:,} false"
    return f"{pc.count_distinct(present).as_py():,} distinct"


def usage_section(result, repo_id: str | None) -> str:
    where = repo_id or "path/to/this/folder"
    code = f'from datasets import load_dataset\n\nds = load_dataset("{where}")'
    if result.format in ("messages", "prompt_completion"):
        code += ('\n\nfrom trl import SFTConfig, SFTTrainer\n\ntrainer = SFTTrainer(model="your-student-model", '
                 'train_dataset=ds["train"],\n                     args=SFTConfig(output_dir="student"))\n'
                 "trainer.train()")
    elif result.format == "preference":
        code += ('\n\nfrom trl import DPOConfig, DPOTrainer\n\ntrainer = DPOTrainer(model="your-student-model", '
                 'train_dataset=ds["train"],\n                    args=DPOConfig(output_dir="student"))\n'
                 "trainer.train()")
    return "## How to use\n\n```python\n" + code + "\n```"


def how_made_section(plan, con) -> str:
    from datagen.spec.plan import effective_sampling
    from datagen.strategies import strategy_of

    spec = plan.spec
    teachers = []
    for name, t in spec.teachers.items():
        teachers.append([name, t.backend, f"`{public_model(t.model, plan.loaded.dir)}`",
                         public_url(getattr(t, "base_url", None)) or "in-process",
                         _sampling_text(effective_sampling(t.sampling, None))])
    steps = []
    for st in plan.steps:
        s = st.spec
        sampling = effective_sampling(spec.teachers[st.teachers[0]].sampling, s.sampling)
        extras = strategy_of(s).card_notes(s)
        if s.logprobs:
            extras.append(f"top-{s.logprobs} logprobs kept")
        steps.append([s.name, s.strategy, st.input or "-", ", ".join(st.teachers), s.n, s.output,
                      "; ".join(extras) or "-", _sampling_text(sampling)])
    out = ["## How it was made",
           "### Sources\n\n" + sources_text(plan),
           "### Teachers\n\n" + table(["teacher", "backend", "model", "endpoint", "sampling"], teachers),
           "### Steps and strategies\n\n" + table(
               ["step", "strategy", "input", "teacher", "samples per input", "output column", "details", "sampling"],
               steps),
           "### Curation funnel\n\n" + funnel_text(plan, con),
           "### Selection\n\n" + stats.selection_method(plan),
           "### Tokens and time\n\n" + tokens_text(con)]
    return "\n\n".join(out)


def sources_text(plan) -> str:
    """Each source and what identifies it: a file's name, a dataset's id, config, split, revision and fingerprint
    (which changes when the dataset's files do)."""
    rows = []
    for name, source in plan.spec.sources.items():
        info = plan.source_info.get(name, {})
        if source.dataset is not None:
            what = "dataset `" + public_model(source.dataset, plan.loaded.dir) + "`"
            what += "".join(f", {k} `{info[k]}`" for k in ("config", "split", "revision", "fingerprint") if info.get(k))
        elif source.path is not None:
            what = f"file `{Path(source.path).name}`"
        else:
            what = "rows written in the spec" if source.inline is not None else "SQL over earlier sources and steps"
        size = len(plan.source_rows[name]) if name in plan.source_rows else "-"
        rows.append([f"`{name}`", what, size])
    return table(["source", "what", "rows"], rows) if rows else "No sources: every input was generated."


def _sampling_text(sampling: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sampling.items() if v is not None)


def funnel_text(plan, con) -> str:
    stages = stats.funnel(con, plan.stage_order)
    if plan.spec.curation is None and not stages:
        return "No curation: the spec has no `curation:` block."
    if not stages:
        return "No curation decisions are recorded in the store (the curation block has not run)."
    start = stats.count_rows(con, plan.spec.curation.input) if plan.spec.curation else None
    rows = [[f"`{s.name}`", s.rows_in, s.kept, s.dropped, "; ".join(f"{r} ({n})" for r, n in s.reasons) or "-"]
            for s in stages]
    text = table(["stage", "rows in", "kept", "dropped", "commonest reasons for dropping"], rows)
    final = stats.curated_ids(con)
    lead = f"{start:,} input rows" if start is not None else "the input rows"
    tail = f"; {len(final):,} rows selected." if final is not None else "."
    return f"From {lead} through each stage{tail}\n\n{text}"


def tokens_text(con) -> str:
    totals = stats.token_totals(con)
    if not totals:
        return "No requests are recorded."
    rows = [[t["step"], t["teacher"], t["requests"], t["done"], t["failed"], t["prompt_tokens"],
             t["completion_tokens"], float(t["seconds"])] for t in totals]
    rows.append(["**total**", "", *(sum(r[i] for r in rows) for i in range(2, 8))])
    costs = [t["cost_usd"] for t in totals]
    costs.append(functools.reduce(stats.add_cost, costs, None))
    for row, cost in zip(rows, costs):  # "-": no price declared for that teacher (specs/cost.md)
        row.append(usd(cost))
    return table(["step", "teacher", "requests", "done", "failed", "prompt tokens", "completion tokens",
                  "generation seconds", "cost (USD)"], rows) + "\n\nGeneration seconds are wall-clock time spent " \
        "generating (each request holds its share; engine start not included), as in the run's table and the HTML " \
        "report."


# --- keeping local things out ----------------------------------------------------------------------------------


def public_model(ref: str, spec_dir: Path) -> str:
    """`bundled:` names and hub ids as written; a local folder as its name only."""
    if ref.startswith("bundled:"):
        return ref
    path = Path(ref).expanduser()
    if path.is_absolute() or ref.startswith((".", "~")) or (spec_dir / path).exists():
        return path.name
    return ref


def public_url(url: str | list[str] | None) -> str | None:
    """A URL (or several, comma-separated) without credentials, query or fragment."""
    if isinstance(url, list):
        return ", ".join(public_url(u) for u in url)
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


PATH_KEYS = {("store",), ("sources", "*", "path"), ("export", "path"), ("train", "output")}


def spec_yaml(loaded) -> str:
    data = copy.deepcopy(loaded.doc.data)
    _public_paths(data, (), loaded.dir, loaded.spec.name)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=110)


def _public_paths(node: Any, loc: tuple, spec_dir: Path, name: str) -> None:
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in list(items):
        here = loc + (key,)
        if key == "extra_body" and isinstance(value, dict):
            from datagen.extra_body import masked

            node[key] = masked(value)  # a credential someone put in a request body stays out of the card
        elif isinstance(value, (dict, list)):
            _public_paths(value, here, spec_dir, name)
        elif isinstance(value, str):
            generic = tuple("*" if i == 1 and len(here) == 3 else p for i, p in enumerate(here))
            if here in PATH_KEYS or generic in PATH_KEYS:
                node[key] = Path(value.replace("{name}", name)).name  # `out/{name}` would read `{name}`
            elif key in ("model", "student"):
                node[key] = public_model(value, spec_dir)
            elif key == "base_url" or (isinstance(key, int) and loc[-1:] == ("base_url",)):
                node[key] = public_url(value)


def secret_values(loaded) -> list[str]:
    """Values of environment variables that may hold secrets: the teachers' key variables, and any whose name
    says key, token, secret, password or credential."""
    names = {t.api_key_env for t in loaded.spec.teachers.values() if getattr(t, "api_key_env", None)}
    names |= {n for n in os.environ if SECRET_NAME.search(n)}
    values = {os.environ.get(n, "") for n in names}
    return sorted((v for v in values if len(v) >= 6), key=len, reverse=True)


def scrub(text: str, loaded) -> str:
    for value in secret_values(loaded):
        text = text.replace(value, "[redacted]")
    for folder in sorted({str(loaded.dir), str(Path.home()), os.getcwd()}, key=len, reverse=True):
        if len(folder) > 1:
            text = re.sub(re.escape(folder) + r"(?:[/\\]|(?![\w.-]))", "", text)
    return ABS_PATH.sub(lambda m: Path(m.group(0).replace("\\", "/")).name or m.group(0), text)
