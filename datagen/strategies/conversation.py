"""Multi-turn conversations: an assistant `teacher` and a simulated user (`user_teacher`, by default the same
teacher) alternate for `turns` exchanges over each input row (specs/trajectories.md).

The simulated user is told who it is by `user_prompt` (a template over the input row: a persona, a goal, a topic) and
sees the conversation from its side (its own messages as `assistant`, the assistant's as `user`, after an opening
"begin" message so roles alternate from a user turn); `prompt`, when set, renders the first user message from the row
instead of asking the simulator. A simulated user that answers with STOP (`[END]`) ends the conversation there.

Each turn is one request, keyed by the conversation so far (and its role and turn number), sent in a round with the
same turn of every other conversation: the loop commits a round before the next is built from the stored replies,
so a killed run resumes at the turn it reached and never sends a finished turn again. A failed turn ends its
conversation for this run (a re-run asks it again and goes on). Every turn is a row of `outputs` (lineage: the
input, and the turn before it as `previous_turn`); the step's view holds one row per conversation, its last
assistant turn, whose `output` column is the whole conversation as a list of `{role, content}` (its first user
message also in `<output>_first_user`, for dedup); the other turns are
in `decisions` (stage: the step's name) as not the conversation's last.
"""

from __future__ import annotations

from datagen import templates
from datagen.keys import logprobs_key, request_key
from datagen.spec.models import ConversationStep
from datagen.spec.plan import PlannedStep, check_clash, check_template, columns_of, step_teachers, step_view
from datagen.store import reads
from datagen.store.decisions import replace_decisions, step_owner
from datagen.strategies.base import Job, PlannedRequest, Round, StepEstimate, Volume
from datagen.strategies.label import public
from datagen.verdict import Verdict

STOP = "[END]"  # a simulated user's reply holding this ends the conversation (the reply itself is not kept)
BEGIN = "Begin the conversation: write your first message to the assistant."
STOP_NOTE = (f"\n\nWrite only your next message to the assistant, as the user. When the conversation has reached its "
             f"end, reply with {STOP} alone.")


STEP = ConversationStep


# --- what it reads, how many rows it makes, its templates -------------------------------------------------------


def reads_from(step: ConversationStep) -> list[tuple[str, tuple]]:
    return [(step.input, ("input",))]


def volume(step: ConversationStep, teachers: int, volume_of) -> Volume | None:
    """One row per conversation: `n` per input row."""
    up = volume_of(step.input)
    return Volume(up.rows, step.n) if up is not None else None


def template_texts(step: ConversationStep) -> list[str]:
    return [t for t in (step.system, step.prompt, step.user_prompt) if t]


def coverage_columns(step) -> dict[str, list[str]]:
    return {}


def row_prompt(step) -> None:
    return None  # its prompts are conversations, not one rendering of a row


# --- plan -----------------------------------------------------------------------------------------------------


def plan(loaded, plan, shape, i: int, step: ConversationStep) -> PlannedStep:
    loc = ("steps", i)
    names = step_teachers(loaded, loc, step)
    if step.user_teacher is not None and step.user_teacher not in loaded.spec.teachers:
        raise loaded.error(loc + ("user_teacher",), f"no teacher named `{step.user_teacher}`; teachers: "
                                                    f"{', '.join(loaded.spec.teachers)}")
    if step.user_teacher is not None and step.user_teacher not in names:
        names.append(step.user_teacher)
    cols = columns_of(shape, step.input)
    produced = {step.output: "JSON", f"{step.output}_turns": "INTEGER", f"{step.output}_first_user": "VARCHAR"}
    check_clash(loaded, loc, produced, cols, step.input)
    for key in ("system", "prompt", "user_prompt"):
        if getattr(step, key):
            check_template(loaded, loc + (key,), getattr(step, key), set(cols), step.input)
    view = step_view(step, step.input, cols, produced, output_is_text=False, decisions=step.name, kept_only=True)
    return PlannedStep(step, i, step.input, cols, produced, names, view, output_is_text=False,
                       output_is_conversation=True)


def plan_line(st: PlannedStep) -> str:
    return f"{st.input}, {st.spec.turns} turns"


# --- requests -------------------------------------------------------------------------------------------------


def assistant_messages(step: ConversationStep, row: dict, conversation: list[dict]) -> list[dict]:
    system = [{"role": "system", "content": templates.render(step.system, public(row))}] if step.system else []
    return system + conversation


def user_messages(step: ConversationStep, row: dict, conversation: list[dict]) -> list[dict]:
    """The simulated user's side: its instructions, the opening cue, then the conversation with roles swapped."""
    swapped = [{"role": "assistant" if m["role"] == "user" else "user", "content": m["content"]} for m in conversation]
    return [{"role": "system", "content": templates.render(step.user_prompt, public(row)) + STOP_NOTE},
            {"role": "user", "content": BEGIN}] + swapped


