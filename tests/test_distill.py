"""`train.eval.source` (scoring on references the student never saw) and `kd.hidden` (hidden-state distillation).

The store is the scripted teacher's (tests/train_fixtures.py): "a plus b" questions answered "a plus b is c. #### c".
The eval source holds other sums with their reference answers, in a column named differently from the one the
step's template reads. Students are 2-layer truncated copies of the bundled model (layers 0 and 15), the teacher
the whole bundled model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest
import torch

from datagen.errors import UserError
from datagen.spec.load import load_spec
from datagen.api import plan as build_plan
from tests.train_fixtures import make_store

HELDOUT = [(3, 4), (5, 5), (2, 9), (8, 8), (6, 7), (4, 11)]
SOURCES = "  heldout: {path: heldout.jsonl}\n"
KD_LINE = "kd: {alpha: 0.5, temperature: 2.0, divergence: forward}"
TWO_LAYERS = "  init: truncate\n  keep_layers: [0, 15]\n"
EVAL = "  eval: {split: 0.25, max_new_tokens: 12, source: heldout, prompt: problem, reference: worked}\n"


@pytest.fixture(scope="module")
def store(tmp_path_factory, bundled_model_path):
    folder = tmp_path_factory.mktemp("distill")
    (folder / "heldout.jsonl").write_text("".join(
        json.dumps({"problem": f"{a} plus {b}", "worked": f"{a} plus {b} is {a + b}. #### {a + b}"}) + "\n"
        for a, b in HELDOUT))
    return make_store(folder, bundled_model_path, objective="kd", extra=TWO_LAYERS + EVAL, sources=SOURCES)


def with_train(spec: Path, kd: str = KD_LINE, eval_line: str = EVAL, name: str = "spec2.yaml") -> Path:
    """A copy of the spec beside it (same store) with another `kd:` and `eval:` line."""
    text = spec.read_text().replace(KD_LINE, kd).replace(EVAL, eval_line)
    out = spec.parent / name
    out.write_text(text)
    return out


HIDDEN = "kd: {alpha: 0.5, temperature: 2.0, hidden: {weight: 1.0, layers: auto, loss: cosine}}"


def test_train_scores_references_and_kd_closeness_before_and_after(store, capsys):
    """`datagen train` with eval.source and kd.hidden: the reference NLL goes down, every metric is stored."""
    from datagen.cli import main

    spec = with_train(store, kd=HIDDEN, name="e2e.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(spec), "--max-steps", "3"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    for label in ("reference loss per token (heldout)", "accuracy verify_math(solution) (heldout)",
                  "held-out KL(teacher || student) on its top-k",
                  "held-out KL(teacher || student) on its top-k + the rest",
                  "held-out top-1 agreement with the teacher",
                  "hidden-state term: student layers [0, 1] matched to teacher layers [0, 15]"):
        assert label in printed, label
    con = duckdb.connect(str(load_spec(spec).store_path), read_only=True)
    try:
        before, after = con.execute("SELECT metrics_before, metrics_after FROM train_runs WHERE status = 'done' "
                                    "ORDER BY started_at DESC LIMIT 1").fetchone()
    finally:
        con.close()
    before, after = json.loads(before), json.loads(after)
    assert before["reference_rows"] == after["reference_rows"] == len(HELDOUT)
    assert before["reference_tokens"] == after["reference_tokens"] > 6 * len(HELDOUT)
    assert after["reference_loss"] < before["reference_loss"] - 0.5, (before, after)
    for m in (before, after):
        assert 0 <= m["reference_accuracy"] <= 1 and m["kd_positions"] > 0
        assert m["kd_kl"] >= 0 and m["kd_kl_tail"] >= 0 and 0 <= m["kd_top1"] <= 1


def test_eval_prompts_are_rendered_as_the_training_rows_were(store):
    from sft.eval_source import binding, source_records
    from sft.rows import load_rows

    loaded = load_spec(store)
    plan = build_plan(loaded)
    rows = load_rows(loaded, plan, None, None)
    records = source_records(loaded, plan, rows.step, rows.train)
    trained = rows.train[0]["prompt"]
    assert [m["role"] for m in records[0]["prompt"]] == [m["role"] for m in trained] == ["system", "user"]
    assert records[0]["prompt"][0] == trained[0]  # the same system prompt
    assert records[0]["prompt"][1]["content"] == "What is 3 plus 4?"
    assert re.sub(r"\d+", "N", trained[1]["content"]) == "What is N plus N?"
    assert records[0]["completion"] == [{"role": "assistant", "content": "3 plus 4 is 7. #### 7"}]
    step = plan.step(rows.step).spec
    assert binding(step, "problem") == {"question": "problem"}  # the template's only variable
    assert binding(step, "question") == {"question": "question"}


@pytest.mark.parametrize("eval_line, message", [
    ("  eval: {source: nowhere, prompt: problem, reference: worked}\n",
     r"train\.eval\.source: `nowhere` is not a source of this spec \(sources: problems, heldout\)"),
    ("  eval: {source: heldout, prompt: problem, reference: answer}\n",
     r"train\.eval\.reference: `answer` is not a column of source `heldout`; columns: problem, worked"),
    ("  eval: {source: heldout, prompt: nope, reference: worked}\n",
     r"train\.eval\.prompt: `nope` is not a column"),
    ("  eval: {source: problems, prompt: question, reference: answer}\n",
     r"train\.eval\.source: the student trains on answers to `problems`'s rows"),
    ("  eval: {source: heldout, prompt: problem}\n", r"train\.eval: .*needs `prompt: COLUMN` and `reference: COLUMN`"),
    ("  eval: {split: 0, max_new_tokens: 4}\n", r"train\.eval: .*needs a held-out share"),
    ("  eval: {verify: math}\n", r"train\.eval: .*eval\.verify: math judges the answers to `eval\.source`"),
])
def test_eval_source_is_checked_by_the_plan(store, eval_line, message):
    spec = with_train(store, eval_line=eval_line, name="bad.yaml")
    with pytest.raises(UserError, match=message):
        build_plan(load_spec(spec))


def test_eval_verify_none_skips_accuracy_and_math_adds_it(store):
    from sft.evaluate import verifiers
    from sft.rows import load_rows
    from sft.scores import scorer
    from sft.model import load_student

    line = EVAL.replace("reference: worked", "reference: worked, verify: MODE").replace("12", "4")
    kwargs = dict(output_column="solution", max_length=64, max_new_tokens=4, batch_size=4, spec_dir=store.parent)
    for mode in ("none", "math"):
        loaded = load_spec(with_train(store, eval_line=line.replace("MODE", mode), name=f"verify_{mode}.yaml"))
        plan = build_plan(loaded)
        rows = load_rows(loaded, plan, None, 0.25)
        model, tok = load_student(loaded.spec.train, loaded.dir)
        # `math` judges the source's answers with verify_math even when no curation filter verifies (checks=[])
        checks = verifiers(loaded, "solution") if mode == "none" else []
        metrics = scorer(loaded, plan, loaded.spec.train, tok, rows, checks, kwargs)(model)
        assert metrics["reference_loss"] > 0 and metrics["loss"] > 0
        if mode == "none":
            assert not any("accuracy" in k for k in metrics), metrics
        else:
            assert list(metrics["reference_accuracy_by_verifier"]) == ["verify_math(solution)"]
            assert "accuracy" not in metrics  # the held-out rows keep `auto`: no filter given, no accuracy


# --- hidden states ------------------------------------------------------------------------------------------


def kd_pieces(spec: Path, work: Path, max_steps: int = 2):
    from sft.rows import load_rows
    from sft.model import load_student
    from sft.train import TRAINERS, training_args

    loaded = load_spec(spec)
    settings = loaded.spec.train.model_copy(update={"max_steps": max_steps, "learning_rate": 1e-4})
    plan = build_plan(loaded)
    rows = load_rows(loaded, plan, None, None)
    model, tok = load_student(settings, loaded.dir)
    trainer, notes = TRAINERS["kd"](loaded, plan, settings, model, tok, rows, training_args(settings, 0, str(work)))
    return trainer, notes


def test_hidden_term_reaches_every_student_weight_and_never_the_teacher(store, tmp_path):
    trainer, _ = kd_pieces(with_train(store, kd=HIDDEN, name="hidden.yaml"), tmp_path)
    hidden, student = trainer.hidden, trainer.model
    assert hidden.pairs == [(0, 0), (1, 15)]  # auto: the layers the truncated copy kept
    teacher_before = {n: p.detach().clone() for n, p in hidden.teacher.named_parameters()}
    assert not any(p.requires_grad for p in teacher_before.values()) and not hidden.teacher.training

    # the hidden term alone: its gradient reaches every student weight the matched states depend on
    from sft.hidden import catch_outputs

    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(2)])
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    student.train()
    with catch_outputs(student, hidden.student_layers()) as caught:
        student(**inputs, use_cache=False)
    h = hidden.loss(caught, inputs)
    assert float(h.detach()) > 0.01
    h.backward()
    # model.norm comes after the last layer, so the hidden term cannot reach it (the CE term does)
    no_grad = [n for n, p in student.named_parameters() if n != "model.norm.weight"
               and (p.grad is None or not bool(p.grad.abs().sum() > 0))]
    assert not no_grad, no_grad
    assert all(p.grad is None for p in hidden.teacher.parameters())
    student.zero_grad()

    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainer.train()
    unchanged = [n for n, p in student.named_parameters() if torch.equal(start[n], p.detach())]
    assert len(start) > 10 and not unchanged, unchanged
    assert all(torch.equal(teacher_before[n], p) for n, p in hidden.teacher.named_parameters())
    logged = [entry["hidden"] for entry in trainer.state.log_history if "hidden" in entry]
    assert len(logged) == 2 and all(v > 0 for v in logged), trainer.state.log_history


@pytest.fixture(scope="module")
def narrow_teacher(tmp_path_factory, bundled_model_path):
    """A 2-layer model with hidden size 64 and the bundled tokenizer (random weights: only its shape matters)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(bundled_model_path)
    config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 16})
    folder = tmp_path_factory.mktemp("narrow") / "teacher"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(bundled_model_path).save_pretrained(folder)
    return folder


