"""`strategy: agent` against a scripted OpenAI-compatible teacher on 127.0.0.1 that emits `tool_calls` and reads
`tool` messages: the tool really runs in its sandbox and its result reaches the next request, a hanging tool times out
into the trajectory, a tool sees no secret and no home, a bad call is an error the model sees, and a re-run (after a
clean finish or `kill -9`) sends no finished turn again and runs no recorded call again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

import datagen
from tests.scripted_server import ScriptedServer, messages_key

HERE = Path(__file__).parent

SPEC = """\
name: agent
teachers:
  t: {{backend: openai, base_url: "{base}", model: scripted, max_attempts: 1}}
sources:
  problems: {{path: problems.jsonl}}
tools:
  calculator: {{python: "agent_tools.py:calculator"}}
  sleepy: {{python: "agent_tools.py:sleepy", timeout_s: 1}}
  peek: {{python: "agent_tools.py:peek"}}
  hog: {{python: "agent_tools.py:hog", memory_mb: 200}}
steps:
  - name: solve
    strategy: agent
    teacher: t
    input: problems
    system: "Use the tools."
    prompt: "{{{{ question }}}}"
    tools: [calculator, sleepy, peek, hog]
    max_tool_calls: 2
    max_failure_rate: 1
    output: trajectory
"""


def call(name: str, arguments, k: int = 0) -> dict:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": f"srv_{k}", "type": "function", "function": {"name": name, "arguments": raw}}


def script(body: dict) -> str | dict:
    """`compute E`: calculator(E), then "the answer is R". `hang`: sleepy(30). `peek`: peek(). `bad`: a call to an
    unknown tool, then one with bad arguments. `loop`: calls the calculator for ever. `hog`: 2 GB. Each answers
    with the last tool result."""
    msgs = body["messages"]
    question = next(m["content"] for m in msgs if m["role"] == "user")
    results = [m["content"] for m in msgs if m["role"] == "tool"]
    if question == "loop":
        return {"text": None, "tool_calls": [call("calculator", {"expression": "1 + 1"})]}
    if question == "bad" and len(results) < 2:
        bad = [call("nosuch", {"x": 1}), call("calculator", {"expr": "1"})][len(results)]
        return {"text": None, "tool_calls": [bad]}
    if results:
        return f"the answer is {results[-1]}"
    if question.startswith("compute "):
        return {"text": "Let me compute.", "tool_calls": [call("calculator", {"expression": question[8:]})]}
    if question == "hang":
        return {"text": None, "tool_calls": [call("sleepy", {"seconds": 30})]}
    if question == "hog":
        return {"text": None, "tool_calls": [call("hog", {"megabytes": 2048})]}
    return {"text": None, "tool_calls": [call("peek", {})]}


def write(tmp_path: Path, base: str, questions: list[str]) -> Path:
    shutil.copy(HERE / "agent_tools.py", tmp_path / "agent_tools.py")
    (tmp_path / "problems.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(base=base))
    return spec


def query(spec, sql: str) -> list[tuple]:
    con = duckdb.connect(str(datagen.open_spec(spec).store_path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_the_tool_runs_and_its_result_reaches_the_next_request(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))  # a tool that inherited HOME would see this .ssh
    monkeypatch.setenv("DATAGEN_TEST_SECRET", "s3cret-value")
    questions = ["compute (2 + 3) * 4", "hang", "peek", "bad", "loop", "hog"]
    with ScriptedServer(script) as server:
        spec = write(tmp_path, server.base_url, questions)
        summary = datagen.run(spec, log=lambda m: None)
        bodies = list(server.bodies)
        assert all(b["tools"] and {t["function"]["name"] for t in b["tools"]} == {"calculator", "sleepy", "peek",
                                                                                   "hog"} for b in bodies)
        calc = next(t["function"] for t in bodies[0]["tools"] if t["function"]["name"] == "calculator")
        assert calc["description"] == "Evaluate an arithmetic expression."
        assert calc["parameters"]["properties"]["expression"]["type"] == "string"
        assert calc["parameters"]["required"] == ["expression"]
        ran = (tmp_path / "calls.log").read_text().splitlines()
        datagen.run(spec, log=lambda m: None)
        assert len(server.bodies) == len(bodies)  # a finished spec re-runs without sending a turn
        assert (tmp_path / "calls.log").read_text().splitlines() == ran  # ... or running a tool
    assert summary.steps[0].failed == 0
    second = next(b for b in bodies if b["messages"][1]["content"] == "compute (2 + 3) * 4" and len(b["messages"]) == 4)
    assert second["messages"][2]["tool_calls"][0]["function"] == {"name": "calculator",
                                                                   "arguments": '{"expression": "(2 + 3) * 4"}'}
    assert second["messages"][2]["content"] == "Let me compute."
    assert second["messages"][3] == {"role": "tool", "tool_call_id": "call_1_0", "name": "calculator",
                                     "content": "20"}
    got = {q: (json.loads(t), a, calls, errors, invalid) for q, t, a, calls, errors, invalid in query(
        spec, "SELECT question, trajectory, trajectory_answer, trajectory_tool_calls, trajectory_tool_errors, "
              "trajectory_invalid_calls FROM solve")}
    assert set(got) == {"compute (2 + 3) * 4", "hang", "peek", "bad", "hog"}  # `loop` never answered
    trajectory, answer, calls, errors, invalid = got["compute (2 + 3) * 4"]
    assert answer == "the answer is 20" and (calls, errors, invalid) == (1, 0, 0)
    assert [m["role"] for m in trajectory] == ["user", "assistant", "tool", "assistant"]
    assert got["hang"][1] == "the answer is error: the tool timed out after 1 s" and got["hang"][2:4] == (1, 1)
    seen = json.loads(got["peek"][1].removeprefix("the answer is "))
    assert seen["ssh"] is False and seen["secret"] is None
    assert not [k for k in seen["env"] if k not in ("PATH", "HOME", "TMPDIR", "LANG", "PYTHONDONTWRITEBYTECODE", "LC_CTYPE")]
    assert got["bad"][2:] == (2, 2, 2)
    assert got["hog"][1].startswith("the answer is error: MemoryError") and got["hog"][2:4] == (1, 1)
    errors = dict(query(spec, "SELECT arguments, error FROM tool_calls WHERE tool IN ('nosuch', 'calculator') "
                              "AND error IS NOT NULL"))
    assert errors['{"x": 1}'].startswith("there is no tool `nosuch`; the tools are: calculator, sleepy, peek, hog")
    assert errors['{"expr": "1"}'].startswith("bad arguments for `calculator`")
    ended = query(spec, "SELECT reason FROM decisions WHERE stage = 'solve' AND NOT kept AND reason LIKE 'no final%'")
    assert ended == [("no final answer: still calling tools after max_tool_calls (2)",)]
    # the loop's third call was over the budget: the model was told so and not run
    over = query(spec, "SELECT count(*) FROM tool_calls WHERE error LIKE 'max_tool_calls (2) reached%'")
    assert over == [(1,)]
    lines = datagen.status(spec)["steps"][0]["lines"]
    assert lines[0] == "    5 trajectories with a final answer, 1.2 tool calls on average (at most 2)"
    assert lines[1] == ("    9 tool calls, 5 failed (56%): calculator 5 (2 failed), hog 1 (1 failed), nosuch 1 (1 failed), "
                        "peek 1, sleepy 1 (1 failed)")
    from datagen.api import report

    page = report(spec).read_text()  # the report says the same under the steps table
    assert "solve: 5 trajectories with a final answer, 1.2 tool calls on average (at most 2)" in page
    assert "solve: 9 tool calls, 5 failed (56%): calculator 5 (2 failed)" in page


def test_an_agent_specs_mistakes_name_the_key(tmp_path):
    from datagen.errors import UserError

    cases = [("tools: [calculator, sleepy, peek, hog]", "tools: [calculator, nope]", "steps.0.tools.1: no tool named `nope`"),
             ('"agent_tools.py:calculator"', '"agent_tools.py:calc"', "tools.calculator: agent_tools.py defines no "
                                                                       "top-level function `calc`"),
             ('"agent_tools.py:calculator"', '"missing.py:calc"', "tools.calculator: no file"),
             ('{python: "agent_tools.py:peek"}', '{python: "agent_tools.py:peek", mcp: {command: [x]}}',
              "tools.peek: a tool is `python: FILE.py:FUNCTION` or `mcp:"),
             ("max_tool_calls: 2", "max_tool_calls: -1", "steps.0.max_tool_calls: Input should be greater")]
    for old, new, message in cases:
        spec = write(tmp_path, "http://127.0.0.1:9/v1", ["compute 1 + 1"])
        assert old in spec.read_text()
        spec.write_text(spec.read_text().replace(old, new))
        with pytest.raises(UserError) as err:
            datagen.validate(spec)
        assert message in str(err.value), str(err.value)


def test_kill_9_mid_run_then_rerun_sends_no_finished_turn_and_runs_no_recorded_call_again(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    questions = [f"compute {i} + {i}" for i in range(12)]

    def slow(body):
        time.sleep(0.05)
        return script(body)

    with ScriptedServer(slow) as server:
        spec = write(tmp_path, server.base_url, questions)
        spec.write_text(spec.read_text().replace("max_attempts: 1}", "max_attempts: 1, max_concurrency: 2}"))
        cmd = [sys.executable, "-m", "datagen.cli", "run", "-q", str(spec)]
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(server.bodies) < 16 and time.monotonic() < deadline:  # into the second turn
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        done = [json.loads(m) for (m,) in query(spec, "SELECT messages FROM requests WHERE status = 'done'")]
        recorded = query(spec, "SELECT count(*) FROM tool_calls")[0][0]
        assert 12 <= len(done) < 24 and proc.returncode == -signal.SIGKILL and recorded == 12
        ran_before = len((tmp_path / "calls.log").read_text().splitlines())
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        for messages in done:
            assert server.counts[messages_key({"messages": messages})] == 1, "a finished turn was sent again"
    assert len((tmp_path / "calls.log").read_text().splitlines()) == ran_before  # every call was recorded
    got = query(spec, "SELECT question, trajectory_answer FROM solve ORDER BY question")
    assert sorted(got) == sorted((q, f"the answer is {2 * int(q.split()[1])}") for q in questions)
    assert query(spec, "SELECT count(*), count(DISTINCT output_id) FROM tool_calls") == [(12, 12)]


MCP_SPEC = """\
name: glossary
teachers:
  t: {{backend: openai, base_url: "{base}", model: scripted, max_attempts: 1}}
