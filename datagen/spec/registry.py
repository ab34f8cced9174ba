"""The registries of the spec language's tagged models (step models by `strategy`, filters by `type`): a model is
registered under the first value of its tag's `Literal[...]` (later values are old spellings it also accepts)."""

from __future__ import annotations

import typing


def register(registry: dict[str, type], model: type, base: type, tag: str) -> str:
    """Add `model` (a subclass of `base` with a `tag: Literal["name", ...]` field) to `registry`; returns its name."""
    field = model.model_fields.get(tag) if isinstance(model, type) and issubclass(model, base) else None
    names = typing.get_args(field.annotation) if field is not None else ()
    if not names:
        raise TypeError(f"{model!r} is not a {base.__name__} model: subclass {base.__module__}.{base.__name__} and "
                        f"give it a `{tag}: Literal[\"name\"]` field")
    if registry.get(names[0], model) is not model:
        raise TypeError(f"{tag} `{names[0]}` is already registered by {registry[names[0]].__name__}")
    registry[names[0]] = model
    return names[0]
