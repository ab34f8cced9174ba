"""Soft labels (the teacher's top-k log-probabilities) stored compactly: one `soft_labels` row per sample.

Per token the old layout kept a row with its id, token strings and float64 arrays (243 bytes a token at k=20,
measured by tests/bench/softlabels.py). Here a sample's positions are a few flat lists that DuckDB's own
compression packs (ids to the bits the vocabulary needs, codes to 8 or 16 bits):

- `tokens`, `token_ids`: the token at each position (its text as the teacher gave it; its id, -1 where none).
- `logprobs`: its log-probability, as a code c: lp = -c / 1024 (16 bits; clamped at -64).
- `top_ids`: the top-k ids of every position, flat, k per position in rank order (-1 where a position has fewer:
  processed logprobs give no entry to what top-k or top-p cut).
- `top_first`: each position's best log-probability, coded as `logprobs` (16 bits).
- `top_gaps`: for ranks 2..k, how far below the best each lies, as a code g: gap = g / 16 nats (8 bits, k - 1 per
  position), clamped at 255 (15.94 nats: a ratio below 1.2e-7 of the best, stored as that ratio).
- `top_rest`: the log of the teacher's mass outside each position's top k, coded as `logprobs`, computed from its
  floats (1 - the sum of the decoded top k is ill-conditioned when they hold nearly all the mass; KD's `tail` uses it).
- `top_tokens`: the top-k strings, only for samples whose teacher gave strings without ids (an OpenAI-compatible
  server): training maps them to ids through the student's tokenizer. NULL otherwise.

Error bounds (written in specs/train.md too): the token's and the best log-probability are within 1/2048 nat of the
teacher's (down to -64), every other top-k entry within 1/32 nat (down to 15.94 nats below the best). KD on these
codes measured within 1e-5 (relative) of the float64 loss (tests/test_soft_labels.py holds a bound; the benchmark
prints it on real data).

The view `logprobs` (row_id, position, token, token_id, logprob, top_ids, top_logprobs, and top_tokens where the
teacher gave strings without ids) decodes them in SQL, one row per position, for people who query the store;
training decodes them with numpy, a sample at a time (`read`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import duckdb

FIRST_SCALE = 1024  # codes of `logprobs` and `top_first`: lp = -code / 1024
FIRST_MAX = 65535
GAP_SCALE = 16  # codes of `top_gaps`: gap = code / 16 nats
GAP_MAX = 255

TABLE_SQL = """
    CREATE TABLE soft_labels (
        row_id VARCHAR NOT NULL,       -- outputs._id
        k USMALLINT NOT NULL,          -- entries per position in top_ids (top_gaps: k - 1)
        tokens VARCHAR[],
        token_ids INTEGER[],
        logprobs USMALLINT[],          -- lp = -code / 1024
        top_ids INTEGER[],             -- k per position, rank order, -1 for none
        top_first USMALLINT[],         -- the best entry's lp = -code / 1024
        top_gaps UTINYINT[],           -- k - 1 per position: lp = best - code / 16
        top_rest USMALLINT[],          -- the log of the mass outside the top k = -code / 1024
        top_tokens VARCHAR[]           -- k per position; only where the teacher gave strings without ids
    )
"""

# One row per position. `k` entries of top_ids/top_gaps belong to position p (0-based) at 1-based list indexes
# p * k + 1 .. p * k + k and p * (k - 1) + 1 .. p * (k - 1) + k - 1.
VIEW_SQL = """
    CREATE OR REPLACE VIEW logprobs AS
    WITH positions AS (
        SELECT *, list_filter(range(k::INTEGER), lambda j: top_ids[position * k + j + 1] >= 0
                              OR top_tokens[position * k + j + 1] IS NOT NULL) AS present
        FROM (SELECT *, unnest(range(len(tokens)::INTEGER)) AS position FROM soft_labels)
    )
    SELECT row_id, position, tokens[position + 1] AS token,
           CASE WHEN token_ids[position + 1] < 0 THEN NULL ELSE token_ids[position + 1] END AS token_id,
           logprobs[position + 1] / -1024.0 AS logprob,
           list_transform(present, lambda j: nullif(top_ids[position * k + j + 1], -1)) AS top_ids,
           list_transform(present, lambda j: top_first[position + 1] / -1024.0
                          - CASE WHEN j = 0 THEN 0 ELSE top_gaps[position * (k - 1) + j] / 16.0 END) AS top_logprobs,
           CASE WHEN top_tokens IS NOT NULL
                THEN list_transform(present, lambda j: top_tokens[position * k + j + 1]) END AS top_tokens
    FROM positions
