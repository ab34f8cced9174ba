"""A small MCP server over stdio for tests/test_agent.py: a dictionary lookup and a tool that always fails."""

from mcp.server.mcpserver import MCPServer

server = MCPServer("glossary")
WORDS = {"tide": "the rise and fall of the sea", "bee": "a flying insect that makes honey"}


@server.tool()
def define(word: str) -> str:
    """Look a word up in the glossary."""
    if word not in WORDS:
        raise ValueError(f"no entry for {word!r}")
    return WORDS[word]


@server.tool()
def secret() -> str:
    """Say whether the server was handed the test's secret."""
    import os

    return os.environ.get("GLOSSARY_KEY", "none") + " / " + os.environ.get("DATAGEN_TEST_SECRET", "none")


if __name__ == "__main__":
    server.run()
