"""The example specs/feedback_loop.yaml end to end on the bundled model: the student samples, the teacher judges
(JSON verdicts through vLLM's guided decoding), pairs are built, DPO trains and is evaluated before and after, the
trained student folder then samples as a generator. Both teachers go through the session's vLLM server (no extra
engine start); sizes are cut down. The 135M judge is often wrong, so this asserts what the pipeline guarantees."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.test_e2e_vllm import datagen, query_json

ROOT = Path(__file__).resolve().parent.parent


def example(tmp_path: Path, base_url: str) -> Path:
    spec = yaml.safe_load((ROOT / "specs" / "feedback_loop.yaml").read_text())
    for name in ("student", "judge"):  # the judge keeps the example's max_tokens: its verdict must fit
        teacher = spec["teachers"][name]
        sampling = {**teacher["sampling"], "max_tokens": 96} if name == "student" else teacher["sampling"]
        spec["teachers"][name] = {"backend": "openai", "base_url": base_url, "model": "smollm2", "sampling": sampling}
    spec["sources"]["problems"].update(path=str(ROOT / "specs" / "data" / "gsm8k_train_500.jsonl"), limit=4)
    spec["train"].update(max_steps=2, batch_size=2)
    path = tmp_path / "feedback_loop.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_feedback_loop_example_end_to_end(tmp_path, vllm_server):
    spec = example(tmp_path, vllm_server)
    out = datagen("run", str(spec), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    n = yaml.safe_load(spec.read_text())["steps"][0]["n"]
    attempts = query_json(spec, "select _id, _parent_id from attempt")
    assert len(attempts) == 4 * n
    grades = query_json(spec, "select score, score_reason, _parent_id from grade")
    failed = query_json(spec, "select error from requests where step = 'grade' and status = 'failed'")
    assert len(grades) + len(failed) == len(attempts)
    assert all(g["score"] == int(g["score"]) and 1 <= g["score"] <= 10 for g in grades)
    pairs = query_json(spec, "select _id, chosen_id, rejected_id, chosen_score - rejected_score as margin from pairs")
    assert pairs, "no pairs: " + json.dumps(query_json(spec, "select reason from decisions"))
    assert all(p["margin"] >= 2 for p in pairs)
    for p in pairs:
        roles = query_json(spec, f"select parent_id, role from lineage where child_id = '{p['_id']}' order by role")
        assert roles == [{"parent_id": p["chosen_id"], "role": "chosen"},
                         {"parent_id": p["rejected_id"], "role": "rejected"}]
    out = datagen("train", str(spec), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "held-out preference accuracy" in out.stdout and "log-prob margin" in out.stdout, out.stdout
    runs = query_json(spec, "select objective, status, steps, loss_before, loss_after, metrics_before, "
                            "metrics_after from train_runs")
    assert runs[-1]["objective"] == "dpo" and runs[-1]["status"] == "done" and runs[-1]["steps"] == 2
    assert runs[-1]["loss_before"] > 0 and runs[-1]["loss_after"] > 0
    for when in ("metrics_before", "metrics_after"):
        metrics = json.loads(runs[-1][when])
        assert 0 <= metrics["preference_accuracy"] <= 1 and "logp_margin" in metrics
    student = tmp_path / "out" / "student"
    assert (student / "config.json").is_file() and (student / "model.safetensors").is_file()
    out = datagen("export", str(spec))
    assert out.returncode == 0, out.stderr[-3000:]
    # the trained student as a generator: a teacher entry pointing at its folder, two samples per input
    again = tmp_path / "round2.yaml"
    again.write_text(f"""\
name: round2
teachers:
  student: {{backend: transformers, model: out/student, sampling: {{temperature: 1.0, max_tokens: 12}}}}
sources:
  problems: {{path: {ROOT / "specs" / "data" / "gsm8k_train_500.jsonl"}, limit: 2}}
steps:
  - {{name: attempt, strategy: label, teacher: student, input: problems, prompt: "{{{{ question }}}}", n: 2,
     output: solution}}
""")
    out = datagen("run", str(again), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(query_json(again, "select solution from attempt where _teacher = 'student'")) == 4
