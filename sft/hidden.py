"""`kd.hidden`: hidden-state distillation from a white-box teacher (DistilBERT's cosine loss), a term of `kd`.

The teacher model (`kd.hidden.teacher`, default `train.student`, the model a truncated student was copied from) runs
beside the student on every training batch, frozen, in eval mode and without gradients, and the outputs of chosen
student layers are pulled toward the outputs of teacher layers:

    H = mean over layer pairs of the mean over the row's real tokens of  1 - cos(h_s, h_t)   (loss: cosine)
                                                                      or  mean((h_s - h_t)^2)  (loss: mse)
    loss = alpha * CE + (1 - alpha) * T^2 * D + weight * H

Every non-padding token counts, prompt and answer alike: the hidden states carry the teacher's reading of the prompt
too (DistilBERT matched every token). Layer outputs are caught with forward hooks on the decoder layers, so the
pairs are exactly "the output of layer i" on both sides (HF's `hidden_states` tuple ends with the final norm applied
to the last entry only, which would make the last pair unlike the others).

Normalised states (`norm`): both sides' outputs pass through the same map before the loss. `final` (the default):
the teacher's own final norm (frozen), the map the model applies before its head, so the last pair compares exactly
what the two heads read, and in every pair the few residual dimensions of very large magnitude count as much as the
head lets them, not as much as their size; `rms`: a parameter-free RMS normalisation (h / rms(h)), which leaves
`cosine` unchanged and makes `mse` blind to the residual stream's growth with depth; `none`: the raw outputs.

Layers (`layers: auto`): a student made with `init: truncate` from the teacher's own model maps each kept layer to
the teacher layer it was copied from (student i -> keep_layers[i]; the default keeps the first and the last layer,
sft/model.py default_keep, so the last maps to the last, whose output the head reads); a student as deep as the
teacher maps layer to layer; otherwise student layer i maps to teacher layer round((i + 1) * L_t / L_s) - 1 (evenly
spaced, last to last). `{student_layer: teacher_layer}` sets the pairs by hand.

Teacher and student must share a tokenizer (the teacher reads the student's token ids) and a hidden size, unless
`project: true`: then a learned linear map per layer pair carries student states to the teacher's size. It trains
with the student (same optimiser) and is dropped after training: it lives on the trainer, never in the saved model.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from datagen.errors import UserError


def teacher_ref(train) -> str:
    return train.kd.hidden.teacher or train.student


def read_config(ref: str, spec_dir) -> dict | None:
    """A model's config.json, or None when it is not a local folder (a hub id is checked when it loads)."""
    from datagen.bundled import resolve_model

    path = Path(resolve_model(ref, spec_dir)) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    return config.get("text_config", config)  # multimodal configs keep the language model's inside


def size_error(student: int, teacher: int) -> str | None:
    if student == teacher:
        return None
    return (f"the teacher's hidden size is {teacher} and the student's {student}, so their hidden states cannot be "
            "compared; set `kd.hidden.project: true` (a learned linear map, dropped after training) or use a teacher "
            "of the student's size")


