"""Ordered, named schema migrations. A migration runs once per store file; `_migrations` records which ran.

Never edit a migration that has shipped: add a new one at the end of MIGRATIONS.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from datagen.store.sql import transaction


def m001_core(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE requests (
            key VARCHAR PRIMARY KEY,       -- hash of everything that determines the output (see datagen/keys.py)
            step VARCHAR NOT NULL,
            teacher VARCHAR,
            parent_id VARCHAR,
            sample_index INTEGER,
            status VARCHAR NOT NULL,       -- pending | done | failed
            error VARCHAR,
            attempts INTEGER DEFAULT 0,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            seconds DOUBLE,
            messages JSON,                 -- the rendered chat request; export and training reuse it
            created_at TIMESTAMP DEFAULT current_timestamp,
            updated_at TIMESTAMP DEFAULT current_timestamp
        )
        """
    )
    con.execute(
        """
        CREATE TABLE outputs (
            _id VARCHAR PRIMARY KEY,
            key VARCHAR NOT NULL,
            step VARCHAR NOT NULL,
            _parent_id VARCHAR,
            _sample_index INTEGER,
            _teacher VARCHAR,
            _finish_reason VARCHAR,
            _created_at TIMESTAMP,
            text VARCHAR,
            fields JSON                    -- parsed structured output and other produced columns
        )
        """
    )
    con.execute(
        """
        CREATE TABLE token_logprobs (
            row_id VARCHAR NOT NULL,
            position INTEGER NOT NULL,
            token VARCHAR,
            token_id BIGINT,
            logprob DOUBLE,
            top_tokens VARCHAR[],
            top_ids BIGINT[],
            top_logprobs DOUBLE[]
        )
        """
    )
    con.execute("CREATE TABLE lineage (child_id VARCHAR NOT NULL, parent_id VARCHAR NOT NULL, role VARCHAR NOT NULL)")
    con.execute(
        """
        CREATE TABLE decisions (
            row_id VARCHAR NOT NULL,
            stage VARCHAR NOT NULL,
            kept BOOLEAN NOT NULL,
            reason VARCHAR,
            score DOUBLE,
            duplicate_of VARCHAR,
            created_at TIMESTAMP DEFAULT current_timestamp
        )
        """
    )
    # which keys the current spec produces for each step: a step's view shows only these
    con.execute("CREATE TABLE _plan (step VARCHAR NOT NULL, key VARCHAR NOT NULL)")
    con.execute(
        """
        CREATE TABLE _runs (
            started_at TIMESTAMP, finished_at TIMESTAMP, status VARCHAR, pid INTEGER, spec JSON, summary JSON
        )
        """
    )


def m002_curation(con: duckdb.DuckDBPyConnection) -> None:
    # Embeddings are keyed by model and a hash of the embedded text, not by row, so a re-run, another stage or
    # another column with the same text reuses them; row_id only says which row first needed them.
    con.execute(
        "CREATE TABLE embeddings (row_id VARCHAR, model VARCHAR NOT NULL, text_hash VARCHAR NOT NULL, vector FLOAT[])"
    )
    # the rows the curation block selected, in selection order; the `curated` view joins them to the input's columns
    con.execute("CREATE TABLE _curated (row_id VARCHAR NOT NULL, rank INTEGER NOT NULL)")


def m003_student_probes(con: duckdb.DuckDBPyConnection) -> None:
    # curation's difficulty `by: student`: the student's greedy answer to each question, reused by re-runs
    con.execute(
        """
        CREATE TABLE student_probes (
            key VARCHAR PRIMARY KEY,       -- hash of the student's identity, the messages and the sampling
            student VARCHAR NOT NULL,      -- the student's identity (backend, model), as JSON text
            messages JSON,
            text VARCHAR,
            finish_reason VARCHAR,
            error VARCHAR,                 -- set when the request failed; such a probe is retried by the next run
            created_at TIMESTAMP DEFAULT current_timestamp
        )
        """
    )


