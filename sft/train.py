"""`datagen train SPEC`: train the spec's student on the selected rows, score it before and after, save it.

One function, top to bottom: rows -> student -> score before -> train (TRL) -> score after -> save -> record.
The objective only changes which trainer is built (`TRAINERS`): `sft` is TRL's SFTTrainer on prompt/completion
rows (loss on the assistant tokens only); `kd` is the same trainer with the soft-label loss of sft/kd.py; `dpo`
(sft/dpo.py) also reads different rows, a judge step's pairs. Model loading, LoRA, the scores before and after
(sft/scores.py: held-out rows, `eval.source` references, the objective's own metrics), saving and the `train_runs`
record are shared. `kd.hidden` adds a frozen teacher model beside the student (sft/hidden.py).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from datagen.errors import UserError
from datagen.spec.load import LoadedSpec
from sft.dpo import dpo_trainer, load_pairs
from sft.heal import healed_student


@dataclass
class TrainResult:
    run_id: str
    output: Path
    objective: str
    input: str
    train_rows: int
    eval_rows: int
    steps: int
    train_tokens: int
    train_seconds: float
    train_loss: float
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0


def output_dir(loaded: LoadedSpec, out: str | Path | None = None) -> Path:
    if out is not None:
        return Path(out).expanduser().resolve()
    return loaded.resolve_path(loaded.spec.train.output.replace("{name}", loaded.spec.name)).resolve()


def train(loaded: LoadedSpec, out: str | Path | None = None, max_steps: int | None = None,
          log: Callable[[str], None] = print, generate: Callable | None = None) -> TrainResult:
    """`generate` sends model requests through the run loop (datagen.api hands in its generate_requests): on-policy
    training's samples and scores (sft/onpolicy.py)."""
    from datagen.pipeline.planner import build_plan
    from sft import results
    from sft.evaluate import verifiers
    from sft.rows import load_rows
    from sft.scores import scorer
    from sft.model import load_student, save_student

    settings = loaded.spec.train
    if settings is None:
        raise UserError(f"{loaded.path} has no `train:` block; add one (see specs/train.md)")
    if max_steps is not None:
        settings = settings.model_copy(update={"max_steps": max_steps})
    if all(_is_local(ref, loaded.dir) for ref in _model_refs(settings)):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # only local models: never wait on a hub
    plan = build_plan(loaded)
    healed = healed_student(loaded, plan, settings, log, sft_trainer, training_args)  # None without train.heal
    if settings.objective == "onpolicy":
        from sft.onpolicy import train_onpolicy

        if generate is None:
            raise TypeError("objective onpolicy needs `generate` (datagen.api passes the run loop's)")
        target = output_dir(loaded, out)
        done = train_onpolicy(loaded, plan, settings, target, generate, log, training_args, start=healed)
        return TrainResult(done["run_id"], target, "onpolicy", settings.input, done["train_rows"], 0, done["rounds"],
                           0, 0.0, 0.0, done["before"], done["after"], done["notes"])
    split = settings.eval.split if settings.eval else None
    if settings.objective == "dpo":  # preference pairs (sft/dpo.py), not prompt/completion rows
        rows = load_pairs(loaded, plan, settings.input, split)
    else:
        rows = load_rows(loaded, plan, settings.input, split, settings.prompt, settings.system)
    log(f"training on `{rows.input}`: {len(rows.train)} rows, {len(rows.eval)} held out"
        + (f"; {rows.skipped} rows with an empty output left out" if rows.skipped else "")
        + (f"; reasoning traces {rows.reasoning} (export.reasoning)" if getattr(rows, "reasoning", None) else ""))
    target = output_dir(loaded, out)
    model, tok = load_student(settings, loaded.dir, healed)
    if settings.objective != "dpo":
        from sft.reasoning_check import check_trace_reaches

        check_trace_reaches(tok, rows, settings.max_length)  # before any training time is spent
    eval_kwargs = dict(output_column=rows.output_column, max_length=settings.max_length,
                       max_new_tokens=settings.eval.max_new_tokens if settings.eval else 256,
                       batch_size=settings.batch_size, spec_dir=loaded.dir)
    score = scorer(loaded, plan, settings, tok, rows, verifiers(loaded, rows.output_column), eval_kwargs)
    run_id = results.start_run(loaded.store_path, settings, rows.input, str(target), len(rows.train), len(rows.eval))
    try:
        before = score(model)
        with tempfile.TemporaryDirectory(prefix="datagen-train-") as work:
            trainer, notes = TRAINERS[settings.objective](loaded, plan, settings, model, tok, rows,
                                                          training_args(settings, loaded.spec.seed, work))
            started = time.perf_counter()
            output = trainer.train()
            seconds = time.perf_counter() - started
            model = trainer.model
            tokens = int(getattr(trainer, "_total_train_tokens", 0))
            notes += getattr(trainer, "datagen_notes", lambda: [])()
        after = score(model)
        result = TrainResult(run_id, target, settings.objective, rows.input, len(rows.train), len(rows.eval),
                             output.global_step, tokens, seconds, float(output.training_loss), before, after, notes)
        meta = {"spec": loaded.spec.name, "run_id": run_id, "input": rows.input, "settings": settings.model_dump(),
                "train_rows": len(rows.train), "eval_rows": len(rows.eval), "steps": result.steps,
                "train_loss": result.train_loss, "before": before, "after": after}
        save_student(model, tok, target, meta, loaded.text)
        results.finish_run(loaded.store_path, run_id, steps=result.steps, train_tokens=tokens, train_seconds=seconds,
                        train_loss=result.train_loss, before=before, after={**after, "notes": notes})
    except BaseException as exc:
        results.fail_run(loaded.store_path, run_id, f"{type(exc).__name__}: {exc}")
        raise
    return result


