"""`datagen export`: Parquet shards plus a dataset card that `datasets` loads and TRL trains on as they are."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from datagen.cli import app
from datagen.errors import UserError
from datagen.publish.export import export
from datagen.spec.load import load_spec
from datagen.api import plan as build_plan
from tests.export_fixtures import PROBLEMS, SECRET, build_store, set_export

N_ROWS = len(PROBLEMS) * 2  # n: 2


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    try:
        yield build_store(tmp_path_factory.mktemp("export"), mp)
    finally:
        mp.undo()


def load(path: Path):
    import datasets

    return datasets.load_dataset(str(path))


def test_messages_export_loads_with_datasets(spec, tmp_path):
    result = export(load_spec(spec), out=tmp_path / "ds")
    assert [p.relative_to(result.path).as_posix() for p in result.files] == [
        "data/train-00000-of-00001.parquet", "README.md"]
    ds = load(tmp_path / "ds")
    assert list(ds) == ["train"]
    train = ds["train"]
    assert train.num_rows == N_ROWS
    assert train.column_names == ["messages"]
    assert train.features["messages"].feature["role"].dtype == "string"
    conv = train[0]["messages"]
    # system, one demo exchange, the rendered prompt, the teacher's answer: the request as it was sent, plus the reply
    assert [m["role"] for m in conv] == ["system", "user", "assistant", "user", "assistant"]
    assert conv[0]["content"] == "You are a careful math tutor."
    question = conv[3]["content"]
    assert question in {q for q, _ in PROBLEMS}
    assert conv[4]["content"].startswith("Let me think") and question in conv[4]["content"]
    assert conv[2]["content"].startswith("#### ")  # the demo's answer column


def test_prompt_completion_export_with_extra_columns_and_test_split(spec, tmp_path):
    set_export(spec, "export:\n  format: prompt_completion\n  columns: [_id, _parent_id, _teacher, answer]\n"
                     "  test_split: 0.3\n  shard_rows: 3\n")
    try:
        result = export(load_spec(spec), out=tmp_path / "pc")
    finally:
        set_export(spec, "")
    ds = load(tmp_path / "pc")
    assert sorted(ds) == ["test", "train"]
    assert ds["train"].num_rows + ds["test"].num_rows == N_ROWS
    assert ds["test"].num_rows == 4  # 0.3 of 12 rows, rounded up to whole inputs (2 samples each)
    assert ds["train"].column_names == ["prompt", "completion", "_id", "_parent_id", "_teacher", "answer"]
    # both samples of an input land in one split, so no prompt is in train and test
    parents = {split: set(ds[split]["_parent_id"]) for split in ds}
    assert not parents["train"] & parents["test"]
    row = ds["train"][0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user", "assistant", "user"]
    assert [m["role"] for m in row["completion"]] == ["assistant"]
    assert row["_teacher"] == "remote"
    names = sorted(p.name for p in (tmp_path / "pc" / "data").iterdir())
    assert names == ["test-00000-of-00002.parquet", "test-00001-of-00002.parquet",
                     "train-00000-of-00003.parquet", "train-00001-of-00003.parquet", "train-00002-of-00003.parquet"]
    assert result.splits == {"train": 8, "test": 4}


def test_reexport_removes_shards_of_the_previous_export(spec, tmp_path):
    stale = tmp_path / "re" / "data" / "train-00003-of-00004.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    export(load_spec(spec), out=tmp_path / "re")
    assert not stale.exists()
    assert load(tmp_path / "re")["train"].num_rows == N_ROWS


def test_preference_format_needs_a_judge_step_with_pairs(spec):
    result = CliRunner().invoke(app, ["export", str(spec), "--format", "preference"])
    assert result.exit_code == 2
    assert "preference format exports the pairs a judge step builds" in result.output
    set_export(spec, "export:\n  format: preference\n")
    try:
        with pytest.raises(UserError, match=r"export\.format: the preference format.*spec\.yaml:\d+"):
            build_plan(load_spec(spec))
    finally:
        set_export(spec, "")


def test_preference_rows_become_conversational_pairs():
    from datagen.publish.export import preference_record

    rec = preference_record({"prompt": "What is 2+3?", "chosen": "5", "rejected": "6"})
    assert rec == {"prompt": [{"role": "user", "content": "What is 2+3?"}],
                   "chosen": [{"role": "assistant", "content": "5"}],
                   "rejected": [{"role": "assistant", "content": "6"}]}


@pytest.mark.parametrize("block, message", [
    ("export:\n  columns: [_id, answr]\n", r"export\.columns\.1: `answr` is not a column"),
    ("export:\n  input: nowhere\n", r"export\.input: `nowhere` is not a step, a source or `curated`"),
    ("export:\n  input: curated\n", r"export\.input: `curated` is the curation block's result"),
    ("export:\n  input: problems\n  format: messages\n", r"export\.format: the `messages` format needs a generation"),
])
def test_export_block_is_checked_by_the_plan(spec, block, message):
    set_export(spec, block)
    try:
        with pytest.raises(UserError, match=message):
            build_plan(load_spec(spec))
    finally:
        set_export(spec, "")


def test_source_rows_export_as_plain_columns(spec, tmp_path):
    set_export(spec, "export:\n  input: problems\n")
    try:
        result = export(load_spec(spec), out=tmp_path / "src")
    finally:
        set_export(spec, "")
    assert result.format == "columns"
    train = load(tmp_path / "src")["train"]
    assert train.column_names == ["question", "answer"] and train.num_rows == len(PROBLEMS)
    assert "no chat turns" in (tmp_path / "src" / "README.md").read_text()


def test_card_header_parses_and_no_secret_or_local_path_is_exported(spec, monkeypatch):
    monkeypatch.setenv("TEACHER_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", "hf_fakeTOKENvalue42")
    result = CliRunner().invoke(app, ["export", str(spec)])
    assert result.exit_code == 0, result.output
    out = spec.parent / "out" / "tiny"  # export.path's default, beside the spec
    card = (out / "README.md").read_text()
    header = yaml.safe_load(card.split("---\n")[1])
    assert header["license"] == "other"
    assert header["task_categories"] == ["text-generation"]
    assert header["size_categories"] == ["n<1K"]
    assert {"synthetic", "distillation", "datagen"} <= set(header["tags"])
    assert header["configs"] == [{"config_name": "default",
                                  "data_files": [{"split": "train", "path": "data/train-*"}]}]
    for needle in ("TEACHER_API_KEY", "temperature=0.5", "max_tokens=64", "label", "Curation funnel",
                   "No curation", "Terms of use", "0.1.0", f"| solve | remote | {N_ROWS} | {N_ROWS} | 0 |",
                   "path: problems.jsonl"):
        assert needle in card, needle
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 2
    local = str(spec.parent.resolve())
    for path in files:
        data = path.read_bytes()
        for forbidden in (SECRET, "hf_fakeTOKENvalue42", local, str(Path.home()) + "/"):
            assert forbidden.encode() not in data, (path.name, forbidden)
    assert "/tmp/" not in card


def test_card_scrubs_secrets_and_paths_written_into_the_spec(spec, monkeypatch):
    from datagen.publish.card import scrub

    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-abcdef-12345")
    loaded = load_spec(spec)
    text = scrub(f"key tok-abcdef-12345 in {spec.parent}/data/x.jsonl and /home/someone/models/m.gguf, "
                 "url http://127.0.0.1:8000/v1 and 10 km/h", loaded)
    assert text == "key [redacted] in data/x.jsonl and m.gguf, url http://127.0.0.1:8000/v1 and 10 km/h"


def test_sft_trainer_accepts_the_messages_export(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from trl import SFTConfig, SFTTrainer

    from datagen.bundled import resolve_model

    export(load_spec(spec), out=tmp_path / "sft")
    train = load(tmp_path / "sft")["train"]
    # TRL's defaults (bf16 autocast, gradient checkpointing) make one CPU step three times slower
    args = SFTConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True)
    model = resolve_model("bundled:smollm2-135m-instruct")
    trainer = SFTTrainer(model=model, train_dataset=train, args=args)
    out = trainer.train()
    assert out.global_step == 1
    assert out.training_loss > 0
    # the prompt/completion export is read as is too, with the loss masked to the completion
    export(load_spec(spec), out=tmp_path / "pc", fmt="prompt_completion")
    pc = SFTTrainer(model=trainer.model, processing_class=trainer.processing_class, args=args,
                    train_dataset=load(tmp_path / "pc")["train"])
    labels = pc.train_dataset[0]["labels"]  # TRL folds the completion mask into labels: -100 is no loss
    assert labels[0] == -100 and labels[-1] != -100


CURATION = """\
curation:
  input: solve
  filters:
    - {type: regex, column: solution, must_not_match: "10-7"}
  dedup:
    - {type: exact, column: solution}
  select: {n: 3}
