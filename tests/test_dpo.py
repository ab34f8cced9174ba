"""Preference data into DPO: the `preference` export of judge pairs, TRL's DPOTrainer on it, `objective: dpo`."""

from __future__ import annotations

import datasets
import pytest

from datagen.publish.export import export
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


PAIRS = [
    ("What is 2 plus 3?", "2 plus 3 is 5. #### 5", "2 plus 3 is 6. #### 6"),
    ("What is 4 plus 4?", "4 plus 4 is 8. #### 8", "4 plus 4 is 9. #### 9"),
    ("What is 10 plus 7?", "10 plus 7 is 17. #### 17", "10 plus 7 is 3. #### 3"),
    ("What is 6 plus 1?", "6 plus 1 is 7. #### 7", "6 plus 1 is 61. #### 61"),
]


def pair_records() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}], "completion": [{"role": "assistant", "content": c}],
             "row": {"_parent_id": q}} for q, c, r in PAIRS]


def test_dpo_steps_change_every_lora_tensor_and_lower_the_loss(tmp_path, monkeypatch):
    """A few DPO steps with LoRA on the bundled model: every LoRA tensor moves and the DPO loss on the batch falls."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from datagen.spec.models import TrainSpec
    from sft.dpo import dpo_trainer, preference_metrics
    from sft.rows import TrainRows
    from sft.model import load_student
    from sft.train import training_args

    settings = TrainSpec(objective="dpo", lora={"r": 8, "alpha": 16}, learning_rate=1e-3, batch_size=4,
                         max_steps=3, max_length=128)
    model, tok = load_student(settings, tmp_path)
    records = pair_records()
    rows = TrainRows(input="grade", output_column="solution", step="attempt", train=records, eval=records)
    before_metrics = preference_metrics(model, tok, records)
    trainer, _ = dpo_trainer(None, None, settings, model, tok, rows, training_args(settings, 0, str(tmp_path)))
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for n, p in trainer.model.named_parameters() if "lora_" in n)
    loss_before = trainer.evaluate()["eval_loss"]
    assert abs(loss_before - 0.6931) < 1e-3  # the policy starts as its own reference: -log sigmoid(0)
    out = trainer.train()
    assert out.global_step == 3
    after = dict(trainer.model.named_parameters())
    unchanged = [n for n, p in lora.items() if torch_equal(p, after[n])]
    assert not unchanged, f"{len(unchanged)} of {len(lora)} LoRA tensors did not change: {unchanged[:3]}"
    assert trainer.evaluate()["eval_loss"] < loss_before
    after_metrics = preference_metrics(trainer.model, tok, records)
    assert after_metrics["logp_margin"] > before_metrics["logp_margin"]


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b.detach()))


@pytest.mark.parametrize("train, message", [
    ("train: {objective: dpo, input: attempt}\n", r"train\.input: `objective: dpo` trains on preference pairs, and "
                                                  r"`attempt` builds none"),
    ("train: {objective: dpo}\n", r"train\.objective: `objective: dpo` trains on preference pairs, and `grade`"),
    ("train: {objective: dpo, dpo: {beta: 0}}\n", r"train\.dpo\.beta"),
])
def test_dpo_train_block_is_checked_by_the_plan(tmp_path, train, message):
    from datagen.errors import UserError
    from datagen.api import plan as build_plan

    spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", GRADE, extra=train)
    with pytest.raises(UserError, match=message):
        build_plan(load_spec(spec))


def test_before_after_table_shows_preference_metrics():
    from sft.results import comparison_rows

    rows = comparison_rows({"loss": 1.5, "preference_accuracy": 0.25, "logp_margin": -0.5},
                           {"loss": 1.25, "preference_accuracy": 0.75, "logp_margin": 0.5})
    assert rows == [("held-out loss per token", "1.5000", "1.2500", "-0.2500"),
                    ("held-out preference accuracy", "0.2500", "0.7500", "+0.5000"),
                    ("held-out log-prob margin (chosen - rejected)", "-0.5000", "0.5000", "+1.0000")]
    assert [r[0] for r in comparison_rows({"loss": 1.0}, {"loss": 0.5})] == ["held-out loss per token"]
