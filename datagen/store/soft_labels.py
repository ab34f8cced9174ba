"""Soft labels (the teacher's top-k log-probabilities) stored compactly: one `soft_labels` row per sample.

The old layout kept one row per token with its strings and float64 arrays (237 bytes a token at k = 20, measured by
tests/bench/softlabels.py). Here a sample's positions are packed arrays (big-endian, in BLOBs DuckDB compresses with
zstd), laid out so that they compress:

- `top_ids`: each position's k ids, its best first, then the others sorted by id (neighbouring ids share their high
  bytes; rank order is restored from the codes, entries whose codes tie in id order), `width` bytes each (2 when every id fits in 16 bits, else 4); all ones: no id (an entry named by
  its string alone, or no entry).
- `top_codes`: one byte per entry, how far below the position's best log-probability it lies, on a scale that is
  fine where the probability is (`gap_code`): within 1/64 nat up to 2 nats below the best, 1/16 up to 8, 1/4 up to
  15; further ones are stored at 15 nats (under 3.1e-7 of the best's probability); 255: no entry (processed
  logprobs give none to what top-k or top-p cut).
- `top_first`, `logprobs`, `top_rest`: 16-bit codes c, lp = -c / 1024 (within 1/2048 nat, down to -64): each
  position's best log-probability, the token's own, and the log of the mass outside the top k, computed from the
  teacher's floats (1 - the sum of the decoded top k is ill-conditioned when they hold nearly all the mass; KD's
  `tail` uses it).
- `token_ids` (`width` bytes each, all ones where the teacher gave none), `tokens` (the token strings).
- `top_tokens`: the entries' strings, only for samples whose teacher gave strings without ids (an OpenAI-compatible
  server): training maps them to ids through the student's tokenizer. NULL otherwise.

The KD loss on these codes stays within 1e-3 (relative) of the loss on the floats (tests/test_soft_labels.py holds
the bound; the benchmark measures it on the bundled model's real top-20). The view `logprobs` (row_id, position,
token, token_id, logprob, top_ids, top_logprobs in rank order (ties within the codes' resolution in id order),
and top_tokens where kept) decodes the arrays in
plain SQL, one row per position, for whoever queries the store; training decodes them with numpy (`read`), a
sample at a time, with no loop over tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import duckdb

LP_SCALE = 1024  # 16-bit codes: lp = -code / 1024
LP_MAX = 65535
ABSENT = 255  # top_codes: no entry
# top_codes' scale, three pieces: codes 0-63 are 0 to 1.97 nats in 1/32 steps, 64-111 are 2 to 7.88 in 1/8 steps,
# 112-126 are 8 to 15 in 1/2 steps
CODE_MAX = 126

TABLE_SQL = """
    CREATE TABLE soft_labels (
        row_id VARCHAR NOT NULL,           -- outputs._id
        n INTEGER NOT NULL,                -- positions (tokens)
        k USMALLINT NOT NULL,              -- entries per position
        width UTINYINT NOT NULL,           -- bytes per id in token_ids and top_ids
        tokens VARCHAR[],
        token_ids BLOB USING COMPRESSION zstd,
        logprobs BLOB USING COMPRESSION zstd,
        top_ids BLOB USING COMPRESSION zstd,
        top_codes BLOB USING COMPRESSION zstd,
        top_first BLOB USING COMPRESSION zstd,
        top_rest BLOB USING COMPRESSION zstd,
        top_tokens VARCHAR[]
    )