def test_a_teacher_of_another_hidden_size_needs_a_projection(store, narrow_teacher, tmp_path):
    refused = f"kd: {{hidden: {{teacher: '{narrow_teacher}'}}}}"
    spec = with_train(store, kd=refused, name="narrow.yaml")
    with pytest.raises(UserError, match=r"train\.kd\.hidden\.teacher: the teacher's hidden size is 64 and the "
                                        r"student's 576.*set `kd\.hidden\.project: true`"):
        build_plan(load_spec(spec))

    spec = with_train(store, kd=f"kd: {{hidden: {{teacher: '{narrow_teacher}', project: true, layers: {{1: 1}}}}}}",
                      name="projected.yaml")
    build_plan(load_spec(spec))
    trainer, _ = kd_pieces(spec, tmp_path / "work", max_steps=2)
    project = trainer.hidden.project
    assert trainer.hidden.pairs == [(1, 1)] and project["1"].weight.shape == (64, 576)
    start = project["1"].weight.detach().clone()
    trainer.train()
    assert not torch.equal(start, project["1"].weight.detach()), "the projection did not train"
    names = {n for n, _ in trainer.model.named_parameters()}
    assert not any("project" in n for n in names)

    from sft.model import save_student

    out = save_student(trainer.model, trainer.processing_class, tmp_path / "student", {})
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved and not any("project" in k for k in saved) and all(k in names for k in saved)


