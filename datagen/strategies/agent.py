"""Tool-using agents: the teacher gets the step's `tools` and loops (specs/trajectories.md). Each turn is one request
over the trajectory so far; a reply with tool calls has them run (datagen/tools), their results appended as `tool`
messages, and the teacher is asked again, until a reply without a call (the final answer) or `max_tool_calls` calls.

A call to an unknown tool, with arguments that do not parse or do not match the tool's schema, over the call budget,
or that raises, hangs or dies, gives the model an error message as its result and counts as an error (agent
frameworks do the same): the model may recover. Every call is recorded in `tool_calls` before the next turn is
asked, so a killed run, re-run, reuses the recorded results (the tool does not run again and the next turn's key is
the same) and never sends a finished turn again.

Calls reach the store in one form whatever the backend (datagen/teachers/toolcalls.py): an HTTP teacher's OpenAI
`tool_calls`, or `<tool_call>{json}</tool_call>` in an in-process model's text. The step's view holds one row per
trajectory that reached a final answer, its last turn, with the whole trajectory (OpenAI-shape messages: assistant
`tool_calls`, `tool` results) in `<output>`, the answer in `<output>_answer` and counts beside it; the other turns
are in `decisions` (stage: the step's name), as is each trajectory that ended without an answer, with why.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from datagen import templates
from datagen.keys import logprobs_key, request_key
from datagen.spec.models import AgentStep
from datagen.spec.plan import PlannedStep, check_clash, check_template, columns_of, step_teachers, step_view
from datagen.store import reads, tool_calls
from datagen.store.decisions import replace_decisions, step_owner
from datagen.strategies.base import Job, PlannedRequest, Round, StepEstimate, Volume, spread
from datagen.strategies.label import public
from datagen.teachers.toolcalls import parse_calls
from datagen.tools import ToolError, Toolbox, needs_server
from datagen.verdict import Verdict

STEP = AgentStep
PARALLEL_CALLS = 8  # tool processes at once


def columns(output: str) -> dict[str, str]:
    """The columns an agent step produces besides its trajectory."""
    return {output: "JSON", f"{output}_answer": "VARCHAR", f"{output}_first_user": "VARCHAR",
            f"{output}_turns": "INTEGER",
            f"{output}_tool_calls": "INTEGER", f"{output}_tool_errors": "INTEGER",
            f"{output}_invalid_calls": "INTEGER", f"{output}_tools": "JSON"}


# --- what it reads, how many rows it makes, its templates -------------------------------------------------------


def reads_from(step: AgentStep) -> list[tuple[str, tuple]]:
    return [(step.input, ("input",))]


def volume(step: AgentStep, teachers: int, volume_of) -> Volume | None:
    """At most one trajectory per input row and sample."""
    up = volume_of(step.input)
    return Volume(up.rows, step.n) if up is not None else None


def template_texts(step: AgentStep) -> list[str]:
    return [t for t in (step.system, step.prompt) if t]


def coverage_columns(step) -> dict[str, list[str]]:
    return {}


def row_prompt(step) -> None:
    return None  # its prompts are trajectories, not one rendering of a row


# --- plan -----------------------------------------------------------------------------------------------------


def plan(loaded, plan, shape, i: int, step: AgentStep) -> PlannedStep:
    from datagen.tools import describe

    loc = ("steps", i)
    names = step_teachers(loaded, loc, step)
    for j, tool in enumerate(step.tools):
        if tool not in loaded.spec.tools:
            known = ", ".join(loaded.spec.tools) or "none (declare them under the top-level `tools:`)"
            raise loaded.error(loc + ("tools", j), f"no tool named `{tool}`; tools: {known}")
    try:
        schemas = describe(loaded.spec.tools, loaded.dir, step.tools)
    except ToolError as exc:
        bad = next((t for t in step.tools if f"`{t}`" in str(exc) or t in str(exc)), step.tools[0])
        raise loaded.error(("tools", bad), str(exc)) from None
    cols = columns_of(shape, step.input)
    produced = columns(step.output)
    check_clash(loaded, loc, produced, cols, step.input)
    for key in ("system", "prompt"):
        if getattr(step, key):
            check_template(loaded, loc + (key,), getattr(step, key), set(cols), step.input)
    view = step_view(step, step.input, cols, produced, output_is_text=False, decisions=step.name, kept_only=True)
    return PlannedStep(step, i, step.input, cols, produced, names, view, output_is_text=False,
                       output_is_conversation=True, tools=schemas)


def plan_line(st: PlannedStep) -> str:
    return f"{st.input}, tools {', '.join(st.spec.tools)}, at most {st.spec.max_tool_calls} calls"


# --- requests -------------------------------------------------------------------------------------------------


class _Trajectory:
    def __init__(self, row: dict, index: int, messages: list[dict]):
        self.row, self.index = row, index
        self.messages = messages  # system (if any), the user prompt, then every turn
        self.last_id: str | None = None
        self.ids: list[str] = []  # every turn's output row
        self.calls = self.errors = self.invalid = 0
        self.final_id: str | None = None
        self.ended: str | None = None  # why it ended without an answer
        self.open = True


def rounds(job: Job):
    step: AgentStep = job.step
    setup = job.teachers[0]
    spec = job.plan.spec
    toolbox = None
    if needs_server(spec.tools, step.tools):  # an MCP server's tools are known once it runs: they join the keys
        toolbox = _open(job)
        job.st.tools = list(toolbox.schemas.values())
    trajectories = [_Trajectory(row, k, _opening(step, row)) for row in reads.rows(job.con, step.input)
                    for k in range(step.n)]
    try:
        for turn in range(1, step.max_tool_calls + 2):
            asked = [(t, _request(step, t, setup, job.st.tools, turn)) for t in trajectories if t.open]
            if not asked:
                break
            yield Round([r for _, r in asked])
            replies = reads.outputs_of(job.con, [r.key for _, r in asked])
            pending = []  # (trajectory, output id, call index, call) still to run
            for t, r in asked:
                got = replies.get(r.key)
                if got is None:  # failed: a re-run asks it again
                    t.open = False
                    continue
                t.ids.append(got["_id"])
                t.last_id = got["_id"]
                content, calls = parse_calls(got["text"] or "")
                if not calls:
                    t.messages.append({"role": "assistant", "content": content})
                    t.final_id, t.open = got["_id"], False
                    continue
                t.messages.append({"role": "assistant", "content": content,
                                   "tool_calls": [_call_message(turn, j, c) for j, c in enumerate(calls)]})
                pending += [(t, got["_id"], j, c) for j, c in enumerate(calls)]
                if turn == step.max_tool_calls + 1:
                    t.ended = f"no final answer: still calling tools after max_tool_calls ({step.max_tool_calls})"
                    t.open = False
            if pending:
                toolbox = _run_calls(job, pending, toolbox, spec, turn)
    finally:
        if toolbox is not None:
            toolbox.close()
    verdicts = []
    for t in trajectories:
        for rid in t.ids:
            if rid == t.final_id:
                verdicts.append((step.name, rid, Verdict(True, None, t.calls)))
            elif rid == t.last_id and t.ended:
                verdicts.append((step.name, rid, Verdict(False, t.ended)))
            else:
                verdicts.append((step.name, rid, Verdict(False, "an earlier turn: the trajectory's last turn holds "
                                                                "it whole")))
    replace_decisions(job.con, step_owner(step.name), verdicts)


def _open(job: Job) -> Toolbox:
    """The step's tools for this run; a server that does not start is the spec's error, at its tool."""
    step: AgentStep = job.step
    try:
        return Toolbox(job.plan.spec.tools, job.plan.loaded.dir, step.tools)
    except ToolError as exc:
        bad = next((t for t in step.tools if f"`{t}`" in str(exc)), step.tools[0])
        raise job.plan.loaded.error(("tools", bad), str(exc)) from None


def _opening(step: AgentStep, row: dict) -> list[dict]:
    system = [{"role": "system", "content": templates.render(step.system, public(row))}] if step.system else []
    return system + [{"role": "user", "content": templates.render(step.prompt, public(row))}]


def _call_message(turn: int, j: int, call: dict) -> dict:
    """An OpenAI-shape tool call; its id is fixed by its place, so a re-run builds the same next request."""
    arguments = json.dumps(call["arguments"]) if call["arguments"] is not None else call["raw"]
    return {"id": f"call_{turn}_{j}", "type": "function",
            "function": {"name": call["name"] or "invalid", "arguments": arguments}}


def _run_calls(job: Job, pending: list, toolbox, spec, turn: int):
    """Give each call its result (recorded by an earlier run, else run now and recorded before the next turn);
    append the `tool` messages. Returns the toolbox, opened the first time a call must run."""
    step: AgentStep = job.step
    done = tool_calls.recorded(job.con, sorted({oid for _, oid, _, _ in pending}))
    results: dict[tuple[str, int], dict] = {}
    todo = []
    for t, oid, j, call in pending:
        if oid in done and j < len(done[oid]):
            results[(oid, j)] = done[oid][j]
            continue
        over = t.calls + j >= step.max_tool_calls  # the turn's calls before this one count too
        problem = call["problem"] or (f"max_tool_calls ({step.max_tool_calls}) reached: answer without calling a "
                                      f"tool" if over else None)
        if problem is not None:
            results[(oid, j)] = _row(call, None, problem, 0.0, invalid=True)
        else:
            todo.append((t, oid, j, call))
    if todo:
        if toolbox is None:
            toolbox = _open(job)
        with ThreadPoolExecutor(PARALLEL_CALLS) as pool:
            ran = list(pool.map(lambda item: _one(toolbox, item[3]), todo))
        for (_, oid, j, _), row in zip(todo, ran):
            results[(oid, j)] = row
        errors = sum(1 for row in ran if row["error"])
        job.log(f"step {step.name}: turn {turn}: ran {len(ran)} tool calls ({errors} failed) in "
                f"{sum(row['seconds'] for row in ran):.1f} s of tool time")
    tool_calls.record(job.con, step.name, [{"output_id": oid, "call_index": j, **results[(oid, j)]}
                                           for _, oid, j, _ in pending if (oid, j) not in _done_keys(done)])
    for t, oid, j, call in pending:
        got = results[(oid, j)]
        t.calls += 1
        t.errors += got["error"] is not None
        t.invalid += bool(got.get("invalid")) or (got["error"] or "").startswith(INVALID_PREFIXES)
        t.messages.append({"role": "tool", "tool_call_id": f"call_{turn}_{j}", "name": call["name"] or "invalid",
                           "content": got["result"] if got["error"] is None else f"error: {got['error']}"})
    return toolbox


# errors that say the call itself was wrong (not the tool's fault): the trajectory filter's `valid_tool_calls`
INVALID_PREFIXES = ("there is no tool", "bad arguments for", "the arguments of", "the tool call is not JSON",
                    "a tool call must be", "max_tool_calls (")


def _done_keys(done: dict) -> set:
    return {(oid, j) for oid, calls in done.items() for j in range(len(calls))}


def _one(toolbox, call: dict) -> dict:
    problem = toolbox.check(call["name"], call["arguments"])
    if problem is not None:
        return _row(call, None, problem, 0.0, invalid=True)
    got = toolbox.call(call["name"], call["arguments"])
    return _row(call, got.result, got.error, got.seconds)


def _row(call: dict, result, error, seconds: float, invalid: bool = False) -> dict:
    arguments = json.dumps(call["arguments"]) if call["arguments"] is not None else call["raw"]
    return {"tool": call["name"], "arguments": arguments, "result": result if error is None else None,
            "error": error, "seconds": seconds, "invalid": invalid}


def _request(step: AgentStep, t: _Trajectory, setup, tools: list[dict] | None, turn: int) -> PlannedRequest:
    messages = [dict(m) for m in t.messages]
    key = request_key(step=step.name, parent_id=t.row["_id"], messages=messages, teacher=setup.identity,
                      sampling=setup.sampling, json_schema=None, logprobs=logprobs_key(step), sample_index=t.index,
                      extra={"tools": tools, "turn": turn})
    lineage = [(t.last_id, "previous_turn")] if t.last_id else []
    out = step.output
    return PlannedRequest(key, step.name, t.row["_id"], t.index, messages, setup.name, lineage,
                          {f"{out}_tool_calls": t.calls, f"{out}_tool_errors": t.errors,
                           f"{out}_invalid_calls": t.invalid, f"{out}_tools": tools})


# --- replies --------------------------------------------------------------------------------------------------


def json_schema(step) -> None:
    return None


def parse(step: AgentStep, text: str, req: PlannedRequest, sample=None) -> tuple[dict | None, str | None]:
    """A final answer's row carries the whole trajectory; a turn with tool calls only its text (the calls run
    between rounds)."""
    content, calls = parse_calls(text or "")
    if not calls and not content:
        return None, "the reply is empty"
    if calls:
        return {}, None
    trajectory = [m for m in req.messages if m["role"] != "system"] + [{"role": "assistant", "content": content}]
    out = step.output
    return {out: trajectory, f"{out}_answer": content, f"{out}_first_user": trajectory[0]["content"],
            f"{out}_turns": sum(m["role"] == "assistant" for m in trajectory)}, None


def finish(job: Job) -> None:
    return None  # the rounds' end decides which turn holds each trajectory


def status_lines(con, st: PlannedStep) -> list[str]:
    from datagen.store.stats import number_summary

    out = st.spec.output
    n, mean, top = number_summary(con, st.name, f"{out}_tool_calls")
    calls, failed, per = tool_calls.step_stats(con, st.name)
    lines = [f"    {n} trajectories with a final answer, {mean:.1f} tool calls on average (at most {top})" if n else
             "    no trajectory has a final answer yet"]
    if calls:
        tools = ", ".join(f"{tool} {k}" + (f" ({e} failed)" if e else "") for tool, k, e in per)
        lines.append(f"    {calls} tool calls, {failed} failed ({failed / calls:.0%}): {tools}")
    return lines


def card_notes(step: AgentStep) -> list[str]:
    return [f"agent trajectories: tools {', '.join(step.tools)}, at most {step.max_tool_calls} calls each; tool "
            "results are `tool` messages"]


def estimate(job: Job, volume_of) -> StepEstimate:
    """At most max_tool_calls + 1 requests per trajectory (a trajectory answering at once sends one); its first
    prompts where its input is known before the run (later turns are longer: they carry the calls and results)."""
    step: AgentStep = job.step
    return StepEstimate(volume_of(step.input).rows * step.n * (step.max_tool_calls + 1),
                        [_opening(step, row) for row in spread(reads.rows(job.con, step.input))])
