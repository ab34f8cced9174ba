"""Offline knowledge distillation on the teacher's stored top-k logprobs (`objective: kd`).

loss = alpha * CE(hard labels) + (1 - alpha) * T^2 * D

- CE is the usual next-token loss on the teacher's text (the completion tokens), at temperature 1.
- D is taken over each completion position's stored top-k support: the teacher's k logprobs and the student's logits
  at the same k token ids are both divided by T and renormalised over those k ids (softmax). The teacher's mass
  outside its top k is unknown, so it is left out on both sides: D measures how the student spreads its probability
  *among the teacher's k candidates*, and the CE term carries the hard label. `forward` is KL(teacher || student)
  (mode-covering), `reverse` is KL(student || teacher) (mode-seeking). D is the mean over positions that have
  teacher data; a position with none (a token the alignment could not match) contributes CE only.
- With `tail: true` (kd.tail) the mass outside the top k is one more class on both sides: the teacher's
  1 - sum(exp(top-k logprobs)) and the student's full-vocabulary probability outside those ids; the k + 1 log
  masses are divided by T and renormalised. At T 1 this is the exact KL between the two distributions coarsened to
  "each of the k ids, or anything else", so it also ties how much mass the student puts on the teacher's candidates,
  which the renormalised support alone leaves free (alone, at alpha 0, the student can learn the spread among the k
  while moving its mass elsewhere: specs/results.md measured that). Needs raw or processed logprobs that are real
  probabilities of the whole vocabulary (vLLM's; an HTTP server's `top_logprobs` are too).
- T^2 keeps the soft-label gradients on the same scale as CE when T changes (Hinton et al., 2015).

Teacher and student must share a tokenizer: the stored ids index the teacher's vocabulary. Where a teacher returned
token strings without ids (OpenAI-compatible servers), they are mapped to ids through the student's tokenizer:
a string that decodes from exactly one id maps to it; an ambiguous or unknown string is dropped from that position's
support (and, for the sampled token, ends the row's alignment).

The teacher's tokens are matched to the student's tokenization of the completion by byte offset and id, so a place
where the two tokenizations of the same text differ loses only the positions that differ.

This is a custom loss on top of TRL's SFTTrainer (same data preparation, batching, optimiser and LoRA handling).
With `kd.hidden`, a frozen teacher model runs beside the student and weight * H (a hidden-state loss) is added to it
(sft/hidden.py).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from datagen.errors import UserError
from datagen.spec.models import HTTP_BACKENDS

KD_KEYS = ("kd_tokens", "kd_top_ids", "kd_top_logprobs", "kd_rest", "kd_k")
FILL = -1e4  # logit given to ids outside the support: exp() underflows to 0 without the NaNs -inf would bring


@dataclass
class KDParts:
    loss: object  # torch scalar
    ce: object
    kd: object
    kd_positions: int


def kd_loss(logits, labels, top_ids, top_logprobs, alpha: float, temperature: float,
            divergence: str = "forward", tail: bool = False, rest=None) -> KDParts:
    """logits [B, S, V]; labels [B, S] (-100 where no loss); top_ids [B, S, K] (-1 for no entry) and top_logprobs
    [B, S, K] hold, at position t, the teacher's top-k for the token at t (the same layout as labels); `rest`
    [B, S], where known, the log of the teacher's mass outside them (else taken as 1 - the top k's)."""
    s = shifted(logits, labels, top_ids, top_logprobs, rest)
    ce_tok = -s.log_probs.gather(-1, s.labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ce = (ce_tok * s.mask).sum() / s.mask.sum().clamp(min=1)
    kd, n = top_k_divergence(s, temperature, divergence, tail)
    t = temperature
    loss = alpha * ce + (1 - alpha) * t * t * kd
    return KDParts(loss, ce, kd, n)


@dataclass
class Shifted:
    """What the position t predicts, aligned with what it is scored against (the token and teacher data at t + 1)."""
    logits: object  # [B, S-1, V] float
    log_probs: object  # their log_softmax over the vocabulary
    labels: object
    mask: object  # labels != -100
    ids: object
    lps: object
    rest: object = None  # [B, S-1] the log of the teacher's mass outside its top k, where stored


def shifted(logits, labels, top_ids, top_logprobs, rest=None) -> Shifted:
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    return Shifted(logits, logits.log_softmax(-1), labels, labels != -100, top_ids[:, 1:], top_logprobs[:, 1:].float(),
                   None if rest is None else rest[:, 1:].float())


def top_k_divergence(s: Shifted, temperature: float, divergence: str = "forward", tail: bool = False):
    """D of the module docstring: (mean over positions with teacher data, their number)."""
    import torch

    if divergence not in ("forward", "reverse", "mix"):
        raise ValueError(f"divergence must be forward, reverse or mix, got {divergence!r}")
    support = (s.ids >= 0) & s.mask.unsqueeze(-1)
    has = support.any(-1)
    t = temperature
    if tail:  # k + 1 classes: the top-k ids and "anything else", as log masses of the whole vocabulary
        student_k = s.log_probs.gather(-1, s.ids.clamp(min=0)).masked_fill(~support, FILL)
        student = torch.cat([student_k, rest_mass(student_k)], -1) / t
        teacher_k = s.lps.masked_fill(~support, FILL)
        # the stored rest (computed from the teacher's floats) where there is one: 1 - sum(top k) from the stored
        # codes is ill-conditioned when the top k hold nearly all the mass
        rest = rest_mass(teacher_k)
        if s.rest is not None:  # NaN where none is stored
            stored = s.rest.unsqueeze(-1)
            rest = torch.where(torch.isnan(stored), rest, stored.clamp(min=math.log(TAIL_FLOOR)))
        teacher = torch.cat([teacher_k, rest], -1) / t
        support = torch.cat([support, has.unsqueeze(-1)], -1)
    else:
        student = (s.logits.gather(-1, s.ids.clamp(min=0)) / t).masked_fill(~support, FILL)
        teacher = (s.lps / t).masked_fill(~support, FILL)
    log_s, log_t = student.log_softmax(-1), teacher.log_softmax(-1)
    forward = log_t.exp() * (log_t - log_s)
    reverse = log_s.exp() * (log_s - log_t)
    per_id = forward if divergence == "forward" else reverse if divergence == "reverse" else (forward + reverse) / 2
    per_pos = torch.where(support, per_id, torch.zeros_like(per_id)).sum(-1)
    n = int(has.sum())
    return (per_pos * has).sum() / max(n, 1), n


def rest_mass(log_k):
    """[..., K] log-probabilities of K ids (FILL where none) -> [..., 1] the log of the probability left for every other
    id, floored at TAIL_FLOOR (a teacher's top-p processed logprobs, or rounding, can leave none)."""
    import torch

    left = 1.0 - log_k.exp().sum(-1, keepdim=True)
    return torch.log(left.clamp(min=TAIL_FLOOR))


TAIL_FLOOR = 1e-6


# --- teacher data -> ids ---------------------------------------------------------------------------------------


class TokenMap:
    """Token strings (as OpenAI-compatible servers return them) -> ids of the shared tokenizer."""

    def __init__(self, tok):
        found: dict[str, int | None] = {}
        for i in range(len(tok)):
            s = tok.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            found[s] = None if s in found else i  # None: several ids decode to this string, so it is ambiguous
        self.ids = found

    def __call__(self, token: str | None) -> int | None:
        if token is None:
            return None
        m = re.fullmatch(r"token_id:(\d+)", token)  # vLLM's --return-tokens-as-token-ids form
        if m:
            return int(m.group(1))
        return self.ids.get(token)


@dataclass
class TeacherTargets:
    """One row's teacher data as arrays: n positions, k entries each."""

    tokens: object  # int64 [n]: the teacher's token at each position, -1 where unknown
    top_ids: object  # int64 [n, k], -1 where no entry
    top_logprobs: object  # float32 [n, k], 0 where no entry
    rest: object = None  # float32 [n]: the log of the mass outside the top k (0: unknown, taken from the top k)
    unmapped: int = 0  # tokens given as strings that matched no single id

    def __len__(self) -> int:
        return len(self.tokens)


def teacher_targets(labels, token_map: TokenMap | None) -> TeacherTargets:
    """One row's stored soft labels (datagen.store.soft_labels.SoftLabels, or None) as id arrays. Where a teacher
    gave strings without ids, they are mapped through `token_map` (a loop over those strings only)."""
    import numpy as np

    if labels is None or not len(labels):
        return TeacherTargets(np.zeros(0, np.int64), np.full((0, 1), -1, np.int64), np.zeros((0, 1), np.float32),
                              np.zeros(0, np.float32))
    tokens = labels.token_ids.astype(np.int64)
    ids = labels.top_ids.astype(np.int64)
    lps = np.where(ids >= 0, labels.top_logprobs, 0).astype(np.float32)
    out = TeacherTargets(tokens, ids, lps, labels.rest.astype(np.float32))
    if token_map is None:
        return out
    for p in np.flatnonzero(tokens < 0):
        tid = token_map(labels.tokens[p])
        out.unmapped += tid is None
        tokens[p] = -1 if tid is None else tid
    if labels.top_tokens is not None:
        k = ids.shape[1]
        for p, r in zip(*np.nonzero(ids < 0)):
            tid = token_map(labels.top_tokens[p * k + r])
            if tid is not None and tid not in ids[p]:  # two strings of one id: the first keeps it
                ids[p, r], lps[p, r] = tid, labels.top_logprobs[p, r]
    return out


def check_tokenizers(teacher_spec, teacher_name: str, spec_dir, student_tok) -> bool:
    """Fail clearly when a local teacher's tokenizer differs from the student's. Returns False when the teacher is
    remote (no tokenizer to compare; its token strings are checked as they are mapped instead)."""
    if teacher_spec.backend in HTTP_BACKENDS:
        return False
    from transformers import AutoTokenizer

    from datagen.bundled import resolve_model

    path = resolve_model(teacher_spec.model, spec_dir)
    teacher_tok = AutoTokenizer.from_pretrained(path)
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        a, b = len(teacher_tok), len(student_tok)
        raise UserError(f"teacher `{teacher_name}` ({teacher_spec.model}, {a} tokens) and the student ({b} tokens) "
                        "do not share a tokenizer, and `objective: kd` compares their distributions token by token; "
                        "use a student of the teacher's family (or `init: truncate` of the teacher's model), or "
                        "`objective: sft`")
    return True


def check_mapping(total: int, unmapped: int, teacher_name: str) -> None:
    """Token strings from a remote teacher that the student's tokenizer cannot place mean different tokenizers."""
    if total and unmapped / total > 0.1:
        raise UserError(f"{unmapped} of {total} token strings from teacher `{teacher_name}` match no single token "
                        "of the student's tokenizer, so teacher and student do not appear to share a tokenizer; "
                        "`objective: kd` needs one (use a student of the teacher's family, or `objective: sft`)")


# --- alignment and batching ------------------------------------------------------------------------------------


class Aligner:
    """Matches teacher token positions to the student's completion tokens by (byte offset, id)."""

    def __init__(self, tok):
        import numpy as np

        # Tokens as raw vocabulary pieces: in byte-level BPE one piece character per byte, so piece lengths add up
        # to byte offsets that the teacher's and the student's tokenizations of the same text share.
        self.lengths = np.array([len(p or "") for p in tok.convert_ids_to_tokens(list(range(len(tok))))], np.int64)

    def _starts(self, ids):
        """Each token's byte offset; -1 from the first id of unknown length on (later offsets are unknown too)."""
        import numpy as np

        ids = np.asarray(ids, np.int64)
        bad = (ids < 0) | (ids >= len(self.lengths))
        lengths = self.lengths[np.clip(ids, 0, len(self.lengths) - 1)]
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(ids) else np.zeros(0, np.int64)
        if bad.any():
            starts[int(np.argmax(bad)):] = -1
        return starts

    def match(self, student_ids, teacher_ids):
        """(student indexes, teacher indexes) of the tokens that start at the same offset with the same id."""
        import numpy as np

        student_ids, teacher_ids = np.asarray(student_ids, np.int64), np.asarray(teacher_ids, np.int64)
        span = len(self.lengths) + 1
        t_off, s_off = self._starts(teacher_ids), self._starts(student_ids)
        t_at = np.flatnonzero(t_off >= 0)
        t_keys = t_off[t_at] * span + (teacher_ids[t_at] + 1)
        order = np.argsort(t_keys, kind="stable")
        t_keys, t_at = t_keys[order], t_at[order]
        s_keys = np.where(s_off >= 0, s_off * span + (student_ids + 1), -1)
        pos = np.clip(np.searchsorted(t_keys, s_keys), 0, max(len(t_keys) - 1, 0))
        hit = (s_keys >= 0) & (len(t_keys) > 0) & (t_keys[pos] == s_keys) if len(t_keys) else np.zeros(len(s_keys),
                                                                                                         bool)
        return np.flatnonzero(hit), t_at[pos[hit]]

    def __call__(self, student_ids, teacher_ids) -> list[tuple[int, int]]:
        js, is_ = self.match(student_ids, teacher_ids)
        return list(zip(js.tolist(), is_.tolist()))


def place(ids, lps, rest, aligner: Aligner, where, student_ids, target: TeacherTargets, k: int) -> int:
    """Put a row's teacher top-k (at most k entries) at the completion positions `where` (indexes into the row,
    whose tokens are `student_ids`) that the aligner matched; returns how many positions got teacher data. `ids`
    and `lps` are the row's [S, K] tensors, `rest` its [S] one (the log of the mass outside the top k)."""
    import torch

    js, is_ = aligner.match(student_ids, target.tokens)
    top_ids, top_lps = target.top_ids[is_, :k], target.top_logprobs[is_, :k]
    width = top_ids.shape[1] if top_ids.ndim == 2 else 0
    if len(js) and width:
        at = torch.as_tensor(where[js], dtype=torch.long)
        ids[at, :width] = torch.as_tensor(top_ids, dtype=torch.long)
        lps[at, :width] = torch.as_tensor(top_lps, dtype=torch.float32)
        if width == target.top_ids.shape[1]:  # the stored rest is the mass outside all k, not outside the first k
            rest[at] = torch.as_tensor(target.rest[is_], dtype=torch.float32)
    return int((top_ids >= 0).any(-1).sum()) if len(js) and width else 0


class KDCollator:
    """TRL's collator plus, per label position, the teacher's top-k ids and logprobs (-1 / 0 where none)."""

    def __init__(self, base, aligner: Aligner, k: int):
        self.base, self.aligner, self.k = base, aligner, k
        self.positions = 0
        self.aligned = 0

    def __call__(self, examples: list[dict]) -> dict:
        import numpy as np
        import torch

        extras = [{key: ex.pop(key) for key in KD_KEYS} for ex in examples]
        batch = self.base(examples)
        b, s = batch["input_ids"].shape
        ids = torch.full((b, s, self.k), -1, dtype=torch.long)
        lps = torch.zeros((b, s, self.k), dtype=torch.float32)
        rest = torch.full((b, s), float("nan"))  # NaN: unknown, the loss takes 1 - the top k's
        for row, (ex, extra) in enumerate(zip(examples, extras)):
            where = np.flatnonzero(np.asarray(ex["labels"]) != -100)
            self.positions += len(where)
            width = int(extra["kd_k"])
            target = TeacherTargets(np.asarray(extra["kd_tokens"], np.int64),
                                    np.asarray(extra["kd_top_ids"], np.int64).reshape(-1, width),
                                    np.asarray(extra["kd_top_logprobs"], np.float32).reshape(-1, width),
                                    np.asarray(extra["kd_rest"], np.float32))
            self.aligned += place(ids[row], lps[row], rest[row], self.aligner, where,
                                  np.asarray(ex["input_ids"])[where], target, self.k)
        batch["kd_top_ids"], batch["kd_top_logprobs"], batch["kd_rest"] = ids, lps, rest
        return batch


def kd_record(prompt, completion, target: TeacherTargets) -> dict:
    """A training row with its teacher data, flat (Arrow keeps 1-D arrays without a Python object per entry)."""
    return {"prompt": prompt, "completion": completion, "kd_tokens": target.tokens,
            "kd_top_ids": target.top_ids.reshape(-1), "kd_top_logprobs": target.top_logprobs.reshape(-1),
            "kd_rest": target.rest, "kd_k": target.top_ids.shape[1]}


def make_kd_trainer_class():
    """The trainer class, built on first use so importing this module does not import TRL (and torch)."""
    from trl import SFTTrainer

    class KDTrainer(SFTTrainer):
        """SFTTrainer whose loss is alpha * CE + (1 - alpha) * T^2 * D over the stored top-k (see module doc),
        plus weight * H with `kd.hidden` (sft/hidden.py)."""

        def __init__(self, *args, kd_settings=None, hidden=None, **kwargs):
            self.kd_settings = kd_settings
            self.hidden = hidden  # sft/hidden.py HiddenDistiller, with `kd.hidden`
            super().__init__(*args, **kwargs)

        def create_optimizer(self, model=None):
            # kd.hidden.project's maps train with the student, but live here, not in the model (never saved)
            optimizer = super().create_optimizer(model)
            project = self.hidden.project if self.hidden is not None else None
            if project is not None and not getattr(self, "_project_added", False):
                optimizer.add_param_group({"params": list(project.parameters()), "weight_decay": 0.0})
                self._project_added = True
            return optimizer

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns = list(self._signature_columns) + [k for k in KD_KEYS
                                                                       if k not in self._signature_columns]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            top_ids, top_lps, rest = inputs.pop("kd_top_ids"), inputs.pop("kd_top_logprobs"), inputs.pop("kd_rest")
            labels = inputs.pop("labels")
            kd = self.kd_settings
            mode = "train" if model.training else "eval"
            if self.hidden is None:
                outputs = model(**inputs, use_cache=False)
            else:
                from sft.hidden import catch_outputs

                with catch_outputs(self.model, self.hidden.student_layers()) as caught:
                    outputs = model(**inputs, use_cache=False)
            parts = kd_loss(outputs.logits, labels, top_ids, top_lps, kd.alpha, kd.temperature, kd.divergence,
                            kd.tail, rest)
            loss = parts.loss
            if self.hidden is not None:
                h = self.hidden.loss(caught, inputs)
                loss = loss + self.hidden.weight * h
                self._metrics[mode]["hidden"].append(float(h.detach()))
            self._metrics[mode]["ce"].append(float(parts.ce.detach()))
            self._metrics[mode]["kd"].append(float(parts.kd.detach()))
            if mode == "train" and "attention_mask" in inputs:
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

    return KDTrainer
