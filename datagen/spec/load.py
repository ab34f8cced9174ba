"""Read a spec file into models, turning every pydantic error into `key.path: what to change (file:line:col)`."""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from datagen.errors import UserError
from datagen.spec.models import STEP_MODELS, Spec, spec_model
from datagen.spec.yaml_loader import PositionedDoc, format_loc, load_yaml, load_yaml_text

UNIONS = (typing.Union, types.UnionType)  # `Union[A, B]` and `A | B`


class LoadedSpec:
    """A validated spec with the document it came from (for positions) and its folder (for relative paths).

    `limit` (`datagen run --limit N`) keeps the first N input rows of every step fed by a source, in a store of its
    own (`<name>.limitN.duckdb`), so a trial run is never mistaken for the full one.
    """

    def __init__(self, spec: Spec, doc: PositionedDoc, warnings: list[str] | None = None, base_dir: Path | None = None):
        self.spec = spec
        self.doc = doc
        self.path = doc.path
        self.dir = Path(base_dir).resolve() if base_dir is not None else doc.path.resolve().parent
        self.warnings = warnings or []  # deprecated spellings that still work, each with the fix
        self.limit: int | None = None

    def with_limit(self, limit: int | None) -> LoadedSpec:
        if limit is not None and limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        copy = LoadedSpec(self.spec, self.doc, self.warnings, self.dir)
        copy.path, copy.limit = self.path, limit
        return copy

    @property
    def text(self) -> str:
        """The spec as YAML text: the file as written, or a dict spec dumped."""
        if self.doc.positions is not None and self.path.is_file():
            return self.path.read_text(encoding="utf-8")
        import yaml

        return yaml.safe_dump(self.doc.data, sort_keys=False, allow_unicode=True)

    def error(self, loc: tuple, message: str) -> UserError:
        return self.doc.error(loc, message)

    def resolve_path(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else (self.dir / path)

    @property
    def store_path(self) -> Path:
        path = self.resolve_path(self.spec.store) if self.spec.store else self.dir / "runs" / f"{self.spec.name}.duckdb"
        return path.with_name(f"{path.stem}.limit{self.limit}{path.suffix}") if self.limit else path

    @property
    def log_path(self) -> Path:
        """Where engine and library messages go (beside the store), unless `--verbose`."""
        return self.store_path.with_suffix(".log")


def load_spec(path: str | Path) -> LoadedSpec:
    doc = load_yaml(Path(path))
    return validate_doc(doc)


def load_spec_data(data: dict, base_dir: str | Path | None = None) -> LoadedSpec:
    """A spec given as a dict with the YAML's shape; relative paths resolve against `base_dir` (default: the working
    directory). Errors name the key path (there is no file, so no line)."""
    import copy

    if not isinstance(data, dict):
        raise UserError(f"a spec is a mapping of keys (name, teachers, sources, steps, ...), got a "
                        f"{type(data).__name__}")
    base = Path(base_dir or Path.cwd()).resolve()
    doc = PositionedDoc(copy.deepcopy(data), None, base / "<spec dict>")
    return validate_doc(doc, base)


def load_spec_text(text: str, path: str | Path = "spec.yaml") -> LoadedSpec:
    return validate_doc(load_yaml_text(text, Path(path)))


def validate_doc(doc: PositionedDoc, base_dir: Path | None = None) -> LoadedSpec:
    if not isinstance(doc.data, dict):
        raise UserError(f"a spec is a mapping of keys (name, teachers, sources, steps, ...), got a "
                        f"{type(doc.data).__name__}{doc.at(())}")
    try:
        spec = spec_model().model_validate(doc.data)
    except ValidationError as exc:
        lines = [_describe(err, doc) for err in exc.errors()[:10]]
        more = len(exc.errors()) - 10
        if more > 0:
            lines.append(f"... and {more} more")
        raise UserError("invalid spec:\n  " + "\n  ".join(lines)) from None
    return LoadedSpec(spec, doc, _deprecations(doc), base_dir)


def _deprecations(doc: PositionedDoc) -> list[str]:
    out = []
    for i, step in enumerate(doc.data.get("steps") or []):
        if isinstance(step, dict) and step.get("strategy") == "curate":
            out.append(f"steps.{i}.strategy: `curate` is the old name of `meta` (meta-information synthesis); "
                       f"write `strategy: meta`{doc.at(('steps', i, 'strategy'))}")
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
        choices = "vllm, openai, anthropic, transformers" if tag == "backend" else ", ".join(STEP_MODELS)
        msg = f"`{tag}` is required here: one of {choices}"
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        tag = ctx.get("discriminator", "tag").strip("'")
        loc = loc + (tag,)
        known = ", ".join(STEP_MODELS) if tag == "strategy" else ctx.get("expected_tags")
        msg = f"{ctx.get('tag')!r} is not one of {known}"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    elif kind.endswith(("_type", "_parsing")) or kind.startswith(("greater", "less", "literal")):
        msg = f"{msg}, got {_short(err.get('input'))}"
    if not loc:
        return f"{msg}{doc.at(())}"
    return f"{format_loc(loc)}: {msg}{doc.at(loc)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names of the model at a pydantic loc, for did-you-mean hints (best effort)."""
    tp: Any = spec_model()
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
    if origin in UNIONS:
        for arg in args:
            arg = _unwrap(arg)
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                tag_field = next((arg.model_fields[t] for t in ("backend", "strategy", "type") if t in arg.model_fields),
                                 None)
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
    if typing.get_origin(tp) in UNIONS:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
    return tp
