"""The `train_runs` table: one row per `datagen train`, written when training starts and completed at the end.

The store is opened only for these short writes (and read-only to fetch rows), never held during training, so
`datagen query` and `status` work while a student trains.
"""

from __future__ import annotations

import uuid

from datagen.store import train_runs
from datagen.store.connection import open_store


def start_run(store_path, settings, input_name: str, output: str, train_rows: int, eval_rows: int,
              round_: int | None = None, parent_run: str | None = None) -> str:
    """A `running` row; an on-policy round also says which round and which whole run (`parent_run`) it is."""
    run_id = uuid.uuid4().hex[:16]
    con = open_store(store_path)
    try:
        train_runs.start(con, run_id, input_name, settings.objective, settings.student, output,
                         settings.model_dump_json(), train_rows, eval_rows, round_, parent_run)
    finally:
        con.close()
    return run_id


def close_saved_run(store_path, meta: dict) -> None:
    """Mark an on-policy round's record done from what its saved student's folder says (its weights are written
    first, so a kill between the two leaves a saved round whose record says running)."""
    con = open_store(store_path)
    try:
        if train_runs.status(con, meta["run_id"]) != "done":
            train_runs.finish(con, meta["run_id"], steps=meta["steps"], train_tokens=meta["train_tokens"],
                              train_seconds=meta["train_seconds"], train_loss=meta["train_loss"], before={}, after={})
    finally:
        con.close()


def finish_run(store_path, run_id: str, *, steps: int, train_tokens: int, train_seconds: float, train_loss: float,
               before: dict, after: dict) -> None:
    con = open_store(store_path)
    try:
        train_runs.finish(con, run_id, steps=steps, train_tokens=train_tokens, train_seconds=train_seconds,
                          train_loss=train_loss, before=before, after=after)
    finally:
        con.close()


def fail_run(store_path, run_id: str, error: str) -> None:
    con = open_store(store_path)
    try:
        train_runs.fail(con, run_id, error)
    finally:
        con.close()


def comparison_rows(before: dict, after: dict) -> list[tuple[str, str, str, str]]:
    """(metric, before, after, change) for the printed before/after table."""
    def row(name: str, b, a) -> tuple[str, str, str, str]:
        return name, _fmt(b), _fmt(a), (f"{a - b:+.4f}" if a is not None and b is not None else "")

    rows = []
    if "loss" in before or "loss" in after:
        rows.append(row("held-out loss per token", before.get("loss"), after.get("loss")))
    acc_before, acc_after = before.get("accuracy_by_verifier") or {}, after.get("accuracy_by_verifier") or {}
    rows += [row(f"accuracy {key}", acc_before.get(key), acc_after.get(key)) for key in sorted(acc_before)]
    source = before.get("reference_source") or after.get("reference_source")
    if source:  # eval.source (sft/eval_source.py)
        rows.append(row(f"reference loss per token ({source})", before.get("reference_loss"),
                        after.get("reference_loss")))
        acc_before = before.get("reference_accuracy_by_verifier") or {}
        acc_after = after.get("reference_accuracy_by_verifier") or {}
        rows += [row(f"accuracy {key} ({source})", acc_before.get(key), acc_after.get(key))
                 for key in sorted(acc_before)]
    rows += [row(name, before.get(key), after.get(key))  # kd (sft/kd_eval.py) and dpo (sft/dpo.py)
             for key, name in OBJECTIVE_METRICS.items() if key in before or key in after]
    return rows


OBJECTIVE_METRICS = {"kd_kl": "held-out KL(teacher || student) on its top-k",
                     "kd_kl_tail": "held-out KL(teacher || student) on its top-k + the rest",
                     "kd_top1": "held-out top-1 agreement with the teacher",
                     "preference_accuracy": "held-out preference accuracy",
                     "logp_margin": "held-out log-prob margin (chosen - rejected)"}


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4f}"


def print_result(result) -> None:
    """The before/after table and where the student went."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    for note in result.notes:
        console.print(f"note: {note}")
    if result.before or result.after:
        table = Table(title=f"{result.objective} on `{result.input}`: {result.train_rows} rows trained, "
                            f"{result.eval_rows} held out")
        for col in ("metric", "before", "after", "change"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for row in comparison_rows(result.before, result.after):
            table.add_row(*row)
        console.print(table)
    else:
        console.print("no held-out rows (set `eval: {split: 0.1}` to score before and after)")
    console.print(f"{result.steps} steps, train loss {result.train_loss:.4f}, {result.train_tokens} tokens in "
                  f"{result.train_seconds:.1f} s ({result.tokens_per_second:.0f} tokens/s); run {result.run_id}")
    console.print(f"saved the student to {result.output}")
