"""Prompt templates: Jinja in a sandbox, undefined variables are errors (a spec can never run code)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from datagen.errors import UserError

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)


@lru_cache(maxsize=256)
def compile_template(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def variables(source: str) -> set[str]:
    """The names a template reads from its context. Raises jinja2.TemplateSyntaxError for a broken template."""
    return set(meta.find_undeclared_variables(_ENV.parse(source)))


class TemplateFailed(UserError):
    """A template that passed the plan's checks but fails on a row (`{{ x.y }}` on a row without `y`, a sandbox
    violation such as `{{ x.__class__ }}`, a filter given the wrong type)."""


def render(source: str, context: dict[str, Any]) -> str:
    try:
        return compile_template(source).render(**context).strip()
    except SecurityError as exc:
        raise TemplateFailed(f"template {_short(source)} is refused by the sandbox ({exc}); templates may only read "
                             "the row's columns") from None
    except Exception as exc:  # noqa: BLE001  any error inside a user's template is the template's
        row = ", ".join(f"{k}={_short(v)}" for k, v in list(context.items())[:4])
        raise TemplateFailed(f"template {_short(source)} fails on the row ({row}): {type(exc).__name__}: {exc}; "
                             "fix the template") from None


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."