def m004_pairs(con: duckdb.DuckDBPyConnection) -> None:
    # preference pairs a judge step builds from its rows; rebuilt whole for a step at the end of each run of it
    con.execute(
        """
        CREATE TABLE pairs (
            _id VARCHAR PRIMARY KEY,       -- hash of the step and both sides
            step VARCHAR NOT NULL,         -- the judge step that built it
            _parent_id VARCHAR,            -- the input both sides answer
            method VARCHAR NOT NULL,       -- score | verdict | revision
            prompt JSON,                   -- the messages both sides answer
            chosen VARCHAR,
            rejected VARCHAR,
            chosen_id VARCHAR,
            rejected_id VARCHAR,
            chosen_score DOUBLE,
            rejected_score DOUBLE,
            margin DOUBLE,
            _created_at TIMESTAMP
        )
        """
    )


def m005_train_runs(con: duckdb.DuckDBPyConnection) -> None:
    # One row per `datagen train`: written as `running` when training starts and completed at the end, so a run
    # that crashed is visible too. Metrics are JSON (objective-specific keys); the headline numbers are columns.
    con.execute(
        """
        CREATE TABLE train_runs (
            id VARCHAR PRIMARY KEY,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            status VARCHAR NOT NULL,       -- running | done | failed
            error VARCHAR,
            input VARCHAR,                 -- the rows trained on: a step or `curated`
            objective VARCHAR,             -- sft | kd | dpo
            student VARCHAR,
            output VARCHAR,                -- the saved student folder
            settings JSON,                 -- the whole train block as run
            train_rows INTEGER,
            eval_rows INTEGER,
            steps INTEGER,
            train_tokens BIGINT,
            train_seconds DOUBLE,
            train_loss DOUBLE,
            loss_before DOUBLE,            -- mean token loss on the held-out teacher outputs
            loss_after DOUBLE,
            accuracy_before DOUBLE,        -- share verified correct, when the spec has a verifier
            accuracy_after DOUBLE,
            metrics_before JSON,
            metrics_after JSON
        )
        """
    )


def m006_owners_and_probes(con: duckdb.DuckDBPyConnection) -> None:
    # One replace rule for decisions: a write replaces everything its owner wrote (datagen/store/decisions.py).
    con.execute("ALTER TABLE decisions ADD COLUMN owner VARCHAR")
    con.execute(
        """
        UPDATE decisions SET owner = CASE
            WHEN stage IN ('decontaminate', 'select') OR starts_with(stage, 'filter:') OR starts_with(stage, 'dedup:')
                 OR starts_with(stage, 'select:') THEN 'curation'
            WHEN starts_with(stage, 'self:') THEN 'step:' || substr(stage, 6)
            WHEN starts_with(stage, 'pairs:') THEN 'step:' || substr(stage, 7)
            ELSE 'step:' || stage END
        """
    )
    # A student's probe answers (curation's difficulty `by: student`) become requests and outputs like any other
    # generation, under the pseudo-step `_probe`, keeping their keys so a store's probes are still found.
    from datagen.keys import row_id

    probes = con.execute("SELECT key, messages, text, finish_reason, error, created_at FROM student_probes").fetchall()
    for key, messages, text, finish, error, created in probes:
        con.execute("INSERT INTO requests (key, step, teacher, sample_index, status, error, messages, attempts) "
                    "VALUES (?, '_probe', 'student', 0, ?, ?, ?, 1) ON CONFLICT DO NOTHING",
                    [key, "failed" if error is not None else "done", error, messages])
        if error is None:
            con.execute("INSERT INTO outputs (_id, key, step, _sample_index, _teacher, _finish_reason, _created_at, "
                        "text) VALUES (?, ?, '_probe', 0, 'student', ?, ?, ?) ON CONFLICT DO NOTHING",
                        [row_id(key), key, finish, created, text])
    con.execute("DROP TABLE student_probes")