"""


def _code(lp: float | None) -> int:
    if lp is None or not math.isfinite(lp):
        return FIRST_MAX
    return min(FIRST_MAX, max(0, round(-lp * FIRST_SCALE)))


def encode(row_id: str, positions: list) -> dict:
    """A sample's positions (teachers.base.TokenLogprobs) as one `soft_labels` row. Entries with no mass (-inf, from
    processed logprobs) are left out; entries come in rank order."""
    k = max((sum(math.isfinite(lp) for lp in p.top_logprobs) for p in positions), default=0)
    k = max(k, 1)
    top_ids, first, gaps, rest, strings = [], [], [], [], []
    need_strings = False
    for p in positions:
        entries = sorted(((lp, tid, s) for lp, tid, s in zip(p.top_logprobs, p.top_ids, p.top_tokens)
                          if math.isfinite(lp)), key=lambda e: -e[0])
        need_strings |= any(tid is None for _, tid, _ in entries)
        best = entries[0][0] if entries else None
        first.append(_code(best))
        left = 1.0 - math.fsum(math.exp(e[0]) for e in entries)
        rest.append(_code(math.log(left)) if left > 0 else FIRST_MAX)
        best_q = -first[-1] / FIRST_SCALE
        for r in range(k):
            if r < len(entries):
                lp, tid, s = entries[r]
                top_ids.append(-1 if tid is None else int(tid))
                strings.append(s)
                if r:
                    gaps.append(min(GAP_MAX, max(0, round((best_q - lp) * GAP_SCALE))))
            else:
                top_ids.append(-1)
                strings.append(None)
                if r:
                    gaps.append(GAP_MAX)
    return {
        "row_id": row_id, "k": k, "tokens": [p.token for p in positions],
        "token_ids": [-1 if p.token_id is None else int(p.token_id) for p in positions],
        "logprobs": [_code(p.logprob) for p in positions], "top_ids": top_ids, "top_first": first,
        "top_gaps": gaps, "top_rest": rest, "top_tokens": strings if need_strings else None,
    }


def arrow_schema():
    import pyarrow as pa

    return pa.schema([("row_id", pa.string()), ("k", pa.uint16()), ("tokens", pa.list_(pa.string())),
                      ("token_ids", pa.list_(pa.int32())), ("logprobs", pa.list_(pa.uint16())),
                      ("top_ids", pa.list_(pa.int32())), ("top_first", pa.list_(pa.uint16())),
                      ("top_gaps", pa.list_(pa.uint8())), ("top_rest", pa.list_(pa.uint16())),
                      ("top_tokens", pa.list_(pa.string()))])


@dataclass
class SoftLabels:
    """One sample's soft labels as arrays: n positions, k entries each (-1 ids where none)."""

    tokens: list[str]
    token_ids: object  # int32 [n], -1 where unknown
    logprobs: object  # float32 [n]
    top_ids: object  # int32 [n, k]
    top_logprobs: object  # float32 [n, k] (-inf where no entry)
    rest: object  # float32 [n]: the log of the mass outside the top k
    top_tokens: list[str | None] | None  # n * k strings, where the teacher gave strings without ids

    def __len__(self) -> int:
        return len(self.tokens)


def decode(row: dict) -> SoftLabels:
    """One `soft_labels` row (Python lists or numpy arrays) as arrays."""
    import numpy as np

    return _arrays(row["tokens"], int(row["k"]), np.asarray(row["token_ids"]), np.asarray(row["logprobs"]),
                   np.asarray(row["top_ids"]), np.asarray(row["top_first"]), np.asarray(row["top_gaps"]),
                   np.asarray(row["top_rest"]), row.get("top_tokens"))


def _arrays(tokens, k: int, token_ids, logprobs, top_ids, top_first, top_gaps, top_rest, top_tokens) -> SoftLabels:
    import numpy as np

    n = len(tokens)
    ids = top_ids.astype(np.int32).reshape(n, k)
    first = -top_first.astype(np.float32) / FIRST_SCALE
    top = np.concatenate([first[:, None], first[:, None] - top_gaps.astype(np.float32).reshape(n, k - 1) / GAP_SCALE],
                         axis=1)
    absent = ids < 0
    if top_tokens is not None:  # an entry the teacher named by its string alone is there
        absent &= np.array([t is None for t in top_tokens], bool).reshape(n, k)
    top[absent] = -np.inf
    return SoftLabels(list(tokens), token_ids.astype(np.int32), -logprobs.astype(np.float32) / FIRST_SCALE, ids, top,
                      -top_rest.astype(np.float32) / FIRST_SCALE, list(top_tokens) if top_tokens is not None else None)


def read(con: duckdb.DuckDBPyConnection, row_ids: list[str]) -> dict[str, SoftLabels]:
    """row_id -> its soft labels, for the rows among `row_ids` that have them. The lists come out of Arrow as flat
    numpy arrays cut per row: no Python object per token or entry (but the token strings)."""
    import pyarrow as pa

    con.register("_wanted_rows", pa.table({"row_id": pa.array(list(row_ids), pa.string())}))
    try:
        got = con.sql("SELECT s.* FROM soft_labels s JOIN _wanted_rows w USING (row_id)").to_arrow_table()
    finally:
        con.unregister("_wanted_rows")
    cols = {name: got.column(name).combine_chunks() for name in got.column_names}
    flat = {name: (cols[name].values.to_numpy(zero_copy_only=False), cols[name].offsets.to_numpy())
            for name in ("token_ids", "logprobs", "top_ids", "top_first", "top_gaps", "top_rest")}
    out = {}
    for i, rid in enumerate(cols["row_id"].to_pylist()):
        part = {name: values[offsets[i]:offsets[i + 1]] for name, (values, offsets) in flat.items()}
        top_tokens = cols["top_tokens"][i].as_py()
        out[rid] = _arrays(cols["tokens"][i].as_py(), int(cols["k"][i].as_py()), part["token_ids"], part["logprobs"],
                           part["top_ids"], part["top_first"], part["top_gaps"], part["top_rest"], top_tokens)
    return out
