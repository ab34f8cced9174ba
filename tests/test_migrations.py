"""The store's migrations (CONTRIBUTING.md, "Adding a migration"): named, in order, each run once per store file,
and an older store upgrades in place keeping its rows."""

from __future__ import annotations

import duckdb

from datagen.store import migrations
from datagen.store.connection import open_store


def test_migrations_are_named_in_order_and_run_once(tmp_path):
    names = [name for name, _ in migrations.MIGRATIONS]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert all(fn.__name__ == "m" + name for name, fn in migrations.MIGRATIONS)
    con = open_store(tmp_path / "s.duckdb")
    try:
        assert [r[0] for r in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()] == names
        assert migrations.migrate(con) == []  # nothing twice
    finally:
        con.close()


def test_an_older_store_upgrades_keeping_its_rows(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    for name, fn in migrations.MIGRATIONS[:2]:  # a store from when only the first two had shipped
        fn(con)
        con.execute("INSERT INTO _migrations VALUES (?, current_timestamp)", [name])
    con.execute("INSERT INTO requests (key, step, teacher, status, messages) VALUES ('k', 's', 't', 'done', '[]')")
    con.close()
    con = open_store(path)
    try:
        applied = [r[0] for r in con.execute("SELECT name FROM _migrations ORDER BY name").fetchall()]
        assert applied == [name for name, _ in migrations.MIGRATIONS]
        assert con.execute("SELECT key, status, cost_usd, worker FROM requests").fetchall() == [("k", "done", None, None)]
    finally:
        con.close()
