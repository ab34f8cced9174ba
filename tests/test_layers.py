"""The shape of the code, held: the import-linter contracts in pyproject.toml (layers one way, the store and the
spec importing nothing above them, teachers importing neither), no import cycle among modules, no code outside
datagen/strategies/ that branches on a strategy's name, no SQL outside datagen/store/."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("datagen", "curation", "sft")


def sources(*exclude: str) -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return [p for p in files if not any(str(p.relative_to(ROOT)).startswith(e) for e in exclude)]


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    out = subprocess.run([str(lint), "--no-logo", "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "BROKEN" not in out.stdout and " KEPT" in out.stdout


def test_no_import_cycles_among_modules():
    import grimp

    graph = grimp.build_graph(*PACKAGES)
    modules = sorted(graph.modules)
    # Tarjan's strongly connected components over "imports" edges (function-level imports included)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        index[m] = low[m] = len(index)
        stack.append(m)
        on_stack.add(m)
        for n in graph.find_modules_directly_imported_by(m):
            if n not in index:
                visit(n)
                low[m] = min(low[m], low[n])
            elif n in on_stack:
                low[m] = min(low[m], index[n])
        if low[m] == index[m]:
            component = []
            while True:
                n = stack.pop()
                on_stack.discard(n)
                component.append(n)
                if n == m:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for m in modules:
        if m not in index:
            visit(m)
    assert cycles == [], f"import cycles: {cycles}"


def test_no_code_outside_strategies_branches_on_a_strategy_name():
    found = [f"{p.relative_to(ROOT)}:{i}" for p in sources("datagen/strategies/")
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"strategy\s*[!=]=", line)]
    assert found == []
def test_no_sql_outside_the_store():
    """Outside datagen/store/, code asks the store; it does not run SQL (a user's SQL runs in the store too)."""
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:80]}" for p in sources("datagen/store/")
             for i, line in enumerate(p.read_text().splitlines(), 1)
             if re.search(r"\.(execute|executemany|sql)\(", line)]
    assert found == []