"""

# _dg_uint(blob, byte offset, width): the big-endian unsigned integer there; _dg_gap(code): a top_codes code in nats.
MACROS_SQL = [
    "CREATE OR REPLACE MACRO _dg_uint(b, i, width) AS ('0x' || hex(b[i + 1 : i + width]))::BIGINT",
    "CREATE OR REPLACE MACRO _dg_gap(c) AS CASE WHEN c < 64 THEN c / 32.0 WHEN c < 112 THEN 2 + (c - 64) / 8.0 "
    "ELSE 8 + (c - 112) / 2.0 END",
]

VIEW_SQL = """
    CREATE OR REPLACE VIEW logprobs AS
    WITH positions AS (
        SELECT *, _dg_uint(top_first, position * 2, 2) / -1024.0 AS best, (1::BIGINT << (8 * width)) - 1 AS none_id,
               list_filter(range(k::INTEGER),
                           lambda j: _dg_uint(top_codes, position * k + j, 1) < 255) AS present
        FROM (SELECT *, unnest(range(n)) AS position FROM soft_labels)
    ), ranked AS (
        SELECT *, list_sort(list_transform(present, lambda j: {
            'first': j = 0,
            'lp': best - _dg_gap(_dg_uint(top_codes, position * k + j, 1)),
            'id': _dg_uint(top_ids, (position * k + j) * width, width),
            'tok': top_tokens[position * k + j + 1]}), 'DESC') AS top
        FROM positions
    )
    SELECT row_id, position, tokens[position + 1] AS token,
           nullif(_dg_uint(token_ids, position * width, width), none_id) AS token_id,
           _dg_uint(logprobs, position * 2, 2) / -1024.0 AS logprob,
           list_transform(top, lambda e: nullif(e.id, none_id)) AS top_ids,
           list_transform(top, lambda e: e.lp) AS top_logprobs,
           CASE WHEN top_tokens IS NOT NULL THEN list_transform(top, lambda e: e.tok) END AS top_tokens
    FROM ranked
"""


def create(con: duckdb.DuckDBPyConnection) -> None:
    """The table, its helper macros and the per-token view."""
    con.execute(TABLE_SQL)
    for sql in MACROS_SQL:
        con.execute(sql)
    con.execute(VIEW_SQL)


def lp_code(lp: float | None) -> int:
    if lp is None or not math.isfinite(lp):
        return LP_MAX
    return min(LP_MAX, max(0, round(-lp * LP_SCALE)))


def gap_code(gap: float) -> int:
    """A gap below the best (nats, >= 0) as a top_codes code: the nearest value the scale holds (PIECES)."""
    if gap < 2 - 1 / 64:
        return round(gap * 32)  # 0..63: 1/32 nat steps
    if gap < 8 - 1 / 16:
        return 64 + round((gap - 2) * 8)  # 64..111: 1/8
    return min(CODE_MAX, 112 + round((gap - 8) * 2))  # 112..126: 1/2, clamped at 15 nats


def gap_of(codes):
    """numpy: top_codes codes back to gaps in nats."""
    import numpy as np

    codes = codes.astype(np.float32)
    return np.where(codes < 64, codes / 32, np.where(codes < 112, 2 + (codes - 64) / 8, 8 + (codes - 112) / 2))


def encode(row_id: str, positions: list) -> dict:
    """A sample's positions (teachers.base.TokenLogprobs) as one `soft_labels` row."""
    import numpy as np

    entries = [[(lp, tid, s) for lp, tid, s in zip(p.top_logprobs, p.top_ids, p.top_tokens) if math.isfinite(lp)]
               for p in positions]
    n, k = len(positions), max([len(e) for e in entries] + [1])
    known = [t for e in entries for _, t, _ in e if t is not None] + [p.token_id for p in positions
                                                                      if p.token_id is not None]
    width = 2 if max(known, default=0) < 0xFFFF else 4
    none = (1 << (8 * width)) - 1
    ids = np.full((n, k), none, dtype=np.int64)
    codes = np.full((n, k), ABSENT, dtype=np.uint8)
    first, rest = np.full(n, LP_MAX, dtype=np.int64), np.full(n, LP_MAX, dtype=np.int64)
    strings: list[str | None] = [None] * (n * k)
    need_strings = False
    for p, got in enumerate(entries):
        if not got:
            continue
        first[p] = lp_code(max(lp for lp, _, _ in got))
        best = -first[p] / LP_SCALE
        left = 1.0 - math.fsum(math.exp(lp) for lp, _, _ in got)
        rest[p] = lp_code(math.log(left)) if left > 0 else LP_MAX
        # the best first (its rank stays exact), then the others by id (entries without one last, in their given
        # order): neighbouring ids compress
        top = max(range(len(got)), key=lambda j: got[j][0])
        others = sorted(got[:top] + got[top + 1:], key=lambda e: none if e[1] is None else int(e[1]))
        for j, (lp, tid, s) in enumerate([got[top]] + others):
            ids[p, j] = none if tid is None else int(tid)
            codes[p, j] = gap_code(max(0.0, best - lp))
            strings[p * k + j] = s
            need_strings |= tid is None
    dtype = ">u2" if width == 2 else ">u4"
    return {
        "row_id": row_id, "n": n, "k": k, "width": width, "tokens": [p.token for p in positions],
        "token_ids": np.array([none if p.token_id is None else int(p.token_id) for p in positions], dtype).tobytes(),
        "logprobs": np.array([lp_code(p.logprob) for p in positions], ">u2").tobytes(),
        "top_ids": ids.astype(dtype).tobytes(), "top_codes": codes.tobytes(),
        "top_first": first.astype(">u2").tobytes(), "top_rest": rest.astype(">u2").tobytes(),
        "top_tokens": strings if need_strings else None,
    }


