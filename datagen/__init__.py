"""datagen: declarative synthetic-dataset curation and distillation-data generation.

The Python API (specs/python.md): `datagen.run(spec)`, `curate`, `status`, `query`, `load`, `export`, `train`,
`validate`, `plan`, `open_spec` (and `datagen.api.push`, `datagen.api.report`). They are looked up lazily, so
`import datagen` stays light: no duckdb, torch or vLLM until a function is called.
"""

from datagen.version import __version__

API = ("run", "curate", "status", "query", "load", "export", "train", "validate", "plan", "open_spec")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        from datagen import api

        return getattr(api, name)
    raise AttributeError(f"module 'datagen' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(API))
