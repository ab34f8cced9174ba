"""The `datagen` command: a thin shell over the library.

User mistakes print one message and exit 2; a run that started and failed exits 1; neither prints a traceback.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import typer

from datagen.errors import RunFailed, Terminated, UserError, as_interrupt

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Declarative synthetic-data generation and curation for distillation.")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _interrupted(exc: KeyboardInterrupt) -> NoReturn:
    what = "terminated" if isinstance(exc, Terminated) else "interrupted"
    _stderr(f"{what}: finished work is kept in the store; run the same command again to resume")
    raise typer.Exit(143 if isinstance(exc, Terminated) else 130)


def _guard(fn):
    """Translate errors once, here: UserError -> exit 2, RunFailed -> exit 1, Ctrl-C -> exit 130, SIGTERM -> 143."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal

        from datagen.errors import raise_terminated

        try:
            signal.signal(signal.SIGTERM, raise_terminated)  # keep finished work, as for Ctrl-C
        except ValueError:  # not the main thread (an embedding application): leave its handlers alone
            pass
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            _stderr(f"error: {exc}")
            raise typer.Exit(2) from None
        except RunFailed as exc:
            _stderr(f"run failed: {exc}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt as exc:
            _interrupted(exc)
        except typer.Exit:
            raise
        except Exception as exc:  # a bug of ours, not the user's: say so briefly, full traceback on request
            interrupt = as_interrupt(exc)  # Ctrl-C or SIGTERM while DuckDB ran a query, outside the run loop
            if interrupt is not None:
                _interrupted(interrupt)
            if os.environ.get("DATAGEN_DEBUG"):
                raise
            _stderr(f"internal error: {type(exc).__name__}: {exc}\n(set DATAGEN_DEBUG=1 for the traceback, "
                    "and please report it)")
            raise typer.Exit(1) from None

    return wrapper


def _load(spec: Path, limit: Optional[int] = None):
    from datagen import api

    loaded = api.open_spec(spec, limit)
    for warning in loaded.warnings:
        _stderr(f"warning: {warning}")
    return loaded


def _plan(spec: Path, limit: Optional[int] = None, keys: bool = True):
    """The checked plan, with its warnings said on stderr (`keys`: also the unset key variables)."""
    from datagen import api

    plan = api.plan(_load(spec, limit))
    for warning in plan.warnings + (plan.unset_keys if keys else []):
        _stderr(f"warning: {warning}")
    return plan


VERBOSE = typer.Option(False, "--verbose", "-v", help="engine and library messages on the terminal, not in the log")


@app.command()
@_guard
def validate(spec: Path = typer.Argument(..., help="the spec file")):
    """Check a spec and print the plan, without loading any model."""
    from datagen import api

    print(api.describe(_plan(spec)))
    print("ok: the spec is valid")


@app.command()
@_guard
def run(spec: Path = typer.Argument(..., help="the spec file"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
        verbose: bool = VERBOSE,
        limit: Optional[int] = typer.Option(None, "--limit", help="try the spec on the first N input rows of every "
                                                                 "source-fed step (a separate store)"),
        max_usd: Optional[float] = typer.Option(None, "--max-usd", help="spend at most this many USD in all "
                                                "(overrides budget.max_usd; the store's earlier spend counts)"),
        cancel_batches: bool = typer.Option(False, "--cancel-batches", help="cancel the open provider batches and "
                                            "stop; the next run collects what they finished"),
        ray: Optional[str] = typer.Option(None, "--ray", help="run in-process teachers as `replicas` on a Ray cluster: "
                                                              "auto, host:port, or local"),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="also ask again the requests that failed by "
                                          "their own fault (a 400, a reply that did not parse, a refusal); those "
                                          "the provider failed are asked again in any case")):
    """Generate every step (resuming finished work), storing rows and lineage in the spec's DuckDB store.

    Engine and library messages go to runs/<name>.log beside the store unless --verbose."""
    from datagen import api, console
    from datagen.pipeline.progress import ProgressReporter

    if max_usd is not None and max_usd <= 0:
        raise UserError(f"--max-usd must be more than 0, got {max_usd:g}")
    if cancel_batches:
        _print_cancelled(api.cancel_batches(_load(spec, limit)))
        return
    plan = _plan(spec, limit, keys=False)  # a teacher that needs its key says so when it starts
    if not quiet:
        print(api.describe(plan, max_usd), flush=True)
    with console.quiet(plan.loaded.log_path, verbose), ProgressReporter(enabled=not quiet) as reporter:
        summary = api.run(plan.loaded, progress=reporter.update, log=reporter.log, checked=plan, verbose=verbose,
                          max_usd=max_usd, ray=ray, retry_failed=retry_failed)
    _print_summary(summary)


def _print_cancelled(cancelled: list[tuple]) -> None:
    if not cancelled:
        print("no open batches to cancel")
    for teacher, batch_id, status in cancelled:
        print(f"batch {batch_id} (teacher {teacher}): {status}")
    if cancelled:
        print("the next `datagen run` collects what they finished and sends the rest again")


@app.command()
@_guard
def curate(spec: Path = typer.Argument(..., help="the spec file"), verbose: bool = VERBOSE,
           max_usd: Optional[float] = typer.Option(None, "--max-usd", help="spend at most this many USD in all on "
                                                   "a student probe (overrides budget.max_usd)")):
    """Re-run the curation block alone on stored rows (no step generation; stored embeddings and student answers
    are reused; a student probe's missing answers are generated)."""
    from datagen import api, console

    if max_usd is not None and max_usd <= 0:
        raise UserError(f"--max-usd must be more than 0, got {max_usd:g}")
    _print_funnel(api.curate(_load(spec), verbose=verbose, log=console.say, max_usd=max_usd))


def _print_funnel(funnel: list[dict]) -> None:
    if funnel:
        print("curation funnel:")
    for f in funnel:
        print(f"  {f['stage']}: {f['rows_in']} in, {f['rows_out']} out, {f['rows_in'] - f['rows_out']} dropped")


def _print_summary(summary) -> None:
    from rich.console import Console
    from rich.table import Table

    from datagen.pipeline.loop import describe_summary

    if not summary.steps:  # a spec that only curates: its funnel was the output
        print(f"run finished in {summary.seconds:.1f} s; store {summary.store}")
        return
    table = Table(title=f"run finished in {summary.seconds:.1f} s; store {summary.store}")
    for col in ("step", "requested", "cached", "generated", "failed", "prompt tokens", "completion tokens",
                "generation seconds", "cost"):
        table.add_column(col, justify="left" if col == "step" else "right")
    for row in describe_summary(summary):
        table.add_row(*row)
    Console(width=120).print(table)


@app.command()
@_guard
def status(spec: Path = typer.Argument(..., help="the spec file"),
           limit: Optional[int] = typer.Option(None, "--limit", help="the store of `run --limit N`")):
    """Per step: requests done, failed and pending, and the commonest errors."""
    from datagen import api
    from datagen.pipeline.cost import usd

    result = api.status(_load(spec, limit))
    for r in result["steps"]:
        total = r["done"] + r["failed"] + r["pending"]
        if total == 0:
            print(f"{r['step']}: not started")
            continue
        cost = f", {usd(r['cost_usd'])}" if r["cost_usd"] is not None else ""
        print(f"{r['step']}: {r['done']} done, {r['failed']} failed, {r['pending']} pending "
              f"of {total}; {r['completion_tokens']} completion tokens{cost}")
        for kind, why in (("request", "their own fault, kept failed: `datagen run --retry-failed` asks again"),
                          ("provider", "the provider's fault: the next `datagen run` asks again")):
            got = r["faults"].get(kind)
            if got:
                print(f"  {got['count']} failed by {why}")
                for error, n in got["top_errors"]:
                    print(f"    {n} x {error[:150]}")
        for line in r["lines"]:  # what the strategy adds: accepted items, coverage, pairs built, samples kept
            print(line)
    if result["cost_usd"] is not None:
        print(f"spent: {usd(result['cost_usd'])} in all")
    for b in result["batches"]:
        print(f"open batch {b['batch_id'] or '(being created: ' + b['input_file_id'] + ')'} (teacher {b['teacher']}, "
              f"step {b['step']}): {b['status']}, {len(b['keys'])} requests out, {b['completed'] or 0} done, "
              f"{b['failed'] or 0} failed; submitted {b['submitted_at']:%Y-%m-%d %H:%M}")
    _print_funnel(result["funnel"])
    for line in result.get("agreement", []):  # a judge against people's ratings (`datagen review`)
        print(line)


@app.command()
@_guard
def query(target: Path = typer.Argument(..., help="a spec file (its store) or a .duckdb file"),
          sql: str = typer.Argument(..., help="one or more SELECT statements; the last one's result is printed"),
          format: str = typer.Option("table", "--format", "-f", help="table | json | csv")):
    """Run read-only SQL over a store and print the result."""
    from datagen import api

    if format not in ("table", "json", "csv"):
        raise UserError(f"--format must be table, json or csv, got {format!r}")
    result = api.query(target if target.suffix == ".duckdb" else _load(target), sql)
    columns = result.column_names
    rows = list(zip(*(c.to_pylist() for c in result.columns)))
    if format == "json":
        print(json.dumps([dict(zip(columns, r)) for r in rows], default=str, ensure_ascii=False, indent=1))
    elif format == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        writer.writerows(rows)
        print(buf.getvalue(), end="")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_lines=False)
        for c in columns:
            table.add_column(c, overflow="fold")
        for r in rows:
            table.add_row(*("NULL" if v is None else str(v) for v in r))
        Console(width=160).print(table)
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