def arrow_schema():
    import pyarrow as pa

    return pa.schema([("row_id", pa.string()), ("n", pa.int32()), ("k", pa.uint16()), ("width", pa.uint8()),
                      ("tokens", pa.list_(pa.string())), ("token_ids", pa.binary()), ("logprobs", pa.binary()),
                      ("top_ids", pa.binary()), ("top_codes", pa.binary()), ("top_first", pa.binary()),
                      ("top_rest", pa.binary()), ("top_tokens", pa.list_(pa.string()))])


@dataclass
class SoftLabels:
    """One sample's soft labels as arrays: n positions, k entries each in rank order (-1 ids where none)."""

    tokens: list[str]
    token_ids: object  # int32 [n], -1 where unknown
    logprobs: object  # float32 [n]
    top_ids: object  # int32 [n, k]
    top_logprobs: object  # float32 [n, k] (-inf where no entry)
    rest: object  # float32 [n]: the log of the mass outside the top k
    top_tokens: list[str | None] | None  # n * k strings in the same order, where the teacher gave strings

    def __len__(self) -> int:
        return len(self.tokens)


def decode(row: dict) -> SoftLabels:
    """One `soft_labels` row as arrays (numpy over the packed bytes; a loop over strings only where kept)."""
    import numpy as np

    n, k, width = int(row["n"]), int(row["k"]), int(row["width"])
    dtype = ">u2" if width == 2 else ">u4"
    none = (1 << (8 * width)) - 1
    ids = np.frombuffer(row["top_ids"], dtype).reshape(n, k).astype(np.int64)
    codes = np.frombuffer(row["top_codes"], np.uint8).reshape(n, k)
    best = -np.frombuffer(row["top_first"], ">u2").astype(np.float32) / LP_SCALE
    lps = best[:, None] - gap_of(codes)
    lps[codes == ABSENT] = -np.inf
    # rank order: the best is stored first; the others by their codes (entries whose codes tie keep id order)
    order = np.concatenate([np.zeros((n, 1), np.int64), 1 + np.argsort(-lps[:, 1:], axis=1, kind="stable")], axis=1)
    ids, lps = np.take_along_axis(ids, order, 1), np.take_along_axis(lps, order, 1)
    ids[ids == none] = -1
    strings = row.get("top_tokens")
    if strings is not None:
        strings = [strings[p * k + j] for p in range(n) for j in order[p]]
    token_ids = np.frombuffer(row["token_ids"], dtype).astype(np.int64)
    token_ids[token_ids == none] = -1
    return SoftLabels(list(row["tokens"]), token_ids.astype(np.int32),
                      -np.frombuffer(row["logprobs"], ">u2").astype(np.float32) / LP_SCALE,
                      ids.astype(np.int32), lps.astype(np.float32),
                      -np.frombuffer(row["top_rest"], ">u2").astype(np.float32) / LP_SCALE, strings)


def read(con: duckdb.DuckDBPyConnection, row_ids: list[str]) -> dict[str, SoftLabels]:
    """row_id -> its soft labels, for the rows among `row_ids` that have them."""
    import pyarrow as pa

    con.register("_wanted_rows", pa.table({"row_id": pa.array(list(row_ids), pa.string())}))
    try:
        got = con.sql("SELECT s.* FROM soft_labels s JOIN _wanted_rows w USING (row_id)").to_arrow_table()
    finally:
        con.unregister("_wanted_rows")
    return {row["row_id"]: decode(row) for row in got.to_pylist()}
