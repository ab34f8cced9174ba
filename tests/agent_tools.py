"""Tools for the agent tests (tests/test_agent.py): each runs in datagen's tool sandbox."""

import ast
import operator
import os
import time

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
       ast.USub: operator.neg}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: numbers with + - * / and parentheses, e.g. "(2 + 3) * 4"
    """

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            return OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPS:
            return OPS[type(node.op)](value(node.operand))
        raise ValueError(f"not arithmetic: {ast.dump(node)[:40]}")

    log = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.log")
    with open(log, "a") as f:  # the tests count how often the tool really ran
        f.write(expression + "\n")
    result = value(ast.parse(expression, mode="eval").body)
    return str(int(result) if float(result).is_integer() else result)


def sleepy(seconds: float) -> str:
    """Sleep for a while, then say so."""
    time.sleep(seconds)
    return "awake"


def peek() -> dict:
    """What the tool's process can see of its environment and home."""
    return {"ssh": os.path.exists(os.path.expanduser("~/.ssh")), "env": sorted(os.environ),
            "secret": os.environ.get("DATAGEN_TEST_SECRET")}


def hog(megabytes: int) -> str:
    """Allocate memory."""
    block = bytearray(megabytes * 2**20)
    return str(len(block))
