"""Difficulty by student, as s1 chose its questions: a student model answers each question once, greedily, and the
rows whose question it already answers correctly are dropped (there is little to learn from them).

The student's answers are an ordinary generation of the run loop (`datagen.pipeline.loop.generate_requests`, handed
in as `generate_requests` by datagen.api, which sits above curation): requests and outputs of the store under the pseudo-step
`_probe`, keyed by the student's identity, the prompt and the sampling, costed at the student's `price`, held under
`max_usd` with the rest of the store's spend, with progress, and committed as answers arrive. So `datagen curate`
re-runs reuse them and an interrupted probe resumes where it stopped. A failed probe is retried by the next run,
and its row is kept meanwhile: a question is only dropped for an answer seen to be right.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from datagen.answers import extract_answer, same_answer
from datagen.keys import canonical
from datagen.text import as_text
from datagen.verdict import Verdict

PROBE_STEP = "_probe"


def student_teacher(spec, loaded):
    """(name, teacher spec) for `difficulty.student`: a teacher of the spec, else a model run by the vllm backend."""
    from datagen.spec.models import VLLMTeacherSpec

    if spec.student in loaded.spec.teachers:
        return spec.student, loaded.spec.teachers[spec.student]
    return spec.student, VLLMTeacherSpec(backend="vllm", model=spec.student)


def probe_key(identity: dict, messages: list[dict], sampling: dict) -> str:
    payload = canonical({"student": identity, "messages": messages, "sampling": sampling})
    return hashlib.sha256(payload.encode()).hexdigest()


# (what, teacher name, teacher spec, requests, sampling) -> None: generates and stores the requests not done yet
Generate = Callable[[str, str, object, list, dict], object]


def student_verdicts(con, loaded, spec, rows: list[dict], log: Callable[[str], None],
                     generate_requests: Generate | None) -> list[Verdict]:
    """One verdict per row: dropped when the student's final answer equals the reference's."""
    from datagen.teachers import teacher_identity

    name, teacher_spec = student_teacher(spec, loaded)
    identity = teacher_identity(teacher_spec, loaded.dir)
    sampling = {"temperature": 0.0, "top_p": 1.0, "max_tokens": spec.max_tokens}
    messages = [[{"role": "user", "content": as_text(r.get(spec.question))}] for r in rows]
    keys = [probe_key(identity, m, sampling) for m in messages]
    answers = _probe(con, name, teacher_spec, dict(zip(keys, messages)), sampling, log, generate_requests)
    verdicts = []
    for row, key in zip(rows, keys):
        text, error = answers.get(key, (None, "no probe recorded"))
        reference = extract_answer(as_text(row.get(spec.reference)))
        if error is not None:
            verdicts.append(Verdict(True, f"student request failed ({error[:80]}); kept", None))
        elif reference is None:
            verdicts.append(Verdict(True, f"no final answer in reference {spec.reference}; kept", None))
        else:
            answer = extract_answer(text or "")
            if answer is not None and same_answer(reference, answer):
                verdicts.append(Verdict(False, f"too easy: the student {name} already answers {answer[:40]} = "
                                               "reference", 1.0))
            else:
                got = "no final answer" if answer is None else f"answer {answer[:40]}"
                verdicts.append(Verdict(True, f"the student {name} fails it ({got}, reference {reference[:40]})", 0.0))
    return verdicts


def _probe(con, name: str, teacher_spec, wanted: dict[str, list[dict]], sampling: dict, log: Callable[[str], None],
           generate_requests: Generate | None) -> dict[str, tuple[str | None, str | None]]:
    """key -> (text, error) for every wanted prompt, generating and storing those not answered successfully yet."""
    from datagen.store.reads import request_results
    from datagen.strategies.base import PlannedRequest

    found = request_results(con, list(wanted))
    todo = [k for k in wanted if k not in found or found[k][1] is not None]
    if not todo:
        return found
    if generate_requests is None:
        raise TypeError("run_curation needs `generate_requests` for a student probe (datagen.api passes the run loop's)")
    log(f"curation: the student {name} answers {len(todo)} questions ({len(wanted) - len(todo)} stored)")
    generate_requests(PROBE_STEP, name, teacher_spec, [PlannedRequest(k, PROBE_STEP, None, 0, wanted[k], name) for k in todo],
             sampling)
    return request_results(con, list(wanted))