def m007_cost_and_batches(con: duckdb.DuckDBPyConnection) -> None:
    # What a request cost (USD, from the usage the server reported and the teacher's price; NULL without a price),
    # added up over every time it was sent.
    con.execute("ALTER TABLE requests ADD COLUMN cost_usd DOUBLE")
    # Provider batch jobs (datagen/store/batches.py). A row is written after the input file is uploaded and before
    # the batch is created, so a crash in between can still find the batch by its input file.
    con.execute(
        """
        CREATE TABLE batches (
            input_file_id VARCHAR PRIMARY KEY,
            batch_id VARCHAR,              -- the provider's id; NULL until the batch is created
            teacher VARCHAR NOT NULL,
            status VARCHAR NOT NULL,       -- submitting, then the provider's: validating, in_progress, finalizing,
                                           -- completed, expired, failed, cancelling, cancelled
            requests INTEGER,
            completed INTEGER,
            failed INTEGER,
            error VARCHAR,
            submitted_at TIMESTAMP DEFAULT current_timestamp,
            updated_at TIMESTAMP DEFAULT current_timestamp
        )
        """
    )
    # The requests a batch holds. A request is still out in the batch while its `attempts` have not moved since it
    # was sent (no reply recorded since) and it was not put back (`requeued`, after an expiry, failure or cancel).
    con.execute(
        """
        CREATE TABLE batch_requests (
            input_file_id VARCHAR NOT NULL,
            key VARCHAR NOT NULL,
            attempts_at_send INTEGER NOT NULL,
            requeued BOOLEAN NOT NULL DEFAULT false
        )
        """
    )


def m010_worker(con: duckdb.DuckDBPyConnection) -> None:
    # which server (an HTTP teacher's base URL) or engine replica made each sample
    con.execute("ALTER TABLE requests ADD COLUMN worker VARCHAR")


def m011_tool_calls(con: duckdb.DuckDBPyConnection) -> None:
    # Every tool call an agent step's teacher made (datagen/store/tool_calls.py): written once, after the call ran
    # and before the next turn is asked, so a re-run reuses the result instead of calling the tool again.
    con.execute(
        """
        CREATE TABLE tool_calls (
            output_id VARCHAR NOT NULL,    -- the assistant turn (outputs._id) that made the call
            call_index INTEGER NOT NULL,   -- its place among that turn's calls
            step VARCHAR NOT NULL,
            tool VARCHAR,                  -- the name the model called (NULL when the call did not parse)
            arguments VARCHAR,             -- JSON text as the model wrote it
            result VARCHAR,                -- what the model was given back (the error message, for a failed call)
            error VARCHAR,                 -- why the call failed; NULL when it ran
            seconds DOUBLE,
            created_at TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (output_id, call_index)
        )
        """
    )


def m012_error_kind(con: duckdb.DuckDBPyConnection) -> None:
    # why a failed request failed, by whose fault: 'request' (a 400, a reply that does not parse, a refusal: the same
    # request would fail again, so a re-run skips it unless --retry-failed) or 'provider' (rate limits, 5xx, timeouts,
    # an outage past down_limit_s: a re-run asks again). NULL on rows from before: treated as 'provider', as before.
    con.execute("ALTER TABLE requests ADD COLUMN error_kind VARCHAR")


def m013_soft_labels(con: duckdb.DuckDBPyConnection) -> None:
    # Soft labels one row per sample in packed, zstd-compressed arrays (datagen/store/soft_labels.py) instead of one
    # row per token with float64 arrays and token strings; the per-token view `logprobs` decodes them for SQL.
    from collections import namedtuple

    from datagen.store import soft_labels

    position = namedtuple("position", "token token_id logprob top_tokens top_ids top_logprobs")
    soft_labels.create(con)
    ids = [r[0] for r in con.execute("SELECT DISTINCT row_id FROM token_logprobs ORDER BY row_id").fetchall()]
    for start in range(0, len(ids), 1000):  # a thousand samples at a time, in memory
        part = ids[start:start + 1000]
        batch = con.execute("SELECT row_id, list((token, token_id, logprob, top_tokens, top_ids, top_logprobs) "
                            "ORDER BY position) FROM token_logprobs WHERE row_id BETWEEN ? AND ? GROUP BY row_id",
                            [part[0], part[-1]]).fetchall()
        rows = [soft_labels.encode(rid, [position(t[0], t[1], t[2], t[3] or [], t[4] or [], t[5] or [])
                                         for t in positions]) for rid, positions in batch]
        _insert_arrow(con, "soft_labels", rows, soft_labels.arrow_schema())
    con.execute("DROP TABLE token_logprobs")


