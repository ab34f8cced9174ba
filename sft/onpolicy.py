"""On-policy distillation (`objective: onpolicy`): the student learns from the teacher on the student's own text.

Each round, top to bottom:
1. the current student samples answers to the prompts (`train.input` rendered with `train.prompt`), as requests of
   the run loop under the pseudo-step `_onpolicy` (keyed by the round, the student's weights and the prompt, so a
   killed round resumes where it stopped and never samples twice);
2. the teacher scores every sample (`_onpolicy_score`: a score request each, datagen/strategies/score.py, its top k
   at every sampled token, lineage to the sample);
3. the student trains on those rows with the soft-label loss of sft/kd.py and no CE term (CE on its own samples
   would teach it what it already says): per-token reverse KL(student || teacher) by default (GKD, MiniLLM),
   forward or their mean by `onpolicy.divergence`, with the mass outside the teacher's top k as one more class
   (`onpolicy.tail`);
4. the round's student is saved under `<output>.rounds/round-N` (beside the output folder, which the last round's
   student replaces at the end) and `train_runs` records the round (its `round`
   and the run it belongs to); the next round samples from it.

A re-run after a kill starts at the first round without a finished record, from the last saved student; what the
killed round had sampled and scored is in the store and is reused. The last round's student is also saved as the
output folder, scored before and after on `eval.source` where the spec names one.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from collections.abc import Callable

from datagen import templates
from datagen.errors import UserError
from datagen.keys import request_key

SAMPLE_STEP = "_onpolicy"
SCORE_STEP = "_onpolicy_score"


def prompt_rows(loaded, settings) -> list[tuple[str, list[dict]]]:
    """(row id, the messages put to the student) for every row of `train.input`."""
    from datagen.store import reads
    from datagen.store.connection import open_store

    con = open_store(loaded.store_path, read_only=True)
    try:
        rows = reads.rows(con, settings.input)
    except Exception as exc:  # noqa: BLE001  a source or step the store does not hold yet
        raise UserError(f"train.input: cannot read `{settings.input}` from the store ({type(exc).__name__}); run "
                        "`datagen run SPEC` first") from None
    finally:
        con.close()
    out = []
    for row in rows:
        context = {k: v for k, v in row.items() if not k.startswith("_")}
        system = [{"role": "system", "content": templates.render(settings.system, context)}] if settings.system else []
        out.append((row["_id"], system + [{"role": "user", "content": templates.render(settings.prompt, context)}]))
    return out


def student_spec(path: Path, sample_with: str):
    """The student as a teacher of the run loop, at one checkpoint folder."""
    from datagen.spec.models import TransformersTeacherSpec, VLLMTeacherSpec

    if sample_with == "vllm":
        return VLLMTeacherSpec(backend="vllm", model=str(path))
    return TransformersTeacherSpec(backend="transformers", model=str(path))


def draw(prompts: list, how_many: int | None, seed: int, rnd: int) -> list:
    if how_many is None or how_many >= len(prompts):
        return prompts
    return sorted(random.Random(f"{seed}\0onpolicy\0{rnd}").sample(prompts, how_many), key=prompts.index)


def sample_round(generate, loaded, settings, rnd: int, path: Path, prompts: list) -> dict[str, tuple]:
    """The student's samples of one round: key -> (output row id, text, prompt messages)."""
    from datagen.strategies.base import PlannedRequest
    from datagen.teachers import teacher_identity

    op = settings.onpolicy
    spec = student_spec(path, op.sample_with)
    identity = teacher_identity(spec, loaded.dir)
    sampling = {"temperature": op.temperature, "max_tokens": op.max_tokens, "seed": loaded.spec.seed + rnd}
    requests = []
    for row_id, messages in draw(prompts, op.prompts, loaded.spec.seed, rnd):
        for i in range(op.samples):
            key = request_key(step=SAMPLE_STEP, parent_id=row_id, messages=messages, teacher=identity,
                              sampling=sampling, json_schema=None, logprobs=None, sample_index=i,
                              extra={"round": rnd})
            requests.append(PlannedRequest(key, SAMPLE_STEP, row_id, i, messages, "student",
                                           fields={"round": rnd, "student": str(path)}))
    generate(SAMPLE_STEP, "student", spec, requests, sampling)
    done = _outputs(loaded, [r.key for r in requests])
    return {r.key: (done[r.key]["_id"], done[r.key]["text"], r.messages) for r in requests
            if r.key in done and done[r.key]["text"]}