@app.command()
@_guard
def export(spec: Path = typer.Argument(..., help="the spec file"),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder to write (default: export.path)"),
           format: Optional[str] = typer.Option(None, "--format", "-f",
                                                help="messages | prompt_completion | preference | sharegpt"),
           eval_split: Optional[float] = typer.Option(None, "--eval-split",
                                                      help="share of inputs held out as a test split")):
    """Write the export rows as Parquet shards plus a dataset card, loadable with datasets.load_dataset."""
    from datagen import api
    from datagen.publish.export import exported_text

    print(exported_text(api.export(_load(spec), out=out, format=format, test_split=eval_split)))


@app.command()
@_guard
def push(spec: Path = typer.Argument(..., help="the spec file"),
         repo_id: Optional[str] = typer.Option(None, "--repo-id", help="OWNER/NAME (default: export.hub.repo_id)"),
         public: bool = typer.Option(False, "--public", help="make a new repository public (default: private)"),
         dry_run: bool = typer.Option(False, "--dry-run", help="export and list what would be uploaded; send nothing"),
         out: Optional[Path] = typer.Option(None, "--out", "-o", help="export folder (default: export.path)")):
    """Export, then upload to a Hugging Face Hub dataset repository (token from HF_TOKEN)."""
    from datagen import api
    from datagen.publish.push import pushed_text

    print(pushed_text(api.push(_load(spec), repo_id=repo_id, public=public, dry_run=dry_run, out=out)))