def _insert_arrow(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict], schema) -> None:
    import pyarrow as pa

    con.register("_migrated_rows", pa.Table.from_pylist(rows, schema=schema))
    try:
        con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _migrated_rows")
    finally:
        con.unregister("_migrated_rows")


def m014_human_review(con: duckdb.DuckDBPyConnection) -> None:
    # What people say in `datagen review` (datagen/store/human.py). A keep or drop is a `decisions` row (stage and
    # owner `human`) with the reviewer's name; every one is kept, the latest per row counts.
    con.execute("ALTER TABLE decisions ADD COLUMN reviewer VARCHAR")
    con.execute(
        """
        CREATE TABLE human_ratings (
            row_id VARCHAR NOT NULL,
            reviewer VARCHAR NOT NULL,
            verdict BOOLEAN,               -- pass (true) or fail (false); NULL when the rating is a score
            score DOUBLE,                  -- 1 to 5; NULL when the rating is a verdict
            note VARCHAR,
            created_at TIMESTAMP NOT NULL  -- the latest rating of a kind per row counts; older ones stay
        )
        """
    )
    # An edit never overwrites: it is a new row here, with lineage (role `revision_of`) to what it replaces, the
    # generated row or the previous edit; export, training and curation read the newest edit of a row.
    con.execute(
        """
        CREATE TABLE human_revisions (
            _id VARCHAR PRIMARY KEY,
            row_id VARCHAR NOT NULL,       -- the generated row (outputs._id) whose reply it corrects
            previous_id VARCHAR NOT NULL,  -- what it replaces: that row, or the edit before
            step VARCHAR NOT NULL,
            column_name VARCHAR NOT NULL,  -- the step's output column at the time
            text VARCHAR NOT NULL,
            reviewer VARCHAR NOT NULL,
            reason VARCHAR,
            created_at TIMESTAMP NOT NULL
        )
        """
    )



def m015_train_rounds(con: duckdb.DuckDBPyConnection) -> None:
    # On-policy training records each round (sft/onpolicy.py): which round, and the whole run it belongs to.
    con.execute("ALTER TABLE train_runs ADD COLUMN round INTEGER")
    con.execute("ALTER TABLE train_runs ADD COLUMN parent_run VARCHAR")

MIGRATIONS: list[tuple[str, Callable[[duckdb.DuckDBPyConnection], None]]] = [
    ("001_core", m001_core),
    ("002_curation", m002_curation),
    ("003_student_probes", m003_student_probes),
    ("004_pairs", m004_pairs),
    ("005_train_runs", m005_train_runs),
    ("006_owners_and_probes", m006_owners_and_probes),
    ("007_cost_and_batches", m007_cost_and_batches),
    ("010_worker", m010_worker),  # named ahead: 007-009 were taken by work in progress elsewhere
    ("011_tool_calls", m011_tool_calls),
    ("012_error_kind", m012_error_kind),
    ("013_soft_labels", m013_soft_labels),
    ("014_human_review", m014_human_review),
    ("015_train_rounds", m015_train_rounds),
]


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations this store has not seen, each in its own transaction. Returns their names."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    done = {r[0] for r in con.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with transaction(con):
            fn(con)
            con.execute("INSERT INTO _migrations VALUES (?, current_timestamp)", [name])
        applied.append(name)
    return applied