"""


def test_curated_rows_are_the_default_input_and_the_card_shows_the_funnel(tmp_path, monkeypatch):
    import datasets

    spec = build_store(tmp_path, monkeypatch, extra=CURATION)
    result = export(load_spec(spec))
    assert result.input.name == "curated" and result.path == tmp_path / "out" / "tiny"
    train = datasets.load_dataset(str(result.path))["train"]
    assert train.num_rows == 3
    assert all("10-7" not in row["messages"][3]["content"] for row in train)
    card = (result.path / "README.md").read_text()
    assert "from the `curated` rows" in card
    # 12 rows; the regex filter drops the 2 samples of one question; exact dedup keeps one of each identical pair
    assert "| `filter:regex` | 12 | 10 | 2 |" in card
    assert "| `dedup:exact` | 10 | 5 | 5 |" in card
    assert "3 rows selected" in card and "n = 3" in card


def test_status_the_report_and_the_card_show_one_funnel(tmp_path, monkeypatch):
    """One funnel (datagen.store.stats.funnel, in the spec's stage order): the same stages and numbers in
    `datagen status`, the HTML report and the dataset card, and the curation run's own summary."""
    import re

    import datagen
    import datagen.api

    spec = build_store(tmp_path, monkeypatch, extra=CURATION)
    run_funnel = [{k: f[k] for k in ("stage", "rows_in", "rows_out")} for f in datagen.curate(spec, log=lambda m: None)]
    status = datagen.status(spec)["funnel"]
    card = (export(load_spec(spec)).path / "README.md").read_text()
    card_rows = [{"stage": s, "rows_in": int(n), "rows_out": int(k)}
                 for s, n, k in re.findall(r"^\| `([\w:]+)` \| (\d+) \| (\d+) \| \d+ \|", card, re.M)]
    page = datagen.api.report(spec).read_text()
    page = page[page.index("<th>curation stage</th>"):]
    page = page[:page.index("</table>")]
    report_rows = [{"stage": s, "rows_in": int(n), "rows_out": int(k)}
                   for s, n, k in re.findall(r'<tr><td>([\w:]+)</td><td class="n">(\d+)</td><td class="n">(\d+)</td><td class="n">\d+</td>', page)]
    assert run_funnel == status == card_rows == report_rows
    assert [f["stage"] for f in status] == ["filter:regex", "dedup:exact", "select"]
