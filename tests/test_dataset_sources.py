"""`dataset:` sources through `datasets.load_dataset`: a local Hub-layout folder (offline), a `save_to_disk` folder,
config/split/columns/limit, the fingerprint in the plan and the card, and a missing dataset or split as a
validation error (exit 2) that says what to set."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import datagen
from datagen.cli import app
from datagen.errors import UserError
from tests.scripted_server import ScriptedServer

ROWS = [{"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}", "level": i % 3} for i in range(6)]


def hub_folder(root, rows=ROWS):
    """The layout a Hub dataset repository has: data/<split>-XXXXX-of-XXXXX.parquet and a README."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), root / "data" / "test-00000-of-00001.parquet")
    (root / "README.md").write_text("# a dataset\n")
    return root


def spec_text(source: str, base_url: str = "http://127.0.0.1:9/v1") -> str:
    return f"""\
name: ds
teachers:
  t: {{backend: openai, base_url: "{base_url}", model: m, sampling: {{max_tokens: 8}}}}
sources:
  problems:
{source}
steps: [{{name: solve, strategy: label, teacher: t, input: problems, prompt: "{{{{ question }}}}", output: solution}}]
export: {{path: out}}
"""


def test_a_hub_layout_folder_offline_with_split_columns_and_limit(tmp_path):
    hub_folder(tmp_path / "hub")
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text("    dataset: hub\n    split: train\n    columns: [question, answer]\n    limit: 4"))
    plan = datagen.validate(spec)
    assert [{k: r[k] for k in ("question", "answer")} for r in plan.source_rows["problems"]] == \
        [{"question": r["question"], "answer": r["answer"]} for r in ROWS[:4]]
    assert plan.source_columns["problems"] == ["_id", "question", "answer"]  # `level` left out by `columns`
    info = plan.source_info["problems"]
    assert info["split"] == "train" and len(info["fingerprint"]) >= 8 and info["rows"] == 4
    assert f"fingerprint {info['fingerprint']}" in datagen.api.describe(plan)
    # another split, and a changed file is a changed fingerprint (the card shows it)
    spec.write_text(spec_text("    dataset: hub\n    split: test"))
    assert len(datagen.validate(spec).source_rows["problems"]) == 2
    hub_folder(tmp_path / "hub", ROWS[::-1])
    spec.write_text(spec_text("    dataset: hub\n    split: train\n    columns: [question, answer]\n    limit: 4"))
    assert datagen.validate(spec).source_info["problems"]["fingerprint"] != info["fingerprint"]


def test_rows_from_a_dataset_are_generated_from_and_carded(tmp_path):
    hub_folder(tmp_path / "hub")
    spec = tmp_path / "spec.yaml"
    with ScriptedServer() as server:
        spec.write_text(spec_text("    dataset: hub\n    limit: 3", server.base_url))
        summary = datagen.run(spec)
        card = (datagen.export(spec).path / "README.md").read_text()
    assert summary.steps[0].generated == 3
    fingerprint = datagen.validate(spec).source_info["problems"]["fingerprint"]
    assert "dataset `hub`, config `default`, split `train`, fingerprint `" + fingerprint + "`" in card


def test_a_save_to_disk_folder_as_path_and_as_dataset(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(tmp_path / "saved"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text("    path: saved"))
    assert len(datagen.validate(spec).source_rows["problems"]) == 6
    spec.write_text(spec_text("    dataset: saved\n    split: test"))
    rows = datagen.validate(spec).source_rows["problems"]
    assert [r["question"] for r in rows] == [ROWS[0]["question"]]


@pytest.mark.parametrize("source,expected", [
    ("    dataset: hub\n    split: validation", ["sources.problems.dataset", "validation", "set `split:`",
                                                  "spec.yaml:"]),
    ("    dataset: hub\n    columns: [question, nope]", ["sources.problems.dataset", "nope", "its columns"]),
    ("    dataset: no-such-owner/no-such-dataset-xyz", ["sources.problems.dataset", "could not be loaded",
                                                       "HF_TOKEN", "HF_HUB_OFFLINE"]),
    ("    dataset: ./missing_folder", ["sources.problems.dataset", "does not exist"]),
    ("    path: data.jsonl\n    split: train", ["sources.problems", "only apply to a `dataset:` source"]),
])
def test_a_missing_dataset_or_split_is_a_validation_error(tmp_path, monkeypatch, source, expected):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the machine has no hub; offline says so at once
    hub_folder(tmp_path / "hub")
    (tmp_path / "data.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(spec_text(source))
    result = CliRunner().invoke(app, ["validate", str(spec)])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.output
    for part in expected:
        assert part in result.stderr, result.stderr
    with pytest.raises(UserError):
        datagen.validate(spec)
