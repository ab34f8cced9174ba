"""`train.heal`: a short cross-entropy training of the student before its objective, cached and shared.

A truncated student starts damaged (sft/model.py default_keep measures how much); an experiment that compares
objectives or data should start every arm from the same working student, not let each arm's training repair the cut
its own way. The heal trains every weight (no LoRA) for `heal.steps` optimiser steps of plain CE (TRL's SFTTrainer,
the `sft` objective) on `heal.input`: a step, `curated`, or a source with `prompt` and `completion` columns (its
`prompt` column the user turn). Then `datagen train` starts from the healed student, whatever its objective, and
scores it as "before".

Cached: the healed student is saved once under `<datagen cache>/healed/<key>` (DATAGEN_CACHE moves the cache), where
the key is a hash of everything that determines it: the student's model (its resolved folder and the size and time
of its weight files), `init` and `keep_layers`, the chat template, `max_length`, the heal's settings (steps,
learning rate, batch size, its own seed) and the text of its rows. The spec's seed and objective are not in it, so
every arm and every seed of an experiment reuses one healed student. Written to a temporary folder and renamed into
place (sft/model.py save_student), so two runs starting at once cannot leave a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from collections.abc import Callable

KEEP_RULE = "default_keep v1"  # in the key, so a change of sft/model.py default_keep makes a new healed student


def heal_key(settings, spec_dir: Path, rows) -> str:
    """The cache key of the healed student (the module doc lists what is in it)."""
    from datagen.bundled import resolve_model

    folder = Path(resolve_model(settings.student, spec_dir))
    weights = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.glob("*.safetensors")) \
        if folder.is_dir() else []
    template = (Path(spec_dir or ".") / settings.chat_template).read_text(encoding="utf-8") \
        if settings.chat_template else None
    text = [[r["prompt"], r["completion"]] for r in rows.train]
    what = {"student": str(folder), "weights": weights, "init": settings.init, "keep_layers": settings.keep_layers,
            "keep_rule": KEEP_RULE, "chat_template": template, "max_length": settings.max_length,
            "heal": settings.heal.model_dump(exclude={"input"}),
            "rows": hashlib.sha256(json.dumps(text, sort_keys=True).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]


def healed_student(loaded, plan, settings, log: Callable[[str], None], make_trainer: Callable,
                   training_args: Callable) -> Path | None:
    """The healed student's folder (trained now if the cache lacks it), or None without `train.heal`.
    `make_trainer` and `training_args` are sft/train.py's sft_trainer and training_args."""
    from datagen.bundled import cache_dir
    from sft.model import load_student, save_student
    from sft.rows import load_rows

    heal = settings.heal
    if heal is None:
        return None
    rows = load_rows(loaded, plan, heal.input, None)
    folder = cache_dir() / "healed" / heal_key(settings, loaded.dir, rows)
    if (folder / "datagen_train.json").is_file():
        log(f"heal: the healed student is cached at {folder}")
        return folder
    log(f"heal: {heal.steps} steps of CE on `{rows.input}` ({len(rows.train)} rows) before the objective")
    model, tok = load_student(settings.model_copy(update={"heal": None}), loaded.dir)
    healing = settings.model_copy(update={"objective": "sft", "lora": None, "max_steps": heal.steps, "epochs": 1,
                                          "learning_rate": heal.learning_rate, "batch_size": heal.batch_size,
                                          "heal": None})
    with tempfile.TemporaryDirectory(prefix="datagen-heal-") as work:
        trainer, _ = make_trainer(loaded, plan, healing, model, tok, rows, training_args(healing, heal.seed, work))
        started = time.perf_counter()
        output = trainer.train()
        seconds = time.perf_counter() - started
    meta = {"heal": heal.model_dump(), "student": settings.student, "init": settings.init,
            "keep_layers": settings.keep_layers, "rows": len(rows.train), "steps": output.global_step,
            "train_loss": float(output.training_loss), "train_seconds": seconds,
            "train_tokens": int(getattr(trainer, "_total_train_tokens", 0))}
    save_student(trainer.model, tok, folder, meta)
    log(f"heal: {output.global_step} steps in {seconds:.0f} s (loss {float(output.training_loss):.4f}); saved "
        f"{folder}")
    return folder
