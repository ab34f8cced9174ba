"""YAML loading that remembers where every key and value came from, so errors can name `spec.yaml:14:7`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from datagen.errors import UserError

Loc = tuple  # a key path such as ("steps", 1, "sampling", "top_p")


class PositionedDoc:
    """A parsed YAML document plus the (line, column) of every key path, both 1-based.

    A spec given as a Python dict has no file and no positions (`positions` None): its errors name the key path only.
    """

    def __init__(self, data: Any, positions: dict[Loc, tuple[int, int]] | None, path: Path):
        self.data = data
        self.positions = positions
        self.path = path

    def where(self, loc: Loc) -> str:
        """`file:line:col` of the deepest prefix of `loc` that exists in the document ("" without positions)."""
        if self.positions is None:
            return ""
        loc = tuple(loc)
        while loc and loc not in self.positions:
            loc = loc[:-1]
        line, col = self.positions.get(loc, (1, 1))
        return f"{self.path.name}:{line}:{col}"

    def at(self, loc: Loc) -> str:
        """` (file:line:col)` to end a message with, or nothing for a dict spec."""
        where = self.where(loc)
        return f" ({where})" if where else ""

    def error(self, loc: Loc, message: str) -> UserError:
        return UserError(f"{format_loc(loc)}: {message}{self.at(loc)}" if loc else f"{message}{self.at(loc)}")


def format_loc(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


def load_yaml(path: Path) -> PositionedDoc:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"spec file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read spec file {path}: {exc}") from None
    return load_yaml_text(text, path)


def load_yaml_text(text: str, path: Path) -> PositionedDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise UserError(_yaml_error_message(exc, path)) from None
    positions: dict[Loc, tuple[int, int]] = {}
    if node is None:
        raise UserError(f"{path.name} is empty; a spec needs at least `name`, `teachers` and `steps`")
    _check_size(node, path)
    data = _build(node, (), positions, path)
    return PositionedDoc(data, positions, path)


MAX_NODES = 200_000  # far above any real spec; YAML aliases can otherwise expand a few lines exponentially


def _check_size(root: yaml.Node, path: Path) -> None:
    """Count the nodes the document expands to (aliases counted each time they are used), stopping at the limit."""
    count = 0
    stack = [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise UserError(f"{path.name} expands to more than {MAX_NODES} values (YAML aliases `*name` repeated "
                            "inside each other?); write the values out or use fewer aliases")
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack.extend((k, v))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _yaml_error_message(exc: yaml.YAMLError, path: Path) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"{path.name}:{mark.line + 1}:{mark.column + 1}" if mark else path.name
    detail = f"{context}, {problem}" if context else problem
    return f"malformed YAML: {detail} ({where}); check the indentation and quoting on that line"


def _build(node: yaml.Node, loc: Loc, positions: dict, path: Path) -> Any:
    positions[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, path)
            if isinstance(key, (list, dict)):
                raise UserError(f"{format_loc(loc) or 'top level'}: a key must be a plain name "
                                f"({path.name}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1})")
            if key in out:
                raise UserError(
                    f"{format_loc(loc + (key,))}: duplicate key; remove one of the two "
                    f"({path.name}:{key_node.start_mark.line + 1}:{key_node.start_mark.column + 1})"
                )
            child = loc + (key,)
            out[key] = _build(value_node, child, positions, path)
            # point at the key itself: that is where a person looks for `top_p: 1.5`
            positions[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, loc + (i,), positions, path) for i, item in enumerate(node.value)]
    return _scalar(node, path)


def _scalar(node: yaml.Node, path: Path) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return [] if isinstance(node, yaml.SequenceNode) else {}
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        raise UserError(_yaml_error_message(exc, path)) from None
    finally:
        loader.dispose()
