"""`datagen init`: every template writes a spec and its data that validate at once; `--list` shows them; nothing is
overwritten; the `curate` template (no teachers, no steps) runs end to end through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from datagen.cli import app
from datagen.starters import TEMPLATES

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_every_template_writes_a_spec_that_validates(tmp_path, template):
    folder = tmp_path / template
    out = cli("init", template, str(folder))
    assert out.exit_code == 0, out.output
    spec = folder / TEMPLATES[template].spec
    assert spec.is_file() and all((folder / "data" / f).is_file() for f in TEMPLATES[template].data)
    check = cli("validate", str(spec))
    assert check.exit_code == 0 and "ok: the spec is valid" in check.stdout, check.output
    assert "bundled:" in spec.read_text()  # runs on the bundled models, nothing from a hub


def test_list_and_no_overwrite(tmp_path):
    listed = cli("init", "--list")
    assert listed.exit_code == 0 and [line.split()[0] for line in listed.stdout.splitlines()] == list(TEMPLATES)
    assert cli("init", "label", str(tmp_path)).exit_code == 0
    (tmp_path / "label.yaml").write_text("# mine\n")
    again = cli("init", "label", str(tmp_path))
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert (tmp_path / "label.yaml").read_text() == "# mine\n"
    # a second template in the same folder shares the data files it has in common
    assert cli("init", "reasoning", str(tmp_path)).exit_code == 0
    unknown = cli("init", "nope", str(tmp_path))
    assert unknown.exit_code == 2 and "label, reasoning, self-instruct, feedback, curate" in unknown.stderr


def test_the_curate_template_runs_without_teachers_or_steps(tmp_path):
    assert cli("init", "curate", str(tmp_path)).exit_code == 0
    spec = tmp_path / "curate.yaml"
    run = subprocess.run([sys.executable, "-m", "datagen.cli", "run", str(spec)], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "curation select: " in run.stderr and "20 of 60 rows in `curated`" in run.stderr
    con = duckdb.connect(str(tmp_path / "runs" / "curate.duckdb"), read_only=True)
    stages = con.execute("select stage, count(*) filter (where kept) from decisions group by 1 order by 1").fetchall()
    curated = con.execute("select count(*), count(distinct _id) from curated").fetchall()
    con.close()
    assert curated == [(20, 20)] and dict(stages)["select"] == 20
    export = subprocess.run([sys.executable, "-m", "datagen.cli", "export", str(spec)], capture_output=True,
                            text=True, timeout=300)
    assert export.returncode == 0, export.stderr
    import datasets

    rows = datasets.load_dataset(str(tmp_path / "out" / "curate"), split="train")
    assert rows.num_rows == 20 and set(rows.column_names) == {"question", "answer"}
