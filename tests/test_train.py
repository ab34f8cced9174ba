"""Training the bundled model a few steps with `sft` (LoRA) and `kd` (every weight), on rows from a real store:
every trained tensor changes, the loss on the training rows goes down, and the saved folder loads back in
transformers with the same logits. Then `datagen train` end to end (train_runs, the before/after table), student
truncation, and the tokenizer checks."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import duckdb
import pytest
import torch

from datagen.errors import UserError
from datagen.spec.load import load_spec
from datagen.api import plan as build_plan
from sft.evaluate import generate_answers
from sft.rows import load_rows
from sft.model import load_student, save_student
from sft.train import TRAINERS, training_args
from tests.train_fixtures import make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory, bundled_model_path):
    return make_store(tmp_path_factory.mktemp("train"), bundled_model_path, objective="kd",
                      extra="  lora: {r: 4, alpha: 8}\n  eval: {split: 0.25, max_new_tokens: 12}\n")


def probe(model, tok):
    ids = tok("Hello, what is 2 plus 2?", return_tensors="pt")["input_ids"]
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def train_pieces(spec: Path, objective: str, lora: bool):
    """The steps `datagen train` takes, one by one, so the test can look at the model between them."""
    loaded = load_spec(spec)
    settings = loaded.spec.train.model_copy(update={"objective": objective, "max_steps": 2})
    if not lora:
        settings = settings.model_copy(update={"lora": None, "learning_rate": 1e-4})
    plan = build_plan(loaded)
    rows = load_rows(loaded, plan, settings.input, None)
    model, tok = load_student(settings, loaded.dir)
    with tempfile.TemporaryDirectory() as work:
        trainer, _ = TRAINERS[objective](loaded, plan, settings, model, tok, rows,
                                         training_args(settings, 0, work))
        loss_before = objective_loss(trainer)
        start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        trainer.train()
    trained = {n: p.detach() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return trainer, tok, start, trained, loss_before, objective_loss(trainer)


def objective_loss(trainer) -> float:
    """The trainer's own loss (CE for sft, alpha * CE + (1 - alpha) * T^2 * D for kd) on all training rows at once."""
    data = trainer.train_dataset
    batch = trainer.data_collator([dict(data[i]) for i in range(len(data))])
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, {k: v for k, v in batch.items()}))


def check_round_trip(model, tok, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    expected = probe(model, tok)
    out = save_student(model, tok, tmp_path / "student", {"test": True})
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert torch.allclose(probe(loaded, tok), expected, atol=1e-4)
    assert (out / "tokenizer_config.json").exists() and (out / "datagen_train.json").exists()


def test_sft_with_lora(store, tmp_path):
    trainer, tok, start, trained, before, after = train_pieces(store, "sft", lora=True)
    assert start and all("lora_" in n for n in start)
    unchanged = [n for n in start if torch.equal(start[n], trained[n])]
    # LoRA's B matrices start at zero; after training every A and B must have moved
    assert not unchanged, f"LoRA tensors that did not change: {unchanged[:5]}"
    assert after < before, (before, after)
    check_round_trip(trainer.model, tok, tmp_path)


def test_kd_trains_every_weight(store, tmp_path):
    trainer, tok, start, trained, before, after = train_pieces(store, "kd", lora=False)
    unchanged = [n for n in start if torch.equal(start[n], trained[n])]
    assert len(start) > 100 and not unchanged, f"tensors that did not change: {unchanged[:5]}"
    assert after < before, (before, after)
    # the teacher's strings were mapped to ids and matched the student's tokens almost everywhere
    collator = trainer.data_collator
    # (the chat template's end-of-turn tokens are not part of the reply, so they have no teacher data)
    assert collator.positions > 0 and collator.aligned / collator.positions > 0.75
    check_round_trip(trainer.model, tok, tmp_path)


def test_train_command_records_and_prints(store, capsys):
    from datagen.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(store)])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "held-out loss per token" in printed and "accuracy verify_math(solution)" in printed
    con = duckdb.connect(str(load_spec(store).store_path), read_only=True)
    try:
        row = con.execute("SELECT status, objective, train_rows, eval_rows, steps, loss_before, loss_after, "
                          "accuracy_before, accuracy_after, settings, output FROM train_runs").fetchall()
    finally:
        con.close()
    assert len(row) == 1
    status, objective, n_train, n_eval, steps, lb, la, ab, aa, settings, output = row[0]
    assert status == "done" and objective == "kd" and steps == 2
    # 12 problems, 4 answered wrong and filtered out by verify_math: 8 curated rows, a quarter held out
    assert n_train + n_eval == 8 and n_eval == 2
    assert lb > 0 and la > 0 and 0 <= ab <= 1 and 0 <= aa <= 1
    assert json.loads(settings)["lora"]["r"] == 4
    out = Path(output)
    assert (out / "config.json").exists() and (out / "spec.yaml").read_text() == store.read_text()
    meta = json.loads((out / "datagen_train.json").read_text())
    assert meta["before"]["loss"] == pytest.approx(lb) and meta["after"]["loss"] == pytest.approx(la)


def test_truncated_student(store):
    settings = load_spec(store).spec.train.model_copy(update={"init": "truncate"})
    model, tok = load_student(settings, store.parent)
    assert model.config.num_hidden_layers == 15 and len(model.model.layers) == 15  # half of 30 (default_keep)
    text = generate_answers(model, tok, [[{"role": "user", "content": "Say hello."}]], max_new_tokens=8)[0]
    assert text.strip()
    two = settings.model_copy(update={"keep_layers": [0, 29]})
    model, _ = load_student(two, store.parent)
    assert model.config.num_hidden_layers == 2
    with pytest.raises(UserError, match="out of range"):
        load_student(settings.model_copy(update={"keep_layers": [0, 30]}), store.parent)


def test_kd_refuses_a_teacher_with_another_tokenizer(tmp_path, bundled_model_path):
    from transformers import AutoTokenizer

    from sft.kd import check_mapping, check_tokenizers

    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    other = AutoTokenizer.from_pretrained(bundled_model_path)
    other.add_tokens(["<not-in-the-student>"])
    other.save_pretrained(tmp_path / "other")
    spec = type("T", (), {"backend": "transformers", "model": str(tmp_path / "other")})()
    with pytest.raises(UserError, match="do not share a tokenizer"):
        check_tokenizers(spec, "big", tmp_path, tok)
    same = type("T", (), {"backend": "transformers", "model": bundled_model_path})()
    assert check_tokenizers(same, "big", tmp_path, tok) is True
    with pytest.raises(UserError, match="match no single token"):
        check_mapping(100, 40, "remote")