def test_hidden_layer_indices_are_checked(store):
    spec = with_train(store, kd="kd: {hidden: {layers: {2: 3}}}", name="layers.yaml")
    with pytest.raises(UserError, match=r"train\.kd\.hidden\.layers: 2: 3 is out of range; the student has 2 "
                                        r"layers \(0 to 1\)"):
        build_plan(load_spec(spec))
    spec = with_train(store, kd="kd: {hidden: {weight: 1}}", name="sft_hidden.yaml")
    spec.write_text(spec.read_text().replace("objective: kd", "objective: sft"))
    with pytest.raises(UserError, match=r"kd\.hidden is a term of the `kd` objective"):
        load_spec(spec)


def test_layer_pairs():
    from datagen.spec.models import HiddenSpec
    from sft.hidden import layer_pairs

    auto = HiddenSpec()
    # the default truncation (sft/model.py default_keep: 0 and 4, 5 of 6) keeps the last, so the last maps to the last
    assert layer_pairs(auto, "truncate", None, 3, 6, True) == [(0, 0), (1, 4), (2, 5)]
    assert layer_pairs(auto, "truncate", None, 15, 30, True)[-1] == (14, 29)
    assert layer_pairs(auto, "truncate", [1, 5], 2, 6, True) == [(0, 1), (1, 5)]
    assert layer_pairs(auto, "pretrained", None, 4, 4, False) == [(i, i) for i in range(4)]
    assert layer_pairs(auto, "pretrained", None, 3, 6, False) == [(0, 1), (1, 3), (2, 5)]  # evenly, last to last
    assert layer_pairs(HiddenSpec(layers={1: 4}), "truncate", None, 3, 6, True) == [(1, 4)]


