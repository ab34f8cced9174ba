"""Spec models for tools (specs/trajectories.md): the top-level `tools:` an agent step names."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Model(BaseModel):
    # the same rules as datagen.spec.models.Model; defined here so the two modules do not import each other
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class McpSpec(Model):
    """An MCP server over stdio: the command that starts it (started once per run, ended with it)."""

    command: list[str] = Field(min_length=1)
    env: dict[str, str] = {}  # its environment (nothing else is inherited but PATH); `${VAR}` reads the caller's
    tools: list[str] | None = None  # the server's tools to offer (default: all it lists)


class ToolSpec(Model):
    """One tool, or with `mcp`, every tool an MCP server lists."""

    python: str | None = None  # "FILE.py:FUNCTION", the file beside the spec
    mcp: McpSpec | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")  # the arguments' JSON schema (default: from the
    # signature and docstring)
    description: str | None = None  # default: the docstring's first paragraph
    timeout_s: float = Field(30, gt=0, le=3600)  # one call; past it the model gets a timeout error as the result
    memory_mb: int = Field(1024, ge=16)  # the address space a Python tool's process may use

    @model_validator(mode="after")
    def _one_kind(self) -> ToolSpec:
        if (self.python is None) == (self.mcp is None):
            raise ValueError("a tool is `python: FILE.py:FUNCTION` or `mcp: {command: [...]}`; set exactly one")
        if self.python is not None and (":" not in self.python or not self.python.split(":", 1)[0].endswith(".py")):
            raise ValueError(f"python: {self.python!r} must be FILE.py:FUNCTION (a function in a file beside the "
                             "spec)")
        if self.mcp is not None and (self.schema_ is not None or self.description is not None):
            raise ValueError("an MCP server describes its own tools; remove `schema` and `description`")
        return self
