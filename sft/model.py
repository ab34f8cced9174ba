"""The student: loading it (bundled, a local folder, or a truncated copy), its LoRA config, and saving it.

Shared by every objective (sft, kd, and later dpo), so each trainer only differs in its data and its loss.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from datagen.errors import UserError


def load_student(train, spec_dir: Path, healed: Path | None = None):
    """(model, tokenizer) in float32 on CPU (bf16 matmuls are slow on CPUs without native bf16), as `train` says;
    from `healed` (sft/heal.py: already truncated and healed) when given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.bundled import resolve_model

    try:
        path = str(healed) if healed is not None else resolve_model(train.student, spec_dir)
    except UserError as exc:  # said again with the key it came from
        raise UserError(f"train.student: {exc}") from None
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(train, "chat_template", None):  # saved with the student, so it answers in the form it learned
        tok.chat_template = (Path(spec_dir or ".") / train.chat_template).read_text(encoding="utf-8")
    dtype = torch.float32 if not torch.cuda.is_available() else "auto"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if train.init == "truncate" and healed is None:
        truncate_layers(model, train.keep_layers)
    return model, tok


def decoder_layers(model):
    """The decoder's ModuleList (llama, qwen, mistral, gemma, phi keep it at model.model.layers)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise UserError(f"init: truncate needs a decoder whose layers are at `model.layers` (llama, qwen, mistral "
                        f"families); {type(model).__name__} keeps them elsewhere")
    return layers


def default_keep(n: int) -> list[int]:
    """The layers `init: truncate` keeps by default: half of them (rounded up), as the first third of those from
    the bottom of the stack and the rest from its top, so the first and the last layer are kept and one block of
    the middle is dropped (for 30 layers: 0-4 and 20-29).

    Why this shape (measured on the bundled 30-layer SmolLM2-135M-Instruct, mean NLL per token of human-written
    answers, ln V = 10.80 for its 49,152 tokens): every other layer (0, 2, ..., 28, which drops the last) 12.7 nats
    on GSM8K solutions; every other layer evenly spaced with the first and the last 12.6; the first 14 and the last
    19.1; one dropped middle block keeping 3 to 9 layers from the bottom 5.9 to 8.5, best at 5 (5.9 on GSM8K, 6.9
    on Self-Instruct's seed answers; the whole model 1.5). A small model's layers each write to the residual
    stream in a form the next one expects; a cut every other layer breaks every junction, one cut breaks one
    (Gromov et al., 2024, and ShortGPT drop one block of deep layers and keep the last)."""
    if n <= 2:
        return list(range(n))
    m = (n + 1) // 2
    bottom = max(1, m // 3)
    return list(range(bottom)) + list(range(n - (m - bottom), n))


def truncate_layers(model, keep: list[int] | None) -> list[int]:
    """Keep only the listed decoder layers (default: `default_keep`, half of them, first and last included), in
    order.

    The classic way to make a student to distil into (DistilBERT kept every other layer of BERT): the copy starts
    with the teacher's embeddings, head and half its layers, so it begins near the teacher rather than at random.
    """
    import torch

    layers = decoder_layers(model)
    n = len(layers)
    keep = sorted(keep) if keep is not None else default_keep(n)
    bad = [i for i in keep if i >= n]
    if bad:
        raise UserError(f"train.keep_layers: {bad} out of range; the model has {n} layers (0 to {n - 1})")
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(kept):
        attn = getattr(layer, "self_attn", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = new_index  # the KV cache is indexed by it
    model.model.layers = kept
    config = model.config
    config.num_hidden_layers = len(keep)
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == n:
        config.layer_types = [config.layer_types[i] for i in keep]
    return keep


def lora_config(lora):
    """PEFT config for the spec's `lora:` block (None trains every weight)."""
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type="CAUSAL_LM")


def save_student(model, tok, out: Path, meta: dict, spec_text: str | None = None) -> Path:
    """A folder transformers and vLLM load: LoRA merged into the weights, the tokenizer with its chat template,
    the spec (`spec.yaml`) and the training settings and results (`datagen_train.json`) beside them.

    Written to a temporary folder and renamed into place, so the output folder is never half-written."""
    from datagen.bundled import chmod_by_umask

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "datagen_train.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
        if spec_text is not None:
            (tmp / "spec.yaml").write_text(spec_text)
        chmod_by_umask(tmp)  # mkdtemp made it owner-only
        if out.exists():
            old = out.with_name(f".{out.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
