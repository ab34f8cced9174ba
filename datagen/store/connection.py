"""Opening a store: one DuckDB file per spec. DuckDB allows one writing process; we say who holds it."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb

from datagen.errors import UserError
from datagen.store.migrations import migrate
from datagen.store.sql import arrow_table, quote_ident  # noqa: F401  (re-exported)


CHECKPOINT_THRESHOLD = "256MB"  # of write-ahead log between checkpoints of a writing connection (DuckDB's: 16 MB)


def open_store(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (and for writing, create and migrate) the store at `path`."""
    path = Path(path)
    if read_only and not path.exists():
        raise UserError(f"no store at {path}; run `datagen run` on the spec first")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        raise _in_use_error(path, exc) from None
    except duckdb.Error as exc:
        raise UserError(f"cannot open store {path}: {exc}") from None
    if not read_only:
        # A checkpoint rewrites the row groups a run is still appending to and leaves the old blocks free inside
        # the file, which never shrinks: with DuckDB's 16 MB a run of 1,000 scored solutions left 18 of 56 blocks
        # free (119 bytes per scored token; with this, 77). Committed data is in the write-ahead log until then, as
        # safe (a kill -9 replays it on the next open); closing the store checkpoints.
        con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        migrate(con)
    return con


def open_scratch() -> duckdb.DuckDBPyConnection:
    """An empty store in memory, migrated: for working out what a plan would do without touching the real one."""
    con = duckdb.connect(":memory:")
    migrate(con)
    return con


class StoreInUse(UserError):
    """Another process (a running `datagen run`) holds the store; `holder` says which."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


def _in_use_error(path: Path, exc: Exception) -> UserError:
    text = str(exc)
    match = re.search(r"PID (\d+)", text)
    if "lock" in text.lower():
        who = f"process {match.group(1)}" if match else "another process"
        return StoreInUse(
            f"store {path} is in use by {who} (probably a running `datagen run`); "
            "wait for it to finish or stop it, then try again", who
        )
    return UserError(f"cannot open store {path}: {text}")