sources:
  words: {{inline: [{{word: tide}}, {{word: bee}}, {{word: zebra}}, {{word: secret}}]}}
tools:
  glossary: {{mcp: {{command: ["{python}", agent_mcp_server.py], env: {{GLOSSARY_KEY: "${{GLOSSARY_KEY_SOURCE}}"}}}},
             timeout_s: 20}}
steps:
  - {{name: define, strategy: agent, teacher: t, input: words, prompt: "{{{{ word }}}}", tools: [glossary],
     output: trajectory}}
"""


def glossary_script(body: dict) -> str | dict:
    msgs = body["messages"]
    word = msgs[0]["content"]
    results = [m["content"] for m in msgs if m["role"] == "tool"]
    if results:
        return f"{word}: {results[-1]}"
    if word == "secret":
        return {"text": None, "tool_calls": [call("secret", {})]}
    return {"text": None, "tool_calls": [call("define", {"word": word})]}


def test_an_mcp_servers_tools_are_listed_called_and_the_server_sees_only_what_the_spec_hands_it(tmp_path,
                                                                                                monkeypatch):
    import sys

    monkeypatch.setenv("GLOSSARY_KEY_SOURCE", "handed-over")
    monkeypatch.setenv("DATAGEN_TEST_SECRET", "s3cret-value")
    shutil.copy(HERE / "agent_mcp_server.py", tmp_path / "agent_mcp_server.py")
    with ScriptedServer(glossary_script) as server:
        spec = tmp_path / "spec.yaml"
        spec.write_text(MCP_SPEC.format(base=server.base_url, python=sys.executable))
        datagen.run(spec, log=lambda m: None)
        tools = server.bodies[0]["tools"]
        sent = len(server.bodies)
        datagen.run(spec, log=lambda m: None)  # the server starts again (its tools are part of the keys) ...
        assert len(server.bodies) == sent  # ... and nothing is sent again
    assert [t["function"]["name"] for t in tools] == ["define", "secret"]
    assert tools[0]["function"]["description"] == "Look a word up in the glossary."
    got = dict(query(spec, "SELECT word, trajectory_answer FROM define"))
    assert got["tide"] == "tide: the rise and fall of the sea"
    assert got["zebra"].startswith("zebra: error: ")  # the tool raised: the model got an error, the run went on
    assert got["secret"] == "secret: handed-over / none"  # its env entry, and no other secret
    assert query(spec, "SELECT tool, error IS NULL FROM tool_calls ORDER BY tool, arguments") == [
        ("define", True), ("define", True), ("define", False), ("secret", True)]


def test_an_mcp_server_that_does_not_start_is_the_specs_error_at_its_tool(tmp_path):
    from datagen.errors import UserError

    with ScriptedServer(glossary_script) as server:
        spec = tmp_path / "spec.yaml"
        spec.write_text(MCP_SPEC.format(base=server.base_url, python="/no/such/python"))
        with pytest.raises(UserError) as err:
            datagen.run(spec, log=lambda m: None)
        assert not server.bodies
    assert "tools.glossary: MCP server `glossary` (/no/such/python agent_mcp_server.py) failed to start" in str(err.value)


def test_trajectories_export_for_trl_and_sharegpt_and_one_sft_step_puts_the_loss_on_assistant_turns(tmp_path):
    import datasets

    from datagen.errors import UserError

    with ScriptedServer(script) as server:
        spec = write(tmp_path, server.base_url, ["compute 2 + 3", "compute 4 * 5", "compute 7 - 1"])
        spec.write_text(spec.read_text() + "export: {format: messages}\n"
                        "train: {student: bundled:smollm2-135m-instruct, max_steps: 1, batch_size: 2, "
                        "max_length: 512, output: out/student}\n")
        datagen.run(spec, log=lambda m: None)
    train = datasets.load_dataset(str(datagen.export(spec).path))["train"]
    row = next(r for r in train if r["messages"][1]["content"] == "compute 2 + 3")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "tool", "assistant"]
    call_turn, result = row["messages"][2], row["messages"][3]
    assert call_turn["content"] == "Let me compute." and call_turn["tool_calls"][0]["id"] == "call_1_0"
    assert json.loads(call_turn["tool_calls"][0]["function"]["arguments"]) == {"expression": "2 + 3"}
    assert (result["tool_call_id"], result["name"], result["content"]) == ("call_1_0", "calculator", "5")
    assert row["messages"][4]["content"] == "the answer is 5"
    assert [t["function"]["name"] for t in json.loads(row["tools"])] == ["calculator", "sleepy", "peek", "hog"]

    share = datasets.load_dataset(str(datagen.export(spec, out=tmp_path / "sg", format="sharegpt").path))["train"]
    first = next(r for r in share if r["conversations"][0]["value"] == "compute 2 + 3")
    assert [t["from"] for t in first["conversations"]] == ["human", "function_call", "observation", "gpt"]
    assert json.loads(first["conversations"][1]["value"]) == {"name": "calculator",
                                                               "arguments": {"expression": "2 + 3"}}
    assert first["system"] == "Use the tools." and first["conversations"][2]["value"] == "5"

    with pytest.raises(UserError) as err:  # SmolLM2's template never reads `tools`
        datagen.train(spec, log=lambda m: None)
    assert "cannot render tools" in str(err.value) and "tools_in_prompt: true" in str(err.value)

    spec.write_text(spec.read_text().replace("output: out/student}", "output: out/student, tools_in_prompt: true}"))
    from sft.rows import load_rows
    from sft.model import load_student
    from sft.trajectories import tokenize

    loaded = datagen.open_spec(spec)
    rows = load_rows(loaded, datagen.plan(spec), None, None)
    _, tok = load_student(loaded.spec.train, loaded.dir)
    rec = next(r for r in rows.train if r["prompt"][1]["content"] == "compute 2 + 3")
    out = tokenize(rec["prompt"] + rec["completion"], json.loads(rec["tools"]), tok, loaded.spec.train)
    learned = tok.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m])
    assert learned.count("<|im_end|>") == 2  # both assistant turns, each to its end ...
    assert "Let me compute." in learned and '<tool_call>{"name": "calculator"' in learned
    assert "the answer is 5" in learned
    assert "compute 2 + 3<" not in learned and "<tool_response>" not in learned  # ... and no user or tool turn
    assert "<tool_response>\n5\n</tool_response>" in tok.decode(out["input_ids"])

    from sft.train import sft_trainer, training_args

    model, tok = load_student(loaded.spec.train, loaded.dir)
    trainer, _ = sft_trainer(loaded, datagen.plan(spec), loaded.spec.train, model, tok, rows,
                             training_args(loaded.spec.train, 0, str(tmp_path / "work")))
    taught = [tok.decode([t for t, label in zip(r["input_ids"], r["labels"]) if label != -100])
              for r in trainer.train_dataset]
    assert learned in taught  # TRL's labels are the masks: the loss falls on the assistant turns alone

    result = datagen.train(spec, log=lambda m: None)
    assert result.steps == 1 and result.train_rows == 3
    assert "multi-turn rows: the loss is on every assistant turn, user and tool turns masked" in result.notes


def test_curation_over_trajectories_drops_invalid_calls_tool_errors_and_repeats_with_reasons(tmp_path):
    questions = ["compute 1 + 1", "compute 1 + 1", "compute 2 + 2", "bad", "hang", "peek"]
    with ScriptedServer(script) as server:
        spec = write(tmp_path, server.base_url, questions)
        spec.write_text(spec.read_text() + """\