@app.command()
@_guard
def report(spec: Path = typer.Argument(..., help="the spec file"),
           out: Optional[Path] = typer.Option(None, "--out", "-o", help="the HTML file to write")):
    """Write one self-contained HTML page: funnel, lengths, judge scores, meta coverage, embedding map, teachers."""
    from datagen import api

    print(f"wrote {api.report(_load(spec), out=out)}")


@app.command()
@_guard
def review(spec: Path = typer.Argument(..., help="the spec file"),
           port: int = typer.Option(8765, "--port", help="the port on 127.0.0.1 (0: any free one)"),
           reviewer: Optional[str] = typer.Option(None, "--reviewer", help="whose decisions these are (default: "
                                                  "your login name)")):
    """Open the store in a local web page: look at rows and their story, keep, drop, rate and edit them, and see
    how a judge agrees with people. Listens on 127.0.0.1 only; the printed address carries the access token."""
    from datagen import api

    def ready(url: str, holder: Optional[str]) -> None:
        print(f"review page: {url}", flush=True)
        if holder:
            print(f"read-only: {holder} holds the store (a running `datagen run`); the page shows a copy and saves "
                  "nothing until it has finished", flush=True)
        print("Ctrl-C stops it", flush=True)

    api.review(_load(spec), port=port, reviewer=reviewer, on_ready=ready)


