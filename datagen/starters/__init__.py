"""`datagen init`: starter specs with their data, one per common workflow, each valid as written and small enough
to run on the bundled model on a CPU. The specs and data are files beside this module (package data)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from datagen.errors import UserError

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Starter:
    spec: str  # the spec file beside this module
    data: tuple[str, ...]  # files in data/ it reads
    summary: str


TEMPLATES: dict[str, Starter] = {
    "label": Starter("label.yaml", ("gsm8k_60.jsonl",),
                     "a teacher answers inputs you have (8 GSM8K problems, 2 samples each), with demonstrations"),
    "reasoning": Starter("reasoning.yaml", ("gsm8k_60.jsonl",),
                         "reasoning traces kept apart and budgeted (s1), kept when the answer is verified correct"),
    "self-instruct": Starter("self-instruct.yaml", ("self_instruct_seed_60.jsonl",),
                             "new tasks invented from seed tasks (ROUGE-L novelty), then answered"),
    "feedback": Starter("feedback.yaml", ("gsm8k_60.jsonl",),
                        "a student answers, a teacher judges, preference pairs, DPO training"),
    "curate": Starter("curate.yaml", ("gsm8k_60.jsonl",),
                      "curate data you already have: no teachers or steps, filters, dedup, a diverse hard subset"),
}


def write_starter(template: str, folder: Path) -> Path:
    """Write the template's spec and data into `folder`; returns the spec's path. Never overwrites a file with other
    content (two templates in one folder share their data files)."""
    starter = TEMPLATES.get(template)
    if starter is None:
        raise UserError(f"no template `{template}`; choose one of: {', '.join(TEMPLATES)} (`datagen init --list`)")
    spec = folder / starter.spec
    files = [(HERE / starter.spec, spec)] + [(HERE / "data" / f, folder / "data" / f)
                                              for f in starter.data + ("README.md",)]
    taken = [str(dst) for src, dst in files if dst.exists() and dst.read_bytes() != src.read_bytes()]
    if taken:
        raise UserError(f"{', '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; choose another folder "
                        f"(`datagen init {template} FOLDER`) or move them away")
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for src, dst in files:
        shutil.copyfile(src, dst)
    return spec
