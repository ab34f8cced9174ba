"""The tools an agent step calls (specs/trajectories.md): the spec's top-level `tools:`, each a Python function in a
file beside the spec (run in its own process: sandbox.py) or the tools of an MCP server over stdio (mcp_server.py).

`describe` gives each tool's OpenAI-shape schema at plan time without running anything; a `Toolbox` opened for a
run calls them. A call's arguments are checked against its schema first; a call to an unknown tool, with arguments
that do not match, or that raises, hangs or dies gives the model an error message as its result (as agent
frameworks do) and is recorded as an error. Nothing here raises for a bad call.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from datagen.tools.python_tool import ToolError, function_schema, locate
from datagen.tools.sandbox import CallResult, call_python

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI-compatible servers accept as a function name

__all__ = ["CallResult", "ToolError", "Toolbox", "describe", "needs_server"]


def describe(tools: dict, spec_dir: Path, names: list[str]) -> list[dict]:
    """The OpenAI-shape schemas of the named Python tools, read without running anything (plan time). An MCP
    entry's tools are known only from its server, so they are listed when a run opens its Toolbox."""
    out = []
    for name in names:
        spec = tools[name]
        if spec.python is not None:
            if not NAME_RE.match(name):
                raise ToolError(f"tool name {name!r}: use letters, digits, _ and - (at most 64)")
            path, func = locate(spec_dir, spec.python)
            out.append(function_schema(name, path, func, spec.description, spec.schema_))
    return out


def needs_server(tools: dict, names: list[str]) -> bool:
    return any(tools[name].mcp is not None for name in names)


class Toolbox:
    """The tools of one step, for one run: `call(name, arguments)` -> CallResult. MCP servers start on open and
    end on close."""

    def __init__(self, tools: dict, spec_dir: Path, names: list[str]):
        self.specs, self.dir = tools, spec_dir
        self.python: dict[str, tuple[Path, str, object]] = {}  # tool -> (file, function, its spec)
        self.servers: list = []
        self.mcp_tools: dict[str, object] = {}  # tool -> the server that has it
        self.schemas: dict[str, dict] = {}
        try:
            for name in names:
                spec = tools[name]
                if spec.python is not None:
                    path, func = locate(spec_dir, spec.python)
                    self.python[name] = (path, func, spec)
                    self.schemas[name] = function_schema(name, path, func, spec.description, spec.schema_)
                else:
                    from datagen.tools.mcp_server import McpServer

                    server = McpServer(name, spec.mcp, spec.timeout_s, spec_dir).open()
                    self.servers.append(server)
                    for schema in server.schemas():
                        tool = schema["function"]["name"]
                        if tool in self.schemas:
                            raise ToolError(f"MCP server `{name}` has a tool `{tool}`, a name another tool of the "
                                            "step has; list the server's others under `mcp.tools`")
                        self.schemas[tool] = schema
                        self.mcp_tools[tool] = server
        except BaseException:
            self.close()
            raise

    def call(self, name: str | None, arguments) -> CallResult:
        start = time.monotonic()
        problem = self.check(name, arguments)
        if problem is not None:
            return CallResult(None, problem, time.monotonic() - start)
        if name in self.python:
            path, func, spec = self.python[name]
            return call_python(path, func, arguments, spec.timeout_s, spec.memory_mb)
        return self.mcp_tools[name].call(name, arguments)

    def check(self, name: str | None, arguments) -> str | None:
        """Why the call cannot run (an unknown tool, arguments that do not match its schema), or None."""
        if name not in self.schemas:
            return f"there is no tool `{name}`; the tools are: {', '.join(self.schemas)}"
        if not isinstance(arguments, dict):
            return f"the arguments of `{name}` must be a JSON object"
        import jsonschema

        try:
            jsonschema.validate(arguments, self.schemas[name]["function"].get("parameters") or {})
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            return (f"bad arguments for `{name}`" + (f" at {where}" if where else "") + f": {exc.message}")[:500]
        except jsonschema.SchemaError as exc:
            return f"the schema of `{name}` is invalid: {exc.message}"[:500]
        return None

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.servers = []