class _Conversation:
    def __init__(self, row: dict, index: int):
        self.row, self.index = row, index
        self.turns: list[dict] = []  # {role, content}
        self.last_id: str | None = None  # the output row of the turn before
        self.last_assistant_id: str | None = None
        self.ids: list[str] = []  # every turn's output row
        self.open = True


def rounds(job: Job):
    step: ConversationStep = job.step
    setups = {t.name: t for t in job.teachers}
    assistant, simulator = setups[step.teacher], setups[step.user_teacher or step.teacher]  # plan: one teacher
    talks = [_Conversation(row, k) for row in reads.rows(job.con, step.input) for k in range(step.n)]
    for turn in range(1, step.turns + 1):
        if turn == 1 and step.prompt:
            for c in talks:
                c.turns.append({"role": "user", "content": templates.render(step.prompt, public(c.row))})
        else:
            yield from _turn(job, talks, simulator, "user", turn, user_messages)
        yield from _turn(job, talks, assistant, "assistant", turn, assistant_messages)
    verdicts = []
    for c in talks:
        for rid in c.ids:
            last = rid == c.last_assistant_id
            verdicts.append((step.name, rid, Verdict(True, None, len(c.turns)) if last else
                             Verdict(False, "an earlier turn: the conversation's last assistant turn holds it whole")))
    replace_decisions(job.con, step_owner(step.name), verdicts)


def _turn(job: Job, talks: list[_Conversation], setup, role: str, turn: int, messages_of):
    """One round: the next `role` message of every open conversation; the replies, once committed, join them (a
    failed one, or a simulated user's STOP, ends its conversation)."""
    step = job.step
    asked = [(c, _request(job, step, c, setup, role, turn, messages_of(step, c.row, c.turns)))
             for c in talks if c.open]
    if not asked:
        return
    yield Round([r for _, r in asked])
    replies = reads.outputs_of(job.con, [r.key for _, r in asked])
    for c, r in asked:
        got = replies.get(r.key)
        if got is not None:
            c.ids.append(got["_id"])
        if got is None or (role == "user" and STOP in (got["text"] or "")):
            c.open = False
            continue
        c.turns.append({"role": role, "content": got["text"]})
        c.last_id = got["_id"]
        if role == "assistant":
            c.last_assistant_id = got["_id"]


def _request(job: Job, step: ConversationStep, c: _Conversation, setup, role: str, turn: int,
             messages: list[dict]) -> PlannedRequest:
    key = request_key(step=step.name, parent_id=c.row["_id"], messages=messages, teacher=setup.identity,
                      sampling=setup.sampling, json_schema=None, logprobs=logprobs_key(step), sample_index=c.index,
                      extra={"role": role, "turn": turn})
    lineage = [(c.last_id, "previous_turn")] if c.last_id else []
    return PlannedRequest(key, step.name, c.row["_id"], c.index, messages, setup.name, lineage,
                          {"_role": role})


# --- replies --------------------------------------------------------------------------------------------------


def json_schema(step) -> None:
    return None


def parse(step: ConversationStep, text: str, req: PlannedRequest, sample=None) -> tuple[dict | None, str | None]:
    """An assistant turn's row carries the conversation up to it; a simulated user's turn only its text."""
    if not (text or "").strip():
        return None, "the reply is empty"
    if req.fields.get("_role") != "assistant":
        return {}, None
    conversation = [m for m in req.messages if m["role"] != "system"] + [{"role": "assistant", "content": text}]
    return {step.output: conversation, f"{step.output}_turns": sum(m["role"] == "user" for m in conversation),
            f"{step.output}_first_user": conversation[0]["content"]}, None


def finish(job: Job) -> None:
    return None  # the rounds' end decides which turn holds each conversation


def status_lines(con, st: PlannedStep) -> list[str]:
    from datagen.store.stats import number_summary

    n, mean, top = number_summary(con, st.name, f"{st.spec.output}_turns")
    if not n:
        return [f"    no conversation finished yet ({st.spec.turns} exchanges each at most)"]
    return [f"    {n} conversations, {mean:.1f} exchanges on average (at most {top} of {st.spec.turns}); each is its "
            "last assistant turn's row, the earlier turns are in `decisions`"]


def card_notes(step: ConversationStep) -> list[str]:
    who = f"`{step.user_teacher}`" if step.user_teacher else "the same teacher"
    return [f"multi-turn: up to {step.turns} exchanges with a simulated user ({who})"]


def estimate(job: Job, volume_of) -> StepEstimate:
    """At most `turns` user and `turns` assistant requests per conversation (the first user one not, with `prompt`)."""
    step: ConversationStep = job.step
    per = 2 * step.turns - (1 if step.prompt else 0)
    return StepEstimate(volume_of(step.input).rows * step.n * per, [])
