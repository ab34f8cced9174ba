"""Preference data into DPO: the `preference` export of judge pairs, TRL's DPOTrainer on it, `objective: dpo`."""

from __future__ import annotations

import datasets
import pytest

from datagen.export import export
from datagen.spec.load import load_spec
from tests.scripted_server import ScriptedServer
from tests.test_feedback import GRADE, quiet_run, score_script, write_spec

# sample 0 and 1 of every input score high, sample 2 low: 4 inputs give 4 pairs (best over worst)
SCORES = {(a, i): f"Fine.\nScore: {(9, 6, 1)[i]}" for a in (2, 4, 10, 6) for i in range(3)}


@pytest.fixture(scope="module")
def pairs_spec(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("pairs")
    with ScriptedServer(score_script(SCORES)) as server:
        spec = write_spec(tmp_path, server.base_url, GRADE + "    pairs: {by: score, min_margin: 2}\n",
                          extra="export: {input: grade, format: preference, columns: [margin, chosen_id]}\n")
        quiet_run(spec)
    return spec


def test_preference_export_loads_and_dpo_trainer_accepts_it(pairs_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from trl import DPOConfig, DPOTrainer

    from datagen.bundled import resolve_model

    result = export(load_spec(pairs_spec), out=tmp_path / "pref", test_split=0.25)
    assert result.format == "preference" and result.splits == {"train": 3, "test": 1}
    data = datasets.load_dataset(str(tmp_path / "pref"))
    row = data["train"][0]
    assert set(data["train"].column_names) == {"prompt", "chosen", "rejected", "margin", "chosen_id"}
    assert row["prompt"][-1]["role"] == "user" and row["prompt"][-1]["content"].startswith("Q: What is")
    assert row["chosen"][0]["role"] == "assistant" and row["chosen"][0]["content"].startswith("attempt 0")
    assert row["rejected"][0]["content"].startswith("attempt 2") and row["margin"] == 8.0
    args = DPOConfig(output_dir=str(tmp_path / "run"), max_steps=1, per_device_train_batch_size=2, report_to=[],
                     save_strategy="no", use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True)
    trainer = DPOTrainer(model=resolve_model("bundled:smollm2-135m-instruct"), args=args,
                         train_dataset=data["train"].remove_columns(["margin", "chosen_id"]))
    tokenized = trainer.train_dataset[0]
    assert tokenized["chosen_ids"] != tokenized["rejected_ids"]
    out = trainer.train()
    assert out.global_step == 1 and out.training_loss > 0
