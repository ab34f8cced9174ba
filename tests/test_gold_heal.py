"""Issue 30: a source with `prompt` and `completion` columns as `train.input` (gold-answer SFT, the ceiling arm), and
`train.heal` (a short CE training before the objective, cached once and reused by every arm and seed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen.api import plan as build_plan
from datagen.errors import UserError
from datagen.spec.load import load_spec

GOLD = [{"prompt": f"What is {a} + {b}?", "completion": f"{a} + {b} = {a + b}\n#### {a + b}"}
        for a, b in [(2, 3), (4, 4), (10, 7), (6, 1), (9, 9), (12, 30), (5, 8), (7, 7)]]
TEST = [{"question": f"What is {a} + {b}?", "answer": f"#### {a + b}"} for a, b in [(3, 4), (8, 8), (20, 5)]]

SPEC = """\
name: gold
seed: {seed}
sources:
  gold: {{path: gold.jsonl}}
  test: {{path: test.jsonl}}
  plain: {{inline: [{{question: 'What is 1 + 1?', answer: '#### 2'}}]}}
train:
  input: gold
  student: {student}
  init: truncate
  keep_layers: [0, 29]
  objective: {objective}
  system: Give the result after "####".
  max_steps: 1
  batch_size: 4
  max_length: 64
  learning_rate: 1.0e-3
{extra}"""


def write(folder: Path, student: str, objective: str = "sft", extra: str = "", seed: int = 3,
          name: str = "spec.yaml") -> Path:
    (folder / "gold.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOLD))
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEST))
    spec = folder / name
    spec.write_text(SPEC.format(seed=seed, student=student, objective=objective, extra=extra))
    return spec


def test_gold_rows_are_the_prompt_and_completion_columns(tmp_path, bundled_model_path):
    from sft.rows import load_rows

    loaded = load_spec(write(tmp_path, bundled_model_path))
    rows = load_rows(loaded, build_plan(loaded), "gold", 0.25, None, loaded.spec.train.system)
    assert rows.step is None and rows.output_column == "completion"
    assert len(rows.train) == 6 and len(rows.eval) == 2
    first = next(r for r in rows.train + rows.eval if r["row"]["prompt"] == "What is 2 + 3?")
    assert first["prompt"] == [{"role": "system", "content": 'Give the result after "####".'},
                               {"role": "user", "content": "What is 2 + 3?"}]
    assert first["completion"] == [{"role": "assistant", "content": "2 + 3 = 5\n#### 5"}]
    templated = load_rows(loaded, build_plan(loaded), "gold", None, "Compute: {{ prompt }}", None)
    assert templated.train[0]["prompt"] == [{"role": "user", "content": "Compute: What is 2 + 3?"}]


def test_a_source_trains_only_as_gold_answers_by_sft(tmp_path, bundled_model_path):
    with pytest.raises(UserError, match=r"train\.objective: `objective: kd` trains on a teacher's soft labels, and "
                                        r"source `gold` has answers only; use `objective: sft`"):
        build_plan(load_spec(write(tmp_path, bundled_model_path, objective="kd")))
    spec = write(tmp_path, bundled_model_path, name="plain.yaml")
    spec.write_text(spec.read_text().replace("input: gold", "input: plain"))
    with pytest.raises(UserError, match=r"train\.input: `plain` holds a source's rows, which have no teacher output; "
                                        r"a source trains only with `prompt` and `completion` columns .*its columns: "
                                        r"question, answer"):
        build_plan(load_spec(spec))
    spec = write(tmp_path, bundled_model_path, extra="  heal: {input: plain, steps: 1}\n", name="heal.yaml")
    with pytest.raises(UserError, match=r"train\.heal\.input: source `plain` has no `prompt` and `completion` "
                                        r"columns"):
        build_plan(load_spec(spec))
    spec = write(tmp_path, bundled_model_path, name="evalsame.yaml",
                 extra="  eval: {split: 0.25, source: gold, prompt: prompt, reference: completion}\n")
    with pytest.raises(UserError, match=r"train\.eval\.source: the student trains on `gold`'s rows"):
        build_plan(load_spec(spec))


def test_gold_sft_and_a_cached_heal(tmp_path, bundled_model_path, monkeypatch):
    """`datagen train` on the gold source scores `eval.source` put with train.system; with `heal`, the healed
    student is trained once, cached outside the spec's folder, what "before" scores, and reused by a spec that
    differs only in seed."""
    from sft.heal import heal_key, healed_student
    from sft.rows import load_rows
    from sft.train import sft_trainer, train, training_args

    monkeypatch.setenv("DATAGEN_CACHE", str(tmp_path / "cache"))
    eval_block = "  eval: {split: 0.25, source: test, prompt: question, reference: answer, verify: math, " \
                 "max_new_tokens: 8}\n"
    plain = train(load_spec(write(tmp_path, bundled_model_path, extra=eval_block)), out=tmp_path / "s0",
                  log=lambda m: None)
    assert (plain.input, plain.train_rows, plain.eval_rows, plain.steps) == ("gold", 6, 2, 1)
    assert plain.before["reference_rows"] == 3 and "reference_accuracy" in plain.after
    assert plain.after["reference_loss"] != plain.before["reference_loss"]

    heal = "  heal: {input: gold, steps: 2, learning_rate: 1.0e-3}\n"
    logs: list[str] = []
    first = train(load_spec(write(tmp_path, bundled_model_path, extra=heal + eval_block, name="h1.yaml")),
                  out=tmp_path / "s1", log=logs.append)
    assert any(m.startswith("heal: 2 steps of CE on `gold` (8 rows)") for m in logs), logs
    healed = [p for p in (tmp_path / "cache" / "healed").iterdir() if not p.name.startswith(".")]
    assert len(healed) == 1 and (healed[0] / "datagen_train.json").is_file()
    assert json.loads((healed[0] / "datagen_train.json").read_text())["steps"] == 2
    # the objective starts from the healed student: "before" is not the truncated copy's
    assert first.before["reference_loss"] < plain.before["reference_loss"] - 0.1

    logs.clear()
    other_seed = load_spec(write(tmp_path, bundled_model_path, objective="sft", extra=heal, seed=9, name="h2.yaml"))
    plan = build_plan(other_seed)
    assert healed_student(other_seed, plan, other_seed.spec.train, logs.append, sft_trainer, training_args) \
        == healed[0]
    assert logs == [f"heal: the healed student is cached at {healed[0]}"]
    rows = load_rows(other_seed, plan, "gold", None)
    longer = other_seed.spec.train.model_copy(update={"heal": other_seed.spec.train.heal.model_copy(
        update={"steps": 3})})
    assert heal_key(longer, other_seed.dir, rows) != healed[0].name
