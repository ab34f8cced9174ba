"""Read a spec file into models, turning every pydantic error into `key.path: what to change (file:line:col)`."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from datagen.errors import UserError
from datagen.spec.models import Spec
from datagen.spec.yaml_loader import PositionedDoc, format_loc, load_yaml, load_yaml_text


class LoadedSpec:
    """A validated spec with the document it came from (for positions) and its folder (for relative paths)."""

    def __init__(self, spec: Spec, doc: PositionedDoc, warnings: list[str] | None = None):
        self.spec = spec
        self.doc = doc
        self.path = doc.path
        self.dir = doc.path.resolve().parent
        self.warnings = warnings or []  # deprecated spellings that still work, each with the fix

    def error(self, loc: tuple, message: str) -> UserError:
        return self.doc.error(loc, message)

    def resolve_path(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else (self.dir / path)

    @property
    def store_path(self) -> Path:
        if self.spec.store:
            return self.resolve_path(self.spec.store)
        return self.dir / "runs" / f"{self.spec.name}.duckdb"


def load_spec(path: str | Path) -> LoadedSpec:
    doc = load_yaml(Path(path))
    return validate_doc(doc)


def load_spec_text(text: str, path: str | Path = "spec.yaml") -> LoadedSpec:
    return validate_doc(load_yaml_text(text, Path(path)))


def validate_doc(doc: PositionedDoc) -> LoadedSpec:
    if not isinstance(doc.data, dict):
        raise UserError(f"a spec is a mapping of keys (name, teachers, sources, steps, ...), got a "
                        f"{type(doc.data).__name__} ({doc.where(())})")
    try:
        spec = Spec.model_validate(doc.data)
    except ValidationError as exc:
        lines = [_describe(err, doc) for err in exc.errors()[:10]]
        more = len(exc.errors()) - 10
        if more > 0:
            lines.append(f"... and {more} more")
        raise UserError("invalid spec:\n  " + "\n  ".join(lines)) from None
    return LoadedSpec(spec, doc, _deprecations(doc))


def _deprecations(doc: PositionedDoc) -> list[str]:
    out = []
    for i, step in enumerate(doc.data.get("steps") or []):
        if isinstance(step, dict) and step.get("strategy") == "curate":
            out.append(f"steps.{i}.strategy: `curate` is the old name of `meta` (meta-information synthesis); "
                       f"write `strategy: meta` ({doc.where(('steps', i, 'strategy'))})")
    return out


def _data_loc(loc: tuple, data: Any) -> tuple:
    """Drop the parts of a pydantic loc that are union tags rather than keys of the document."""
    out: list = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
            out.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            out.append(part)
        elif i == len(loc) - 1:
            out.append(part)  # a required key that is missing from the document
    return tuple(out)


def _describe(err: dict, doc: PositionedDoc) -> str:
    loc = _data_loc(tuple(err["loc"]), doc.data)
    kind = err["type"]
    msg = err["msg"]
    if kind == "extra_forbidden":
        key = loc[-1]
        allowed = _allowed_keys(tuple(err["loc"])[:-1])
        hint = ""
        if allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f"; allowed keys here: {', '.join(sorted(allowed))}"
        msg = f"unknown key `{key}`{hint}"
    elif kind == "missing":
        msg = f"`{loc[-1]}` is required here; add it"
    elif kind == "union_tag_not_found":
        tag = err.get("ctx", {}).get("discriminator", "").strip("'")
        choices = "vllm, openai, transformers" if tag == "backend" else "label, expand, curate, judge, self"
        msg = f"`{tag}` is required here: one of {choices}"
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = ctx.get("discriminator", "tag").strip("'")
        loc = loc + (tag,)
        msg = f"{ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif kind.endswith(("_type", "_parsing")) or kind.startswith(("greater", "less", "literal")):
        msg = f"{msg}, got {_short(err.get('input'))}"
    if not loc:
        return f"{msg} ({doc.where(())})"
    return f"{format_loc(loc)}: {msg} ({doc.where(loc)})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names of the model at a pydantic loc, for did-you-mean hints (best effort)."""
    tp: Any = Spec
    for part in loc:
        tp = _step_into(tp, part)
        if tp is None:
            return []
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or name for name, f in tp.model_fields.items()]
    return []


def _step_into(tp: Any, part: Any) -> Any:
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        for name, f in tp.model_fields.items():
            if part in (name, f.alias):
                return f.annotation
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (list, tuple) and isinstance(part, int):
        return args[0] if args else None
    if origin is dict:
        return args[1] if len(args) == 2 else None
    if origin is typing.Union:
        for arg in args:
            arg = _unwrap(arg)
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                tag_field = arg.model_fields.get("backend") or arg.model_fields.get("strategy")
                if tag_field is not None and part in typing.get_args(tag_field.annotation):
                    return arg
        for arg in args:
            if arg is not type(None):
                found = _step_into(arg, part)
                if found is not None:
                    return found
    return None


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return tp