def score_round(generate, loaded, plan, settings, rnd: int, samples: dict[str, tuple]) -> list[tuple[str, str, list]]:
    """The teacher's scores of one round's samples: (score row id, sample text, prompt messages)."""
    from datagen.strategies.base import PlannedRequest
    from datagen.teachers import teacher_identity

    op = settings.onpolicy
    spec = loaded.spec.teachers[op.teacher]
    identity = teacher_identity(spec, loaded.dir)
    requests = []
    for sample_id, text, messages in samples.values():
        key = request_key(step=SCORE_STEP, parent_id=sample_id, messages=messages, teacher=identity, sampling={},
                          json_schema=None, logprobs=op.logprobs, sample_index=0, extra={"score": text})
        requests.append(PlannedRequest(key, SCORE_STEP, sample_id, 0, messages, op.teacher, fields={"round": rnd},
                                       continuation=text))
    generate(SCORE_STEP, op.teacher, spec, requests, {}, logprobs=op.logprobs)
    done = _outputs(loaded, [r.key for r in requests])
    return [(done[r.key]["_id"], r.continuation, r.messages) for r in requests if r.key in done]


def _outputs(loaded, keys: list[str]) -> dict[str, dict]:
    from datagen.store import reads
    from datagen.store.connection import open_store

    con = open_store(loaded.store_path, read_only=True)
    try:
        return reads.outputs_of(con, keys)
    finally:
        con.close()


def train_round(loaded, settings, path: Path, scored: list[tuple], args: dict):
    """One round's training: the student at `path` on its own samples with the teacher's soft labels."""
    from datasets import Dataset
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from sft import kd
    from sft.model import load_student, lora_config
    from sft.rows import load_logprobs

    op = settings.onpolicy
    model, tok = load_student(settings.model_copy(update={"student": str(path), "init": "pretrained",
                                                          "keep_layers": None}), loaded.dir)
    stored = load_logprobs(loaded, [row_id for row_id, _, _ in scored])
    records = [kd.kd_record(messages, [{"role": "assistant", "content": text}],
                            kd.teacher_targets(stored.get(row_id), None))
               for row_id, text, messages in scored]
    loss = settings.kd.model_copy(update={"alpha": 0.0, "temperature": 1.0, "divergence": op.divergence,
                                          "tail": op.tail, "hidden": None})
    config = SFTConfig(**args, max_length=settings.max_length, completion_only_loss=True)
    collator = kd.KDCollator(DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id), kd.Aligner(tok),
                             k=op.logprobs)
    trainer = kd.make_kd_trainer_class()(
        model=model, args=config, train_dataset=Dataset.from_list(records), processing_class=tok,
        peft_config=lora_config(settings.lora), data_collator=collator, kd_settings=loss)
    started = time.perf_counter()
    output = trainer.train()
    return trainer.model, tok, output, time.perf_counter() - started, int(getattr(trainer, "_total_train_tokens", 0))


def rounds_dir(target: Path) -> Path:
    """Where each round's student goes: beside the output folder (saving the final student replaces that folder)."""
    return target.parent / f"{target.name}.rounds"


def initial_student(loaded, settings, target: Path, start: Path | None = None) -> Path:
    """Round 0's student: the healed student (`train.heal`, sft/heal.py), the named model's folder, or
    (`init: truncate`) its truncated copy, saved once."""
    from datagen.bundled import resolve_model
    from sft.model import load_student, save_student

    if start is not None:
        return start
    if settings.init != "truncate":
        return Path(resolve_model(settings.student, loaded.dir))
    folder = rounds_dir(target) / "init"
    if not (folder / "datagen_train.json").is_file():
        model, tok = load_student(settings, loaded.dir)
        save_student(model, tok, folder, {"init": "truncate", "keep_layers": settings.keep_layers})
    return folder


