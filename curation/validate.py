"""Plan-time checks of the `curation:` block: everything it names exists, before any model loads.

Called at the end of datagen.spec.plan.build_plan, so `datagen validate` reports a wrong column in a curation
block with its YAML line, the same way as a wrong template variable in a step.
"""

from __future__ import annotations

from datagen.errors import UserError
from datagen.spec.curation_models import CurationSpec

LOC = ("curation",)


def input_columns(plan, name: str) -> list[str] | None:
    if name in plan.source_columns:
        return list(plan.source_columns[name])
    for st in plan.steps:
        if st.name == name:
            return st.columns
    return None


def check_curation(loaded, plan) -> None:
    cur: CurationSpec | None = loaded.spec.curation
    if cur is None:
        return
    columns = input_columns(plan, cur.input)
    if columns is None:
        known = sorted(list(plan.source_columns) + [s.name for s in plan.steps])
        raise loaded.error(LOC + ("input",), f"`{cur.input}` is not a source or a step; set input to one of: "
                                             f"{', '.join(known)}")
    check = _Checker(loaded, cur.input, columns)
    for i, f in enumerate(cur.filters):
        loc = LOC + ("filters", i)
        if f.type == "truncated" and "_finish_reason" not in columns:
            raise loaded.error(loc, f"the truncated filter needs a step's rows (with _finish_reason), but "
                                    f"`{cur.input}` is a source; remove this filter or curate a step")
        for key in ("column", "reference", "tests"):
            check.column(loc, f, key)
        if f.type == "length":
            check.model(loc + ("tokenizer",), f.tokenizer)
        if f.type == "reasoning":
            _check_reasoning(loaded, loc, cur.input, columns, f.column)
        if f.type == "trajectory":
            missing = [c for c in f.count_columns() if c not in columns]
            if missing:
                raise loaded.error(loc + ("column",), f"`{cur.input}` has no {', '.join(missing)}: the trajectory "
                                                      "filter reads the counts a conversation step (`_turns`) or an "
                                                      "agent step (also the tool counts) writes beside its output")
    if cur.decontaminate is not None:
        _check_decontaminate(loaded, plan, check, cur)
    for i, d in enumerate(cur.dedup):
        loc = LOC + ("dedup", i)
        check.column(loc, d, "column")
        check.column(loc, d, "keep_by")
        if d.type == "semantic":
            check.model(loc + ("model",), d.model)
    if cur.select is not None:
        _check_select(loaded, check, cur.select)
        available = plan.max_rows(cur.input)
        if available is not None and cur.select.n > available:
            plan.warnings.append(f"curation.select.n: {cur.select.n} rows asked for, but `{cur.input}` can hold at "
                                 f"most {available} (before filters and dedup), so every surviving row is selected; "
                                 f"lower n or add inputs{loaded.doc.at(LOC + ('select', 'n'))}")


def describe_curation(cur: CurationSpec | None) -> list[str]:
    """The curation block's stages, in the order they run, for the plan `datagen validate` prints."""
    if cur is None:
        return []
    stages = [f"filter {f.name or f.type}" + (f" on {f.column}" if getattr(f, "column", None) else "")
              for f in cur.filters]
    if cur.decontaminate is not None:
        stages.append(f"decontaminate {cur.decontaminate.column} against {cur.decontaminate.against}")
    stages += [f"dedup {d.type} on {d.column}" for d in cur.dedup]
    if cur.select is not None:
        criteria = [k for k in ("quality", "difficulty", "diversity") if getattr(cur.select, k) is not None]
        stages.append(f"select {cur.select.n}" + (f" by {', '.join(criteria)}" if criteria else ""))
    return [f"  curation of {cur.input}: {' -> '.join(stages) or 'no stages'} -> curated"]


