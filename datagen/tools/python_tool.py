"""A Python tool's description, read from its source without running it: the function's signature (names, type
annotations, defaults) and docstring (the first paragraph describes the tool; an `Args:` section, Google style,
describes the arguments) become an OpenAI-shape function schema. Nothing of the file runs in the datagen process."""

from __future__ import annotations

import ast
from pathlib import Path

TYPES = {"int": "integer", "float": "number", "str": "string", "bool": "boolean", "list": "array", "dict": "object",
         "tuple": "array", "List": "array", "Dict": "object", "Tuple": "array", "Sequence": "array",
         "Mapping": "object"}


class ToolError(Exception):
    """A tool's declaration is wrong (the message says what to change)."""


def locate(spec_dir: Path, python: str) -> tuple[Path, str]:
    file, _, func = python.partition(":")
    path = (spec_dir / file).resolve()
    if not path.is_file():
        raise ToolError(f"no file {path} (python: {python!r} names a file beside the spec)")
    return path, func


def function_schema(name: str, path: Path, func: str, description: str | None = None,
                    parameters: dict | None = None) -> dict:
    """{"type": "function", "function": {name, description, parameters}} for `func` in `path`."""
    try:
        tree = ast.parse(path.read_text(), str(path))
    except SyntaxError as exc:
        raise ToolError(f"{path.name} line {exc.lineno}: {exc.msg}") from None
    found = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == func]
    if not found:
        names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
        raise ToolError(f"{path.name} defines no top-level function `{func}`; it defines: {', '.join(names) or 'none'}")
    fn = found[0]
    doc = ast.get_docstring(fn) or ""
    summary, arg_docs = _docstring(doc)
    if parameters is None:
        parameters = _parameters(fn, arg_docs, path)
    text = description or summary
    if not text:
        raise ToolError(f"`{func}` in {path.name} has no docstring; the model needs one to know what the tool does "
                        "(or set `description:`)")
    return {"type": "function", "function": {"name": name, "description": text, "parameters": parameters}}


def _parameters(fn: ast.FunctionDef, arg_docs: dict[str, str], path: Path) -> dict:
    args = fn.args
    if args.vararg or args.kwarg:
        raise ToolError(f"`{fn.name}` in {path.name} takes *args or **kwargs; name its arguments (or set `schema:`)")
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    pairs = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
    props, required = {}, []
    for arg, default in pairs:
        prop: dict = {}
        kind = _json_type(arg.annotation)
        if kind is not None:
            prop["type"] = kind
        if arg.arg in arg_docs:
            prop["description"] = arg_docs[arg.arg]
        if default is None:
            required.append(arg.arg)
        else:
            try:
                prop["default"] = ast.literal_eval(default)
            except ValueError:
                pass
        props[arg.arg] = prop
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _json_type(annotation) -> str | None:
    if annotation is None:
        return None
    if isinstance(annotation, ast.Subscript):  # list[int], dict[str, float]
        annotation = annotation.value
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # "int" under __future__
        return TYPES.get(annotation.value.split("[")[0])
    if isinstance(annotation, ast.Name):
        return TYPES.get(annotation.id)
    if isinstance(annotation, ast.Attribute):
        return TYPES.get(annotation.attr)
    return None


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The first paragraph, and `name: text` lines under an `Args:` (or `Arguments:`, `Parameters:`) heading."""
    paragraphs = doc.strip().split("\n\n")
    summary = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0].strip() else ""
    if summary.lower().startswith(("args:", "arguments:", "parameters:")):
        summary = ""
    out, inside = {}, False
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            inside = True
            continue
        if inside:
            if not stripped:
                continue
            if stripped.endswith(":") and " " not in stripped:  # the next heading (Returns:) ends the section
                break
            name, sep, text = stripped.partition(":")
            name = name.split("(")[0].strip()
            if sep and name.isidentifier():
                out[name] = text.strip()
    return summary, out
