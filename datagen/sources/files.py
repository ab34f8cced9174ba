"""Sources: rows you already have. Files and inline rows load into Python rows; `query` sources are SQL views.

Every source row gets a deterministic `_id` from its content (and which occurrence of that content it is), so
re-ordering a file does not change ids and a re-run finds its cached work.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

from datagen.errors import UserError

def load_rows(name: str, path: Path | None, inline: list[dict] | None, limit: int | None) -> list[dict[str, Any]]:
    """Rows of a file or inline source, each with `_id` first, at most `limit` of them."""
    if inline is not None:
        rows = [dict(r) for r in inline]
    else:
        assert path is not None
        rows = read_file(path)
    if limit is not None:
        rows = rows[:limit]
    return with_ids(name, rows)


def with_ids(name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # one encoder for all rows: json.dumps with options builds a new one per call (a third of this loop's time)
    encode = json.JSONEncoder(sort_keys=True, default=str, ensure_ascii=False).encode
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        body = encode(row)
        occurrence = seen.get(body, 0)
        seen[body] = occurrence + 1
        digest = hashlib.sha256(f"{name}\0{occurrence}\0{body}".encode()).hexdigest()[:20]
        new = {"_id": digest}
        new.update(row)  # a row's own `_id` (part of the digest's body) is replaced, and `_id` stays first
        new["_id"] = digest
        out.append(new)
    return out


def read_file(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise UserError(f"source file not found: {path}")
    if path.is_dir():
        return _read_hf_folder(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path)
        if suffix == ".json":
            return _read_json(path)
        if suffix == ".csv":
            return _read_csv(path)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8") from None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from None
    raise UserError(f"{path}: unknown source type {suffix!r}; use .jsonl, .json, .csv, .parquet or a saved dataset folder")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno}: malformed JSON line ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(f"{path}: a .json source must be an array of objects (or {{\"data\": [...]}})")
    return data


def _read_csv(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = []
        for row in reader:
            if None in row:
                raise UserError(f"{path}:{reader.line_num}: more fields than the header has")
            rows.append(dict(row))
    return rows


def _read_hf_folder(path: Path) -> list[dict[str, Any]]:
    if not (path / "dataset_info.json").exists() and not (path / "dataset_dict.json").exists():
        raise UserError(f"{path} is a folder but not a saved Hugging Face dataset (no dataset_info.json)")
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    return ds.to_list()


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    cols: dict[str, None] = {}
    for row in rows:
        for k in row:
            cols.setdefault(k, None)
    return list(cols)