curation:
  input: solve
  filters:
    - {type: trajectory, column: trajectory, valid_tool_calls: true}
    - {type: trajectory, name: no_errors, column: trajectory, max_tool_errors: 0}
    - {type: regex, column: trajectory_answer, must_match: "answer is"}
  dedup:
    - {type: exact, column: trajectory_first_user}
""")
        datagen.run(spec, log=lambda m: None)
    reasons = dict(query(spec, "SELECT s.question, d.reason FROM decisions d JOIN solve s ON s._id = d.row_id "
                               "WHERE d.stage LIKE 'filter:%' AND NOT d.kept"))
    assert reasons["bad"].startswith("2 invalid tool calls")
    assert reasons["hang"] == "1 failed tool calls > max_tool_errors 0"
    assert query(spec, "SELECT count(*) FROM decisions WHERE stage LIKE 'dedup%' AND NOT kept") == [(1,)]
    assert sorted(q for (q,) in query(spec, "SELECT question FROM curated")) == ["compute 1 + 1", "compute 2 + 2",
                                                                                 "peek"]


def test_a_trajectory_filter_on_a_column_without_counts_names_the_fix(tmp_path):
    from datagen.errors import UserError

    spec = write(tmp_path, "http://127.0.0.1:9/v1", ["compute 1 + 1"])
    spec.write_text(spec.read_text() + "curation:\n  input: solve\n  filters:\n"
                    "    - {type: trajectory, column: question, max_tool_calls: 1}\n")
    with pytest.raises(UserError) as err:
        datagen.validate(spec)
    assert "curation.filters.0.column: `solve` has no question_tool_calls" in str(err.value)


def test_the_tool_agent_example_against_a_scripted_tool_calling_server(tmp_path):
    """specs/tool_agent.yaml as shipped, its teacher pointed at a scripted server that computes each problem's
    reference answer with the calculator (one problem it gets wrong): curation keeps the verified trajectories."""
    import yaml

    specs = HERE.parent / "specs"
    problems = [json.loads(line) for line in (specs / "data" / "gsm8k_train_500.jsonl").read_text().splitlines()[:4]]
    answers = {p["question"]: p["answer"].split("####")[-1].strip() for p in problems}
    wrong = problems[3]["question"]

    def teacher(body):
        msgs = body["messages"]
        question = next(m["content"] for m in msgs if m["role"] == "user")
        results = [m["content"] for m in msgs if m["role"] == "tool"]
        if results:
            return f"I used the calculator.\n{results[-1]}"
        expression = f"{answers[question]} + {1 if question == wrong else 0}"
        return {"text": None, "tool_calls": [call("calculator", {"expression": expression})]}

    doc = yaml.safe_load((specs / "tool_agent.yaml").read_text())
    doc["sources"]["problems"].update(path=str(specs / "data" / "gsm8k_train_500.jsonl"), limit=4)
    shutil.copy(specs / "tools.py", tmp_path / "tools.py")
    with ScriptedServer(teacher) as server:
        doc["teachers"]["t"]["base_url"] = server.base_url
        spec = tmp_path / "tool_agent.yaml"
        spec.write_text(yaml.safe_dump(doc, sort_keys=False))
        datagen.run(spec, log=lambda m: None)
    got = dict(query(spec, "SELECT question, trajectory_answer FROM solve"))
    assert len(got) == 4 and got[wrong].endswith(str(int(answers[wrong]) + 1))
    curated = [q for (q,) in query(spec, "SELECT question FROM curated")]
    assert sorted(curated) == sorted(q for q in answers if q != wrong)
    assert query(spec, "SELECT count(*), count(error) FROM tool_calls") == [(4, 0)]


def test_an_in_process_model_without_tools_in_its_template_gets_the_fallback(bundled_model_path):
    from transformers import AutoTokenizer

    from datagen.teachers.toolcalls import calls_as_text, parse_calls, template_messages

    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    tools = [{"type": "function", "function": {"name": "calculator", "description": "Evaluate.",
                                               "parameters": {"type": "object", "properties": {}}}}]
    messages = [{"role": "system", "content": "Use the tools."}, {"role": "user", "content": "2 + 3?"},
                {"role": "assistant", "content": "", "tool_calls": [call("calculator", {"expression": "2 + 3"})]},
                {"role": "tool", "tool_call_id": "srv_0", "name": "calculator", "content": "5"},
                {"role": "tool", "tool_call_id": "srv_1", "name": "calculator", "content": "6"}]
    rendered, extra = template_messages(messages, tools, tok)
    assert extra == {} and [m["role"] for m in rendered] == ["system", "user", "assistant", "user"]
    assert rendered[0]["content"].startswith("Use the tools.\n\nYou can call these tools.")
    assert '"name": "calculator"' in rendered[0]["content"] and "<tool_call>" in rendered[0]["content"]
    assert rendered[2]["content"] == '<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 3"}}</tool_call>'
    assert rendered[3]["content"] == "<tool_response>\n5\n</tool_response>\n<tool_response>\n6\n</tool_response>"
    text = tok.apply_chat_template(rendered, add_generation_prompt=True, tokenize=False, **extra)
    assert text.endswith("<|im_start|>assistant\n")
    # what an in-process model writes reads back as the calls an HTTP teacher's tool_calls become
    content, calls = parse_calls("Let me see.\n" + calls_as_text(None, [call("calculator", {"expression": "1"})]))
    assert content == "Let me see." and calls[0]["name"] == "calculator" and calls[0]["arguments"] == {"expression": "1"}
    assert parse_calls("<tool_call>{oops</tool_call>")[1][0]["problem"].startswith("the tool call is not JSON")


def test_vllms_tool_parser_reads_calls_in_the_models_own_form(bundled_model_path):
    """`engine.tool_parser`: an in-process model whose template renders tools has its calls read by vLLM's parser
    (here the pythonic form of Llama 4 and others, which the `<tool_call>` reading would miss) and stored in the
    one form. (Parsers keyed to special tokens, llama3_json's or mistral's, need their model's tokenizer.)"""
    from transformers import AutoTokenizer

    from datagen.teachers.toolcalls import parse_calls
    from datagen.teachers.vllm_teacher import parse_tool_calls

    tok = AutoTokenizer.from_pretrained(bundled_model_path)
    tools = [{"type": "function", "function": {"name": "calculator", "description": "evaluate",
                                               "parameters": {"type": "object",
                                                              "properties": {"expression": {"type": "string"}}}}}]
    pythonic = '[calculator(expression="(2 + 3) * 4")]'
    assert parse_calls(pythonic)[1] == []  # the default reading sees no call here
    stored = parse_tool_calls("pythonic", tok, pythonic, tools)
    _, calls = parse_calls(stored)
    assert [(c["name"], c["arguments"], c["problem"]) for c in calls] == [
        ("calculator", {"expression": "(2 + 3) * 4"}, None)]
    hermes = 'Let me compute.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "7 * 6"}}\n</tool_call>'
    content, calls = parse_calls(parse_tool_calls("hermes", tok, hermes, tools))
    assert content == "Let me compute." and calls[0]["arguments"] == {"expression": "7 * 6"}
    assert parse_tool_calls("hermes", tok, "no call here", tools) == "no call here"
    with pytest.raises(ValueError, match="no tool parser `nope`; known: .*hermes"):
        parse_tool_calls("nope", tok, pythonic, tools)