def _model_refs(settings) -> list[str]:
    hidden = settings.kd.hidden if settings.objective == "kd" else None
    return [settings.student] + ([hidden.teacher] if hidden is not None and hidden.teacher else [])


def _is_local(ref: str, spec_dir: Path) -> bool:
    """A bundled model or a folder; anything else is a Hub id, which needs the hub (or the user's HF cache)."""
    from datagen.bundled import resolve_model

    return ref.startswith("bundled:") or Path(resolve_model(ref, spec_dir)).is_dir()


def training_args(settings, seed: int, work_dir: str) -> dict:
    """TrainingArguments every objective shares (its own config class adds the objective's keys)."""
    import torch

    # TRL turns bf16 on by default; on a CPU that runs as autocast on fallback kernels (several times slower than
    # float32 on CPUs without native bf16), so only a GPU that supports it gets bf16.
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dict(
        output_dir=work_dir, bf16=bf16, num_train_epochs=settings.epochs, max_steps=settings.max_steps or -1,
        learning_rate=settings.learning_rate, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size, seed=seed, data_seed=seed, logging_steps=1,
        save_strategy="no", report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
        dataloader_num_workers=0,
    )


def sft_trainer(loaded, plan, settings, model, tok, rows, args: dict):
    """TRL's SFTTrainer on conversational prompt/completion rows: the loss is on the completion tokens only."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from sft.model import lora_config

    notes = []
    if rows.step is not None and plan.step(rows.step).output_is_conversation:  # every assistant turn has the loss
        from sft.trajectories import tokenize_rows

        data = Dataset.from_list(tokenize_rows(rows.train, tok, settings))
        notes.append("multi-turn rows: the loss is on every assistant turn, user and tool turns masked")
    else:
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows.train])
    config = SFTConfig(**args, max_length=settings.max_length, completion_only_loss=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok,
                         peft_config=lora_config(settings.lora))
    return trainer, notes


def kd_trainer(loaded, plan, settings, model, tok, rows, args: dict):
    """SFTTrainer with the soft-label loss over the teacher's stored top-k (sft/kd.py)."""
    from datasets import Dataset
    from trl import SFTConfig
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from sft import kd
    from sft.rows import load_logprobs
    from sft.model import lora_config

    step = plan.step(rows.step)
    teacher_name = step.teachers[0]
    local = kd.check_tokenizers(loaded.spec.teachers[teacher_name], teacher_name, loaded.dir, tok)
    stored = load_logprobs(loaded, [r["row"]["_id"] for r in rows.train])
    token_map = None
    if any((labels.token_ids < 0).any() for labels in stored.values()):
        token_map = kd.TokenMap(tok)
    records, total, unmapped, without = [], 0, 0, 0
    for r in rows.train:
        targets = kd.teacher_targets(stored.get(r["row"]["_id"]), token_map)
        total += len(targets)
        unmapped += targets.unmapped
        without += not len(targets)
        records.append(kd.kd_record(r["prompt"], r["completion"], targets))
    if not local:
        kd.check_mapping(total, unmapped, teacher_name)
    if without == len(records):
        raise UserError(f"no stored teacher logprobs for the rows of `{rows.input}`; run the spec with `logprobs:` "
                        f"on step `{step.name}` first")
    notes = [f"{without} training rows have no stored logprobs and train on CE alone"] if without else []
    if settings.kd.alpha == 0 and not settings.kd.tail:
        notes.append("kd.alpha 0 without kd.tail: the loss sees only how the student spreads its mass among the "
                     "teacher's top k, not how much it puts there (specs/results.md measured students that moved it "
                     "elsewhere); set `tail: true` or alpha > 0")
    if unmapped:
        notes.append(f"{unmapped} of {total} teacher token strings matched no single student token id")
    hidden = None
    if settings.kd.hidden is not None:
        import torch

        from sft.hidden import build_distiller

        device = "cuda" if torch.cuda.is_available() else "cpu"
        hidden = build_distiller(settings, loaded.dir, model, tok, device)
        notes.append(f"hidden-state term: student layers {[s for s, _ in hidden.pairs]} matched to teacher layers "
                     f"{[t for _, t in hidden.pairs]} ({settings.kd.hidden.loss}, weight {hidden.weight})")
    config = SFTConfig(**args, max_length=settings.max_length, completion_only_loss=True)
    collator = kd.KDCollator(DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id), kd.Aligner(tok),
                             k=step.spec.logprobs)
    trainer = kd.make_kd_trainer_class()(
        model=model, args=config, train_dataset=Dataset.from_list(records), processing_class=tok,
        peft_config=lora_config(settings.lora), data_collator=collator, kd_settings=settings.kd, hidden=hidden)

    def coverage() -> list[str]:
        share = collator.aligned / collator.positions if collator.positions else 0.0
        return [f"teacher top-k matched {collator.aligned} of {collator.positions} completion tokens "
                f"({share:.0%}); the rest trained on CE alone"]

    trainer.datagen_notes = coverage
    return trainer, notes


TRAINERS = {"sft": sft_trainer, "kd": kd_trainer, "dpo": dpo_trainer}  # dpo: TRL's DPOTrainer on judge pairs