@app.command()
@_guard
def train(spec: Path = typer.Argument(..., help="the spec file"),
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="student folder (default: train.output)"),
          max_steps: Optional[int] = typer.Option(None, "--max-steps", help="stop after this many optimiser steps"),
          verbose: bool = VERBOSE):
    """Train the spec's student on the selected rows (sft, kd or dpo), score it before and after, and save it."""
    from datagen import api, console
    from sft.results import print_result

    print_result(api.train(_load(spec), out=out, max_steps=max_steps, verbose=verbose, log=console.say))


@app.command()
@_guard
def init(template: Optional[str] = typer.Argument(None, help="label | reasoning | self-instruct | feedback | curate"),
         folder: Optional[Path] = typer.Argument(None, help="where to write it (default: ./<template>)"),
         list_: bool = typer.Option(False, "--list", help="list the templates and exit")):
    """Write a starter spec and its data from a template; it validates at once and runs on the bundled model."""
    from datagen.starters import TEMPLATES, write_starter

    if list_ or template is None:
        width = max(len(n) for n in TEMPLATES)
        for name, starter in TEMPLATES.items():
            print(f"{name:<{width}}  {starter.summary}")
        if template is None and not list_:
            print("\nrun `datagen init TEMPLATE [FOLDER]` to write one")
        return
    from datagen import api

    spec = write_starter(template, folder or Path(template))
    api.validate(spec)  # a starter that does not validate as written is our bug, not the user's
    print(f"wrote {spec} and its data (valid); next:\n  datagen run {spec}")


@app.command()
@_guard
def sample(model: str = typer.Argument(..., help="a student folder, a bundled: model, or a spec (its train.output)"),
           prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="a user message (repeatable)"),
           file: Optional[Path] = typer.Option(None, "--file", help="JSONL with a `prompt` or `messages` per line"),
           system: Optional[str] = typer.Option(None, "--system", help="a system prompt for every message"),
           max_thinking_tokens: Optional[int] = typer.Option(None, "--max-thinking-tokens",
                                                             help="end the reasoning at this many tokens"),
           min_thinking_tokens: Optional[int] = typer.Option(None, "--min-thinking-tokens",
                                                             help="append the wait word until this many tokens"),
           think_start: str = typer.Option("<think>", "--think-start", help="reasoning start marker"),
           think_end: str = typer.Option("</think>", "--think-end", help="reasoning end marker"),
           wait: str = typer.Option("Wait", "--wait", help="what replaces an early end of reasoning"),
           max_tokens: int = typer.Option(256, "--max-tokens", help="answer budget (and per round without a max)"),
           temperature: float = typer.Option(0.0, "--temperature", help="0 is greedy"),
           engine: str = typer.Option("vllm", "--engine", help="vllm | transformers"),
           as_json: bool = typer.Option(False, "--json", help="print one JSON object per prompt")):
    """Answer prompts with a model, with s1 budget forcing of its reasoning."""
    from datagen.teachers.thinking import ThinkingBudget
    from sft.sample import as_dict, check_thinking_budget, open_engine, read_prompts, resolve_target, sample as run_sample

    messages = read_prompts(prompt or [], file, system)
    budget = ThinkingBudget(max_thinking_tokens=max_thinking_tokens, min_thinking_tokens=min_thinking_tokens,
                    start=think_start, end=think_end, wait=wait, max_tokens=max_tokens)
    check_thinking_budget(budget)
    path = resolve_target(model)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    runner = open_engine(engine, path)
    try:
        replies = run_sample(runner, tok, messages, budget, temperature)
    finally:
        runner.close()
    for r in replies:
        if as_json:
            print(json.dumps(as_dict(r), ensure_ascii=False))
        else:
            print(f"# {r.prompt}\n[reasoning: {r.thinking_tokens} tokens, {r.waits} x {wait!r}]\n{r.reasoning}\n"
                  f"[answer: {r.answer_tokens} tokens]\n{r.answer}\n")


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