def layer_pairs(hidden, init: str, keep_layers, n_student: int, n_teacher: int,
                same_model: bool) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs for `kd.hidden.layers` (see the module doc)."""
    if isinstance(hidden.layers, dict):
        pairs = sorted(hidden.layers.items())
        for s, t in pairs:
            if s >= n_student or t >= n_teacher:
                raise UserError(f"kd.hidden.layers: {s}: {t} is out of range; the student has {n_student} layers "
                                f"(0 to {n_student - 1}) and the teacher {n_teacher} (0 to {n_teacher - 1})")
        return pairs
    if init == "truncate" and same_model:
        from sft.model import default_keep

        keep = sorted(keep_layers) if keep_layers is not None else default_keep(n_teacher)
        return list(enumerate(keep))
    if n_student == n_teacher:
        return [(i, i) for i in range(n_student)]
    return [(i, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student)]


def layer_list(model):
    """The decoder layers of a (possibly PEFT-wrapped) causal LM."""
    from sft.model import decoder_layers

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return decoder_layers(base)


@contextmanager
def catch_outputs(model, indices: list[int]):
    """{layer index: that decoder layer's output} for one forward pass, through forward hooks."""
    layers = layer_list(model)
    caught: dict[int, object] = {}
    handles = []
    for i in set(indices):
        def hook(module, args, output, i=i):
            caught[i] = output[0] if isinstance(output, tuple) else output
        handles.append(layers[i].register_forward_hook(hook))
    try:
        yield caught
    finally:
        for h in handles:
            h.remove()


def state_loss(student, teacher, mask, kind: str):
    """Mean over the masked positions of 1 - cos (cosine) or of the mean squared difference (mse)."""
    import torch.nn.functional as F

    student, teacher = student.float(), teacher.float()
    if kind == "cosine":
        per_pos = 1 - F.cosine_similarity(student, teacher, dim=-1)
    else:
        per_pos = (student - teacher).pow(2).mean(-1)
    mask = mask.to(per_pos.dtype)
    return (per_pos * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class HiddenDistiller:
    teacher: object  # the frozen teacher model
    pairs: list[tuple[int, int]]
    kind: str  # cosine | mse
    weight: float
    project: object = None  # torch ModuleDict "student layer" -> Linear, with `project: true`
    norm: object = None  # states -> normalised states (both sides), or None for the raw outputs

    def student_layers(self) -> list[int]:
        return [s for s, _ in self.pairs]

    def loss(self, caught: dict, inputs: dict):
        """H for one batch, given the student's caught layer outputs; runs the teacher on the same inputs."""
        import torch

        device = caught[self.pairs[0][0]].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(inputs["input_ids"].shape, device=device)
        base = self.teacher.get_decoder() if hasattr(self.teacher, "get_decoder") else self.teacher.model
        with torch.no_grad(), catch_outputs(self.teacher, [t for _, t in self.pairs]) as teacher_out:
            base(**{k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")},
                 use_cache=False)
        terms = []
        for s, t in self.pairs:
            states = caught[s]
            if self.project is not None:
                states = self.project[str(s)](states.to(self.project[str(s)].weight.dtype))
            target = teacher_out[t]
            if self.norm is not None:
                states, target = self.norm(states), self.norm(target)
            terms.append(state_loss(states, target, mask, self.kind))
        return torch.stack(terms).mean()


def build_distiller(train, spec_dir, student, student_tok, device) -> HiddenDistiller:
    """The teacher loaded and frozen, the layer pairs resolved, and the projections made when asked for."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.bundled import resolve_model

    hidden = train.kd.hidden
    ref = teacher_ref(train)
    try:
        path = resolve_model(ref, spec_dir)
    except UserError as exc:  # said again with the key it came from
        raise UserError(f"kd.hidden.teacher: {exc}") from None
    if AutoTokenizer.from_pretrained(path).get_vocab() != student_tok.get_vocab():
        raise UserError(f"kd.hidden.teacher `{ref}` does not share the student's tokenizer, and it reads the "
                        "student's token ids; use a teacher of the student's family")
    dtype = torch.float32 if not torch.cuda.is_available() else "auto"
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval().requires_grad_(False).to(device)
    s_conf, t_conf = student.config.get_text_config(), teacher.config.get_text_config()
    if not hidden.project and (message := size_error(s_conf.hidden_size, t_conf.hidden_size)):
        raise UserError(f"kd.hidden: {message}")
    same = ref == train.student or str(path) == str(resolve_model(train.student, spec_dir))
    pairs = layer_pairs(hidden, train.init, train.keep_layers, len(layer_list(student)), len(layer_list(teacher)),
                        same)
    project = None
    if hidden.project:
        project = torch.nn.ModuleDict({str(s): torch.nn.Linear(s_conf.hidden_size, t_conf.hidden_size, bias=False)
                                       for s, _ in pairs}).to(device)
    return HiddenDistiller(teacher, pairs, hidden.loss, hidden.weight, project, normaliser(hidden.norm, teacher))


def normaliser(norm: str, teacher):
    """`kd.hidden.norm` as a function of states (None for `none`)."""
    if norm == "none":
        return None
    if norm == "rms":
        return lambda h: h.float() * h.float().pow(2).mean(-1, keepdim=True).add(1e-6).rsqrt()
    base = teacher.get_decoder() if hasattr(teacher, "get_decoder") else getattr(teacher, "model", None)
    final = getattr(base, "norm", None)
    if final is None:
        raise UserError("kd.hidden.norm: final needs the teacher's final norm at `model.norm` (llama, qwen, mistral "
                        f"families); {type(teacher).__name__} keeps it elsewhere: set `norm: rms` or `norm: none`")
    return lambda h: final(h.to(final.weight.dtype))


def check_hidden(loaded) -> None:
    """`datagen validate`: a known teacher; when the configs are local folders, the same hidden size (or `project`)
    and layer indices in range."""
    from datagen.bundled import SMOLLM2

    train = loaded.spec.train
    hidden = train.kd.hidden
    ref = teacher_ref(train)
    where = ("train", "kd", "hidden")
    at_teacher = where + ("teacher",) if hidden.teacher else where  # a default has no line of its own to point at
    if ref.startswith("bundled:") and ref != SMOLLM2:
        raise loaded.error(at_teacher, f"unknown bundled model `{ref}`; the bundled chat model is {SMOLLM2}")
    compare_sizes = ref != train.student and not hidden.project
    if not compare_sizes and not isinstance(hidden.layers, dict):
        return  # nothing to check without reading a config
    try:
        student = read_config(train.student, loaded.dir)
        teacher = student if ref == train.student else read_config(ref, loaded.dir)
    except UserError as exc:  # said again at the key it came from
        raise loaded.error(at_teacher, str(exc)) from None
    if not student or not teacher:
        return  # a hub id: checked when it loads
    sizes = student.get("hidden_size"), teacher.get("hidden_size")
    if compare_sizes and all(sizes) and (message := size_error(*sizes)):
        raise loaded.error(at_teacher, message)
    if isinstance(hidden.layers, dict) and "num_hidden_layers" in student and "num_hidden_layers" in teacher:
        n = student["num_hidden_layers"]
        from sft.model import default_keep

        kept = n if train.init != "truncate" else len(train.keep_layers or default_keep(n))
        try:
            layer_pairs(hidden, train.init, train.keep_layers, kept, teacher["num_hidden_layers"], False)
        except UserError as exc:
            raise loaded.error(where + ("layers",), str(exc).removeprefix("kd.hidden.layers: ")) from None