def test_hidden_term_with_lora_reaches_the_adapters(store):
    """With `lora:` the student is a PEFT model: its layers are found through the wrapper and H trains the adapters."""
    from peft import get_peft_model

    from sft.hidden import build_distiller, catch_outputs
    from sft.model import load_student, lora_config

    loaded = load_spec(with_train(store, kd=HIDDEN, name="hidden_lora.yaml"))
    from datagen.spec.models import LoraSpec

    settings = loaded.spec.train.model_copy(update={"lora": LoraSpec(r=4, alpha=8)})
    model, tok = load_student(settings, loaded.dir)
    student = get_peft_model(model, lora_config(settings.lora))
    hidden = build_distiller(settings, loaded.dir, student, tok, "cpu")
    inputs = tok(["What is 2 plus 3?", "What is 10 plus 7? It is 17."], return_tensors="pt", padding=True)
    with catch_outputs(student, hidden.student_layers()) as caught:
        student(**inputs, use_cache=False)
    hidden.loss(caught, dict(inputs)).backward()
    lora = {n: p for n, p in student.named_parameters() if "lora_B" in n}
    # B starts at zero, so its gradient is where H first moves the adapters
    assert lora and all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in lora.values())


def test_dpo_eval_source_is_checked_against_the_judged_step(tmp_path):
    """With `objective: dpo` the answers are the judged step's, so its prompt renders the source's questions."""
    from tests.test_feedback import GRADE, write_spec

    def plan_with(eval_block: str):
        spec = write_spec(tmp_path, "http://127.0.0.1:9/v1", GRADE + "    pairs: {by: score, min_margin: 2}\n",
                          extra=f"train: {{objective: dpo, eval: {eval_block}}}\n")
        spec.write_text(spec.read_text().replace(
            "  problems: {path: problems.jsonl}\n",
            "  problems: {path: problems.jsonl}\n  heldout: {inline: [{q: 3 plus 4, a: '#### 7'}]}\n"))
        return build_plan(load_spec(spec))

    plan = plan_with("{split: 0.25, source: heldout, prompt: q, reference: a}")
    from sft.eval_source import binding

    assert binding(plan.step("attempt").spec, "q") == {"question": "q"}
    with pytest.raises(UserError, match=r"train\.eval\.source: the student trains on answers to `problems`'s rows "
                                        r"\(step `attempt` reads it\)"):
        plan_with("{source: problems, prompt: question, reference: answer}")
