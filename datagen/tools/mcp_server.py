"""The tools of an MCP server over stdio (the `mcp` package): started once per run and ended with it.

The server runs as the spec's `command` in the spec's folder, with the MCP SDK's default environment (PATH, HOME and the like, no
secrets) plus the entry's `env`, where `${VAR}` reads the caller's variable (the one way to hand it a key). Its
session lives on an event loop in a thread of its own; `call` waits for a reply at most `timeout_s` and gives the
model an error past that, as for a Python tool. A tool's error reply (`isError`) is a failed call.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time

from datagen.tools.python_tool import ToolError
from datagen.tools.sandbox import CallResult, _cut

START_TIMEOUT_S = 60


class McpServer:
    def __init__(self, name: str, spec, timeout_s: float, cwd=None):
        self.name, self.spec, self.timeout_s, self.cwd = name, spec, timeout_s, cwd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._session = None
        self._tools: list = []
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._errlog = None  # the server's stderr, shown when it fails to start

    def __enter__(self) -> McpServer:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> McpServer:
        try:
            import mcp  # noqa: F401
        except ImportError:
            raise ToolError("MCP tools need the `mcp` package: pip install mcp") from None
        import tempfile

        self._errlog = tempfile.TemporaryFile("w+")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"mcp-{self.name}", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._main(), self._loop)
        if not self._ready.wait(START_TIMEOUT_S):
            self.close()
            raise ToolError(f"MCP server `{self.name}` ({' '.join(self.spec.command)}) did not start within "
                            f"{START_TIMEOUT_S} s")
        if self._error is not None:
            error, said = self._error, self._stderr_tail()
            self.close()
            raise ToolError(f"MCP server `{self.name}` ({' '.join(self.spec.command)}) failed to start: "
                            f"{_describe(error)}" + (f"; it said: {said}" if said else "")) from None
        return self

    async def _main(self) -> None:
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        self._stop = asyncio.Event()
        env = {k: _expand(v) for k, v in self.spec.env.items()}
        params = StdioServerParameters(command=self.spec.command[0], args=list(self.spec.command[1:]),
                                       env=env or None, cwd=self.cwd)
        try:
            async with stdio_client(params, errlog=self._errlog) as (read, write), ClientSession(read, write) as session:
                await session.initialize()
                listed = await session.list_tools()
                self._tools = list(listed.tools)
                self._session = session
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:  # noqa: BLE001  (reported by open, or ends the session)
            self._error = exc
        finally:
            self._session = None
            self._ready.set()

    def _stderr_tail(self) -> str:
        try:
            self._errlog.seek(0)
            lines = [line.strip() for line in self._errlog.read().splitlines() if line.strip()]
        except (OSError, ValueError, AttributeError):
            return ""
        return " | ".join(lines[-3:])[:500]

    def schemas(self) -> list[dict]:
        wanted = self.spec.tools
        names = [t.name for t in self._tools]
        missing = [w for w in wanted or [] if w not in names]
        if missing:
            raise ToolError(f"MCP server `{self.name}` has no tool {', '.join(missing)}; it has: {', '.join(names)}")
        out = []
        for tool in self._tools:
            if wanted is not None and tool.name not in wanted:
                continue
            schema = getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None) or {"type": "object"}
            out.append({"type": "function", "function": {"name": tool.name, "description": tool.description or "",
                                                         "parameters": schema}})
        return out

    def call(self, name: str, arguments: dict) -> CallResult:
        start = time.monotonic()
        if self._session is None:
            return CallResult(None, f"MCP server `{self.name}` is not running ({_describe(self._error)})", 0.0)
        future = asyncio.run_coroutine_threadsafe(self._session.call_tool(name, arguments), self._loop)
        try:
            result = future.result(self.timeout_s)
        except TimeoutError:
            future.cancel()
            return CallResult(None, f"the tool timed out after {self.timeout_s:g} s", time.monotonic() - start)
        except Exception as exc:  # noqa: BLE001  (the session's error is the call's result)
            return CallResult(None, _describe(exc)[:2000], time.monotonic() - start)
        seconds = time.monotonic() - start
        texts = [c.text for c in (result.content or []) if getattr(c, "text", None) is not None]
        structured = getattr(result, "structured_content", None) or getattr(result, "structuredContent", None)
        text = "\n".join(texts) if texts else json.dumps(structured) if structured is not None else ""
        if getattr(result, "is_error", None) or getattr(result, "isError", None):
            return CallResult(None, text[:2000] or "the tool reported an error", seconds)
        return CallResult(_cut(text), None, seconds)

    def close(self) -> None:
        if self._loop is None:
            return
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        deadline = time.monotonic() + 10
        while self._session is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()
        self._loop = None
        if self._errlog is not None:
            self._errlog.close()
            self._errlog = None


def _expand(value: str) -> str:
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: os.environ.get(m.group(1), ""), value)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "it ended"
    inner = getattr(exc, "exceptions", None)  # an ExceptionGroup from the SDK's task group
    if inner:
        return _describe(inner[0])
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