def train_onpolicy(loaded, plan, settings, target: Path, generate: Callable, log: Callable[[str], None],
                   training_args: Callable, start: Path | None = None) -> dict:
    """Every round not finished yet, then the final student at `target`: what sft/train.py's TrainResult holds.
    `training_args(settings, seed, work_dir)` is sft/train.py's; `start`, the healed student (sft/heal.py)."""
    from sft import results
    from sft.model import save_student

    op = settings.onpolicy
    prompts = prompt_rows(loaded, settings)
    if not prompts:
        raise UserError(f"train.input: `{settings.input}` has no rows to prompt the student with")
    path = initial_student(loaded, settings, target, start)
    first = path
    run_of = uuid.uuid4().hex[:16]
    for rnd in range(op.rounds):
        folder = rounds_dir(target) / f"round-{rnd}"
        meta = _saved(folder, rnd)
        if meta is not None:  # finished on an earlier run: its folder is written before its record is closed
            run_of = meta["parent_run"]
            results.close_saved_run(loaded.store_path, meta)
            path = folder
            continue
        log(f"on-policy round {rnd + 1}/{op.rounds}: the student at {path} samples {len(prompts)} prompts")
        samples = sample_round(generate, loaded, settings, rnd, path, prompts)
        scored = score_round(generate, loaded, plan, settings, rnd, samples)
        if not scored:
            raise UserError(f"on-policy round {rnd + 1}: no sample of the student was scored by `{op.teacher}`; see "
                            "`datagen status` for the failed requests")
        run_id = results.start_run(loaded.store_path, settings, f"{SCORE_STEP} round {rnd}", str(folder),
                                   len(scored), 0, round_=rnd, parent_run=run_of)
        try:
            with _work_dir() as work:
                model, tok, output, seconds, tokens = train_round(loaded, settings, path, scored,
                                                                  training_args(settings, loaded.spec.seed + rnd,
                                                                                work))
            meta = {"spec": loaded.spec.name, "run_id": run_id, "parent_run": run_of, "round": rnd, "from": str(path),
                    "samples": len(samples), "scored": len(scored), "steps": output.global_step,
                    "train_tokens": tokens, "train_seconds": seconds, "train_loss": float(output.training_loss)}
            save_student(model, tok, folder, meta, loaded.text)
            results.close_saved_run(loaded.store_path, meta)
        except BaseException as exc:
            results.fail_run(loaded.store_path, run_id, f"{type(exc).__name__}: {exc}")
            raise
        log(f"on-policy round {rnd + 1}/{op.rounds}: {len(scored)} scored samples, loss "
            f"{float(output.training_loss):.4f}, saved {folder}")
        path = folder
    final = _final(loaded, plan, settings, first, path, target, save_student)
    return {"run_id": run_of, "train_rows": len(prompts), "rounds": op.rounds, **final}


def _saved(folder: Path, rnd: int) -> dict | None:
    """A round's saved student's record (datagen_train.json, written with the weights), or None."""
    import json

    meta_path = folder / "datagen_train.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return meta if meta.get("round") == rnd and meta.get("parent_run") else None


def _final(loaded, plan, settings, first: Path, last: Path, target: Path, save_student) -> dict:
    """The last round's student as the output folder, with `eval.source` scores of the first and the last."""
    from sft.model import load_student

    model, tok = load_student(settings.model_copy(update={"student": str(last), "init": "pretrained",
                                                          "keep_layers": None}), loaded.dir)
    score = source_scorer(loaded, plan, settings, tok)
    before, after = {}, {}
    if score is not None:
        first_model, _ = load_student(settings.model_copy(update={"student": str(first), "init": "pretrained",
                                                                  "keep_layers": None}), loaded.dir)
        before, after = score(first_model), score(model)
    save_student(model, tok, target, {"spec": loaded.spec.name, "objective": "onpolicy", "rounds":
                                      settings.onpolicy.rounds, "before": before, "after": after}, loaded.text)
    notes = [f"{settings.onpolicy.rounds} on-policy rounds; each round's student in {rounds_dir(target)}"]
    return {"before": before, "after": after, "notes": notes}


def source_scorer(loaded, plan, settings, tok):
    """`eval.source` put to the student with `train.prompt` (None without one): its reference loss, and accuracy
    where `eval.verify: math` asks for it."""
    if settings.eval is None or settings.eval.source is None:
        return None
    from sft import eval_source

    spec = settings.eval
    records = eval_source.template_records(loaded, plan, settings)
    checks = [eval_source.math_verifier("output", spec.reference)] if spec.verify == "math" else []
    kwargs = dict(output_column="output", max_length=settings.max_length, max_new_tokens=spec.max_new_tokens,
                  batch_size=settings.batch_size, spec_dir=loaded.dir)
    return lambda model: eval_source.evaluate_source(model, tok, records, checks, spec.source, **kwargs)


def _work_dir():
    import tempfile

    return tempfile.TemporaryDirectory(prefix="datagen-onpolicy-")