def _check_reasoning(loaded, loc: tuple, input_name: str, columns: list[str], column: str | None) -> None:
    """The reasoning filter reads an answer column with its trace beside it (`<column>_reasoning`)."""
    from curation.filters.reasoning import default_column
    from datagen.reasoning import trace_column

    if column is None:
        if default_column(columns) is None:
            raise loaded.error(loc, f"the reasoning filter needs `column`: the answer column of a step with "
                                    f"`reasoning: true` (its trace is `<column>_reasoning`); `{input_name}` has "
                                    f"{'several' if any(trace_column(c) in columns for c in columns) else 'none'}")
        return
    if trace_column(column) not in columns:
        raise loaded.error(loc + ("column",), f"`{input_name}` has no `{trace_column(column)}`: set `reasoning: "
                                              f"true` on the step that writes `{column}` (or name its column)")


def _check_decontaminate(loaded, plan, check: _Checker, cur: CurationSpec) -> None:
    dec = cur.decontaminate
    loc = LOC + ("decontaminate",)
    if dec.against not in plan.source_columns:
        raise loaded.error(loc + ("against",), f"`{dec.against}` is not a source; add the benchmark under `sources:` "
                                               f"and name it here (sources: {', '.join(plan.source_columns)})")
    check.column(loc, dec, "column")
    bench_cols = plan.source_columns[dec.against]
    column = dec.against_column or dec.column
    if column not in bench_cols:
        raise loaded.error(loc + ("against_column" if dec.against_column else "column",),
                           f"`{column}` is not a column of source `{dec.against}`; set against_column to one of: "
                           f"{', '.join(c for c in bench_cols if c != '_id')}")


def _check_select(loaded, check: _Checker, sel) -> None:
    loc = LOC + ("select",)
    if sel.quality is not None:
        check.column(loc + ("quality",), sel.quality, "column")
    if sel.difficulty is not None:
        for key in ("column", "question", "reference"):
            check.column(loc + ("difficulty",), sel.difficulty, key)
        if sel.difficulty.by == "student" and sel.difficulty.student not in loaded.spec.teachers:
            _check_student(loaded, loc + ("difficulty", "student"), sel.difficulty.student)
    div = sel.diversity
    if div is not None:
        dloc = loc + ("diversity",)
        for key in ("column", "by_column", "length_column"):
            check.column(dloc, div, key)
        if div.column is not None and div.by_column is None:
            check.model(dloc + ("model",), div.model)
        if div.weight_by_length and div.length_column is None and sel.difficulty is None:
            raise loaded.error(dloc + ("weight_by_length",), "weight_by_length needs the text whose length counts: "
                                                             "set length_column (e.g. length_column: solution)")


def _check_student(loaded, loc: tuple, ref: str) -> None:
    """A student is one of the spec's teachers or a model; a bare word that is neither is most likely a typo."""
    from pathlib import Path

    from datagen.bundled import model_identity

    teachers = ", ".join(loaded.spec.teachers)
    bare = "/" not in ref and ":" not in ref and not (Path(loaded.dir) / ref).exists()
    try:
        if bare:
            raise UserError(f"`{ref}` is not a teacher of this spec nor a model folder")
        model_identity(ref, loaded.dir)
    except UserError as exc:
        raise loaded.error(loc, f"{exc}; name one of the spec's teachers ({teachers}) or a model "
                                "(bundled:smollm2-135m-instruct, a local folder, org/name)") from None


class _Checker:
    def __init__(self, loaded, input_name: str, columns: list[str]):
        self.loaded = loaded
        self.input = input_name
        self.columns = columns

    def column(self, loc: tuple, model, key: str) -> None:
        name = getattr(model, key, None)
        if name is None or name in self.columns:
            return
        shown = ", ".join(c for c in self.columns if not c.startswith("_") or c == "_finish_reason")
        raise self.loaded.error(loc + (key,), f"`{name}` is not a column of `{self.input}`; set {key} to one of: "
                                              f"{shown}")

    def model(self, loc: tuple, ref: str) -> None:
        from datagen.bundled import model_identity

        try:
            model_identity(ref, self.loaded.dir)
        except UserError as exc:
            raise self.loaded.error(loc, str(exc)) from None
