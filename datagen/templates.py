"""Prompt templates: Jinja in a sandbox, undefined variables are errors (a spec can never run code)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


@lru_cache(maxsize=256)
def compile_template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def variables(source: str) -> set[str]:
    """The names a template reads from its context. Raises jinja2.TemplateSyntaxError for a broken template."""
    return set(meta.find_undeclared_variables(_ENV.parse(source)))


def render(source: str, context: dict[str, Any]) -> str:
    return compile_template(source).render(**context).strip()
